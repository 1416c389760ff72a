//! The image step's integer products shared between this thread and helpers: other threads
//! that each hold a share of every vision block's weights (the browser's helper workers: a wasm
//! instance is one thread; natively rayon splits the rows instead).
//!
//! A block is split by heads and by hidden units, so that it costs two round trips: its input
//! rows go out, each share's partial sums come back.
//! - **Attention**: a share's heads' `q`, `k` and `v` columns of `in_proj`, their attention, and
//!   `out_proj` over those heads' inputs: a partial sum of `out_proj`'s outputs.
//! - **MLP**: a share's hidden units' columns of `c_fc`, the activation, and `c_proj` over those
//!   hidden units: a partial sum of `c_proj`'s outputs.
//!
//! The partial sums are added in share order, then the bias. Each share rounds its own part of
//! a row (`out_proj`'s and `c_proj`'s inputs) with its own scale, where one thread rounds the
//! whole row with one: the shared step differs from the unshared one by less than that
//! rounding (each share's scale is at most the row's; the tests bound the difference), and a
//! given number of shares always gives the same values. Why not columns of every product,
//! which would give the unshared values to the bit: that costs four round trips per block, and
//! in the browser a message between workers costs milliseconds when every core is busy
//! (docs/ARCHITECTURE.md, "The image step shared with the helpers").
//!
//! A helper keeps its share for the model's life (a copy of its rows and columns: `1/parts` of
//! the tower's weights each); this thread multiplies its own out of the model's matrices (no
//! copy).

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
use crate::model::{Block, BlockOutput, Dense, Keep, Probabilities, TracedAttention};

/// Share `i` of `n` units split into `parts` shares, as even as they come (share 0 is this
/// thread's).
pub fn share_range(n: usize, parts: usize, i: usize) -> Range<usize> {
    let per = n.div_ceil(parts.max(1));
    let start = (i * per).min(n);
    start..((i + 1) * per).min(n)
}

/// A block's two shared halves, in the order the block runs them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Stage {
    /// `in_proj`, the attention of the share's heads, `out_proj` over their inputs.
    Attention,
    /// `c_fc` for the share's hidden units, the activation, `c_proj` over them.
    Mlp,
}

/// What a share is asked for: `stage` of block `block` on `rows` input rows; `keep`: what an
/// explainer reads too (the attention's values and, for [`Keep::Everything`], probabilities;
/// the MLP's pre-activation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageJob {
    pub block: usize,
    pub stage: Stage,
    pub rows: usize,
    pub keep: Keep,
}

/// A share's answer to a [`StageJob`]: its partial sum `[rows, width]` of the stage's last
/// product (no bias), and where kept, what explainers read.
#[derive(Debug)]
pub enum StageOut {
    /// Kept: the share's heads' probabilities `[heads, rows, rows]` (empty unless
    /// [`Keep::Everything`]) and values `[heads, rows, d]`.
    Attention { partial: Vec<f32>, kept: Option<(Vec<f32>, Vec<f32>)> },
    /// Kept: the share's hidden units' pre-activation `[rows, hidden]`.
    Mlp { partial: Vec<f32>, kept: Option<Vec<f32>> },
}

type PendingStage = Pin<Box<dyn Future<Output = Result<StageOut>>>>;

/// Threads that hold a share of the vision tower ([`BlockShare`], share `i + 1` for helper `i`,
/// of `count() + 1`). `start` hands a job over at once and returns its answer to await.
pub trait ImageHelpers {
    /// Helpers holding their share of this model's tower (0: the image step runs here alone).
    fn count(&self) -> usize;
    /// Start helper `i` on `job` with its input rows `x`.
    fn start(&self, i: usize, job: StageJob, x: &[f32]) -> PendingStage;
    /// Awaited after the jobs are started, before this thread's own share: where a message
    /// leaves only when this thread yields (a browser's workers), one turn of its event loop.
    fn sent(&self) -> Pin<Box<dyn Future<Output = ()>>> {
        Box::pin(std::future::ready(()))
    }
}

/// One product's share of outputs: tiles `tiles` of `matrix`'s, and their bias.
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

    /// `[rows, width]`: the share's outputs for `x`, the ranges side by side.
    fn product(&self, x: &[f32], rows: usize) -> Result<Vec<f32>> {
        let m = &self.matrix;
        check_len(x, rows, m.d_in())?;
        let q = m.quantize(x, None);
        let mut at = 0;
        let pieces: Vec<Vec<f32>> = self
            .tiles
            .iter()
            .map(|t| {
                let cols = t.len() * TILE;
                let mut y = vec![0f32; rows * cols];
                m.product_into(&q, t.clone(), &self.bias[at..at + cols], &mut y);
                at += cols;
                y
            })
            .collect();
        Ok(if pieces.len() == 1 { pieces.into_iter().next().unwrap_or_default() } else { side_by_side(&pieces, rows) })
    }

    /// A copy of the share's columns in a matrix of its own.
    fn detached(&self) -> (Vec<i16>, Vec<f32>) {
        self.matrix.columns(&self.tiles).into_parts()
    }
}

