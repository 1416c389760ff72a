//! The engine side of the app, in a dedicated Web Worker so that the page never waits on it:
//! it owns the device, the model, the decoded image and its cached trace, and answers
//! [`Request`]s with [`Response`]s.
//!
//! Requests are queued and handled one at a time; of several queued `Explain` requests only the
//! newest runs (the last keystroke wins). `Cancel` acts at once on a running download.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;

use burn::tensor::Device;
use legrad::engine::Engine;
use legrad::explain::ExplainOptions;
use legrad::model::Scoring;
use legrad::model::int_linear::share::ImageHelpers;
use legrad::model::vision::VisionHead;
use legrad::preprocess::{DecodeLimits, DecodedImage, InputSize, ResizeMode, decode};
use legrad::{ComputePolicy, ImageTrace, LegradError, TraceRequest};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::JsFuture;
use web_sys::DedicatedWorkerGlobalScope;
use web_time::Instant;

use crate::helpers::Helpers;
use crate::models::{self, ModelBytes};
use crate::protocol::*;

struct CachedTrace {
    image_id: u64,
    size: InputSize,
    request: TraceRequest,
    trace: ImageTrace,
    rgb: Vec<u8>,
}

/// A gallery image's trace, kept for the next prompt ([`GALLERY_TRACES`] of them).
struct GalleryTrace {
    item: u64,
    keep_aspect: bool,
    size: u32,
    /// The model's input the trace was made at (the map covers its top-left grid x patch).
    input: InputSize,
    trace: ImageTrace,
    photo: (u32, u32),
    thumb: (u32, u32, Vec<u8>),
}

#[derive(Default)]
struct State {
    device: Option<Device>,
    /// The page read WebGPU's adapter as a software renderer (wgpu does not name a browser's
    /// adapter): the GPU engine's compute policy takes the software tiles.
    software_adapter: bool,
    /// What the page was told about the backend at start, and since (a race or the text
    /// tower's placement at a model load refines it).
    initial_choice: Option<BackendChoice>,
    choice: Option<BackendChoice>,
    /// A hardware GPU found at start (no `?backend=`): it races the CPU at every model load.
    race_gpu: Option<(Device, String)>,
    engine: Option<Rc<Engine>>,
    /// What the page was told about the engine's model, and where it came from.
    summary: Option<ModelSummary>,
    source: Option<ModelSource>,
    image: Option<(u64, Rc<DecodedImage>)>,
    trace: Option<Rc<CachedTrace>>,
    /// The gallery's traces, most recently used first.
    gallery: VecDeque<Rc<GalleryTrace>>,
    /// `?threads=N`, when the page asked.
    threads: Option<u32>,
    /// On the CPU: the helper workers that take a share of each prompt's rows.
    helpers: Option<Rc<Helpers>>,
    queue: VecDeque<(Request, Vec<js_sys::ArrayBuffer>)>,
    busy: bool,
    /// The model's tower can be shared with the helpers and has not been yet (it is with the
    /// load where the model's own size is shared, else with the first image large enough:
    /// [`Engine::shares_image_step`]).
    tower_to_share: bool,
    abort: Option<web_sys::AbortController>,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
}

fn scope() -> DedicatedWorkerGlobalScope {
    js_sys::global().unchecked_into()
}

pub fn post(response: &Response, buffers: Vec<js_sys::ArrayBuffer>) {
    let (msg, transfer) = Envelope::new(response, buffers).to_js();
    let _ = scope().post_message_with_transfer(&msg, &transfer);
}

fn post_error(about: ErrorAbout, message: impl Into<String>) {
    post(&Response::Error { about, message: message.into() }, vec![]);
}

/// Called once when the module starts inside the worker.
pub fn install() {
    let onmessage = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(|ev: web_sys::MessageEvent| {
        let envelope = match Envelope::from_js(&ev.data()) {
            Ok(e) => e,
            Err(e) => return post_error(ErrorAbout::Explain, e),
        };
        let request: Request = match envelope.decode() {
            Ok(r) => r,
            Err(e) => return post_error(ErrorAbout::Explain, e),
        };
        if request == Request::Cancel {
            STATE.with(|s| {
                if let Some(a) = s.borrow_mut().abort.take() {
                    a.abort();
                }
            });
            return;
        }
        let start = STATE.with(|s| {
            let mut s = s.borrow_mut();
            s.queue.push_back((request, envelope.buffers));
            !std::mem::replace(&mut s.busy, true)
        });
        if start {
            wasm_bindgen_futures::spawn_local(run_queue());
        }
    });
    scope().set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
}

fn next_request() -> Option<(Request, Vec<js_sys::ArrayBuffer>)> {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        let next = s.queue.pop_front();
        if let Some((Request::Explain(_), _)) = &next
            && s.queue.iter().any(|(r, _)| matches!(r, Request::Explain(_)))
        {
            // A newer explanation is queued: this one is stale.
            return Some((Request::Cancel, vec![]));
        }
        if next.is_none() {
            s.busy = false;
        }
        next
    })
}

async fn run_queue() {
    while let Some((request, buffers)) = next_request() {
        handle(request, buffers).await;
    }
}

