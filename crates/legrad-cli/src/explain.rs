//! `legrad explain`: one image into DIR, or many (`--images`, [`crate::batch`]) into a folder
//! each, by [`explain_one`].

use std::path::{Path, PathBuf};

use legrad::engine::{Engine, ExplainedPrompt, PreparedPrompt};
use legrad::explain::{ExplainOptions, Method};
use legrad::npy;
use legrad::overlay::{Colormap, overlay};
use legrad::preprocess::{DecodedImage, InputSize, denormalize_to_rgb};
use legrad::{LegradError, TraceRequest};

use crate::CliResult;

/// What every image of a run is explained with.
pub(crate) struct Settings {
    pub prompts: Vec<PreparedPrompt>,
    pub method: Method,
    pub options: ExplainOptions,
    pub request: TraceRequest,
    pub colormap: Colormap,
    pub per_layer: bool,
    /// `--size`; with `keep_aspect` its long side.
    pub size: InputSize,
    pub keep_aspect: bool,
    pub on_original: bool,
    pub masks: bool,
    pub mask_threshold: f32,
}

/// An image ready for the engine: its pixels at the input size and, from a file, the decoded
/// picture (what `--on-original` and `--masks` draw on, at most 4096 px on the long side).
pub(crate) struct Loaded {
    pub pixels: Vec<f32>,
    pub size: InputSize,
    pub photo: Option<(u32, u32, Vec<u8>)>,
}

impl Settings {
    /// The input size for an image of `img`'s shape.
    pub fn size_for(&self, img: &DecodedImage, patch: usize) -> CliResult<InputSize> {
        if !self.keep_aspect {
            return Ok(self.size);
        }
        if self.size.width != self.size.height {
            return Err(LegradError::Input(format!(
                "--keep-aspect takes one number (the long side), not {}",
                self.size
            )));
        }
        Ok(InputSize::keep_aspect(self.size.width, img.width, img.height, patch))
    }

    /// Decode and preprocess an image file's bytes (on any thread: nothing here needs the
    /// engine but its patch size).
    pub fn load(&self, bytes: &[u8], patch: usize) -> CliResult<Loaded> {
        let img = legrad::preprocess::decode(bytes, &legrad::preprocess::DecodeLimits::default())?;
        let size = self.size_for(&img, patch)?;
        let pixels = img.to_pixels(size.height, size.width)?;
        let photo = if self.on_original || self.masks {
            Some(img.display_rgb(legrad::overlay::MAX_ORIGINAL_SIDE)?)
        } else {
            None
        };
        Ok(Loaded { pixels, size, photo })
    }
}

