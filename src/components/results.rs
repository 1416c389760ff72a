use std::sync::Arc;

use leptos::html::Canvas;
use leptos::prelude::*;

use crate::app::{AppState, ImageStatus, ModelStatus, Original, Results as Maps, ViewMode};
use crate::protocol::LIKELY_ABSENT;
use crate::render::{download, draw_overlay, draw_rgb, gray_png, map_png, rgb_png, slug};

/// The heatmaps: the selected one large over the photo, a strip of its layers, and one card per
/// prompt (or per method when comparing) to switch.
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
    // Said to screen readers when maps arrive (the canvases themselves are only labelled).
    let announce = move || {
        state.results.get().map(|r| {
            let best = r.ready.prompts.iter().max_by(|a, b| a.score.total_cmp(&b.score));
            let n = r.ready.prompts.len();
            match best {
                Some(b) if n > 1 => format!("Heatmaps ready for {n} prompts; the closest is “{}”.", b.prompt),
                Some(b) => format!("Heatmap ready for “{}”, {} {:.3}.", b.prompt, score_name(state), b.score),
                None => String::new(),
            }
        })
    };
    view! {
        <p class="sr-only" role="status" aria-live="polite" data-testid="announce">{announce}</p>
        <div class="results" data-testid="results" data-seq=seq>
            <Show when=move || state.results.get().is_some() fallback=placeholder>
                <MainView />
                <div class="thumbs" role="group" aria-label="Heatmaps: choose one for the large view">{cards}</div>
            </Show>
        </div>
    }
}

/// The map on the large view, resized onto the photo (kept while only the opacity or the
/// colormap changes).
struct ViewMap {
    /// `(height, width)` of the picture drawn (the photo's view copy, or the model's input
    /// without one).
    to: (usize, usize),
    image: Arc<Vec<u8>>,
    /// The part of `to` the map covers, and the map's values there.
    region: (usize, usize),
    values: Vec<f32>,
    /// The map at the model's size, on an input of `input`, for exports at the photo's size.
    map: Vec<f32>,
    size: (usize, usize),
    input: (usize, usize),
    original: Option<Original>,
    label: String,
    slug: String,
    image_id: u64,
    /// The method and prompt shown (the segmentation takes every prompt of the method).
    method: usize,
    prompt: usize,
}

fn view_map(state: AppState, r: &Maps) -> Option<ViewMap> {
    let (m, p) = state.selected.get();
    // A layer chosen on LeGrad's strip means nothing for a baseline without layers: its sum.
    let layer = state.selected_layer.get().filter(|l| r.layer_grid(m, p, *l).is_some());
    let map = r.shown_map(m, p, layer)?;
    let prompt = r.ready.prompts.get(p)?;
    let method = *r.ready.methods.get(m)?;
    let original = state.originals.with(|v| v.iter().find(|o| o.id == r.ready.image_id).cloned());
    let (to, image) = match &original {
        Some(o) => (o.view_size, o.view.clone()),
        None => (r.ready.size, r.rgb.clone()),
    };
    let (region, values) = legrad::overlay::resize_onto(&map, r.ready.size, r.ready.input, to).ok()?;
    let which = match layer.and_then(|l| r.ready.layers.get(l)) {
        Some(l) => format!("layer {l}"),
        None => match r.ready.layers.as_slice() {
            [a] => format!("layer {a}"),
            [a, .., b] => format!("layers {a}–{b}"),
            [] => String::new(),
        },
    };
    let label = [
        prompt.prompt.clone(),
        if r.ready.methods.len() > 1 { method.name().to_string() } else { String::new() },
        which,
    ]
    .into_iter()
    .filter(|s| !s.is_empty())
    .collect::<Vec<_>>()
    .join(" · ");
    let slug = match layer.and_then(|l| r.ready.layers.get(l)) {
        Some(l) => format!("{}-layer{l}", slug(&prompt.prompt)),
        None => slug(&prompt.prompt),
    };
    Some(ViewMap {
        to,
        image,
        region,
        values,
        map,
        size: r.ready.size,
        input: r.ready.input,
        original,
        label,
        slug,
        image_id: r.ready.image_id,
        method: m,
        prompt: p,
    })
}

