//! The engine's helper workers: on the CPU, a wasm instance is one thread, so the engine starts
//! helpers (the same module in more Web Workers, `worker.js` named [`HELPER_NAME`]) and shares
//! two things with them:
//! - the image step: a helper holds its share of a large vision tower's integer products
//!   (sent once per model, [`legrad::model::int_linear::share`]) and answers each block's two
//!   halves (attention, MLP) on the rows the engine sends;
//! - LeGrad's per-prompt rows ([`legrad::explain::rows`]): a helper holds each layer's `K`
//!   (sent once per model) and its rows of the current trace (sent once per image), and answers
//!   each prompt batch with its sums.
//!
//! A helper that fails (an error in it, a message it cannot read) is answered for by the engine
//! itself: its job resolves with an error and the engine computes that work; after a worker
//! error no helper is used again in this visit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::Device;
use legrad::explain::rows::{HeldRows, HostK, HostTensor, RowHelpers};
use legrad::explain::terms::FoldedK;
use legrad::model::int_linear::share::{BlockShare, ImageHelpers, SharePayload, ShareShape, Stage, StageJob, StageOut};
use legrad::model::{Keep, VisionTower};
use legrad::{LegradError, Result};
use serde::{Deserialize, Serialize};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::DedicatedWorkerGlobalScope;

use crate::protocol::{Envelope, buffer_to_f32, f32_to_buffer};

/// The name a helper worker is started with; the module's start function reads it.
pub const HELPER_NAME: &str = "legrad-helper";

/// Between the engine and its helpers (not the UI's protocol: the UI never sees these).
#[derive(Serialize, Deserialize)]
enum Message {
    /// Hold these rows of trace `key` for `layers` (one buffer per tensor, these shapes).
    Hold {
        key: u64,
        layers: Vec<usize>,
        dims: Vec<Vec<usize>>,
    },
    /// Hold layer `layer`'s `K` `[m, w]` until [`Message::Release`]: on the integer grid (two
    /// buffers: packed weights, scales) or as one f32 buffer.
    HoldK {
        layer: usize,
        m: usize,
        w: usize,
        grid: bool,
    },
    /// Sums for a prompt batch on trace `key`.
    Run {
        key: u64,
        job: u64,
        dims: Vec<Vec<usize>>,
    },
    /// A job's sums (one buffer).
    Sums {
        job: u64,
    },
    /// Drop the share of a vision tower and the layers' `K` held (a new model is coming).
    Release,
    /// Hold block `block`'s share of tower `key`: four buffers of packed weights (i16), then
    /// the four products' scales and `in_proj`'s and `c_fc`'s biases (f32): a [`SharePayload`].
    HoldBlock {
        key: u64,
        block: usize,
        shape: ShareShape,
    },
    /// This helper's share of an image-step job on tower `key` (one buffer: the input rows).
    Stage {
        key: u64,
        job: u64,
        stage: StageJob,
    },
    /// An image-step job's answer: the partial sum, then what was kept (the heads'
    /// probabilities and values, or the hidden units' pre-activation).
    Answer {
        job: u64,
    },
    Failed {
        job: u64,
        message: String,
    },
}

fn to_message(tensors: Vec<HostTensor>) -> (Vec<Vec<usize>>, Vec<js_sys::ArrayBuffer>) {
    tensors.into_iter().map(|t| (t.dims, f32_to_buffer(&t.data))).unzip()
}

fn from_message(dims: Vec<Vec<usize>>, buffers: &[js_sys::ArrayBuffer]) -> Result<Vec<HostTensor>> {
    if dims.len() != buffers.len() {
        return Err(LegradError::Input(format!("{} shapes came with {} buffers", dims.len(), buffers.len())));
    }
    Ok(dims.into_iter().zip(buffers).map(|(dims, b)| HostTensor { dims, data: buffer_to_f32(b) }).collect())
}

fn post_to(target: &JsValue, message: &Message, buffers: Vec<js_sys::ArrayBuffer>) {
    let (msg, transfer) = Envelope::new(message, buffers).to_js();
    let post =
        js_sys::Reflect::get(target, &"postMessage".into()).ok().and_then(|f| f.dyn_into::<js_sys::Function>().ok());
    if let Some(post) = post {
        let _ = post.call2(target, &msg, &transfer);
    }
}

