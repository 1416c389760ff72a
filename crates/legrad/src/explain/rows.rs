//! LeGrad's per-prompt closed form on the CPU, split by query rows between this thread and
//! helpers: other threads, each with its own copy of its rows' terms (the browser's helper
//! workers: a wasm instance is one thread, and the machine's other cores are otherwise idle
//! while a prompt is explained).
//!
//! A layer's `dc` rows are independent of each other (each query row has its own LayerNorm
//! statistics and mean terms) and every row sees all the keys, so a share of the rows gives a
//! share of `Σ_h Σ_i relu(dA_h)[:, i, :]` ([`super::legrad::relevance_sums`]); the shares add up
//! to the layer's sums. What a helper holds per trace (its rows of `act'`, `x̂ W_outᵀ`, `1/σ`,
//! and the layer's `1ᵀ W_outᵀ` and values) travels once per image as [`HostTensor`]s; a
//! layer's `K`, which only the model decides, once per model ([`HostK`]: 9 MB a layer of a
//! ViT-B/16, on the integer grid); per prompt only `[a | g W_outᵀ]` and its rows' mean terms
//! do (a few kB).

use std::future::Future;
use std::ops::Range;
use std::pin::Pin;

use burn::tensor::{Device, Tensor, TensorData};

use super::Context;
use super::GridMaps;
use super::legrad::{LayerTerms, held_terms_for, layer_terms_for, relevance_sums, stack};
use super::legrad_trace::{ClassTokenTrace, LegradTrace};
use super::terms::{FoldedK, finish_sums};
use super::trace::ImageTrace;
use crate::compute::ComputePolicy;
use crate::error::{LegradError, Result};
use crate::model::int_linear::{IntKernel, IntMatrix};
use crate::readback::read_f32;

/// A tensor's values on the host, row-major, with its shape: what crosses to a helper.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub dims: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    pub async fn read<const D: usize>(t: Tensor<D>) -> Result<Self> {
        let dims = t.dims().to_vec();
        Ok(Self { dims, data: read_f32(t).await? })
    }

    /// Back to a tensor of rank `D` on `device` (its values moved, not copied: a helper's rows
    /// of a ViT-B/16 are tens of MB); a shape that does not fit is an error.
    pub fn into_tensor<const D: usize>(self, device: &Device) -> Result<Tensor<D>> {
        let n: usize = self.dims.iter().product();
        let dims: [usize; D] = self.dims.clone().try_into().map_err(|_| {
            LegradError::Input(format!("a helper's tensor has shape {:?}, expected rank {D}", self.dims))
        })?;
        if n != self.data.len() {
            return Err(LegradError::Input(format!(
                "a helper's tensor of shape {:?} came with {} values",
                self.dims,
                self.data.len()
            )));
        }
        Ok(Tensor::from_data(TensorData::new(self.data, dims), device))
    }
}

/// A layer's `K` on the host, as the model holds it ([`FoldedK`]): what a helper keeps for the
/// model's life.
#[derive(Clone, Debug, PartialEq)]
pub enum HostK {
    Tensor(HostTensor),
    /// The integer grid's packed weights and scales of a `[m, w]` matrix.
    Grid {
        q: Vec<i16>,
        scale: Vec<f32>,
        m: usize,
        w: usize,
    },
}

impl HostK {
    pub async fn of(k: &FoldedK) -> Result<Self> {
        Ok(match k {
            FoldedK::Tensor(t) => HostK::Tensor(HostTensor::read(t.clone()).await?),
            FoldedK::Grid(g) => {
                let (q, scale) = g.parts();
                HostK::Grid { q: q.to_vec(), scale: scale.to_vec(), m: g.d_in(), w: g.d_out() }
            }
        })
    }

    /// Back to `K` on `device`, a grid multiplied by `kernel`; parts that do not fit are an error.
    pub fn into_folded(self, device: &Device, kernel: IntKernel) -> Result<FoldedK> {
        Ok(match self {
            HostK::Tensor(t) => FoldedK::Tensor(t.into_tensor(device)?),
            HostK::Grid { q, scale, m, w } => {
                FoldedK::Grid(std::sync::Arc::new(IntMatrix::from_parts(q, scale, m, w, kernel)?))
            }
        })
    }
}

type Pending = Pin<Box<dyn Future<Output = Result<Vec<f32>>>>>;