async fn handle(request: Request, buffers: Vec<js_sys::ArrayBuffer>) {
    // A GPU lost since the last request (between requests nothing reads from it).
    if let Some(reason) = take_gpu_lost() {
        recover_on_cpu(reason).await;
    }
    match request {
        Request::Cancel => {}
        Request::Init { backend, threads } => {
            STATE.with(|s| s.borrow_mut().threads = threads);
            init(backend).await
        }
        Request::LoadModel(source) => {
            let name = match &source {
                ModelSource::Default => models::DEFAULT_MODEL_NAME.to_string(),
                ModelSource::File { name, .. } => name.clone(),
                ModelSource::Url { url, .. } => url.clone(),
            };
            if let Err(e) = load_model(source, buffers).await {
                // Failed or cancelled before the model in use was let go: it stays, and the page
                // is told so beside it.
                let kept = STATE.with(|s| {
                    let s = s.borrow();
                    s.engine.as_ref().and(s.summary.clone())
                });
                match kept {
                    Some(mut summary) => {
                        summary.notes.insert(0, format!("Loading {name} stopped: {e}. This model is still in use."));
                        post(&Response::ModelReady(summary), vec![]);
                    }
                    None => post_error(ErrorAbout::Model, e.to_string()),
                }
            }
        }
        Request::SetImage { id, name } => {
            let bytes = buffers.first().map(buffer_to_bytes).unwrap_or_default();
            match decode(&bytes, &DECODE_LIMITS) {
                Ok(img) => take_image(id, &name, img),
                Err(e) => post_error(ErrorAbout::Image, format!("{name}: {e}")),
            }
        }
        Request::SetFrame { id, width, height } => {
            let rgba = buffers.first().map(buffer_to_bytes).unwrap_or_default();
            if width == 0 || height == 0 || width.max(height) > 4096 || rgba.len() != (width * height * 4) as usize {
                post_error(
                    ErrorAbout::Image,
                    format!("a camera frame of {width}x{height} came with {} bytes", rgba.len()),
                );
                return;
            }
            let img = DecodedImage { width, height, rgba, has_alpha: false, resize_mode: ResizeMode::Bicubic };
            take_image(id, "camera frame", img);
        }
        Request::Gallery(req) => {
            let (run, item) = (req.run, req.item);
            let name = req.name.clone();
            let mut result = gallery_item(req.clone(), &buffers).await;
            // As for an explanation: a GPU lost meanwhile, and the image again on the CPU.
            if result.is_err() && on_gpu() {
                models::sleep_ms(200).await;
            }
            if let Some(reason) = take_gpu_lost() {
                recover_on_cpu(reason).await;
                result = gallery_item(req, &buffers).await;
            }
            if let Err(e) = result {
                post(&Response::GalleryFailed { run, item, message: format!("{name}: {e}") }, vec![]);
            }
        }
        Request::GalleryClear => STATE.with(|s| s.borrow_mut().gallery.clear()),
        Request::Explain(req) => {
            let mut result = explain(req.clone()).await;
            // A GPU that fails may have been lost: the browser tells (`GPUDevice.lost`) a moment
            // after the failed read.
            if result.is_err() && on_gpu() {
                models::sleep_ms(200).await;
            }
            // Lost while explaining: what it read is not trusted (no map was sent); again on
            // the CPU.
            if let Some(reason) = take_gpu_lost() {
                recover_on_cpu(reason).await;
                result = explain(req).await;
            }
            match result {
                Ok(Some(job)) => words_after(job).await,
                Ok(None) => {}
                Err((about, e)) => post_error(about, e.to_string()),
            }
        }
    }
}

/// What a prompt's words need once its maps are out ([`words_after`]).
struct WordsJob {
    seq: u64,
    image_id: u64,
    trace: Rc<CachedTrace>,
    prompts: Vec<legrad::engine::PreparedPrompt>,
    options: ExplainOptions,
}

/// The prompts' words, in an answer after their maps (`Response::Words`): a map never waits for
/// its words (issue 29's bar on a new prompt). Left out when a request that supersedes them
/// came meanwhile (a newer explanation brings its own; a new image or model makes them moot).
async fn words_after(job: WordsJob) {
    // One turn of the event loop, so that what the page sent meanwhile is in the queue.
    models::sleep_ms(0).await;
    let superseded = STATE.with(|s| {
        s.borrow().queue.iter().any(|(r, _)| {
            matches!(
                r,
                Request::Explain(_) | Request::SetImage { .. } | Request::SetFrame { .. } | Request::LoadModel(_)
            )
        })
    });
    let Some(engine) = STATE.with(|s| s.borrow().engine.clone()) else { return };
    if superseded {
        return;
    }
    engine.take_steps();
    match engine.words(&job.trace.trace, &job.prompts, &job.options).await {
        Ok(words) => {
            if gpu_lost_now() {
                return; // read from a lost device: the next request recovers and explains again
            }
            let prompts = words
                .into_iter()
                .map(|ws| ws.into_iter().map(|w| WordRelevance { word: w.word, relevance: w.relevance }).collect())
                .collect();
            let words_ms = engine.take_steps().words_ms;
            post(&Response::Words(WordsReady { seq: job.seq, image_id: job.image_id, prompts, words_ms }), vec![]);
        }
        Err(e) => {
            // A GPU that fails may have been lost (the browser tells a moment later): then the
            // maps shown stand, and the next request moves to the CPU and explains again.
            if on_gpu() {
                models::sleep_ms(200).await;
            }
            if !gpu_lost_now() {
                post_error(ErrorAbout::Explain, format!("the prompts' words: {e}"));
            }
        }
    }
}

