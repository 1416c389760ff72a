//! What LeGrad keeps: per model ([`LegradModel`]: the folded weights of each layer, SigLIP's
//! "a photo of a" embedding) and per image ([`LegradTrace`]: the closed form's terms of each
//! layer, by head). LEGRAD.md section 5.

use std::sync::{Arc, OnceLock};

use burn::tensor::{Distribution, Tensor, TensorData};

use super::terms::FoldedK;
use crate::error::{LegradError, Result};
use crate::model::int_linear::{IntMatrix, host_f32};
use crate::model::vision::{TracedBlock, VisionHead};
use crate::model::{Clip, Dense, activate_grad};
use crate::tokenizer::TextTokenizer;

/// Block `layer`'s weights folded for LeGrad's closed-form backward (LEGRAD.md section 5): the
/// path `c_fc`ᵀ → ln_2 (its diagonal part) → `out_proj`ᵀ as one `[M, W]` matrix `k = W_fcᵀ
/// diag(γ₂) W_outᵀ`, so that a prompt costs one MLP-sized matmul per layer; `kappa = W_fcᵀ γ₂ /
/// W` `[M]`, `ones_out = 1ᵀ W_outᵀ` `[W]`, `fc_offset = β₂ W_fc + b_fc` `[1, M]` (what an
/// image's `x̂ diag(γ₂) W_fc` is short of its MLP pre-activation), and the products with
/// `W_projᵀ` and `W_outᵀ` a prompt and an image need ([`Transposed`]). Image-independent, from
/// the weights the layers multiply by.
#[derive(Clone, Debug)]
pub struct LegradConsts {
    pub k: super::terms::FoldedK,
    pub kappa: Tensor<1>,
    pub ones_out: Tensor<1>,
    pub transposed: Transposed,
    pub fc_offset: Tensor<2>,
}

/// How a layer's `g W_projᵀ`, `g W_outᵀ` (a prompt's) and `x̂ W_outᵀ` (an image's) are made, as
/// the tower holds its linear layers ([`super::terms::FoldedK`]'s two forms).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer
pub enum Transposed {
    /// `[W_projᵀ | W_outᵀ]` `[W, M + W]` (burn's layers: a prompt's two products in one, one
    /// launch on a GPU): 4 bytes a weight.
    Tensor(Tensor<2>),
    /// The integer grid: `W_outᵀ` and `W_projᵀ` on it (1.2 and 4.7 MB a ViT-B/16 layer): an
    /// image's `x̂ W_outᵀ` and a prompt's rows by the integer product. No f32 copy of a weight.
    Grid { out_t: Arc<IntMatrix>, proj_t: Arc<IntMatrix> },
}

impl LegradConsts {
    /// `[g W_projᵀ | g W_outᵀ]` `[P, M + W]` for score gradients `g` `[P, W]`.
    pub fn ag(&self, g: Tensor<2>) -> Tensor<2> {
        match &self.transposed {
            Transposed::Tensor(t) => g.matmul(t.clone()),
            Transposed::Grid { out_t, proj_t } => Tensor::cat(vec![on_grid(proj_t, g.clone()), on_grid(out_t, g)], 1),
        }
    }

    /// `x̂ W_outᵀ` `[N, W]` for ln_2's `x̂` `[N, W]`.
    pub fn xhat_out(&self, x_hat: Tensor<2>) -> Tensor<2> {
        match &self.transposed {
            Transposed::Tensor(t) => {
                let [w, mw] = t.dims();
                x_hat.matmul(t.clone().narrow(1, mw - w, w))
            }
            Transposed::Grid { out_t, .. } => on_grid(out_t, x_hat),
        }
    }
}

/// `x W` `[R, d_out]` for `x` `[R, d_in]` by `w`'s integer product (plain CPU tensors; else
/// burn's product with the grid's values).
fn on_grid(w: &IntMatrix, x: Tensor<2>) -> Tensor<2> {
    let [rows, _] = x.dims();
    match host_f32(&x) {
        Some(v) => {
            let y = w.forward(&v, rows, &vec![0f32; w.d_out()]);
            Tensor::from_data(TensorData::new(y, [rows, w.d_out()]), &x.device())
        }
        None => {
            let weight = w.weight(&x.device());
            x.matmul(weight)
        }
    }
}