/// Threads that take a share of the rows. The engine gives a helper each layer's `K` once per
/// model ([`hold_k`](Self::hold_k)), and calls [`hold`](Self::hold) once per trace and first
/// layer (`key`: from [`ImageTrace::id`] and the layer) before the first
/// [`start`](Self::start) on it; `start` hands the job over at once and returns its answer to
/// await: the helper's `[L, P, N]` sums ([`HeldRows::sums`]).
pub trait RowHelpers {
    /// Helpers ready to take work (0: all rows here).
    fn count(&self) -> usize;
    /// Does helper `i` hold its rows of trace `key`?
    fn holds(&self, i: usize, key: u64) -> bool;
    /// Does helper `i` hold layer `layer`'s `K` of this model?
    fn holds_k(&self, i: usize, layer: usize) -> bool;
    /// Give helper `i` layer `layer`'s `K`, kept until the model goes.
    fn hold_k(&self, i: usize, layer: usize, k: HostK);
    /// Give helper `i` its rows of trace `key` for `layers` ([`row_share`]; it holds their `K`).
    fn hold(&self, i: usize, key: u64, layers: &[usize], share: Vec<HostTensor>);
    /// Start helper `i` on a prompt batch ([`prompt_share`]).
    fn start(&self, i: usize, key: u64, prompts: Vec<HostTensor>) -> Pending;
}

/// The rows of share `i` of `n` rows in `parts` shares (the first share is this thread's).
pub fn share_rows(n: usize, parts: usize, i: usize) -> Range<usize> {
    crate::model::int_linear::share::share_range(n, parts, i)
}

/// What a helper holds for rows `rows` of every layer (with the layer's `K`, held apart): per
/// layer `act'`, `1ᵀ W_outᵀ`, `x̂ W_outᵀ`, `1/σ`, the values.
pub async fn row_share(terms: &[LayerTerms], rows: Range<usize>) -> Result<Vec<HostTensor>> {
    let mut out = Vec::with_capacity(5 * terms.len());
    for t in terms {
        let r = t.rows(rows.start, rows.len());
        out.push(HostTensor::read(r.act_grad).await?);
        out.push(HostTensor::read(r.ones_out).await?);
        out.push(HostTensor::read(r.xhat_out).await?);
        out.push(HostTensor::read(r.rstd).await?);
        out.push(HostTensor::read(r.values).await?);
    }
    Ok(out)
}

/// A prompt batch's terms for rows `rows` of every layer: per layer `[a | g W_outᵀ]` and the
/// rows' mean terms.
pub async fn prompt_share(terms: &[LayerTerms], rows: Range<usize>) -> Result<Vec<HostTensor>> {
    let mut out = Vec::with_capacity(2 * terms.len());
    for t in terms {
        let r = t.rows(rows.start, rows.len());
        out.push(HostTensor::read(r.ag).await?);
        out.push(HostTensor::read(r.m).await?);
    }
    Ok(out)
}

/// A helper's side: its rows of one trace, as tensors on its device (each layer's terms but
/// for the per-prompt `ag` and `m`, which [`sums`](Self::sums) brings).
pub struct HeldRows {
    layers: Vec<LayerTerms>,
    /// The helper's own policy (its device's: the CPU on the same platform as the engine's).
    policy: ComputePolicy,
}

impl HeldRows {
    /// From [`row_share`]'s tensors and each layer's `K` ([`HostK::into_folded`]), on
    /// `device`, computed as `policy` says.
    pub fn new(share: Vec<HostTensor>, ks: Vec<FoldedK>, device: &Device, policy: ComputePolicy) -> Result<Self> {
        if share.is_empty() || share.len() != 5 * ks.len() {
            return Err(LegradError::Input(format!(
                "a helper's rows came as {} tensors for {} layers, not 5 per layer",
                share.len(),
                ks.len()
            )));
        }
        let mut share = share.into_iter();
        let mut ks = ks.into_iter();
        let mut layers = Vec::new();
        while let (Some(act_grad), Some(k), Some(ones_out), Some(xhat_out), Some(rstd), Some(values)) =
            (share.next(), ks.next(), share.next(), share.next(), share.next(), share.next())
        {
            let t = LayerTerms {
                act_grad: act_grad.into_tensor(device)?,
                ag: Tensor::zeros([0, 0], device),
                k,
                m: Tensor::zeros([0, 0], device),
                ones_out: ones_out.into_tensor(device)?,
                xhat_out: xhat_out.into_tensor(device)?,
                rstd: rstd.into_tensor(device)?,
                values: values.into_tensor(device)?,
            };
            let ([rows, m], [km, w]) = (t.act_grad.dims(), t.k.dims());
            let fits = km == m
                && t.ones_out.dims() == [w]
                && t.xhat_out.dims() == [rows, w]
                && t.rstd.dims() == [rows]
                && t.values.dims()[0] * t.values.dims()[2] == w;
            if !fits {
                return Err(LegradError::Input("a helper's rows do not fit together".into()));
            }
            layers.push(t);
        }
        Ok(Self { layers, policy })
    }