/// `values` over `region` of a picture of `to`; NaN (in no mask) where the map does not reach.
fn full_frame(values: &[f32], region: (usize, usize), to: (usize, usize)) -> Vec<f32> {
    legrad::overlay::into_frame(values, region, to, f32::NAN)
}

/// Every prompt's map of method `method` resized onto a picture of `to` (the segmentation).
fn prompt_maps(r: &Maps, method: usize, to: (usize, usize)) -> Vec<Vec<f32>> {
    (0..r.ready.prompts.len())
        .filter_map(|p| {
            let (region, values) =
                legrad::overlay::resize_onto(r.map(method, p), r.ready.size, r.ready.input, to).ok()?;
            Some(full_frame(&values, region, to))
        })
        .collect()
}

#[component]
fn MainView() -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    let shown = RwSignal::new(None::<Arc<ViewMap>>);
    // Every prompt's map on the view's picture, while the segmentation is shown.
    let segments = RwSignal::new(None::<Arc<Vec<Vec<f32>>>>);
    let hover = RwSignal::new(None::<(f32, usize, usize)>);
    // The map for the selection, resized onto the photo: again only when the maps, the
    // selection or the photo change.
    Effect::new(move |_| {
        let view = state.results.get().and_then(|r| view_map(state, &r));
        shown.set(view.map(Arc::new));
    });
    Effect::new(move |_| {
        let maps = (state.view_mode.get() == ViewMode::Segments)
            .then(|| state.results.get().zip(shown.get()).map(|(r, v)| Arc::new(prompt_maps(&r, v.method, v.to))))
            .flatten();
        segments.set(maps);
    });
    // Drawn again when the opacity or the colormap change (nothing is recomputed but colours).
    Effect::new(move |_| {
        let (Some(v), Some(c)) = (shown.get(), canvas.get()) else { return };
        let threshold = state.mask_threshold.get();
        let rgb = match (state.view_mode.get(), segments.get()) {
            (ViewMode::Mask, _) => {
                let full = full_frame(&v.values, v.region, v.to);
                let mask: Vec<u8> = legrad::masks::mask(&full, threshold).iter().map(|&m| m as u8).collect();
                mask_view(&v.image, &mask, v.prompt, state.opacity.get())
            }
            (ViewMode::Segments, Some(maps)) => {
                let refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
                legrad::masks::draw_labels(&v.image, &legrad::masks::labels(&refs, threshold), state.opacity.get())
            }
            _ => legrad::overlay::blend_region(
                &v.image,
                v.to,
                &v.values,
                v.region,
                state.opacity.get(),
                state.colormap.get(),
            ),
        };
        draw_rgb(&c, &rgb, v.to);
        // Where the map peaks, on the canvas as drawn (with the image it was drawn over).
        let peak = v.values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i).unwrap_or(0);
        let _ = c.set_attribute("data-peak", &format!("{},{}", peak % v.region.1.max(1), peak / v.region.1.max(1)));
        let _ = c.set_attribute("data-image", &v.image_id.to_string());
        crate::components::keep_view_in_sight();
    });
    // Mouse, pen and touch alike: pointing, a tap or a drag reads the value under it (the
    // canvas takes touches for itself, `touch-action: none`, so a drag on it does not scroll).
    let on_move = move |ev: leptos::ev::PointerEvent| {
        if ev.pointer_type() != "mouse" && ev.buttons() == 0 && ev.type_() == "pointermove" {
            return;
        }
        let (Some(v), Some(c)) = (shown.get_untracked(), canvas.get_untracked()) else { return };
        let rect = c.get_bounding_client_rect();
        let x = ((ev.client_x() as f64 - rect.left()) / rect.width() * v.to.1 as f64).floor();
        let y = ((ev.client_y() as f64 - rect.top()) / rect.height() * v.to.0 as f64).floor();
        let (x, y) = (x.max(0.0) as usize, y.max(0.0) as usize);
        hover.set((x < v.region.1 && y < v.region.0).then(|| (v.values[y * v.region.1 + x], x, y)));
    };
    // The cursor's pixel on the photo itself (the view may be a smaller copy).
    let on_photo = move |x: usize, y: usize| -> (usize, usize) {
        match shown.get_untracked().and_then(|v| v.original.as_ref().map(|o| (v.to, o.height, o.width))) {
            Some((to, h, w)) => (x * w / to.1.max(1), y * h / to.0.max(1)),
            None => (x, y),
        }
    };
    // The keyboard's cursor: arrows move it by a twentieth of the image and read the value.
    let on_key = move |ev: leptos::ev::KeyboardEvent| {
        let Some(v) = shown.get_untracked() else { return };
        let (dx, dy) = match ev.key().as_str() {
            "ArrowLeft" => (-1, 0),
            "ArrowRight" => (1, 0),
            "ArrowUp" => (0, -1),
            "ArrowDown" => (0, 1),
            _ => return,
        };
        ev.prevent_default();
        let (x, y) = hover.get_untracked().map(|h| (h.1, h.2)).unwrap_or((v.region.1 / 2, v.region.0 / 2));
        let step = |n: usize| (n / 20).max(1) as i64;
        let x = (x as i64 + dx * step(v.region.1)).clamp(0, v.region.1 as i64 - 1) as usize;
        let y = (y as i64 + dy * step(v.region.0)).clamp(0, v.region.0 as i64 - 1) as usize;
        hover.set(Some((v.values[y * v.region.1 + x], x, y)));
    };
    // Exports at the photo's own size (the view may be a smaller copy): drawn again from the
    // map, as `legrad explain --on-original` draws them.
    let at_photo = move || {
        let v = shown.get_untracked()?;
        let (to, image) = match &v.original {
            Some(o) => ((o.height, o.width), o.rgb.clone()),
            None => (v.to, v.image.clone()),
        };
        let (region, values) = legrad::overlay::resize_onto(&v.map, v.size, v.input, to).ok()?;
        Some((v, to, image, region, values))
    };
    let export_overlay = move |_| {
        let Some((v, to, image, region, values)) = at_photo() else { return };
        let rgb = legrad::overlay::blend_region(
            &image,
            to,
            &values,
            region,
            state.opacity.get_untracked(),
            state.colormap.get_untracked(),
        );
        if let Some(png) = rgb_png(&rgb, to) {
            download(&png, &format!("legrad-{}.png", v.slug), "image/png");
        }
    };
    let export_map = move |_| {
        let Some((v, to, _, region, values)) = at_photo() else { return };
        // What the map does not cover (a few pixels at most) is 0.
        let full = legrad::overlay::into_frame(&values, region, to, 0.0);
        if let Some(png) = map_png(&full, to) {
            download(&png, &format!("legrad-{}-map16.png", v.slug), "image/png");
        }
    };
    // The selected prompt's mask at the photo's size.
    let export_mask = move |_| {
        let Some((v, to, _, region, values)) = at_photo() else { return };
        let full = full_frame(&values, region, to);
        let bytes: Vec<u8> = legrad::masks::mask(&full, state.mask_threshold.get_untracked())
            .iter()
            .map(|&m| if m { 255 } else { 0 })
            .collect();
        if let Some(png) = gray_png(&bytes, to) {
            download(&png, &format!("legrad-{}-mask.png", v.slug), "image/png");
        }
    };
    // Every prompt's label at the photo's size (0: none, k: the k-th prompt) and its legend,
    // as `legrad explain --masks` writes them.
    let export_labels = move |_| {
        let (Some(v), Some(r)) = (shown.get_untracked(), state.results.get_untracked()) else { return };
        let to = v.original.as_ref().map_or(v.to, |o| (o.height, o.width));
        let threshold = state.mask_threshold.get_untracked();
        // One prompt at a time: a photo's full-size maps of every prompt at once would be large.
        let mut segmentation = legrad::masks::Segmentation::new(to.0 * to.1, threshold);
        for p in 0..r.ready.prompts.len().min(legrad::masks::MAX_LABELS) {
            let Ok((region, values)) =
                legrad::overlay::resize_onto(r.map(v.method, p), r.ready.size, r.ready.input, to)
            else {
                return;
            };
            segmentation.add(p, &full_frame(&values, region, to));
        }
        let labels = segmentation.labels;
        let prompts: Vec<String> = r.ready.prompts.iter().map(|p| p.prompt.clone()).collect();
        let legend = legrad::masks::legend(&prompts, &labels, to, threshold);
        if let Some(png) = gray_png(&labels, to) {
            download(&png, "legrad-labels.png", "image/png");
        }
        if let Ok(json) = serde_json::to_string_pretty(&legend) {
            download(json.as_bytes(), "legrad-labels.json", "application/json");
        }
    };
    let mode = move || state.view_mode.get();
    let label = move || shown.get().map(|v| v.label.clone()).unwrap_or_default();
    // The photo's size (what exports have).
    let size = move || {
        shown
            .get()
            .map(|v| v.original.as_ref().map_or(v.to, |o| (o.height, o.width)))
            .map(|(h, w)| format!("{w}x{h}"))
            .unwrap_or_default()
    };
    let input = move || state.results.get().map(|r| format!("{}x{}", r.ready.input.1, r.ready.input.0));
    let shown_absent = move || {
        let (_, p) = state.selected.get();
        state.view_mode.get() == ViewMode::Heatmap
            && state
                .results
                .get()
                .and_then(|r| r.ready.prompts.get(p).map(|p| p.presence < LIKELY_ABSENT))
                .unwrap_or(false)
    };
    let score = move || {
        let (_, p) = state.selected.get();
        state
            .results
            .get()
            .and_then(|r| r.ready.prompts.get(p).map(|p| format!("{} {:.3}", score_name(state), p.score)))
    };
    view! {
        <figure class=move || if shown_absent() { "main-view absent" } else { "main-view" } data-testid="main-view" data-size=size data-input=input
            data-mode=move || mode().key()>
            <canvas node_ref=canvas data-testid="main-canvas" tabindex="0"
                style=move || shown.get().map(|v| format!("--ratio: {} / {}", v.to.1, v.to.0.max(1)))
                aria-label=move || format!("Heatmap for {} over the image", label())
                aria-describedby="cursor-value"
                on:pointermove=on_move on:pointerdown=on_move
                on:pointerleave=move |ev: leptos::ev::PointerEvent| if ev.pointer_type() == "mouse" { hover.set(None) }
                on:keydown=on_key></canvas>
            <figcaption>
                <span class="prompt" data-testid="main-label">{label}</span>
                <span class="score">{score}</span>
                <span class="value" id="cursor-value" data-testid="cursor-value" aria-live="polite"
                    data-x=move || hover.get().map(|h| on_photo(h.1, h.2).0.to_string())
                    data-y=move || hover.get().map(|h| on_photo(h.1, h.2).1.to_string())>
                    {move || hover.get().map(|(v, x, y)| { let (x, y) = on_photo(x, y); format!("value {v:.3} at ({x}, {y})") }).unwrap_or_else(|| "point at or tap the map (or use the arrow keys) for its value".into())}
                </span>
                <ViewModes />
                <Show when=move || mode() == ViewMode::Heatmap fallback=|| view! { <SegmentLegend /> }>
                    <Legend />
                </Show>
                <span class="buttons">
                    <Show when=move || mode() == ViewMode::Heatmap>
                        <button class="secondary" on:click=export_overlay>"Overlay PNG"</button>
                        <button class="secondary" on:click=export_map>"Map PNG"</button>
                    </Show>
                    <Show when=move || mode() == ViewMode::Mask>
                        <button class="secondary" data-testid="export-mask" on:click=export_mask>"Mask PNG"</button>
                    </Show>
                    <Show when=move || mode() == ViewMode::Segments>
                        <button class="secondary" data-testid="export-labels" on:click=export_labels>"Labels PNG + legend"</button>
                    </Show>
                    <span class="small hint">{move || format!("at the image's size, {}", size().replace('x', "×"))}</span>
                </span>
            </figcaption>
            <LayerStrip />
        </figure>
    }
}