#[derive(Default)]
struct Jobs {
    next: u64,
    /// Each waiting job's `resolve`.
    waiting: HashMap<u64, js_sys::Function>,
    /// A helper raised an error: none is used again.
    dead: bool,
}

impl Jobs {
    fn fail_all(&mut self, why: &str) {
        self.dead = true;
        for (_, resolve) in self.waiting.drain() {
            let _ = resolve.call1(&JsValue::NULL, &JsValue::from_str(why));
        }
    }
}

/// The engine's side: the helper workers, and the jobs they have not answered yet.
pub struct Helpers {
    workers: Vec<web_sys::Worker>,
    held: Vec<Cell<Option<u64>>>,
    /// The layers whose `K` each helper holds (until the model goes).
    held_k: Vec<RefCell<Vec<usize>>>,
    /// The vision tower whose shares every helper holds (none: the image step runs here).
    tower: Cell<Option<u64>>,
    towers: Cell<u64>,
    jobs: Rc<RefCell<Jobs>>,
}

impl Helpers {
    /// Start `count` helper workers (`worker.js` next to the engine's own script).
    pub fn start(count: usize) -> Option<Self> {
        let jobs = Rc::new(RefCell::new(Jobs::default()));
        let mut workers = Vec::new();
        for _ in 0..count {
            let options = web_sys::WorkerOptions::new();
            options.set_type(web_sys::WorkerType::Module);
            options.set_name(HELPER_NAME);
            let Ok(worker) = web_sys::Worker::new_with_options("./worker.js", &options) else { break };
            let j = jobs.clone();
            let onmessage = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
                let Ok(envelope) = Envelope::from_js(&ev.data()) else { return };
                let (job, answer) = match envelope.decode::<Message>() {
                    Ok(Message::Sums { job } | Message::Answer { job }) => {
                        (job, JsValue::from(envelope.buffers.iter().collect::<js_sys::Array>()))
                    }
                    Ok(Message::Failed { job, message }) => (job, JsValue::from_str(&message)),
                    _ => return,
                };
                if let Some(resolve) = j.borrow_mut().waiting.remove(&job) {
                    let _ = resolve.call1(&JsValue::NULL, &answer);
                }
            });
            worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
            onmessage.forget();
            let j = jobs.clone();
            let onerror = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
                let what = ev.dyn_ref::<web_sys::ErrorEvent>().map(|e| e.message()).unwrap_or_default();
                j.borrow_mut().fail_all(&format!("a helper worker failed: {what}"));
            });
            worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
            onerror.forget();
            workers.push(worker);
        }
        if workers.is_empty() {
            return None;
        }
        let held = workers.iter().map(|_| Cell::new(None)).collect();
        let held_k = workers.iter().map(|_| RefCell::new(Vec::new())).collect();
        Some(Self { workers, held, held_k, tower: Cell::new(None), towers: Cell::new(0), jobs })
    }

    /// The helpers drop the tower's shares and the layers' `K` they hold (the model is going).
    pub fn release_tower(&self) {
        self.tower.set(None);
        for k in &self.held_k {
            k.borrow_mut().clear();
        }
        for w in &self.workers {
            post_to(w, &Message::Release, vec![]);
        }
    }

    /// The threads `tower`'s image step would run on, shared ([`share_tower`](Self::share_tower)).
    pub fn can_share(&self, tower: &VisionTower) -> usize {
        let parts = self.workers.len() + 1;
        if self.jobs.borrow().dead || tower.shares(1, parts).is_none() { 1 } else { parts }
    }

    /// Give each helper its share of `tower`'s integer products
    /// ([`VisionTower::shares`]); a tower off the integer grid, or one the helpers cannot split,
    /// keeps its image step here. Messages to a worker arrive in order: its shares are there
    /// before its first job. Returns the threads the image step runs on.
    pub fn share_tower(&self, tower: &VisionTower) -> usize {
        self.release_tower();
        if self.jobs.borrow().dead {
            return 1;
        }
        let key = self.towers.get() + 1;
        self.towers.set(key);
        let parts = self.workers.len() + 1;
        let shares: Option<Vec<Vec<BlockShare>>> = (1..parts).map(|part| tower.shares(part, parts)).collect();
        let Some(shares) = shares else { return 1 };
        for (worker, blocks) in self.workers.iter().zip(shares) {
            for (block, share) in blocks.iter().enumerate() {
                // One block at a time: its copy of the columns goes to the worker and is dropped.
                let SharePayload { shape, weights, floats } = share.payload();
                let buffers =
                    weights.iter().map(|w| i16_to_buffer(w)).chain(floats.iter().map(|f| f32_to_buffer(f))).collect();
                post_to(worker, &Message::HoldBlock { key, block, shape }, buffers);
            }
        }
        self.tower.set(Some(key));
        parts
    }

    /// A new job id and the promise its answer resolves.
    fn new_job(&self) -> (u64, js_sys::Promise) {
        let job = {
            let mut jobs = self.jobs.borrow_mut();
            jobs.next += 1;
            jobs.next
        };
        let jobs = self.jobs.clone();
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            jobs.borrow_mut().waiting.insert(job, resolve);
        });
        (job, promise)
    }
}

