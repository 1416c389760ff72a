//! The engine's helper workers: on the CPU, a wasm instance is one thread, so the engine starts
//! helpers (the same module in more Web Workers, `worker.js` named [`HELPER_NAME`]) and shares
//! LeGrad's per-prompt rows with them ([`legrad::explain::rows`]). A helper holds its rows of
//! the current trace (sent once per image) and answers each prompt batch with its sums.
//!
//! A helper that fails (an error in it, a message it cannot read) is answered for by the engine
//! itself: its job resolves with an error and the engine computes those rows; after a worker
//! error no helper is used again in this visit.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;

use burn::tensor::Device;
use legrad::explain::rows::{HeldRows, HostTensor, RowHelpers};
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
    /// Hold these rows of trace `key` (one buffer per tensor, these shapes).
    Hold {
        key: u64,
        dims: Vec<Vec<usize>>,
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
                    Ok(Message::Sums { job }) => match envelope.buffers.first() {
                        Some(b) => (job, JsValue::from(b)),
                        None => (job, JsValue::from_str("a helper's sums came without their buffer")),
                    },
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
        Some(Self { workers, held, jobs })
    }
}

impl Drop for Helpers {
    fn drop(&mut self) {
        for w in &self.workers {
            w.terminate();
        }
    }
}

impl RowHelpers for Helpers {
    fn count(&self) -> usize {
        if self.jobs.borrow().dead { 0 } else { self.workers.len() }
    }

    fn holds(&self, i: usize, key: u64) -> bool {
        self.held[i].get() == Some(key)
    }

    fn hold(&self, i: usize, key: u64, share: Vec<HostTensor>) {
        let (dims, buffers) = to_message(share);
        post_to(&self.workers[i], &Message::Hold { key, dims }, buffers);
        self.held[i].set(Some(key));
    }

    fn start(
        &self,
        i: usize,
        key: u64,
        prompts: Vec<HostTensor>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Vec<f32>>>>> {
        let job = {
            let mut jobs = self.jobs.borrow_mut();
            jobs.next += 1;
            jobs.next
        };
        let jobs = self.jobs.clone();
        let promise = js_sys::Promise::new(&mut |resolve, _reject| {
            jobs.borrow_mut().waiting.insert(job, resolve);
        });
        let (dims, buffers) = to_message(prompts);
        post_to(&self.workers[i], &Message::Run { key, job, dims }, buffers);
        Box::pin(async move {
            let answer = JsFuture::from(promise).await.unwrap_or(JsValue::NULL);
            match answer.dyn_into::<js_sys::ArrayBuffer>() {
                Ok(buffer) => Ok(buffer_to_f32(&buffer)),
                Err(other) => Err(LegradError::Backend(other.as_string().unwrap_or_else(|| "a helper failed".into()))),
            }
        })
    }
}

// ------------------------------------------------------------------ the helper's side

thread_local! {
    static HELD: RefCell<Option<(u64, HeldRows)>> = const { RefCell::new(None) };
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
            Ok(Message::Hold { key, dims }) => {
                // The CPU's policy on this platform: the engine's own on the CPU path (the
                // helpers run only there), so the shares take the path the whole layer takes.
                let device = Device::flex();
                let policy = legrad::ComputePolicy::for_device(&device);
                let held = from_message(dims, &envelope.buffers).and_then(|s| HeldRows::new(&s, &device, policy));
                // Rows it cannot take: it holds nothing, and says so at the next job.
                HELD.with(|h| *h.borrow_mut() = held.ok().map(|held| (key, held)));
            }
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
