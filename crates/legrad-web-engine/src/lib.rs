//! LeGrad Web's engine: the `legrad` core in a dedicated Web Worker (`www/worker.js`), its own
//! wasm module, so that the page's module stays small and draws before this one has arrived.
//! It answers the page's [`legrad_web_protocol::Request`]s; on the CPU it shares work with
//! helper workers running this same module ([`helpers`]).

#[cfg(target_family = "wasm")]
pub mod helpers;
#[cfg(target_family = "wasm")]
pub mod models;
#[cfg(target_family = "wasm")]
pub mod worker;

pub use legrad_web_protocol as protocol;

#[cfg(target_family = "wasm")]
use wasm_bindgen::prelude::*;

#[cfg(target_family = "wasm")]
unsafe extern "C" {
    /// The static constructors, synthesized by the linker (`inventory`'s registrations, from
    /// the GPU compiler's crates).
    fn __wasm_call_ctors();
}

/// The module's entry in its homes: in the engine's worker it installs the engine's message
/// handler, in a helper worker ([`helpers::HELPER_NAME`]) the helper's.
#[cfg(target_family = "wasm")]
#[wasm_bindgen(start)]
pub fn start() {
    // Called here, once: without an explicit call the linker takes the module for a
    // "command" and runs every constructor at the top of each exported function
    // (`__wbindgen_malloc`, a closure's entry, ...), that is on every message into the module
    // (docs/ARCHITECTURE.md, "The image step shared with the helpers").
    // SAFETY: the linker's constructors, run once, before anything else in the module.
    unsafe { __wasm_call_ctors() };
    console_error_panic_hook::set_once();
    match js_sys::global().dyn_into::<web_sys::DedicatedWorkerGlobalScope>() {
        Ok(scope) if scope.name() == helpers::HELPER_NAME => helpers::install_helper(),
        Ok(_) => worker::install(),
        Err(_) => {
            web_sys::console::error_1(&"legrad-web-engine runs in a Web Worker (www/worker.js), not in a page".into())
        }
    }
}
