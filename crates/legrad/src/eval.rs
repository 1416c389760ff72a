//! Localisation and zero-shot accuracy on synthetic scenes (`legrad eval`, the fidelity
//! report and the default model's tests): pointing game (the map's maximum inside the target's
//! mask), IoU of the map binarised at 0.5 (the paper's protocol), time per map.

// std's Instant panics in the browser; web-time is std's on native targets.
use web_time::Instant;

use crate::engine::{DEFAULT_TEMPLATE, Engine};
use crate::explain::{ExplainOptions, Method};
use crate::preprocess::{InputSize, normalize_rgb};
use crate::scenes::{self, Scene};

#[derive(Clone, Debug, serde::Serialize)]
pub struct Metrics {
    pub pointing: f64,
    pub miou: f64,
    pub ms_per_map: f64,
    pub maps: usize,
}

pub fn scene_pixels(scene: &Scene) -> Vec<f32> {
    normalize_rgb(&scene.rgb, scene.height, scene.width)
}

/// Pointing game and IoU for one method over `scenes` multi-object scenes.
pub async fn localization(
    engine: &Engine,
    method: Method,
    options: &ExplainOptions,
    seed: u64,
    count: u64,
    size: usize,
) -> Result<Metrics, crate::LegradError> {
    let request = engine.request_for(&[method], options)?;
    let (mut hits, mut iou_sum, mut maps, mut seconds) = (0usize, 0f64, 0usize, 0f64);
    for i in 0..count {
        let scene = scenes::generate(seed, i, size, Some(2 + (i % 3) as usize));
        let names: Vec<String> = scene.objects.iter().map(|o| scenes::object_name(o.color, o.shape)).collect();
        let prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
        let t = Instant::now();
        let trace = engine.trace(scene_pixels(&scene), InputSize::square(size), &request)?;
        let out = engine.explain(&trace, &prompts, method, options).await?;
        seconds += t.elapsed().as_secs_f64();
        for (obj, r) in scene.objects.iter().zip(&out) {
            let (h, w) = r.map.size;
            // The map covers the grid times the patch; a margin beyond it counts as background.
            let at = |y: usize, x: usize| y * size + x;
            let (mut best, mut best_v) = (0usize, f32::NEG_INFINITY);
            let (mut inter, mut union) = (0usize, 0usize);
            for y in 0..size {
                for x in 0..size {
                    let v = if y < h && x < w { r.map.map[y * w + x] } else { 0.0 };
                    if v > best_v {
                        best_v = v;
                        best = at(y, x);
                    }
                    let pred = v >= 0.5;
                    let truth = obj.mask[at(y, x)];
                    inter += (pred && truth) as usize;
                    union += (pred || truth) as usize;
                }
            }
            hits += obj.mask[best] as usize;
            iou_sum += if union == 0 { 0.0 } else { inter as f64 / union as f64 };
            maps += 1;
        }
    }
    Ok(Metrics {
        pointing: hits as f64 / maps.max(1) as f64,
        miou: iou_sum / maps.max(1) as f64,
        ms_per_map: seconds * 1e3 / maps.max(1) as f64,
        maps,
    })
}

/// Top-1 over all colour × shape names on single-object scenes.
pub async fn zero_shot(engine: &Engine, seed: u64, count: u64, size: usize) -> Result<f64, crate::LegradError> {
    let classes = scenes::all_names();
    let names: Vec<String> = classes.iter().map(|(_, _, n)| n.clone()).collect();
    let prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
    let texts = engine.embed_texts(&prompts).await?;
    let e = engine.model.config.embed_dim;
    let mut right = 0;
    for i in 0..count {
        // A stream apart from the localisation scenes.
        let scene = scenes::generate(seed, 1_000_000 + i, size, Some(1));
        let img = engine.embed_image(scene_pixels(&scene), InputSize::square(size)).await?;
        let best = (0..classes.len())
            .max_by(|&a, &b| {
                let sa: f32 = (0..e).map(|k| img[k] * texts[a * e + k]).sum();
                let sb: f32 = (0..e).map(|k| img[k] * texts[b * e + k]).sum();
                sa.total_cmp(&sb)
            })
            .unwrap_or(0);
        let o = &scene.objects[0];
        right += (classes[best].0 == o.color && classes[best].1 == o.shape) as usize;
    }
    Ok(right as f64 / count.max(1) as f64)
}