/// The layers of the range under the large view: their sum (the map) and each layer alone.
#[component]
fn LayerStrip() -> impl IntoView {
    let state = expect_context::<AppState>();
    let layers = move || {
        let r = state.results.get()?;
        let (m, _) = state.selected.get();
        (r.ready.layer_methods.get(m).copied().unwrap_or(false) && !r.ready.layers.is_empty())
            .then(|| r.ready.layers.clone())
    };
    view! {
        <Show when=move || layers().is_some()>
            <div class="layer-strip" role="group" aria-label="Layers of the range">
                <LayerButton layer=None />
                {move || layers().unwrap_or_default().into_iter().enumerate()
                    .map(|(i, _)| view! { <LayerButton layer=Some(i) /> }).collect_view()}
            </div>
        </Show>
    }
}

/// The colour scale: what a colour on the maps means (drawn with the colormap in use, on any
/// background: it has its own frame and its words follow the page's colours).
#[component]
fn Legend() -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    Effect::new(move |_| {
        let Some(c) = canvas.get() else { return };
        let ramp: Vec<f32> = (0..128).map(|i| i as f32 / 127.0).collect();
        draw_rgb(&c, &legrad::overlay::colorize(&ramp, state.colormap.get()), (1, 128));
    });
    view! {
        <span class="legend" data-testid="legend" role="img"
            aria-label=move || format!("Colour scale ({:?}): from 0, least relevant, to 1, most relevant", state.colormap.get())>
            <span aria-hidden="true">"0"</span>
            <canvas node_ref=canvas width="128" height="1" aria-hidden="true"></canvas>
            <span aria-hidden="true">"1 (most relevant)"</span>
        </span>
    }
}

