//! The app's state, the engine's answers folded into it, and the layout.

use std::sync::Arc;
use std::time::Duration;

use legrad::Method;
use legrad::overlay::Colormap;
use leptos::prelude::*;

use crate::bridge;
pub use crate::clock::now_ms;
use crate::components::{
    Controls, Disclosure, Gallery, Header, ImagePanel, ModelPanel, PromptPanel, Results, StatusBar,
};
use crate::gallery_run::GalleryHost;
pub use crate::gallery_run::GalleryState;
use crate::protocol::*;
use crate::share::Shared;
pub use crate::view::{Original, Results, VIEW_MAX_SIDE, Words};

/// What the page shows for the model.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelStatus {
    Loading(String),
    Ready(ModelSummary),
    Failed(String),
}

/// The image maps are computed for. A file that cannot be read leaves the one before in place
/// (`AppState::image_error` says why beside it).
#[derive(Clone, Debug, PartialEq)]
pub enum ImageStatus {
    Empty,
    /// A new image is being read; `before` comes back if it cannot be.
    Decoding {
        name: String,
        before: Box<ImageStatus>,
    },
    Ready {
        id: u64,
        name: String,
        width: u32,
        height: u32,
    },
}

/// All the page's state, shared through context. Signals are `Copy`.
#[derive(Clone, Copy)]
pub struct AppState {
    pub backend: RwSignal<Option<BackendChoice>>,
    /// The engine's module has arrived and answers (until then the page takes an image and
    /// prompts, and says what it waits for).
    pub engine_ready: RwSignal<bool>,
    pub model: RwSignal<ModelStatus>,
    pub progress: RwSignal<Option<(Stage, u64, Option<u64>)>>,
    pub image: RwSignal<ImageStatus>,
    /// Why the last file dropped, picked, pasted or asked for could not be the image.
    pub image_error: RwSignal<Option<String>>,
    /// The images maps are drawn over, newest last: the current one and the one before (a
    /// camera's next frame arrives while the maps shown are still the last frame's).
    pub originals: RwSignal<Vec<Original>>,
    pub prompts_text: RwSignal<String>,
    pub template_on: RwSignal<bool>,
    pub method: RwSignal<Method>,
    pub compare: RwSignal<bool>,
    pub size: RwSignal<u32>,
    /// The input keeps the photo's shape (off: square, as the reference).
    pub keep_aspect: RwSignal<bool>,
    pub layer_index: RwSignal<i64>,
    /// The card on the large view: (method, prompt) of the results.
    pub selected: RwSignal<(usize, usize)>,
    /// The layer of the strip on the large view (None: the range's sum).
    pub selected_layer: RwSignal<Option<usize>>,
    pub opacity: RwSignal<f32>,
    pub colormap: RwSignal<Colormap>,
    /// What the large view shows: the heatmap, the selected prompt's mask, or every prompt's.
    pub view_mode: RwSignal<ViewMode>,
    /// The masks' threshold on the normalised map (`legrad::masks`).
    pub mask_threshold: RwSignal<f32>,
    pub results: RwSignal<Option<Results>>,
    /// The results' words (they follow the maps: `view::Words`).
    pub words: RwSignal<Words>,
    /// An explanation is on its way.
    pub pending: RwSignal<bool>,
    pub explain_error: RwSignal<Option<String>>,
    pub engine_error: RwSignal<Option<String>>,
    /// The model's URL when it came from one (it goes into shared links).
    pub model_url: RwSignal<Option<String>>,
    /// Said once when the page opened from a shared link.
    pub shared_note: RwSignal<Option<String>>,
    /// The camera runs (its frames replace the image as they come).
    pub camera_on: RwSignal<bool>,
    /// Frames per second, the latency of the last frame (capture to map, milliseconds) and the
    /// frames explained since the camera started.
    pub camera_stats: RwSignal<Option<(f64, f64, u64)>>,
    /// The camera frame on its way (its image id and when it was taken): one at a time, so
    /// that the newest frame always wins and no queue grows.
    frame: StoredValue<Option<(u64, f64)>>,
    frame_times: StoredValue<std::collections::VecDeque<f64>>,
    /// The image id of the last `SetImage` (its `ImageReady` is the one the page waits for).
    awaited_image: StoredValue<Option<u64>>,
    /// The user (or a link) chose the size: a new model keeps it instead of its own default.
    size_by_hand: StoredValue<bool>,
    next_image_id: StoredValue<u64>,
    next_seq: StoredValue<u64>,
    timer: StoredValue<Option<TimeoutHandle>>,
    /// Many images, one prompt (gallery_run.rs).
    pub gallery: GalleryState,
}

