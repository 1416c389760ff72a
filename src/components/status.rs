use leptos::prelude::*;

use crate::app::{AppState, ImageStatus, ModelStatus};
use crate::components::human_bytes;
use crate::protocol::Stage;

/// Progress, timings and engine errors, announced politely to screen readers.
#[component]
pub fn StatusBar() -> impl IntoView {
    let state = expect_context::<AppState>();
    let progress = move || {
        state.progress.get().map(|(stage, done, total)| {
            let text = match total {
                Some(t) if t > 0 && matches!(stage, Stage::Download | Stage::Engine) => {
                    format!("{}: {} of {}", stage.label(), human_bytes(done), human_bytes(t))
                }
                Some(t) if t > 0 => format!("{}: {done} of {t}", stage.label()),
                _ => format!("{}…", stage.label()),
            };
            let (value, max) = match total {
                Some(t) if t > 0 => (done.to_string(), t.to_string()),
                _ => (String::new(), String::new()),
            };
            view! {
                <div class="progress" data-testid="progress" data-stage=format!("{stage:?}")>
                    <label>{text.clone()}
                        <progress value=value max=max aria-label=text></progress>
                    </label>
                    // Until the model is stored, a cancel leaves nothing behind (not in the
                    // cache, not in memory: the model before stays in use).
                    <Show when=move || matches!(stage, Stage::Download | Stage::Convert | Stage::Store)>
                        <button class="secondary" data-testid="cancel" on:click=move |_| crate::bridge::send(&crate::protocol::Request::Cancel, vec![])>"Cancel"</button>
                    </Show>
                </div>
            }
        })
    };
    let timing = move || {
        state.results.get().map(|r| {
            let m = &r.ready;
            let image =
                if m.traced { format!("image encoded in {:.0} ms, ", m.image_ms) } else { "image cached, ".into() };
            format!("{image}{} map(s) in {:.0} ms", m.prompts.len() * m.methods.len(), m.explain_ms)
        })
    };
    let busy = move || {
        let model_loading = matches!(state.model.get(), ModelStatus::Loading(_));
        let decoding = matches!(state.image.get(), ImageStatus::Decoding { .. });
        model_loading || decoding || state.pending.get()
    };
    view! {
        <div class="status" role="status" aria-live="polite" aria-busy=move || busy().to_string()>
            {progress}
            <span data-testid="timing"
                data-image-ms=move || state.results.get().map(|r| r.ready.image_ms.to_string()).unwrap_or_default()
                data-explain-ms=move || state.results.get().map(|r| r.ready.explain_ms.to_string()).unwrap_or_default()
                data-text-ms=move || state.results.get().map(|r| r.ready.text_ms.to_string()).unwrap_or_default()
                data-words-ms=move || state.words.with(|w| if w.current { w.ms.to_string() } else { String::new() })
                data-words-seq=move || state.words.with(|w| if w.current { w.seq.to_string() } else { String::new() })
                data-seq=move || state.results.get().map(|r| r.ready.seq.to_string()).unwrap_or_default()
                data-traced=move || state.results.get().map(|r| r.ready.traced.to_string()).unwrap_or_default()
                data-wasm-bytes=move || state.results.get().map(|r| r.ready.memory.wasm_bytes.to_string()).unwrap_or_default()
                data-gpu-bytes=move || state.results.get().and_then(|r| r.ready.memory.gpu_reserved_bytes).map(|b| b.to_string()).unwrap_or_default()>{timing}</span>
            <Show when=move || state.pending.get()>
                <span class="working" data-testid="working">"working…"</span>
            </Show>
            <Show when=move || state.engine_error.get().is_some()>
                <p class="error" role="alert" data-testid="engine-error">{move || state.engine_error.get().unwrap_or_default()}</p>
            </Show>
        </div>
    }
}
