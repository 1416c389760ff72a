//! Getting model bytes in the browser: the shipped default, a dropped file, or a URL
//! (downloaded with progress and cancel, converted to the app's 8-bit format, kept in the Cache
//! API so that the next visit neither downloads nor converts).

use legrad::LegradError;
use legrad::format::{self, Quant};
use legrad::load::{ConfigSource, prepare_bytes};
use legrad::weights::ByteSource;
use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

use crate::protocol::{ExtraFile, ModelSource, Stage, buffer_to_bytes, js_message};

pub const DEFAULT_MODEL_URL: &str = "./models/default.safetensors";
pub use crate::protocol::DEFAULT_MODEL_NAME;
const CACHE_NAME: &str = "legrad-web-models-v1";

pub struct Obtained {
    pub name: String,
    pub bytes: ModelBytes,
    pub downloaded_bytes: u64,
    pub from_cache: bool,
    pub notes: Vec<String>,
}

/// A model file's bytes: in the engine's memory (downloaded or converted here), or a cached
/// model's in the cache's `Blob`, from which the CPU's model is built a tensor at a time
/// (`legrad::load::read_source`): the engine's memory, which never shrinks, then holds the model
/// and never the file beside it, and the page's process never holds the file at all
/// (docs/ARCHITECTURE.md, "The engine's memory").
pub enum ModelBytes {
    Here(Vec<u8>),
    Js(JsBytes),
}

impl ModelBytes {
    /// The file's length in bytes.
    pub fn size(&self) -> usize {
        match self {
            ModelBytes::Here(b) => b.len(),
            ModelBytes::Js(b) => b.len(),
        }
    }

    /// The bytes in the engine's memory (a GPU's load reads them whole).
    pub fn into_vec(self) -> Vec<u8> {
        match self {
            ModelBytes::Here(b) => b,
            ModelBytes::Js(b) => b.read(0..b.len()),
        }
    }
}

/// A `Blob`'s bytes (a cached response's body: the browser keeps it, on disk where it is
/// large), read a range at a time with a worker's synchronous reader. Where the whole body was
/// read into one `ArrayBuffer`, its 150 MB (a ViT-B/16) stayed in the page's process until the
/// garbage collector ran, at a time of its choosing.
pub struct JsBytes {
    blob: web_sys::Blob,
    reader: web_sys::FileReaderSync,
    failed: std::cell::RefCell<Option<String>>,
}

impl JsBytes {
    fn new(blob: web_sys::Blob) -> Option<Self> {
        let reader = web_sys::FileReaderSync::new().ok()?;
        Some(Self { blob, reader, failed: Default::default() })
    }

    fn try_read(&self, range: &std::ops::Range<usize>) -> Result<Vec<u8>, wasm_bindgen::JsValue> {
        let part = self.blob.slice_with_f64_and_f64(range.start as f64, range.end as f64)?;
        let buffer = self.reader.read_as_array_buffer(&part)?;
        Ok(js_sys::Uint8Array::new(&buffer).to_vec())
    }
}

impl ByteSource for JsBytes {
    fn len(&self) -> usize {
        self.blob.size() as usize
    }

    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        match self.try_read(&range) {
            Ok(bytes) if bytes.len() == range.len() => bytes,
            other => {
                let why = match other {
                    Ok(b) => format!("{} bytes where {} were asked", b.len(), range.len()),
                    Err(e) => js_message(&e),
                };
                self.failed.borrow_mut().get_or_insert(format!("reading the cached model failed: {why}"));
                vec![0; range.len()]
            }
        }
    }

    fn failure(&self) -> Option<String> {
        self.failed.borrow().clone()
    }
}

fn js_err(context: &str, e: wasm_bindgen::JsValue) -> LegradError {
    LegradError::Input(format!("{context}: {}", js_message(&e)))
}

fn global() -> web_sys::WorkerGlobalScope {
    js_sys::global().unchecked_into()
}

