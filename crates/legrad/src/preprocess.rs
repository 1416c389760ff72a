//! Image decoding and `LePreprocess` (LEGRAD.md section 1).
//!
//! The reference is PIL: `Resize((H, W), BICUBIC)` on the image as opened, then
//! `convert('RGB')`, `ToTensor`, `Normalize(OpenAI mean, std)`. What that means per mode:
//! * RGB and greyscale: bicubic (a = -0.5, antialiased), rounded to 8 bits per pass;
//!   `fast_image_resize` implements Pillow's convolution and is used for it.
//! * alpha (RGBA, LA): PIL resizes premultiplied and un-premultiplies, then `convert('RGB')`
//!   drops alpha without compositing; fully transparent pixels come out black.
//! * palette (PNG colour type 3, GIF): PIL resizes mode `P` with nearest neighbour.
//! * 16-bit: PIL keeps the high byte of 16-bit RGB; for 16-bit greyscale it clips at 255 (a white
//!   image), which we do not copy: we keep the high byte there too (a documented deviation).
//!
//! Deliberate differences from the reference: EXIF orientation is applied (the reference
//! ignores it, so a phone photo would be explained sideways), and images beyond
//! [`DecodeLimits`] are refused before they are decoded.

use std::io::Cursor;

use fast_image_resize as fr;
use image::{DynamicImage, ImageDecoder, ImageReader};

use crate::error::{LegradError, Result, one_line};

// open_clip's constants, digit for digit (more than f32 holds; kept so they read as the source).
#[allow(clippy::excessive_precision)]
pub const OPENAI_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
#[allow(clippy::excessive_precision)]
pub const OPENAI_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Refuse images whose decoded size would be unreasonable (an "image bomb": a small file that
/// claims 30000 x 30000 pixels).
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    pub max_pixels: u64,
    pub max_side: u32,
    pub max_alloc_bytes: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self { max_pixels: 100_000_000, max_side: 20_000, max_alloc_bytes: 1 << 30 }
    }
}

/// How PIL would treat the decoded pixels when resizing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResizeMode {
    Bicubic,
    /// Palette images: nearest neighbour (PIL resizes mode `P` so).
    Nearest,
}

/// A decoded image, 8 bits per channel, orientation applied.
#[derive(Clone, Debug)]
pub struct DecodedImage {
    pub width: u32,
    pub height: u32,
    /// RGBA, row-major. Alpha is 255 for images without one.
    pub rgba: Vec<u8>,
    pub has_alpha: bool,
    pub resize_mode: ResizeMode,
}

fn is_palette(bytes: &[u8]) -> bool {
    // PNG: IHDR's colour type byte is at offset 25; 3 = indexed.
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") && bytes.len() > 25 && &bytes[12..16] == b"IHDR" {
        return bytes[25] == 3;
    }
    bytes.starts_with(b"GIF8")
}

/// The formats [`decode`] reads.
#[cfg(feature = "rare-image-formats")]
pub const FORMATS: &str = "PNG, JPEG, GIF, WebP, BMP, TIFF, ICO, PNM, TGA, QOI, HDR, EXR, DDS, farbfeld";
#[cfg(not(feature = "rare-image-formats"))]
pub const FORMATS: &str = "PNG, JPEG, GIF, WebP, BMP, ICO";

