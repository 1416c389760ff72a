//! Which words of a prompt its score rests on: LeGrad's idea turned to the text tower
//! (docs/ARCHITECTURE.md "Words").
//!
//! For each text block `l` from the first word layer on, the prompt's feature is read at the
//! pooled token after that block (`ln_final`, the projection, normalised, as the tower's own
//! end) and its score against the image embedding `e` is differentiated with respect to that
//! block's attention probabilities at the pooled row, `G_l = ∂s_l/∂A_l[h, pool, j]`; a token's
//! relevance is `Σ_l mean_h relu(G_l)[h, j]`. As on the vision side (LEGRAD.md section 5) only
//! the pooled row's own block lies between `A_l` and `s_l`, so `G_l` has a closed form:
//! through the normalisation and projection, `ln_final`, the MLP and `ln_2` (one vector each),
//! then `out_proj`, and a product with each head's values. [`token_relevance`] computes it;
//! [`token_relevance_autodiff`] is its twin by burn's autodiff from the block's input.
//!
//! Per prompt the text tower's forward pass keeps what this needs
//! ([`PromptWordTrace`]); the image enters only through `e`, so a new image costs one closed
//! form per prompt and layer, no text forward.

use std::ops::Range;

use burn::tensor::Tensor;
use serde::Serialize;

use crate::error::{LegradError, Result};
use crate::model::TextTower;
use crate::model::activation::activate_grad;
use crate::model::text::{PromptWordTrace, TextPooling};

/// One word of a prompt (as typed, split at white space) and the relevance of its tokens.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WordRelevance {
    pub word: String,
    /// The sum of its tokens' relevance (not normalised; 0 when every gradient is negative).
    pub relevance: f32,
}

/// The score `t · e` of a row `[1, W]` read as the tower's feature: `ln_final`, projection
/// (and SigLIP's bias), normalised. Returns the score's gradient at the row.
fn score_gradient(text: &TextTower, row: Tensor<2>, image: &Tensor<2>) -> Tensor<2> {
    let w = &text.weights;
    let (y, stats) = w.ln_final.forward_with_stats(row);
    let z = text.project(y); // [1, E]
    let norm = z.clone().powi_scalar(2).sum_dim(1).sqrt(); // [1, 1]
    let t = z / norm.clone();
    let s = (t.clone() * image.clone()).sum_dim(1); // [1, 1]
    let dz = (image.clone() - t * s) / norm; // [1, E]
    let dy = dz.matmul(w.text_projection.val().transpose()); // [1, W]
    w.ln_final.backward(dy, &stats)
}

/// Relevance `[T]` of the tokens up to the pooled one (all of the context for SigLIP) for the
/// image embedding `image` `[E]` (on the text tower's device), on that device: the closed form.
pub fn token_relevance(text: &TextTower, trace: &PromptWordTrace, image: &Tensor<1>) -> Result<Tensor<1>> {
    let image: Tensor<2> = image.clone().unsqueeze();
    let mut total: Option<Tensor<1>> = None;
    for (k, layer) in trace.layers.iter().enumerate() {
        let block = text
            .weights
            .blocks
            .get(trace.first_layer + k)
            .ok_or_else(|| LegradError::Input("a word trace names a layer the text tower lacks".into()))?;
        let gx = score_gradient(text, layer.output.clone(), &image); // [1, W]
        // Through the MLP: x' = u + c_proj(act(c_fc(ln_2(u)))).
        let dg = block.mlp.c_proj.backward(gx.clone()); // [1, M]
        let dh = activate_grad(text.activation, layer.mlp_pre.clone()) * dg;
        let dn = block.mlp.c_fc.backward(dh); // [1, W]
        let du = gx + block.ln_2.backward(dn, &layer.ln_2);
        // u = x + out_proj(concat_h A_h v_h): the gradient at each head's context row.
        let dctx = block.attn.out_proj.backward(du); // [1, W]
        let [heads, keys, d] = layer.values.dims();
        let dctx: Tensor<3> = dctx.reshape([heads, 1, d]);
        let da = dctx.matmul(layer.values.clone().swap_dims(1, 2)); // [H, 1, T]
        let r: Tensor<1> = da.clamp_min(0.0).mean_dim(0).reshape([keys]);
        total = Some(match total {
            Some(t) => t + r,
            None => r,
        });
    }
    total.ok_or_else(|| LegradError::Input("a word trace with no layers".into()))
}

/// The twin of [`token_relevance`] by burn's autodiff: each layer's block run again from its
/// input `inputs[k]` `[1, T, W]` (one sequence, `pool` the pooled token), its attention
/// probabilities a leaf, the pooled row's score differentiated back to them.
pub fn token_relevance_autodiff(
    text: &TextTower,
    first_layer: usize,
    inputs: &[Tensor<3>],
    mask: Option<Tensor<2>>,
    pool: usize,
    image: &Tensor<1>,
) -> Result<Tensor<1>> {
    let image: Tensor<2> = image.clone().unsqueeze();
    let mut total: Option<Tensor<1>> = None;
    for (k, x) in inputs.iter().enumerate() {
        let block = &text.weights.blocks[first_layer + k];
        let [_, t, w] = x.dims();
        let att = block.attn.forward_burn(block.ln_1.forward(x.clone()), mask.clone());
        let z = att.probs.zeros_like().detach().autodiff().require_grad();
        let out =
            block.forward_from_probs(x.clone(), att.probs.clone() + z.clone(), att.values.clone(), text.activation);
        let row: Tensor<2> = out.slice([0..1, pool..pool + 1, 0..w]).reshape([1, w]);
        let f = text.project(text.weights.ln_final.forward(row));
        let f = f.clone() / f.powi_scalar(2).sum_dim(1).sqrt();
        let s = (f * image.clone()).sum();
        let grads = s.backward();
        let g = z.grad(&grads).ok_or_else(|| LegradError::Backend("no gradient for the text attention".into()))?;
        let [_, heads, _, _] = g.dims();
        let keys = if text.pooling == TextPooling::BidirectionalLast { t } else { pool + 1 };
        let row = g.slice([0..1, 0..heads, pool..pool + 1, 0..keys]).reshape([heads, keys]);
        let r: Tensor<1> = row.clamp_min(0.0).mean_dim(0).reshape([keys]);
        total = Some(match total {
            Some(t) => t + r,
            None => r,
        });
    }
    total.ok_or_else(|| LegradError::Input("no layers to differentiate".into()))
}

/// Each word's relevance: the sum over its tokens' positions in `spans` of `relevance` (one
/// value per token position, from [`token_relevance`]); a span past the values (a cut prompt)
/// counts what is there.
pub fn word_relevance(spans: &[(String, Range<usize>)], relevance: &[f32]) -> Vec<WordRelevance> {
    spans
        .iter()
        .map(|(word, r)| WordRelevance {
            word: word.clone(),
            relevance: relevance
                .get(r.start.min(relevance.len())..r.end.min(relevance.len()))
                .map_or(0.0, |v| v.iter().sum()),
        })
        .collect()
}