/// One product's share of inputs: inputs `inputs` of `matrix`, every output (a partial sum).
#[derive(Debug)]
struct Inputs {
    matrix: Arc<IntMatrix>,
    inputs: Range<usize>,
}

impl Inputs {
    fn of(dense: &Dense, inputs: Range<usize>) -> Option<Self> {
        let Dense::Integer(l) = dense else { return None };
        Some(Self { matrix: l.matrix.clone(), inputs })
    }

    /// `[rows, out]`: `act(x) · W[:, inputs]ᵀ` for `x` `[rows, |inputs|]`, no bias.
    fn partial(&self, x: &[f32], rows: usize, act: Option<Activation>) -> Result<Vec<f32>> {
        let m = &self.matrix;
        check_len(x, rows, self.inputs.len())?;
        let q = m.quantize_inputs(x, self.inputs.clone(), act);
        let mut y = vec![0f32; rows * m.d_out()];
        m.product_into(&q, 0..m.d_out() / TILE, &vec![0f32; m.d_out()], &mut y);
        Ok(y)
    }

    fn detached(&self) -> (Vec<i16>, Vec<f32>) {
        self.matrix.inputs(self.inputs.clone()).into_parts()
    }
}

fn check_len(x: &[f32], rows: usize, width: usize) -> Result<()> {
    if x.len() != rows * width {
        return Err(LegradError::Input(format!(
            "a share of a {width}-input product got {} values for {rows} rows",
            x.len()
        )));
    }
    Ok(())
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
    /// `(in, out)` of the share's `in_proj` columns, `out_proj` inputs, `c_fc` columns and
    /// `c_proj` inputs.
    pub dims: [(usize, usize); 4],
}

/// A share on the host, to be sent to a helper: per product its packed weights, then per
/// product its scales, then `in_proj`'s and `c_fc`'s biases (of the share's columns).
pub struct SharePayload {
    pub shape: ShareShape,
    pub weights: Vec<Vec<i16>>,
    pub floats: Vec<Vec<f32>>,
}

/// Part `part` of `parts` of one block's integer products ([`share_range`] of its heads and of
/// its hidden units' tiles).
#[derive(Debug)]
pub struct BlockShare {
    qkv: Cols,
    heads: usize,
    head_dim: usize,
    out_proj: Inputs,
    fc: Cols,
    proj: Inputs,
    activation: Activation,
}

impl BlockShare {
    /// `None` where the block is not on the integer grid or `parts` does not fit it (every
    /// share needs a head and a tile of hidden units).
    pub fn of(block: &Block, activation: Activation, part: usize, parts: usize) -> Option<Self> {
        let heads = block.attn.heads;
        let (Dense::Integer(in_proj), Dense::Integer(fc)) = (&block.attn.in_proj, &block.mlp.c_fc) else { return None };
        let width = in_proj.matrix.d_in();
        let d = width / heads;
        let hidden = fc.matrix.d_out();
        if heads * d != width || !d.is_multiple_of(TILE) || in_proj.matrix.d_out() != 3 * width || parts > heads {
            return None;
        }
        let h = share_range(heads, parts, part);
        let u = share_range(hidden / TILE, parts, part);
        if h.is_empty() || u.is_empty() {
            return None;
        }
        let (per_head, w_tiles) = (d / TILE, width / TILE);
        let qkv_tiles = (0..3).map(|k| k * w_tiles + h.start * per_head..k * w_tiles + h.end * per_head).collect();
        Some(Self {
            qkv: Cols::of(&block.attn.in_proj, qkv_tiles)?,
            heads: h.len(),
            head_dim: d,
            out_proj: Inputs::of(&block.attn.out_proj, h.start * d..h.end * d)?,
            fc: Cols::of(&block.mlp.c_fc, vec![u.clone()])?,
            proj: Inputs::of(&block.mlp.c_proj, u.start * TILE..u.end * TILE)?,
            activation,
        })
    }

