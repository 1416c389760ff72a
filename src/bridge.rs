//! The UI's end of the engine boundary: starts the worker, sends [`Request`]s, hands
//! [`Response`]s to one callback.

use std::cell::RefCell;

use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;

use crate::protocol::{Envelope, ErrorAbout, Request, Response, engine_load_progress};

thread_local! {
    static WORKER: RefCell<Option<web_sys::Worker>> = const { RefCell::new(None) };
}

/// Start the engine worker (`worker.js`, next to the page; it loads the engine's own module and
/// keeps what is sent before that has arrived). `on_response` gets every answer, and the
/// module's download progress as [`Response::Progress`] with [`crate::protocol::Stage::Engine`].
pub fn start(on_response: impl Fn(Response, Vec<js_sys::ArrayBuffer>) + 'static) -> Result<(), String> {
    let options = web_sys::WorkerOptions::new();
    options.set_type(web_sys::WorkerType::Module);
    let worker = web_sys::Worker::new_with_options("./worker.js", &options)
        .map_err(|e| format!("the engine could not start (Web Workers unavailable?): {e:?}"))?;
    let on_response = std::rc::Rc::new(on_response);
    let handler = on_response.clone();
    let onmessage = Closure::<dyn FnMut(web_sys::MessageEvent)>::new(move |ev: web_sys::MessageEvent| {
        if let Some(progress) = engine_load_progress(&ev.data()) {
            return handler(progress, vec![]);
        }
        match Envelope::from_js(&ev.data()).and_then(|env| env.decode::<Response>().map(|r| (r, env.buffers))) {
            Ok((response, buffers)) => handler(response, buffers),
            Err(e) => handler(Response::Error { about: ErrorAbout::Backend, message: e }, vec![]),
        }
    });
    worker.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
    onmessage.forget();
    let onerror = Closure::<dyn FnMut(web_sys::Event)>::new(move |ev: web_sys::Event| {
        let message = js_sys::Reflect::get(&ev, &"message".into())
            .ok()
            .and_then(|m| m.as_string())
            .unwrap_or_else(|| "unknown error".into());
        on_response(
            Response::Error {
                about: ErrorAbout::Backend,
                message: format!("the engine stopped: {message}. Reload the page to start it again."),
            },
            vec![],
        );
    });
    worker.set_onerror(Some(onerror.as_ref().unchecked_ref()));
    onerror.forget();
    WORKER.with(|w| *w.borrow_mut() = Some(worker));
    Ok(())
}

/// Send a request with its binary payloads (transferred, not copied).
pub fn send(request: &Request, buffers: Vec<js_sys::ArrayBuffer>) {
    let (msg, transfer) = Envelope::new(request, buffers).to_js();
    WORKER.with(|w| {
        if let Some(worker) = w.borrow().as_ref() {
            let _ = worker.post_message_with_transfer(&msg, &transfer);
        }
    });
}
