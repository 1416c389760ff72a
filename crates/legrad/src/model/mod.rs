//! OpenCLIP's ViT CLIP in burn: the shared residual attention block here, one file per tower.
//!
//! Module names follow open_clip's (`ln_1`, `attn.in_proj`, `mlp.c_fc`, ...) so that the
//! loader's key table maps one to one. Weights are stored as burn's `Linear` does, `[in, out]`;
//! the loader transposes PyTorch's `[out, in]`.

pub mod activation;
pub mod few_rows;
pub mod int_linear;
pub use crate::resample as pos_embed;
pub mod text;
pub mod vision;

pub(crate) use activation::{activate, activate_grad};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::softmax;
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, FloatDType, Tensor, TensorData};
use few_rows::linear;
use int_linear::IntLinear;

use crate::compute::{ComputePolicy, LinearProducts};
use crate::config::{Activation, ClipConfig, ScoringKind};
use crate::error::Result;
use crate::weights::{RawTensor, StoredDType, TensorMap};

pub use text::TextTower;
pub use vision::VisionTower;

/// The score shown for an image and a prompt.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scoring {
    /// CLIP: the cosine similarity itself.
    Cosine,
    /// SigLIP: `sigmoid(scale · cos + bias)`, with the checkpoint's `exp(logit_scale)` and
    /// `logit_bias`.
    Sigmoid { scale: f32, bias: f32 },
}

/// Both towers, and what goes with them.
#[derive(Debug)]
pub struct Clip {
    pub config: ClipConfig,
    pub vision: VisionTower,
    pub text: TextTower,
    /// The model's own tokenizer file (`tokenizer.json`), where its family needs one (SigLIP's
    /// SentencePiece vocabulary); CLIP's BPE vocabulary is built in.
    pub tokenizer_json: Option<std::sync::Arc<str>>,
    /// How an image-text cosine becomes the score shown.
    pub scoring: Scoring,
}

impl Clip {
    /// Build from a tensor map in open_clip's names (SigLIP's renamed by
    /// [`crate::weights::keys::siglip_to_internal`]), checking every shape against `config`.
    pub fn from_tensors(config: ClipConfig, map: TensorMap, device: &Device) -> Result<Self> {
        Self::from_tensors_with(config, map, device, &ComputePolicy::for_device(device))
    }

    /// As [`from_tensors`](Self::from_tensors), the linear layers as `policy` says (the tests
    /// build one model both ways).
    pub fn from_tensors_with(
        config: ClipConfig,
        mut map: TensorMap,
        device: &Device,
        policy: &ComputePolicy,
    ) -> Result<Self> {
        config.validate()?;
        let products = policy.image_products(config.vision.width, config.vision.mlp_width);
        let vision = VisionTower::load(&config, &mut map, products, device)?;
        let text_products = policy.linear_products(config.text.width, config.text.mlp_width);
        let text = TextTower::load(&config, &mut map, text_products, device)?;
        let scoring = match config.family.anatomy().scoring {
            ScoringKind::Cosine => Scoring::Cosine,
            ScoringKind::Sigmoid => {
                let mut scalar = |name: &str| -> Result<f32> {
                    let t = map.remove(name).ok_or_else(|| crate::error::LegradError::MissingTensor {
                        key: name.to_string(),
                        expected: vec![1],
                    })?;
                    let v = t.to_f32();
                    if v.len() != 1 {
                        return Err(crate::error::LegradError::Checkpoint(format!(
                            "'{name}' has shape {:?}, expected one value",
                            t.shape
                        )));
                    }
                    Ok(v[0])
                };
                Scoring::Sigmoid { scale: scalar("logit_scale")?.exp(), bias: scalar("logit_bias")? }
            }
        };
        Ok(Self { config, vision, text, tokenizer_json: None, scoring })
    }

    /// Attach the model's tokenizer file.
    pub fn with_tokenizer(mut self, json: Option<std::sync::Arc<str>>) -> Self {
        if json.is_some() {
            self.tokenizer_json = json;
        }
        self
    }

    /// The score shown for a cosine similarity: itself for CLIP, SigLIP's sigmoid probability.
    pub fn score(&self, cosine: f32) -> f32 {
        match self.scoring {
            Scoring::Cosine => cosine,
            Scoring::Sigmoid { scale, bias } => 1.0 / (1.0 + (-(scale * cosine + bias)).exp()),
        }
    }
}

