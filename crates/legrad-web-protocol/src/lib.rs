//! The one boundary between the UI and the engine (which runs in a Web Worker): typed requests
//! and responses, sent as JSON with their binary payloads (image and model bytes, maps)
//! transferred as `ArrayBuffer`s. No tensors cross it.

use legrad::Method;
use serde::{Deserialize, Serialize};
use wasm_bindgen::{JsCast, JsValue};

/// The large view's long side at most, in pixels (a screen shows no more, and each new map is
/// drawn again while typing; exports use the photo's own size).
pub const VIEW_MAX_SIDE: u32 = 1600;

/// The name the page shows for [`ModelSource::Default`].
pub const DEFAULT_MODEL_NAME: &str = "Synthetic-scenes CLIP (default, offline)";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum ModelSource {
    /// The model shipped with the site (relative URL).
    Default,
    /// A checkpoint by URL, converted to q8 in the browser and kept in the Cache API. A SigLIP
    /// checkpoint needs its open_clip config and tokenizer: by these URLs, or (when absent)
    /// `open_clip_config.json` and `tokenizer.json` next to it, as the Hugging Face Hub lays
    /// them out.
    Url {
        url: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        config_url: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tokenizer_url: Option<String>,
    },
    /// A dropped or picked file; its bytes travel with the request, then those of `extra`'s
    /// files in order.
    File {
        name: String,
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        extra: Vec<ExtraFile>,
    },
}

/// A file that comes with a dropped checkpoint.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ExtraFile {
    /// open_clip's JSON config or transformers' config.json.
    Config,
    /// SigLIP's tokenizer.json.
    Tokenizer,
}