/// Decode any format the `image` crate reads (of [`FORMATS`]), with limits and EXIF orientation.
pub fn decode(bytes: &[u8], limits: &DecodeLimits) -> Result<DecodedImage> {
    if bytes.is_empty() {
        return Err(LegradError::ImageDecode("the file is empty".into()));
    }
    let reader = ImageReader::new(Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| LegradError::ImageDecode(one_line(e)))?;
    if reader.format().is_none() {
        return Err(LegradError::ImageDecode(format!("this is not an image in a format we can read ({FORMATS})")));
    }
    let format = reader.format();
    let mut decoder = reader.into_decoder().map_err(|e| match e {
        image::ImageError::Unsupported(u) if matches!(u.kind(), image::error::UnsupportedErrorKind::Format(_)) => {
            LegradError::ImageDecode(format!(
                "{} images are not read here (this build reads {FORMATS})",
                format.map(|f| format!("{f:?}")).unwrap_or_else(|| "these".into())
            ))
        }
        e => LegradError::ImageDecode(one_line(e)),
    })?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 {
        return Err(LegradError::ImageDecode("the image has no pixels".into()));
    }
    if w > limits.max_side || h > limits.max_side || (w as u64) * (h as u64) > limits.max_pixels {
        return Err(LegradError::ImageTooLarge {
            width: w as u64,
            height: h as u64,
            limit: limits.max_pixels / 1_000_000,
        });
    }
    let mut image_limits = image::Limits::default();
    image_limits.max_image_width = Some(limits.max_side);
    image_limits.max_image_height = Some(limits.max_side);
    image_limits.max_alloc = Some(limits.max_alloc_bytes);
    decoder.set_limits(image_limits).map_err(|e| LegradError::ImageDecode(one_line(e)))?;
    let orientation = decoder.orientation().ok();
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| match e {
        image::ImageError::Limits(_) => {
            LegradError::ImageTooLarge { width: w as u64, height: h as u64, limit: limits.max_pixels / 1_000_000 }
        }
        other => LegradError::ImageDecode(one_line(other)),
    })?;
    if let Some(o) = orientation {
        img.apply_orientation(o);
    }
    let has_alpha = img.color().has_alpha();
    let rgba = to_rgba8_high_byte(img.clone());
    Ok(DecodedImage {
        width: img.width(),
        height: img.height(),
        rgba,
        has_alpha,
        resize_mode: if is_palette(bytes) { ResizeMode::Nearest } else { ResizeMode::Bicubic },
    })
}

/// 8-bit RGBA; 16-bit channels keep their high byte (PIL's rule for 16-bit RGB).
fn to_rgba8_high_byte(img: DynamicImage) -> Vec<u8> {
    match img {
        DynamicImage::ImageLuma16(b) => b
            .pixels()
            .flat_map(|p| {
                let v = (p.0[0] >> 8) as u8;
                [v, v, v, 255]
            })
            .collect(),
        DynamicImage::ImageLumaA16(b) => b
            .pixels()
            .flat_map(|p| {
                let v = (p.0[0] >> 8) as u8;
                [v, v, v, (p.0[1] >> 8) as u8]
            })
            .collect(),
        DynamicImage::ImageRgb16(b) => {
            b.pixels().flat_map(|p| [(p.0[0] >> 8) as u8, (p.0[1] >> 8) as u8, (p.0[2] >> 8) as u8, 255]).collect()
        }
        DynamicImage::ImageRgba16(b) => b.pixels().flat_map(|p| p.0.map(|c| (c >> 8) as u8)).collect(),
        other => other.to_rgba8().into_raw(),
    }
}

