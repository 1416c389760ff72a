//! The image step's integer products shared by columns between this thread and helpers: other
//! threads that each hold a share of every vision block's weights (the browser's helper
//! workers: a wasm instance is one thread, and natively rayon splits the rows instead).
//!
//! Each of a block's four products is split by its outputs: `in_proj` by heads (a share's
//! `q`, `k` and `v` columns of its heads, so that its heads' attention runs where they were
//! made), `out_proj`, `c_fc` and `c_proj` by whole tiles of outputs. Every share rounds the same
//! input rows with the same per-input scales ([`IntMatrix::quantize`]) and computes each output
//! as the whole matrix would, so the merged result equals the unshared one to the bit
//! ([`BlockShare::run`]; the tests compare them). A block costs four round trips: its input
//! rows go out, each share's columns come back.
//!
//! A helper keeps its share for the model's life (a copy of its columns: `1/parts` of the
//! tower's weights each); this thread multiplies its own columns out of the model's matrices
//! (no copy).

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use serde::{Deserialize, Serialize};

use super::kernels::TILE;
use super::{IntKernel, IntMatrix, attention, host_f32};
use crate::config::Activation;
use crate::error::{LegradError, Result};
use crate::model::{AttentionOutput, Block, BlockOutput, Dense};

/// Share `i` of `n` units split into `parts` shares, as even as they come (share 0 is this
/// thread's).
pub fn share_range(n: usize, parts: usize, i: usize) -> Range<usize> {
    let per = n.div_ceil(parts.max(1));
    let start = (i * per).min(n);
    start..((i + 1) * per).min(n)
}

/// A block's four integer products, in the order the block runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// `in_proj` and the attention of the share's heads.
    Attention,
    OutProj,
    Fc,
    /// `c_proj` after the activation.
    Proj,
}

/// What a share is asked for: `stage` of block `block` on `rows` input rows; `keep`: the
/// attention's probabilities and values too (a block an explainer reads).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageJob {
    pub block: usize,
    pub stage: Stage,
    pub rows: usize,
    pub keep: bool,
}

/// A share's answer to a [`StageJob`].
#[derive(Debug)]
pub enum StageOut {
    /// `[rows, columns]` of a linear layer, the share's columns.
    Columns(Vec<f32>),
    /// The share's heads: the context `[rows, heads·d]`; where kept, the probabilities
    /// `[heads, rows, rows]` and the values `[heads, rows, d]`.
    Heads { context: Vec<f32>, kept: Option<(Vec<f32>, Vec<f32>)> },
}

type PendingStage = Pin<Box<dyn Future<Output = Result<StageOut>>>>;

/// Threads that hold a share of the vision tower ([`BlockShare`], share `i + 1` for helper `i`,
/// of `count() + 1`). `start` hands a job over at once and returns its answer to await.
pub trait ImageHelpers {
    /// Helpers holding their share of this model's tower (0: the image step runs here alone).
    fn count(&self) -> usize;
    /// Start helper `i` on `job` with its input rows `x`.
    fn start(&self, i: usize, job: StageJob, x: &[f32]) -> PendingStage;
}

/// One product's share: tiles `tiles` of `matrix`'s outputs, and their bias.
#[derive(Debug)]
struct Cols {
    matrix: Arc<IntMatrix>,
    tiles: Vec<Range<usize>>,
    bias: Vec<f32>,
}

impl Cols {
    fn of(dense: &Dense, tiles: Vec<Range<usize>>) -> Option<Self> {
        let Dense::Integer(l) = dense else { return None };
        let bias = l.bias.val().into_data().try_into_vec::<f32>().ok()?;
        let bias = tiles.iter().flat_map(|t| &bias[t.start * TILE..t.end * TILE]).copied().collect();
        Some(Self { matrix: l.matrix.clone(), tiles, bias })
    }

    fn width(&self) -> usize {
        self.tiles.iter().map(|t| t.len() * TILE).sum()
    }

