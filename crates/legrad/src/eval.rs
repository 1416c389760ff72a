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

/// "Is it there?" on multi-object scenes: each scene's objects (present) against the names of
/// every colour × shape not in it (absent), pooled over scenes.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PresenceMetrics {
    /// By the engine's presence ([`crate::presence`]).
    pub auroc: f64,
    /// By the cosine's standing among a reference vocabulary's on the same image
    /// ([`crate::presence::standing`]): the alternative, measured.
    pub auroc_vocabulary_standing: f64,
    /// Shares of present prompts called present and of absent ones called absent at
    /// [`crate::presence::LIKELY_ABSENT`].
    pub present_called_present: f64,
    pub absent_called_absent: f64,
    pub present: usize,
    pub absent: usize,
}

/// [`PresenceMetrics`] over `count` scenes of `seed` (a stream of its own, apart from
/// [`localization`]'s scenes of the same seed).
pub async fn presence(
    engine: &Engine,
    seed: u64,
    count: u64,
    size: usize,
) -> Result<PresenceMetrics, crate::LegradError> {
    use crate::presence::{LIKELY_ABSENT, PresenceRule, VOCABULARY, auroc, presence, standing};
    let classes = scenes::all_names();
    let names: Vec<String> = classes.iter().map(|(_, _, n)| n.clone()).collect();
    let texts = engine.embed_texts(&engine.prepare(&names, Some(DEFAULT_TEMPLATE))?).await?;
    let vocabulary: Vec<String> = VOCABULARY.iter().map(|s| s.to_string()).collect();
    let vocab = engine.embed_texts(&engine.prepare(&vocabulary, Some(DEFAULT_TEMPLATE))?).await?;
    let rule = PresenceRule::for_scoring(engine.model.scoring);
    let e = engine.model.config.embed_dim;
    let dot = |a: &[f32], b: &[f32]| -> f32 { a.iter().zip(b).map(|(x, y)| x * y).sum() };
    let (mut present, mut absent, mut present_vocab, mut absent_vocab) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..count {
        let scene = scenes::generate(seed, 2_000_000 + i, size, Some(2 + (i % 3) as usize));
        let img = engine.embed_image(scene_pixels(&scene), InputSize::square(size)).await?;
        let vocab_cos: Vec<f32> = vocab.chunks_exact(e).map(|t| dot(t, &img)).collect();
        for (k, (c, sh, _)) in classes.iter().enumerate() {
            let cos = dot(&texts[k * e..][..e], &img);
            let p = presence(rule, cos, engine.model.score(cos));
            let z = standing(cos, &vocab_cos);
            if scene.objects.iter().any(|o| o.color == *c && o.shape == *sh) {
                present.push(p);
                present_vocab.push(z);
            } else {
                absent.push(p);
                absent_vocab.push(z);
            }
        }
    }
    let share = |v: &[f32], f: &dyn Fn(f32) -> bool| v.iter().filter(|&&x| f(x)).count() as f64 / v.len().max(1) as f64;
    Ok(PresenceMetrics {
        auroc: auroc(&present, &absent),
        auroc_vocabulary_standing: auroc(&present_vocab, &absent_vocab),
        present_called_present: share(&present, &|p| p >= LIKELY_ABSENT),
        absent_called_absent: share(&absent, &|p| p < LIKELY_ABSENT),
        present: present.len(),
        absent: absent.len(),
    })
}

/// Which word carries the score when the prompt names the wrong colour: for each object of
/// `count` multi-object scenes, the prompt "{another colour} {its shape}" (a colour no object
/// of that shape in the scene has); the share of prompts whose colour word gets the higher
/// relevance of the two.
#[derive(Clone, Debug, serde::Serialize)]
pub struct WrongWord {
    pub rate: f64,
    pub prompts: usize,
}

pub async fn wrong_word(engine: &Engine, seed: u64, count: u64, size: usize) -> Result<WrongWord, crate::LegradError> {
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options)?;
    let colours = scenes::Color::ALL;
    let (mut wrong, mut prompts) = (0usize, 0usize);
    for i in 0..count {
        let scene = scenes::generate(seed, 3_000_000 + i, size, Some(2 + (i % 3) as usize));
        let names: Vec<String> = scene
            .objects
            .iter()
            .enumerate()
            .filter_map(|(k, o)| {
                // A colour (from a per-object offset) that no object of this shape has.
                (1..colours.len())
                    .map(|d| colours[(o.color as usize + d + k + i as usize) % colours.len()])
                    .find(|c| !scene.objects.iter().any(|p| p.shape == o.shape && p.color == *c))
                    .map(|c| scenes::object_name(c, o.shape))
            })
            .collect();
        if names.is_empty() {
            continue;
        }
        let prepared = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
        let trace = engine.trace(scene_pixels(&scene), InputSize::square(size), &request)?;
        for words in engine.words(&trace, &prepared, &options).await? {
            // "red circle": the colour word first, the shape's last.
            if let [colour, .., shape] = words.as_slice() {
                wrong += (colour.relevance > shape.relevance) as usize;
                prompts += 1;
            }
        }
    }
    Ok(WrongWord { rate: wrong as f64 / prompts.max(1) as f64, prompts })
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

