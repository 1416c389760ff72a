//! The browser's files, read.

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// A file's bytes, read without blocking.
pub async fn file_bytes(file: &web_sys::File) -> Option<js_sys::ArrayBuffer> {
    JsFuture::from(file.array_buffer()).await.ok().and_then(|b| b.dyn_into().ok())
}
