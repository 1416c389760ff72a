//! Seeded random weights for any config, in open_clip's names: full-size models for benchmarks
//! and memory measurements are generated on demand, never committed.

use super::{RawTensor, TensorMap};
use crate::config::ClipConfig;
use crate::rng::Rng;

/// Puts one named tensor of the given shape, drawn with a mean and a spread.
type Put<'a> = dyn FnMut(String, Vec<usize>, f32, f32, &mut Rng) + 'a;

/// A model with open_clip-like initial scales (std 0.02 matrices, LayerNorms near identity).
pub fn random_openclip(config: &ClipConfig, seed: u64) -> TensorMap {
    let mut rng = Rng::new(seed);
    let mut map = TensorMap::new();
    let mut put = |name: String, shape: Vec<usize>, mean: f32, std: f32, rng: &mut Rng| {
        let n: usize = shape.iter().product();
        let data: Vec<f32> = (0..n).map(|_| mean + std * rng.normal()).collect();
        map.insert(name, RawTensor::from_f32(shape, &data));
    };
    let blocks = |prefix: &str, layers: usize, w: usize, m: usize, put: &mut Put<'_>, rng: &mut Rng| {
        for i in 0..layers {
            let p = format!("{prefix}{i}");
            put(format!("{p}.ln_1.weight"), vec![w], 1.0, 0.02, rng);
            put(format!("{p}.ln_1.bias"), vec![w], 0.0, 0.02, rng);
            put(format!("{p}.attn.in_proj_weight"), vec![3 * w, w], 0.0, (w as f32).powf(-0.5), rng);
            put(format!("{p}.attn.in_proj_bias"), vec![3 * w], 0.0, 0.02, rng);
            put(format!("{p}.attn.out_proj.weight"), vec![w, w], 0.0, (w as f32).powf(-0.5), rng);
            put(format!("{p}.attn.out_proj.bias"), vec![w], 0.0, 0.02, rng);
            put(format!("{p}.ln_2.weight"), vec![w], 1.0, 0.02, rng);
            put(format!("{p}.ln_2.bias"), vec![w], 0.0, 0.02, rng);
            put(format!("{p}.mlp.c_fc.weight"), vec![m, w], 0.0, (w as f32).powf(-0.5), rng);
            put(format!("{p}.mlp.c_fc.bias"), vec![m], 0.0, 0.02, rng);
            put(format!("{p}.mlp.c_proj.weight"), vec![w, m], 0.0, (m as f32).powf(-0.5), rng);
            put(format!("{p}.mlp.c_proj.bias"), vec![w], 0.0, 0.02, rng);
        }
    };
    let v = &config.vision;
    let t = &config.text;
    let g = v.grid();
    let anatomy = config.family.anatomy();
    let pool = anatomy.vision_head == crate::config::HeadKind::AttentionPool;
    let w = v.width;
    put("visual.conv1.weight".into(), vec![w, 3, v.patch_size, v.patch_size], 0.0, 0.02, &mut rng);
    if pool {
        put("visual.conv1.bias".into(), vec![w], 0.0, 0.02, &mut rng);
        put("visual.positional_embedding".into(), vec![g * g, w], 0.0, (w as f32).powf(-0.5), &mut rng);
    } else {
        put("visual.class_embedding".into(), vec![w], 0.0, (w as f32).powf(-0.5), &mut rng);
        put("visual.positional_embedding".into(), vec![g * g + 1, w], 0.0, (w as f32).powf(-0.5), &mut rng);
        put("visual.ln_pre.weight".into(), vec![w], 1.0, 0.02, &mut rng);
        put("visual.ln_pre.bias".into(), vec![w], 0.0, 0.02, &mut rng);
    }
    blocks("visual.transformer.resblocks.", v.layers, w, v.mlp_width, &mut put, &mut rng);
    put("visual.ln_post.weight".into(), vec![w], 1.0, 0.02, &mut rng);
    put("visual.ln_post.bias".into(), vec![w], 0.0, 0.02, &mut rng);
    if pool {
        let p = "visual.attn_pool";
        put(format!("{p}.latent"), vec![1, 1, w], 0.0, (w as f32).powf(-0.5), &mut rng);
        for (name, out) in [("q", w), ("kv", 2 * w), ("proj", w)] {
            put(format!("{p}.{name}.weight"), vec![out, w], 0.0, (w as f32).powf(-0.5), &mut rng);
            put(format!("{p}.{name}.bias"), vec![out], 0.0, 0.02, &mut rng);
        }
        put(format!("{p}.norm.weight"), vec![w], 1.0, 0.02, &mut rng);
        put(format!("{p}.norm.bias"), vec![w], 0.0, 0.02, &mut rng);
        put(format!("{p}.mlp.fc1.weight"), vec![v.mlp_width, w], 0.0, (w as f32).powf(-0.5), &mut rng);
        put(format!("{p}.mlp.fc1.bias"), vec![v.mlp_width], 0.0, 0.02, &mut rng);
        put(format!("{p}.mlp.fc2.weight"), vec![w, v.mlp_width], 0.0, (v.mlp_width as f32).powf(-0.5), &mut rng);
        put(format!("{p}.mlp.fc2.bias"), vec![w], 0.0, 0.02, &mut rng);
    } else {
        put("visual.proj".into(), vec![w, config.embed_dim], 0.0, (w as f32).powf(-0.5), &mut rng);
    }
    put("token_embedding.weight".into(), vec![t.vocab_size, t.width], 0.0, 0.02, &mut rng);
    put("positional_embedding".into(), vec![t.context_length, t.width], 0.0, 0.01, &mut rng);
    blocks("transformer.resblocks.", t.layers, t.width, t.mlp_width, &mut put, &mut rng);
    put("ln_final.weight".into(), vec![t.width], 1.0, 0.02, &mut rng);
    put("ln_final.bias".into(), vec![t.width], 0.0, 0.02, &mut rng);
    put("text_projection".into(), vec![t.width, config.embed_dim], 0.0, (t.width as f32).powf(-0.5), &mut rng);
    if anatomy.text_projection_bias {
        put("text_projection_bias".into(), vec![config.embed_dim], 0.0, 0.02, &mut rng);
    }
    match anatomy.scoring {
        crate::config::ScoringKind::Cosine => {
            map.insert("logit_scale", RawTensor::from_f32(vec![], &[(1.0f32 / 0.07).ln()]));
        }
        // SigLIP's initial values (open_clip: log 10 and init_logit_bias -10).
        crate::config::ScoringKind::Sigmoid => {
            map.insert("logit_scale", RawTensor::from_f32(vec![1], &[10f32.ln()]));
            map.insert("logit_bias", RawTensor::from_f32(vec![1], &[-10.0]));
        }
    }
    map
}