pub use crate::share::ViewMode;

pub const TEMPLATE: &str = legrad::config::DEFAULT_TEMPLATE;

impl AppState {
    fn new() -> Self {
        Self {
            backend: RwSignal::new(None),
            engine_ready: RwSignal::new(false),
            model: RwSignal::new(ModelStatus::Loading(crate::protocol::DEFAULT_MODEL_NAME.into())),
            // The engine's module is the first thing the page waits for (`worker.js` reports
            // its bytes once they come).
            progress: RwSignal::new(Some((Stage::Engine, 0, None))),
            image: RwSignal::new(ImageStatus::Empty),
            image_error: RwSignal::new(None),
            originals: RwSignal::new(Vec::new()),
            prompts_text: RwSignal::new(String::new()),
            template_on: RwSignal::new(true),
            method: RwSignal::new(Method::LeGrad),
            compare: RwSignal::new(false),
            size: RwSignal::new(224),
            keep_aspect: RwSignal::new(true),
            layer_index: RwSignal::new(-2),
            selected: RwSignal::new((0, 0)),
            selected_layer: RwSignal::new(None),
            opacity: RwSignal::new(0.6),
            colormap: RwSignal::new(Colormap::Jet),
            view_mode: RwSignal::new(ViewMode::Heatmap),
            mask_threshold: RwSignal::new(legrad::masks::DEFAULT_THRESHOLD),
            results: RwSignal::new(None),
            words: RwSignal::new(Words::default()),
            pending: RwSignal::new(false),
            explain_error: RwSignal::new(None),
            engine_error: RwSignal::new(None),
            model_url: RwSignal::new(None),
            shared_note: RwSignal::new(None),
            camera_on: RwSignal::new(false),
            camera_stats: RwSignal::new(None),
            frame: StoredValue::new(None),
            frame_times: StoredValue::new(Default::default()),
            awaited_image: StoredValue::new(None),
            size_by_hand: StoredValue::new(false),
            next_image_id: StoredValue::new(1),
            next_seq: StoredValue::new(1),
            timer: StoredValue::new(None),
            gallery: GalleryState::new(),
        }
    }

    fn apply_shared(&self, shared: &Shared) {
        if shared.is_empty() {
            return;
        }
        if let Some(p) = &shared.prompts {
            self.prompts_text.set(p.clone());
        }
        if let Some(t) = shared.template {
            self.template_on.set(t);
        }
        if let Some(m) = shared.method {
            self.method.set(m);
        }
        if let Some(c) = shared.compare {
            self.compare.set(c);
        }
        if let Some(size) = shared.size {
            self.choose_size(size);
        }
        if let Some(square) = shared.square {
            self.keep_aspect.set(!square);
        }
        if let Some(k) = shared.layers {
            self.layer_index.set(k);
        }
        if let Some(v) = shared.view {
            self.view_mode.set(v);
        }
        if let Some(t) = shared.threshold {
            self.mask_threshold.set(t);
        }
        self.shared_note.set(Some(
            "Opened from a link: its prompts and settings are restored. A link never holds the image: drop it again."
                .into(),
        ));
    }

    /// The state a link carries.
    pub fn to_shared(&self) -> Shared {
        Shared {
            prompts: Some(self.prompts_text.get()),
            template: Some(self.template_on.get()),
            method: Some(self.method.get()),
            compare: Some(self.compare.get()),
            size: Some(self.size.get()),
            square: Some(!self.keep_aspect.get()),
            layers: Some(self.layer_index.get()),
            view: Some(self.view_mode.get()),
            threshold: Some(self.mask_threshold.get()),
            model_url: self.model_url.get(),
        }
    }

