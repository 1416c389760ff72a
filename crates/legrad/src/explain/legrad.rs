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

pub use super::legrad_trace::{
    ClassTokenLayer, ClassTokenTrace, LegradConsts, LegradModel, LegradTrace, PoolLayer, PoolTrace,
};
pub use super::terms::LayerTerms;
use super::terms::{finish_sums, relevance_sums_per_head};
use super::trace::{ImageTrace, Reads, TraceRequest};
use super::{Context, Explainer, GridMaps, Method, first_layer};
use crate::compute::ComputePolicy;
use crate::error::{LegradError, Result};
use crate::model::vision::{VisionHead, l2_normalize};
use crate::model::{Clip, LayerNormStats};

pub struct LeGrad {
    pub layer_index: i64,
}

impl Explainer for LeGrad {
    fn method(&self) -> Method {
        Method::LeGrad
    }

    fn trace_request(&self, depth: usize) -> Result<TraceRequest> {
        Ok(TraceRequest::new(Reads::LeGrad, first_layer(self.layer_index, depth)?))
    }

    fn explain(&self, cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>) -> Result<GridMaps> {
        match trace.legrad()? {
            LegradTrace::AttentionPool(pool) => legrad_siglip(cx, pool, texts, self.layer_index),
            LegradTrace::ClassToken(t) => {
                let (layers, terms) = layer_terms_for(cx, t, trace.tokens(), texts, self.layer_index)?;
                let maps = terms.iter().map(|t| relevance(t, cx.policy)).collect();
                Ok(stack(layers, maps))
            }
        }
    }
}