/// What LeGrad keeps per model, by the vision tower's head. Made with the engine, once.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per model
pub enum LegradModel {
    /// CLIP: each layer's [`LegradConsts`], made on first use (a layer LeGrad never reads costs
    /// nothing).
    ClassToken { consts: Vec<OnceLock<LegradConsts>> },
    /// SigLIP: the embedding `[E]` of "a photo of a", on the vision tower's device, for the
    /// reference's correction (`_init_empty_embedding`).
    AttentionPool { empty: Tensor<1> },
}

impl LegradModel {
    pub fn new(model: &Clip, tokenizer: &TextTokenizer) -> Result<Self> {
        Ok(match &model.vision.weights.head {
            VisionHead::ClassToken(_) => {
                LegradModel::ClassToken { consts: (0..model.vision.depth()).map(|_| OnceLock::new()).collect() }
            }
            VisionHead::AttentionPool(_) => {
                let ids = tokenizer.tokenize("a photo of a", model.config.text.context_length)?.ids;
                let empty = model.text.encode(&[ids])?.to_device(&model.vision.device()).squeeze_dim(0);
                LegradModel::AttentionPool { empty }
            }
        })
    }

    /// Layer `layer`'s folded weights (CLIP).
    pub fn consts(&self, model: &Clip, layer: usize) -> Result<&LegradConsts> {
        let LegradModel::ClassToken { consts } = self else {
            return Err(LegradError::Unsupported(
                "LeGrad's folded MLP weights are CLIP's; this is a SigLIP model".into(),
            ));
        };
        let cell = consts.get(layer).ok_or_else(|| {
            LegradError::Input(format!(
                "layer {layer} does not exist: the vision tower has {} layers",
                model.vision.depth()
            ))
        })?;
        Ok(cell.get_or_init(|| fold(model, layer)))
    }
}

fn fold(model: &Clip, layer: usize) -> LegradConsts {
    let block = &model.vision.weights.blocks[layer];
    let w = model.vision.width;
    let out_t = block.attn.out_proj.weight().dequantize().transpose(); // [W, W]
    let gamma = block.ln_2.weight.val().unsqueeze::<2>(); // [1, W]
    let fc = block.mlp.c_fc.weight().dequantize(); // [W, M]
    let mut fc_offset = block.ln_2.bias.val().unsqueeze::<2>().matmul(fc.clone()); // [1, M]
    if let Some(bias) = block.mlp.c_fc.bias() {
        fc_offset = fc_offset + bias.unsqueeze::<2>();
    }
    let fc_t_gamma = fc.transpose() * gamma; // [M, W]
    let m = fc_t_gamma.dims()[0];
    let kappa = fc_t_gamma.clone().sum_dim(1).div_scalar(w as f64).squeeze_dim::<1>(1); // [M]
    let ones_out = out_t.clone().sum_dim(0).squeeze_dim::<1>(0); // [W]
    let k = fc_t_gamma.matmul(out_t.clone()); // [M, W]
    // The tower's layers on the integer grid: `K`, `W_outᵀ` and `W_projᵀ` go onto it, one at a
    // time, each f32 copy dropped before the next is made (the engine's memory keeps its
    // high-water mark); else tensors, `W_projᵀ` beside `W_outᵀ`.
    if let (Dense::Integer(out), Dense::Integer(proj)) = (&block.attn.out_proj, &block.mlp.c_proj)
        && IntMatrix::fits(m, w)
        && IntMatrix::fits(w, w)
        && IntMatrix::fits(w, m)
        && let Some(k_host) = host_f32(&k)
    {
        let kernel = out.matrix.kernel();
        drop((k, out_t));
        let k = IntMatrix::from_in_out(&k_host, m, w, kernel);
        drop(k_host);
        // `x W_outᵀ` is `out_proj`'s stored `[in, out]` read as PyTorch's `[out, in]`: the same
        // grid as `W_outᵀ` by `from_in_out` (a scale per input of each), with no transpose.
        let out_t = IntMatrix::new(&out.matrix.dequantized(), w, w, kernel);
        let proj_t = IntMatrix::new(&proj.matrix.dequantized(), w, m, kernel);
        return LegradConsts {
            k: FoldedK::Grid(Arc::new(k)),
            kappa,
            ones_out,
            transposed: Transposed::Grid { out_t: Arc::new(out_t), proj_t: Arc::new(proj_t) },
            fc_offset,
        };
    }
    let proj_t = block.mlp.c_proj.weight().dequantize().transpose(); // [W, M]
    let g_weights = Tensor::cat(vec![proj_t, out_t], 1); // [W, M + W]
    LegradConsts { k: FoldedK::Tensor(k), kappa, ones_out, transposed: Transposed::Tensor(g_weights), fc_offset }
}

