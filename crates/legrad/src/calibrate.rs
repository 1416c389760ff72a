//! Calibration for [GPTQ](crate::weights::gptq): the Gram matrix `Σ x xᵀ` of every block's
//! linear-layer inputs, over synthetic scenes and captions of their objects, keyed by the
//! weight's open_clip name. `legrad convert` uses it for 4-bit files.

use std::collections::HashMap;

use burn::tensor::{Tensor, TensorData};

use crate::engine::{DEFAULT_TEMPLATE, Engine, read_f32};
use crate::error::Result;
use crate::eval::scene_pixels;
use crate::model::LINEAR_WEIGHTS;
use crate::scenes;
use crate::weights::gptq::Hessian;

/// The scene stream calibration draws from: apart from training (0), the fidelity report (7)
/// and evaluation (1).
pub const SEED: u64 = 8;

/// Gram matrices for `images` scenes (1 to 4 objects, at the model's input size) and the
/// captions of their objects plus every colour-shape name in the default template.
pub async fn hessians(
    engine: &Engine,
    images: u64,
    progress: &mut dyn FnMut(&str, u64, u64),
) -> Result<HashMap<String, Hessian>> {
    let device = engine.device();
    let size = engine.model.config.vision.image_size;
    let mut sums: HashMap<String, (Tensor<2>, usize)> = HashMap::new();
    let mut add = |name: String, x: Tensor<3>| {
        let [b, n, w] = x.dims();
        let x = x.reshape([b * n, w]);
        let gram = x.clone().transpose().matmul(x);
        match sums.remove(&name) {
            Some((s, count)) => sums.insert(name, (s + gram, count + b * n)),
            None => sums.insert(name, (gram, b * n)),
        };
    };
    let mut captions = Vec::new();
    const BATCH: u64 = 4;
    let mut done = 0;
    while done < images {
        let count = BATCH.min(images - done);
        let mut pixels = Vec::new();
        for i in done..done + count {
            let scene = scenes::generate(SEED, i, size, None);
            pixels.extend(scene_pixels(&scene));
            for k in 0..scene.objects.len() {
                captions.extend(scene.captions(k));
            }
        }
        let t: Tensor<4> = Tensor::from_data(TensorData::new(pixels, [count as usize, 3, size, size]), &device);
        for (l, inputs) in engine.model.vision.linear_inputs(t)?.into_iter().enumerate() {
            for (x, w) in inputs.into_iter().zip(LINEAR_WEIGHTS) {
                add(format!("visual.transformer.resblocks.{l}.{w}"), x);
            }
        }
        done += count;
        progress("images", done, images);
    }
    let names: Vec<String> = scenes::all_names().into_iter().map(|(_, _, n)| n).collect();
    let mut prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
    prompts.extend(engine.prepare(&captions, None)?);
    let total = prompts.len() as u64;
    for (p, prompt) in prompts.iter().enumerate() {
        for (l, inputs) in engine.model.text.linear_inputs(&prompt.tokens.ids)?.into_iter().enumerate() {
            for (x, w) in inputs.into_iter().zip(LINEAR_WEIGHTS) {
                add(format!("transformer.resblocks.{l}.{w}"), x);
            }
        }
        progress("prompts", p as u64 + 1, total);
    }
    let mut out = HashMap::new();
    for (name, (sum, count)) in sums {
        let [n, _] = sum.dims();
        let mut h = Hessian::new(n);
        h.add(&read_f32(sum).await?, count)?;
        out.insert(name, h);
    }
    Ok(out)
}