/// Faithfulness of a method's maps: do the pixels a map ranks high carry the model's score?
///
/// * deletion / insertion (Petsiuk et al. 2018, RISE): patches are removed from the image (or
///   revealed on a blank one) in the order the map ranks them, most relevant first, in
///   [`CURVE_STEPS`] equal steps from none to all; the score at each step is the prompt's
///   cosine similarity with the image; the area under the curve (trapezoids over the fraction
///   0..1) is reported. Lower deletion and higher insertion are better.
/// * positive / negative perturbation (Chefer et al. 2021, the LeGrad paper's §4.3): 10%..90% of
///   the patches are removed, most relevant first (positive) or least relevant first
///   (negative), and the zero-shot label (top-1 over every colour × shape name) is checked
///   against the object's; the mean accuracy over the nine steps is reported. Lower positive
///   and higher negative are better.
///
/// A removed patch is set to 0 after normalisation: the dataset's mean colour (CLIP's mean).
/// Ranks come from the map at grid resolution (one value per patch, ties by position).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Faithfulness {
    pub deletion_auc: f64,
    pub insertion_auc: f64,
    pub positive_auc: f64,
    pub negative_auc: f64,
    /// Maps the curves ran on (deletion/insertion) and scenes of the perturbation test.
    pub maps: usize,
    pub scenes: usize,
}

/// Steps of the deletion and insertion curves (fractions 0, 1/10, ..., 1).
pub const CURVE_STEPS: usize = 10;

/// Patch indices by decreasing relevance (stable: ties keep grid order).
pub fn patch_ranking(grid_map: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..grid_map.len()).collect();
    order.sort_by(|&a, &b| grid_map[b].total_cmp(&grid_map[a]));
    order
}

/// `pixels` `[3, S, S]` with the patches in `removed` (indices on the `grid`) set to 0.
pub fn remove_patches(pixels: &[f32], size: usize, patch: usize, grid: (usize, usize), removed: &[usize]) -> Vec<f32> {
    let mut out = pixels.to_vec();
    let plane = size * size;
    for &cell in removed {
        let (gy, gx) = (cell / grid.1, cell % grid.1);
        for c in 0..3 {
            for y in gy * patch..((gy + 1) * patch).min(size) {
                let row = c * plane + y * size;
                out[row + gx * patch..row + ((gx + 1) * patch).min(size)].fill(0.0);
            }
        }
    }
    out
}

/// Trapezoid area under `values` taken at equal steps over 0..1.
fn area(values: &[f64]) -> f64 {
    if values.len() < 2 {
        return values.first().copied().unwrap_or(0.0);
    }
    let n = (values.len() - 1) as f64;
    values.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / n
}

