use legrad::Method;
use legrad::overlay::Colormap;
use leptos::prelude::*;

use crate::app::{AppState, ModelStatus};

#[component]
pub fn Controls() -> impl IntoView {
    let state = expect_context::<AppState>();
    let layers = move || match state.model.get() {
        ModelStatus::Ready(m) => m.layers,
        _ => 12,
    };
    view! {
        <fieldset class="panel controls">
            <legend>"Settings"</legend>
            <label>"Method "
                <select data-testid="method" on:change=move |ev| {
                    if let Ok(m) = event_target_value(&ev).parse::<Method>() { state.method.set(m) }
                }>
                    {Method::ALL.iter().map(|m| view! {
                        <option value=m.name() selected=move || state.method.get() == *m>{m.name()}</option>
                    }).collect_view()}
                </select>
            </label>
            <label class="check">
                <input type="checkbox" data-testid="compare" prop:checked=move || state.compare.get()
                    on:change=move |ev| state.compare.set(event_target_checked(&ev)) />
                "Compare all methods (first prompt)"
            </label>
            <label title="The long side of the model's input">"Input size "
                <select data-testid="size" on:change=move |ev| {
                    if let Ok(s) = event_target_value(&ev).parse::<u32>() { state.choose_size(s) }
                }>
                    {move || {
                        let mut sizes = vec![224u32, 336, 448];
                        if let ModelStatus::Ready(m) = state.model.get() {
                            for s in [m.native_size as u32, 2 * m.native_size as u32] {
                                if !sizes.contains(&s) { sizes.push(s) }
                            }
                        }
                        sizes.sort();
                        sizes.into_iter().map(|s| view! {
                            <option value=s.to_string() selected=move || state.size.get() == s>{format!("{s} px")}</option>
                        }).collect_view()
                    }}
                </select>
            </label>
            <label class="check">
                <input type="checkbox" data-testid="keep-aspect" prop:checked=move || state.keep_aspect.get()
                    on:change=move |ev| state.keep_aspect.set(event_target_checked(&ev)) />
                "Keep the image's shape (off: square, as the reference)"
            </label>
            <label>"Layers "
                <select data-testid="layers" on:change=move |ev| {
                    if let Ok(k) = event_target_value(&ev).parse::<i64>() { state.layer_index.set(k) }
                }>
                    {move || {
                        let depth = layers() as i64;
                        [-1i64, -2, -3, -4].into_iter().filter(|k| -k <= depth).map(|k| (k, format!("last {}", -k)))
                            .chain(std::iter::once((0, format!("all {depth}"))))
                            .map(|(k, label)| view! { <option value=k.to_string() selected=move || state.layer_index.get() == k>{label}</option> })
                            .collect_view()
                    }}
                </select>
            </label>
            <label>"Opacity "
                <input type="range" min="0" max="1" step="0.05" data-testid="opacity"
                    prop:value=move || state.opacity.get().to_string()
                    on:input=move |ev| { if let Ok(v) = event_target_value(&ev).parse::<f32>() { state.opacity.set(v) } } />
            </label>
            <label>"Colormap "
                <select data-testid="colormap" on:change=move |ev| {
                    if let Ok(c) = event_target_value(&ev).parse::<Colormap>() { state.colormap.set(c) }
                }>
                    <option value="jet">"jet (as the reference)"</option>
                    <option value="viridis">"viridis (perceptual)"</option>
                </select>
            </label>
        </fieldset>
    }
}
