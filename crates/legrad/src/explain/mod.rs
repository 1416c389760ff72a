//! Explainers: one interface, LeGrad and the baseline methods behind it.
//!
//! An explainer declares what it needs from the image's forward pass ([`TraceRequest`]),
//! then turns a cached [`ImageTrace`] and text embeddings into relevance maps at grid
//! resolution, on the device. [`finish_maps`] does the host-side rest: upsampling to the input
//! size and min-max normalisation, as the reference does after its sum over layers.

pub mod baselines;
pub mod int16;
#[cfg(feature = "wgpu")]
pub mod kernel;
pub mod legrad;
pub mod legrad_trace;
pub mod rows;
pub mod terms;
pub mod trace;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use trace::{ImageTrace, Reads, TraceRequest};

use crate::compute::ComputePolicy;
use crate::error::{LegradError, Result};
use crate::model::Clip;
use crate::model::pos_embed::upsample_bilinear;
use crate::model::vision::VisionHead;
use legrad_trace::LegradModel;

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

    /// Does this method run on a vision tower with `head`? The baselines are defined through
    /// CLIP's class token (GradCAM and CheferCAM differentiate the class token's score, Rollout
    /// and RawAttention read its attention row), which SigLIP does not have; the reference's
    /// baselines (pytorch-grad-cam on CLIP, `tools/reference/baselines.py`) define none for
    /// SigLIP's attention pool, so there is nothing to check a SigLIP variant against.
    pub fn supports(self, head: &VisionHead) -> Result<()> {
        match (self, head) {
            (_, VisionHead::ClassToken(_)) | (Method::LeGrad, VisionHead::AttentionPool(_)) => Ok(()),
            (m, VisionHead::AttentionPool(_)) => Err(LegradError::Unsupported(format!(
                "{} on a SigLIP model: it reads CLIP's class token, which SigLIP does not have; use LeGrad",
                m.name()
            ))),
        }
    }

    /// How [`finish_maps`] orders normalisation and upsampling for this method on `head`.
    pub fn map_order(self, head: &VisionHead) -> MapOrder {
        match (self, head) {
            (Method::LeGrad, VisionHead::AttentionPool(_)) => MapOrder::NormaliseThenUpsample,
            _ => MapOrder::UpsampleThenNormalise,
        }
    }

    pub fn explainer(self, options: &ExplainOptions) -> Box<dyn Explainer> {
        match self {
            Method::LeGrad => Box::new(legrad::LeGrad { layer_index: options.layer_index }),
            Method::GradCam => Box::new(baselines::GradCam),
            Method::Rollout => Box::new(baselines::Rollout),
            Method::RawAttention => Box::new(baselines::RawAttention),
            Method::CheferCam => Box::new(baselines::CheferCam),
        }
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

/// Options shared by the explainers.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExplainOptions {
    /// LeGrad's `layer_index`: the first layer used, counted from the end when negative.
    pub layer_index: i64,
}

impl Default for ExplainOptions {
    fn default() -> Self {
        Self { layer_index: -2 }
    }
}

/// Resolve a `layer_index` (negative counts from the end) against a depth.
pub fn first_layer(layer_index: i64, depth: usize) -> Result<usize> {
    let l0 = if layer_index < 0 { depth as i64 + layer_index } else { layer_index };
    if l0 < 0 || l0 >= depth as i64 {
        return Err(LegradError::Input(format!(
            "layer index {layer_index} is out of range for a {depth}-layer vision tower (use -{depth}..{})",
            depth - 1
        )));
    }
    Ok(l0 as usize)
}

/// Relevance at grid resolution, on the device, before upsampling and normalisation.
#[derive(Clone, Debug)]
pub struct GridMaps {
    /// `[P, G_h * G_w]`, row-major grid.
    pub summed: Tensor<2>,
    /// Per layer `[L, P, G_h * G_w]` and the layer indices, where the method has layers.
    pub per_layer: Option<(Vec<usize>, Tensor<3>)>,
}

/// What every explainer is given besides the trace and the texts: the model, what LeGrad keeps
/// per model, and the engine's compute policy.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    pub model: &'a Clip,
    pub legrad: &'a LegradModel,
    pub policy: &'a ComputePolicy,
}

pub trait Explainer: Send + Sync {
    fn method(&self) -> Method;
    /// What the image forward must keep for this method, for a tower of `depth` layers.
    fn trace_request(&self, depth: usize) -> Result<TraceRequest>;
    /// Maps for each text embedding (`[P, E]`, L2-normalised).
    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps>;
}

/// One prompt's explanation.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedPrompt {
    pub prompt: String,
    pub text: String,
    /// The prompt was cut to the context length.
    pub truncated: bool,
    /// Cosine similarity of the image and text embeddings (CLIP); SigLIP's sigmoid
    /// probability `sigmoid(exp(logit_scale) cos + logit_bias)`.
    pub score: f32,
    #[serde(skip)]
    pub map: PromptMap,
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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