    /// A copy of the share's rows and columns, for a helper ([`from_payload`](Self::from_payload)).
    pub fn payload(&self) -> SharePayload {
        let parts = [self.qkv.detached(), self.out_proj.detached(), self.fc.detached(), self.proj.detached()];
        let dims = [
            (self.qkv.matrix.d_in(), self.qkv.width()),
            (self.out_proj.inputs.len(), self.out_proj.matrix.d_out()),
            (self.fc.matrix.d_in(), self.fc.width()),
            (self.proj.inputs.len(), self.proj.matrix.d_out()),
        ];
        let (weights, mut floats): (Vec<Vec<i16>>, Vec<Vec<f32>>) = parts.into_iter().unzip();
        floats.push(self.qkv.bias.clone());
        floats.push(self.fc.bias.clone());
        let shape = ShareShape { heads: self.heads, head_dim: self.head_dim, activation: self.activation, dims };
        SharePayload { shape, weights, floats }
    }

    /// The share a helper holds, from what [`payload`](Self::payload) wrote; parts that do not
    /// fit their shape are an error.
    pub fn from_payload(p: SharePayload, kernel: IntKernel) -> Result<Self> {
        let SharePayload { shape, weights, floats } = p;
        let bad = |what: String| LegradError::Input(format!("a block's share: {what}"));
        if weights.len() != 4 || floats.len() != 6 {
            return Err(bad(format!("{} weights and {} float arrays, expected 4 and 6", weights.len(), floats.len())));
        }
        let mut floats = floats.into_iter();
        let mut matrices = Vec::with_capacity(4);
        for (q, &(d_in, d_out)) in weights.into_iter().zip(&shape.dims) {
            let scale = floats.next().unwrap_or_default();
            matrices.push(Arc::new(IntMatrix::from_parts(q, scale, d_in, d_out, kernel)?));
        }
        let (qkv_bias, fc_bias) = (floats.next().unwrap_or_default(), floats.next().unwrap_or_default());
        let [qkv, out_proj, fc, proj]: [Arc<IntMatrix>; 4] =
            matrices.try_into().map_err(|_| bad("four products expected".into()))?;
        let (h, d) = (shape.heads, shape.head_dim);
        let fits = h > 0
            && attention::fits(d)
            && qkv.d_out() == 3 * h * d
            && qkv_bias.len() == qkv.d_out()
            && out_proj.d_in() == h * d
            && out_proj.d_out() == qkv.d_in()
            && fc.d_in() == qkv.d_in()
            && fc_bias.len() == fc.d_out()
            && proj.d_in() == fc.d_out()
            && proj.d_out() == qkv.d_in();
        if !fits {
            return Err(bad(format!("its products' sizes {:?} do not fit {h} heads of width {d}", shape.dims)));
        }
        let whole = |m: &Arc<IntMatrix>| std::iter::once(0..m.d_out() / TILE).collect::<Vec<_>>();
        let all = |m: &Arc<IntMatrix>| 0..m.d_in();
        Ok(Self {
            qkv: Cols { tiles: whole(&qkv), matrix: qkv, bias: qkv_bias },
            heads: h,
            head_dim: d,
            out_proj: Inputs { inputs: all(&out_proj), matrix: out_proj },
            fc: Cols { tiles: whole(&fc), matrix: fc, bias: fc_bias },
            proj: Inputs { inputs: all(&proj), matrix: proj },
            activation: shape.activation,
        })
    }

    /// This share's part of `job` on the input rows `x`.
    pub fn run(&self, job: &StageJob, x: &[f32]) -> Result<StageOut> {
        let rows = job.rows;
        Ok(match job.stage {
            Stage::Attention => {
                let qkv = self.qkv.product(x, rows)?;
                let (h, d) = (self.heads, self.head_dim);
                let probs = job.keep == Keep::Everything;
                let out = attention::attention(&qkv, rows, h, d, self.qkv.matrix.kernel(), probs);
                let partial = self.out_proj.partial(&out.context, rows, None)?;
                let kept = (job.keep != Keep::Output).then(|| (out.probs, attention::values(&qkv, rows, h, d)));
                StageOut::Attention { partial, kept }
            }
            Stage::Mlp => {
                let pre = self.fc.product(x, rows)?;
                let partial = self.proj.partial(&pre, rows, Some(self.activation))?;
                StageOut::Mlp { partial, kept: (job.keep != Keep::Output).then_some(pre) }
            }
        })
    }
}

/// `job` on every share: the helpers' started first, then this thread's, then the helpers'
/// answers awaited; in share order.
async fn every_share(own: &BlockShare, helpers: &dyn ImageHelpers, job: StageJob, x: &[f32]) -> Result<Vec<StageOut>> {
    let pending: Vec<PendingStage> = (0..helpers.count()).map(|i| helpers.start(i, job, x)).collect();
    if !pending.is_empty() {
        helpers.sent().await;
    }
    let mut outs = vec![own.run(&job, x)?];
    for p in pending {
        outs.push(p.await?);
    }
    Ok(outs)
}

