//! The app's state, the engine's answers folded into it, and the layout.

use std::sync::Arc;
use std::time::Duration;

use legrad::explain::Method;
use legrad::overlay::Colormap;
use leptos::prelude::*;

use crate::bridge;
use crate::components::{Controls, Header, ImagePanel, ModelPanel, PromptPanel, Results, StatusBar};
use crate::protocol::*;

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
            size: RwSignal::new(448),
            layer_index: RwSignal::new(-2),
            opacity: RwSignal::new(0.6),
            colormap: RwSignal::new(Colormap::Jet),
            results: RwSignal::new(None),
            pending: RwSignal::new(false),
            explain_error: RwSignal::new(None),
            engine_error: RwSignal::new(None),
            next_image_id: StoredValue::new(1),
            next_seq: StoredValue::new(1),
            timer: StoredValue::new(None),
        }
    }

    /// The prompts typed, one per line, blanks skipped.
    pub fn prompts(&self) -> Vec<String> {
        self.prompts_text.get().lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect()
    }

    pub fn load_model(&self, source: ModelSource, buffers: Vec<js_sys::ArrayBuffer>, name: String) {
        self.model.set(ModelStatus::Loading(name));
        self.results.set(None);
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
                // The model's own size when the reference's 448 makes no sense for it.
                if summary.native_size * 2 < self.size.get_untracked() as usize && summary.native_size < 224 {
                    self.size.set((summary.native_size * 2) as u32);
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
                // The last keystroke wins: an answer to an older request is dropped.
                if ready.seq + 1 < self.next_seq.get_value() {
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
                    self.explain_error.set(Some(message));
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
    match started {
        Ok(()) => {
            let query = web_sys::window().and_then(|w| w.location().search().ok()).unwrap_or_default();
            bridge::send(&Request::Init { backend: BackendRequest::from_query(&query) }, vec![]);
            bridge::send(&Request::LoadModel(ModelSource::Default), vec![]);
        }
        Err(e) => state.engine_error.set(Some(e)),
    }
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