impl DecodedImage {
    /// Resize to `width x height` as PIL would, then drop alpha: 8-bit RGB, row-major.
    ///
    /// PIL's order is kept exactly: premultiply alpha (`MULDIV255`), a horizontal pass, a
    /// vertical pass (each rounded to 8 bits), un-premultiply (`255 * c / a`, truncated).
    /// `fast_image_resize` computes Pillow's coefficients but runs the vertical pass first for
    /// 8-bit images, so the two passes are made as two one-axis resizes.
    pub fn resize_rgb(&self, width: u32, height: u32) -> Result<Vec<u8>> {
        if width == 0 || height == 0 {
            return Err(LegradError::Input("the target size must be positive".into()));
        }
        let premultiply = self.has_alpha && self.resize_mode == ResizeMode::Bicubic;
        let mut buf = self.rgba.clone();
        if premultiply {
            for p in buf.chunks_exact_mut(4) {
                let a = p[3] as u32;
                for c in &mut p[..3] {
                    let t = *c as u32 * a + 128;
                    *c = (((t >> 8) + t) >> 8) as u8;
                }
            }
        }
        let alg = match self.resize_mode {
            ResizeMode::Bicubic => fr::ResizeAlg::Convolution(fr::FilterType::CatmullRom),
            ResizeMode::Nearest => fr::ResizeAlg::Nearest,
        };
        let options = fr::ResizeOptions::new().resize_alg(alg).use_alpha(false);
        let mut resizer = fr::Resizer::new();
        let mut pass = |buf: Vec<u8>, from: (u32, u32), to: (u32, u32)| -> Result<Vec<u8>> {
            if from == to {
                return Ok(buf);
            }
            let src = fr::images::Image::from_vec_u8(from.0, from.1, buf, fr::PixelType::U8x4)
                .map_err(|e| LegradError::Input(format!("image buffer: {e}")))?;
            let mut dst = fr::images::Image::new(to.0, to.1, fr::PixelType::U8x4);
            resizer.resize(&src, &mut dst, &options).map_err(|e| LegradError::Input(format!("resize: {e}")))?;
            Ok(dst.into_vec())
        };
        let buf = if self.resize_mode == ResizeMode::Nearest {
            pass(buf, (self.width, self.height), (width, height))?
        } else {
            let buf = pass(buf, (self.width, self.height), (width, self.height))?;
            pass(buf, (width, self.height), (width, height))?
        };
        Ok(buf
            .chunks_exact(4)
            .flat_map(|p| {
                let a = p[3] as u32;
                if premultiply && a != 0 && a != 255 {
                    [0, 1, 2].map(|c| (255 * p[c] as u32 / a).min(255) as u8)
                } else {
                    [p[0], p[1], p[2]]
                }
            })
            .collect())
    }

    /// The image to draw maps over, at its own resolution, or scaled down (as PIL would, see
    /// [`Self::resize_rgb`]) to `max_side` on its long side: 8-bit RGB, alpha dropped as the
    /// model's input drops it. Returns `(width, height, rgb)`.
    pub fn display_rgb(&self, max_side: u32) -> Result<(u32, u32, Vec<u8>)> {
        let long = self.width.max(self.height);
        if long <= max_side {
            let rgb = self.rgba.chunks_exact(4).flat_map(|p| [p[0], p[1], p[2]]).collect();
            return Ok((self.width, self.height, rgb));
        }
        let scale = max_side as f64 / long as f64;
        let w = ((self.width as f64 * scale).round() as u32).clamp(1, max_side);
        let h = ((self.height as f64 * scale).round() as u32).clamp(1, max_side);
        Ok((w, h, self.resize_rgb(w, h)?))
    }

    /// `LePreprocess`: resize to `height x width` (aspect ratio not kept, as the reference),
    /// then `[3, H, W]` floats normalised with the OpenAI mean and std.
    pub fn to_pixels(&self, height: usize, width: usize) -> Result<Vec<f32>> {
        let rgb = self.resize_rgb(width as u32, height as u32)?;
        Ok(normalize_rgb(&rgb, height, width))
    }
}

/// 8-bit RGB `[H, W, 3]` → normalised `[3, H, W]` (ToTensor + Normalize).
pub fn normalize_rgb(rgb: &[u8], height: usize, width: usize) -> Vec<f32> {
    let n = height * width;
    let mut out = vec![0f32; 3 * n];
    for (i, p) in rgb.chunks_exact(3).enumerate().take(n) {
        for c in 0..3 {
            out[c * n + i] = (p[c] as f32 / 255.0 - OPENAI_MEAN[c]) / OPENAI_STD[c];
        }
    }
    out
}