/// `navigator.gpu`'s adapter, described: its name, and whether it is software (a CPU pretending
/// to be a GPU: SwiftShader, llvmpipe/lavapipe, WARP, or the browser says `isFallbackAdapter`).
async fn adapter_description() -> Option<(String, bool)> {
    let nav = js_sys::Reflect::get(&js_sys::global(), &"navigator".into()).ok()?;
    let gpu = js_sys::Reflect::get(&nav, &"gpu".into()).ok().filter(|g| !g.is_undefined())?;
    let request: js_sys::Function = js_sys::Reflect::get(&gpu, &"requestAdapter".into()).ok()?.dyn_into().ok()?;
    let promise: js_sys::Promise = request.call0(&gpu).ok()?.dyn_into().ok()?;
    let adapter = JsFuture::from(promise).await.ok().filter(|a| !a.is_null())?;
    let info = js_sys::Reflect::get(&adapter, &"info".into()).ok()?;
    let field =
        |k: &str| js_sys::Reflect::get(&info, &k.into()).ok().and_then(|v| v.as_string()).filter(|s| !s.is_empty());
    let parts: Vec<String> =
        ["vendor", "architecture", "description", "device"].iter().filter_map(|k| field(k)).collect();
    let flag = |obj: &JsValue| {
        js_sys::Reflect::get(obj, &"isFallbackAdapter".into()).ok().and_then(|v| v.as_bool()).unwrap_or(false)
    };
    let name = if parts.is_empty() { "unnamed adapter".to_string() } else { parts.join(" / ") };
    let software = flag(&info) || flag(&adapter) || legrad::compute::is_software_adapter(&name);
    Some((name, software))
}

fn cpu_choice(reason: String, on_cpu: bool) -> BackendChoice {
    BackendChoice { name: "CPU (wasm)".into(), adapter: "Flex".into(), reason, on_cpu, race: None }
}

async fn init(request: BackendRequest) {
    let mut race_gpu = None;
    let (device, choice) = match request {
        BackendRequest::Cpu => (Device::flex(), cpu_choice("On the CPU, as asked (?backend=cpu).".into(), false)),
        BackendRequest::WebGpu | BackendRequest::Auto => match adapter_description().await {
            None => (
                Device::flex(),
                cpu_choice("On the CPU: this browser has no WebGPU adapter. The maps are the same; a browser with WebGPU (recent Chrome, Edge) uses the GPU.".into(), true),
            ),
            Some((adapter, true)) if request == BackendRequest::Auto => (
                Device::flex(),
                cpu_choice(
                    format!("On the CPU: WebGPU here runs on a software adapter ({adapter}), slower than this page's own CPU path. ?backend=webgpu uses it anyway."),
                    true,
                ),
            ),
            Some((adapter, software)) => match Device::wgpu_options().init_async().await {
                Ok(d) => {
                    // wgpu does not name a browser's adapter: the kernels' tiles follow the page's
                    // reading of it ([`new_engine`]).
                    STATE.with(|s| s.borrow_mut().software_adapter = software);
                    let reason = if request == BackendRequest::WebGpu {
                        "On WebGPU, as asked (?backend=webgpu).".to_string()
                    } else {
                        race_gpu = Some((d.clone(), adapter.clone()));
                        "On WebGPU; each model is timed on the GPU and on the CPU when it loads, and runs on the faster.".to_string()
                    };
                    (d, BackendChoice { name: "WebGPU".into(), adapter, reason, on_cpu: false, race: None })
                }
                Err(e) => (Device::flex(), cpu_choice(format!("On the CPU: WebGPU failed to start ({e:?})."), true)),
            },
        },
    };
    let on_cpu = !ComputePolicy::for_device(&device).is_gpu();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.device = Some(device);
        s.race_gpu = race_gpu;
    });
    let choice = if on_cpu { with_threads(choice) } else { choice };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.initial_choice = Some(choice.clone());
        s.choice = Some(choice.clone());
    });
    post(&Response::Backend(choice), vec![]);
}

/// On the CPU: start the helper workers (once), and say in `choice` how many threads explain.
fn with_threads(mut choice: BackendChoice) -> BackendChoice {
    let helpers = STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.helpers.is_none() {
            let cores = js_sys::Reflect::get(&js_sys::global(), &"navigator".into())
                .and_then(|n| js_sys::Reflect::get(&n, &"hardwareConcurrency".into()))
                .ok()
                .and_then(|c| c.as_f64())
                .unwrap_or(1.0) as u32;
            let threads = s.threads.unwrap_or(cores.clamp(1, 4));
            s.helpers = Helpers::start(threads.saturating_sub(1) as usize).map(Rc::new);
        }
        s.helpers.as_ref().map(|h| legrad::explain::rows::RowHelpers::count(h.as_ref())).unwrap_or(0)
    });
    let threads = match helpers {
        0 => "one thread".to_string(),
        n => format!("{} threads", n + 1),
    };
    choice.name = format!("CPU (wasm, {threads})");
    choice.reason = format!("{} A prompt's map is computed on {threads} (?threads=N sets how many).", choice.reason);
    choice
}

fn device() -> Device {
    STATE.with(|s| s.borrow().device.clone()).unwrap_or_else(Device::flex)
}

fn progress(stage: Stage, done: u64, total: Option<u64>) {
    post(&Response::Progress { stage, done, total }, vec![]);
}

/// `legradGpuLost`: set by `www/worker.js` when `GPUDevice.lost` resolves, with the reason.
fn gpu_lost_flag() -> Option<JsValue> {
    js_sys::Reflect::get(&js_sys::global(), &"legradGpuLost".into()).ok().filter(|v| !v.is_null() && !v.is_undefined())
}

