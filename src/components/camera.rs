//! The camera mode: `getUserMedia`, each frame traced and explained with the current prompts.
//! One frame is in flight at a time and the next is taken only when its maps are back, so the
//! newest frame always wins and nothing queues up.

use std::time::Duration;

use leptos::html::Video;
use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::{JsCast, JsValue};
use wasm_bindgen_futures::JsFuture;

use crate::app::{AppState, ModelStatus};

/// Frames are taken at most this large on their long side (a camera's 1080p is more than a
/// 448-pixel input needs, and every frame crosses to the worker).
const MAX_FRAME_SIDE: u32 = 640;

/// What the browser's refusal means, in words.
fn camera_error(e: &JsValue) -> String {
    let name = e.dyn_ref::<web_sys::DomException>().map(|d| d.name()).unwrap_or_default();
    match name.as_str() {
        "NotAllowedError" | "SecurityError" => {
            "The camera was refused. Allow it for this page in the browser's site settings, then press Camera again."
                .into()
        }
        "NotFoundError" | "OverconstrainedError" => "No camera was found on this machine.".into(),
        "NotReadableError" | "AbortError" => "The camera could not be started: another program may be using it.".into(),
        _ => format!("The camera could not be started ({}).", crate::protocol::js_message(e)),
    }
}

fn stop_stream(stream: &web_sys::MediaStream) {
    for t in stream.get_tracks().iter() {
        if let Ok(t) = t.dyn_into::<web_sys::MediaStreamTrack>() {
            t.stop();
        }
    }
}

