//! The vision tower at any grid (legrad's `vit_dynamic_size_forward`; timm's `dynamic_img_size`
//! for SigLIP), with the per-layer trace explainers read from. One tower, two variants
//! ([`Family`]): open_clip's CLIP ViT (class token, `ln_pre`, `ln_post(x[CLS]) @ proj`) and timm's
//! SigLIP ViT (patch bias, no class token, `attn_pool(norm(x))`); the blocks are the same.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use super::pos_embed::resample_bicubic_aa;
use super::{AttentionPool, Block, LayerNorm, activate_grad, tensor1, tensor2, transposed};
use crate::config::{Activation, ClipConfig, Family};
use crate::error::{LegradError, Result};
use crate::weights::TensorMap;

/// The vision tower's weights (a burn module, so it can be moved, quantized and saved).
#[derive(Module, Debug)]
pub struct VisionWeights {
    /// `conv1` as a matrix `[3 * P * P, W]` over flattened patches (channel, row, column).
    pub patch_embed: Param<Tensor<2>>,
    /// SigLIP's patch embedding has a bias; CLIP's has none.
    pub patch_bias: Option<Param<Tensor<1>>>,
    /// CLIP only.
    pub class_embedding: Option<Param<Tensor<1>>>,
    /// CLIP only.
    pub ln_pre: Option<LayerNorm>,
    pub blocks: Vec<Block>,
    /// CLIP's `ln_post` (on the class token); SigLIP's final `norm` (on every token, before the
    /// attention pool).
    pub ln_post: LayerNorm,
    /// `[W, E]`, CLIP only.
    pub proj: Option<Param<Tensor<2>>>,
    /// SigLIP's attention-pool head.
    pub attn_pool: Option<AttentionPool>,
}

#[derive(Debug)]
pub struct VisionTower {
    pub weights: VisionWeights,
    pub patch_size: usize,
    pub width: usize,
    pub heads: usize,
    pub activation: Activation,
    pub family: Family,
    /// Tokens before the patches: 1 (CLIP's class token) or 0 (SigLIP).
    pub prefix_tokens: usize,
    /// The checkpoint's positional embedding, `[prefix + G*G, W]`, kept on the host for resampling.
    native_pos: Vec<f32>,
    native_grid: usize,
    /// Resampled positional embeddings by grid `(rows, cols)`, never written back to the weights.
    pos_cache: Mutex<HashMap<(usize, usize), Tensor<2>>>,
    /// LeGrad's per-layer constants, computed on first use.
    legrad_cache: Mutex<HashMap<usize, LegradConsts>>,
    /// Image forwards run so far (tests check that a new prompt runs none).
    forwards: AtomicUsize,
}

/// See [`VisionTower::legrad_consts`]: `k = W_fcᵀ diag(γ₂) W_outᵀ` `[M, W]`,
/// `kappa = W_fcᵀ γ₂ / W` `[M]`, `ones_out = 1ᵀ W_outᵀ` `[W]`, and `g_weights =
/// [W_projᵀ | W_outᵀ]` `[W, M + W]` (a prompt's `g W_projᵀ` and `g W_outᵀ` in one product;
/// burn's `[in, out]` weights, dequantized: 4 bytes a weight, 12 MB a layer for a ViT-B/16).
#[derive(Clone, Debug)]
pub struct LegradConsts {
    pub k: Tensor<2>,
    pub kappa: Tensor<1>,
    pub ones_out: Tensor<1>,
    pub g_weights: Tensor<2>,
}

/// Which intermediate values a forward pass keeps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    /// Keep layers `first_layer..depth`.
    pub first_layer: usize,
    /// What LeGrad's analytic backward needs (LEGRAD.md section 5).
    pub mlp_backward: bool,
    /// Post-softmax attention probabilities.
    pub attention: bool,
    /// Each kept block's input and output tokens (for methods that re-run a block under autodiff).
    pub tokens: bool,
}

impl TraceRequest {
    /// The union of two requests.
    pub fn merge(&self, other: &Self) -> Self {
        Self {
            first_layer: self.first_layer.min(other.first_layer),
            mlp_backward: self.mlp_backward || other.mlp_backward,
            attention: self.attention || other.attention,
            tokens: self.tokens || other.tokens,
        }
    }

