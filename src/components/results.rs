use leptos::html::Canvas;
use leptos::prelude::*;

use crate::app::{AppState, ImageStatus};
use crate::render::{download, download_url, draw_overlay, map_png, slug};

/// The heatmaps: one card per prompt, or per method when comparing.
#[component]
pub fn Results() -> impl IntoView {
    let state = expect_context::<AppState>();
    let cards = move || {
        state.results.get().map(|r| {
            let methods = r.ready.methods.len();
            let prompts = r.ready.prompts.len();
            let pairs: Vec<(usize, usize)> = if methods > 1 {
                (0..methods).map(|m| (m, 0)).collect()
            } else {
                (0..prompts).map(|p| (0, p)).collect()
            };
            pairs.into_iter().map(|(m, p)| view! { <MapCard method=m prompt=p /> }).collect_view()
        })
    };
    let seq = move || state.results.get().map(|r| r.ready.seq.to_string()).unwrap_or_default();
    let placeholder = move || {
        let msg = match state.image.get() {
            ImageStatus::Ready { .. } if state.prompts().is_empty() => "Type a prompt to see where the model looks.",
            ImageStatus::Ready { .. } => "Computing…",
            _ => "Your heatmaps appear here once there is an image and a prompt.",
        };
        view! { <p class="placeholder">{msg}</p> }
    };
    view! {
        <div class="results" data-testid="results" data-seq=seq>
            <Show when=move || state.results.get().is_some() fallback=placeholder>
                {cards}
            </Show>
        </div>
    }
}

#[component]
fn MapCard(method: usize, prompt: usize) -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    let hover = RwSignal::new(None::<f32>);
    // Redraw when the maps, the opacity or the colormap change.
    Effect::new(move |_| {
        let (Some(r), Some(c)) = (state.results.get(), canvas.get()) else { return };
        draw_overlay(&c, &r.rgb, r.map(method, prompt), r.ready.size, state.opacity.get(), state.colormap.get());
    });
    let info = move || state.results.get().map(|r| (r.ready.methods[method], r.ready.prompts[prompt].clone()));
    let title = move || {
        info().map(|(m, p)| if state.compare.get() { format!("{} · {}", m.name(), p.prompt) } else { p.prompt })
    };
    let on_move = move |ev: leptos::ev::MouseEvent| {
        let (Some(r), Some(c)) = (state.results.get_untracked(), canvas.get_untracked()) else { return };
        let (h, w) = r.ready.size;
        let rect = c.get_bounding_client_rect();
        let x = ((ev.client_x() as f64 - rect.left()) / rect.width() * w as f64).floor();
        let y = ((ev.client_y() as f64 - rect.top()) / rect.height() * h as f64).floor();
        if x >= 0.0 && y >= 0.0 && (x as usize) < w && (y as usize) < h {
            hover.set(Some(r.map(method, prompt)[y as usize * w + x as usize]));
        }
    };
    let export_overlay = move |_| {
        if let Some(c) = canvas.get_untracked()
            && let Ok(url) = c.to_data_url()
        {
            let name = info().map(|(_, p)| slug(&p.prompt)).unwrap_or_default();
            download_url(&url, &format!("legrad-{name}.png"));
        }
    };
    let export_map = move |_| {
        if let Some(r) = state.results.get_untracked()
            && let Some(png) = map_png(r.map(method, prompt), r.ready.size)
        {
            let name = info().map(|(_, p)| slug(&p.prompt)).unwrap_or_default();
            download(&png, &format!("legrad-{name}-map16.png"), "image/png");
        }
    };
    view! {
        <figure class="card" data-testid="map-card" data-prompt=move || info().map(|(_, p)| p.prompt).unwrap_or_default()
            data-method=move || info().map(|(m, _)| m.name().to_string()).unwrap_or_default()>
            <canvas node_ref=canvas data-testid="heatmap" tabindex="0"
                aria-label=move || title().map(|t| format!("Heatmap for {t}")).unwrap_or_default()
                on:mousemove=on_move on:mouseleave=move |_| hover.set(None)></canvas>
            <figcaption>
                <span class="prompt">{title}</span>
                <span class="score" data-testid="score">{move || info().map(|(_, p)| format!("similarity {:.3}", p.score))}</span>
                <Show when=move || info().is_some_and(|(_, p)| p.constant)>
                    <span class="notice">"flat map: no positive gradient"</span>
                </Show>
                <span class="value" aria-live="off">{move || hover.get().map(|v| format!("value {v:.3}")).unwrap_or_default()}</span>
                <span class="buttons">
                    <button class="secondary" on:click=export_overlay>"Overlay PNG"</button>
                    <button class="secondary" on:click=export_map>"Map PNG"</button>
                </span>
            </figcaption>
        </figure>
    }
}
