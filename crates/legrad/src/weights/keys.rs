//! transformers `CLIPModel` names → open_clip names.
//!
//! | transformers | open_clip |
//! |---|---|
//! | `vision_model.embeddings.class_embedding` | `visual.class_embedding` |
//! | `vision_model.embeddings.patch_embedding.weight` | `visual.conv1.weight` |
//! | `vision_model.embeddings.position_embedding.weight` | `visual.positional_embedding` |
//! | `vision_model.pre_layrnorm.*` (sic) | `visual.ln_pre.*` |
//! | `vision_model.encoder.layers.{i}.self_attn.{q,k,v}_proj.*` | `visual.transformer.resblocks.{i}.attn.in_proj_{weight,bias}` (fused, q k v) |
//! | `....self_attn.out_proj.*` | `....attn.out_proj.*` |
//! | `....layer_norm1.*` / `layer_norm2.*` | `....ln_1.*` / `ln_2.*` |
//! | `....mlp.fc1.*` / `mlp.fc2.*` | `....mlp.c_fc.*` / `mlp.c_proj.*` |
//! | `vision_model.post_layernorm.*` | `visual.ln_post.*` |
//! | `visual_projection.weight` [E, W] | `visual.proj` [W, E] (transposed) |
//! | `text_model.embeddings.token_embedding.weight` | `token_embedding.weight` |
//! | `text_model.embeddings.position_embedding.weight` | `positional_embedding` |
//! | `text_model.encoder.layers.{i}.*` | `transformer.resblocks.{i}.*` (as above) |
//! | `text_model.final_layer_norm.*` | `ln_final.*` |
//! | `text_projection.weight` [E, W] | `text_projection` [W, E] (transposed) |

use super::{RawTensor, StoredDType, TensorMap};
use crate::error::{LegradError, Result};

/// Rename a transformers `CLIPModel` state dict to open_clip's names, fusing q, k, v.
pub fn transformers_to_openclip(mut map: TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    let moved = |out: &mut TensorMap, map: &mut TensorMap, from: &str, to: &str| -> Result<()> {
        let t =
            map.remove(from).ok_or_else(|| LegradError::MissingTensor { key: from.to_string(), expected: vec![] })?;
        out.insert(to, t);
        Ok(())
    };
    for (hf, oc) in [
        ("vision_model.embeddings.class_embedding", "visual.class_embedding"),
        ("vision_model.embeddings.patch_embedding.weight", "visual.conv1.weight"),
        ("vision_model.embeddings.position_embedding.weight", "visual.positional_embedding"),
        ("vision_model.pre_layrnorm.weight", "visual.ln_pre.weight"),
        ("vision_model.pre_layrnorm.bias", "visual.ln_pre.bias"),
        ("vision_model.post_layernorm.weight", "visual.ln_post.weight"),
        ("vision_model.post_layernorm.bias", "visual.ln_post.bias"),
        ("text_model.embeddings.token_embedding.weight", "token_embedding.weight"),
        ("text_model.embeddings.position_embedding.weight", "positional_embedding"),
        ("text_model.final_layer_norm.weight", "ln_final.weight"),
        ("text_model.final_layer_norm.bias", "ln_final.bias"),
    ] {
        moved(&mut out, &mut map, hf, oc)?;
    }
    if let Some(t) = map.remove("logit_scale") {
        out.insert("logit_scale", t);
    }
    for (hf, oc) in [("visual_projection.weight", "visual.proj"), ("text_projection.weight", "text_projection")] {
        let t = map.remove(hf).ok_or_else(|| LegradError::MissingTensor { key: hf.to_string(), expected: vec![] })?;
        out.insert(oc, transpose(&t, hf)?);
    }
    for (hf_tower, oc_tower) in [
        ("vision_model.encoder.layers.", "visual.transformer.resblocks."),
        ("text_model.encoder.layers.", "transformer.resblocks."),
    ] {
        for i in 0.. {
            let hf = format!("{hf_tower}{i}.");
            let oc = format!("{oc_tower}{i}.");
            if map.get(&format!("{hf}self_attn.q_proj.weight")).is_none() {
                break;
            }
            for suffix in ["weight", "bias"] {
                let parts: Vec<RawTensor> = ["q", "k", "v"]
                    .iter()
                    .map(|p| {
                        let key = format!("{hf}self_attn.{p}_proj.{suffix}");
                        map.remove(&key).ok_or(LegradError::MissingTensor { key, expected: vec![] })
                    })
                    .collect::<Result<_>>()?;
                out.insert(format!("{oc}attn.in_proj_{suffix}"), concat_rows(parts, &hf)?);
            }
            for (a, b) in [
                ("self_attn.out_proj", "attn.out_proj"),
                ("layer_norm1", "ln_1"),
                ("layer_norm2", "ln_2"),
                ("mlp.fc1", "mlp.c_fc"),
                ("mlp.fc2", "mlp.c_proj"),
            ] {
                for suffix in ["weight", "bias"] {
                    moved(&mut out, &mut map, &format!("{hf}{a}.{suffix}"), &format!("{oc}{b}.{suffix}"))?;
                }
            }
        }
    }
    Ok(out)
}