    /// `[rows, width]`: the share's outputs for `x` (`act` applied to its rows first), the
    /// ranges side by side.
    fn product(&self, x: &[f32], rows: usize, act: Option<Activation>) -> Result<Vec<f32>> {
        let m = &self.matrix;
        if x.len() != rows * m.d_in() {
            return Err(LegradError::Input(format!(
                "a share of a {}-input product got {} values for {rows} rows",
                m.d_in(),
                x.len()
            )));
        }
        let q = m.quantize(x, act);
        let width = self.width();
        if let [tiles] = &self.tiles[..] {
            let mut y = vec![0f32; rows * width];
            m.product_into(&q, tiles.clone(), &self.bias, &mut y);
            return Ok(y);
        }
        let pieces: Vec<Vec<f32>> = {
            let mut at = 0;
            self.tiles
                .iter()
                .map(|t| {
                    let cols = t.len() * TILE;
                    let mut y = vec![0f32; rows * cols];
                    m.product_into(&q, t.clone(), &self.bias[at..at + cols], &mut y);
                    at += cols;
                    y
                })
                .collect()
        };
        Ok(side_by_side(&pieces, rows))
    }

    /// A copy of the share's columns in a matrix of its own.
    fn detached(&self) -> (Vec<i16>, Vec<f32>) {
        self.matrix.columns(&self.tiles).into_parts()
    }
}

/// `pieces[k]` `[rows, c_k]` → `[rows, Σ c_k]`.
fn side_by_side(pieces: &[Vec<f32>], rows: usize) -> Vec<f32> {
    let widths: Vec<usize> = pieces.iter().map(|p| p.len() / rows.max(1)).collect();
    let mut out = Vec::with_capacity(widths.iter().sum::<usize>() * rows);
    for r in 0..rows {
        for (p, &c) in pieces.iter().zip(&widths) {
            out.extend_from_slice(&p[r * c..(r + 1) * c]);
        }
    }
    out
}

/// The sizes a [`SharePayload`] comes with.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareShape {
    pub heads: usize,
    pub head_dim: usize,
    pub activation: Activation,
    /// `(in, out)` of `in_proj`, `out_proj`, `c_fc`, `c_proj`'s shares.
    pub dims: [(usize, usize); 4],
}

/// A share on the host, to be sent to a helper: per product its packed weights, then per
/// product its scales and its bias.
pub struct SharePayload {
    pub shape: ShareShape,
    pub weights: Vec<Vec<i16>>,
    pub floats: Vec<Vec<f32>>,
}

/// Part `part` of `parts` of one block's integer products ([`share_range`] of its heads and of
/// each product's tiles).
#[derive(Debug)]
pub struct BlockShare {
    qkv: Cols,
    heads: usize,
    head_dim: usize,
    out_proj: Cols,
    fc: Cols,
    proj: Cols,
    activation: Activation,
}

impl BlockShare {
    /// `None` where the block is not on the integer grid or `parts` does not fit it (every
    /// share needs a head and a tile of each product).
    pub fn of(block: &Block, activation: Activation, part: usize, parts: usize) -> Option<Self> {
        let heads = block.attn.heads;
        let Dense::Integer(in_proj) = &block.attn.in_proj else { return None };
        let width = in_proj.matrix.d_in();
        let d = width / heads;
        if heads * d != width || !d.is_multiple_of(TILE) || in_proj.matrix.d_out() != 3 * width || parts > heads {
            return None;
        }
        let h = share_range(heads, parts, part);
        let (per_head, w_tiles) = (d / TILE, width / TILE);
        let qkv_tiles = (0..3).map(|k| k * w_tiles + h.start * per_head..k * w_tiles + h.end * per_head).collect();
        let tiles = |dense: &Dense| -> Option<Vec<Range<usize>>> {
            let Dense::Integer(l) = dense else { return None };
            let r = share_range(l.matrix.d_out() / TILE, parts, part);
            (!r.is_empty()).then(|| vec![r])
        };
        let share = Self {
            qkv: Cols::of(&block.attn.in_proj, qkv_tiles)?,
            heads: h.len(),
            head_dim: d,
            out_proj: Cols::of(&block.attn.out_proj, tiles(&block.attn.out_proj)?)?,
            fc: Cols::of(&block.mlp.c_fc, tiles(&block.mlp.c_fc)?)?,
            proj: Cols::of(&block.mlp.c_proj, tiles(&block.mlp.c_proj)?)?,
            activation,
        };
        (!h.is_empty()).then_some(share)
    }