pub(crate) fn tensor1(data: Vec<f32>, device: &Device) -> Tensor<1> {
    let n = data.len();
    Tensor::from_data(TensorData::new(data, [n]), device)
}

pub(crate) fn tensor2(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Transpose a row-major `[rows, cols]` buffer.
pub(crate) fn transposed(data: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; data.len()];
    for r in 0..rows {
        for c in 0..cols {
            out[c * rows + r] = data[r * cols + c];
        }
    }
    out
}

/// A weight matrix stored `[out, in]` (PyTorch) as burn's `[in, out]`.
///
/// On a GPU ([`ComputePolicy::is_gpu`]) a quantized one stays quantized on the device: burn's
/// block-quantized tensor (blocks of output features become blocks along burn's last
/// dimension), so matmuls read 8- or 4-bit weights and no f32 copy is kept. On the CPU it is
/// dequantized here, once: burn's CPU backend has no quantized matmul and would dequantize the
/// whole matrix on every call (a q8 ViT-B/16's text encoding took 1.5 s instead of 41 ms). The
/// cost is memory: 4 bytes per weight instead of 1 (a ViT-B/16's matrices, 123 M weights: 490
/// MB instead of 123 MB; the token table stays 8-bit on the host).
///
/// burn recomputes each block's scale from the dequantized values (`quantize_dynamic`, absmax):
/// every stored block has a value at ±qmax (the stored scale is the absmax or clips), so that
/// scale is the stored one and the device holds exactly the file's grid. (Passing the stored
/// scales to `quantize` is exact on Flex but not on wgpu in burn 0.22.1.)
pub(crate) fn weight_matrix(raw: RawTensor, d_in: usize, d_out: usize, device: &Device) -> Tensor<2> {
    let values = raw.to_f32();
    let t = tensor2(transposed(&values, d_out, d_in), [d_in, d_out], device);
    match raw.dtype {
        StoredDType::Q8 { block } | StoredDType::Q4 { block }
            if block <= 255 && ComputePolicy::for_device(device).is_gpu() =>
        {
            let value = if matches!(raw.dtype, StoredDType::Q8 { .. }) { QuantValue::Q8S } else { QuantValue::Q4S };
            let scheme = QuantScheme::default()
                .with_value(value)
                .with_store(QuantStore::PackedU32(0))
                .per_block([1u8, block as u8], ScaleDtype::F32);
            t.quantize_dynamic(&scheme)
        }
        _ => t,
    }
}

/// A linear layer as the compute policy has it: burn's (f32 on the CPU, packed quantized
/// weights on a GPU), burn's with f16 products on a GPU ([`GpuFloat::F16`](crate::compute::GpuFloat),
/// its weight packed quantized), or on the integer grid ([`int_linear`], the CPU path of large
/// towers).
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer
pub enum Dense {
    Burn(Linear),
    Half(Linear),
    Integer(IntLinear),
}

impl Dense {
    /// `x W + b`.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self {
            Dense::Burn(l) => linear(l, x),
            // burn's quantized matmul takes the float type of its other side: the weight's
            // 8-bit values become f16, the sums f32; the bias and the residual stream are f32.
            Dense::Half(l) => {
                let y = half_product(x, l.weight.val().unsqueeze());
                match &l.bias {
                    Some(b) => y + b.val().unsqueeze(),
                    None => y,
                }
            }
            Dense::Integer(l) => l.forward(x),
        }
    }

    /// The weight `[in, out]` (a GPU's stays packed: `dequantize()` where f32 is needed; the
    /// integer grid's is dequantized here).
    pub fn weight(&self) -> Tensor<2> {
        match self {
            Dense::Burn(l) | Dense::Half(l) => l.weight.val(),
            Dense::Integer(l) => l.weight(),
        }
    }

    /// `dy Wᵀ`: the gradient at the layer's input for `dy` at its output (in f32 on every path:
    /// LeGrad's backward is f32).
    pub fn backward<const D: usize>(&self, dy: Tensor<D>) -> Tensor<D> {
        match self {
            // A GPU's weight stays packed (8-bit): its f32 values for the product.
            Dense::Burn(l) | Dense::Half(l) => dy.matmul(l.weight.val().dequantize().transpose().unsqueeze()),
            Dense::Integer(l) => l.backward(dy),
        }
    }

    pub fn bias(&self) -> Option<Tensor<1>> {
        match self {
            Dense::Burn(l) | Dense::Half(l) => l.bias.as_ref().map(|b| b.val()),
            Dense::Integer(l) => Some(l.bias.val()),
        }
    }

    /// How this layer multiplies, in words (benchmarks print it): `f32`, `f16`, `int16`.
    pub fn products(&self) -> &'static str {
        match self {
            Dense::Burn(_) => "f32",
            Dense::Half(_) => "f16",
            Dense::Integer(_) => "int16",
        }
    }

    /// Does this layer multiply in f16 ([`Dense::Half`])? Its block's attention products then
    /// do too.
    pub fn is_half(&self) -> bool {
        matches!(self, Dense::Half(_))
    }
}

