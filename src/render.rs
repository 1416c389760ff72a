//! Drawing maps on canvases and exporting them (the colouring itself is the core's
//! `overlay` module, shared with the CLI).

use legrad::overlay::{Colormap, overlay};

pub use crate::png::{gray_png, map_png, rgb_png};
use wasm_bindgen::{Clamped, JsCast};

/// Draw `(1 - alpha) image + alpha heatmap` on `canvas`, at the map's size.
pub fn draw_overlay(
    canvas: &web_sys::HtmlCanvasElement,
    rgb: &[u8],
    map: &[f32],
    (h, w): (usize, usize),
    alpha: f32,
    colormap: Colormap,
) {
    if rgb.len() != h * w * 3 || map.len() != h * w {
        return;
    }
    draw_rgb(canvas, &overlay(rgb, map, alpha, colormap), (h, w));
}

/// Put RGB pixels of `(height, width)` on `canvas`, which takes their size.
pub fn draw_rgb(canvas: &web_sys::HtmlCanvasElement, rgb: &[u8], (h, w): (usize, usize)) {
    if rgb.len() != h * w * 3 {
        return;
    }
    canvas.set_width(w as u32);
    canvas.set_height(h as u32);
    let Some(ctx) =
        canvas.get_context("2d").ok().flatten().and_then(|c| c.dyn_into::<web_sys::CanvasRenderingContext2d>().ok())
    else {
        return;
    };
    let rgba: Vec<u8> = rgb.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect();
    if let Ok(data) = web_sys::ImageData::new_with_u8_clamped_array_and_sh(Clamped(&rgba), w as u32, h as u32) {
        let _ = ctx.put_image_data(&data, 0.0, 0.0);
    }
}

/// Offer bytes as a download.
pub fn download(bytes: &[u8], filename: &str, mime: &str) {
    let array = js_sys::Array::new();
    array.push(&js_sys::Uint8Array::from(bytes).buffer());
    let props = web_sys::BlobPropertyBag::new();
    props.set_type(mime);
    let Ok(blob) = web_sys::Blob::new_with_buffer_source_sequence_and_options(&array, &props) else { return };
    let Ok(url) = web_sys::Url::create_object_url_with_blob(&blob) else { return };
    download_url(&url, filename);
    let _ = web_sys::Url::revoke_object_url(&url);
}

fn download_url(url: &str, filename: &str) {
    let Some(doc) = web_sys::window().and_then(|w| w.document()) else { return };
    if let Ok(a) = doc.create_element("a").map(|e| e.unchecked_into::<web_sys::HtmlAnchorElement>()) {
        a.set_href(url);
        a.set_download(filename);
        a.click();
    }
}

/// A filename-safe version of a prompt.
pub fn slug(text: &str) -> String {
    let s: String = text.chars().map(|c| if c.is_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
    let s = s.trim_matches('-').to_string();
    if s.is_empty() { "map".into() } else { s.chars().take(40).collect() }
}
