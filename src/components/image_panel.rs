use leptos::prelude::*;
use leptos::task::spawn_local;
use wasm_bindgen::JsCast;

use crate::app::{AppState, ImageStatus, ModelStatus};
use crate::components::{Camera, fetch_bytes, file_bytes, is_model_file};
use crate::protocol::{ExtraFile, ModelSource};

/// Sample images shipped with the site: scenes from the generator the default model was
/// trained on (`legrad scenes --seed 5`, held out from training), so that the default model
/// has something it knows.
pub const SAMPLES: [(&str, &str); 4] = [
    ("samples/scene-1.png", "A blue circle, an orange triangle and a red ring on stripes"),
    ("samples/scene-2.png", "A blue square, a green ring and a yellow star on noise"),
    ("samples/scene-3.png", "Two crosses, a yellow square and an orange ring on a gradient"),
    ("samples/scene-4.png", "A green star and a blue triangle"),
];

/// Files dropped, picked or pasted: a checkpoint (with its config.json and, for SigLIP, its
/// tokenizer.json) loads as the model; several images go to the gallery; anything else is
/// tried as an image.
pub fn take_files(state: AppState, files: Vec<web_sys::File>) {
    let (models, rest): (Vec<_>, Vec<_>) = files.into_iter().partition(|f| is_model_file(&f.name()));
    let (configs, images): (Vec<_>, Vec<_>) =
        rest.into_iter().partition(|f| f.name().to_ascii_lowercase().ends_with(".json"));
    if models.is_empty() && images.len() > 1 {
        return state.gallery.add(state, images);
    }
    spawn_local(async move {
        if let Some(model) = models.first() {
            let name = model.name();
            let Some(bytes) = file_bytes(model).await else { return };
            let mut buffers = vec![bytes];
            let mut extra = Vec::new();
            // tokenizer.json (SigLIP) by its name; any other JSON is the config.
            let (tokenizers, configs): (Vec<_>, Vec<_>) =
                configs.iter().partition(|f| f.name().to_ascii_lowercase().contains("tokenizer"));
            for (kind, file) in [(ExtraFile::Config, configs.first()), (ExtraFile::Tokenizer, tokenizers.first())] {
                if let Some(f) = file
                    && let Some(b) = file_bytes(f).await
                {
                    buffers.push(b);
                    extra.push(kind);
                }
            }
            state.load_model(ModelSource::File { name: name.clone(), extra }, buffers, name);
        } else if let Some(image) = images.first() {
            if let Some(bytes) = file_bytes(image).await {
                state.set_image(image.name(), bytes);
            }
        } else if !configs.is_empty() {
            state
                .image_error
                .set(Some("a config.json alone is not a model: drop it together with the weights file".into()));
        }
    });
}

/// A sample's small picture for its button (www/samples/thumbs/, made by
/// tools/web/make-thumbs.mjs): the sample itself is fetched when it is picked.
fn thumb(url: &str) -> String {
    url.replace("samples/", "samples/thumbs/").replace(".png", ".webp")
}

fn file_list(list: Option<web_sys::FileList>) -> Vec<web_sys::File> {
    let Some(list) = list else { return vec![] };
    (0..list.length()).filter_map(|i| list.get(i)).collect()
}

fn overlay_class(dragging: i32) -> &'static str {
    if dragging > 0 { "drop-overlay visible" } else { "drop-overlay" }
}