    fn products(&self) -> [&Cols; 4] {
        [&self.qkv, &self.out_proj, &self.fc, &self.proj]
    }

    /// A copy of the share's columns, for a helper ([`from_payload`](Self::from_payload)).
    pub fn payload(&self) -> SharePayload {
        let mut weights = Vec::with_capacity(4);
        let mut floats = Vec::with_capacity(8);
        for c in self.products() {
            let (q, scale) = c.detached();
            weights.push(q);
            floats.push(scale);
        }
        floats.extend(self.products().map(|c| c.bias.clone()));
        let shape = ShareShape {
            heads: self.heads,
            head_dim: self.head_dim,
            activation: self.activation,
            dims: self.products().map(|c| (c.matrix.d_in(), c.width())),
        };
        SharePayload { shape, weights, floats }
    }

    /// The share a helper holds, from what [`payload`](Self::payload) wrote; parts that do not fit
    /// their shape are an error.
    pub fn from_payload(p: SharePayload, kernel: IntKernel) -> Result<Self> {
        let SharePayload { shape, weights, floats } = p;
        if weights.len() != 4 || floats.len() != 8 {
            return Err(LegradError::Input("a block's share came without its four products".into()));
        }
        let mut floats = floats.into_iter();
        let scales: Vec<Vec<f32>> = floats.by_ref().take(4).collect();
        let mut cols = Vec::with_capacity(4);
        for ((q, scale), ((d_in, d_out), bias)) in weights.into_iter().zip(scales).zip(shape.dims.iter().zip(floats)) {
            if bias.len() != *d_out {
                return Err(LegradError::Input(format!("a share's bias has {} values for {d_out} outputs", bias.len())));
            }
            let matrix = IntMatrix::from_parts(q, scale, *d_in, *d_out, kernel)?;
            cols.push(Cols { matrix: Arc::new(matrix), tiles: Vec::from([0..d_out / TILE]), bias });
        }
        let [qkv, out_proj, fc, proj]: [Cols; 4] = cols.try_into().map_err(|_| LegradError::Input("a share's products".into()))?;
        if shape.heads == 0 || qkv.width() != 3 * shape.heads * shape.head_dim || !attention::fits(shape.head_dim) {
            return Err(LegradError::Input(format!(
                "a share of {} heads of width {} came with {} attention columns",
                shape.heads,
                shape.head_dim,
                qkv.width()
            )));
        }
        Ok(Self { qkv, heads: shape.heads, head_dim: shape.head_dim, out_proj, fc, proj, activation: shape.activation })
    }

    /// This share's part of `job` on the input rows `x`.
    pub fn run(&self, job: &StageJob, x: &[f32]) -> Result<StageOut> {
        let rows = job.rows;
        Ok(match job.stage {
            Stage::Attention => {
                let qkv = self.qkv.product(x, rows, None)?;
                let (h, d) = (self.heads, self.head_dim);
                let out = attention::attention(&qkv, rows, h, d, self.qkv.matrix.kernel(), job.keep);
                let kept = job.keep.then(|| (out.probs, attention::values(&qkv, rows, h, d)));
                StageOut::Heads { context: out.context, kept }
            }
            Stage::OutProj => StageOut::Columns(self.out_proj.product(x, rows, None)?),
            Stage::Fc => StageOut::Columns(self.fc.product(x, rows, None)?),
            Stage::Proj => StageOut::Columns(self.proj.product(x, rows, Some(self.activation))?),
        })
    }
}

/// `job` on every share: the helpers' started first, then this thread's, then the helpers'
/// answers awaited; in share order.
async fn every_share(own: &BlockShare, helpers: &dyn ImageHelpers, job: StageJob, x: &[f32]) -> Result<Vec<StageOut>> {
    let pending: Vec<PendingStage> = (0..helpers.count()).map(|i| helpers.start(i, job, x)).collect();
    let mut outs = vec![own.run(&job, x)?];
    for p in pending {
        outs.push(p.await?);
    }
    Ok(outs)
}

