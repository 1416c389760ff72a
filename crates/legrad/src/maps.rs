//! What a map is once it is on the host, and the arithmetic that finishes it: the methods' names,
//! upsampling and min-max normalisation (the reference's last steps). No tensors: the web page
//! draws with this module too, without the engine (the crate's `engine` feature).

use serde::{Deserialize, Serialize};

use crate::error::{LegradError, Result};
use crate::resample::upsample_bilinear;

/// The explanation methods the app offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Method {
    LeGrad,
    GradCam,
    Rollout,
    RawAttention,
    CheferCam,
}

impl Method {
    pub const ALL: [Method; 5] =
        [Method::LeGrad, Method::GradCam, Method::Rollout, Method::RawAttention, Method::CheferCam];

    pub fn name(self) -> &'static str {
        match self {
            Method::LeGrad => "LeGrad",
            Method::GradCam => "GradCAM",
            Method::Rollout => "Rollout",
            Method::RawAttention => "RawAttention",
            Method::CheferCam => "CheferCAM",
        }
    }

    /// Does one call explain all prompts together (so that padding the batch costs little)?
    /// GradCAM and CheferCAM run a backward pass per prompt.
    pub fn batches_prompts(self) -> bool {
        !matches!(self, Method::GradCam | Method::CheferCam)
    }

    /// Does the map depend on the prompt?
    pub fn uses_text(self) -> bool {
        !matches!(self, Method::Rollout | Method::RawAttention)
    }
}

impl std::str::FromStr for Method {
    type Err = LegradError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().replace(['-', '_', ' '], "").as_str() {
            "legrad" => Ok(Method::LeGrad),
            "gradcam" => Ok(Method::GradCam),
            "rollout" | "attentionrollout" => Ok(Method::Rollout),
            "rawattention" | "attention" => Ok(Method::RawAttention),
            "chefercam" | "chefer" => Ok(Method::CheferCam),
            _ => Err(LegradError::Input(format!(
                "unknown method '{s}': expected one of {}",
                Method::ALL.map(|m| m.name()).join(", ")
            ))),
        }
    }
}

/// One prompt's map, on the host.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptMap {
    /// Grid `(rows, cols)`.
    pub grid: (usize, usize),
    /// Min-max normalised at grid resolution, `rows * cols`.
    pub grid_map: Vec<f32>,
    /// `(height, width)` of `map`: the grid times the patch size.
    pub size: (usize, usize),
    /// Upsampled bilinearly then min-max normalised (the reference's output), `height * width`.
    pub map: Vec<f32>,
    /// The raw map was constant (e.g. every gradient negative): `map` is all zeros. The
    /// reference returns NaN here.
    pub constant: bool,
    /// Per-layer raw grid maps `(layer, rows * cols)`, where requested.
    pub per_layer: Vec<(usize, Vec<f32>)>,
}

/// Min-max normalise in place; returns false (and zeros) when the values are constant or not
/// finite.
pub fn min_max_normalize(values: &mut [f32]) -> bool {
    let (lo, hi) = values.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = hi - lo;
    if !(range.is_finite() && range > 0.0) {
        values.iter_mut().for_each(|v| *v = 0.0);
        return false;
    }
    values.iter_mut().for_each(|v| *v = (*v - lo) / range);
    true
}

/// The order of the reference's last two steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum MapOrder {
    /// Upsample, then min-max (`compute_legrad_clip`, the baselines).
    UpsampleThenNormalise,
    /// Min-max at grid resolution, then upsample (`compute_legrad_siglip`): the map's extremes
    /// need not reach 0 and 1 after upsampling.
    NormaliseThenUpsample,
}

/// Host-side end of an explanation: per prompt, upsample the summed grid map by the patch size
/// and min-max normalise (both at grid and at image resolution), in `order`.
pub fn finish_maps(
    summed: &[f32],
    per_layer: Option<(&[usize], &[f32])>,
    prompts: usize,
    grid: (usize, usize),
    patch: usize,
    order: MapOrder,
) -> Vec<PromptMap> {
    let cells = grid.0 * grid.1;
    (0..prompts)
        .map(|p| {
            let raw = &summed[p * cells..][..cells];
            // Upsample, then min-max: the order of every reference here (pytorch-grad-cam
            // normalises at grid resolution and again after resizing, which comes to the same).
            // The two do not commute: bilinear upsampling does not reach the grid's extremes.
            let mut grid_map = raw.to_vec();
            let grid_ok = min_max_normalize(&mut grid_map);
            let (map, ok) = match order {
                MapOrder::UpsampleThenNormalise => {
                    let mut map = upsample_bilinear(raw, 1, grid, patch);
                    let ok = min_max_normalize(&mut map);
                    (map, ok)
                }
                MapOrder::NormaliseThenUpsample => (upsample_bilinear(&grid_map, 1, grid, patch), grid_ok),
            };
            let per_layer = per_layer
                .map(|(layers, data)| {
                    layers
                        .iter()
                        .enumerate()
                        .map(|(i, &l)| (l, data[(i * prompts + p) * cells..][..cells].to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            PromptMap { grid, grid_map, size: (grid.0 * patch, grid.1 * patch), map, constant: !ok, per_layer }
        })
        .collect()
}
