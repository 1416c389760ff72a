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
pub mod words;

use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

pub use crate::maps::{MapOrder, Method, PromptMap, finish_maps, min_max_normalize};
pub use trace::{ImageTrace, Reads, TraceRequest};

use crate::compute::ComputePolicy;
use crate::error::{LegradError, Result};
use crate::model::Clip;
use crate::model::vision::VisionHead;
use legrad_trace::LegradModel;

impl Method {
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
    /// Is it there at all, 0..1 ([`crate::presence`]): below
    /// [`crate::presence::LIKELY_ABSENT`] the prompt is likely absent.
    pub presence: f32,
    #[serde(skip)]
    pub map: PromptMap,
}