/// The reason the GPU device was lost, if it was, once: the flag is cleared.
fn take_gpu_lost() -> Option<String> {
    let lost = gpu_lost_flag()?;
    let _ = js_sys::Reflect::set(&js_sys::global(), &"legradGpuLost".into(), &JsValue::NULL);
    Some(lost.as_string().unwrap_or_else(|| "lost".into()))
}

fn on_gpu() -> bool {
    ComputePolicy::for_device(&device()).is_gpu()
}

/// The policy a model is built with on `device`: the device's, with the page's reading of its
/// adapter (a software renderer takes no f16 products, `compute::GpuFloat`).
fn build_policy(device: &Device) -> ComputePolicy {
    let software = STATE.with(|s| s.borrow().software_adapter);
    ComputePolicy::for_device(device).with_software_adapter(software)
}

/// An engine for a model built on its device, with the compute policy of that device and the
/// page's reading of its adapter.
fn new_engine(clip: legrad::Clip, info: legrad::load::ModelInfo) -> Result<Engine, LegradError> {
    let engine = Engine::new(clip, info)?;
    let software = STATE.with(|s| s.borrow().software_adapter);
    let policy = engine.policy().with_software_adapter(software);
    engine.with_policy(policy)
}

fn gpu_lost_now() -> bool {
    gpu_lost_flag().is_some()
}

/// The GPU is gone: the engine moves to the CPU for the rest of the visit, says so, and loads
/// the model again there (the decoded image stays; its trace is computed again).
async fn recover_on_cpu(reason: String) {
    let choice = with_threads(cpu_choice(
        format!(
            "On the CPU: the GPU device was lost ({reason}), so the engine moved to the CPU. Reload the page to use the GPU again."
        ),
        true,
    ));
    let source = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.device = Some(Device::flex());
        s.race_gpu = None;
        s.initial_choice = Some(choice.clone());
        s.choice = Some(choice.clone());
        s.engine = None;
        s.summary = None;
        s.trace = None;
        s.gallery.clear();
        s.source.clone()
    });
    post(&Response::Backend(choice), vec![]);
    // A dropped file's bytes are gone (they were the GPU model's): the default model instead.
    let (source, note) = match source {
        Some(ModelSource::File { name, .. }) => {
            (ModelSource::Default, Some(format!("{name} was on the lost GPU: drop it again to use it on the CPU.")))
        }
        Some(s) => (s, None),
        None => (ModelSource::Default, None),
    };
    if let Some(note) = note {
        post_error(ErrorAbout::Explain, note);
    }
    if let Err(e) = load_model(source, vec![]).await {
        post_error(ErrorAbout::Model, e.to_string());
    }
}