pub async fn obtain(
    source: ModelSource,
    buffers: Vec<js_sys::ArrayBuffer>,
    abort: Option<&web_sys::AbortController>,
    progress: &dyn Fn(Stage, u64, Option<u64>),
) -> Result<Obtained, LegradError> {
    match source {
        ModelSource::Default => {
            let bytes = download(DEFAULT_MODEL_URL, abort, progress).await?;
            let n = bytes.len() as u64;
            Ok(Obtained {
                name: DEFAULT_MODEL_NAME.into(),
                bytes: ModelBytes::Here(bytes),
                downloaded_bytes: n,
                from_cache: false,
                notes: vec![],
            })
        }
        ModelSource::File { name, extra } => {
            let bytes =
                buffers.first().map(buffer_to_bytes).ok_or_else(|| LegradError::Input("no file bytes".into()))?;
            let text = |kind: ExtraFile| {
                extra
                    .iter()
                    .position(|k| *k == kind)
                    .and_then(|i| buffers.get(i + 1))
                    .map(|b| String::from_utf8_lossy(&buffer_to_bytes(b)).into_owned())
            };
            let config = text(ExtraFile::Config).map(ConfigSource::from_json);
            let tokenizer = text(ExtraFile::Tokenizer);
            let (bytes, notes) = convert_if_needed(bytes, config.as_ref(), tokenizer, &name, progress)?;
            cancelled_while(abort, "converting").await?;
            Ok(Obtained { name, bytes: ModelBytes::Here(bytes), downloaded_bytes: 0, from_cache: false, notes })
        }
        ModelSource::Url { url, config_url, tokenizer_url } => {
            if let Some(bytes) = cache_get(&url).await {
                return Ok(Obtained { name: url, bytes, downloaded_bytes: 0, from_cache: true, notes: vec![] });
            }
            let raw = download(&url, abort, progress).await?;
            let mut downloaded = raw.len() as u64;
            // A SigLIP checkpoint needs its config and tokenizer: by the URLs given, or beside it.
            let (mut config, mut tokenizer) = (None, None);
            if legrad::weights::is_siglip_safetensors(&raw) || config_url.is_some() || tokenizer_url.is_some() {
                let beside = |file: &str| match url.rsplit_once('/') {
                    Some((dir, _)) => format!("{dir}/{file}"),
                    None => file.to_string(),
                };
                let config_url = config_url.unwrap_or_else(|| beside("open_clip_config.json"));
                let tokenizer_url = tokenizer_url.unwrap_or_else(|| beside("tokenizer.json"));
                let text = |b: Vec<u8>| String::from_utf8_lossy(&b).into_owned();
                let c = download(&config_url, abort, progress).await?;
                let t = download(&tokenizer_url, abort, progress).await?;
                downloaded += (c.len() + t.len()) as u64;
                config = Some(ConfigSource::from_json(text(c)));
                tokenizer = Some(text(t));
            }
            let (bytes, notes) = convert_if_needed(raw, config.as_ref(), tokenizer, &url, progress)?;
            // A cancel sent while the (synchronous) conversion ran is delivered now.
            cancelled_while(abort, "converting").await?;
            progress(Stage::Store, 0, Some(bytes.len() as u64));
            let mut notes = notes;
            if let Err(e) = cache_put(&url, &bytes).await {
                notes.push(format!(
                    "could not store the model in the browser ({e}); it will be downloaded again next time"
                ));
            }
            if let Err(e) = cancelled_while(abort, "storing").await {
                cache_delete(&url).await;
                return Err(e);
            }
            Ok(Obtained {
                name: url,
                bytes: ModelBytes::Here(bytes),
                downloaded_bytes: downloaded,
                from_cache: false,
                notes,
            })
        }
    }
}

/// Waits `ms` milliseconds, letting queued messages and promise callbacks run meanwhile.
pub async fn sleep_ms(ms: i32) {
    let tick = js_sys::Promise::new(&mut |resolve, _| {
        let _ = global().set_timeout_with_callback_and_timeout_and_arguments_0(&resolve, ms);
    });
    let _ = JsFuture::from(tick).await;
}

/// Lets queued messages in (a `Cancel` among them), then fails if the load was cancelled.
async fn cancelled_while(abort: Option<&web_sys::AbortController>, what: &str) -> Result<(), LegradError> {
    sleep_ms(0).await;
    if abort.is_some_and(|a| a.signal().aborted()) {
        return Err(LegradError::Cancelled(format!("while {what}")));
    }
    Ok(())
}

/// A checkpoint that is not in the app's format is converted to 8 bits.
fn convert_if_needed(
    bytes: Vec<u8>,
    config: Option<&ConfigSource>,
    tokenizer: Option<String>,
    name: &str,
    progress: &dyn Fn(Stage, u64, Option<u64>),
) -> Result<(Vec<u8>, Vec<String>), LegradError> {
    if format::is_app_model(&bytes) {
        format::read_header(&bytes)?;
        return Ok((bytes, vec![]));
    }
    let total = bytes.len() as u64;
    progress(Stage::Convert, 0, Some(total));
    let mut prepared = prepare_bytes(&bytes, config)?;
    drop(bytes);
    if tokenizer.is_some() {
        prepared.tokenizer = tokenizer;
    }
    let out = format::write_with_progress(
        &prepared.map,
        &prepared.config,
        prepared.tokenizer.as_deref(),
        Quant::Q8,
        name,
        &mut |done, all| progress(Stage::Convert, done as u64, Some(all as u64)),
    )?;
    let mut notes = prepared.notes;
    notes.push(format!("converted to 8-bit in the browser ({} MB → {} MB)", total / 1_000_000, out.len() / 1_000_000));
    Ok((out, notes))
}

