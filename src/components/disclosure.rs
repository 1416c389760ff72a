use leptos::prelude::*;

/// Below this width (CSS pixels) the page takes its phone layout (www/style.css has the same
/// number): the large view first, settings and model behind disclosures.
pub const NARROW_MAX_WIDTH: f64 = 760.0;

/// Is the window as narrow as a phone's?
pub fn narrow() -> bool {
    web_sys::window().and_then(|w| w.inner_width().ok()).and_then(|w| w.as_f64()).is_some_and(|w| w <= NARROW_MAX_WIDTH)
}

/// A panel behind a disclosure on a phone: closed there at first; on a wider screen open, its
/// summary hidden (www/style.css), and opened again when the window widens.
#[component]
pub fn Disclosure(label: &'static str, testid: &'static str, children: Children) -> impl IntoView {
    let open = RwSignal::new(!narrow());
    let _ = window_event_listener(leptos::ev::resize, move |_| {
        if !narrow() && !open.get_untracked() {
            open.set(true);
        }
    });
    view! {
        <details class="disclosure" data-testid=testid prop:open=move || open.get()
            on:toggle=move |ev| {
                use wasm_bindgen::JsCast;
                if let Some(d) = ev.target().and_then(|t| t.dyn_into::<web_sys::HtmlDetailsElement>().ok()) {
                    open.set(d.open());
                }
            }>
            <summary class="disclosure-summary">{label}</summary>
            {children()}
        </details>
    }
}
