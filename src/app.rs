//! The app's state, the engine's answers folded into it, and the layout.

use std::sync::Arc;
use std::time::Duration;

use legrad::explain::Method;
use legrad::overlay::Colormap;
use leptos::prelude::*;

use crate::bridge;
use crate::components::{Controls, Header, ImagePanel, ModelPanel, PromptPanel, Results, StatusBar};
use crate::protocol::*;
use crate::share::Shared;

/// What the page shows for the model.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelStatus {
    Loading(String),
    Ready(ModelSummary),
    Failed(String),
}

#[derive(Clone, Debug, PartialEq)]
pub enum ImageStatus {
    Empty,
    Decoding(String),
    Ready { id: u64, name: String, width: u32, height: u32 },
    Failed(String),
}

/// The maps of the latest answer.
#[derive(Clone, Debug, PartialEq)]
pub struct Results {
    pub ready: MapsReady,
    /// The image as the model saw it, RGB, `size.0 * size.1 * 3`.
    pub rgb: Arc<Vec<u8>>,
    /// Method-major, then prompt: `size.0 * size.1` values each.
    pub maps: Arc<Vec<f32>>,
}

impl Results {
    pub fn map(&self, method: usize, prompt: usize) -> &[f32] {
        let n = self.ready.size.0 * self.ready.size.1;
        let p = self.ready.prompts.len();
        &self.maps[(method * p + prompt) * n..][..n]
    }
}

/// All the page's state, shared through context. Signals are `Copy`.
#[derive(Clone, Copy)]
pub struct AppState {
    pub backend: RwSignal<Option<BackendChoice>>,
    pub model: RwSignal<ModelStatus>,
    pub progress: RwSignal<Option<(Stage, u64, Option<u64>)>>,
    pub image: RwSignal<ImageStatus>,
    pub prompts_text: RwSignal<String>,
    pub template_on: RwSignal<bool>,
    pub method: RwSignal<Method>,
    pub compare: RwSignal<bool>,
    pub size: RwSignal<u32>,
    pub layer_index: RwSignal<i64>,
    pub opacity: RwSignal<f32>,
    pub colormap: RwSignal<Colormap>,
    pub results: RwSignal<Option<Results>>,
    /// An explanation is on its way.
    pub pending: RwSignal<bool>,
    pub explain_error: RwSignal<Option<String>>,
    pub engine_error: RwSignal<Option<String>>,
    /// The model's URL when it came from one (it goes into shared links).
    pub model_url: RwSignal<Option<String>>,
    /// Said once when the page opened from a shared link.
    pub shared_note: RwSignal<Option<String>>,
    /// The user (or a link) chose the size: a new model keeps it instead of its own default.
    size_by_hand: StoredValue<bool>,
    next_image_id: StoredValue<u64>,
    next_seq: StoredValue<u64>,
    timer: StoredValue<Option<TimeoutHandle>>,
}

pub const TEMPLATE: &str = legrad::engine::DEFAULT_TEMPLATE;

impl AppState {
    fn new() -> Self {
        Self {
            backend: RwSignal::new(None),
            model: RwSignal::new(ModelStatus::Loading(crate::models::DEFAULT_MODEL_NAME.into())),
            progress: RwSignal::new(None),
            image: RwSignal::new(ImageStatus::Empty),
            prompts_text: RwSignal::new(String::new()),
            template_on: RwSignal::new(true),
            method: RwSignal::new(Method::LeGrad),
            compare: RwSignal::new(false),
            size: RwSignal::new(224),
            layer_index: RwSignal::new(-2),
            opacity: RwSignal::new(0.6),
            colormap: RwSignal::new(Colormap::Jet),
            results: RwSignal::new(None),
            pending: RwSignal::new(false),
            explain_error: RwSignal::new(None),
            engine_error: RwSignal::new(None),
            model_url: RwSignal::new(None),
            shared_note: RwSignal::new(None),
            size_by_hand: StoredValue::new(false),
            next_image_id: StoredValue::new(1),
            next_seq: StoredValue::new(1),
            timer: StoredValue::new(None),
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
        if let Some(k) = shared.layers {
            self.layer_index.set(k);
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
            layers: Some(self.layer_index.get()),
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
            ModelSource::Url { url } => Some(url.clone()),
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
        self.image.set(ImageStatus::Decoding(name.clone()));
        self.results.set(None);
        bridge::send(&Request::SetImage { id, name }, vec![bytes]);
    }

    /// Ask for maps now (the debounce already happened).
    fn explain_now(&self) {
        let ImageStatus::Ready { id, .. } = self.image.get_untracked() else { return };
        if !matches!(self.model.get_untracked(), ModelStatus::Ready(_)) {
            return;
        }
        let prompts = self.prompts_text.with_untracked(|t| {
            t.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect::<Vec<_>>()
        });
        if prompts.is_empty() {
            self.results.set(None);
            self.pending.set(false);
            return;
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
                self.schedule_explain();
            }
            Response::ImageReady { id, width, height } => {
                if let ImageStatus::Decoding(name) = self.image.get_untracked() {
                    self.image.set(ImageStatus::Ready { id, name, width, height });
                    self.schedule_explain();
                }
            }
            Response::Maps(ready) => {
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
                self.results.set(Some(Results { ready, rgb: Arc::new(rgb), maps: Arc::new(maps) }));
            }
            Response::Error { about, message } => match about {
                ErrorAbout::Model => {
                    self.progress.set(None);
                    self.model.set(ModelStatus::Failed(message));
                }
                ErrorAbout::Image => {
                    self.pending.set(false);
                    self.image.set(ImageStatus::Failed(message));
                }
                ErrorAbout::Prompt | ErrorAbout::Explain => {
                    self.pending.set(false);
                    // The same for an error about an explanation the old model was giving.
                    if matches!(self.model.get_untracked(), ModelStatus::Ready(_)) {
                        self.explain_error.set(Some(message));
                    }
                }
                ErrorAbout::Backend => self.engine_error.set(Some(message)),
            },
        }
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
            bridge::send(&Request::Init { backend: BackendRequest::from_query(&query) }, vec![]);
            match shared.model_url.clone() {
                Some(url) => state.load_model(ModelSource::Url { url: url.clone() }, vec![], url),
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
        state.layer_index.track();
        state.schedule_explain();
    });
    view! {
        <Header />
        <main class="layout">
            <section class="column inputs" aria-label="Inputs">
                <ImagePanel />
                <PromptPanel />
                <Controls />
                <ModelPanel />
            </section>
            <section class="column outputs" aria-label="Heatmaps">
                <Results />
            </section>
        </main>
        <StatusBar />
    }
}