    /// Does a trace made for `self` hold everything `other` needs?
    pub fn covers(&self, other: &Self) -> bool {
        self.merge(other) == *self
    }
}

/// One block's values for one image (batch dimension removed). `N` tokens, CLS first.
#[derive(Clone, Debug)]
pub struct LayerTrace {
    pub index: usize,
    /// Mean over all tokens (CLS included) of the block's output, `[W]`.
    pub output_mean: Tensor<1>,
    /// Block input and output tokens `[N, W]`, when requested.
    pub input: Option<Tensor<2>>,
    pub output: Option<Tensor<2>>,
    /// Attention probabilities `[H, N, N]`, when requested.
    pub probs: Option<Tensor<3>>,
    /// For the analytic backward (LEGRAD.md section 5, with ln_2 folded as in
    /// [`VisionTower::legrad_consts`]): values `[H, N, d]`; ln_2's `1/σ` `[N, 1]`; its `x̂`
    /// through `out_proj`, `x̂ W_outᵀ` `[N, W]`; `act'(h)` `[N, M]` for `h = c_fc(ln_2(u))`; and
    /// the LayerNorm's mean terms' rows `[act' ⊙ κ ; act' ⊙ (x̂ diag(γ₂) W_fc) / W]` `[2N, M]`
    /// (a prompt's two `[N]` mean terms are one product with them).
    pub values: Option<Tensor<3>>,
    /// SigLIP: what LeGrad's closed form needs of the attention pool run on this block's output.
    pub pool: Option<PoolTrace>,
    pub ln_2_rstd: Option<Tensor<2>>,
    pub xhat_out: Option<Tensor<2>>,
    pub act_grad: Option<Tensor<2>>,
    pub mean_rows: Option<Tensor<2>>,
}

/// SigLIP's LeGrad reads the attention pool applied to a block's output (the reference's
/// `attn_pool(blk.feat_post_mlp)`, without the final norm): its values `[H, N, d]`, its output
/// `[W]`, the LayerNorm statistics of its MLP's input (`x̂` `[1, W]`, `1/σ` `[1, 1]`) and
/// `act'` of the MLP's pre-activation `[1, M]`.
#[derive(Clone, Debug)]
pub struct PoolTrace {
    pub values: Tensor<3>,
    pub output: Tensor<1>,
    pub x_hat: Tensor<2>,
    pub rstd: Tensor<2>,
    pub act_grad: Tensor<2>,
}

/// What one image's forward pass leaves for explainers: computed once per image and size.
#[derive(Clone, Debug)]
pub struct ImageTrace {
    /// Grid `(rows, cols)`.
    pub grid: (usize, usize),
    pub patch_size: usize,
    /// The normalised image embedding `[E]`.
    pub embedding: Tensor<1>,
    /// Layers `request.first_layer..depth`, in order.
    pub layers: Vec<LayerTrace>,
    pub request: TraceRequest,
    /// Tokens before the patches (1: CLIP's class token; 0: SigLIP).
    pub prefix_tokens: usize,
    /// CLIP's LeGrad: how each traced layer's score gradient depends on the text embedding,
    /// `[L, E, W]`, computed once per image on first use
    /// ([`crate::explain::legrad::score_jacobians`]).
    pub score_jacobian: std::sync::OnceLock<Tensor<3>>,
    /// Unique in the process: names the trace to those who hold a copy of parts of it
    /// ([`crate::explain::rows::RowHelpers`]).
    pub id: u64,
}

fn next_trace_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ImageTrace {
    pub fn tokens(&self) -> usize {
        self.grid.0 * self.grid.1 + self.prefix_tokens
    }
    pub fn layer(&self, index: usize) -> Option<&LayerTrace> {
        self.layers.iter().find(|l| l.index == index)
    }
}