/// `a b` with f16 inputs and products (sums in f32), the result back in f32: a GPU's image
/// products under [`GpuFloat::F16`](crate::compute::GpuFloat). `b` may be packed quantized (it
/// then takes `a`'s f16).
pub fn half_product<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<D> {
    let b = if b.dtype().is_float() { b.cast(FloatDType::F16) } else { b };
    a.cast(FloatDType::F16).matmul(b).cast(FloatDType::F32)
}

/// A PyTorch `nn.Linear` (`weight [out, in]`, `bias [out]`) as burn's `Linear` (`[in, out]`),
/// or on the integer grid where `products` says so and the shape fits.
pub(crate) fn load_linear(
    map: &mut TensorMap,
    prefix: &str,
    d_in: usize,
    d_out: usize,
    products: LinearProducts,
    device: &Device,
) -> Result<Dense> {
    let w = map.take_raw(&format!("{prefix}.weight"), &[d_out, d_in])?;
    let b = map.take(&format!("{prefix}.bias"), &[d_out])?;
    Ok(dense(w, b, d_in, d_out, products, device))
}

/// A layer from its raw weight `[out, in]` and bias.
fn dense(w: RawTensor, b: Vec<f32>, d_in: usize, d_out: usize, products: LinearProducts, device: &Device) -> Dense {
    let burn = |w, b| Linear {
        weight: Param::from_tensor(weight_matrix(w, d_in, d_out, device)),
        bias: Some(Param::from_tensor(tensor1(b, device))),
    };
    match products {
        // 4-bit weights keep burn's path (their grid is coarser than any gain here).
        LinearProducts::Integer(kernel)
            if int_linear::IntMatrix::fits(d_in, d_out) && !matches!(w.dtype, StoredDType::Q4 { .. }) =>
        {
            Dense::Integer(int_linear::int_linear(&w.to_f32(), b, d_in, d_out, kernel, device))
        }
        // f16 products read the packed 8- or 4-bit weight; an f32 one stays f32 (an f16 copy
        // would be a second copy, or f32 products lost).
        LinearProducts::Half => {
            let l = burn(w, b);
            if matches!(l.weight.val().dtype(), DType::QFloat(_)) { Dense::Half(l) } else { Dense::Burn(l) }
        }
        _ => Dense::Burn(burn(w, b)),
    }
}

/// LayerNorm over the last dimension (eps 1e-5, biased variance, as torch).
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
    /// 1e-5 (open_clip's CLIP) or 1e-6 (timm's and open_clip's SigLIP).
    pub eps: f64,
}

/// What LayerNorm's backward needs: the normalised input and 1/σ per row.
#[derive(Clone, Debug)]
pub struct LayerNormStats<const D: usize> {
    pub x_hat: Tensor<D>,
    pub rstd: Tensor<D>,
}

