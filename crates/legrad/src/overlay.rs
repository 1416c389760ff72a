//! Heatmap colouring and the overlay the reference's demo draws.
//!
//! Jet is OpenCV's `COLORMAP_JET` table exactly (the reference uses `cv2.applyColorMap`); no
//! Rust colormap crate ships OpenCV's variant of jet, so the 256 entries are embedded below
//! (generated with `cv2.applyColorMap(np.arange(256))`). The perceptual map is viridis from
//! `colorous`.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Colormap {
    #[default]
    Jet,
    Viridis,
}

impl Colormap {
    /// The colour of a value in [0, 1] (the reference quantises `(v * 255).astype(uint8)`).
    pub fn rgb(self, v: f32) -> [u8; 3] {
        let i = (v.clamp(0.0, 1.0) * 255.0) as usize;
        match self {
            Colormap::Jet => JET[i.min(255)],
            Colormap::Viridis => {
                let c = colorous::VIRIDIS.eval_rational(i.min(255), 256);
                [c.r, c.g, c.b]
            }
        }
    }
}

impl std::str::FromStr for Colormap {
    type Err = crate::LegradError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "jet" => Ok(Self::Jet),
            "viridis" => Ok(Self::Viridis),
            _ => Err(crate::LegradError::Input(format!("unknown colormap '{s}': expected jet or viridis"))),
        }
    }
}

/// The map coloured, RGB row-major.
pub fn colorize(map: &[f32], colormap: Colormap) -> Vec<u8> {
    map.iter().flat_map(|&v| colormap.rgb(v)).collect()
}

/// `(1 - alpha) * image + alpha * heatmap`, truncated to 8 bits as the reference's
/// `.astype('uint8')`. `image` is RGB at the map's size.
pub fn overlay(image: &[u8], map: &[f32], alpha: f32, colormap: Colormap) -> Vec<u8> {
    blend(image, &colorize(map, colormap), alpha)
}

/// `(1 - alpha) * image + alpha * heat` for a heatmap already coloured (both RGB, same size),
/// truncated as [`overlay`].
pub fn blend(image: &[u8], heat: &[u8], alpha: f32) -> Vec<u8> {
    let a = alpha as f64;
    image.iter().zip(heat).map(|(&i, &h)| ((1.0 - a) * i as f64 + a * h as f64) as u8).collect()
}

/// A map's values resized bilinearly from `(height, width)` `from` to `to` (e.g. onto the
/// original photo) as torch's `interpolate(mode="bilinear")` resizes (the formula that made the
/// map from its grid): values, not colours, so that the colours stay the colormap's. Clamped to
/// [0, 1] (a min-max normalised map stays in range). The core's own bilinear rather than
/// `fast_image_resize` (which the image path uses): its f32 path is more code in the web module,
/// which must stay under 5 MB gzipped (docs/benchmarks-history.md §5), and it antialiases when shrinking,
/// which the map's own upsampling does not.
pub fn resize_map(map: &[f32], from: (usize, usize), to: (usize, usize)) -> crate::Result<Vec<f32>> {
    if map.len() != from.0 * from.1 || to.0 == 0 || to.1 == 0 || from.0 == 0 || from.1 == 0 {
        return Err(crate::LegradError::Input(format!(
            "a map of {} values is not {}x{}, or a size is zero",
            map.len(),
            from.1,
            from.0
        )));
    }
    if from == to {
        return Ok(map.to_vec());
    }
    let mut out = crate::resample::resize_bilinear(map, 1, from, to);
    out.iter_mut().for_each(|v| *v = v.clamp(0.0, 1.0));
    Ok(out)
}

/// The long side, in pixels, up to which maps are drawn over a photo at its own resolution
/// (the app's large view and exports, `legrad explain --on-original`); larger photos are drawn
/// scaled down to it (a 4096 x 3072 RGBA canvas is 50 MB).
pub const MAX_ORIGINAL_SIDE: u32 = 4096;

