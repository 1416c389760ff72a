//! The vision tower at any grid (legrad's `vit_dynamic_size_forward`; timm's `dynamic_img_size`
//! for SigLIP). One tower, two heads ([`VisionHead`]): open_clip's CLIP ViT (class token,
//! `ln_pre`, `ln_post(x[CLS]) @ proj`) and timm's SigLIP ViT (patch bias, no class token,
//! `attn_pool(norm(x))`); the blocks are the same. An image's forward pass gives each block's
//! values out as they are made ([`BlockRun`]); explainers build their own traces from them
//! (`crate::explain::trace`): the model knows no explainer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Tensor};

use super::int_linear::share::{self, BlockShare, ImageHelpers};
use super::int_linear::{self, IntMatrix};
use super::pos_embed::resample_bicubic_aa;
use super::{AttentionPool, Block, BlockOutput, Dense, Keep, LayerNorm, tensor1, tensor2, transposed};
use crate::compute::LinearProducts;
use crate::config::{Activation, ClipConfig, HeadKind};
use crate::error::{LegradError, Result};
use crate::weights::TensorMap;

/// The vision tower's weights (a burn module, so it can be moved, quantized and saved).
#[derive(Module, Debug)]
pub struct VisionWeights {
    /// `conv1` as a linear layer from flattened patches (channel, row, column) `[3 * P * P]` to
    /// `[W]`, no bias (SigLIP's is the head's `patch_bias`): f32 in burn's layer, or on the
    /// integer grid where the tower's layers are.
    pub patch_embed: Dense,
    pub blocks: Vec<Block>,
    /// CLIP's `ln_post` (on the class token); SigLIP's final `norm` (on every token, before the
    /// attention pool).
    pub ln_post: LayerNorm,
    /// What differs between the families: the tokens before the patches and the pooling.
    pub head: VisionHead,
}

/// The two families' heads: the only place the vision towers differ.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)] // one per model
pub enum VisionHead {
    /// open_clip's CLIP ViT: a class token, `ln_pre`, and `ln_post(x[CLS]) @ proj`.
    ClassToken(ClassTokenHead),
    /// timm's SigLIP ViT: a bias on the patch embedding, no class token, and
    /// `attn_pool(norm(x))`.
    AttentionPool(PoolHead),
}

#[derive(Module, Debug)]
pub struct ClassTokenHead {
    pub class_embedding: Param<Tensor<1>>,
    pub ln_pre: LayerNorm,
    /// `[W, E]`.
    pub proj: Param<Tensor<2>>,
}

#[derive(Module, Debug)]
pub struct PoolHead {
    pub patch_bias: Param<Tensor<1>>,
    pub pool: AttentionPool,
}

impl VisionHead {
    /// Tokens before the patches: 1 (the class token) or 0.
    pub fn prefix_tokens(&self) -> usize {
        match self {
            VisionHead::ClassToken(_) => 1,
            VisionHead::AttentionPool(_) => 0,
        }
    }
}

#[derive(Debug)]
pub struct VisionTower {
    pub weights: VisionWeights,
    pub patch_size: usize,
    pub width: usize,
    pub heads: usize,
    pub activation: Activation,
    /// The checkpoint's positional embedding, `[prefix + G*G, W]`, kept on the host for resampling.
    native_pos: Vec<f32>,
    native_grid: usize,
    /// Resampled positional embeddings by grid `(rows, cols)`, never written back to the weights.
    pos_cache: Mutex<HashMap<(usize, usize), Tensor<2>>>,
    /// Image forwards run so far (tests check that a new prompt runs none).
    forwards: AtomicUsize,
}

/// One block of an image's forward pass, as it ran: its index, its input tokens `[1, N, W]`
/// and everything it computed ([`BlockOutput`]). What explainers build their traces from
/// ([`BlockRun`]).
pub struct TracedBlock<'a> {
    pub index: usize,
    pub block: &'a Block,
    pub input: Tensor<3>,
    pub out: BlockOutput,
}

/// An image's forward pass, one block at a time: the values each block computed come out as
/// they are made ([`BlockRun::next_block`]), and the caller keeps what it reads (candle's
/// `output_hidden_states`, without holding every block's values at once). Where the tower's
/// products are shared with helpers ([`VisionTower::run_shared`]) each block awaits theirs;
/// otherwise nothing in it waits.
pub struct BlockRun<'a> {
    tower: &'a VisionTower,
    x: Tensor<3>,
    next: usize,
    /// Grid `(rows, cols)` of the image.
    pub grid: (usize, usize),
    /// This thread's share of every block and the helpers that hold the others.
    shared: Option<(Vec<BlockShare>, &'a dyn ImageHelpers)>,
}

