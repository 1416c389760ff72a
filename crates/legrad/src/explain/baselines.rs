//! The paper's baselines behind the same interface as LeGrad. Each is checked against a Python
//! reference on the fixture model (`tools/reference/baselines.py`):
//!
//! * GradCAM as pytorch-grad-cam computes it for ViTs: activations and gradients at the last
//!   block's `ln_1` output, channel weights = mean gradient over patch tokens, `relu(Σ w A)`,
//!   resized and min-max normalised.
//! * Attention Rollout (Abnar and Zuidema 2020): per layer the head-mean attention plus the
//!   identity, rows renormalised, multiplied from the first layer to the last; the CLS row.
//! * Raw attention: the last layer's CLS row, mean over heads.
//! * CheferCAM (Chefer et al. 2021) as its CLIP demo runs it (`start_layer = -1`): relevance
//!   `R = I + mean_h relu(∇A ⊙ A)` of the last block, the CLS row.
//!
//! Gradients with respect to intermediate values are taken with burn's autodiff through a zero
//! leaf added to the value (`v + z`, `d/dz = d/dv`), so every path is kept.

use burn::tensor::Tensor;

use super::trace::{ImageTrace, Reads, TraceRequest};
use super::{Context, Explainer, GridMaps, Method};
use crate::error::{LegradError, Result};
use crate::model::Clip;
use crate::model::vision::l2_normalize;

pub struct GradCam;
pub struct Rollout;
pub struct RawAttention;
pub struct CheferCam;

/// The last block's input tokens `[1, N, W]`.
fn last_input(model: &Clip, trace: &ImageTrace) -> Result<Tensor<3>> {
    Ok(trace.token_trace()?.input(model.vision.depth() - 1)?.clone().unsqueeze())
}

/// `t · normalize(ln_post(out[CLS]) @ proj)` for a block output `[1, N, W]` and a text `[1, E]`.
fn score(model: &Clip, out: Tensor<3>, text: Tensor<2>) -> Tensor<1> {
    let e = l2_normalize(model.vision.pool(out));
    (e * text).sum()
}

fn repeat_rows(row: Tensor<2>, prompts: usize) -> Tensor<2> {
    row.repeat_dim(0, prompts)
}

fn grid_maps(summed: Tensor<2>) -> GridMaps {
    GridMaps { summed, per_layer: None }
}

impl Explainer for GradCam {
    fn method(&self) -> Method {
        Method::GradCam
    }

    fn trace_request(&self, depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest::new(Reads::Tokens, depth - 1))
    }

    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        let model = cx.model;
        let x = last_input(model, trace)?;
        let block = &model.vision.weights.blocks[model.vision.depth() - 1];
        let act = block.ln_1.forward(x.clone()); // [1, N, W]: pytorch-grad-cam's activations
        let [_, n, _] = act.dims();
        let [p, _] = texts.dims();
        let mut rows = Vec::with_capacity(p);
        for i in 0..p {
            let z = act.zeros_like().detach().autodiff().require_grad();
            let att = block.attn.forward(act.clone() + z.clone(), None);
            let out = block.mlp_residual(x.clone() + att.output, model.vision.activation);
            let s = score(model, out, texts.clone().narrow(0, i, 1));
            let grads = s.backward();
            let g =
                z.grad(&grads).ok_or_else(|| LegradError::Backend("no gradient for GradCAM's activations".into()))?;
            // Patch tokens only (pytorch-grad-cam's reshape_transform drops CLS).
            let g = g.narrow(1, 1, n - 1);
            let a = act.clone().narrow(1, 1, n - 1);
            let weights = g.mean_dim(1); // [1, 1, W]
            let cam = (a * weights).sum_dim(2).reshape([1, n - 1]).clamp_min(0.0);
            rows.push(cam);
        }
        Ok(grid_maps(Tensor::cat(rows, 0)))
    }
}

impl Explainer for Rollout {
    fn method(&self) -> Method {
        Method::Rollout
    }

    fn trace_request(&self, _depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest::new(Reads::Attention, 0))
    }

    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        let depth = cx.model.vision.depth();
        let attention = trace.attention()?;
        let mut joint: Option<Tensor<2>> = None;
        for l in 0..depth {
            let probs = attention.layer(l)?.clone();
            let [_, n, _] = probs.dims();
            let eye: Tensor<2> = Tensor::eye(n, &probs.device());
            let a = probs.mean_dim(0).reshape([n, n]) + eye;
            let a = a.clone() / a.sum_dim(1);
            joint = Some(match joint {
                None => a,
                Some(j) => a.matmul(j),
            });
        }
        let joint = joint.ok_or_else(|| LegradError::Input("the vision tower has no layers".into()))?;
        let [n, _] = joint.dims();
        let row = joint.slice([0..1, 1..n]);
        Ok(grid_maps(repeat_rows(row, texts.dims()[0])))
    }
}

impl Explainer for RawAttention {
    fn method(&self) -> Method {
        Method::RawAttention
    }

    fn trace_request(&self, depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest::new(Reads::Attention, depth - 1))
    }

    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        let probs = trace.attention()?.layer(cx.model.vision.depth() - 1)?.clone();
        let [_, n, _] = probs.dims();
        let row = probs.mean_dim(0).reshape([n, n]).slice([0..1, 1..n]);
        Ok(grid_maps(repeat_rows(row, texts.dims()[0])))
    }
}

impl Explainer for CheferCam {
    fn method(&self) -> Method {
        Method::CheferCam
    }

    fn trace_request(&self, depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest::new(Reads::Tokens, depth - 1))
    }

    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        let model = cx.model;
        let x = last_input(model, trace)?;
        let block = &model.vision.weights.blocks[model.vision.depth() - 1];
        let att = block.attn.forward(block.ln_1.forward(x.clone()), None);
        let probs = att.probs.clone(); // [1, H, N, N]
        let [_, _, n, _] = probs.dims();
        let [p, _] = texts.dims();
        let mut rows = Vec::with_capacity(p);
        for i in 0..p {
            let z = probs.zeros_like().detach().autodiff().require_grad();
            let out = block.forward_from_probs(
                x.clone(),
                probs.clone() + z.clone(),
                att.values.clone(),
                model.vision.activation,
            );
            let s = score(model, out, texts.clone().narrow(0, i, 1));
            let grads = s.backward();
            let g = z.grad(&grads).ok_or_else(|| LegradError::Backend("no gradient for the attention map".into()))?;
            // R = I + mean_h relu(g ⊙ A); the CLS row without CLS (I adds nothing there).
            let cam = (g * probs.clone()).clamp_min(0.0).mean_dim(1).reshape([n, n]);
            rows.push(cam.slice([0..1, 1..n]));
        }
        Ok(grid_maps(Tensor::cat(rows, 0)))
    }
}