impl VisionTower {
    pub(crate) fn load(config: &ClipConfig, map: &mut TensorMap, device: &Device) -> Result<Self> {
        let v = &config.vision;
        let (w, p) = (v.width, v.patch_size);
        let grid = v.grid();
        let family = config.family;
        let eps = family.ln_eps();
        let clip = family == Family::Clip;
        let prefix_tokens = usize::from(clip);
        let conv = map.take("visual.conv1.weight", &[w, 3, p, p])?;
        let patch_embed = tensor2(transposed(&conv, w, 3 * p * p), [3 * p * p, w], device);
        let patch_bias = if clip { None } else { Some(tensor1(map.take("visual.conv1.bias", &[w])?, device)) };
        let class_embedding =
            if clip { Some(tensor1(map.take("visual.class_embedding", &[w])?, device)) } else { None };
        let native_pos = map.take("visual.positional_embedding", &[grid * grid + prefix_tokens, w])?;
        let ln_pre = if clip { Some(LayerNorm::load(map, "visual.ln_pre", w, eps, device)?) } else { None };
        let blocks = (0..v.layers)
            .map(|i| {
                Block::load(map, &format!("visual.transformer.resblocks.{i}"), w, v.heads, v.mlp_width, eps, device)
            })
            .collect::<Result<Vec<_>>>()?;
        if map.get(&format!("visual.transformer.resblocks.{}.attn.in_proj_weight", v.layers)).is_some() {
            return Err(LegradError::Config(format!(
                "the config says {} vision layers but the checkpoint has more",
                v.layers
            )));
        }
        let ln_post = LayerNorm::load(map, "visual.ln_post", w, eps, device)?;
        let proj = if clip {
            Some(tensor2(map.take("visual.proj", &[w, config.embed_dim])?, [w, config.embed_dim], device))
        } else {
            None
        };
        let attn_pool = if clip {
            None
        } else {
            Some(AttentionPool::load(map, "visual.attn_pool", w, v.heads, v.mlp_width, eps, device)?)
        };
        Ok(Self {
            weights: VisionWeights {
                patch_embed: Param::from_tensor(patch_embed),
                patch_bias: patch_bias.map(Param::from_tensor),
                class_embedding: class_embedding.map(Param::from_tensor),
                ln_pre,
                blocks,
                ln_post,
                proj: proj.map(Param::from_tensor),
                attn_pool,
            },
            patch_size: p,
            width: w,
            heads: v.heads,
            activation: config.activation,
            family,
            prefix_tokens,
            native_pos,
            native_grid: grid,
            pos_cache: Mutex::new(HashMap::new()),
            legrad_cache: Mutex::new(HashMap::new()),
            forwards: AtomicUsize::new(0),
        })
    }

    /// Block `layer`'s weights folded for LeGrad's closed-form backward (LEGRAD.md section 5):
    /// the path `c_fc`ᵀ → ln_2 (its diagonal part) → `out_proj`ᵀ as one `[M, W]` matrix, so that
    /// a prompt costs one MLP-sized matmul per layer. Image-independent: computed once per model
    /// and layer, from the dequantized weights (the same values the quantized matmuls use).
    pub fn legrad_consts(&self, layer: usize) -> Result<LegradConsts> {
        let mut cache = self.legrad_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(&layer) {
            return Ok(c.clone());
        }
        let block = self.weights.blocks.get(layer).ok_or_else(|| {
            LegradError::Input(format!("layer {layer} does not exist: the vision tower has {} layers", self.depth()))
        })?;
        let w = self.width;
        let out_t = block.attn.out_proj.weight.val().dequantize().transpose(); // [W, W]
        let gamma = block.ln_2.weight.val().unsqueeze::<2>(); // [1, W]
        let fc_t_gamma = block.mlp.c_fc.weight.val().dequantize().transpose() * gamma; // [M, W]
        let kappa = fc_t_gamma.clone().sum_dim(1).div_scalar(w as f64).squeeze_dim::<1>(1); // [M]
        let ones_out = out_t.clone().sum_dim(0).squeeze_dim::<1>(0); // [W]
        let proj_t = block.mlp.c_proj.weight.val().dequantize().transpose(); // [W, M]
        let g_weights = Tensor::cat(vec![proj_t, out_t.clone()], 1); // [W, M + W]
        let c = LegradConsts { k: fc_t_gamma.matmul(out_t), kappa, ones_out, g_weights };
        cache.insert(layer, c.clone());
        Ok(c)
    }

