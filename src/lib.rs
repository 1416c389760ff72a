//! LeGrad Web: the browser app. The UI (leptos, main thread) talks to the engine (a Web
//! Worker running the `legrad` core on WebGPU, or on the CPU when WebGPU is missing) through
//! the typed messages of [`protocol`]. The browser's code builds for wasm only; what the page
//! computes without the browser (share links, the protocol's encoding, the maps' index maths,
//! frame sizes: [`share`], [`protocol`], [`view`]) builds natively too, where `cargo test -p
//! legrad-web` runs its unit tests.

#[cfg(target_family = "wasm")]
pub mod app;
#[cfg(target_family = "wasm")]
pub mod bridge;
#[cfg(target_family = "wasm")]
pub mod components;
#[cfg(target_family = "wasm")]
pub mod helpers;
#[cfg(target_family = "wasm")]
pub mod models;
pub mod protocol;
#[cfg(target_family = "wasm")]
pub mod render;
pub mod share;
pub mod view;
#[cfg(target_family = "wasm")]
pub mod worker;

#[cfg(target_family = "wasm")]
use wasm_bindgen::prelude::*;

/// The module's entry in its homes: in the page it mounts the UI, in the engine's worker it
/// installs the engine's message handler, in a helper worker ([`helpers::HELPER_NAME`]) the
/// helper's.
#[cfg(target_family = "wasm")]
#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
    let worker = js_sys::global().dyn_into::<web_sys::DedicatedWorkerGlobalScope>().ok();
    if let Some(scope) = worker {
        if scope.name() == helpers::HELPER_NAME { helpers::install_helper() } else { worker::install() }
    } else {
        leptos::mount::mount_to_body(app::App);
    }
}