/// Rename open_clip's SigLIP (`CustomTextCLIP` with a timm `VisionTransformer`) to the names the
/// towers load, open_clip's CLIP names where a part is the same thing:
///
/// | SigLIP (open_clip 2.23 + timm 0.9.16) | loaded as |
/// |---|---|
/// | `visual.trunk.patch_embed.proj.{weight,bias}` | `visual.conv1.{weight,bias}` |
/// | `visual.trunk.pos_embed` [1, N, W] | `visual.positional_embedding` [N, W] (no class row) |
/// | `visual.trunk.blocks.{i}.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}` | `visual.transformer.resblocks.{i}.{ln_1,attn.in_proj_,attn.out_proj,ln_2,mlp.c_fc,mlp.c_proj}` |
/// | `visual.trunk.norm` | `visual.ln_post` |
/// | `visual.trunk.attn_pool.*` | `visual.attn_pool.*` |
/// | `text.*` | `*` (`text.transformer...` → `transformer...`) |
/// | `text.text_projection.weight` [E, W], `.bias` | `text_projection` [W, E] (transposed), `text_projection_bias` |
pub fn siglip_to_internal(map: TensorMap) -> Result<TensorMap> {
    let mut out = TensorMap::new();
    let names: Vec<String> = map.names().map(str::to_string).collect();
    let mut map = map;
    for name in names {
        let Some(mut t) = map.remove(&name) else { continue };
        let to = if let Some(rest) = name.strip_prefix("visual.trunk.blocks.") {
            let (i, part) = rest.split_once('.').unwrap_or((rest, ""));
            let part = part
                .replace("norm1.", "ln_1.")
                .replace("norm2.", "ln_2.")
                .replace("attn.qkv.", "attn.in_proj_")
                .replace("attn.proj.", "attn.out_proj.")
                .replace("mlp.fc1.", "mlp.c_fc.")
                .replace("mlp.fc2.", "mlp.c_proj.");
            format!("visual.transformer.resblocks.{i}.{part}")
        } else if let Some(rest) = name.strip_prefix("visual.trunk.attn_pool.") {
            format!("visual.attn_pool.{rest}")
        } else if let Some(rest) = name.strip_prefix("visual.trunk.norm.") {
            format!("visual.ln_post.{rest}")
        } else if let Some(rest) = name.strip_prefix("visual.trunk.patch_embed.proj.") {
            format!("visual.conv1.{rest}")
        } else if name == "visual.trunk.pos_embed" {
            if t.shape.len() == 3 && t.shape[0] == 1 {
                t.shape.remove(0);
            }
            "visual.positional_embedding".into()
        } else if name == "text.text_projection.weight" {
            t = transpose(&t, &name)?;
            "text_projection".into()
        } else if name == "text.text_projection.bias" {
            "text_projection_bias".into()
        } else if let Some(rest) = name.strip_prefix("text.") {
            rest.to_string()
        } else if name.starts_with("visual.trunk.") {
            return Err(LegradError::Unsupported(format!(
                "the SigLIP tensor '{name}': a part of timm's tower this program does not run (class or register tokens, a head)"
            )));
        } else {
            name.clone()
        };
        out.insert(to, t);
    }
    Ok(out)
}

fn transpose(t: &RawTensor, name: &str) -> Result<RawTensor> {
    let [r, c] = t.shape[..] else {
        return Err(LegradError::Checkpoint(format!("tensor '{name}' has shape {:?}, expected a matrix", t.shape)));
    };
    let v = t.to_f32();
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = v[i * c + j];
        }
    }
    Ok(RawTensor::from_f32(vec![c, r], &out))
}

fn concat_rows(parts: Vec<RawTensor>, layer: &str) -> Result<RawTensor> {
    let first = &parts[0];
    if parts.iter().any(|p| p.shape[1..] != first.shape[1..] || p.dtype != first.dtype) {
        return Err(LegradError::Checkpoint(format!(
            "{layer}self_attn: q, k and v projections differ in shape or type"
        )));
    }
    let mut shape = first.shape.clone();
    shape[0] = parts.iter().map(|p| p.shape[0]).sum();
    let dtype: StoredDType = first.dtype;
    let bytes = parts.into_iter().flat_map(|p| p.bytes).collect();
    Ok(RawTensor { shape, dtype, bytes, scales: Vec::new() })
}