    /// How many image forwards this tower has run.
    pub fn forward_count(&self) -> usize {
        self.forwards.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> usize {
        self.weights.blocks.len()
    }

    pub fn device(&self) -> Device {
        self.weights.patch_embed.val().device()
    }

    /// CLIP's projection `[W, E]`; an error for a tower without one (SigLIP).
    pub fn clip_proj(&self) -> Result<Tensor<2>> {
        self.weights.proj.as_ref().map(|p| p.val()).ok_or_else(|| self.not_for_family("CLIP's class-token projection"))
    }

    /// SigLIP's attention-pool head; an error for a tower without one (CLIP).
    pub fn attn_pool(&self) -> Result<&AttentionPool> {
        self.weights.attn_pool.as_ref().ok_or_else(|| self.not_for_family("SigLIP's attention-pool head"))
    }

    fn not_for_family(&self, what: &str) -> LegradError {
        LegradError::Unsupported(format!(
            "this step needs {what}, which a {:?} vision tower does not have",
            self.family
        ))
    }

    /// The embedding size.
    pub fn embed_dim(&self) -> usize {
        match &self.weights.proj {
            Some(p) => p.val().dims()[1],
            None => self.width,
        }
    }

    /// The positional embedding for a grid, resampled once per grid size and cached.
    pub fn positional_embedding(&self, grid: (usize, usize)) -> Tensor<2> {
        let mut cache = self.pos_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(t) = cache.get(&grid) {
            return t.clone();
        }
        let w = self.width;
        let g0 = self.native_grid;
        let head = self.prefix_tokens * w;
        let mut data = self.native_pos[..head].to_vec();
        if grid == (g0, g0) {
            data.extend_from_slice(&self.native_pos[head..]);
        } else {
            data.extend(resample_bicubic_aa(&self.native_pos[head..], (g0, g0), grid, w));
        }
        let t = tensor2(data, [grid.0 * grid.1 + self.prefix_tokens, w], &self.device());
        cache.insert(grid, t.clone());
        t
    }

    /// The grid a `[H, W]` input gives (conv1 with stride P drops a partial last patch).
    pub fn grid_for(&self, height: usize, width: usize) -> Result<(usize, usize)> {
        let p = self.patch_size;
        if height < p || width < p {
            return Err(LegradError::Input(format!(
                "the input is {width}x{height} pixels, smaller than one {p}x{p} patch"
            )));
        }
        Ok((height / p, width / p))
    }

    /// Patch embedding, class token, positional embedding and `ln_pre`: `[B, 3, H, W]` → `[B, N, W]`.
    pub fn embed(&self, pixels: Tensor<4>) -> Result<(Tensor<3>, (usize, usize))> {
        self.forwards.fetch_add(1, Ordering::Relaxed);
        let [b, c, h, w] = pixels.dims();
        if c != 3 {
            return Err(LegradError::Input(format!("expected 3 colour channels, got {c}")));
        }
        let p = self.patch_size;
        let (gh, gw) = self.grid_for(h, w)?;
        let pixels = if gh * p != h || gw * p != w { pixels.slice([0..b, 0..3, 0..gh * p, 0..gw * p]) } else { pixels };
        let patches = pixels.reshape([b, 3, gh, p, gw, p]).permute([0, 2, 4, 1, 3, 5]).reshape([b, gh * gw, 3 * p * p]);
        let mut x = patches.matmul(self.weights.patch_embed.val().unsqueeze());
        if let Some(bias) = &self.weights.patch_bias {
            x = x + bias.val().unsqueeze::<3>();
        }
        if let Some(cls) = &self.weights.class_embedding {
            let cls = cls.val().reshape([1, 1, self.width]).expand([b, 1, self.width]);
            x = Tensor::cat(vec![cls, x], 1);
        }
        let x = x + self.positional_embedding((gh, gw)).unsqueeze();
        Ok((self.weights.ln_pre.as_ref().map_or(x.clone(), |ln| ln.forward(x)), (gh, gw)))
    }

    /// The image feature, not normalised: `[B, N, W]` → `[B, E]`. CLIP: `ln_post(x[CLS]) @ proj`;
    /// SigLIP: `attn_pool(norm(x))`.
    pub fn pool(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, _, w] = x.dims();
        match (&self.weights.attn_pool, &self.weights.proj) {
            (Some(pool), _) => pool.forward(self.weights.ln_post.forward(x), self.activation).output,
            (None, Some(proj)) => {
                let cls = x.narrow(1, 0, 1).reshape([b, w]);
                self.weights.ln_post.forward(cls).matmul(proj.val())
            }
            (None, None) => unreachable!("a vision tower has a projection or an attention pool"),
        }
    }