    /// The sums `[L, P, N]` of these rows for a prompt batch ([`prompt_share`]'s tensors).
    pub fn sums(&self, prompts: &[HostTensor], device: &Device) -> Result<Tensor<3>> {
        if prompts.len() != 2 * self.layers.len() {
            return Err(LegradError::Input(format!(
                "a helper holding {} layers got {} prompt tensors",
                self.layers.len(),
                prompts.len()
            )));
        }
        let mut sums = Vec::with_capacity(self.layers.len());
        for (held, p) in self.layers.iter().zip(prompts.chunks_exact(2)) {
            let (ag, m): (Tensor<2>, Tensor<2>) =
                (p[0].clone().into_tensor(device)?, p[1].clone().into_tensor(device)?);
            let ([rows, mw], [w]) = (held.act_grad.dims(), held.ones_out.dims());
            let pp = ag.dims()[0];
            if ag.dims() != [pp, mw + w] || m.dims() != [pp, 2 * rows] {
                return Err(LegradError::Input("a helper's prompt terms do not fit the rows it holds".into()));
            }
            let terms = LayerTerms { ag, m, ..held.clone() };
            sums.push(relevance_sums(&terms, &self.policy));
        }
        Ok(Tensor::stack(sums, 0))
    }
}

/// How many shares the rows of `trace` split into with `helpers` (every share has rows: a grid
/// of one patch has two tokens).
fn shares(trace: &ImageTrace, helpers: &dyn RowHelpers) -> usize {
    let (n, parts) = (trace.tokens(), 1 + helpers.count());
    parts.min(n.div_ceil(share_rows(n, parts, 0).len().max(1)))
}

/// What a helper's rows are named by: the trace and the first layer used (a trace made for
/// `layer_index` 0 also serves -2, with fewer layers).
fn hold_key(trace: &ImageTrace, layers: &[usize]) -> u64 {
    (trace.id << 8) | layers.first().map(|&l| l as u64 & 0xff).unwrap_or(0)
}

/// Give each helper that does not hold them yet its rows of `trace` for `layers`; the number of
/// shares.
async fn hold_rows(
    terms: &[LayerTerms],
    trace: &ImageTrace,
    layers: &[usize],
    helpers: &dyn RowHelpers,
) -> Result<usize> {
    let parts = shares(trace, helpers);
    let key = hold_key(trace, layers);
    for i in 1..parts {
        for (t, &layer) in terms.iter().zip(layers) {
            if !helpers.holds_k(i - 1, layer) {
                helpers.hold_k(i - 1, layer, HostK::of(&t.k).await?);
            }
        }
        if !helpers.holds(i - 1, key) {
            helpers.hold(i - 1, key, layers, row_share(terms, share_rows(trace.tokens(), parts, i)).await?);
        }
    }
    Ok(parts)
}

/// CLIP's LeGrad terms of `trace`: the rows split only there.
fn clip_trace(trace: &ImageTrace) -> Result<&ClassTokenTrace> {
    match trace.legrad()? {
        LegradTrace::ClassToken(t) => Ok(t),
        LegradTrace::AttentionPool(_) => {
            Err(LegradError::Unsupported("the per-prompt rows split for CLIP's LeGrad; this is a SigLIP model".into()))
        }
    }
}

/// Hand the helpers their rows of a new trace now (with the image, where the user waits
/// anyway) rather than with its first prompt: the rows do not depend on the prompt. Made
/// without the score's Jacobians, so that a helper takes its rows while this thread makes them
/// (`Engine::prime_helpers` comes first).
pub async fn prime(cx: &Context<'_>, trace: &ImageTrace, layer_index: i64, helpers: &dyn RowHelpers) -> Result<()> {
    let (layers, terms) = held_terms_for(cx, clip_trace(trace)?, layer_index)?;
    hold_rows(&terms, trace, &layers, helpers).await.map(|_| ())
}