/// LeGrad's terms of one image, layers `first_layer..depth`, by the vision tower's head.
#[derive(Debug)]
pub enum LegradTrace {
    ClassToken(ClassTokenTrace),
    AttentionPool(PoolTrace),
}

/// CLIP's terms per layer, and the score's Jacobian of the image (made on first use, kept here:
/// it belongs to this image).
#[derive(Debug)]
pub struct ClassTokenTrace {
    pub first_layer: usize,
    pub layers: Vec<ClassTokenLayer>,
    /// Boxed: a tensor handle is large, and most traces' enums hold none.
    pub(crate) score_jacobian: OnceLock<Box<Tensor<3>>>,
}

/// One block's values for CLIP's closed form (batch dimension removed; `N` tokens, CLS first;
/// ln_2 folded as in [`LegradConsts`]).
#[derive(Clone, Debug)]
pub struct ClassTokenLayer {
    pub index: usize,
    /// Mean over all tokens (CLS included) of the block's output, `[W]`.
    pub output_mean: Tensor<1>,
    /// The attention's values `[H, N, d]`.
    pub values: Tensor<3>,
    /// ln_2's `1/σ` `[N, 1]`.
    pub ln_2_rstd: Tensor<2>,
    /// ln_2's `x̂` through `out_proj`, `x̂ W_outᵀ` `[N, W]`.
    pub xhat_out: Tensor<2>,
    /// `act'(h)` `[N, M]` for `h = c_fc(ln_2(u))`.
    pub act_grad: Tensor<2>,
    /// The LayerNorm's mean terms' rows `[act' ⊙ κ ; act' ⊙ (x̂ diag(γ₂) W_fc) / W]` `[2N, M]`
    /// (a prompt's two `[N]` mean terms are one product with them).
    pub mean_rows: Tensor<2>,
}

/// SigLIP's terms per layer: what the closed form needs of the attention pool run on each
/// block's output (the reference's `attn_pool(blk.feat_post_mlp)`, without the final norm).
#[derive(Debug)]
pub struct PoolTrace {
    pub first_layer: usize,
    pub layers: Vec<PoolLayer>,
}

/// The pool on one block's output: its values `[H, N, d]`, its output `[W]`, the LayerNorm
/// statistics of its MLP's input (`x̂` `[1, W]`, `1/σ` `[1, 1]`) and `act'` of the MLP's
/// pre-activation `[1, M]`.
#[derive(Clone, Debug)]
pub struct PoolLayer {
    pub index: usize,
    pub values: Tensor<3>,
    pub output: Tensor<1>,
    pub x_hat: Tensor<2>,
    pub rstd: Tensor<2>,
    pub act_grad: Tensor<2>,
}

impl ClassTokenTrace {
    pub fn layer(&self, index: usize) -> Result<&ClassTokenLayer> {
        self.layers.iter().find(|l| l.index == index).ok_or_else(|| missing_layer(index))
    }
}

impl PoolTrace {
    pub fn layer(&self, index: usize) -> Result<&PoolLayer> {
        self.layers.iter().find(|l| l.index == index).ok_or_else(|| missing_layer(index))
    }
}

/// [`LegradTrace`] while the blocks run ([`super::trace::trace_image`]).
pub(crate) enum LegradTraceBuilder {
    ClassToken(ClassTokenTrace),
    AttentionPool(PoolTrace),
}

impl LegradTraceBuilder {
    pub(crate) fn new(model: &Clip, first_layer: usize) -> Self {
        match &model.vision.weights.head {
            VisionHead::ClassToken(_) => LegradTraceBuilder::ClassToken(ClassTokenTrace {
                first_layer,
                layers: Vec::new(),
                score_jacobian: OnceLock::new(),
            }),
            VisionHead::AttentionPool(_) => {
                LegradTraceBuilder::AttentionPool(PoolTrace { first_layer, layers: Vec::new() })
            }
        }
    }