    /// The image embeddings `[B, E]`, L2-normalised.
    pub fn forward(&self, pixels: Tensor<4>) -> Result<Tensor<2>> {
        let (mut x, _) = self.embed(pixels)?;
        for block in &self.weights.blocks {
            x = block.forward(x, None, self.activation);
        }
        Ok(l2_normalize(self.pool(x)))
    }

    /// Each block's linear-layer inputs `[B, N, in]` (see [`Block::forward_linear_inputs`](super::Block::forward_linear_inputs)).
    pub fn linear_inputs(&self, pixels: Tensor<4>) -> Result<Vec<[Tensor<3>; 4]>> {
        let (mut x, _) = self.embed(pixels)?;
        let mut inputs = Vec::with_capacity(self.depth());
        for block in &self.weights.blocks {
            let (out, seen) = block.forward_linear_inputs(x, None, self.activation);
            inputs.push(seen);
            x = out;
        }
        Ok(inputs)
    }

    /// One image `[3, H, W]` through the tower, keeping what `request` asks for.
    pub fn forward_with_trace(&self, pixels: Tensor<3>, request: &TraceRequest) -> Result<ImageTrace> {
        if request.first_layer >= self.depth() {
            return Err(LegradError::Input(format!(
                "layer {} does not exist: the vision tower has {} layers",
                request.first_layer,
                self.depth()
            )));
        }
        let (mut x, grid) = self.embed(pixels.unsqueeze())?;
        let mut layers = Vec::with_capacity(self.depth() - request.first_layer);
        for (i, block) in self.weights.blocks.iter().enumerate() {
            if i < request.first_layer {
                x = block.forward(x, None, self.activation);
                continue;
            }
            let input = x;
            let out = block.forward_traced(input.clone(), self.activation);
            let [_, n, w] = out.output.dims();
            let squeeze3 = |t: Tensor<3>| -> Tensor<2> { t.squeeze_dim(0) };
            let squeeze4 = |t: Tensor<4>| -> Tensor<3> { t.squeeze_dim(0) };
            let clip = self.family == Family::Clip;
            let pool = match (&self.weights.attn_pool, request.mlp_backward) {
                (Some(head), true) => {
                    let p = head.forward(out.output.clone(), self.activation);
                    Some(PoolTrace {
                        values: squeeze4(p.values),
                        output: p.output.reshape([w]),
                        x_hat: p.norm.x_hat,
                        rstd: p.norm.rstd,
                        act_grad: activate_grad(self.activation, p.mlp_pre),
                    })
                }
                _ => None,
            };
            let kappa = if request.mlp_backward && clip { Some(self.legrad_consts(i)?.kappa) } else { None };
            let backward = kappa.map(|kappa| {
                let x_hat = squeeze3(out.ln_2.x_hat.clone()); // [N, W]
                let h = squeeze3(out.mlp_pre.clone()); // [N, M]
                let act_grad = activate_grad(self.activation, h.clone());
                // x̂ diag(γ) W_fc = h - b_fc - β W_fc: no second [N, W] x [W, M] product.
                let fc = &block.mlp.c_fc;
                let beta_fc = block.ln_2.bias.val().unsqueeze::<2>().matmul(fc.weight.val()); // [1, M]
                let mut b = h - beta_fc;
                if let Some(bias) = &fc.bias {
                    b = b - bias.val().unsqueeze::<2>();
                }
                let xhat_out = x_hat.matmul(block.attn.out_proj.weight.val().transpose());
                let mean_rows = Tensor::cat(
                    vec![act_grad.clone() * kappa.unsqueeze(), (act_grad.clone() * b).div_scalar(w as f64)],
                    0,
                );
                (squeeze3(out.ln_2.rstd.clone()), xhat_out, act_grad, mean_rows)
            });
            layers.push(LayerTrace {
                index: i,
                output_mean: out.output.clone().mean_dim(1).reshape([w]),
                input: request.tokens.then(|| squeeze3(input.clone())),
                output: request.tokens.then(|| squeeze3(out.output.clone())),
                probs: request.attention.then(|| squeeze4(out.attention.probs.clone())),
                values: (request.mlp_backward && clip).then(|| squeeze4(out.attention.values.clone())),
                pool,
                ln_2_rstd: backward.as_ref().map(|b| b.0.clone()),
                xhat_out: backward.as_ref().map(|b| b.1.clone()),
                act_grad: backward.as_ref().map(|b| b.2.clone()),
                mean_rows: backward.map(|b| b.3),
            });
            debug_assert_eq!(n, grid.0 * grid.1 + self.prefix_tokens);
            x = out.output;
        }
        let embedding = l2_normalize(self.pool(x)).squeeze_dim(0);
        Ok(ImageTrace {
            grid,
            patch_size: self.patch_size,
            embedding,
            layers,
            request: request.clone(),
            prefix_tokens: self.prefix_tokens,
            score_jacobian: Default::default(),
            id: next_trace_id(),
        })
    }
}