#[component]
fn LayerButton(layer: Option<usize>) -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    Effect::new(move |_| {
        let (Some(r), Some(c)) = (state.results.get(), canvas.get()) else { return };
        let (m, p) = state.selected.get();
        if let Some(map) = r.shown_map(m, p, layer) {
            draw_overlay(&c, &r.rgb, &map, r.ready.size, state.opacity.get(), state.colormap.get());
        }
    });
    let name = move || match layer {
        None => "all".to_string(),
        Some(i) => state.results.get().and_then(|r| r.ready.layers.get(i).map(|l| l.to_string())).unwrap_or_default(),
    };
    let label = move || match layer {
        None => "sum".to_string(),
        Some(_) => format!("layer {}", name()),
    };
    view! {
        <button class="layer" data-testid="layer" data-layer=name
            aria-pressed=move || (state.selected_layer.get() == layer).to_string()
            title=move || if layer.is_none() { "the sum of the layers (the map)".to_string() } else { format!("{} alone", label()) }
            on:click=move |_| state.selected_layer.set(layer)>
            <canvas node_ref=canvas aria-hidden="true"></canvas>
            <span>{label}</span>
        </button>
    }
}

/// The selected prompt's mask over `image`: inside, the photo tinted with the prompt's colour by
/// `alpha`; outside, the photo darkened.
fn mask_view(image: &[u8], mask: &[u8], prompt: usize, alpha: f32) -> Vec<u8> {
    let c = legrad::masks::color(prompt);
    image
        .chunks_exact(3)
        .zip(mask)
        .flat_map(|(px, &m)| {
            let f = |ch: usize| {
                let v = if m == 1 { px[ch] as f32 * (1.0 - alpha) + c[ch] as f32 * alpha } else { px[ch] as f32 * 0.3 };
                v.round().clamp(0.0, 255.0) as u8
            };
            [f(0), f(1), f(2)]
        })
        .collect()
}