#[component]
pub fn ImagePanel() -> impl IntoView {
    let state = expect_context::<AppState>();
    let dragging = RwSignal::new(0i32);
    // Drag and drop anywhere on the page; enter/leave are counted because they fire for every
    // child element crossed.
    let _ = window_event_listener(leptos::ev::dragenter, move |ev| {
        ev.prevent_default();
        dragging.update(|d| *d += 1);
    });
    let _ = window_event_listener(leptos::ev::dragleave, move |ev| {
        ev.prevent_default();
        dragging.update(|d| *d = (*d - 1).max(0));
    });
    let _ = window_event_listener(leptos::ev::dragover, move |ev| ev.prevent_default());
    let _ = window_event_listener(leptos::ev::drop, move |ev| {
        ev.prevent_default();
        dragging.set(0);
        take_files(state, file_list(ev.data_transfer().and_then(|d| d.files())));
    });
    let _ = window_event_listener(leptos::ev::paste, move |ev: web_sys::ClipboardEvent| {
        let files = file_list(ev.clipboard_data().and_then(|d| d.files()));
        if !files.is_empty() {
            ev.prevent_default();
            take_files(state, files);
        }
    });
    let on_pick = move |ev: leptos::ev::Event| {
        let input: web_sys::HtmlInputElement = ev.target().unwrap().unchecked_into();
        take_files(state, file_list(input.files()));
        input.set_value("");
    };
    let load_sample = move |url: &'static str, name: &'static str| {
        spawn_local(async move {
            match fetch_bytes(url).await {
                Some(bytes) => state.set_image(name.to_string(), bytes),
                None => state.image_error.set(Some(format!("the sample {url} could not be loaded"))),
            }
        });
    };
    let status = move || {
        match state.image.get() {
        ImageStatus::Empty => {
            view! { <p class="hint">"Drop an image anywhere on the page, paste one, pick a file, or try a sample."</p> }
                .into_any()
        }
        ImageStatus::Decoding { name, .. } if !state.engine_ready.get() => {
            view! { <p class="hint" data-testid="image-waiting">{format!("{name}: taken; it is read as soon as the engine has arrived.")}</p> }
                .into_any()
        }
        ImageStatus::Decoding { name, .. } => view! { <p class="hint">{format!("Reading {name}…")}</p> }.into_any(),
        ImageStatus::Ready { name, width, height, .. } => {
            let on_default =
                matches!(state.model.get(), ModelStatus::Ready(m) if m.name == crate::protocol::DEFAULT_MODEL_NAME);
            view! {
                <p class="ok" data-testid="image-ready">{format!("{name} ({width}×{height})")}</p>
                <Show when=move || on_default>
                    <p class="notice small" data-testid="default-model-hint">
                        "The default model only knows coloured shapes (circles, squares, triangles, stars, crosses and rings in six colours) on plain, striped or noisy backgrounds; for photos, load a real CLIP under “Use another model” (OpenCLIP ViT-B/16, one click)."
                    </p>
                </Show>
            }.into_any()
        }
    }
    };
    // Beside the image kept (a file that cannot be read replaces nothing).
    let error = move || {
        state.image_error.get().map(|msg| {
            let kept = if matches!(state.image.get(), ImageStatus::Ready { .. }) {
                " The image before is still in use."
            } else {
                ""
            };
            // The decoder's own message already lists the formats it reads.
            let formats = if msg.contains("PNG") { "" } else { ": PNG, JPEG, GIF, WebP, BMP, ICO" };
            let text = format!("{}. Try another file{formats}.{kept}", msg.trim_end_matches('.'));
            view! { <p class="error" role="alert" data-testid="image-error">{text}</p> }
        })
    };
    view! {
        <div class=move || overlay_class(dragging.get()) aria-hidden="true">"Drop an image or a model file"</div>
        <fieldset class="panel image-panel" aria-describedby="drop-help">
            <legend>"Image"</legend>
            <p class="sr-only" id="drop-help">"Drop an image file anywhere on the page, paste one, or choose a file or a sample below."</p>
            <label class="file">
                "Choose a file "
                <input type="file" data-testid="image-input" accept="image/*,.safetensors,.bin,.pt,.pth,.json" multiple=true on:change=on_pick />
            </label>
            <div role="status" aria-live="polite">{status}</div>
            {error}
            <div class="samples" role="group" aria-label="Sample images">
                {SAMPLES.iter().map(|&(url, name)| view! {
                    <button class="sample" title=name aria-label=format!("Sample: {name}") on:click=move |_| load_sample(url, name)>
                        <img src=thumb(url) alt="" width="56" height="56" loading="lazy" decoding="async" />
                    </button>
                }).collect_view()}
            </div>
            <Camera />
        </fieldset>
    }
}