impl ModelSource {
    /// A checkpoint by URL, its config and tokenizer found next to it when needed.
    pub fn url(url: impl Into<String>) -> Self {
        Self::Url { url: url.into(), config_url: None, tokenizer_url: None }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ExplainRequest {
    /// Increases with every request; the UI keeps only the latest answer.
    pub seq: u64,
    pub image_id: u64,
    pub prompts: Vec<String>,
    /// `None`: prompts as typed.
    pub template: Option<String>,
    pub methods: Vec<Method>,
    /// The long side of the model's input (the side of the square when `keep_aspect` is off).
    pub size: u32,
    /// The input keeps the image's shape (`InputSize::keep_aspect`); off: square, as the
    /// reference.
    pub keep_aspect: bool,
    pub layer_index: i64,
}

/// The backend the page asks for (`?backend=webgpu|cpu`; nothing: the engine decides).
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum BackendRequest {
    /// A GPU adapter that is hardware races the CPU at each model load; a software adapter
    /// (SwiftShader, llvmpipe, WARP) or none means the CPU.
    Auto,
    WebGpu,
    Cpu,
}

impl BackendRequest {
    /// From the page's query string.
    pub fn from_query(query: &str) -> Self {
        let query = query.trim_start_matches('?');
        match query.split('&').find_map(|kv| kv.strip_prefix("backend=")) {
            Some("cpu") => Self::Cpu,
            Some("webgpu" | "gpu") => Self::WebGpu,
            _ => Self::Auto,
        }
    }
}

/// `?threads=N` (1 to 16), if the query says so.
pub fn threads_from_query(query: &str) -> Option<u32> {
    let query = query.trim_start_matches('?');
    let n: u32 = query.split('&').find_map(|kv| kv.strip_prefix("threads="))?.parse().ok()?;
    (1..=16).contains(&n).then_some(n)
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Request {
    /// Initialise the compute backend. `threads`: how many threads the CPU path may use
    /// (`?threads=N`; none: one per core, at most 4).
    Init {
        backend: BackendRequest,
        #[serde(default)]
        threads: Option<u32>,
    },
    LoadModel(ModelSource),
    /// Cancel the running download.
    Cancel,
    /// A new image; its bytes travel with the request.
    SetImage {
        id: u64,
        name: String,
    },
    Explain(ExplainRequest),
    /// A camera frame, already decoded: RGBA bytes of `width x height` travel with it. Answered
    /// as `SetImage` is (`ImageReady`).
    SetFrame {
        id: u64,
        width: u32,
        height: u32,
    },
    /// One image of the gallery, its file's bytes with it: answered by `GalleryItem` or
    /// `GalleryFailed`. The page sends the next when the answer comes (one in flight: nothing
    /// queues, and Cancel is not sending the next).
    Gallery(GalleryRequest),
    /// The gallery was emptied: the engine lets go of the traces it kept for it.
    GalleryClear,
}

/// The gallery's traces the engine keeps, least recently used out first: a new prompt over the
/// last images of a run reuses them instead of decoding and tracing again. A bound by count: a
/// trace's size follows the model and the input size (the page bench prints the engine's
/// memory over a gallery run).
pub const GALLERY_TRACES: usize = 8;

/// A gallery thumbnail's long side, in pixels (what the page keeps per image, with the map at
/// grid resolution).
pub const GALLERY_THUMB_SIDE: u32 = 128;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GalleryRequest {
    /// The run it belongs to (a new prompt or set of images starts one; answers of an older run
    /// are dropped).
    pub run: u64,
    /// The image's number in the gallery: the engine keeps its trace by it.
    pub item: u64,
    pub name: String,
    pub prompt: String,
    pub template: Option<String>,
    pub size: u32,
    pub keep_aspect: bool,
    pub layer_index: i64,
}

/// One gallery image explained. Payload: the thumbnail (RGB bytes of `thumb`, the photo scaled
/// to [`GALLERY_THUMB_SIDE`]), then the map at grid
/// resolution (f32, min-max normalised: `legrad::maps::finish_maps` makes the map at the
/// model's input size from it, as the engine does).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GalleryItem {
    pub run: u64,
    pub item: u64,
    /// The photo's size and the thumbnail's, `(width, height)`.
    pub photo: (u32, u32),
    pub thumb: (u32, u32),
    /// `(height, width)` of the model's input and `(rows, cols)` of the patch grid.
    pub input: (usize, usize),
    pub grid: (usize, usize),
    pub patch: usize,
    pub order: legrad::maps::MapOrder,
    pub score: f32,
    pub presence: f32,
    pub constant: bool,
    /// The image was decoded and traced for this answer (false: a kept trace served).
    pub traced: bool,
    /// Milliseconds: decoding and the image forward (0 when a kept trace served), the prompt.
    pub image_ms: f64,
    pub explain_ms: f64,
    /// The engine's memory after this answer.
    pub memory: EngineMemory,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum Stage {
    /// The engine's own wasm module is on its way (reported by `www/worker.js` before the
    /// engine runs; the page's bridge turns it into this stage).
    Engine,
    Download,
    Convert,
    Store,
    Load,
    WarmUp,
}

impl Stage {
    pub fn label(self) -> &'static str {
        match self {
            Stage::Engine => "Downloading the engine",
            Stage::Download => "Downloading",
            Stage::Convert => "Converting to 8-bit",
            Stage::Store => "Storing in the browser",
            Stage::Load => "Loading",
            Stage::WarmUp => "Warming up",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ModelSummary {
    pub name: String,
    pub description: String,
    pub format: String,
    pub native_size: usize,
    /// The input size the page starts this model at: the default model's own (224, where it
    /// names 99% of its scenes), the reference demo's 448 for real checkpoints (twice the
    /// native size for a model trained below 224).
    pub default_size: usize,
    pub patch_size: usize,
    pub layers: usize,
    pub context_length: usize,
    /// Bytes downloaded (0 when loaded from the cache or shipped) and stored.
    pub downloaded_bytes: u64,
    pub stored_bytes: u64,
    pub from_cache: bool,
    pub notes: Vec<String>,
    /// Milliseconds: obtaining the bytes plus building the model; the first explanation.
    pub load_ms: f64,
    pub warmup_ms: f64,
    /// What a prompt's score is: "similarity" (CLIP's cosine) or "probability" (SigLIP's sigmoid).
    #[serde(default)]
    pub score_name: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PromptResult {
    pub prompt: String,
    pub text: String,
    pub score: f32,
    pub truncated: bool,
    pub constant: bool,
    /// Is it there at all, 0..1 (`legrad::presence`; below [`LIKELY_ABSENT`] the page says it
    /// is likely absent and dims its map).
    #[serde(default = "present")]
    pub presence: f32,
}

pub use legrad::presence::LIKELY_ABSENT;

fn present() -> f32 {
    1.0
}

/// One word of a prompt and how much of its score rests on it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordRelevance {
    pub word: String,
    pub relevance: f32,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MapsReady {
    pub seq: u64,
    pub image_id: u64,
    /// `(height, width)` of every map and of the image they overlay.
    pub size: (usize, usize),
    /// `(height, width)` of the model's input (the maps cover its top-left `size`).
    pub input: (usize, usize),
    /// `(rows, cols)` of the patch grid.
    pub grid: (usize, usize),
    /// The layers of the range, for the methods that have per-layer maps (LeGrad), in order.
    pub layers: Vec<usize>,
    /// Per method: its per-layer maps are in the third buffer.
    pub layer_methods: Vec<bool>,
    pub methods: Vec<Method>,
    pub prompts: Vec<PromptResult>,
    /// Milliseconds: the image forward (0 when the trace was cached) and the explanation.
    pub image_ms: f64,
    pub explain_ms: f64,
    /// Of `explain_ms`, the part spent encoding new prompts' text (the engine's own split:
    /// `legrad::engine::ExplainSteps`).
    #[serde(default)]
    pub text_ms: f64,
    /// The image forward ran for this request (false: the cached trace served).
    pub traced: bool,
    /// The engine's memory after this answer.
    pub memory: EngineMemory,
}

/// The prompts' words, sent after their maps ([`Response::Words`]): a map never waits for its
/// words. Not sent when a newer request was already waiting (its own answer brings them).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WordsReady {
    /// The [`MapsReady`] these words belong to.
    pub seq: u64,
    pub image_id: u64,
    /// Each prompt's words and the relevance of each (`legrad::explain::words`), in the order
    /// of that answer's `prompts`.
    pub prompts: Vec<Vec<WordRelevance>>,
    /// Milliseconds the words took (new prompts only: the engine keeps them with the trace).
    pub words_ms: f64,
}

/// What the engine holds: the worker's wasm memory (it only grows; what the allocator frees is
/// reused) and, on a GPU, what burn's memory pools hold.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineMemory {
    pub wasm_bytes: u64,
    pub gpu_in_use_bytes: Option<u64>,
    pub gpu_reserved_bytes: Option<u64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Response {
    /// The backend in use and why (sent at start and again when a race at model load decides).
    Backend(BackendChoice),
    Progress {
        stage: Stage,
        done: u64,
        total: Option<u64>,
    },
    ModelReady(ModelSummary),
    /// Payload: the image to draw maps over (RGB bytes of `display`: its own size, or scaled
    /// down to `legrad::overlay::MAX_ORIGINAL_SIDE`), then the large view's copy (RGB bytes of
    /// `view`, the image scaled down to [`VIEW_MAX_SIDE`]; empty when `view` is
    /// `display`). The engine scales it: the page's module has no resampler.
    ImageReady {
        id: u64,
        width: u32,
        height: u32,
        display: (u32, u32),
        view: (u32, u32),
    },
    /// Payload: the image as the model saw it (RGB bytes), then the maps (f32, method-major,
    /// then prompt, then pixels), then the raw per-layer grid maps of the methods in
    /// `layer_methods` (f32, method, then prompt, then layer, then cell).
    Maps(MapsReady),
    /// The words of the latest `Maps`' prompts, a moment after it.
    Words(WordsReady),
    GalleryItem(GalleryItem),
    /// A gallery image that could not be explained (a broken file, say): the gallery goes on.
    GalleryFailed {
        run: u64,
        item: u64,
        message: String,
    },
    Error {
        about: ErrorAbout,
        message: String,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BackendChoice {
    /// "WebGPU" or "CPU (wasm)".
    pub name: String,
    /// The GPU adapter, or "Flex" (burn's CPU backend).
    pub adapter: String,
    /// Why this backend, in a sentence.
    pub reason: String,
    /// The CPU runs although a GPU was hoped for (no WebGPU, a software adapter, a failure).
    pub on_cpu: bool,
    /// The timed race at model load, when there was one: milliseconds per new prompt and for
    /// an image encode (estimated), on the GPU and on the CPU.
    pub race: Option<Race>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Race {
    pub gpu_prompt_ms: f64,
    pub cpu_prompt_ms: f64,
    pub gpu_image_ms: f64,
    pub cpu_image_ms: f64,
}

/// What an error concerns, so the UI can show it in the right place.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum ErrorAbout {
    Backend,
    Model,
    Image,
    Prompt,
    Explain,
}

/// `www/worker.js`'s progress while the engine's module downloads, `{ legradEngineLoad: {
/// done, total } }` (bytes; `total` 0 when unknown), as a [`Response::Progress`]. `None`: the
/// message is not one of these.
pub fn engine_load_progress(value: &JsValue) -> Option<Response> {
    let load = js_sys::Reflect::get(value, &"legradEngineLoad".into()).ok().filter(|l| l.is_object())?;
    let number = |key: &str| js_sys::Reflect::get(&load, &key.into()).ok().and_then(|v| v.as_f64()).unwrap_or(0.0);
    let total = number("total") as u64;
    Some(Response::Progress { stage: Stage::Engine, done: number("done") as u64, total: (total > 0).then_some(total) })
}

/// A message as it travels: JSON text and transferred buffers.
pub struct Envelope {
    pub json: String,
    pub buffers: Vec<js_sys::ArrayBuffer>,
}

impl Envelope {
    pub fn new<T: Serialize>(value: &T, buffers: Vec<js_sys::ArrayBuffer>) -> Self {
        Self { json: serde_json::to_string(value).unwrap_or_default(), buffers }
    }

    pub fn decode<T: for<'de> Deserialize<'de>>(&self) -> Result<T, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("malformed message: {e}"))
    }

    /// `{json, buffers}` and the transfer list.
    pub fn to_js(&self) -> (JsValue, js_sys::Array) {
        let obj = js_sys::Object::new();
        let buffers = js_sys::Array::new();
        for b in &self.buffers {
            buffers.push(b);
        }
        let _ = js_sys::Reflect::set(&obj, &"json".into(), &self.json.clone().into());
        let _ = js_sys::Reflect::set(&obj, &"buffers".into(), &buffers);
        (obj.into(), buffers)
    }

    pub fn from_js(value: &JsValue) -> Result<Self, String> {
        let json = js_sys::Reflect::get(value, &"json".into())
            .ok()
            .and_then(|j| j.as_string())
            .ok_or("message without json")?;
        let buffers = js_sys::Reflect::get(value, &"buffers".into())
            .ok()
            .and_then(|b| b.dyn_into::<js_sys::Array>().ok())
            .map(|a| a.iter().filter_map(|b| b.dyn_into::<js_sys::ArrayBuffer>().ok()).collect())
            .unwrap_or_default();
        Ok(Self { json, buffers })
    }
}

/// A JavaScript error's message (an `Error`'s or a `DOMException`'s, or the value as text).
pub fn js_message(e: &wasm_bindgen::JsValue) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.dyn_ref::<web_sys::DomException>().map(|d| d.message()))
        .or_else(|| e.as_string())
        .unwrap_or_else(|| format!("{e:?}"))
}

pub fn bytes_to_buffer(bytes: &[u8]) -> js_sys::ArrayBuffer {
    js_sys::Uint8Array::from(bytes).buffer()
}

pub fn buffer_to_bytes(buffer: &js_sys::ArrayBuffer) -> Vec<u8> {
    js_sys::Uint8Array::new(buffer).to_vec()
}

pub fn f32_to_buffer(values: &[f32]) -> js_sys::ArrayBuffer {
    js_sys::Float32Array::from(values).buffer()
}

pub fn buffer_to_f32(buffer: &js_sys::ArrayBuffer) -> Vec<f32> {
    js_sys::Float32Array::new(buffer).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_query_picks_the_backend_and_threads() {
        assert_eq!(BackendRequest::from_query("?backend=cpu"), BackendRequest::Cpu);
        assert_eq!(BackendRequest::from_query("threads=2&backend=webgpu"), BackendRequest::WebGpu);
        assert_eq!(BackendRequest::from_query("?backend=gpu"), BackendRequest::WebGpu);
        assert_eq!(BackendRequest::from_query("?backend=tpu"), BackendRequest::Auto);
        assert_eq!(BackendRequest::from_query(""), BackendRequest::Auto);
        assert_eq!(threads_from_query("?backend=cpu&threads=3"), Some(3));
        assert_eq!(threads_from_query("?threads=0"), None);
        assert_eq!(threads_from_query("?threads=17"), None);
        assert_eq!(threads_from_query("?threads=two"), None);
    }

    #[test]
    fn messages_round_trip_through_their_envelope() {
        let requests = [
            Request::Init { backend: BackendRequest::Cpu, threads: Some(2) },
            Request::LoadModel(ModelSource::url("https://example.org/m.safetensors")),
            Request::Cancel,
            Request::SetImage { id: 7, name: "a \"photo\".png".into() },
            Request::SetFrame { id: 8, width: 640, height: 360 },
        ];
        for r in requests {
            let back: Request = Envelope::new(&r, Vec::new()).decode().unwrap();
            assert_eq!(back, r);
        }
        let words = Response::Words(WordsReady {
            seq: 3,
            image_id: 7,
            prompts: vec![vec![WordRelevance { word: "cat".into(), relevance: 0.25 }], vec![]],
            words_ms: 1.5,
        });
        let back: Response = Envelope::new(&words, Vec::new()).decode().unwrap();
        assert_eq!(back, words);
        // An older page's Init without threads still decodes.
        let old = Envelope { json: r#"{"Init":{"backend":"Auto"}}"#.into(), buffers: Vec::new() };
        assert_eq!(old.decode::<Request>().unwrap(), Request::Init { backend: BackendRequest::Auto, threads: None });
        let bad = Envelope { json: "{".into(), buffers: Vec::new() };
        assert!(bad.decode::<Request>().unwrap_err().starts_with("malformed message"));
    }
}