/// The large view's modes and the masks' threshold (a slider: nothing is recomputed but the
/// masks).
#[component]
fn ViewModes() -> impl IntoView {
    let state = expect_context::<AppState>();
    view! {
        <span class="view-modes" role="radiogroup" aria-label="Show">
            {ViewMode::ALL.into_iter().map(|m| view! {
                <label class="check">
                    <input type="radio" name="view-mode" data-testid=format!("view-{}", m.key())
                        prop:checked=move || state.view_mode.get() == m
                        on:change=move |_| state.view_mode.set(m) />
                    {m.label()}
                </label>
            }).collect_view()}
            <Show when=move || state.view_mode.get() != ViewMode::Heatmap>
                <label title="A pixel is in a prompt's mask where its map reaches this (0.5: the LeGrad paper's)">"Threshold "
                    <input type="range" min="0.05" max="0.95" step="0.05" data-testid="mask-threshold"
                        aria-valuetext=move || format!("{:.2}", state.mask_threshold.get())
                        prop:value=move || state.mask_threshold.get().to_string()
                        on:input=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<f32>() { state.mask_threshold.set(v) } } />
                    <span data-testid="mask-threshold-value">{move || format!("{:.2}", state.mask_threshold.get())}</span>
                </label>
            </Show>
        </span>
    }
}