/// A CLIP ViT's vision tower with massive activations, from any open_clip CLIP checkpoint in
/// f32 (the issue-28 test model; pretrained CLIPs carry a few residual channels hundreds of
/// times larger than the rest, which random weights lack). For each of `channels`:
///
/// - every writer of the residual stream scales the channel by `alpha`: `ln_pre`'s weight and
///   bias (the stream starts there), each block's `out_proj` and `c_proj` rows and biases;
/// - every reader of a LayerNorm of it takes the channel at `1/alpha`: each block's `in_proj`
///   and `c_fc` columns, and `visual.proj`'s row.
///
/// The stream then carries the channels `alpha` times larger at every token; each LayerNorm's
/// output has them far above the rest (their variance dominates the row's) while the weights
/// that read them are small, as in pretrained models. The function stays a CLIP's (the other
/// channels are normalised by a larger variance: the embeddings move, they do not break).
/// A tensor the recipe needs that is missing or quantized is an error.
pub fn with_outlier_channels(
    map: &mut TensorMap,
    layers: usize,
    channels: &[usize],
    alpha: f32,
) -> crate::error::Result<()> {
    use crate::error::LegradError;
    let mut edit = |name: &str, f: &dyn Fn(&[usize], &mut [f32])| -> crate::error::Result<()> {
        let t = map.remove(name).ok_or_else(|| LegradError::MissingTensor { key: name.into(), expected: vec![] })?;
        if t.dtype.is_quantized() {
            return Err(LegradError::Checkpoint(format!(
                "'{name}' is quantized: the outlier recipe needs f32 weights"
            )));
        }
        let mut v = t.to_f32();
        f(&t.shape, &mut v);
        map.insert(name, RawTensor::from_f32(t.shape, &v));
        Ok(())
    };
    // Rows `c` of `[out, in]` (or entries of a vector) times `k`.
    let rows = |k: f32| {
        move |shape: &[usize], v: &mut [f32]| {
            let cols: usize = shape[1..].iter().product();
            for &c in channels {
                v[c * cols..(c + 1) * cols].iter_mut().for_each(|x| *x *= k);
            }
        }
    };
    // Columns `c` of `[out, in]` times `k`.
    let cols = |k: f32| {
        move |shape: &[usize], v: &mut [f32]| {
            let n = shape[1];
            for row in v.chunks_exact_mut(n) {
                for &c in channels {
                    row[c] *= k;
                }
            }
        }
    };
    for name in ["visual.ln_pre.weight", "visual.ln_pre.bias"] {
        edit(name, &rows(alpha))?;
    }
    for i in 0..layers {
        let p = format!("visual.transformer.resblocks.{i}");
        for w in ["attn.out_proj.weight", "attn.out_proj.bias", "mlp.c_proj.weight", "mlp.c_proj.bias"] {
            edit(&format!("{p}.{w}"), &rows(alpha))?;
        }
        for w in ["attn.in_proj_weight", "mlp.c_fc.weight"] {
            edit(&format!("{p}.{w}"), &cols(1.0 / alpha))?;
        }
    }
    edit("visual.proj", &rows(1.0 / alpha))
}