/// CLIP's LeGrad ([`super::legrad::LeGrad`]) with the query rows split between this thread
/// and `helpers`: the same maps, up to summation order. A helper that fails has its rows
/// computed here instead.
pub async fn explain_split(
    cx: &Context<'_>,
    trace: &ImageTrace,
    texts: Tensor<2>,
    layer_index: i64,
    helpers: &dyn RowHelpers,
) -> Result<GridMaps> {
    let policy = cx.policy;
    let (layers, terms) = layer_terms_for(cx, clip_trace(trace)?, trace.tokens(), texts, layer_index)?;
    let n = trace.tokens();
    let heads = terms.first().map(|t| t.values.dims()[0]).unwrap_or(1);
    let parts = hold_rows(&terms, trace, &layers, helpers).await?;
    let key = hold_key(trace, &layers);
    let mut pending = Vec::with_capacity(parts - 1);
    for i in 1..parts {
        let rows = share_rows(n, parts, i);
        pending.push((rows.clone(), helpers.start(i - 1, key, prompt_share(&terms, rows).await?)));
    }
    let here = share_rows(n, parts, 0);
    let mut sums: Vec<Tensor<2>> =
        terms.iter().map(|t| relevance_sums(&t.rows(here.start, here.len()), policy)).collect();
    let device = cx.model.vision.device();
    let [l, p] = [terms.len(), terms.first().map(|t| t.ag.dims()[0]).unwrap_or(0)];
    for (rows, job) in pending {
        let share: Tensor<3> = match job.await {
            Ok(v) if v.len() == l * p * n => Tensor::from_data(TensorData::new(v, [l, p, n]), &device),
            _ => Tensor::stack(
                terms.iter().map(|t| relevance_sums(&t.rows(rows.start, rows.len()), policy)).collect(),
                0,
            ),
        };
        for (k, s) in sums.iter_mut().enumerate() {
            *s = s.clone() + share.clone().narrow(0, k, 1).squeeze_dim(0);
        }
    }
    Ok(stack(layers, sums.into_iter().map(|s| finish_sums(s, heads, n)).collect()))
}

/// In-thread helpers for tests: the same [`HeldRows`] code a helper worker runs, called at once,
/// on `device`.
#[cfg(any(test, feature = "test-support"))]
pub struct LocalHelpers {
    pub helpers: usize,
    device: Device,
    /// How the helpers compute (the device's policy unless a test forces a path).
    pub policy: ComputePolicy,
    held: std::cell::RefCell<Vec<Option<(u64, HeldRows)>>>,
    /// Each helper's `K` by layer.
    held_k: std::cell::RefCell<Vec<std::collections::BTreeMap<usize, FoldedK>>>,
    /// Answer every job with an error (the engine then computes those rows itself).
    pub fail: bool,
    /// Jobs answered with sums.
    pub answered: std::cell::Cell<usize>,
}

#[cfg(any(test, feature = "test-support"))]
impl LocalHelpers {
    pub fn new(helpers: usize, device: &Device) -> Self {
        let held = std::cell::RefCell::new((0..helpers).map(|_| None).collect());
        let policy = ComputePolicy::for_device(device);
        let held_k = std::cell::RefCell::new(vec![Default::default(); helpers]);
        Self { helpers, device: device.clone(), policy, held, held_k, fail: false, answered: Default::default() }
    }
}

#[cfg(any(test, feature = "test-support"))]
impl RowHelpers for LocalHelpers {
    fn count(&self) -> usize {
        self.helpers
    }
    fn holds(&self, i: usize, key: u64) -> bool {
        self.held.borrow()[i].as_ref().is_some_and(|(k, _)| *k == key)
    }
    fn holds_k(&self, i: usize, layer: usize) -> bool {
        self.held_k.borrow()[i].contains_key(&layer)
    }
    fn hold_k(&self, i: usize, layer: usize, k: HostK) {
        if let Ok(k) = k.into_folded(&self.device, self.policy.int_kernel) {
            self.held_k.borrow_mut()[i].insert(layer, k);
        }
    }
    fn hold(&self, i: usize, key: u64, layers: &[usize], share: Vec<HostTensor>) {
        let ks: Option<Vec<FoldedK>> = layers.iter().map(|l| self.held_k.borrow()[i].get(l).cloned()).collect();
        let held = ks.and_then(|ks| HeldRows::new(share, ks, &self.device, self.policy).ok()).map(|h| (key, h));
        self.held.borrow_mut()[i] = held;
    }
    fn start(&self, i: usize, key: u64, prompts: Vec<HostTensor>) -> Pending {
        let device = &self.device;
        let answer = match &self.held.borrow()[i] {
            _ if self.fail => Err(LegradError::Backend("this helper fails, as asked".into())),
            Some((k, held)) if *k == key => held.sums(&prompts, device).and_then(|t| {
                let n: usize = t.dims().iter().product();
                let data = t.reshape([n]).into_data().convert::<f32>();
                data.try_into_vec::<f32>().map_err(|e| LegradError::Backend(format!("{e:?}")))
            }),
            _ => Err(LegradError::Input("this helper does not hold that trace".into())),
        };
        if answer.is_ok() {
            self.answered.set(self.answered.get() + 1);
        }
        Box::pin(std::future::ready(answer))
    }
}