impl LayerNorm {
    pub(crate) fn load(map: &mut TensorMap, prefix: &str, width: usize, eps: f64, device: &Device) -> Result<Self> {
        Ok(Self {
            weight: Param::from_tensor(tensor1(map.take(&format!("{prefix}.weight"), &[width])?, device)),
            bias: Param::from_tensor(tensor1(map.take(&format!("{prefix}.bias"), &[width])?, device)),
            eps,
        })
    }

    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        self.forward_with_stats(x).0
    }

    pub fn forward_with_stats<const D: usize>(&self, x: Tensor<D>) -> (Tensor<D>, LayerNormStats<D>) {
        let (var, mean) = x.clone().var_mean_bias(D - 1);
        let rstd = var.add_scalar(self.eps).sqrt().recip();
        let x_hat = (x - mean) * rstd.clone();
        let y = x_hat.clone() * self.weight.val().unsqueeze() + self.bias.val().unsqueeze();
        (y, LayerNormStats { x_hat, rstd })
    }

    /// d/dx of LayerNorm given d/dy: `rstd * (γ dy - mean(γ dy) - x̂ mean(γ dy x̂))`.
    pub fn backward<const D: usize>(&self, dy: Tensor<D>, stats: &LayerNormStats<D>) -> Tensor<D> {
        let g = dy * self.weight.val().unsqueeze();
        let mean_g = g.clone().mean_dim(D - 1);
        let mean_gx = (g.clone() * stats.x_hat.clone()).mean_dim(D - 1);
        (g - mean_g - stats.x_hat.clone() * mean_gx) * stats.rstd.clone()
    }
}

/// What a traced block keeps of what it computed: its readers decide
/// ([`crate::explain::trace::Reads`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Keep {
    /// Its output alone.
    Output,
    /// Everything but the attention's probabilities (LeGrad's closed form reads the values,
    /// ln_2's statistics and the MLP's pre-activation).
    Terms,
    /// Everything (a reader of the attention asked): at 448 px a ViT-B/16 block's
    /// probabilities are 30 MB.
    Everything,
}

/// A traced block's attention probabilities `[B, H, N, N]`, where kept ([`Keep::Everything`]).
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per traced block
pub enum Probabilities {
    Kept(Tensor<4>),
    NotKept,
}

impl Probabilities {
    pub fn kept(&self) -> Result<&Tensor<4>> {
        match self {
            Probabilities::Kept(p) => Ok(p),
            Probabilities::NotKept => Err(crate::error::LegradError::Backend(
                "the attention's probabilities were not kept in this trace".into(),
            )),
        }
    }
}

/// A traced block's attention: its output (after `out_proj`) `[B, N, W]`, its values `[B, H,
/// N, d]`, its probabilities where kept.
#[derive(Clone, Debug)]
pub struct TracedAttention {
    pub output: Tensor<3>,
    pub probs: Probabilities,
    pub values: Tensor<4>,
}

/// Multi-head self-attention with open_clip's fused `in_proj` (q, k, v stacked).
#[derive(Module, Debug)]
pub struct Attention {
    pub in_proj: Dense,
    pub out_proj: Dense,
    pub heads: usize,
}

/// What one attention call produced, for explainers.
#[derive(Clone, Debug)]
pub struct AttentionOutput {
    /// `[B, N, W]`, after `out_proj`.
    pub output: Tensor<3>,
    /// Post-softmax probabilities `[B, H, N, N]`.
    pub probs: Tensor<4>,
    /// Values `[B, H, N, d]`.
    pub values: Tensor<4>,
}

impl Attention {
    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> AttentionOutput {
        if mask.is_none()
            && let Some((context, Some((Some(probs), values)))) = self.integer(&x, Keep::Everything)
        {
            return AttentionOutput { output: self.out_proj.forward(context), probs, values };
        }
        self.forward_burn(x, mask)
    }

    /// What a traced block keeps of its attention (`keep`: [`Keep::Terms`] or
    /// [`Keep::Everything`]); the integer path computes no probabilities it does not keep.
    pub fn traced(&self, x: Tensor<3>, keep: Keep) -> TracedAttention {
        if let Some((context, Some((probs, values)))) = self.integer(&x, keep) {
            let probs = probs.map_or(Probabilities::NotKept, Probabilities::Kept);
            return TracedAttention { output: self.out_proj.forward(context), probs, values };
        }
        let a = self.forward_burn(x, None);
        let probs = if keep == Keep::Everything { Probabilities::Kept(a.probs) } else { Probabilities::NotKept };
        TracedAttention { output: a.output, probs, values: a.values }
    }