async fn load_model(source: ModelSource, buffers: Vec<js_sys::ArrayBuffer>) -> Result<(), LegradError> {
    STATE.with(|s| s.borrow_mut().source = Some(source.clone()));
    let is_default = source == ModelSource::Default;
    let device = device();
    let t0 = Instant::now();
    let abort = web_sys::AbortController::new().ok();
    STATE.with(|s| s.borrow_mut().abort = abort.clone());
    let loaded = models::obtain(source, buffers, abort.as_ref(), &progress).await;
    STATE.with(|s| s.borrow_mut().abort = None);
    let mut loaded = loaded?;
    let stored_bytes = loaded.bytes.size() as u64;
    progress(Stage::Load, 0, None);
    // The previous model goes first: two ViT-B/16 side by side (or four, in a race) need not fit.
    let helpers = STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.engine = None;
        s.summary = None;
        s.trace = None;
        s.gallery.clear();
        s.helpers.clone()
    });
    if let Some(h) = &helpers {
        h.release_tower();
    }
    let race_gpu = STATE.with(|s| s.borrow().race_gpu.clone());
    let bytes = std::mem::replace(&mut loaded.bytes, ModelBytes::Here(Vec::new()));
    let engine = match race_gpu {
        Some((gpu, adapter)) => race(&bytes.into_vec(), gpu, adapter).await?,
        // On the CPU the engine's memory (which does not shrink: its high-water mark is what the
        // tab keeps) never holds the file and the model at once: a cached file stays in its
        // JavaScript buffer and each tensor is read from it as the model takes it; a file here
        // goes once its tensors are read, before the model is built.
        None if !on_gpu() => {
            let (prepared, source) = match bytes {
                ModelBytes::Js(js) => {
                    let source: Rc<dyn legrad::weights::ByteSource> = Rc::new(js);
                    (legrad::load::read_source(source.clone())?, Some(source))
                }
                ModelBytes::Here(b) => (legrad::load::read_bytes(&b, None)?, None),
            };
            let (clip, info) = prepared.build_with(&device, &build_policy(&device))?;
            // A read from the cache that failed left zeros in its place: the model is refused.
            if let Some(why) = source.and_then(|s| s.failure()) {
                return Err(LegradError::ModelFile(why));
            }
            Rc::new(new_engine(clip, info)?)
        }
        None => Rc::new(load_on(&device, &bytes.into_vec()).await?),
    };
    // On the CPU, a large tower's image step is shared with the helpers for large enough images.
    let image_threads = match &helpers {
        Some(h) if !engine.compiles_kernels() => h.can_share(&engine.model.vision),
        _ => 1,
    };
    // A model whose own size is shared sends the helpers their shares now, with the load (its
    // first image would otherwise wait for them); another, with its first image that is.
    let native_shared = engine.shares_image_step(InputSize::square(engine.model.config.vision.image_size));
    match &helpers {
        Some(h) if image_threads > 1 && native_shared => {
            h.share_tower(&engine.model.vision);
        }
        _ => STATE.with(|s| s.borrow_mut().tower_to_share = image_threads > 1),
    }
    let shared_from = engine.shared_step_side();
    let load_ms = t0.elapsed().as_secs_f64() * 1e3;
    // Warm-up: on a GPU, compile what an image and every prompt count the page can send use,
    // at the model's own size; on the CPU, fill the per-model caches.
    progress(Stage::WarmUp, 0, None);
    let t1 = Instant::now();
    let native = engine.model.config.vision.image_size;
    let rows = helpers.as_deref().map(|h| h as &dyn legrad::explain::rows::RowHelpers);
    engine.warm_up(InputSize::square(native), &ExplainOptions::default(), rows).await?;
    if !engine.compiles_kernels() {
        // On the CPU, one image step of the model's own size on blank pixels (shared where its
        // images are): the browser compiles a wasm function's optimized code once it runs hot,
        // and the workers' memory grows for the step's intermediates; both were paid by the first
        // image (a ViT-B/16 at 224: a third slower than the next, history §11).
        let request = engine.request_for(&[legrad::Method::LeGrad], &ExplainOptions::default())?;
        let size = InputSize::square(native);
        image_step(&engine, vec![0.0; 3 * native * native], size, &request, helpers.as_deref()).await?;
    }
    let warmup_ms = t1.elapsed().as_secs_f64() * 1e3;
    let c = &engine.model.config;
    let summary = ModelSummary {
        name: loaded.name,
        description: format!(
            "ViT width {} × {} layers, patch {}, {} px; text width {} × {} layers; embedding {}",
            c.vision.width,
            c.vision.layers,
            c.vision.patch_size,
            c.vision.image_size,
            c.text.width,
            c.text.layers,
            c.embed_dim
        ),
        format: engine.info.source_format.clone(),
        native_size: native,
        default_size: if is_default {
            native
        } else if native < 224 {
            2 * native
        } else {
            448
        },
        patch_size: c.vision.patch_size,
        layers: c.vision.layers,
        context_length: c.text.context_length,
        downloaded_bytes: loaded.downloaded_bytes,
        stored_bytes,
        from_cache: loaded.from_cache,
        notes: engine
            .info
            .notes
            .clone()
            .into_iter()
            .chain(loaded.notes)
            .chain((image_threads > 1).then(|| {
                format!("The image step runs on {image_threads} threads for images of {shared_from} px and more.")
            }))
            .chain(matches!(engine.model.vision.weights.head, VisionHead::AttentionPool(_)).then(|| {
                "SigLIP: LeGrad only (the baselines read CLIP's class token, which SigLIP does not have); scores are SigLIP's sigmoid probabilities".to_string()
            }))
            .collect(),
        load_ms,
        warmup_ms,
        score_name: match engine.model.scoring {
            Scoring::Sigmoid { .. } => "probability",
            Scoring::Cosine => "similarity",
        }
        .into(),
    };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.engine = Some(engine);
        s.trace = None;
        s.gallery.clear();
        s.summary = Some(summary.clone());
    });
    post(&Response::ModelReady(summary), vec![]);
    Ok(())
}

/// The model on the device the page asked for (or the only one there is). On a GPU, as asked
/// with `?backend=webgpu`, the text tower still goes where it is faster ([`place_text`]), and
/// the page is told.
async fn load_on(device: &Device, bytes: &[u8]) -> Result<Engine, LegradError> {
    let (clip, info) = legrad::load::read_bytes(bytes, None)?.build_with(device, &build_policy(device))?;
    let engine = new_engine(clip, info)?;
    if !engine.compiles_kernels() {
        return Ok(engine);
    }
    let (engine, note) = place_text(engine, bytes).await?;
    if let Some(c) = STATE.with(|s| s.borrow().initial_choice.clone()) {
        let reason = match note {
            Some(note) => format!("{} {note}", c.reason),
            None => c.reason.clone(),
        };
        let choice = BackendChoice { reason, ..c };
        STATE.with(|s| s.borrow_mut().choice = Some(choice.clone()));
        post(&Response::Backend(choice), vec![]);
    }
    Ok(engine)
}