impl<'a> BlockRun<'a> {
    /// Run the blocks before `layer` keeping nothing.
    pub async fn skip_to(&mut self, layer: usize) -> Result<()> {
        while self.next < layer.min(self.tower.depth()) {
            self.x = self.block(Keep::Output).await?.0;
            self.next += 1;
        }
        Ok(())
    }

    /// The next block, with what `keep` asks of what it computed ([`Keep::Terms`] or
    /// [`Keep::Everything`]; [`Keep::Output`] is an error); `None` after the last.
    pub async fn next_block(&mut self, keep: Keep) -> Result<Option<TracedBlock<'a>>> {
        let Some(block) = self.tower.weights.blocks.get(self.next) else { return Ok(None) };
        let input = self.x.clone();
        let out =
            self.block(keep).await?.1.ok_or_else(|| LegradError::Backend("a traced block kept nothing".into()))?;
        self.x = out.output.clone();
        self.next += 1;
        Ok(Some(TracedBlock { index: self.next - 1, block, input, out }))
    }

    /// Block `next` on `x`: its output and what `keep` asks of what it computed.
    async fn block(&self, keep: Keep) -> Result<(Tensor<3>, Option<BlockOutput>)> {
        let (i, act) = (self.next, self.tower.activation);
        let block = &self.tower.weights.blocks[i];
        match &self.shared {
            Some((own, helpers)) => {
                let b = share::block_forward(block, i, &own[i], *helpers, self.x.clone(), keep).await?;
                Ok((b.output, b.kept))
            }
            None if keep != Keep::Output => {
                let out = block.forward_traced(self.x.clone(), act, keep);
                Ok((out.output.clone(), Some(out)))
            }
            None => Ok((block.forward(self.x.clone(), None, act), None)),
        }
    }

    /// The rest of the blocks, then the image embedding `[E]`, L2-normalised.
    pub async fn finish(mut self) -> Result<Tensor<1>> {
        self.skip_to(self.tower.depth()).await?;
        Ok(l2_normalize(self.tower.pool(self.x)).squeeze_dim(0))
    }
}

impl VisionTower {
    pub(crate) fn load(
        config: &ClipConfig,
        map: &mut TensorMap,
        products: LinearProducts,
        device: &Device,
    ) -> Result<Self> {
        let v = &config.vision;
        let (w, p) = (v.width, v.patch_size);
        let grid = v.grid();
        let eps = config.family.anatomy().ln_eps;
        let conv = map.take("visual.conv1.weight", &[w, 3, p, p])?;
        let patch_embed = match products {
            LinearProducts::Integer(kernel) if IntMatrix::fits(3 * p * p, w) => {
                Dense::Integer(int_linear::int_linear(&conv, vec![0.0; w], 3 * p * p, w, kernel, device))
            }
            // f32 on every device (a GPU's too: the patches' product is a small part of the
            // image's, and it keeps the embedding as the reference's).
            _ => Dense::Burn(Linear {
                weight: Param::from_tensor(tensor2(transposed(&conv, w, 3 * p * p), [3 * p * p, w], device)),
                bias: None,
            }),
        };
        // Each family's own tensors, in the order the checkpoint's keys are checked.
        let head = match config.family.anatomy().vision_head {
            HeadKind::ClassToken => VisionHead::ClassToken(ClassTokenHead {
                class_embedding: Param::from_tensor(tensor1(map.take("visual.class_embedding", &[w])?, device)),
                ln_pre: LayerNorm::load(map, "visual.ln_pre", w, eps, device)?,
                proj: Param::from_tensor(tensor2(
                    map.take("visual.proj", &[w, config.embed_dim])?,
                    [w, config.embed_dim],
                    device,
                )),
            }),
            HeadKind::AttentionPool => VisionHead::AttentionPool(PoolHead {
                patch_bias: Param::from_tensor(tensor1(map.take("visual.conv1.bias", &[w])?, device)),
                pool: AttentionPool::load(map, "visual.attn_pool", w, v.heads, v.mlp_width, eps, device)?,
            }),
        };
        let prefix_tokens = head.prefix_tokens();
        let native_pos = map.take("visual.positional_embedding", &[grid * grid + prefix_tokens, w])?;
        let blocks = (0..v.layers)
            .map(|i| {
                let prefix = format!("visual.transformer.resblocks.{i}");
                Block::load(map, &prefix, w, v.heads, v.mlp_width, eps, products, device)
            })
            .collect::<Result<Vec<_>>>()?;
        if map.contains(&format!("visual.transformer.resblocks.{}.attn.in_proj_weight", v.layers)) {
            return Err(LegradError::Config(format!(
                "the config says {} vision layers but the checkpoint has more",
                v.layers
            )));
        }
        let ln_post = LayerNorm::load(map, "visual.ln_post", w, eps, device)?;
        Ok(Self {
            weights: VisionWeights { patch_embed, blocks, ln_post, head },
            patch_size: p,
            width: w,
            heads: v.heads,
            activation: config.activation,
            native_pos,
            native_grid: grid,
            pos_cache: Mutex::new(HashMap::new()),
            forwards: AtomicUsize::new(0),
        })
    }