    /// The output alone (a block whose values nobody reads).
    pub fn output(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> Tensor<3> {
        if mask.is_none()
            && let Some((context, _)) = self.integer(&x, Keep::Output)
        {
            return self.out_proj.forward(context);
        }
        self.forward_burn(x, mask).output
    }

    /// On the integer path (`in_proj` on the integer grid, one image of plain CPU tensors,
    /// heads in whole tiles): the context `[1, N, W]` by [`int_linear::attention`], and what
    /// `keep` asks: the values `[1, H, N, d]`, and the probabilities `[1, H, N, N]`.
    #[allow(clippy::type_complexity)]
    fn integer(&self, x: &Tensor<3>, keep: Keep) -> Option<(Tensor<3>, Option<(Option<Tensor<4>>, Tensor<4>)>)> {
        let Dense::Integer(in_proj) = &self.in_proj else { return None };
        let [b, n, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        if b != 1 || h * d != w || !int_linear::attention::fits(d) || in_proj.matrix.d_out() != 3 * w {
            return None;
        }
        let data = int_linear::host_f32(x)?;
        let bias = in_proj.bias.val().into_data().try_into_vec::<f32>().ok()?;
        let qkv = in_proj.matrix.forward(&data, n, &bias);
        let device = x.device();
        let probs = keep == Keep::Everything;
        let out = int_linear::attention::attention(&qkv, n, h, d, in_proj.matrix.kernel(), probs);
        let context = Tensor::from_data(TensorData::new(out.context, [1, n, w]), &device);
        if keep == Keep::Output {
            return Some((context, None));
        }
        let values = int_linear::attention::values(&qkv, n, h, d);
        let probs = probs.then(|| Tensor::from_data(TensorData::new(out.probs, [1, h, n, n]), &device));
        let values = Tensor::from_data(TensorData::new(values, [1, h, n, d]), &device);
        Some((context, Some((probs, values))))
    }

    /// burn's tensor operations (the GPU, f32 towers, autodiff, masks): the twin of the
    /// integer path.
    pub fn forward_burn(&self, x: Tensor<3>, mask: Option<Tensor<2>>) -> AttentionOutput {
        let [b, n, w] = x.dims();
        let h = self.heads;
        let d = w / h;
        let qkv = self.in_proj.forward(x);
        let split = |i: usize| qkv.clone().narrow(2, i * w, w).reshape([b, n, h, d]).swap_dims(1, 2);
        // torch scales q before the product (F.multi_head_attention_forward).
        let q = split(0).mul_scalar((d as f64).powf(-0.5));
        let k = split(1);
        let v = split(2);
        let mut scores = self.product(q, k.swap_dims(2, 3));
        if let Some(mask) = mask {
            scores = scores + mask.unsqueeze::<4>();
        }
        let probs = softmax(scores, 3);
        let out = self.attend(probs.clone(), v.clone());
        AttentionOutput { output: out, probs, values: v }
    }

    /// `out_proj(probs @ v)` with heads merged: the part of attention after the softmax.
    pub fn attend(&self, probs: Tensor<4>, values: Tensor<4>) -> Tensor<3> {
        self.out_proj.forward(self.context(probs, values))
    }

    /// `probs @ v` with heads merged `[B, N, W]`: `out_proj`'s input.
    pub fn context(&self, probs: Tensor<4>, values: Tensor<4>) -> Tensor<3> {
        let [b, h, n, d] = values.dims();
        self.product(probs, values).swap_dims(1, 2).reshape([b, n, h * d])
    }

    /// An attention product (`q kᵀ`, `probs v`) in the block's float type: f16 where its
    /// layers are [`Dense::Half`] (the softmax between stays f32), f32 else. (Under autodiff,
    /// the baselines' gradients, the casts are differentiated with the rest.)
    fn product(&self, a: Tensor<4>, b: Tensor<4>) -> Tensor<4> {
        if self.in_proj.is_half() { half_product(a, b) } else { a.matmul(b) }
    }
}

/// `mlp = c_proj(act(c_fc(.)))`.
#[derive(Module, Debug)]
pub struct Mlp {
    pub c_fc: Dense,
    pub c_proj: Dense,
}

impl Mlp {
    /// The activation between the layers: the integer path's own where `c_proj` is on the
    /// integer grid ([`int_linear::activate`]), burn's otherwise.
    pub fn activate<const D: usize>(&self, act: Activation, h: Tensor<D>) -> Tensor<D> {
        match self.c_proj {
            Dense::Integer(_) => int_linear::activate(act, h),
            Dense::Burn(_) | Dense::Half(_) => activate(act, h),
        }
    }

    /// `act'(h)`, the integer path's host form where `c_proj` is on the grid
    /// ([`int_linear::activate_grad`]), burn's otherwise.
    pub fn activate_grad<const D: usize>(&self, act: Activation, h: Tensor<D>) -> Tensor<D> {
        match self.c_proj {
            Dense::Integer(_) => int_linear::activate_grad(act, h),
            Dense::Burn(_) | Dense::Half(_) => activate_grad(act, h),
        }
    }

    /// `c_proj(act(h))`: on the integer path the activation is fused into `c_proj`'s rounding.
    pub fn project<const D: usize>(&self, act: Activation, h: Tensor<D>) -> Tensor<D> {
        match &self.c_proj {
            Dense::Integer(l) => l.forward_after(act, h),
            Dense::Burn(_) | Dense::Half(_) => self.c_proj.forward(activate(act, h)),
        }
    }
}

/// The linear weights of a block, in open_clip's names (after `...resblocks.{i}.`).
pub const LINEAR_WEIGHTS: [&str; 4] =
    ["attn.in_proj_weight", "attn.out_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"];

/// open_clip's `ResidualAttentionBlock`: `u = x + attn(ln_1(x))`, `x' = u + mlp(ln_2(u))`.
#[derive(Module, Debug)]
pub struct Block {
    pub ln_1: LayerNorm,
    pub attn: Attention,
    pub ln_2: LayerNorm,
    pub mlp: Mlp,
}

/// Everything a block computed that explainers may need.
#[derive(Clone, Debug)]
pub struct BlockOutput {
    pub output: Tensor<3>,
    pub attention: TracedAttention,
    /// The residual stream after attention, the MLP's input (`u`).
    pub post_attn: Tensor<3>,
    pub ln_2: LayerNormStats<3>,
    /// The MLP's pre-activation `c_fc(ln_2(u))`.
    pub mlp_pre: Tensor<3>,
}

impl Block {
    // The block's shape, its products and where it goes: one call per block, in two towers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn load(
        map: &mut TensorMap,
        prefix: &str,
        width: usize,
        heads: usize,
        mlp_width: usize,
        eps: f64,
        products: LinearProducts,
        device: &Device,
    ) -> Result<Self> {
        Ok(Self {
            ln_1: LayerNorm::load(map, &format!("{prefix}.ln_1"), width, eps, device)?,
            attn: Attention {
                in_proj: {
                    let w = map.take_raw(&format!("{prefix}.attn.in_proj_weight"), &[3 * width, width])?;
                    let b = map.take(&format!("{prefix}.attn.in_proj_bias"), &[3 * width])?;
                    dense(w, b, width, 3 * width, products, device)
                },
                out_proj: load_linear(map, &format!("{prefix}.attn.out_proj"), width, width, products, device)?,
                heads,
            },
            ln_2: LayerNorm::load(map, &format!("{prefix}.ln_2"), width, eps, device)?,
            mlp: Mlp {
                c_fc: load_linear(map, &format!("{prefix}.mlp.c_fc"), width, mlp_width, products, device)?,
                c_proj: load_linear(map, &format!("{prefix}.mlp.c_proj"), mlp_width, width, products, device)?,
            },
        })
    }

    pub fn forward(&self, x: Tensor<3>, mask: Option<Tensor<2>>, act: Activation) -> Tensor<3> {
        let u = x.clone() + self.attn.output(self.ln_1.forward(x), mask);
        self.mlp_residual(u, act)
    }

    /// The second half of the block: `u + mlp(ln_2(u))`.
    pub fn mlp_residual(&self, u: Tensor<3>, act: Activation) -> Tensor<3> {
        let h = self.mlp.c_fc.forward(self.ln_2.forward(u.clone()));
        u + self.mlp.project(act, h)
    }

    /// The block's output and the inputs of its linear layers, in the order of
    /// [`LINEAR_WEIGHTS`]: what calibrating their quantization needs.
    pub fn forward_linear_inputs(
        &self,
        x: Tensor<3>,
        mask: Option<Tensor<2>>,
        act: Activation,
    ) -> (Tensor<3>, [Tensor<3>; 4]) {
        let a = self.ln_1.forward(x.clone());
        let attention = self.attn.forward(a.clone(), mask);
        let ctx = self.attn.context(attention.probs, attention.values);
        let u = x + attention.output;
        let n2 = self.ln_2.forward(u.clone());
        let g = self.mlp.activate(act, self.mlp.c_fc.forward(n2.clone()));
        let out = u + self.mlp.c_proj.forward(g.clone());
        (out, [a, ctx, n2, g])
    }

    pub fn forward_traced(&self, x: Tensor<3>, act: Activation, keep: Keep) -> BlockOutput {
        let attention = self.attn.traced(self.ln_1.forward(x.clone()), keep);
        let u = x + attention.output.clone();
        self.finish(u, attention, act)
    }

    /// The block from its attention probabilities on: `u = x + out_proj(A v)`, then the MLP.
    /// Explainers that differentiate with respect to `A` run this part under autodiff.
    pub fn forward_from_probs(&self, x: Tensor<3>, probs: Tensor<4>, values: Tensor<4>, act: Activation) -> Tensor<3> {
        self.mlp_residual(x + self.attn.attend(probs, values), act)
    }

    fn finish(&self, u: Tensor<3>, attention: TracedAttention, act: Activation) -> BlockOutput {
        let (n2, ln_2) = self.ln_2.forward_with_stats(u.clone());
        let h = self.mlp.c_fc.forward(n2);
        let output = u.clone() + self.mlp.project(act, h.clone());
        BlockOutput { output, attention, post_attn: u, ln_2, mlp_pre: h }
    }
}

/// timm's `AttentionPoolLatent`, SigLIP's `map` head: one learned query attends over the tokens
/// (`q`, fused `kv`, `proj`), then `x + mlp(norm(x))`. Its attention is what SigLIP's LeGrad
/// differentiates.
#[derive(Module, Debug)]
pub struct AttentionPool {
    /// The query token `[W]`.
    pub latent: Param<Tensor<1>>,
    pub q: Dense,
    pub kv: Dense,
    pub proj: Dense,
    pub norm: LayerNorm,
    pub mlp: Mlp,
    pub heads: usize,
}

/// What the attention pool computed for a batch of token sets.
#[derive(Clone, Debug)]
pub struct PoolOutput {
    /// The pooled features `[B, W]`.
    pub output: Tensor<2>,
    /// Attention of the query over the tokens `[B, H, N]`.
    pub probs: Tensor<3>,
    /// Values `[B, H, N, d]`.
    pub values: Tensor<4>,
    /// After `proj`, the MLP's residual input `[B, W]`, with its LayerNorm statistics.
    pub attended: Tensor<2>,
    pub norm: LayerNormStats<2>,
    /// The MLP's pre-activation `[B, M]`.
    pub mlp_pre: Tensor<2>,
}

impl AttentionPool {
    pub(crate) fn load(
        map: &mut TensorMap,
        prefix: &str,
        width: usize,
        heads: usize,
        mlp_width: usize,
        eps: f64,
        device: &Device,
    ) -> Result<Self> {
        let latent = map.take(&format!("{prefix}.latent"), &[1, 1, width])?;
        // The pool runs once per image on one query: burn's products.
        let burn = LinearProducts::Burn;
        Ok(Self {
            latent: Param::from_tensor(tensor1(latent, device)),
            q: load_linear(map, &format!("{prefix}.q"), width, width, burn, device)?,
            kv: load_linear(map, &format!("{prefix}.kv"), width, 2 * width, burn, device)?,
            proj: load_linear(map, &format!("{prefix}.proj"), width, width, burn, device)?,
            norm: LayerNorm::load(map, &format!("{prefix}.norm"), width, eps, device)?,
            mlp: Mlp {
                c_fc: load_linear(map, &format!("{prefix}.mlp.fc1"), width, mlp_width, burn, device)?,
                c_proj: load_linear(map, &format!("{prefix}.mlp.fc2"), mlp_width, width, burn, device)?,
            },
            heads,
        })
    }

