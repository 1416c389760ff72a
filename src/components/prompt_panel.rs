use leptos::prelude::*;

use crate::app::{AppState, ModelStatus, TEMPLATE};

#[component]
pub fn PromptPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let copied = RwSignal::new(false);
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
        <fieldset class="panel prompt-panel">
            <legend>"Prompts"</legend>
            <label for="prompts">"What to look for, one prompt per line"</label>
            <textarea
                id="prompts"
                data-testid="prompts"
                rows="4"
                placeholder="a red circle\nsomething blue"
                prop:value=move || state.prompts_text.get()
                on:input=move |ev| state.prompts_text.set(event_target_value(&ev))
                on:focus=move |_| crate::components::keep_view_in_sight()
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
            <div class="share">
                <button class="secondary" data-testid="copy-link" on:click=move |_| {
                    let Some(w) = web_sys::window() else { return };
                    let href = w.location().href().unwrap_or_default();
                    let _ = w.navigator().clipboard().write_text(&href);
                    copied.set(true);
                }>"Copy link"</button>
                <span class="small">{move || if copied.get() {
                    "Copied: the prompts and settings (and a model URL), never the image."
                } else {
                    "A link to these prompts and settings (not the image)."
                }}</span>
            </div>
            <Show when=move || state.shared_note.get().is_some()>
                <p class="notice" data-testid="shared-note">{move || state.shared_note.get().unwrap_or_default()}</p>
            </Show>
            <Show when=move || state.explain_error.get().is_some()>
                <p class="error" role="alert" data-testid="explain-error">{move || state.explain_error.get().unwrap_or_default()}</p>
            </Show>
        </fieldset>
    }
}
