//! LeGrad Web: the browser app. The UI (leptos, main thread) talks to the engine (a Web
//! Worker running the `legrad` core on WebGPU, or on the CPU when WebGPU is missing) through
//! the typed messages of [`protocol`]. Everything here is browser code: natively this crate is
//! empty.
#![cfg(target_family = "wasm")]

pub mod app;
pub mod bridge;
pub mod components;
pub mod helpers;
pub mod models;
pub mod protocol;
pub mod render;
pub mod share;
pub mod worker;

use wasm_bindgen::prelude::*;

/// The module's entry in its homes: in the page it mounts the UI, in the engine's worker it
/// installs the engine's message handler, in a helper worker ([`helpers::HELPER_NAME`]) the
/// helper's.
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