impl VisionTower {
    /// A trace of the right shapes for a `grid`, filled with seeded noise instead of an image's
    /// values: what timing the per-prompt path needs (its cost does not depend on the values)
    /// without paying for an image forward (seconds for a ViT-B/16 on a CPU).
    pub fn placeholder_trace(&self, grid: (usize, usize), request: &TraceRequest) -> ImageTrace {
        use burn::tensor::Distribution;
        let device = self.device();
        let n = grid.0 * grid.1 + self.prefix_tokens;
        let (w, h) = (self.width, self.heads);
        let embed = self.embed_dim();
        let clip = self.family == Family::Clip;
        let noise2 =
            |shape: [usize; 2]| -> Tensor<2> { Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device) };
        let layers = (request.first_layer..self.depth())
            .map(|index| {
                let m = self.weights.blocks[index].mlp.c_fc.weight.val().dims()[1];
                let noise3 = |shape: [usize; 3]| -> Tensor<3> {
                    Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device)
                };
                let backward = request.mlp_backward && clip;
                let pool = (request.mlp_backward && !clip).then(|| PoolTrace {
                    values: noise3([h, n, w / h]),
                    output: Tensor::random([w], Distribution::Uniform(-1.0, 1.0), &device),
                    x_hat: noise2([1, w]),
                    rstd: noise2([1, 1]).abs().add_scalar(0.5),
                    act_grad: noise2([
                        1,
                        self.weights.attn_pool.as_ref().map_or(m, |p| p.mlp.c_fc.weight.val().dims()[1]),
                    ]),
                });
                LayerTrace {
                    pool,
                    index,
                    output_mean: Tensor::random([w], Distribution::Uniform(-1.0, 1.0), &device),
                    input: request.tokens.then(|| noise2([n, w])),
                    output: request.tokens.then(|| noise2([n, w])),
                    probs: request.attention.then(|| noise3([h, n, n]).abs()),
                    values: backward.then(|| noise3([h, n, w / h])),
                    ln_2_rstd: backward.then(|| noise2([n, 1]).abs().add_scalar(0.5)),
                    xhat_out: backward.then(|| noise2([n, w])),
                    act_grad: backward.then(|| noise2([n, m])),
                    mean_rows: backward.then(|| noise2([2 * n, m])),
                }
            })
            .collect();
        ImageTrace {
            grid,
            patch_size: self.patch_size,
            embedding: l2_normalize(Tensor::random([embed], Distribution::Uniform(-1.0, 1.0), &device)),
            layers,
            request: request.clone(),
            prefix_tokens: self.prefix_tokens,
            score_jacobian: Default::default(),
            id: next_trace_id(),
        }
    }
}

/// `x / max(|x|, 1e-12)` along the last dimension (torch's `F.normalize`).
pub fn l2_normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}