/// A job's buffers, or its error.
async fn answered(promise: js_sys::Promise) -> Result<Vec<js_sys::ArrayBuffer>> {
    let answer = JsFuture::from(promise).await.unwrap_or(JsValue::NULL);
    match answer.dyn_into::<js_sys::Array>() {
        Ok(buffers) => buffers
            .iter()
            .map(|b| b.dyn_into::<js_sys::ArrayBuffer>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| LegradError::Backend("a helper's answer held something other than buffers".into())),
        Err(other) => Err(LegradError::Backend(other.as_string().unwrap_or_else(|| "a helper failed".into()))),
    }
}

fn i16_to_buffer(values: &[i16]) -> js_sys::ArrayBuffer {
    js_sys::Int16Array::from(values).buffer()
}

fn buffer_to_i16(buffer: &js_sys::ArrayBuffer) -> Vec<i16> {
    js_sys::Int16Array::new(buffer).to_vec()
}

impl ImageHelpers for Helpers {
    fn count(&self) -> usize {
        if self.jobs.borrow().dead || self.tower.get().is_none() { 0 } else { self.workers.len() }
    }

    fn start(
        &self,
        i: usize,
        stage: StageJob,
        x: &[f32],
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<StageOut>>>> {
        let (job, promise) = self.new_job();
        let key = self.tower.get().unwrap_or(0);
        post_to(&self.workers[i], &Message::Stage { key, job, stage }, vec![f32_to_buffer(x)]);
        Box::pin(async move {
            let buffers = answered(promise).await?;
            let mut values = buffers.iter().map(buffer_to_f32);
            let missing = || LegradError::Backend("a helper's answer came without its buffers".into());
            let partial = values.next().ok_or_else(missing)?;
            Ok(match (stage.stage, stage.keep) {
                (Stage::Attention, keep) => {
                    let kept = match keep {
                        Keep::Terms | Keep::Everything => {
                            Some((values.next().ok_or_else(missing)?, values.next().ok_or_else(missing)?))
                        }
                        Keep::Output => None,
                    };
                    StageOut::Attention { partial, kept }
                }
                (Stage::Mlp, Keep::Terms | Keep::Everything) => {
                    StageOut::Mlp { partial, kept: Some(values.next().ok_or_else(missing)?) }
                }
                (Stage::Mlp, Keep::Output) => StageOut::Mlp { partial, kept: None },
            })
        })
    }

    /// One task later (a zero timeout, which stays on this worker's own thread): the jobs
    /// posted leave when the engine's task ends, not while it computes its own share.
    fn sent(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> {
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            let scope: web_sys::WorkerGlobalScope = js_sys::global().unchecked_into();
            let _ = scope.set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, 0);
        });
        Box::pin(async move {
            let _ = JsFuture::from(promise).await;
        })
    }
}

impl RowHelpers for Helpers {
    fn count(&self) -> usize {
        if self.jobs.borrow().dead { 0 } else { self.workers.len() }
    }

    fn holds(&self, i: usize, key: u64) -> bool {
        self.held[i].get() == Some(key)
    }

    fn holds_k(&self, i: usize, layer: usize) -> bool {
        self.held_k[i].borrow().contains(&layer)
    }

