//! LeGrad Web: the page. The UI (leptos, main thread) talks to the engine (a Web Worker running
//! the `legrad` core on WebGPU, or on the CPU when WebGPU is missing; its own wasm module,
//! `crates/legrad-web-engine`) through the typed messages of [`protocol`]. This module holds no
//! engine: it draws, takes an image and prompts while the engine's module is still on its way.
//! The browser's code builds for wasm only; what the page computes without the browser (share
//! links, the maps' index maths, frame sizes: [`share`], [`view`]) builds natively too, where
//! `cargo test -p legrad-web` runs its unit tests.

#[cfg(target_family = "wasm")]
pub mod app;
#[cfg(target_family = "wasm")]
pub mod bridge;
#[cfg(target_family = "wasm")]
pub mod clock;
#[cfg(target_family = "wasm")]
pub mod components;
#[cfg(target_family = "wasm")]
pub mod files;
pub mod gallery;
#[cfg(target_family = "wasm")]
pub mod gallery_run;
pub mod png;
#[cfg(target_family = "wasm")]
pub mod render;
pub mod share;
pub mod view;

pub use legrad_web_protocol as protocol;

#[cfg(target_family = "wasm")]
use wasm_bindgen::prelude::*;

/// The page's entry: mount the UI in place of the static shell `index.html` draws first.
#[cfg(target_family = "wasm")]
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    if let Some(shell) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("shell")) {
        shell.remove();
    }
    leptos::mount::mount_to_body(app::App);
}