/// Undo [`normalize_rgb`] (for overlays drawn on exactly what the model saw).
pub fn denormalize_to_rgb(pixels: &[f32], height: usize, width: usize) -> Vec<u8> {
    let n = height * width;
    (0..n)
        .flat_map(|i| {
            (0..3).map(move |c| {
                let v = pixels[c * n + i] * OPENAI_STD[c] + OPENAI_MEAN[c];
                (v * 255.0).round().clamp(0.0, 255.0) as u8
            })
        })
        .collect()
}

/// An input size: square `N` or `WxH` (width by height).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InputSize {
    pub width: usize,
    pub height: usize,
}

impl InputSize {
    pub fn square(n: usize) -> Self {
        Self { width: n, height: n }
    }

    /// The input for an image of `width x height` that keeps its shape: `long` pixels on the
    /// long side (as the square size; rounded down to whole patches), the short side in
    /// proportion, rounded to whole patches (at least one). A 451x300 photo at 448 with
    /// 16-pixel patches: 448x304.
    pub fn keep_aspect(long: usize, width: u32, height: u32, patch: usize) -> Self {
        let patch = patch.max(1);
        let long = if long >= patch { long / patch * patch } else { long };
        let (l, s) = (width.max(height).max(1) as f64, width.min(height).max(1) as f64);
        let short = ((long as f64 * s / l / patch as f64).round() as usize * patch).clamp(patch.min(long), long);
        if width >= height { Self { width: long, height: short } } else { Self { width: short, height: long } }
    }
}

impl std::str::FromStr for InputSize {
    type Err = LegradError;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || LegradError::Input(format!("'{s}' is not a size: use N (square) or WxH, e.g. 448 or 448x336"));
        let parse = |v: &str| v.trim().parse::<usize>().map_err(|_| bad());
        let size = match s.split_once(['x', 'X']) {
            Some((w, h)) => Self { width: parse(w)?, height: parse(h)? },
            None => Self::square(parse(s)?),
        };
        if size.width == 0 || size.height == 0 || size.width > 4096 || size.height > 4096 {
            return Err(LegradError::Input(format!("size {s} is out of range (1 to 4096 pixels per side)")));
        }
        Ok(size)
    }
}

impl std::fmt::Display for InputSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.width == self.height {
            write!(f, "{}", self.width)
        } else {
            write!(f, "{}x{}", self.width, self.height)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_aspect_rounds_the_short_side_to_patches() {
        assert_eq!(InputSize::keep_aspect(448, 451, 300, 16), InputSize { width: 448, height: 304 });
        assert_eq!(InputSize::keep_aspect(448, 300, 451, 16), InputSize { width: 304, height: 448 });
        assert_eq!(InputSize::keep_aspect(224, 640, 480, 32), InputSize { width: 224, height: 160 });
        assert_eq!(InputSize::keep_aspect(336, 640, 480, 32), InputSize { width: 320, height: 256 });
        assert_eq!(InputSize::keep_aspect(448, 512, 512, 16), InputSize::square(448));
        // A strip keeps at least one patch; nothing exceeds the long side.
        assert_eq!(InputSize::keep_aspect(448, 10_000, 3, 16), InputSize { width: 448, height: 16 });
        assert_eq!(InputSize::keep_aspect(8, 100, 90, 16), InputSize { width: 8, height: 8 });
    }

    #[test]
    fn display_rgb_keeps_or_scales_down() {
        let img = DecodedImage {
            width: 6,
            height: 3,
            rgba: (0..72).map(|i| i as u8).collect(),
            has_alpha: false,
            resize_mode: ResizeMode::Bicubic,
        };
        let (w, h, rgb) = img.display_rgb(4096).unwrap();
        assert_eq!((w, h, rgb.len()), (6, 3, 54));
        assert_eq!(&rgb[..6], &[0, 1, 2, 4, 5, 6]);
        let (w, h, rgb) = img.display_rgb(4).unwrap();
        assert_eq!((w, h, rgb.len()), (4, 2, 24));
    }
}