/// [`Faithfulness`] of `method` on `count` multi-object scenes (deletion and insertion, one curve
/// per object) and `count` single-object scenes (positive and negative perturbation).
pub async fn faithfulness(
    engine: &Engine,
    method: Method,
    options: &ExplainOptions,
    seed: u64,
    count: u64,
    size: usize,
) -> Result<Faithfulness, crate::LegradError> {
    let request = engine.request_for(&[method], options)?;
    let e = engine.model.config.embed_dim;
    let input = InputSize::square(size);
    let cosine = |img: &[f32], txt: &[f32]| -> f64 { img.iter().zip(txt).map(|(a, b)| *a as f64 * *b as f64).sum() };
    let (mut deletion, mut insertion, mut maps) = (0f64, 0f64, 0usize);
    for i in 0..count {
        let scene = scenes::generate(seed, i, size, Some(2 + (i % 3) as usize));
        let names: Vec<String> = scene.objects.iter().map(|o| scenes::object_name(o.color, o.shape)).collect();
        let prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
        let texts = engine.embed_texts(&prompts).await?;
        let pixels = scene_pixels(&scene);
        let trace = engine.trace(pixels.clone(), input, &request)?;
        let out = engine.explain(&trace, &prompts, method, options).await?;
        for (k, r) in out.iter().enumerate() {
            let cells = r.map.grid.0 * r.map.grid.1;
            let order = patch_ranking(&r.map.grid_map);
            let patch = trace.patch_size;
            let mut batch = Vec::with_capacity(2 * (CURVE_STEPS + 1) * pixels.len());
            for step in 0..=CURVE_STEPS {
                let n = (step * cells).div_ceil(CURVE_STEPS).min(cells);
                batch.extend(remove_patches(&pixels, size, patch, r.map.grid, &order[..n]));
                batch.extend(remove_patches(&pixels, size, patch, r.map.grid, &order[n..]));
            }
            let emb = engine.embed_images(batch, 2 * (CURVE_STEPS + 1), input).await?;
            let txt = &texts[k * e..][..e];
            let scores: Vec<f64> = emb.chunks(e).map(|img| cosine(img, txt)).collect();
            let del: Vec<f64> = scores.iter().step_by(2).copied().collect();
            let ins: Vec<f64> = scores.iter().skip(1).step_by(2).copied().collect();
            deletion += area(&del);
            insertion += area(&ins);
            maps += 1;
        }
    }
    // Perturbation: single-object scenes from the zero-shot stream.
    let classes = scenes::all_names();
    let names: Vec<String> = classes.iter().map(|(_, _, n)| n.clone()).collect();
    let class_prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
    let class_texts = engine.embed_texts(&class_prompts).await?;
    let fractions: Vec<f64> = (1..=9).map(|k| k as f64 / 10.0).collect();
    let (mut positive, mut negative) = (vec![0usize; fractions.len()], vec![0usize; fractions.len()]);
    for i in 0..count {
        let scene = scenes::generate(seed, 1_000_000 + i, size, Some(1));
        let o = &scene.objects[0];
        let label = classes.iter().position(|(c, s, _)| *c == o.color && *s == o.shape).unwrap_or(0);
        let pixels = scene_pixels(&scene);
        let trace = engine.trace(pixels.clone(), input, &request)?;
        let out = engine.explain(&trace, &class_prompts[label..label + 1], method, options).await?;
        let r = &out[0];
        let cells = r.map.grid.0 * r.map.grid.1;
        let order = patch_ranking(&r.map.grid_map);
        let mut batch = Vec::with_capacity(2 * fractions.len() * pixels.len());
        for f in &fractions {
            let n = ((f * cells as f64).round() as usize).min(cells);
            batch.extend(remove_patches(&pixels, size, trace.patch_size, r.map.grid, &order[..n]));
            batch.extend(remove_patches(&pixels, size, trace.patch_size, r.map.grid, &order[cells - n..]));
        }
        let emb = engine.embed_images(batch, 2 * fractions.len(), input).await?;
        for (j, img) in emb.chunks(e).enumerate() {
            let best = (0..classes.len())
                .max_by(|&a, &b| {
                    cosine(img, &class_texts[a * e..][..e]).total_cmp(&cosine(img, &class_texts[b * e..][..e]))
                })
                .unwrap_or(0);
            let hit = (best == label) as usize;
            if j % 2 == 0 { positive[j / 2] += hit } else { negative[j / 2] += hit }
        }
    }
    let mean_acc = |v: &[usize]| v.iter().map(|&h| h as f64 / count.max(1) as f64).sum::<f64>() / v.len() as f64;
    Ok(Faithfulness {
        deletion_auc: deletion / maps.max(1) as f64,
        insertion_auc: insertion / maps.max(1) as f64,
        positive_auc: mean_acc(&positive),
        negative_auc: mean_acc(&negative),
        maps,
        scenes: count as usize,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranking_and_removal() {
        assert_eq!(patch_ranking(&[0.1, 0.9, 0.5, 0.9]), vec![1, 3, 2, 0]);
        // A 4x4 image of 2x2 patches: removing patch 3 (bottom right) zeroes its 4 pixels per channel.
        let pixels = vec![1.0; 3 * 16];
        let out = remove_patches(&pixels, 4, 2, (2, 2), &[3]);
        assert_eq!(out.iter().filter(|v| **v == 0.0).count(), 12);
        assert_eq!(out[2 * 4 + 2], 0.0);
        assert_eq!(out[0], 1.0);
        assert!((area(&[1.0, 0.0]) - 0.5).abs() < 1e-12);
        assert!((area(&[1.0, 1.0, 1.0]) - 1.0).abs() < 1e-12);
    }
}