/// The segmentation's (or the mask's) colours: one per prompt.
#[component]
fn SegmentLegend() -> impl IntoView {
    let state = expect_context::<AppState>();
    let entries = move || {
        let r = state.results.get()?;
        let (_, selected) = state.selected.get();
        let only = (state.view_mode.get() == ViewMode::Mask).then_some(selected);
        Some(
            r.ready
                .prompts
                .iter()
                .enumerate()
                .filter(|(k, _)| only.is_none_or(|s| s == *k))
                .map(|(k, p)| {
                    let colour = legrad::masks::hex(legrad::masks::color(k));
                    let absent = p.presence < LIKELY_ABSENT;
                    view! {
                        <li data-testid="segment-legend-entry" data-color=colour.clone()>
                            <span class="swatch" style=format!("background: {colour}") aria-hidden="true"></span>
                            {p.prompt.clone()}
                            {absent.then(|| view! { <span class="notice">" (likely absent)"</span> })}
                        </li>
                    }
                })
                .collect_view(),
        )
    };
    view! { <ul class="segment-legend" aria-label="Mask colours">{entries}</ul> }
}

/// A prompt's words, each underlined by its share of the largest relevance (the values on hover and
/// for screen readers).
#[component]
fn PromptWords(prompt: usize) -> impl IntoView {
    let state = expect_context::<AppState>();
    let words = move || state.words.with(|w| w.of(prompt).to_vec());
    let described = move || {
        let w = words();
        let max = w.iter().fold(0f32, |m, x| m.max(x.relevance));
        let parts: Vec<String> = w
            .iter()
            .map(|x| format!("{} {:.0}%", x.word, if max > 0.0 { 100.0 * x.relevance / max } else { 0.0 }))
            .collect();
        format!("Word relevance: {}", parts.join(", "))
    };
    view! {
        <span class="words" data-testid="words" aria-label=described role="img">
            {move || {
                let w = words();
                let max = w.iter().fold(0f32, |m, x| m.max(x.relevance));
                w.into_iter().map(|x| {
                    let share = if max > 0.0 { x.relevance / max } else { 0.0 };
                    view! {
                        <span class="word" data-testid="word" data-relevance=x.relevance.to_string()
                            style=format!("--share: {share:.3}")
                            title=format!("relevance {:.4} ({:.0}% of the prompt's largest)", x.relevance, 100.0 * share)
                            aria-hidden="true">{x.word}</span>
                    }
                }).collect_view()
            }}
        </span>
    }
}

