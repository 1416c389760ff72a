use leptos::prelude::*;

use crate::app::{AppState, ModelStatus};

/// The backend line until the engine has chosen (index.html's shell shows the same words).
pub const ENGINE_COMING: &str =
    "The engine is on its way: it runs on your GPU through WebGPU, or on the CPU where that is faster.";

#[component]
pub fn Header() -> impl IntoView {
    let state = expect_context::<AppState>();
    let backend = move || match state.backend.get() {
        None => "starting the engine…".to_string(),
        Some(b) => format!("{} · {}", b.name, b.adapter),
    };
    let reason = move || state.backend.get().map(|b| (b.on_cpu, b.reason));
    let model = move || match state.model.get() {
        ModelStatus::Ready(m) => m.name,
        ModelStatus::Loading(name) => format!("loading {name}…"),
        ModelStatus::Failed(_) => "no model".into(),
    };
    view! {
        <header class="header">
            <h1>"LeGrad Web"</h1>
            <p class="tagline">"Where does CLIP look? Everything runs on your own machine, on its GPU or its CPU; nothing leaves this page."</p>
            <div class="badges">
                <span class="badge" data-testid="backend" title="compute backend and adapter">{backend}</span>
                <span class="badge" data-testid="model-name" title="model">{model}</span>
            </div>
            // There from the first paint (index.html draws the same line before any script), its
            // words replaced when the engine has chosen: nothing moves when they arrive.
            <p class=move || if reason().is_some_and(|r| r.0) { "notice small reason" } else { "small reason" } role="status"
                data-testid="backend-reason" data-on-cpu=move || reason().is_some_and(|r| r.0).to_string()>
                {move || reason().map(|r| r.1).unwrap_or_else(|| ENGINE_COMING.into())}
            </p>
        </header>
    }
}