async fn download(
    url: &str,
    abort: Option<&web_sys::AbortController>,
    progress: &dyn Fn(Stage, u64, Option<u64>),
) -> Result<Vec<u8>, LegradError> {
    let init = web_sys::RequestInit::new();
    if let Some(a) = abort {
        init.set_signal(Some(&a.signal()));
    }
    let response = JsFuture::from(global().fetch_with_str_and_init(url, &init)).await.map_err(|e| {
        if abort.is_some_and(|a| a.signal().aborted()) {
            LegradError::Cancelled("during the download".into())
        } else {
            js_err(&format!("could not download {url} (offline, or the server does not allow this site to read it)"), e)
        }
    })?;
    let response: web_sys::Response = response.unchecked_into();
    if !response.ok() {
        return Err(LegradError::Input(format!(
            "the server answered {} {} for {url}",
            response.status(),
            response.status_text()
        )));
    }
    let total = response.headers().get("content-length").ok().flatten().and_then(|v| v.parse::<u64>().ok());
    let body = response.body().ok_or_else(|| LegradError::Input(format!("{url}: empty response")))?;
    let mut last_report = 0u64;
    progress(Stage::Download, 0, total);
    let bytes = read_body(body, total, |n| {
        if n - last_report > (1 << 20) || total.is_some_and(|t| n == t) {
            progress(Stage::Download, n, total);
            last_report = n;
        }
    })
    .await
    .map_err(|e| {
        if abort.is_some_and(|a| a.signal().aborted()) {
            LegradError::Cancelled("during the download".into())
        } else {
            js_err(&format!("the download of {url} broke off"), e)
        }
    })?;
    progress(Stage::Download, bytes.len() as u64, total);
    Ok(bytes)
}

/// A body read chunk by chunk into one vector (of `total` bytes, where known, so that it never
/// grows by doubling): no copy of the whole body is made on JavaScript's side. `read`: the
/// bytes so far, after each chunk.
async fn read_body(
    body: web_sys::ReadableStream,
    total: Option<u64>,
    mut read: impl FnMut(u64),
) -> Result<Vec<u8>, wasm_bindgen::JsValue> {
    let reader: web_sys::ReadableStreamDefaultReader = body.get_reader().unchecked_into();
    let mut bytes: Vec<u8> = Vec::with_capacity(total.unwrap_or(0).min(1 << 31) as usize);
    loop {
        let chunk = JsFuture::from(reader.read()).await?;
        let done = js_sys::Reflect::get(&chunk, &"done".into()).ok().and_then(|d| d.as_bool()).unwrap_or(true);
        if done {
            return Ok(bytes);
        }
        if let Ok(value) = js_sys::Reflect::get(&chunk, &"value".into()) {
            let array: js_sys::Uint8Array = value.unchecked_into();
            let start = bytes.len();
            bytes.resize(start + array.length() as usize, 0);
            array.copy_to(&mut bytes[start..]);
        }
        read(bytes.len() as u64);
    }
}

/// The Cache API, where there is one: pages served over plain HTTP (not localhost) have none,
/// and a private window may refuse it.
async fn open_cache() -> Option<web_sys::Cache> {
    let has = js_sys::Reflect::get(&global(), &"caches".into()).ok().is_some_and(|c| !c.is_undefined() && !c.is_null());
    if !has {
        return None;
    }
    let caches = global().caches().ok()?;
    JsFuture::from(caches.open(CACHE_NAME)).await.ok().map(|c| c.unchecked_into())
}

async fn cache_get(key: &str) -> Option<ModelBytes> {
    let cache = open_cache().await?;
    let hit = JsFuture::from(cache.match_with_str(key)).await.ok()?;
    if hit.is_undefined() {
        return None;
    }
    let response: web_sys::Response = hit.unchecked_into();
    // The body as the cache's `Blob`, not read into the engine's memory: the model is built
    // from it a tensor at a time.
    let blob: web_sys::Blob = JsFuture::from(response.blob().ok()?).await.ok()?.unchecked_into();
    let bytes = JsBytes::new(blob)?;
    // A damaged entry (a header that does not read, tensors that fail the checksum, a read that
    // fails) is ignored and replaced by the next download.
    format::verify_source(&bytes).ok().filter(|_| bytes.failure().is_none()).map(|_| ModelBytes::Js(bytes))
}

async fn cache_put(key: &str, bytes: &[u8]) -> Result<(), String> {
    let cache = open_cache().await.ok_or("the Cache API is unavailable")?;
    let array = js_sys::Uint8Array::from(bytes);
    let response = web_sys::Response::new_with_opt_buffer_source(Some(&array)).map_err(|e| format!("{e:?}"))?;
    JsFuture::from(cache.put_with_str(key, &response)).await.map_err(|e| format!("{e:?}"))?;
    Ok(())
}

async fn cache_delete(key: &str) {
    if let Some(cache) = open_cache().await {
        let _ = JsFuture::from(cache.delete_with_str(key)).await;
    }
}
