//! LeGrad (arXiv 2404.03214; `legrad-torch` `compute_legrad_clip`), LEGRAD.md sections 4-5.
//!
//! For each layer l from `layer_index` on and each prompt p:
//! `s = t_p · normalize(ln_post(mean_i x_l[i]) @ proj)`, `G = ds/dA_l`,
//! `R = mean_h mean_i relu(G)[h, i, 1:]`; the map is the sum over layers.
//!
//! [`LeGrad`] computes `G` in closed form from the cached trace (two MLP-sized matmuls per layer
//! and prompt, no image forward). [`legrad_autodiff`] computes the same `G` with burn's autodiff
//! from the block inputs; the tests check that the two agree.

use burn::tensor::Tensor;

use super::{Explainer, GridMaps, Method, first_layer};
use crate::error::{LegradError, Result};
use crate::model::vision::l2_normalize;
use crate::model::{Clip, ImageTrace, LayerTrace, TraceRequest};

pub struct LeGrad {
    pub layer_index: i64,
}

impl Explainer for LeGrad {
    fn method(&self) -> Method {
        Method::LeGrad
    }

    fn trace_request(&self, depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest {
            first_layer: first_layer(self.layer_index, depth)?,
            mlp_backward: true,
            attention: false,
            tokens: false,
        })
    }

    fn explain(&self, model: &Clip, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        let l0 = first_layer(self.layer_index, model.vision.depth())?;
        let mut layers = Vec::new();
        let mut maps = Vec::new();
        for l in l0..model.vision.depth() {
            let lt = trace.layer(l).ok_or_else(|| missing(l))?;
            maps.push(layer_relevance(model, lt, texts.clone())?);
            layers.push(l);
        }
        Ok(stack(layers, maps))
    }
}

fn missing(l: usize) -> LegradError {
    LegradError::Input(format!(
        "the image trace does not hold layer {l}: trace the image with this method's request"
    ))
}

pub(crate) fn stack(layers: Vec<usize>, maps: Vec<Tensor<2>>) -> GridMaps {
    let per_layer: Tensor<3> = Tensor::stack(maps, 0);
    let summed = per_layer.clone().sum_dim(0).squeeze_dim(0);
    GridMaps {
        summed,
        per_layer: Some((layers, per_layer)),
    }
}

/// `R_l` for every prompt: `[P, N - 1]`, from the closed-form gradient (LEGRAD.md section 5).
fn layer_relevance(model: &Clip, lt: &LayerTrace, texts: Tensor<2>) -> Result<Tensor<2>> {
    let v = &model.vision;
    let block = &v.weights.blocks[lt.index];
    let (Some(values), Some(ln_2), Some(act_grad)) = (&lt.values, &lt.ln_2, &lt.act_grad) else {
        return Err(missing(lt.index));
    };
    let [p, _] = texts.dims();
    let [h, n, d] = values.dims();
    let w = h * d;

    // Embedding of the mean token and the score's gradient with respect to it.
    let m = lt.output_mean.clone().reshape([1, w]);
    let (y, stats) = v.weights.ln_post.forward_with_stats(m);
    let proj = v.weights.proj.val(); // [W, E]
    let z = y.matmul(proj.clone()); // [1, E]
    let z_norm = z.clone().powi_scalar(2).sum_dim(1).sqrt(); // [1, 1]
    let e = z / z_norm.clone(); // [1, E]
    let s = texts.clone().matmul(e.clone().transpose()); // [P, 1]
    let ds_dz = (texts - s * e) / z_norm; // [P, E]
    let ds_dy = ds_dz.matmul(proj.transpose()); // [P, W]
    let ds_dm = v.weights.ln_post.backward(ds_dy, &stats); // [P, W]
    // Every token contributes 1/N to the mean: the same gradient g for each.
    let g = ds_dm.div_scalar(n as f64); // [P, W]

    // Through the MLP: c_proj's weight is [M, W] (burn's [in, out]).
    let a = g.clone().matmul(block.mlp.c_proj.weight.val().transpose()); // [P, M]
    let dh = act_grad.clone().unsqueeze::<3>() * a.unsqueeze_dim(1); // [P, N, M]
    let dn2 = dh.matmul(block.mlp.c_fc.weight.val().transpose().unsqueeze()); // [P, N, W]
    let stats2 = crate::model::LayerNormStats {
        x_hat: ln_2.x_hat.clone().unsqueeze::<3>(),
        rstd: ln_2.rstd.clone().unsqueeze::<3>(),
    };
    let du = block.ln_2.backward(dn2, &stats2) + g.unsqueeze_dim(1); // [P, N, W]

    // Through out_proj (o = c W_out), then per head dA = dc_h V_hᵀ.
    let dc = du.matmul(block.attn.out_proj.weight.val().transpose().unsqueeze()); // [P, N, W]
    let dc = dc.reshape([p, n, h, d]).swap_dims(1, 2); // [P, H, N, d]
    let da = dc.matmul(values.clone().swap_dims(1, 2).unsqueeze()); // [P, H, N, N]
    Ok(relevance_from_grad(da))
}

/// `mean_h mean_i relu(G)[:, :, i, 1:]`: `[P, H, N, N]` → `[P, N - 1]`.
pub(crate) fn relevance_from_grad(grad: Tensor<4>) -> Tensor<2> {
    let [p, _, _, n] = grad.dims();
    grad.clamp_min(0.0)
        .mean_dim(1)
        .mean_dim(2)
        .reshape([p, n])
        .narrow(1, 1, n - 1)
}

/// LeGrad's `G` by burn's autodiff, one backward per layer and prompt: each block's input is a
/// constant, its attention probabilities a leaf. Needs a trace with `tokens`.
pub fn legrad_autodiff(model: &Clip, trace: &ImageTrace, texts: Tensor<2>, layer_index: i64) -> Result<GridMaps> {
    let v = &model.vision;
    let l0 = first_layer(layer_index, v.depth())?;
    let [p, _] = texts.dims();
    let mut layers = Vec::new();
    let mut maps = Vec::new();
    for l in l0..v.depth() {
        let lt = trace.layer(l).ok_or_else(|| missing(l))?;
        let input = lt.input.clone().ok_or_else(|| missing(l))?.unsqueeze::<3>();
        let block = &v.weights.blocks[l];
        let att = block.attn.forward(block.ln_1.forward(input.clone()), None);
        let mut rows = Vec::with_capacity(p);
        for i in 0..p {
            let probs = att.probs.clone().detach().autodiff().require_grad();
            let out = block.forward_from_probs(input.clone(), probs.clone(), att.values.clone(), v.activation);
            let [_, _, w] = out.dims();
            let mean = out.mean_dim(1).reshape([1, w]);
            let e = l2_normalize(v.weights.ln_post.forward(mean).matmul(v.weights.proj.val()));
            let t = texts.clone().narrow(0, i, 1);
            let s = (e * t).sum();
            let grads = s.backward();
            let g = probs.grad(&grads).ok_or_else(|| {
                LegradError::Backend("autodiff returned no gradient for the attention map".into())
            })?;
            rows.push(relevance_from_grad(g));
        }
        maps.push(Tensor::cat(rows, 0));
        layers.push(l);
    }
    Ok(stack(layers, maps))
}