/// Build the model on the GPU and on the CPU, time both on what the page waits for, keep the
/// faster and tell the page why. A new prompt is what the user waits for most often; an image
/// encode less often: the cost compared is one image plus [`PROMPTS_PER_IMAGE`] new prompts.
async fn race(bytes: &[u8], gpu: Device, adapter: String) -> Result<Rc<Engine>, LegradError> {
    let (clip, info) = legrad::load::read_bytes(bytes, None)?.build_with(&gpu, &build_policy(&gpu))?;
    let on_gpu = new_engine(clip, info)?;
    let g = on_gpu.speed(RACE_RUNS).await?;
    let (clip, info) = legrad::load::load_bytes(bytes, None, &Device::flex())?;
    let on_cpu = new_engine(clip, info)?;
    let c = on_cpu.speed(RACE_RUNS).await?;
    // On the GPU, a prompt's text may be encoded on the CPU (whichever is faster).
    let text_on_cpu = c.text_s < g.text_s;
    let gpu_prompt_s = if text_on_cpu { g.new_prompt_s - g.text_s + c.text_s } else { g.new_prompt_s };
    let gpu_wins = g.image_s + PROMPTS_PER_IMAGE * gpu_prompt_s <= c.image_s + PROMPTS_PER_IMAGE * c.new_prompt_s;
    let ms = |v: f64| v * 1e3;
    let race = Race {
        gpu_prompt_ms: ms(gpu_prompt_s),
        cpu_prompt_ms: ms(c.new_prompt_s),
        gpu_image_ms: ms(g.image_s),
        cpu_image_ms: ms(c.image_s),
    };
    let timings = format!(
        "a new prompt {:.0} ms on the GPU, {:.0} ms on the CPU; an image about {:.0} ms and {:.0} ms",
        race.gpu_prompt_ms, race.cpu_prompt_ms, race.gpu_image_ms, race.cpu_image_ms
    );
    let (engine, device, choice) = if gpu_wins {
        let (engine, text_note) = if text_on_cpu {
            let note = text_note(c.text_s, g.text_s);
            (on_gpu.with_text_tower(on_cpu.into_text_tower()), format!(" {note}"))
        } else {
            drop(on_cpu);
            (on_gpu, String::new())
        };
        let reason = format!("On WebGPU: timed at load, {timings}.{text_note} ?backend=cpu forces the CPU.");
        (engine, gpu, BackendChoice { name: "WebGPU".into(), adapter, reason, on_cpu: false, race: Some(race) })
    } else {
        drop(on_gpu);
        let reason = format!(
            "On the CPU: timed at load, it is faster for this model here ({timings}). ?backend=webgpu forces the GPU."
        );
        (on_cpu, Device::flex(), with_threads(BackendChoice { race: Some(race), ..cpu_choice(reason, false) }))
    };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.device = Some(device);
        s.choice = Some(choice.clone());
    });
    post(&Response::Backend(choice), vec![]);
    Ok(Rc::new(engine))
}

/// On a GPU engine: time a prompt's text encoding there and on the CPU, and move the text tower
/// to the CPU when it is faster there (a small text tower's dozens of tiny kernels can cost more
/// in launches than the whole tower on the CPU). Returns the engine and a sentence when moved.
async fn place_text(gpu: Engine, bytes: &[u8]) -> Result<(Engine, Option<String>), LegradError> {
    let (clip, info) = legrad::load::load_bytes(bytes, None, &Device::flex())?;
    let cpu = new_engine(clip, info)?;
    let (g, c) = (gpu.text_speed(RACE_RUNS).await?, cpu.text_speed(RACE_RUNS).await?);
    if c < g { Ok((gpu.with_text_tower(cpu.into_text_tower()), Some(text_note(c, g)))) } else { Ok((gpu, None)) }
}

fn text_note(cpu_s: f64, gpu_s: f64) -> String {
    format!(
        "The text tower runs on the CPU, faster here ({:.0} ms a prompt against {:.0} ms on the GPU).",
        cpu_s * 1e3,
        gpu_s * 1e3
    )
}

/// Timed runs per backend in the race (after one untimed run that compiles).
const RACE_RUNS: usize = 3;
/// New prompts an image gets, for weighing the race's two timings.
const PROMPTS_PER_IMAGE: f64 = 5.0;

/// The image explanations use from now on; the page gets what to draw maps over (the image
/// itself, or scaled down to 4096 px) and the large view's copy (the image scaled down to
/// [`VIEW_MAX_SIDE`], when that is smaller).
fn take_image(id: u64, name: &str, img: DecodedImage) {
    let (w, h) = (img.width, img.height);
    let copies = img.display_rgb(legrad::overlay::MAX_ORIGINAL_SIDE).and_then(|display| {
        // From the image itself: one resize, and no RGBA copy of the display copy to resize.
        let view = if display.0.max(display.1) <= VIEW_MAX_SIDE { None } else { Some(img.display_rgb(VIEW_MAX_SIDE)?) };
        Ok((display, view))
    });
    let (display, view) = match copies {
        Ok(c) => c,
        Err(e) => {
            post_error(ErrorAbout::Image, format!("{name}: {e}"));
            return;
        }
    };
    let (view_size, view_rgb) = match view {
        Some((vw, vh, rgb)) => ((vw, vh), rgb),
        None => ((display.0, display.1), Vec::new()),
    };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.image = Some((id, Rc::new(img)));
        s.trace = None;
    });
    post(
        &Response::ImageReady { id, width: w, height: h, display: (display.0, display.1), view: view_size },
        vec![bytes_to_buffer(&display.2), bytes_to_buffer(&view_rgb)],
    );
}

/// The image's trace, its products shared with the helpers where the image is large enough
/// (each gets its share of the tower with the first such image). A helper that cannot answer
/// ends the sharing for this model: the step runs here.
async fn image_step(
    engine: &Engine,
    pixels: Vec<f32>,
    size: InputSize,
    request: &TraceRequest,
    helpers: Option<&Helpers>,
) -> Result<ImageTrace, LegradError> {
    let Some(h) = helpers.filter(|_| engine.shares_image_step(size)) else {
        return engine.trace(pixels, size, request);
    };
    if STATE.with(|s| std::mem::take(&mut s.borrow_mut().tower_to_share)) {
        h.share_tower(&engine.model.vision);
    }
    if ImageHelpers::count(h) == 0 {
        return engine.trace(pixels, size, request);
    }
    match engine.trace_shared(pixels.clone(), size, request, h).await {
        Ok(trace) => Ok(trace),
        Err(err) => {
            web_sys::console::warn_1(&format!("the image step runs on the engine alone from now on: {err}").into());
            h.release_tower();
            engine.trace(pixels, size, request)
        }
    }
}