    pub(crate) fn take(&mut self, b: &TracedBlock<'_>, model: &Clip, legrad: &LegradModel) -> Result<()> {
        let act = model.vision.activation;
        let squeeze3 = |t: Tensor<3>| -> Tensor<2> { t.squeeze_dim(0) };
        let squeeze4 = |t: Tensor<4>| -> Tensor<3> { t.squeeze_dim(0) };
        let [_, _, w] = b.out.output.dims();
        match (self, &model.vision.weights.head) {
            (LegradTraceBuilder::ClassToken(t), VisionHead::ClassToken(_)) if b.index >= t.first_layer => {
                let consts = legrad.consts(model, b.index)?;
                let out = &b.out;
                let x_hat = squeeze3(out.ln_2.x_hat.clone()); // [N, W]
                let h = squeeze3(out.mlp_pre.clone()); // [N, M]
                let act_grad = model.vision.weights.blocks[b.index].mlp.activate_grad(act, h.clone());
                // x̂ diag(γ) W_fc = h - b_fc - β W_fc: no second [N, W] x [W, M] product.
                let bb = h - consts.fc_offset.clone();
                let xhat_out = consts.xhat_out(x_hat);
                let kappa = consts.kappa.clone();
                let mean_rows = Tensor::cat(
                    vec![act_grad.clone() * kappa.unsqueeze(), (act_grad.clone() * bb).div_scalar(w as f64)],
                    0,
                );
                t.layers.push(ClassTokenLayer {
                    index: b.index,
                    output_mean: out.output.clone().mean_dim(1).reshape([w]),
                    values: squeeze4(out.attention.values.clone()),
                    ln_2_rstd: squeeze3(out.ln_2.rstd.clone()),
                    xhat_out,
                    act_grad,
                    mean_rows,
                });
            }
            (LegradTraceBuilder::AttentionPool(t), VisionHead::AttentionPool(head)) if b.index >= t.first_layer => {
                let p = head.pool.forward(b.out.output.clone(), act);
                t.layers.push(PoolLayer {
                    index: b.index,
                    values: squeeze4(p.values),
                    output: p.output.reshape([w]),
                    x_hat: p.norm.x_hat,
                    rstd: p.norm.rstd,
                    act_grad: activate_grad(act, p.mlp_pre),
                });
            }
            _ => {}
        }
        Ok(())
    }

    pub(crate) fn finish(self) -> LegradTrace {
        match self {
            LegradTraceBuilder::ClassToken(t) => LegradTrace::ClassToken(t),
            LegradTraceBuilder::AttentionPool(t) => LegradTrace::AttentionPool(t),
        }
    }
}

impl LegradTrace {
    /// Noise of the right shapes for `grid` (see [`super::trace::placeholder_trace`]).
    pub(crate) fn placeholder(model: &Clip, grid: (usize, usize), first_layer: usize) -> Self {
        let v = &model.vision;
        let device = v.device();
        let n = grid.0 * grid.1 + v.prefix_tokens();
        let (w, h) = (v.width, v.heads);
        let noise1 = |len: usize| -> Tensor<1> { Tensor::random([len], Distribution::Uniform(-1.0, 1.0), &device) };
        let noise2 =
            |shape: [usize; 2]| -> Tensor<2> { Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device) };
        let noise3 =
            |shape: [usize; 3]| -> Tensor<3> { Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device) };
        let layers = first_layer..v.depth();
        match &v.weights.head {
            VisionHead::ClassToken(_) => LegradTrace::ClassToken(ClassTokenTrace {
                first_layer,
                layers: layers
                    .map(|index| {
                        let m = v.weights.blocks[index].mlp.c_fc.weight().dims()[1];
                        ClassTokenLayer {
                            index,
                            output_mean: noise1(w),
                            values: noise3([h, n, w / h]),
                            ln_2_rstd: noise2([n, 1]).abs().add_scalar(0.5),
                            xhat_out: noise2([n, w]),
                            act_grad: noise2([n, m]),
                            mean_rows: noise2([2 * n, m]),
                        }
                    })
                    .collect(),
                score_jacobian: OnceLock::new(),
            }),
            VisionHead::AttentionPool(head) => {
                let m = head.pool.mlp.c_fc.weight().dims()[1];
                LegradTrace::AttentionPool(PoolTrace {
                    first_layer,
                    layers: layers
                        .map(|index| PoolLayer {
                            index,
                            values: noise3([h, n, w / h]),
                            output: noise1(w),
                            x_hat: noise2([1, w]),
                            rstd: noise2([1, 1]).abs().add_scalar(0.5),
                            act_grad: noise2([1, m]),
                        })
                        .collect(),
                })
            }
        }
    }
}

/// A layer a trace does not hold.
pub(crate) fn missing_layer(l: usize) -> LegradError {
    LegradError::Input(format!("the image trace does not hold layer {l}: trace the image with this method's request"))
}