/// Where a map lies on another image than the model's input (the original photo, `to` = its
/// `(height, width)`): the input of `input` pixels was the whole photo resized; the map covers
/// its top-left `from` (the grid times the patch, which may leave a few rows and columns of the
/// input uncovered). Returns the covered `(height, width)` of `to`.
pub fn covered(to: (usize, usize), from: (usize, usize), input: (usize, usize)) -> (usize, usize) {
    let part =
        |t: usize, f: usize, i: usize| ((t as f64 * f.min(i) as f64 / i.max(1) as f64).round() as usize).clamp(1, t);
    (part(to.0, from.0, input.0), part(to.1, from.1, input.1))
}

/// A map (of `from`, on an input of `input`) resized by [`resize_map`] onto the part of a
/// picture of `to` it covers ([`covered`]): that part and the values there, for
/// [`blend_region`] (the app's large view and exports, `legrad explain --on-original`).
pub fn resize_onto(
    map: &[f32],
    from: (usize, usize),
    input: (usize, usize),
    to: (usize, usize),
) -> crate::Result<((usize, usize), Vec<f32>)> {
    let region = covered(to, from, input);
    Ok((region, resize_map(map, from, region)?))
}

/// Values of a `region` (from [`resize_onto`]) placed in a whole picture of `to`, `fill` where
/// the map does not reach (0 for a map's export; NaN, below every threshold, for masks).
pub fn into_frame(values: &[f32], region: (usize, usize), to: (usize, usize), fill: f32) -> Vec<f32> {
    let mut full = vec![fill; to.0 * to.1];
    let w = region.1.min(to.1);
    for y in 0..region.0.min(to.0) {
        full[y * to.1..][..w].copy_from_slice(&values[y * region.1..][..w]);
    }
    full
}

/// The overlay over a picture of `to` (RGB) for a map resized onto its `region` by
/// [`resize_onto`]: coloured and blended there, the rest of the picture as it is (a page keeps
/// the values and redraws only this when the opacity or the colormap changes).
pub fn blend_region(
    image: &[u8],
    to: (usize, usize),
    values: &[f32],
    region: (usize, usize),
    alpha: f32,
    colormap: Colormap,
) -> Vec<u8> {
    let mut out = image.to_vec();
    if image.len() != to.0 * to.1 * 3 || values.len() != region.0 * region.1 || region.0 > to.0 || region.1 > to.1 {
        return out;
    }
    for y in 0..region.0 {
        let row = &mut out[y * to.1 * 3..][..region.1 * 3];
        let heat = colorize(&values[y * region.1..][..region.1], colormap);
        row.copy_from_slice(&blend(row, &heat, alpha));
    }
    out
}