#[component]
pub fn Camera() -> impl IntoView {
    let state = expect_context::<AppState>();
    let video = NodeRef::<Video>::new();
    let stream = StoredValue::new_local(None::<web_sys::MediaStream>);
    let grab = StoredValue::new_local(None::<web_sys::HtmlCanvasElement>);
    let devices = RwSignal::new(Vec::<(String, String)>::new());
    let device = RwSignal::new(String::new());
    let paused = RwSignal::new(false);
    let error = RwSignal::new(None::<String>);

    let stop = move || {
        if let Some(s) = stream.get_value() {
            stop_stream(&s);
        }
        stream.set_value(None);
        if let Some(v) = video.get_untracked() {
            v.set_src_object(None);
        }
        paused.set(false);
        state.camera_stopped();
    };
    let start = move |device_id: String| {
        spawn_local(async move {
            error.set(None);
            let Some(media) = web_sys::window().and_then(|w| w.navigator().media_devices().ok()) else {
                error.set(Some("This browser offers no camera here (a camera needs https or localhost).".into()));
                return;
            };
            let constraints = web_sys::MediaStreamConstraints::new();
            let video_c = js_sys::Object::new();
            if !device_id.is_empty() {
                let exact = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&exact, &"exact".into(), &device_id.clone().into());
                let _ = js_sys::Reflect::set(&video_c, &"deviceId".into(), &exact);
            } else {
                // The rear camera where there is one (a phone's): a preference, never a refusal.
                let ideal = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&ideal, &"ideal".into(), &"environment".into());
                let _ = js_sys::Reflect::set(&video_c, &"facingMode".into(), &ideal);
            }
            constraints.set_video(&video_c);
            constraints.set_audio(&false.into());
            let s = match media.get_user_media_with_constraints(&constraints) {
                Ok(p) => JsFuture::from(p).await,
                Err(e) => Err(e),
            };
            let s = match s.and_then(|s| s.dyn_into::<web_sys::MediaStream>()) {
                Ok(s) => s,
                Err(e) => {
                    error.set(Some(camera_error(&e)));
                    state.camera_stopped();
                    return;
                }
            };
            if let Some(old) = stream.get_value() {
                stop_stream(&old);
            }
            stream.set_value(Some(s.clone()));
            if let Some(v) = video.get_untracked() {
                v.set_src_object(Some(&s));
                if let Ok(p) = v.play() {
                    let _ = JsFuture::from(p).await;
                }
            }
            state.camera_on.set(true);
            // The cameras' names are known once one is allowed.
            if let Ok(p) = media.enumerate_devices()
                && let Ok(list) = JsFuture::from(p).await
            {
                let cams: Vec<(String, String)> = js_sys::Array::from(&list)
                    .iter()
                    .filter_map(|d| d.dyn_into::<web_sys::MediaDeviceInfo>().ok())
                    .filter(|d| d.kind() == web_sys::MediaDeviceKind::Videoinput)
                    .enumerate()
                    .map(|(i, d)| {
                        let label = d.label();
                        (d.device_id(), if label.is_empty() { format!("camera {}", i + 1) } else { label })
                    })
                    .collect();
                devices.set(cams);
            }
            let current = s
                .get_video_tracks()
                .get(0)
                .dyn_into::<web_sys::MediaStreamTrack>()
                .ok()
                .and_then(|t| t.get_settings().get_device_id());
            device.set(current.unwrap_or(device_id));
        });
    };
    // The frame loop: whenever no frame is in flight, take the video's current one.
    let tick = move || {
        if !state.camera_on.get_untracked() || paused.get_untracked() || state.frame_busy() {
            return;
        }
        // Nothing to explain (no prompt, or a model loading): no frame is taken.
        if state.prompts_text.with_untracked(|t| t.trim().is_empty())
            || !matches!(state.model.get_untracked(), ModelStatus::Ready(_))
        {
            return;
        }
        let Some(v) = video.get_untracked() else { return };
        let (vw, vh) = (v.video_width(), v.video_height());
        if v.ready_state() < 2 || vw == 0 || vh == 0 {
            return;
        }
        let (w, h) = crate::view::frame_size(vw, vh, MAX_FRAME_SIDE);
        if grab.get_value().is_none() {
            let c = document().create_element("canvas").ok().and_then(|c| c.dyn_into().ok());
            grab.set_value(c);
        }
        let Some(c) = grab.get_value() else { return };
        c.set_width(w);
        c.set_height(h);
        let Some(ctx) =
            c.get_context("2d").ok().flatten().and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
        else {
            return;
        };
        if ctx.draw_image_with_html_video_element_and_dw_and_dh(&v, 0.0, 0.0, w as f64, h as f64).is_err() {
            return;
        }
        let Ok(data) = ctx.get_image_data(0.0, 0.0, w as f64, h as f64) else { return };
        let bytes = data.data();
        state.send_frame(w, h, js_sys::Uint8Array::from(&bytes[..]).buffer());
    };
    if let Ok(handle) = set_interval_with_handle(tick, Duration::from_millis(10)) {
        on_cleanup(move || handle.clear());
    }
    on_cleanup(stop);
    // Stopped from elsewhere (an image dropped): the camera's light goes off too.
    Effect::new(move |_| {
        if !state.camera_on.get()
            && let Some(s) = stream.get_value()
        {
            stop_stream(&s);
            stream.set_value(None);
            paused.set(false);
        }
    });
    let stats = move || {
        state.camera_stats.get().map(|(fps, ms, _)| format!("{fps:.1} frames/s · {ms:.0} ms from frame to map"))
    };
    view! {
        <div class="camera">
            <button class="secondary" data-testid="camera" aria-pressed=move || state.camera_on.get().to_string()
                on:click=move |_| if state.camera_on.get_untracked() { stop() } else { start(device.get_untracked()) }>
                {move || if state.camera_on.get() { "Stop the camera" } else { "Camera" }}
            </button>
            <Show when=move || state.camera_on.get()>
                <button class="secondary" data-testid="camera-pause" aria-pressed=move || paused.get().to_string()
                    on:click=move |_| paused.update(|p| *p = !*p)>
                    {move || if paused.get() { "Resume" } else { "Pause (freeze this frame)" }}
                </button>
                <label>"Camera "
                    <select data-testid="camera-choice" on:change=move |ev| {
                        let id = event_target_value(&ev);
                        device.set(id.clone());
                        start(id);
                    }>
                        {move || devices.get().into_iter().map(|(id, label)| {
                            let selected = device.get() == id;
                            view! { <option value=id selected=selected>{label}</option> }
                        }).collect_view()}
                    </select>
                </label>
                <p class="small" data-testid="camera-stats" aria-live="off"
                    data-frames=move || state.camera_stats.get().map_or(0, |s| s.2).to_string()>{stats}</p>
            </Show>
            <video node_ref=video class=move || if state.camera_on.get() { "camera-preview" } else { "camera-preview off" }
                muted=true playsinline=true aria-label="Camera preview"></video>
            <Show when=move || error.get().is_some()>
                <p class="error" role="alert" data-testid="camera-error">{move || error.get().unwrap_or_default()}</p>
            </Show>
        </div>
    }
}