#[component]
fn MapCard(method: usize, prompt: usize) -> impl IntoView {
    let state = expect_context::<AppState>();
    let canvas = NodeRef::<Canvas>::new();
    // Redraw when the maps, the opacity or the colormap change.
    // A card of an answer with more prompts may hear of a smaller one before the list drops it:
    // it then draws and says nothing.
    Effect::new(move |_| {
        let (Some(r), Some(c)) = (state.results.get(), canvas.get()) else { return };
        if method < r.ready.methods.len() && prompt < r.ready.prompts.len() {
            draw_overlay(&c, &r.rgb, r.map(method, prompt), r.ready.size, state.opacity.get(), state.colormap.get());
        }
    });
    let info = move || {
        state.results.get().and_then(|r| Some((*r.ready.methods.get(method)?, r.ready.prompts.get(prompt)?.clone())))
    };
    let title = move || {
        info().map(|(m, p)| if state.compare.get() { format!("{} · {}", m.name(), p.prompt) } else { p.prompt })
    };
    let selected = move || state.selected.get() == (method, prompt);
    let select = move || state.selected.set((method, prompt));
    let absent = move || info().is_some_and(|(_, p)| p.presence < LIKELY_ABSENT);
    view! {
        <figure class=move || format!("card{}{}", if selected() { " selected" } else { "" }, if absent() { " absent" } else { "" })
            data-testid="map-card" data-presence=move || info().map(|(_, p)| p.presence.to_string()).unwrap_or_default()
            data-prompt=move || info().map(|(_, p)| p.prompt).unwrap_or_default()
            data-method=move || info().map(|(m, _)| m.name().to_string()).unwrap_or_default()>
            <canvas node_ref=canvas data-testid="heatmap" tabindex="0" role="button"
                aria-pressed=move || selected().to_string()
                aria-label=move || title().map(|t| format!("Heatmap for {t}: show it large")).unwrap_or_default()
                on:click=move |_| select()
                on:keydown=move |ev: leptos::ev::KeyboardEvent| {
                    if ev.key() == "Enter" || ev.key() == " " {
                        ev.prevent_default();
                        select();
                    }
                }></canvas>
            <figcaption>
                <Show when=move || !state.compare.get() && state.words.with(|w| !w.of(prompt).is_empty())
                    fallback=move || view! { <span class="prompt">{title}</span> }>
                    <PromptWords prompt=prompt />
                </Show>
                <span class="score" data-testid="score">{move || info().map(|(_, p)| format!("{} {:.3}", score_name(state), p.score))}</span>
                <span class="presence" data-testid="presence">{move || info().map(|(_, p)| {
                    if p.presence < LIKELY_ABSENT {
                        format!("likely absent (presence {:.2})", p.presence)
                    } else {
                        format!("presence {:.2}", p.presence)
                    }
                })}</span>
                <Show when=move || info().is_some_and(|(_, p)| p.constant)>
                    <span class="notice">"flat map: no positive gradient"</span>
                </Show>
            </figcaption>
        </figure>
    }
}

/// What the model's scores are called: "similarity" (CLIP) or "probability" (SigLIP).
fn score_name(state: AppState) -> String {
    match state.model.get() {
        ModelStatus::Ready(m) if !m.score_name.is_empty() => m.score_name,
        _ => "similarity".into(),
    }
}
