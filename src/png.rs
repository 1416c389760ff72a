//! PNG encodings of the page's exports (no browser types: unit-tested natively).

/// The map as a 16-bit greyscale PNG (0 → 0, 1 → 65535): the raw numbers, lossless enough.
pub fn map_png(map: &[f32], size: (usize, usize)) -> Option<Vec<u8>> {
    // `image` takes 16-bit samples in native byte order (it writes them big-endian itself).
    let data: Vec<u8> = map.iter().flat_map(|v| ((v.clamp(0.0, 1.0) * 65535.0).round() as u16).to_ne_bytes()).collect();
    png(&data, size, image::ExtendedColorType::L16)
}

/// One byte per pixel as an 8-bit greyscale PNG (masks: 0 or 255; labels: 0, 1, 2, ...).
pub fn gray_png(bytes: &[u8], size: (usize, usize)) -> Option<Vec<u8>> {
    png(bytes, size, image::ExtendedColorType::L8)
}

/// RGB pixels as an 8-bit PNG.
pub fn rgb_png(rgb: &[u8], size: (usize, usize)) -> Option<Vec<u8>> {
    png(rgb, size, image::ExtendedColorType::Rgb8)
}

fn png(data: &[u8], (h, w): (usize, usize), color: image::ExtendedColorType) -> Option<Vec<u8>> {
    use image::ImageEncoder;
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out).write_image(data, w as u32, h as u32, color).ok()?;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_png_holds_the_values() {
        let map = [0.0, 0.0625, 0.5, 1.0];
        let img = image::load_from_memory(&map_png(&map, (2, 2)).unwrap()).unwrap();
        assert_eq!(img.to_luma16().into_raw(), vec![0, 4096, 32768, 65535]);
    }
}