    /// The prompts typed, one per line, blanks skipped.
    pub fn prompts(&self) -> Vec<String> {
        self.prompts_text.get().lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    /// A size picked in the settings (kept across models).
    pub fn choose_size(&self, size: u32) {
        self.size_by_hand.set_value(true);
        self.size.set(size);
    }

    pub fn load_model(&self, source: ModelSource, buffers: Vec<js_sys::ArrayBuffer>, name: String) {
        self.model_url.set(match &source {
            ModelSource::Url { url, .. } => Some(url.clone()),
            _ => None,
        });
        self.model.set(ModelStatus::Loading(name));
        self.results.set(None);
        self.pending.set(false);
        self.explain_error.set(None);
        bridge::send(&Request::LoadModel(source), buffers);
    }

    pub fn set_image(&self, name: String, bytes: js_sys::ArrayBuffer) {
        let id = self.next_image_id.get_value();
        self.next_image_id.set_value(id + 1);
        // An image dropped or picked replaces the camera.
        if self.camera_on.get_untracked() {
            self.camera_stopped();
        }
        self.awaited_image.set_value(Some(id));
        // The image and its maps stay until the new one is ready (or back, if it cannot be read).
        let before = match self.image.get_untracked() {
            ImageStatus::Decoding { before, .. } => before,
            other => Box::new(other),
        };
        self.image.set(ImageStatus::Decoding { name: name.clone(), before });
        self.image_error.set(None);
        bridge::send(&Request::SetImage { id, name }, vec![bytes]);
    }

    /// A camera frame is on its way (the camera waits for its maps before taking the next).
    pub fn frame_busy(&self) -> bool {
        self.frame.get_value().is_some()
    }

    /// A camera frame (RGBA of `width x height`) as the new image; explained as soon as the
    /// worker has it. The results stay until its maps replace them.
    pub fn send_frame(&self, width: u32, height: u32, rgba: js_sys::ArrayBuffer) {
        let id = self.next_image_id.get_value();
        self.next_image_id.set_value(id + 1);
        self.frame.set_value(Some((id, now_ms())));
        bridge::send(&Request::SetFrame { id, width, height }, vec![rgba]);
    }

    /// The frame in flight is done (its maps came, or nothing will come for it).
    fn frame_done(&self, maps_for: Option<u64>) {
        let Some((id, t0)) = self.frame.get_value() else { return };
        if maps_for.is_some_and(|m| m != id) {
            return;
        }
        self.frame.set_value(None);
        if maps_for.is_none() {
            return;
        }
        let now = now_ms();
        let mut times = self.frame_times.get_value();
        times.push_back(now);
        while times.front().is_some_and(|t| now - t > 2000.0) {
            times.pop_front();
        }
        let span = now - times.front().copied().unwrap_or(now);
        let fps = if times.len() > 1 && span > 0.0 { (times.len() - 1) as f64 * 1000.0 / span } else { 0.0 };
        self.frame_times.set_value(times);
        let count = self.camera_stats.get_untracked().map_or(0, |s| s.2) + 1;
        self.camera_stats.set(Some((fps, now - t0, count)));
    }

    /// The camera stopped: nothing in flight is waited for.
    pub fn camera_stopped(&self) {
        self.frame.set_value(None);
        self.frame_times.set_value(Default::default());
        self.camera_stats.set(None);
        self.camera_on.set(false);
    }

    /// Ask for maps now (the debounce already happened).
    fn explain_now(&self) {
        // The gallery follows what is asked (a no-op while nothing changed).
        self.gallery.follow(*self);
        let ImageStatus::Ready { id, .. } = self.image.get_untracked() else { return self.frame_done(None) };
        if !matches!(self.model.get_untracked(), ModelStatus::Ready(_)) {
            return self.frame_done(None);
        }
        let prompts = self.prompts_text.with_untracked(|t| {
            t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>()
        });
        if prompts.is_empty() {
            self.results.set(None);
            self.pending.set(false);
            return self.frame_done(None);
        }
        let methods =
            if self.compare.get_untracked() { Method::ALL.to_vec() } else { vec![self.method.get_untracked()] };
        let seq = self.next_seq.get_value();
        self.next_seq.set_value(seq + 1);
        self.pending.set(true);
        bridge::send(
            &Request::Explain(ExplainRequest {
                seq,
                image_id: id,
                prompts,
                template: self.template_on.get_untracked().then(|| TEMPLATE.to_string()),
                methods,
                size: self.size.get_untracked(),
                keep_aspect: self.keep_aspect.get_untracked(),
                layer_index: self.layer_index.get_untracked(),
            }),
            vec![],
        );
    }

    /// Explain after a pause in typing; a newer call replaces a waiting one.
    pub fn schedule_explain(&self) {
        if let Some(handle) = self.timer.get_value() {
            handle.clear();
        }
        let state = *self;
        let handle = set_timeout_with_handle(move || state.explain_now(), Duration::from_millis(150));
        self.timer.set_value(handle.ok());
    }

    fn on_response(&self, response: Response, buffers: Vec<js_sys::ArrayBuffer>) {
        if !matches!(response, Response::Progress { stage: Stage::Engine, .. }) && !self.engine_ready.get_untracked() {
            self.engine_ready.set(true);
            if self.progress.get_untracked().is_some_and(|(stage, ..)| stage == Stage::Engine) {
                self.progress.set(None);
            }
        }
        match response {
            Response::Backend(choice) => self.backend.set(Some(choice)),
            Response::Progress { stage, done, total } => self.progress.set(Some((stage, done, total))),
            Response::ModelReady(summary) => {
                self.progress.set(None);
                // Each model's own default size, unless one was chosen.
                if !self.size_by_hand.get_value() {
                    self.size.set(summary.default_size as u32);
                }
                self.model.set(ModelStatus::Ready(summary));
                self.gallery.model_changed(*self);
                self.schedule_explain();
            }
            Response::ImageReady { id, width, height, display, view } => {
                let frame = self.frame.get_value().is_some_and(|(f, _)| f == id);
                let name = match self.image.get_untracked() {
                    _ if frame => Some("camera".to_string()),
                    // The image asked for last (not a camera frame that was still on its way).
                    ImageStatus::Decoding { name, .. } if self.awaited_image.get_value() == Some(id) => {
                        // A new image: the maps and pictures of the one before go.
                        self.originals.set(Vec::new());
                        self.results.set(None);
                        Some(name)
                    }
                    // A frame that arrived after the camera stopped: the worker explains it
                    // from now on, so the page must too.
                    ImageStatus::Ready { id: current, name, .. } if name == "camera" && id > current => Some(name),
                    _ => None,
                };
                if let Some(name) = name {
                    let rgb = buffers.first().map(buffer_to_bytes).unwrap_or_default();
                    let view_rgb = buffers.get(1).map(buffer_to_bytes).unwrap_or_default();
                    let size = |(w, h): (u32, u32)| (w as usize, h as usize);
                    if let Some(o) = Original::new(id, size(display), rgb, size(view), view_rgb) {
                        self.originals.update(|v| {
                            v.push(o);
                            let extra = v.len().saturating_sub(2);
                            v.drain(..extra);
                        });
                    }
                    self.image.set(ImageStatus::Ready { id, name, width, height });
                    // A camera frame is explained at once (the camera paces itself).
                    if frame { self.explain_now() } else { self.schedule_explain() }
                }
            }
            Response::Maps(ready) => {
                self.frame_done(Some(ready.image_id));
                // The last keystroke wins: an answer to an older request is dropped, and so is one
                // that arrives while another model loads (it is the old model's; the new one
                // explains again when it is ready).
                if ready.seq + 1 < self.next_seq.get_value()
                    || !matches!(self.model.get_untracked(), ModelStatus::Ready(_))
                {
                    return;
                }
                self.pending.set(false);
                self.explain_error.set(None);
                let rgb = buffers.first().map(buffer_to_bytes).unwrap_or_default();
                let maps = buffers.get(1).map(buffer_to_f32).unwrap_or_default();
                let per_layer = buffers.get(2).map(buffer_to_f32).unwrap_or_default();
                // The large view keeps its card and layer while they exist.
                let (m, p) = self.selected.get_untracked();
                let valid = if ready.methods.len() > 1 {
                    p == 0 && m < ready.methods.len()
                } else {
                    m == 0 && p < ready.prompts.len()
                };
                if !valid {
                    self.selected.set((0, 0));
                }
                if self.selected_layer.get_untracked().is_some_and(|l| l >= ready.layers.len()) {
                    self.selected_layer.set(None);
                }
                let words =
                    self.results.with_untracked(|r| Words::carried(r.as_ref(), &self.words.get_untracked(), &ready));
                // The maps first: the card list follows them before the words reach any card.
                self.results.set(Some(Results {
                    ready,
                    rgb: Arc::new(rgb),
                    maps: Arc::new(maps),
                    per_layer: Arc::new(per_layer),
                }));
                self.words.set(words);
            }
            Response::Words(words) => {
                let mut w = self.words.get_untracked();
                if w.take(words) {
                    self.words.set(w);
                }
            }
            Response::GalleryItem(ready) => self.gallery.on_item(*self, ready, buffers),
            Response::GalleryFailed { run, item, message } => self.gallery.on_failed(*self, run, item, message),
            Response::Error { about, message } => {
                self.frame_done(None);
                self.on_error(about, message)
            }
        }
    }

    fn on_error(&self, about: ErrorAbout, message: String) {
        match about {
            ErrorAbout::Model => {
                self.progress.set(None);
                self.model.set(ModelStatus::Failed(message));
            }
            ErrorAbout::Image => {
                self.pending.set(false);
                // The image before stays, with its maps; prompts typed meanwhile are explained on it.
                if let ImageStatus::Decoding { before, .. } = self.image.get_untracked() {
                    self.image.set(*before);
                    self.schedule_explain();
                }
                self.image_error.set(Some(message));
            }
            ErrorAbout::Prompt | ErrorAbout::Explain => {
                self.pending.set(false);
                // The same for an error about an explanation the old model was giving.
                if matches!(self.model.get_untracked(), ModelStatus::Ready(_)) {
                    self.explain_error.set(Some(message));
                }
            }
            ErrorAbout::Backend => self.engine_error.set(Some(message)),
        }
    }
}

/// What the gallery reads and does through the page's state (gallery_run.rs does not know it).
impl GalleryHost for AppState {
    fn prompts(&self) -> Vec<String> {
        AppState::prompts(self)
    }