    fn hold_k(&self, i: usize, layer: usize, k: HostK) {
        let (message, buffers) = match k {
            HostK::Tensor(t) => {
                let [m, w] = [t.dims.first().copied().unwrap_or(0), t.dims.get(1).copied().unwrap_or(0)];
                (Message::HoldK { layer, m, w, grid: false }, vec![f32_to_buffer(&t.data)])
            }
            HostK::Grid { q, scale, m, w } => {
                (Message::HoldK { layer, m, w, grid: true }, vec![i16_to_buffer(&q), f32_to_buffer(&scale)])
            }
        };
        post_to(&self.workers[i], &message, buffers);
        self.held_k[i].borrow_mut().push(layer);
    }

    fn hold(&self, i: usize, key: u64, layers: &[usize], share: Vec<HostTensor>) {
        let (dims, buffers) = to_message(share);
        post_to(&self.workers[i], &Message::Hold { key, layers: layers.to_vec(), dims }, buffers);
        self.held[i].set(Some(key));
    }

    fn start(
        &self,
        i: usize,
        key: u64,
        prompts: Vec<HostTensor>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<f32>>>>> {
        let (job, promise) = self.new_job();
        let (dims, buffers) = to_message(prompts);
        post_to(&self.workers[i], &Message::Run { key, job, dims }, buffers);
        Box::pin(async move {
            let buffers = answered(promise).await?;
            let sums = buffers
                .first()
                .ok_or_else(|| LegradError::Backend("a helper's sums came without their buffer".into()))?;
            Ok(buffer_to_f32(sums))
        })
    }
}

// ------------------------------------------------------------------ the helper's side

thread_local! {
    static HELD: RefCell<Option<(u64, HeldRows)>> = const { RefCell::new(None) };
    /// Each layer's `K` of the current model (a `K` that could not be read is left out: rows
    /// for its layer are not taken, and the engine answers for them).
    static LAYER_K: RefCell<HashMap<usize, FoldedK>> = RefCell::new(HashMap::new());
    /// This helper's share of the vision tower `key`, by block (a block whose share could not be
    /// read is `None`: its jobs fail, and the engine answers for them).
    static TOWER: RefCell<Option<(u64, Vec<Option<BlockShare>>)>> = const { RefCell::new(None) };
}

/// Block `block`'s share of tower `key` from a [`Message::HoldBlock`]'s buffers.
fn hold_block(key: u64, block: usize, shape: ShareShape, buffers: &[js_sys::ArrayBuffer]) {
    let share = (buffers.len() == 10)
        .then(|| SharePayload {
            shape,
            weights: buffers[..4].iter().map(buffer_to_i16).collect(),
            floats: buffers[4..].iter().map(buffer_to_f32).collect(),
        })
        .and_then(|p| {
            let kernel = legrad::ComputePolicy::for_device(&Device::flex()).int_kernel;
            BlockShare::from_payload(p, kernel).ok()
        });
    TOWER.with(|t| {
        let mut t = t.borrow_mut();
        if t.as_ref().is_none_or(|(k, _)| *k != key) {
            *t = Some((key, Vec::new()));
        }
        if let Some((_, blocks)) = t.as_mut() {
            if blocks.len() <= block {
                blocks.resize_with(block + 1, || None);
            }
            blocks[block] = share;
        }
    });
}

/// Layer `layer`'s `K` from a [`Message::HoldK`]'s buffers (one it cannot read is left out).
fn hold_k(layer: usize, m: usize, w: usize, grid: bool, buffers: &[js_sys::ArrayBuffer]) {
    let k = match (grid, buffers) {
        (true, [q, scale]) => Some(HostK::Grid { q: buffer_to_i16(q), scale: buffer_to_f32(scale), m, w }),
        (false, [data]) => Some(HostK::Tensor(HostTensor { dims: vec![m, w], data: buffer_to_f32(data) })),
        _ => None,
    };
    let kernel = legrad::ComputePolicy::for_device(&Device::flex()).int_kernel;
    let k = k.and_then(|k| k.into_folded(&Device::flex(), kernel).ok());
    LAYER_K.with(|held| {
        let mut held = held.borrow_mut();
        match k {
            Some(k) => held.insert(layer, k),
            None => held.remove(&layer),
        };
    });
}

/// This helper's share of an image-step job, as the buffers of its answer.
fn stage(key: u64, job: &StageJob, buffers: &[js_sys::ArrayBuffer]) -> Result<Vec<js_sys::ArrayBuffer>> {
    let x =
        buffers.first().map(buffer_to_f32).ok_or_else(|| LegradError::Input("a job came without its rows".into()))?;
    let out = TOWER.with(|t| match &*t.borrow() {
        Some((k, blocks)) if *k == key => match blocks.get(job.block) {
            Some(Some(share)) => share.run(job, &x),
            _ => Err(LegradError::Input(format!("this helper does not hold block {}'s share", job.block))),
        },
        _ => Err(LegradError::Input(format!("this helper does not hold tower {key}"))),
    })?;
    let arrays: Vec<Vec<f32>> = match out {
        StageOut::Attention { partial, kept } => {
            std::iter::once(partial).chain(kept.into_iter().flat_map(|(p, v)| [p, v])).collect()
        }
        StageOut::Mlp { partial, kept } => std::iter::once(partial).chain(kept).collect(),
    };
    Ok(arrays.iter().map(|v| f32_to_buffer(v)).collect())
}

async fn answer(job: u64, key: u64, dims: Vec<Vec<usize>>, buffers: &[js_sys::ArrayBuffer]) -> Result<Vec<f32>> {
    let prompts = from_message(dims, buffers)?;
    let sums = HELD.with(|h| match &*h.borrow() {
        Some((k, held)) if *k == key => held.sums(&prompts, &Device::flex()),
        _ => Err(LegradError::Input(format!("helper job {job}: this helper does not hold trace {key}"))),
    })?;
    let n: usize = sums.dims().iter().product();
    legrad::engine::read_f32(sums.reshape([n])).await
}

/// Called once when the module starts in a helper worker.
pub fn install_helper() {
    let scope: DedicatedWorkerGlobalScope = js_sys::global().unchecked_into();
    let target: JsValue = scope.clone().into();
    let onmessage = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
        let Ok(envelope) = Envelope::from_js(&ev.data()) else { return };
        match envelope.decode::<Message>() {
            Ok(Message::Hold { key, layers, dims }) => {
                // The CPU's policy on this platform: the engine's own on the CPU path (the
                // helpers run only there), so the shares take the path the whole layer takes.
                let device = Device::flex();
                let policy = legrad::ComputePolicy::for_device(&device);
                let ks = LAYER_K.with(|k| {
                    let k = k.borrow();
                    layers.iter().map(|l| k.get(l).cloned()).collect::<Option<Vec<_>>>()
                });
                let held = ks
                    .ok_or_else(|| LegradError::Input("rows came for a layer whose K this helper lacks".into()))
                    .and_then(|ks| from_message(dims, &envelope.buffers).map(|s| (s, ks)))
                    .and_then(|(s, ks)| HeldRows::new(s, ks, &device, policy));
                // Rows it cannot take: it holds nothing, and says so at the next job.
                HELD.with(|h| *h.borrow_mut() = held.ok().map(|held| (key, held)));
            }
            Ok(Message::Release) => {
                TOWER.with(|t| *t.borrow_mut() = None);
                LAYER_K.with(|k| k.borrow_mut().clear());
            }
            Ok(Message::HoldK { layer, m, w, grid }) => hold_k(layer, m, w, grid, &envelope.buffers),
            Ok(Message::HoldBlock { key, block, shape }) => hold_block(key, block, shape, &envelope.buffers),
            Ok(Message::Stage { key, job, stage: s }) => match stage(key, &s, &envelope.buffers) {
                Ok(buffers) => post_to(&target, &Message::Answer { job }, buffers),
                Err(e) => post_to(&target, &Message::Failed { job, message: e.to_string() }, vec![]),
            },
            Ok(Message::Run { key, job, dims }) => {
                let target = target.clone();
                wasm_bindgen_futures::spawn_local(async move {
                    match answer(job, key, dims, &envelope.buffers).await {
                        Ok(sums) => post_to(&target, &Message::Sums { job }, vec![f32_to_buffer(&sums)]),
                        Err(e) => post_to(&target, &Message::Failed { job, message: e.to_string() }, vec![]),
                    }
                });
            }
            _ => {}
        }
    });
    scope.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
}