pub const JET: [[u8; 3]; 256] = [
    [0, 0, 128],
    [0, 0, 132],
    [0, 0, 136],
    [0, 0, 140],
    [0, 0, 144],
    [0, 0, 148],
    [0, 0, 152],
    [0, 0, 156],
    [0, 0, 160],
    [0, 0, 164],
    [0, 0, 168],
    [0, 0, 172],
    [0, 0, 176],
    [0, 0, 180],
    [0, 0, 184],
    [0, 0, 188],
    [0, 0, 192],
    [0, 0, 196],
    [0, 0, 200],
    [0, 0, 204],
    [0, 0, 208],
    [0, 0, 212],
    [0, 0, 216],
    [0, 0, 220],
    [0, 0, 224],
    [0, 0, 228],
    [0, 0, 232],
    [0, 0, 236],
    [0, 0, 240],
    [0, 0, 244],
    [0, 0, 248],
    [0, 0, 252],
    [0, 0, 255],
    [0, 4, 255],
    [0, 8, 255],
    [0, 12, 255],
    [0, 16, 255],
    [0, 20, 255],
    [0, 24, 255],
    [0, 28, 255],
    [0, 32, 255],
    [0, 36, 255],
    [0, 40, 255],
    [0, 44, 255],
    [0, 48, 255],
    [0, 52, 255],
    [0, 56, 255],
    [0, 60, 255],
    [0, 64, 255],
    [0, 68, 255],
    [0, 72, 255],
    [0, 76, 255],
    [0, 80, 255],
    [0, 84, 255],
    [0, 88, 255],
    [0, 92, 255],
    [0, 96, 255],
    [0, 100, 255],
    [0, 104, 255],
    [0, 108, 255],
    [0, 112, 255],
    [0, 116, 255],
    [0, 120, 255],
    [0, 124, 255],
    [0, 128, 255],
    [0, 132, 255],
    [0, 136, 255],
    [0, 140, 255],
    [0, 144, 255],
    [0, 148, 255],
    [0, 152, 255],
    [0, 156, 255],
    [0, 160, 255],
    [0, 164, 255],
    [0, 168, 255],
    [0, 172, 255],
    [0, 176, 255],
    [0, 180, 255],
    [0, 184, 255],
    [0, 188, 255],
    [0, 192, 255],
    [0, 196, 255],
    [0, 200, 255],
    [0, 204, 255],
    [0, 208, 255],
    [0, 212, 255],
    [0, 216, 255],
    [0, 220, 255],
    [0, 224, 255],
    [0, 228, 255],
    [0, 232, 255],
    [0, 236, 255],
    [0, 240, 255],
    [0, 244, 255],
    [0, 248, 255],
    [0, 252, 255],
    [2, 255, 254],
    [6, 255, 250],
    [10, 255, 246],
    [14, 255, 242],
    [18, 255, 238],
    [22, 255, 234],
    [26, 255, 230],
    [30, 255, 226],
    [34, 255, 222],
    [38, 255, 218],
    [42, 255, 214],
    [46, 255, 210],
    [50, 255, 206],
    [54, 255, 202],
    [58, 255, 198],
    [62, 255, 194],
    [66, 255, 190],
    [70, 255, 186],
    [74, 255, 182],
    [78, 255, 178],
    [82, 255, 174],
    [86, 255, 170],
    [90, 255, 166],
    [94, 255, 162],
    [98, 255, 158],
    [102, 255, 154],
    [106, 255, 150],
    [110, 255, 146],
    [114, 255, 142],
    [118, 255, 138],
    [122, 255, 134],
    [126, 255, 130],
    [130, 255, 126],
    [134, 255, 122],
    [138, 255, 118],
    [142, 255, 114],
    [146, 255, 110],
    [150, 255, 106],
    [154, 255, 102],
    [158, 255, 98],
    [162, 255, 94],
    [166, 255, 90],
    [170, 255, 86],
    [174, 255, 82],
    [178, 255, 78],
    [182, 255, 74],
    [186, 255, 70],
    [190, 255, 66],
    [194, 255, 62],
    [198, 255, 58],
    [202, 255, 54],
    [206, 255, 50],
    [210, 255, 46],
    [214, 255, 42],
    [218, 255, 38],
    [222, 255, 34],
    [226, 255, 30],
    [230, 255, 26],
    [234, 255, 22],
    [238, 255, 18],
    [242, 255, 14],
    [246, 255, 10],
    [250, 255, 6],
    [254, 255, 1],
    [255, 252, 0],
    [255, 248, 0],
    [255, 244, 0],
    [255, 240, 0],
    [255, 236, 0],
    [255, 232, 0],
    [255, 228, 0],
    [255, 224, 0],
    [255, 220, 0],
    [255, 216, 0],
    [255, 212, 0],
    [255, 208, 0],
    [255, 204, 0],
    [255, 200, 0],
    [255, 196, 0],
    [255, 192, 0],
    [255, 188, 0],
    [255, 184, 0],
    [255, 180, 0],
    [255, 176, 0],
    [255, 172, 0],
    [255, 168, 0],
    [255, 164, 0],
    [255, 160, 0],
    [255, 156, 0],
    [255, 152, 0],
    [255, 148, 0],
    [255, 144, 0],
    [255, 140, 0],
    [255, 136, 0],
    [255, 132, 0],
    [255, 128, 0],
    [255, 124, 0],
    [255, 120, 0],
    [255, 116, 0],
    [255, 112, 0],
    [255, 108, 0],
    [255, 104, 0],
    [255, 100, 0],
    [255, 96, 0],
    [255, 92, 0],
    [255, 88, 0],
    [255, 84, 0],
    [255, 80, 0],
    [255, 76, 0],
    [255, 72, 0],
    [255, 68, 0],
    [255, 64, 0],
    [255, 60, 0],
    [255, 56, 0],
    [255, 52, 0],
    [255, 48, 0],
    [255, 44, 0],
    [255, 40, 0],
    [255, 36, 0],
    [255, 32, 0],
    [255, 28, 0],
    [255, 24, 0],
    [255, 20, 0],
    [255, 16, 0],
    [255, 12, 0],
    [255, 8, 0],
    [255, 4, 0],
    [255, 0, 0],
    [252, 0, 0],
    [248, 0, 0],
    [244, 0, 0],
    [240, 0, 0],
    [236, 0, 0],
    [232, 0, 0],
    [228, 0, 0],
    [224, 0, 0],
    [220, 0, 0],
    [216, 0, 0],
    [212, 0, 0],
    [208, 0, 0],
    [204, 0, 0],
    [200, 0, 0],
    [196, 0, 0],
    [192, 0, 0],
    [188, 0, 0],
    [184, 0, 0],
    [180, 0, 0],
    [176, 0, 0],
    [172, 0, 0],
    [168, 0, 0],
    [164, 0, 0],
    [160, 0, 0],
    [156, 0, 0],
    [152, 0, 0],
    [148, 0, 0],
    [144, 0, 0],
    [140, 0, 0],
    [136, 0, 0],
    [132, 0, 0],
    [128, 0, 0],
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resize_map_is_bilinear_with_pixel_centres() {
        // torch's `interpolate(mode="bilinear", align_corners=False)` of [[0, 1]] to width 4:
        // source x = (i + 0.5) / 2 - 0.5, clamped: 0, 0.25, 0.75, 1.
        let out = resize_map(&[0.0, 1.0, 0.0, 1.0], (2, 2), (2, 4)).unwrap();
        let want = [0.0, 0.25, 0.75, 1.0, 0.0, 0.25, 0.75, 1.0];
        assert!(out.iter().zip(want).all(|(a, b)| (a - b).abs() < 1e-6), "{out:?}");
        // Down and up to a photo's odd size, values stay in [0, 1] and the corners keep theirs.
        let map: Vec<f32> = (0..12).map(|i| i as f32 / 11.0).collect();
        let out = resize_map(&map, (3, 4), (301, 451)).unwrap();
        assert_eq!(out.len(), 301 * 451);
        assert!(out.iter().all(|v| (0.0..=1.0).contains(v)));
        assert!(out[0] < 0.01 && out[out.len() - 1] > 0.99);
        assert!(resize_map(&map, (3, 5), (10, 10)).is_err());
        // A picture of the wrong size is left as it is.
        assert_eq!(blend_region(&[7; 5], (10, 10), &map, (3, 4), 0.5, Colormap::Jet), vec![7; 5]);
    }

    #[test]
    fn resize_onto_covers_what_the_map_covers() {
        // A 336 input on 32-pixel patches: the map is 320 of it; on a 672-pixel photo, 640.
        assert_eq!(covered((672, 672), (320, 320), (336, 336)), (640, 640));
        assert_eq!(covered((300, 451), (304, 448), (304, 448)), (300, 451));
        let image = vec![100u8; 4 * 6 * 3];
        let (region, values) = resize_onto(&[1.0; 4], (2, 2), (2, 3), (4, 6)).unwrap();
        assert_eq!(region, (4, 4));
        let out = blend_region(&image, (4, 6), &values, region, 1.0, Colormap::Jet);
        // Columns 0..4 are coloured (jet's 1.0 is dark red), 4..6 stay the photo's.
        assert_eq!(&out[..3], &JET[255]);
        assert_eq!(&out[4 * 3..6 * 3], &[100; 6]);
    }

    #[test]
    fn overlay_is_blend_of_colorize() {
        let map = [0.0, 0.5, 1.0];
        let image = [10u8, 20, 30, 40, 50, 60, 70, 80, 90];
        assert_eq!(overlay(&image, &map, 0.6, Colormap::Jet), blend(&image, &colorize(&map, Colormap::Jet), 0.6));
    }
}