    fn asked(&self) -> (Option<String>, u32, bool, i64) {
        (
            self.template_on.get_untracked().then(|| TEMPLATE.to_string()),
            self.size.get_untracked(),
            self.keep_aspect.get_untracked(),
            self.layer_index.get_untracked(),
        )
    }

    fn ready(&self) -> bool {
        self.engine_ready.get_untracked() && matches!(self.model.get_untracked(), ModelStatus::Ready(_))
    }

    fn open_image(&self, name: String, bytes: js_sys::ArrayBuffer, prompt: Option<usize>) {
        if let Some(i) = prompt {
            self.selected.set((0, i));
        }
        self.set_image(name, bytes);
    }

    fn look(&self) -> (f32, Colormap) {
        (self.opacity.get_untracked(), self.colormap.get_untracked())
    }
}

#[component]
pub fn App() -> impl IntoView {
    let state = AppState::new();
    provide_context(state);
    let started = bridge::start(move |response, buffers| state.on_response(response, buffers));
    // A shared link's state first (share.rs), so that the first explanation already uses it.
    let location = web_sys::window().map(|w| w.location());
    let shared = Shared::parse(&location.as_ref().and_then(|l| l.hash().ok()).unwrap_or_default());
    state.apply_shared(&shared);
    match started {
        Ok(()) => {
            let query = location.as_ref().and_then(|l| l.search().ok()).unwrap_or_default();
            let init =
                Request::Init { backend: BackendRequest::from_query(&query), threads: threads_from_query(&query) };
            bridge::send(&init, vec![]);
            match shared.model_url.clone() {
                Some(url) => state.load_model(ModelSource::url(url.clone()), vec![], url),
                None => bridge::send(&Request::LoadModel(ModelSource::Default), vec![]),
            }
        }
        Err(e) => state.engine_error.set(Some(e)),
    }
    // The fragment follows the state (replaced, not pushed: no history entry per keystroke).
    Effect::new(move |_| {
        let shared = state.to_shared();
        if shared.prompts.as_deref().unwrap_or("").trim().is_empty() && shared.model_url.is_none() {
            return;
        }
        if let Some(w) = web_sys::window()
            && let Ok(history) = w.history()
        {
            let _ = history.replace_state_with_url(
                &wasm_bindgen::JsValue::NULL,
                "",
                Some(&format!("#{}", shared.to_fragment())),
            );
        }
    });
    // Any change of what is asked re-explains (debounced).
    Effect::new(move |_| {
        state.prompts_text.track();
        state.template_on.track();
        state.method.track();
        state.compare.track();
        state.size.track();
        state.keep_aspect.track();
        state.layer_index.track();
        state.schedule_explain();
    });
    view! {
        <Header />
        <main class="layout">
            <section class="column inputs" aria-label="Inputs">
                <ImagePanel />
                <PromptPanel />
                <Disclosure label="Settings" testid="settings-disclosure"><Controls /></Disclosure>
                <Disclosure label="Model" testid="model-disclosure"><ModelPanel /></Disclosure>
            </section>
            <section class="column outputs" aria-label="Heatmaps">
                <Results />
            </section>
        </main>
        <Gallery />
        <StatusBar />
    }
}