/// The closed form's terms of every layer LeGrad sums, from `layer_index` on, for the text
/// embeddings `texts` `[P, E]` on an image of `tokens` tokens; and those layers' indices.
pub fn layer_terms_for(
    cx: &Context<'_>,
    trace: &ClassTokenTrace,
    tokens: usize,
    texts: Tensor<2>,
    layer_index: i64,
) -> Result<(Vec<usize>, Vec<LayerTerms>)> {
    let model = cx.model;
    let l0 = first_layer(layer_index, model.vision.depth())?;
    let layers: Vec<usize> = (l0..model.vision.depth()).collect();
    let traced = layers.iter().map(|&l| trace.layer(l)).collect::<Result<Vec<_>>>()?;
    // The traced layers run from the trace's first layer to the last, in order.
    let offset = l0 - trace.first_layer;
    let jac = score_jacobians(model, trace, tokens)?.narrow(0, offset, layers.len()); // [L, E, W]
    let g = texts.unsqueeze::<3>().matmul(jac); // [L, P, W]
    let terms = traced
        .iter()
        .enumerate()
        .map(|(k, lt)| {
            Ok(layer_terms(cx.legrad.consts(model, lt.index)?, lt, g.clone().narrow(0, k, 1).squeeze_dim(0)))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((layers, terms))
}

/// The prompt-independent part of [`layer_terms_for`] (what a helper holds,
/// [`super::rows::row_share`]), made without the score's Jacobians: a zero prompt stands in,
/// so that the helpers get their rows while this thread makes the Jacobians.
pub fn held_terms_for(
    cx: &Context<'_>,
    trace: &ClassTokenTrace,
    layer_index: i64,
) -> Result<(Vec<usize>, Vec<LayerTerms>)> {
    let model = cx.model;
    let l0 = first_layer(layer_index, model.vision.depth())?;
    let layers: Vec<usize> = (l0..model.vision.depth()).collect();
    let terms = layers
        .iter()
        .map(|&l| {
            let lt = trace.layer(l)?;
            let consts = cx.legrad.consts(model, lt.index)?;
            let g = Tensor::zeros([1, model.vision.width], &lt.values.device());
            Ok(layer_terms(consts, lt, g))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok((layers, terms))
}

/// One layer's relevance `[P, N - 1]`: by the GPU kernels where the policy has them, else from
/// [`relevance_sums`].
fn relevance(t: &LayerTerms, policy: &ComputePolicy) -> Tensor<2> {
    #[cfg(feature = "wgpu")]
    if let Some(tiling) = policy.kernels {
        let dc = match tiling.head_gradient {
            Some(tile) => t.head_gradient_fused(tile, tiling.units),
            None => t.head_gradient(),
        };
        return super::kernel::relevance_fused(dc, t.values.clone(), tiling);
    }
    let [h, n, _] = t.values.dims();
    finish_sums(relevance_sums(t, policy), h, n)
}

/// `Σ_h Σ_i relu(dA_h)[:, i, :]` `[P, N]` over the terms' query rows, on the CPU: the share a
/// thread computes when the rows are split ([`super::rows`]). By 16-bit integer products where
/// the policy says so for the whole layer's size (the values hold every key, so every share of
/// a layer takes the same path), else in f32 ([`LayerTerms::relevance_sums_plain`]).
pub fn relevance_sums(t: &LayerTerms, policy: &ComputePolicy) -> Tensor<2> {
    let ([_, n, _], [m, w]) = (t.values.dims(), t.k.dims());
    if policy.int16_for(n, m, w)
        && let Some(sums) = super::int16::relevance_sums(t, policy.int_kernel)
    {
        return sums;
    }
    t.relevance_sums_plain()
}

pub(crate) fn stack(layers: Vec<usize>, maps: Vec<Tensor<2>>) -> GridMaps {
    let per_layer: Tensor<3> = Tensor::stack(maps, 0);
    let summed = per_layer.clone().sum_dim(0).squeeze_dim(0);
    GridMaps { summed, per_layer: Some((layers, per_layer)) }
}

/// `∂g/∂t` `[L, E, W]` for every layer of `trace` ([`score_jacobian_rows`]), computed on first
/// use and kept with the trace. `g` is linear in the text embedding `t` (`ds/dz = (t - (t·e) e)
/// / |z|`, then linear maps), so a prompt's `g` is one product with it, where the chain from `t`
/// is some thirty small operations: thirty launches per prompt on a GPU, where launches, not
/// arithmetic, are what a prompt on a small model costs.
pub fn score_jacobians(model: &Clip, trace: &ClassTokenTrace, tokens: usize) -> Result<Tensor<3>> {
    let proj = clip_proj(model)?;
    Ok(trace
        .score_jacobian
        .get_or_init(|| Box::new(score_jacobian_rows(model, &proj, &trace.layers, tokens)))
        .as_ref()
        .clone())
}

/// CLIP's projection `[W, E]`; an error for another head.
fn clip_proj(model: &Clip) -> Result<Tensor<2>> {
    match &model.vision.weights.head {
        VisionHead::ClassToken(h) => Ok(h.proj.val()),
        VisionHead::AttentionPool(_) => Err(LegradError::Unsupported(
            "this step needs CLIP's class-token projection; this is a SigLIP model".into(),
        )),
    }
}

/// `g = ds/dx_l[i]` `[L, E, W]` for the unit text embeddings (row `p`: `t = δ_p`), every traced
/// layer at once: the score `s = t · normalize(ln_post(m) @ proj)` of the mean token `m` of each
/// layer, differentiated back to `m` and shared by every token (each is `1/N` of the mean).
/// For `t = I`, `ds/dz = (I - eᵀe) / |z|` and `ds/dy = ds/dz projᵀ = (projᵀ - eᵀ (e projᵀ)) /
/// |z|`: a rank-one update of `projᵀ`, where the product with the identity was an `[E, E] x
/// [E, W]` matmul per layer (a tenth of a 224 px image step's serial part in the browser).
fn score_jacobian_rows(model: &Clip, proj: &Tensor<2>, layers: &[ClassTokenLayer], n: usize) -> Tensor<3> {
    let v = &model.vision;
    let means: Vec<Tensor<1>> = layers.iter().map(|lt| lt.output_mean.clone()).collect();
    let m: Tensor<2> = Tensor::stack(means, 0); // [L, W]
    let [l, w] = m.dims();
    let (y, stats) = v.weights.ln_post.forward_with_stats(m.reshape([l, 1, w])); // [L, 1, W]
    let z = y.matmul(proj.clone().unsqueeze()); // [L, 1, E]
    let z_norm = z.clone().powi_scalar(2).sum_dim(2).sqrt(); // [L, 1, 1]
    let e = z / z_norm.clone(); // [L, 1, E]
    let proj_t: Tensor<3> = proj.clone().transpose().unsqueeze(); // [1, E, W]
    let e_proj = e.clone().matmul(proj_t.clone()); // [L, 1, W]
    let ds_dy = (proj_t - e.swap_dims(1, 2) * e_proj) / z_norm; // [L, E, W]
    let ds_dm = v.weights.ln_post.backward(ds_dy, &stats); // [L, E, W]
    ds_dm.div_scalar(n as f64)
}

/// The terms of layer `lt` for the score gradients `g` `[P, W]`.
fn layer_terms(consts: &LegradConsts, lt: &ClassTokenLayer, g: Tensor<2>) -> LayerTerms {
    let [_, n, d] = lt.values.dims();
    let [_, m] = lt.act_grad.dims();
    let w = lt.xhat_out.dims()[1];
    debug_assert_eq!(w % d, 0);
    // Through the MLP, ln_2 and out_proj at once. With a = g W_projᵀ and dh = act' ⊙ a, the
    // gradient at the attention's concatenated heads is (LayerNorm's backward, pushed through
    // out_proj): dc = rstd ⊙ (dh K - (dh·κ) 1ᵀW_outᵀ - (dh·B/W) x̂W_outᵀ) + g W_outᵀ; the two
    // mean terms are a's products with the trace's mean rows.
    let ag = consts.ag(g); // [P, M + W]
    let mm = ag.clone().narrow(1, 0, m).matmul(lt.mean_rows.clone().transpose()); // [P, 2N]
    LayerTerms {
        act_grad: lt.act_grad.clone(),
        ag,
        k: consts.k.clone(),
        m: mm,
        ones_out: consts.ones_out.clone(),
        xhat_out: lt.xhat_out.clone(),
        rstd: lt.ln_2_rstd.clone().reshape([n]),
        values: lt.values.clone(),
    }
}

/// `R_l` `[P, N - 1]` from the gradient at the heads `dc` `[P, N, H·d]` and the values
/// `[H, N, d]`, in plain tensor operations: the reference for the fused kernel
/// ([`super::kernel`]) and the CPU path.
pub fn relevance_plain(dc: Tensor<3>, values: Tensor<3>) -> Tensor<2> {
    let [p, n, w] = dc.dims();
    let [h, _, d] = values.dims();
    debug_assert_eq!(w, h * d);
    // Per head: dA = dc_h V_hᵀ.
    let dc = dc.reshape([p, n, h, d]).swap_dims(1, 2); // [P, H, N, d]
    relevance_per_head(dc, values)
}

/// [`relevance_from_grad`] of `dA = dc Vᵀ` without holding `[P, H, N, N]`: one head at a time,
/// each head's `[P, N, N]` reduced over rows at once. The same numbers (up to summation order);
/// at 448 px a ViT-B/16 head's gradient is 2.4 MB and stays in cache, the whole is 30 MB.
fn relevance_per_head(dc: Tensor<4>, values: Tensor<3>) -> Tensor<2> {
    let [_, h, n, _] = dc.dims();
    finish_sums(relevance_sums_per_head(dc, values), h, n)
}

/// `mean_h mean_i relu(G)[:, :, i, 1:]`: `[P, H, N, N]` → `[P, N - 1]`.
pub(crate) fn relevance_from_grad(grad: Tensor<4>) -> Tensor<2> {
    let [p, _, _, n] = grad.dims();
    grad.clamp_min(0.0).mean_dim(1).mean_dim(2).reshape([p, n]).narrow(1, 1, n - 1)
}

/// LeGrad's `G` by burn's autodiff, one backward per layer and prompt: each block's input is a
/// constant, its attention probabilities a leaf. Needs a trace with [`Reads::Tokens`] (SigLIP's
/// also the model's "a photo of a" embedding, from `cx`).
pub fn legrad_autodiff(cx: &Context<'_>, trace: &ImageTrace, texts: Tensor<2>, layer_index: i64) -> Result<GridMaps> {
    let model = cx.model;
    let v = &model.vision;
    if let LegradModel::AttentionPool { empty } = cx.legrad {
        return legrad_siglip_autodiff(model, empty, trace, texts, layer_index);
    }
    let proj = clip_proj(model)?;
    let tokens = trace.token_trace()?;
    let l0 = first_layer(layer_index, v.depth())?;
    let [p, _] = texts.dims();
    let mut layers = Vec::new();
    let mut maps = Vec::new();
    for l in l0..v.depth() {
        let input = tokens.input(l)?.clone().unsqueeze::<3>();
        let block = &v.weights.blocks[l];
        let att = block.attn.forward(block.ln_1.forward(input.clone()), None);
        let mut rows = Vec::with_capacity(p);
        for i in 0..p {
            let probs = att.probs.clone().detach().autodiff().require_grad();
            let out = block.forward_from_probs(input.clone(), probs.clone(), att.values.clone(), v.activation);
            let [_, _, w] = out.dims();
            let mean = out.mean_dim(1).reshape([1, w]);
            let e = l2_normalize(v.weights.ln_post.forward(mean).matmul(proj.clone()));
            let t = texts.clone().narrow(0, i, 1);
            let s = (e * t).sum();
            let grads = s.backward();
            let g = probs
                .grad(&grads)
                .ok_or_else(|| LegradError::Backend("autodiff returned no gradient for the attention map".into()))?;
            rows.push(relevance_from_grad(g));
        }
        maps.push(Tensor::cat(rows, 0));
        layers.push(l);
    }
    Ok(stack(layers, maps))
}

// ---------------------------------------------------------------- SigLIP

/// LeGrad on SigLIP (`compute_legrad_siglip`): for each layer l from `layer_index` on, the
/// attention pool is applied to block l's output (without the final norm, as the reference),
/// `s = t · normalize(attn_pool(x_l))`, `G = ds/dA` for the pool's attention `A` `[H, 1, N]`,
/// `R_l = mean_h relu(G)` over all N tokens (there is no class token). Summed over layers; then
/// the correction: where the min-max normalised map of the prompt "a photo of a" exceeds 0.8,
/// the map is set to 0. (The host then min-max normalises at grid resolution and upsamples:
/// [`super::MapOrder::NormaliseThenUpsample`].)
///
/// The reference sums the scores of all prompts before differentiating (one map for a batch);
/// here each prompt's map is what it gives alone, as for CLIP.
///
/// `G` in closed form from the cached [`PoolTrace`], with
/// `o` the pool's output, `y` the MLP's residual input, `h` its pre-activation:
/// `ds/do = (t - s e) / |o|`, `ds/dy = ds/do + LN_backward(W_fc1ᵀ (act'(h) ⊙ W_fc2ᵀ ds/do))`,
/// `ds/dc = W_projᵀ ds/dy` (c: the heads' context), `G_h[j] = ds/dc_h · v_h[j]`. A few
/// mat-vecs per layer and prompt; [`legrad_siglip_autodiff`] checks it.
pub fn legrad_siglip(cx: &Context<'_>, trace: &PoolTrace, texts: Tensor<2>, layer_index: i64) -> Result<GridMaps> {
    let v = &cx.model.vision;
    let (pool, empty) = match (&v.weights.head, cx.legrad) {
        (VisionHead::AttentionPool(h), LegradModel::AttentionPool { empty }) => (&h.pool, empty),
        _ => return Err(LegradError::Unsupported("SigLIP's LeGrad runs on a SigLIP model".into())),
    };
    let l0 = first_layer(layer_index, v.depth())?;
    let [p, e] = texts.dims();
    // The empty prompt rides along as one more row.
    let all = Tensor::cat(vec![texts, empty.clone().reshape([1, e])], 0); // [P + 1, E]
    let mut layers = Vec::new();
    let mut maps = Vec::new();
    for l in l0..v.depth() {
        let pt = trace.layer(l)?;
        let o = pt.output.clone().unsqueeze::<2>(); // [1, W]
        let o_norm = o.clone().powi_scalar(2).sum_dim(1).sqrt(); // [1, 1]
        let unit = o / o_norm.clone();
        let s = all.clone().matmul(unit.clone().transpose()); // [P+1, 1]
        let d_o = (all.clone() - s * unit) / o_norm; // [P+1, W]
        let a = d_o.clone().matmul(pool.mlp.c_proj.weight().transpose()) * pt.act_grad.clone(); // [P+1, M]
        let d_norm = a.matmul(pool.mlp.c_fc.weight().transpose()); // [P+1, W]
        let stats = LayerNormStats { x_hat: pt.x_hat.clone(), rstd: pt.rstd.clone() };
        let d_y = d_o + pool.norm.backward(d_norm, &stats);
        let d_c = d_y.matmul(pool.proj.weight().transpose()); // [P+1, W]
        maps.push(pool_relevance(d_c, pt.values.clone()));
        layers.push(l);
    }
    let per_layer: Tensor<3> = Tensor::stack(maps, 0); // [L, P+1, N]
    let summed = per_layer.clone().sum_dim(0).squeeze_dim::<2>(0); // [P+1, N]
    let n = summed.dims()[1];
    let corrected = siglip_correction(summed.clone().narrow(0, 0, p), summed.narrow(0, p, 1));
    let per_layer = per_layer.narrow(1, 0, p);
    debug_assert_eq!(per_layer.dims(), [layers.len(), p, n]);
    Ok(GridMaps { summed: corrected, per_layer: Some((layers, per_layer)) })
}

/// `mean_h relu(G)` `[P, N]` for `G_h[p, j] = dc[p, h] · v_h[j]`, with `dc` `[P, H·d]` and the
/// values `[H, N, d]`.
fn pool_relevance(dc: Tensor<2>, values: Tensor<3>) -> Tensor<2> {
    let [p, w] = dc.dims();
    let [h, _, d] = values.dims();
    debug_assert_eq!(w, h * d);
    let dc = dc.reshape([p, h, d]).swap_dims(0, 1); // [H, P, d]
    let g = dc.matmul(values.swap_dims(1, 2)); // [H, P, N]
    g.clamp_min(0.0).mean_dim(0).squeeze_dim(0)
}

/// The reference's SigLIP correction: `maps[min_max(empty) > 0.8] = 0`, with `maps` `[P, N]`
/// and the empty prompt's map `[1, N]`. A constant empty map (NaN in the reference) masks
/// nothing.
pub fn siglip_correction(maps: Tensor<2>, empty: Tensor<2>) -> Tensor<2> {
    let lo = empty.clone().min_dim(1);
    let hi = empty.clone().max_dim(1);
    let normed = (empty - lo.clone()) / (hi - lo);
    let mask = normed.greater_elem(0.8); // NaN compares false
    let [p, n] = maps.dims();
    maps.mask_fill(mask.expand([p, n]), 0.0)
}

/// [`legrad_siglip`]'s `G` by burn's autodiff: the pool's attention on each traced block's
/// output is a leaf, one backward per layer and prompt. Needs a trace with [`Reads::Tokens`].
fn legrad_siglip_autodiff(
    model: &Clip,
    empty: &Tensor<1>,
    trace: &ImageTrace,
    texts: Tensor<2>,
    layer_index: i64,
) -> Result<GridMaps> {
    let v = &model.vision;
    let VisionHead::AttentionPool(head) = &v.weights.head else {
        return Err(LegradError::Unsupported("SigLIP's LeGrad runs on a SigLIP model".into()));
    };
    let pool = &head.pool;
    let tokens = trace.token_trace()?;
    let l0 = first_layer(layer_index, v.depth())?;
    let [p, e] = texts.dims();
    let all = Tensor::cat(vec![texts, empty.clone().reshape([1, e])], 0);
    let mut layers = Vec::new();
    let mut maps = Vec::new();
    for l in l0..v.depth() {
        let x = tokens.output(l)?.clone().unsqueeze::<3>(); // [1, N, W]
        let (probs, values) = pool.attention(x);
        let mut rows = Vec::with_capacity(p + 1);
        for i in 0..p + 1 {
            let leaf = probs.clone().detach().autodiff().require_grad();
            let out = pool.from_probs(leaf.clone(), values.clone().detach(), v.activation).output; // [1, W]
            let s = (l2_normalize(out) * all.clone().narrow(0, i, 1)).sum();
            let grads = s.backward();
            let g = leaf
                .grad(&grads)
                .ok_or_else(|| LegradError::Backend("autodiff returned no gradient for the pool's attention".into()))?;
            rows.push(g.clamp_min(0.0).mean_dim(1).squeeze_dim::<2>(1)); // [1, N]
        }
        maps.push(Tensor::cat(rows, 0));
        layers.push(l);
    }
    let per_layer: Tensor<3> = Tensor::stack(maps, 0);
    let summed = per_layer.clone().sum_dim(0).squeeze_dim::<2>(0);
    let corrected = siglip_correction(summed.clone().narrow(0, 0, p), summed.narrow(0, p, 1));
    Ok(GridMaps { summed: corrected, per_layer: Some((layers, per_layer.narrow(1, 0, p))) })
}