/// The partial sums added in share order, then `bias`: `[rows, out]`.
fn total(partials: &[&[f32]], bias: &[f32]) -> Result<Vec<f32>> {
    let Some((first, rest)) = partials.split_first() else { return Ok(Vec::new()) };
    let mut sum = first.to_vec();
    for p in rest {
        if p.len() != sum.len() {
            return Err(LegradError::Backend(format!("a share answered {} values, expected {}", p.len(), sum.len())));
        }
        sum.iter_mut().zip(p.iter()).for_each(|(s, v)| *s += v);
    }
    if bias.is_empty() || !sum.len().is_multiple_of(bias.len()) {
        return Err(LegradError::Backend("a shared product's bias does not fit its outputs".into()));
    }
    sum.chunks_exact_mut(bias.len()).for_each(|row| row.iter_mut().zip(bias).for_each(|(s, b)| *s += b));
    Ok(sum)
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

fn bias_of(dense: &Dense) -> Result<Vec<f32>> {
    dense
        .bias()
        .and_then(|b| b.into_data().try_into_vec::<f32>().ok())
        .ok_or_else(|| LegradError::Backend("a shared product without its bias".into()))
}

/// Block `index` on `x` `[1, N, W]` with its products shared: [`Block::forward`]'s values
/// (`keep`: [`Block::forward_traced`]'s) up to the shares' rounding (see the module's
/// documentation).
pub async fn block_forward(
    block: &Block,
    index: usize,
    own: &BlockShare,
    helpers: &dyn ImageHelpers,
    x: Tensor<3>,
    keep: Keep,
) -> Result<SharedBlock> {
    let [_, n, w] = x.dims();
    let device = x.device();
    let tensor = |v: Vec<f32>, c: usize| Tensor::<3>::from_data(TensorData::new(v, [1, n, c]), &device);
    let job = |stage| StageJob { block: index, stage, rows: n, keep };
    let wrong = || LegradError::Backend("a share answered another stage".into());

    let a = host(&block.ln_1.forward(x.clone()))?;
    let (mut partials, mut probs, mut values) = (Vec::new(), Vec::new(), Vec::new());
    for out in every_share(own, helpers, job(Stage::Attention), &a).await? {
        let StageOut::Attention { partial, kept } = out else { return Err(wrong()) };
        partials.push(partial);
        if let Some((p, v)) = kept {
            probs.extend(p);
            values.extend(v);
        }
    }
    let parts: Vec<&[f32]> = partials.iter().map(|p| &p[..]).collect();
    let attn_out = tensor(total(&parts, &bias_of(&block.attn.out_proj)?)?, w);
    let u = x + attn_out.clone();
    let (n2, ln_2) = block.ln_2.forward_with_stats(u.clone());
    let (mut partials, mut pre) = (Vec::new(), Vec::new());
    for out in every_share(own, helpers, job(Stage::Mlp), &host(&n2)?).await? {
        let StageOut::Mlp { partial, kept } = out else { return Err(wrong()) };
        partials.push(partial);
        pre.extend(kept);
    }
    let parts: Vec<&[f32]> = partials.iter().map(|p| &p[..]).collect();
    let output = u.clone() + tensor(total(&parts, &bias_of(&block.mlp.c_proj)?)?, w);
    let kept = if keep != Keep::Output {
        let heads = block.attn.heads;
        let d = w / heads;
        let asked = if keep == Keep::Everything { heads * n * n } else { 0 };
        if probs.len() != asked || values.len() != heads * n * d || pre.iter().any(|p| !p.len().is_multiple_of(n)) {
            return Err(LegradError::Backend("the shares did not answer every head and hidden unit".into()));
        }
        let pre = side_by_side(&pre, n);
        let hidden = pre.len() / n;
        Some(BlockOutput {
            output: output.clone(),
            attention: TracedAttention {
                output: attn_out,
                probs: match keep {
                    Keep::Everything => {
                        Probabilities::Kept(Tensor::from_data(TensorData::new(probs, [1, heads, n, n]), &device))
                    }
                    _ => Probabilities::NotKept,
                },
                values: Tensor::from_data(TensorData::new(values, [1, heads, n, d]), &device),
            },
            post_attn: u,
            ln_2,
            mlp_pre: tensor(pre, hidden),
        })
    } else {
        None
    };
    Ok(SharedBlock { output, kept })
}