/// Every share's columns of a linear layer, merged: `[rows, out]`.
async fn columns(own: &BlockShare, helpers: &dyn ImageHelpers, job: StageJob, x: &[f32]) -> Result<Vec<f32>> {
    let pieces = every_share(own, helpers, job, x)
        .await?
        .into_iter()
        .map(|o| match o {
            StageOut::Columns(c) => Ok(c),
            StageOut::Heads { .. } => Err(LegradError::Backend("a share answered a product with heads".into())),
        })
        .collect::<Result<Vec<_>>>()?;
    check_rows(&pieces, job.rows)?;
    Ok(side_by_side(&pieces, job.rows))
}

fn check_rows(pieces: &[Vec<f32>], rows: usize) -> Result<()> {
    match pieces.iter().find(|p| rows == 0 || !p.len().is_multiple_of(rows)) {
        Some(p) => Err(LegradError::Backend(format!("a share answered {} values for {rows} rows", p.len()))),
        None => Ok(()),
    }
}

/// What a block computed with its products shared: its output, and where kept, everything
/// an explainer reads ([`BlockOutput`]).
pub struct SharedBlock {
    pub output: Tensor<3>,
    pub kept: Option<BlockOutput>,
}

fn host(x: &Tensor<3>) -> Result<Vec<f32>> {
    host_f32(x).ok_or_else(|| LegradError::Backend("a shared image step runs on plain CPU tensors".into()))
}

/// Block `index` on `x` `[1, N, W]` with its products shared: the same values as
/// [`Block::forward`] (`keep`: [`Block::forward_traced`]).
pub async fn block_forward(
    block: &Block,
    index: usize,
    own: &BlockShare,
    helpers: &dyn ImageHelpers,
    x: Tensor<3>,
    keep: bool,
) -> Result<SharedBlock> {
    let [_, n, w] = x.dims();
    let device = x.device();
    let tensor = |v: Vec<f32>, c: usize| Tensor::<3>::from_data(TensorData::new(v, [1, n, c]), &device);
    let job = |stage| StageJob { block: index, stage, rows: n, keep };

    let a = host(&block.ln_1.forward(x.clone()))?;
    let heads = every_share(own, helpers, job(Stage::Attention), &a).await?;
    let (mut context, mut probs, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for h in heads {
        match h {
            StageOut::Heads { context: c, kept } => {
                context.push(c);
                if let Some((p, v)) = kept {
                    probs.extend(p);
                    values.extend(v);
                }
            }
            StageOut::Columns(_) => return Err(LegradError::Backend("a share answered attention with columns".into())),
        }
    }
    check_rows(&context, n)?;
    let context = side_by_side(&context, n);
    let attn_out = tensor(columns(own, helpers, job(Stage::OutProj), &context).await?, w);
    let u = x + attn_out.clone();
    let (n2, ln_2) = block.ln_2.forward_with_stats(u.clone());
    let h = columns(own, helpers, job(Stage::Fc), &host(&n2)?).await?;
    let m = h.len() / n;
    let proj = columns(own, helpers, job(Stage::Proj), &h).await?;
    let output = u.clone() + tensor(proj, w);
    let kept = if keep {
        let heads = block.attn.heads;
        let d = w / heads;
        if probs.len() != heads * n * n || values.len() != heads * n * d {
            return Err(LegradError::Backend("the shares did not answer every head's probabilities".into()));
        }
        let probs = Tensor::from_data(TensorData::new(probs, [1, heads, n, n]), &device);
        let values = Tensor::from_data(TensorData::new(values, [1, heads, n, d]), &device);
        Some(BlockOutput {
            output: output.clone(),
            attention: AttentionOutput { output: attn_out, probs, values },
            post_attn: u,
            ln_2,
            mlp_pre: tensor(h, m),
        })
    } else {
        None
    };
    Ok(SharedBlock { output, kept })
}
