use leptos::prelude::*;

use crate::app::{AppState, ModelStatus, TEMPLATE};

#[component]
pub fn PromptPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let empty = move || state.prompts().is_empty();
    let truncated = move || {
        state
            .results
            .get()
            .map(|r| r.ready.prompts.iter().filter(|p| p.truncated).map(|p| p.prompt.clone()).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let context = move || match state.model.get() {
        ModelStatus::Ready(m) => m.context_length,
        _ => 77,
    };
    view! {
        <fieldset class="panel">
            <legend>"Prompts"</legend>
            <label for="prompts">"What to look for, one prompt per line"</label>
            <textarea
                id="prompts"
                data-testid="prompts"
                rows="4"
                placeholder="a red circle\nsomething blue"
                prop:value=move || state.prompts_text.get()
                on:input=move |ev| state.prompts_text.set(event_target_value(&ev))
            ></textarea>
            <label class="check">
                <input type="checkbox" data-testid="template" prop:checked=move || state.template_on.get()
                    on:change=move |ev| state.template_on.set(event_target_checked(&ev)) />
                {format!("Use the template “{TEMPLATE}”")}
            </label>
            <Show when=empty>
                <p class="hint" data-testid="empty-hint">"Type a prompt to see its heatmap, e.g. “a red circle”."</p>
            </Show>
            <Show when=move || !truncated().is_empty()>
                <p class="notice" data-testid="truncated">
                    {move || format!("Longer than the model's {} tokens, cut: {}", context(), truncated().join(", "))}
                </p>
            </Show>
            <Show when=move || state.explain_error.get().is_some()>
                <p class="error" role="alert" data-testid="explain-error">{move || state.explain_error.get().unwrap_or_default()}</p>
            </Show>
        </fieldset>
    }
}