    /// How many image forwards this tower has run.
    pub fn forward_count(&self) -> usize {
        self.forwards.load(Ordering::Relaxed)
    }

    pub fn depth(&self) -> usize {
        self.weights.blocks.len()
    }

    pub fn device(&self) -> Device {
        self.weights.ln_post.weight.val().device()
    }

    /// Tokens before the patches (1: CLIP's class token; 0: SigLIP).
    pub fn prefix_tokens(&self) -> usize {
        self.weights.head.prefix_tokens()
    }

    /// The embedding size.
    pub fn embed_dim(&self) -> usize {
        match &self.weights.head {
            VisionHead::ClassToken(h) => h.proj.val().dims()[1],
            VisionHead::AttentionPool(_) => self.width,
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
        let prefix = self.prefix_tokens();
        let head = prefix * w;
        let mut data = self.native_pos[..head].to_vec();
        if grid == (g0, g0) {
            data.extend_from_slice(&self.native_pos[head..]);
        } else {
            data.extend(resample_bicubic_aa(&self.native_pos[head..], (g0, g0), grid, w));
        }
        let t = tensor2(data, [grid.0 * grid.1 + prefix, w], &self.device());
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
        let x = self.weights.patch_embed.forward(patches);
        let pos = self.positional_embedding((gh, gw)).unsqueeze();
        let x = match &self.weights.head {
            VisionHead::ClassToken(head) => {
                let cls = head.class_embedding.val().reshape([1, 1, self.width]).expand([b, 1, self.width]);
                head.ln_pre.forward(Tensor::cat(vec![cls, x], 1) + pos)
            }
            VisionHead::AttentionPool(head) => x + head.patch_bias.val().unsqueeze::<3>() + pos,
        };
        Ok((x, (gh, gw)))
    }

    /// The image feature, not normalised: `[B, N, W]` → `[B, E]`. CLIP: `ln_post(x[CLS]) @ proj`;
    /// SigLIP: `attn_pool(norm(x))`.
    pub fn pool(&self, x: Tensor<3>) -> Tensor<2> {
        let [b, _, w] = x.dims();
        match &self.weights.head {
            VisionHead::AttentionPool(head) => {
                head.pool.forward(self.weights.ln_post.forward(x), self.activation).output
            }
            VisionHead::ClassToken(head) => {
                let cls = x.narrow(1, 0, 1).reshape([b, w]);
                self.weights.ln_post.forward(cls).matmul(head.proj.val())
            }
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

    /// One image `[3, H, W]` through the tower, block by block: see [`BlockRun`].
    pub fn run(&self, pixels: Tensor<3>) -> Result<BlockRun<'_>> {
        let (x, grid) = self.embed(pixels.unsqueeze())?;
        Ok(BlockRun { tower: self, x, next: 0, grid, shared: None })
    }

    /// [`run`](Self::run) with the blocks' integer products shared with `helpers`, where they
    /// hold their shares ([`share`]); else on this thread alone. The same values but for the
    /// shares' rounding of their parts of a row.
    pub fn run_shared<'a>(&'a self, pixels: Tensor<3>, helpers: &'a dyn ImageHelpers) -> Result<BlockRun<'a>> {
        let mut run = self.run(pixels)?;
        let parts = helpers.count() + 1;
        if parts > 1 {
            run.shared = self.shares(0, parts).map(|own| (own, helpers));
        }
        Ok(run)
    }

    /// Share `part` of `parts` of every block's products ([`BlockShare::of`]); `None` where the
    /// tower is not on the integer grid or the parts do not fit it.
    pub fn shares(&self, part: usize, parts: usize) -> Option<Vec<BlockShare>> {
        self.weights.blocks.iter().map(|b| BlockShare::of(b, self.activation, part, parts)).collect()
    }
}

/// `x / max(|x|, 1e-12)` along the last dimension (torch's `F.normalize`).
pub fn l2_normalize<const D: usize>(x: Tensor<D>) -> Tensor<D> {
    let norm = x.clone().powi_scalar(2).sum_dim(D - 1).sqrt().clamp_min(1e-12);
    x / norm
}
