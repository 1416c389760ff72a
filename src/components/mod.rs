//! One component per file. Components read and write [`AppState`](crate::app::AppState); none
//! holds tensors or talks to the engine except through the state's methods.

mod camera;
mod controls;
mod header;
mod image_panel;
mod model_panel;
mod prompt_panel;
mod results;
mod status;

pub use camera::Camera;
pub use controls::Controls;
pub use header::Header;
pub use image_panel::ImagePanel;
pub use model_panel::ModelPanel;
pub use prompt_panel::PromptPanel;
pub use results::Results;
pub use status::StatusBar;

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

/// A file's bytes, read without blocking.
pub async fn file_bytes(file: &web_sys::File) -> Option<js_sys::ArrayBuffer> {
    JsFuture::from(file.array_buffer()).await.ok().and_then(|b| b.dyn_into().ok())
}

/// The bytes behind a URL of this site (sample images).
pub async fn fetch_bytes(url: &str) -> Option<js_sys::ArrayBuffer> {
    let window = web_sys::window()?;
    let response: web_sys::Response = JsFuture::from(window.fetch_with_str(url)).await.ok()?.dyn_into().ok()?;
    if !response.ok() {
        return None;
    }
    JsFuture::from(response.array_buffer().ok()?).await.ok()?.dyn_into().ok()
}

/// Files of a model checkpoint, by extension.
pub fn is_model_file(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [".safetensors", ".bin", ".pt", ".pth"].iter().any(|e| n.ends_with(e))
}

pub fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.2} GB", n as f64 / 1e9),
        n if n >= 1 << 20 => format!("{:.1} MB", n as f64 / 1e6),
        n if n >= 1 << 10 => format!("{:.0} kB", n as f64 / 1e3),
        n => format!("{n} B"),
    }
}