/// Explain `image` and write its files into `out` (created): `n.npy`, `n.png`, `scores.json`,
/// `words.json`, and what the settings add. Returns the results and the files written, by name.
pub(crate) fn explain_one(
    engine: &Engine,
    s: &Settings,
    image: Loaded,
    out: &Path,
) -> CliResult<(Vec<ExplainedPrompt>, Vec<Vec<String>>)> {
    let Loaded { pixels, size, photo } = image;
    let trace = engine.trace(pixels.clone(), size, &s.request)?;
    let results = pollster::block_on(engine.explain(&trace, &s.prompts, s.method, &s.options))?;
    let words = pollster::block_on(engine.words(&trace, &s.prompts, &s.options))?;
    std::fs::create_dir_all(out).map_err(|e| LegradError::io_path(out, e))?;
    let (h, w) = results[0].map.size;
    // The overlay is drawn on what the model saw.
    let rgb = denormalize_to_rgb(&pixels, size.height, size.width);
    let rgb = crate::crop_rgb(&rgb, size.width, h, w);
    let save_rgb = |name: &str, rgb: &[u8], (w, h): (u32, u32)| {
        image::save_buffer(out.join(name), rgb, w, h, image::ExtendedColorType::Rgb8)
            .map_err(|e| LegradError::Input(format!("cannot write {name}: {e}")))
    };
    let mut files: Vec<Vec<String>> = vec![Vec::new(); results.len()];
    let mut scores = Vec::new();
    for (n, r) in results.iter().enumerate() {
        if r.map.constant {
            eprintln!("note: the map for '{}' is constant (no positive gradient): written as zeros", r.prompt);
        }
        npy::write_f32(&out.join(format!("{n}.npy")), &r.map.map, &[h, w])?;
        save_rgb(&format!("{n}.png"), &overlay(&rgb, &r.map.map, 0.6, s.colormap), (w as u32, h as u32))?;
        files[n].extend([format!("{n}.npy"), format!("{n}.png")]);
        if let (true, Some((ow, oh, orgb))) = (s.on_original, &photo) {
            let to = (*oh as usize, *ow as usize);
            let (region, values) = legrad::overlay::resize_onto(&r.map.map, (h, w), (size.height, size.width), to)?;
            npy::write_f32(&out.join(format!("{n}.original.npy")), &values, &[region.0, region.1])?;
            let img = legrad::overlay::blend_region(orgb, to, &values, region, 0.6, s.colormap);
            save_rgb(&format!("{n}.original.png"), &img, (*ow, *oh))?;
            files[n].extend([format!("{n}.original.npy"), format!("{n}.original.png")]);
        }
        if s.per_layer {
            for (l, m) in &r.map.per_layer {
                npy::write_f32(&out.join(format!("{n}.layer{l}.npy")), m, &[r.map.grid.0, r.map.grid.1])?;
                files[n].push(format!("{n}.layer{l}.npy"));
            }
        }
        scores.push(serde_json::json!({
            "index": n, "prompt": r.prompt, "text": r.text, "score": r.score,
            "presence": r.presence, "likely_absent": r.presence < legrad::presence::LIKELY_ABSENT,
            "truncated": r.truncated, "constant_map": r.map.constant,
        }));
    }
    let json = serde_json::json!({ "method": s.method.name(), "size": [size.width, size.height], "layer_index": s.options.layer_index, "prompts": scores });
    write_json(&out.join("scores.json"), &json)?;
    let words: Vec<_> = results
        .iter()
        .zip(&words)
        .enumerate()
        .map(|(n, (r, w))| serde_json::json!({ "index": n, "prompt": r.prompt, "words": w }))
        .collect();
    write_json(&out.join("words.json"), &serde_json::Value::Array(words))?;
    if s.masks {
        // At the photo's size: each map resized onto it (the part the input covers).
        let (to, base, maps) = match &photo {
            Some((pw, ph, prgb)) => {
                let to = (*ph as usize, *pw as usize);
                let mut maps = Vec::with_capacity(results.len());
                for r in &results {
                    let (region, values) =
                        legrad::overlay::resize_onto(&r.map.map, (h, w), (size.height, size.width), to)?;
                    maps.push(legrad::overlay::into_frame(&values, region, to, 0.0));
                }
                (to, prgb.clone(), maps)
            }
            None => ((h, w), rgb.clone(), results.iter().map(|r| r.map.map.clone()).collect()),
        };
        write_masks(out, &results, &maps, to, &base, s.mask_threshold)?;
        for (n, f) in files.iter_mut().enumerate() {
            f.push(format!("{n}.mask.png"));
        }
    }
    Ok((results, files))
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> CliResult<()> {
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap_or_default())
        .map_err(|e| LegradError::io_path(path, e))
}

/// `--masks`: each prompt's mask, the label image, its legend and the segmentation drawn over
/// `base` (RGB of `to`).
fn write_masks(
    out: &Path,
    results: &[ExplainedPrompt],
    maps: &[Vec<f32>],
    to: (usize, usize),
    base: &[u8],
    threshold: f32,
) -> Result<(), LegradError> {
    use legrad::masks;
    let save = |name: String, bytes: &[u8], color: image::ExtendedColorType| {
        image::save_buffer(out.join(&name), bytes, to.1 as u32, to.0 as u32, color)
            .map_err(|e| LegradError::Input(format!("cannot write {name}: {e}")))
    };
    for (n, m) in maps.iter().enumerate() {
        let bytes: Vec<u8> = masks::mask(m, threshold).iter().map(|&b| if b { 255 } else { 0 }).collect();
        save(format!("{n}.mask.png"), &bytes, image::ExtendedColorType::L8)?;
    }
    if results.len() > masks::MAX_LABELS {
        eprintln!("note: the label image holds the first {} prompts", masks::MAX_LABELS);
    }
    let refs: Vec<&[f32]> = maps.iter().map(|m| m.as_slice()).collect();
    let labels = masks::labels(&refs, threshold);
    save("labels.png".into(), &labels, image::ExtendedColorType::L8)?;
    save("segmentation.png".into(), &masks::draw_labels(base, &labels, 0.55), image::ExtendedColorType::Rgb8)?;
    let prompts: Vec<String> = results.iter().map(|r| r.prompt.clone()).collect();
    write_json(
        &out.join("labels.json"),
        &serde_json::to_value(masks::legend(&prompts, &labels, to, threshold)).unwrap_or_default(),
    )
}

/// The one image of `--image` or `--pixels`.
pub(crate) fn load_single(
    s: &Settings,
    image: Option<&PathBuf>,
    pixels: Option<&PathBuf>,
    patch: usize,
) -> CliResult<Loaded> {
    if let Some(path) = pixels {
        if s.on_original {
            return Err(LegradError::Input("--on-original needs --image".into()));
        }
        let (pixels, size) = npy::read_pixels_file(path)?;
        return Ok(Loaded { pixels, size, photo: None });
    }
    let path = image.ok_or_else(|| LegradError::Input("give --image, --images or --pixels".into()))?;
    let bytes = std::fs::read(path).map_err(|e| LegradError::io_path(path, e))?;
    s.load(&bytes, patch)
}