    /// The keys' half of `kv` and the values, `[B, H, N, d]` each.
    fn keys_values(&self, x: Tensor<3>) -> (Tensor<4>, Tensor<4>) {
        let [b, n, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        let kv = self.kv.forward(x);
        let split = |i: usize| kv.clone().narrow(2, i * w, w).reshape([b, n, h, d]).swap_dims(1, 2);
        (split(0), split(1))
    }

    /// The query's attention `[B, H, N]` over tokens `[B, N, W]`, and the values.
    pub fn attention(&self, x: Tensor<3>) -> (Tensor<3>, Tensor<4>) {
        let [b, n, w] = x.dims();
        let (h, d) = (self.heads, w / self.heads);
        let (k, v) = self.keys_values(x);
        let q = self.q.forward(self.latent.val().reshape([1, w])).reshape([1, h, 1, d]).expand([b, h, 1, d]);
        let scores = q.mul_scalar((d as f64).powf(-0.5)).matmul(k.swap_dims(2, 3)); // [B, H, 1, N]
        (softmax(scores, 3).reshape([b, h, n]), v)
    }

    /// The rest of the head from the attention on: `proj(A v)`, then `x + mlp(norm(x))`.
    pub fn from_probs(&self, probs: Tensor<3>, values: Tensor<4>, act: Activation) -> PoolOutput {
        let [b, h, n] = probs.dims();
        let d = values.dims()[3];
        let ctx = probs.clone().reshape([b, h, 1, n]).matmul(values.clone()).reshape([b, h * d]);
        let attended = self.proj.forward(ctx);
        let (normed, norm) = self.norm.forward_with_stats(attended.clone());
        let mlp_pre = self.mlp.c_fc.forward(normed);
        let output = attended.clone() + self.mlp.c_proj.forward(activate(act, mlp_pre.clone()));
        PoolOutput { output, probs, values, attended, norm, mlp_pre }
    }

    pub fn forward(&self, x: Tensor<3>, act: Activation) -> PoolOutput {
        let (probs, values) = self.attention(x);
        self.from_probs(probs, values, act)
    }
}

#[cfg(any(test, feature = "test-support"))]
/// For the tests, natively and in the browser: one attention layer of `(tokens, heads, head
/// width)` with random weights on the integer grid, its integer path (`int_linear::attention`)
/// against burn's operations on the same weights ([`Attention::forward_burn`], the twin). The largest
/// differences of the output (relative to its largest value) and of the probabilities.
pub fn check_attention_against_burn(n: usize, heads: usize, d: usize) -> Result<(f32, f32), String> {
    use burn::tensor::{Device, Tensor, TensorData};

    let device = Device::flex();
    let w = heads * d;
    let values = |len: usize, seed: u32, amp: f32| crate::testing::values(len, seed, -amp / 2.0, amp / 2.0);
    let layer = |seed: u32, d_out: usize| {
        let lin = int_linear::int_linear(
            &values(d_out * w, seed, 0.3),
            values(d_out, seed + 1, 0.1),
            w,
            d_out,
            crate::compute::IntKernel::best(),
            &device,
        );
        Dense::Integer(lin)
    };
    let attn = Attention { in_proj: layer(1, 3 * w), out_proj: layer(3, w), heads };
    let x: Tensor<3> = Tensor::from_data(TensorData::new(values(n * w, 5, 4.0), [1, n, w]), &device);
    let ours = attn.forward(x.clone(), None);
    let plain = attn.forward_burn(x.clone(), None);
    let get = |t: burn::tensor::Tensor<3>| t.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
    let get4 = |t: burn::tensor::Tensor<4>| t.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
    let (o, p) = (get(ours.output)?, get(plain.output)?);
    let out = crate::testing::compare_or_explain(&o, &p)?;
    let scale = p.iter().fold(0f32, |m, v| m.max(v.abs())).max(f32::MIN_POSITIVE);
    let probs = crate::testing::compare_or_explain(&get4(ours.probs)?, &get4(plain.probs)?)?;
    let values_diff = crate::testing::compare_or_explain(&get4(ours.values)?, &get4(plain.values)?)?;
    if values_diff.max_abs > 1e-6 {
        return Err(format!("the values differ by {}", values_diff.max_abs));
    }
    // The untraced output is the traced one's.
    let alone = get(attn.output(x, None))?;
    if alone != o {
        return Err("the output alone differs from the traced output".into());
    }
    Ok((out.max_abs / scale, probs.max_abs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_attention_agrees_with_burns() {
        for (n, h, d) in [(197, 12, 64), (5, 2, 16), (50, 3, 32)] {
            let (out, probs) = check_attention_against_burn(n, h, d).unwrap();
            eprintln!("{n} tokens, {h} heads of {d}: output {out:.2e} of its largest, probabilities {probs:.2e}");
            assert!(out < 2e-3 && probs < 5e-3, "{n}x{h}x{d}: output {out}, probabilities {probs}");
        }
    }
}
