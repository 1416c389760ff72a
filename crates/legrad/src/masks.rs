//! Masks from maps: each prompt's map binarised at a threshold, and one segmentation of every
//! prompt at once (a pixel claimed by several goes to the highest map). The page draws them
//! (its slider moves the threshold without recomputing a map); the CLI writes them.
//!
//! The default threshold, 0.5 on the min-max normalised map, is the segmentation protocol of
//! the LeGrad paper (arXiv 2404.03214, its segmentation evaluation: maps binarised at 0.5
//! against the ground-truth masks), the one `legrad eval`'s mIoU has used from the start
//! (docs/benchmarks-history.md §2).

use serde::Serialize;

/// The paper's threshold on a min-max normalised map.
pub const DEFAULT_THRESHOLD: f32 = 0.5;

/// Label of a pixel no mask claims.
pub const BACKGROUND: u8 = 0;

/// The most prompts a label image holds (labels 1..=255).
pub const MAX_LABELS: usize = 255;

/// `map >= threshold`, per pixel (NaN is outside).
pub fn mask(map: &[f32], threshold: f32) -> Vec<bool> {
    map.iter().map(|&v| v >= threshold).collect()
}

/// One label per pixel over maps of the same size: [`BACKGROUND`] where no map reaches
/// `threshold`, else `k + 1` for the highest map `k` among those that do (the first on a tie).
/// Maps past [`MAX_LABELS`] are left out.
pub fn labels(maps: &[&[f32]], threshold: f32) -> Vec<u8> {
    let mut s = Segmentation::new(maps.first().map_or(0, |m| m.len()), threshold);
    for (k, m) in maps.iter().enumerate() {
        s.add(k, m);
    }
    s.labels
}

/// [`labels`] built one map at a time (a photo's full-size maps of every prompt need not be
/// held at once).
pub struct Segmentation {
    threshold: f32,
    best: Vec<f32>,
    /// One label per pixel so far.
    pub labels: Vec<u8>,
}

impl Segmentation {
    pub fn new(pixels: usize, threshold: f32) -> Self {
        Self { threshold, best: vec![f32::NEG_INFINITY; pixels], labels: vec![BACKGROUND; pixels] }
    }

    /// Map `k` (in prompt order; past [`MAX_LABELS`] it is left out).
    pub fn add(&mut self, k: usize, map: &[f32]) {
        if k >= MAX_LABELS {
            return;
        }
        for (px, label) in self.labels.iter_mut().enumerate() {
            let v = map.get(px).copied().unwrap_or(f32::NAN);
            if v >= self.threshold && v > self.best[px] {
                self.best[px] = v;
                *label = (k + 1) as u8;
            }
        }
    }
}

/// Prompt `k`'s colour: well apart from its neighbours (Tableau 10), then again.
pub fn color(k: usize) -> [u8; 3] {
    const TABLEAU: [[u8; 3]; 10] = [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [127, 127, 127],
        [188, 189, 34],
        [23, 190, 207],
    ];
    TABLEAU[k % TABLEAU.len()]
}

/// `#rrggbb`.
pub fn hex(c: [u8; 3]) -> String {
    format!("#{:02x}{:02x}{:02x}", c[0], c[1], c[2])
}

/// The image `rgb` with each labelled pixel blended towards its prompt's colour by `alpha`.
pub fn draw_labels(rgb: &[u8], labels: &[u8], alpha: f32) -> Vec<u8> {
    let mut out = rgb.to_vec();
    for (px, &l) in labels.iter().enumerate() {
        if l == BACKGROUND || 3 * px + 2 >= out.len() {
            continue;
        }
        let c = color(l as usize - 1);
        for ch in 0..3 {
            let v = out[3 * px + ch] as f32 * (1.0 - alpha) + c[ch] as f32 * alpha;
            out[3 * px + ch] = v.round().clamp(0.0, 255.0) as u8;
        }
    }
    out
}

/// A label image's legend (written beside it as JSON).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Legend {
    pub threshold: f32,
    /// `(height, width)` of the label image.
    pub size: (usize, usize),
    pub background: u8,
    pub labels: Vec<LegendEntry>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LegendEntry {
    pub label: u8,
    pub prompt: String,
    pub color: String,
    /// Pixels with this label.
    pub pixels: usize,
}

/// The legend of `labels` for `prompts` (in map order).
pub fn legend(prompts: &[String], labels: &[u8], size: (usize, usize), threshold: f32) -> Legend {
    let mut counts = [0usize; 256];
    for &l in labels {
        counts[l as usize] += 1;
    }
    Legend {
        threshold,
        size,
        background: BACKGROUND,
        labels: prompts
            .iter()
            .take(MAX_LABELS)
            .enumerate()
            .map(|(k, p)| LegendEntry {
                label: (k + 1) as u8,
                prompt: p.clone(),
                color: hex(color(k)),
                pixels: counts[k + 1],
            })
            .collect(),
    }
}

/// Intersection over union of two masks (0 when both are empty).
pub fn iou(a: &[bool], b: &[bool]) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (&x, &y) in a.iter().zip(b) {
        inter += (x && y) as usize;
        union += (x || y) as usize;
    }
    if union == 0 { 0.0 } else { inter as f64 / union as f64 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_highest_map_takes_a_shared_pixel() {
        let a = [0.9, 0.6, 0.2, f32::NAN];
        let b = [0.7, 0.8, 0.4, 0.9];
        assert_eq!(mask(&a, 0.5), vec![true, true, false, false]);
        assert_eq!(labels(&[&a, &b], 0.5), vec![1, 2, BACKGROUND, 2]);
        assert_eq!(labels(&[&a, &b], 0.85), vec![1, BACKGROUND, BACKGROUND, 2]);
        let l = legend(&["a".into(), "b".into()], &labels(&[&a, &b], 0.5), (2, 2), 0.5);
        assert_eq!(l.labels[1].pixels, 2);
        assert_eq!(l.labels[0].color, "#1f77b4");
        assert_eq!(iou(&[true, true, false], &[true, false, false]), 0.5);
        assert_eq!(iou(&[false], &[false]), 0.0);
        let drawn = draw_labels(&[0, 0, 0, 100, 100, 100], &[1, 0], 1.0);
        assert_eq!(&drawn[..3], &color(0));
        assert_eq!(&drawn[3..], &[100, 100, 100]);
    }
}