/// Explain `req`'s prompts and send their maps; what their words need, where maps were sent.
async fn explain(mut req: ExplainRequest) -> Result<Option<WordsJob>, (ErrorAbout, LegradError)> {
    let (engine, image, cached, helpers) = STATE.with(|s| {
        let s = s.borrow();
        (s.engine.clone(), s.image.clone(), s.trace.clone(), s.helpers.clone())
    });
    let shared = helpers.clone();
    let helpers = helpers.as_deref().map(|h| h as &dyn legrad::explain::rows::RowHelpers);
    let engine = engine.ok_or((ErrorAbout::Model, LegradError::Input("the model is still loading".into())))?;
    let (image_id, image) = image.ok_or((ErrorAbout::Image, LegradError::Input("drop an image first".into())))?;
    if image_id != req.image_id {
        return Ok(None); // an answer for an image that is gone
    }
    if req.methods.is_empty() {
        return Err((ErrorAbout::Explain, LegradError::Input("choose a method".into())));
    }
    // Methods this model's family does not run (the baselines on SigLIP) are left out; the
    // model's notes say so. Only those asked: the error says why.
    let head = &engine.model.vision.weights.head;
    if let Some(err) = req.methods.iter().find_map(|m| m.supports(head).err())
        && req.methods.iter().all(|m| m.supports(head).is_err())
    {
        return Err((ErrorAbout::Explain, err));
    }
    req.methods.retain(|m| m.supports(head).is_ok());
    let options = ExplainOptions { layer_index: req.layer_index };
    let e = |about| move |err: LegradError| (about, err);
    let prompts = engine.prepare(&req.prompts, req.template.as_deref()).map_err(e(ErrorAbout::Prompt))?;
    let request = engine.request_for(&req.methods, &options).map_err(e(ErrorAbout::Explain))?;
    let t0 = Instant::now();
    let input = if req.keep_aspect {
        InputSize::keep_aspect(req.size as usize, image.width, image.height, engine.model.config.vision.patch_size)
    } else {
        InputSize::square(req.size as usize)
    };
    let reuse = cached.filter(|c| c.image_id == image_id && c.size == input && c.request.covers(&request));
    let traced = reuse.is_none();
    let cached = match reuse {
        Some(c) => c,
        None => {
            let pixels = image.to_pixels(input.height, input.width).map_err(e(ErrorAbout::Image))?;
            let rgb = image.resize_rgb(input.width as u32, input.height as u32).map_err(e(ErrorAbout::Image))?;
            let trace = image_step(&engine, pixels, input, &request, shared.as_deref())
                .await
                .map_err(e(ErrorAbout::Explain))?;
            ready_for_prompts(&engine, &trace, &req.methods, &options, shared.as_deref())
                .await
                .map_err(e(ErrorAbout::Explain))?;
            let c = Rc::new(CachedTrace { image_id, size: input, request: request.clone(), trace, rgb });
            STATE.with(|s| s.borrow_mut().trace = Some(c.clone()));
            c
        }
    };
    let image_ms = if traced { t0.elapsed().as_secs_f64() * 1e3 } else { 0.0 };
    engine.take_steps(); // what warm-ups spent is not this answer's
    let t1 = Instant::now();
    let mut maps: Vec<f32> = Vec::new();
    let mut results = Vec::new();
    let mut size = (0, 0);
    let mut grid = (0, 0);
    let (mut layers, mut layer_methods, mut per_layer) = (Vec::new(), Vec::new(), Vec::new());
    for method in &req.methods {
        // The engine keeps each prompt's map with the trace: only new lines are computed.
        let out = engine
            .explain_cached(&cached.trace, &prompts, *method, &options, helpers)
            .await
            .map_err(e(ErrorAbout::Explain))?;
        for r in &out {
            size = r.map.size;
            grid = r.map.grid;
            maps.extend_from_slice(&r.map.map);
        }
        // Each layer's raw grid map, for the page's layer strip (LeGrad's; the baselines have none).
        let has_layers = !out.is_empty() && out.iter().all(|r| !r.map.per_layer.is_empty());
        layer_methods.push(has_layers);
        if has_layers {
            layers = out[0].map.per_layer.iter().map(|(l, _)| *l).collect();
            for r in &out {
                for (_, m) in &r.map.per_layer {
                    per_layer.extend_from_slice(m);
                }
            }
        }
        if results.is_empty() {
            results = out
                .iter()
                .map(|r| PromptResult {
                    prompt: r.prompt.clone(),
                    text: r.text.clone(),
                    score: r.score,
                    truncated: r.truncated,
                    constant: r.map.constant,
                    presence: r.presence,
                })
                .collect();
        }
    }
    let explain_ms = t1.elapsed().as_secs_f64() * 1e3;
    let steps = engine.take_steps();
    // The overlay is drawn on what the model saw, cropped to the maps (grid × patch).
    let full = input.width;
    let rgb: Vec<u8> =
        (0..size.0).flat_map(|y| cached.rgb[y * full * 3..(y * full + size.1) * 3].iter().copied()).collect();
    let ready = MapsReady {
        seq: req.seq,
        image_id,
        size,
        input: (input.height, input.width),
        grid,
        layers,
        layer_methods,
        methods: req.methods.clone(),
        prompts: results,
        image_ms,
        explain_ms,
        text_ms: steps.text_ms,
        traced,
        memory: engine_memory(&engine),
    };
    if gpu_lost_now() {
        return Ok(None); // read from a lost device: not sent (the caller explains again on the CPU)
    }
    post(&Response::Maps(ready), vec![bytes_to_buffer(&rgb), f32_to_buffer(&maps), f32_to_buffer(&per_layer)]);
    Ok(Some(WordsJob { seq: req.seq, image_id, trace: cached, prompts, options }))
}

