use leptos::prelude::*;

use crate::app::{AppState, ModelStatus};

#[component]
pub fn Header() -> impl IntoView {
    let state = expect_context::<AppState>();
    let backend = move || match state.backend.get() {
        None => "starting the engine…".to_string(),
        Some(b) => format!("{} · {}", b.name, b.adapter),
    };
    let fallback = move || state.backend.get().and_then(|b| b.fallback_reason);
    let model = move || match state.model.get() {
        ModelStatus::Ready(m) => m.name,
        ModelStatus::Loading(name) => format!("loading {name}…"),
        ModelStatus::Failed(_) => "no model".into(),
    };
    view! {
        <header class="header">
            <h1>"LeGrad Web"</h1>
            <p class="tagline">"Where does CLIP look? Everything runs on your own GPU; nothing leaves this page."</p>
            <div class="badges">
                <span class="badge" data-testid="backend" title="compute backend and adapter">{backend}</span>
                <span class="badge" data-testid="model-name" title="model">{model}</span>
            </div>
            <Show when=move || fallback().is_some()>
                <p class="notice" role="status" data-testid="fallback">
                    {move || format!("Running on the CPU: {}. Maps are exact but slower; a browser with WebGPU (recent Chrome, Edge) uses the GPU.", fallback().unwrap_or_default())}
                </p>
            </Show>
        </header>
    }
}
