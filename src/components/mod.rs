//! One component per file. Components read and write [`AppState`](crate::app::AppState); none
//! holds tensors or talks to the engine except through the state's methods.

mod camera;
mod controls;
mod disclosure;
mod gallery;
mod header;
mod image_panel;
mod model_panel;
mod prompt_panel;
mod results;
mod status;

pub use camera::Camera;
pub use controls::Controls;
pub use disclosure::{Disclosure, narrow};
pub use gallery::Gallery;
pub use header::Header;
pub use image_panel::ImagePanel;
pub use model_panel::ModelPanel;
pub use prompt_panel::PromptPanel;
pub use results::Results;
pub use status::StatusBar;

use wasm_bindgen::JsCast;
use wasm_bindgen_futures::JsFuture;

pub use crate::files::file_bytes;

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

/// On a phone, while the prompt box has focus, the large view is pinned at the top (sticky,
/// www/style.css) and must not cover the box: scroll so that the view sits at the top with the
/// prompts right under it. Called when the box gets focus and when new maps arrive.
pub fn keep_view_in_sight() {
    if !narrow() {
        return;
    }
    let Some(window) = web_sys::window() else { return };
    let Some(doc) = window.document() else { return };
    let (Some(view), Some(panel), Some(prompts)) = (
        doc.query_selector(".main-view").ok().flatten(),
        doc.query_selector(".prompt-panel").ok().flatten(),
        doc.get_element_by_id("prompts"),
    ) else {
        return;
    };
    if doc.active_element().as_ref() != Some(&prompts) {
        return;
    }
    let view = view.get_bounding_client_rect();
    let panel = panel.get_bounding_client_rect();
    // The panel follows the view in the phone's order, a gap apart.
    let shift = panel.top() - (view.height() + 12.0);
    if shift.abs() > 2.0 {
        window.scroll_by_with_x_and_y(0.0, shift);
    }
}