/// A new trace made ready for its prompts, `methods`' share of the work done with the image:
/// the embedding read (which waits for the image forward, so the image's timing is honest);
/// on the CPU the helpers get their rows first, taking them while this thread makes the
/// score's Jacobians (`warm_up_prompts`); on a GPU the first trace at a grid compiles what every
/// prompt count needs there, so that typing never waits for a compiler (once per grid).
async fn ready_for_prompts(
    engine: &Engine,
    trace: &ImageTrace,
    methods: &[legrad::Method],
    options: &ExplainOptions,
    helpers: Option<&Helpers>,
) -> Result<(), LegradError> {
    legrad::engine::read_f32(trace.embedding.clone()).await?;
    for &method in methods {
        if let Some(h) = helpers {
            engine.prime_helpers(trace, method, options, h).await?;
        }
        engine.warm_up_prompts(trace, method, options).await?;
    }
    Ok(())
}

/// Browsers hold images of any size; the model needs at most 448 x 448, so the limits only
/// guard memory (an image bomb is refused, not decoded).
const DECODE_LIMITS: DecodeLimits =
    DecodeLimits { max_pixels: 64_000_000, max_side: 16_384, max_alloc_bytes: 512 << 20 };

/// One gallery image for one prompt (LeGrad): its trace kept from an earlier prompt, or decoded
/// and traced now (the decoded image is let go before the prompt runs: only the thumbnail
/// stays); answered with the thumbnail and the map at grid resolution.
async fn gallery_item(req: GalleryRequest, buffers: &[js_sys::ArrayBuffer]) -> Result<(), LegradError> {
    let (engine, helpers) = STATE.with(|s| {
        let s = s.borrow();
        (s.engine.clone(), s.helpers.clone())
    });
    let engine = engine.ok_or_else(|| LegradError::Input("the model is still loading".into()))?;
    let method = legrad::Method::LeGrad;
    let options = ExplainOptions { layer_index: req.layer_index };
    let request = engine.request_for(&[method], &options)?;
    let t0 = Instant::now();
    let kept = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let at = s.gallery.iter().position(|g| {
            g.item == req.item
                && g.size == req.size
                && g.keep_aspect == req.keep_aspect
                && g.trace.request.covers(&request)
        });
        at.and_then(|i| s.gallery.remove(i))
    });
    let traced = kept.is_none();
    let entry = match kept {
        Some(g) => g,
        None => {
            let bytes = buffers.first().map(buffer_to_bytes).unwrap_or_default();
            let img = decode(&bytes, &DECODE_LIMITS)?;
            drop(bytes);
            let patch = engine.model.config.vision.patch_size;
            let input = if req.keep_aspect {
                InputSize::keep_aspect(req.size as usize, img.width, img.height, patch)
            } else {
                InputSize::square(req.size as usize)
            };
            let pixels = img.to_pixels(input.height, input.width)?;
            let thumb = img.display_rgb(GALLERY_THUMB_SIDE)?;
            let photo = (img.width, img.height);
            drop(img);
            let trace = image_step(&engine, pixels, input, &request, helpers.as_deref()).await?;
            ready_for_prompts(&engine, &trace, &[method], &options, helpers.as_deref()).await?;
            Rc::new(GalleryTrace {
                item: req.item,
                keep_aspect: req.keep_aspect,
                size: req.size,
                input,
                trace,
                photo,
                thumb,
            })
        }
    };
    let image_ms = if traced { t0.elapsed().as_secs_f64() * 1e3 } else { 0.0 };
    let t1 = Instant::now();
    let prompts = engine.prepare(std::slice::from_ref(&req.prompt), req.template.as_deref())?;
    let rows = helpers.as_deref().map(|h| h as &dyn legrad::explain::rows::RowHelpers);
    let out = engine.explain_cached(&entry.trace, &prompts, method, &options, rows).await?;
    let r = out.first().ok_or_else(|| LegradError::Backend("no map came for the prompt".into()))?;
    let explain_ms = t1.elapsed().as_secs_f64() * 1e3;
    let ready = GalleryItem {
        run: req.run,
        item: req.item,
        photo: entry.photo,
        thumb: (entry.thumb.0, entry.thumb.1),
        input: (entry.input.height, entry.input.width),
        grid: r.map.grid,
        patch: entry.trace.patch_size,
        order: method.map_order(&engine.model.vision.weights.head),
        score: r.score,
        presence: r.presence,
        constant: r.map.constant,
        traced,
        image_ms,
        explain_ms,
        memory: engine_memory(&engine),
    };
    let buffers = vec![bytes_to_buffer(&entry.thumb.2), f32_to_buffer(&r.map.grid_map)];
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.gallery.push_front(entry.clone());
        s.gallery.truncate(GALLERY_TRACES);
    });
    if gpu_lost_now() {
        return Err(LegradError::Backend("the GPU was lost".into()));
    }
    post(&Response::GalleryItem(ready), buffers);
    Ok(())
}

fn engine_memory(engine: &Engine) -> EngineMemory {
    let wasm_bytes = wasm_bindgen::memory()
        .dyn_into::<js_sys::WebAssembly::Memory>()
        .map(|m| m.buffer().unchecked_into::<js_sys::ArrayBuffer>().byte_length() as u64)
        .unwrap_or(0);
    let gpu = legrad::device_stats::gpu_memory(&engine.device());
    EngineMemory { wasm_bytes, gpu_in_use_bytes: gpu.map(|g| g.0), gpu_reserved_bytes: gpu.map(|g| g.1) }
}
