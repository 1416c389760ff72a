//! LeGrad (arXiv 2404.03214; `legrad-torch` `compute_legrad_clip`), LEGRAD.md sections 4-5.
//!
//! For each layer l from `layer_index` on and each prompt p:
//! `s = t_p · normalize(ln_post(mean_i x_l[i]) @ proj)`, `G = ds/dA_l`,
//! `R = mean_h mean_i relu(G)[h, i, 1:]`; the map is the sum over layers.
//!
//! [`LeGrad`] computes `G` in closed form from the cached trace (one MLP-sized matmul per layer
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
    let (Some(values), Some(rstd), Some(xhat_out), Some(act_grad), Some(act_grad_b)) =
        (&lt.values, &lt.ln_2_rstd, &lt.xhat_out, &lt.act_grad, &lt.act_grad_b)
    else {
        return Err(missing(lt.index));
    };
    let consts = v.legrad_consts(lt.index)?;
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

    // Through the MLP, ln_2 and out_proj at once. With a = g W_projᵀ and dh = act' ⊙ a, the
    // gradient at the attention's concatenated heads is (LayerNorm's backward, pushed through
    // out_proj): dc = rstd ⊙ (dh K - (dh·κ) 1ᵀW_outᵀ - (dh·B/W) x̂W_outᵀ) + g W_outᵀ.
    let a = g.clone().matmul(block.mlp.c_proj.weight.val().transpose()); // [P, M]
    let dh = act_grad.clone().unsqueeze::<3>() * a.clone().unsqueeze_dim(1); // [P, N, M]
    let main = dh.matmul(consts.k.unsqueeze()); // [P, N, W]
    let mean_1 = act_grad.clone().matmul((a.clone() * consts.kappa.unsqueeze()).transpose()); // [N, P]
    let mean_2 = act_grad_b.clone().matmul(a.transpose()).div_scalar(w as f64); // [N, P]
    let mean_1 = mean_1.transpose().unsqueeze_dim::<3>(2); // [P, N, 1]
    let mean_2 = mean_2.transpose().unsqueeze_dim::<3>(2); // [P, N, 1]
    let g_out = g.matmul(block.attn.out_proj.weight.val().transpose()).unsqueeze_dim::<3>(1); // [P, 1, W]
    let dc = (main - mean_1 * consts.ones_out.unsqueeze::<3>() - mean_2 * xhat_out.clone().unsqueeze::<3>())
        * rstd.clone().unsqueeze::<3>()
        + g_out; // [P, N, W]

    // Per head: dA = dc_h V_hᵀ.
    let dc = dc.reshape([p, n, h, d]).swap_dims(1, 2); // [P, H, N, d]
    Ok(relevance_per_head(dc, values.clone()))
}

/// [`relevance_from_grad`] of `dA = dc Vᵀ` without holding `[P, H, N, N]`: one head at a time,
/// each head's `[P, N, N]` reduced over rows at once. The same numbers (up to summation order);
/// at 448 px a ViT-B/16 head's gradient is 2.4 MB and stays in cache, the whole is 30 MB.
fn relevance_per_head(dc: Tensor<4>, values: Tensor<3>) -> Tensor<2> {
    let [p, h, n, _] = dc.dims();
    let mut sum: Option<Tensor<3>> = None;
    for k in 0..h {
        let dc_k = dc.clone().narrow(1, k, 1).squeeze_dim::<3>(1); // [P, N, d]
        let v_k = values.clone().narrow(0, k, 1).swap_dims(1, 2); // [1, d, N]
        let r = dc_k.matmul(v_k).clamp_min(0.0).sum_dim(1); // [P, 1, N]
        sum = Some(match sum {
            None => r,
            Some(s) => s + r,
        });
    }
    let sum = sum.expect("at least one head");
    sum.reshape([p, n]).div_scalar((h * n) as f64).narrow(1, 1, n - 1)
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
