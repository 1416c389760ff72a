use leptos::prelude::*;
use wasm_bindgen::JsCast;

use crate::app::{AppState, ModelStatus};
use crate::components::human_bytes;
use crate::components::image_panel::take_files;
use crate::protocol::ModelSource;

/// SigLIP ViT-B/16 (WebLI, 224 px) as open_clip publishes it: the weights, with
/// `open_clip_config.json` and `tokenizer.json` beside them.
pub const HF_SIGLIP_B16: &str = "https://huggingface.co/timm/ViT-B-16-SigLIP/resolve/main/open_clip_model.safetensors";

/// OpenCLIP ViT-B/16 trained on LAION-2B, the reference demo's model.
pub const HF_VIT_B16: &str =
    "https://huggingface.co/laion/CLIP-ViT-B-16-laion2B-s34B-b88K/resolve/main/open_clip_model.safetensors";

#[component]
pub fn ModelPanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let url = RwSignal::new(String::new());
    let load_url = move |u: String| {
        let u = u.trim().to_string();
        if u.is_empty() {
            return;
        }
        state.load_model(ModelSource::url(u.clone()), vec![], u);
    };
    let info = move || match state.model.get() {
        ModelStatus::Ready(m) => {
            let size = if m.from_cache {
                format!("from this browser's storage: {}", human_bytes(m.stored_bytes))
            } else if m.downloaded_bytes > 0 {
                format!("downloaded {}, stored {}", human_bytes(m.downloaded_bytes), human_bytes(m.stored_bytes))
            } else {
                format!("{} in memory", human_bytes(m.stored_bytes))
            };
            view! {
                <div data-testid="model-info" data-load-ms=m.load_ms.to_string() data-warmup-ms=m.warmup_ms.to_string()>
                    <p><strong>{m.name.clone()}</strong></p>
                    <p class="small">{m.description.clone()}</p>
                    <p class="small">{format!("{} · {size}", m.format)}</p>
                    <p class="small">{format!("loaded in {:.1} s, warmed up in {:.1} s", m.load_ms / 1e3, m.warmup_ms / 1e3)}</p>
                    {m.notes.into_iter().map(|n| view! { <p class="notice small">{n}</p> }).collect_view()}
                </div>
            }.into_any()
        }
        ModelStatus::Loading(name) => view! { <p class="hint">{format!("Loading {name}…")}</p> }.into_any(),
        ModelStatus::Failed(msg) => view! {
            <p class="error" role="alert" data-testid="model-error">{msg}" Load another model."</p>
        }
        .into_any(),
    };
    view! {
        <fieldset class="panel">
            <legend>"Model"</legend>
            {info}
            <details data-testid="other-model">
                <summary>"Use another model"</summary>
                <p class="small">"OpenCLIP ViT checkpoints (.safetensors with open_clip's names, or a transformers CLIPModel with its config.json) and open_clip SigLIP checkpoints (with their open_clip_config.json and tokenizer.json) are converted to 8-bit here, in the browser, and kept for the next visit."</p>
                <button data-testid="load-hf" on:click=move |_| load_url(HF_VIT_B16.to_string())>
                    "Load OpenCLIP ViT-B/16 (LAION-2B, 600 MB download)"
                </button>
                <button data-testid="load-siglip" on:click=move |_| load_url(HF_SIGLIP_B16.to_string())>
                    "Load SigLIP ViT-B/16 (WebLI, 800 MB download)"
                </button>
                <label>"From a URL "
                    <input type="url" data-testid="model-url" placeholder="https://…/open_clip_model.safetensors"
                        prop:value=move || url.get() on:input=move |ev| url.set(event_target_value(&ev))
                        on:keydown=move |ev: leptos::ev::KeyboardEvent| if ev.key() == "Enter" { load_url(url.get()) } />
                </label>
                <button data-testid="load-url" on:click=move |_| load_url(url.get())>"Load"</button>
                <label class="file">"From a file "
                    <input type="file" data-testid="model-input" accept=".safetensors,.json" multiple=true aria-label="Model files: the weights, with a config.json and (SigLIP) a tokenizer.json" on:change=move |ev| {
                        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
                        let files = input.files().map(|l| (0..l.length()).filter_map(|i| l.get(i)).collect()).unwrap_or_default();
                        take_files(state, files);
                        input.set_value("");
                    } />
                </label>
                <button class="secondary" on:click=move |_| {
                    state.load_model(ModelSource::Default, vec![], crate::protocol::DEFAULT_MODEL_NAME.into())
                }>"Back to the default model"</button>
            </details>
        </fieldset>
    }
}
