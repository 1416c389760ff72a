//! Synthetic scenes whose objects are known pixel by pixel: 1 to 4 non-overlapping coloured
//! shapes on a varied background, each with its mask and captions.
//!
//! The one generator of the project: the CLI streams it to the training script
//! (`tools/train`), `legrad eval` draws held-out scenes from it, the app shows some as samples.
//! Scene `i` of stream `seed` depends only on `(seed, i)`. Shapes are drawn without
//! anti-aliasing, so a pixel belongs to an object exactly when its mask says so.

use serde::{Deserialize, Serialize};

use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    Circle,
    Square,
    Triangle,
    Star,
    Cross,
    Ring,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Color {
    Red,
    Green,
    Blue,
    Yellow,
    Purple,
    Orange,
}

impl Shape {
    pub const ALL: [Shape; 6] = [Shape::Circle, Shape::Square, Shape::Triangle, Shape::Star, Shape::Cross, Shape::Ring];
    pub fn name(self) -> &'static str {
        match self {
            Shape::Circle => "circle",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
            Shape::Star => "star",
            Shape::Cross => "cross",
            Shape::Ring => "ring",
        }
    }
}

impl Color {
    pub const ALL: [Color; 6] = [Color::Red, Color::Green, Color::Blue, Color::Yellow, Color::Purple, Color::Orange];
    pub fn name(self) -> &'static str {
        match self {
            Color::Red => "red",
            Color::Green => "green",
            Color::Blue => "blue",
            Color::Yellow => "yellow",
            Color::Purple => "purple",
            Color::Orange => "orange",
        }
    }
    fn rgb(self) -> [f32; 3] {
        match self {
            Color::Red => [220.0, 30.0, 35.0],
            Color::Green => [35.0, 170.0, 50.0],
            Color::Blue => [35.0, 70.0, 215.0],
            Color::Yellow => [240.0, 215.0, 30.0],
            Color::Purple => [140.0, 45.0, 175.0],
            Color::Orange => [245.0, 130.0, 20.0],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Background {
    Flat,
    Gradient,
    Noise,
    Texture,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SceneObject {
    pub shape: Shape,
    pub color: Color,
    /// Centre and radius in pixels, rotation in radians.
    pub center: (f32, f32),
    pub radius: f32,
    pub rotation: f32,
    /// Row-major, `width * height`: true where this object's pixels are.
    #[serde(skip)]
    pub mask: Vec<bool>,
}

#[derive(Clone, Debug)]
pub struct Scene {
    pub width: usize,
    pub height: usize,
    /// RGB, row-major.
    pub rgb: Vec<u8>,
    pub background: Background,
    pub objects: Vec<SceneObject>,
}

/// The canonical caption of an object: `"a photo of a {color} {shape}."` is this with the
/// app's default template.
pub fn object_name(color: Color, shape: Shape) -> String {
    format!("{} {}", color.name(), shape.name())
}

/// Every colour × shape name, in a fixed order (zero-shot classes).
pub fn all_names() -> Vec<(Color, Shape, String)> {
    Color::ALL.iter().flat_map(|&c| Shape::ALL.iter().map(move |&s| (c, s, object_name(c, s)))).collect()
}

/// The outline of a polygonal unit shape (radius 1, pointing up); empty for the others.
fn polygon(shape: Shape) -> Vec<(f32, f32)> {
    let (n, inner) = match shape {
        Shape::Triangle => (3, 1.0),
        Shape::Star => (10, 0.45),
        _ => return Vec::new(),
    };
    (0..n)
        .map(|k| {
            let r = if k % 2 == 0 { 1.0 } else { inner };
            let a = -std::f32::consts::FRAC_PI_2 + k as f32 * 2.0 * std::f32::consts::PI / n as f32;
            (r * a.cos(), r * a.sin())
        })
        .collect()
}

/// Does the unit shape (radius 1, rotation applied by the caller; `poly` from [`polygon`])
/// contain `(x, y)`? Every shape lies within distance 0.8 * sqrt(2) < 1.2 of the centre.
fn inside(shape: Shape, poly: &[(f32, f32)], x: f32, y: f32) -> bool {
    let d = (x * x + y * y).sqrt();
    match shape {
        Shape::Circle => d <= 1.0,
        Shape::Ring => (0.55..=1.0).contains(&d),
        Shape::Square => x.abs() <= 0.8 && y.abs() <= 0.8,
        Shape::Cross => (x.abs() <= 0.3 && y.abs() <= 1.0) || (y.abs() <= 0.3 && x.abs() <= 1.0),
        Shape::Triangle | Shape::Star => in_polygon(poly, x, y),
    }
}

/// Even-odd rule.
fn in_polygon(pts: &[(f32, f32)], x: f32, y: f32) -> bool {
    let mut c = false;
    let n = pts.len();
    for i in 0..n {
        let (xi, yi) = pts[i];
        let (xj, yj) = pts[(i + n - 1) % n];
        if (yi > y) != (yj > y) && x < (xj - xi) * (y - yi) / (yj - yi) + xi {
            c = !c;
        }
    }
    c
}

fn muted_color(rng: &mut Rng) -> [f32; 3] {
    // Low saturation, so that no background is mistaken for an object colour.
    let grey = rng.range(70.0, 200.0) as f32;
    let tint = [rng.range(-18.0, 18.0) as f32, rng.range(-18.0, 18.0) as f32, rng.range(-18.0, 18.0) as f32];
    [grey + tint[0], grey + tint[1], grey + tint[2]]
}

/// Scene `index` of stream `seed`, `size x size` pixels, with `objects` objects (1 to 4), or
/// a random count in `1..=4` when `None`.
pub fn generate(seed: u64, index: u64, size: usize, objects: Option<usize>) -> Scene {
    let mut rng = Rng::for_item(seed, index);
    let n = objects.unwrap_or_else(|| 1 + rng.below(4)).clamp(1, 4);
    let s = size as f32;
    let background = [Background::Flat, Background::Gradient, Background::Noise, Background::Texture][rng.below(4)];
    let c0 = muted_color(&mut rng);
    let c1 = muted_color(&mut rng);
    let angle = rng.range(0.0, std::f64::consts::TAU) as f32;
    let period = rng.range(6.0, 18.0) as f32 * s / 224.0;
    let noise_amp = rng.range(8.0, 30.0) as f32;
    let mut img = vec![0f32; size * size * 3];
    for y in 0..size {
        for x in 0..size {
            let (u, v) = (x as f32 / s - 0.5, y as f32 / s - 0.5);
            let px: [f32; 3] = match background {
                Background::Flat => c0,
                Background::Gradient => {
                    let t = (u * angle.cos() + v * angle.sin() + 0.71) / 1.42;
                    [0, 1, 2].map(|c| c0[c] * (1.0 - t) + c1[c] * t)
                }
                Background::Noise => {
                    let e = rng.normal() * noise_amp;
                    [c0[0] + e, c0[1] + e, c0[2] + e]
                }
                Background::Texture => {
                    let t = ((x as f32 * angle.cos() + y as f32 * angle.sin()) / period).floor() as i64;
                    if t.rem_euclid(2) == 0 { c0 } else { c1 }
                }
            };
            img[(y * size + x) * 3..][..3].copy_from_slice(&px);
        }
    }
    // Place objects without overlap (bounding circles apart by a margin).
    // Sizes: a shape's radius in image widths. A 224 image at patch 32 is a 7 x 7 grid: the
    // smallest shapes still span about two patches.
    let (rmin, rmax) = match n {
        1 => (0.15, 0.32),
        2 => (0.13, 0.24),
        _ => (0.11, 0.18),
    };
    let mut placed: Vec<SceneObject> = Vec::new();
    let mut attempts = 0;
    while placed.len() < n && attempts < 500 {
        attempts += 1;
        let r = rng.range(rmin, rmax) as f32 * s;
        let cx = rng.range(r as f64 + 1.0, (s - r) as f64 - 1.0) as f32;
        let cy = rng.range(r as f64 + 1.0, (s - r) as f64 - 1.0) as f32;
        if placed.iter().any(|o| {
            let d = ((o.center.0 - cx).powi(2) + (o.center.1 - cy).powi(2)).sqrt();
            d < o.radius + r + 0.03 * s
        }) {
            continue;
        }
        let shape = Shape::ALL[rng.below(6)];
        let color = Color::ALL[rng.below(6)];
        // Each colour-shape pair at most once, so that a full name singles out one object.
        if placed.iter().any(|o| o.shape == shape && o.color == color) {
            continue;
        }
        // Upright shapes, tilted a little: a square stays a square, a cross a plus sign.
        let rotation = rng.range(-0.25, 0.25) as f32;
        placed.push(SceneObject { shape, color, center: (cx, cy), radius: r, rotation, mask: Vec::new() });
    }
    for obj in &mut placed {
        let jitter = [rng.range(-12.0, 12.0) as f32, rng.range(-12.0, 12.0) as f32, rng.range(-12.0, 12.0) as f32];
        let rgb = obj.color.rgb();
        let mut mask = vec![false; size * size];
        let (cos, sin) = (obj.rotation.cos(), obj.rotation.sin());
        let poly = polygon(obj.shape);
        // Only the square around the shape's reach (1.2 radii) can hold its pixels.
        let span = |c: f32| {
            ((c - 1.2 * obj.radius - 1.0).max(0.0) as usize, ((c + 1.2 * obj.radius + 2.0) as usize).min(size))
        };
        let ((x0, x1), (y0, y1)) = (span(obj.center.0), span(obj.center.1));
        for y in y0..y1 {
            for x in x0..x1 {
                let dx = (x as f32 + 0.5 - obj.center.0) / obj.radius;
                let dy = (y as f32 + 0.5 - obj.center.1) / obj.radius;
                let (rx, ry) = (dx * cos + dy * sin, -dx * sin + dy * cos);
                if inside(obj.shape, &poly, rx, ry) {
                    mask[y * size + x] = true;
                    for c in 0..3 {
                        img[(y * size + x) * 3 + c] = rgb[c] + jitter[c];
                    }
                }
            }
        }
        obj.mask = mask;
    }
    Scene {
        width: size,
        height: size,
        rgb: img.iter().map(|v| v.round().clamp(0.0, 255.0) as u8).collect(),
        background,
        objects: placed,
    }
}

impl Scene {
    /// Captions that single out object `i` in this scene: the full name always; `"a {shape}"`
    /// and `"something {color}"` only where no other object shares that shape or colour.
    pub fn captions(&self, i: usize) -> Vec<String> {
        let o = &self.objects[i];
        let others = || self.objects.iter().enumerate().filter(move |(j, _)| *j != i).map(|(_, x)| x);
        let mut out = vec![
            format!("a photo of a {}.", object_name(o.color, o.shape)),
            format!("a {}", object_name(o.color, o.shape)),
        ];
        if others().all(|x| x.shape != o.shape) {
            out.push(format!("a {}", o.shape.name()));
        }
        if others().all(|x| x.color != o.color) {
            out.push(format!("something {}", o.color.name()));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_for_a_seed() {
        let a = generate(7, 3, 64, None);
        let b = generate(7, 3, 64, None);
        assert_eq!(a.rgb, b.rgb);
        assert_ne!(a.rgb, generate(7, 4, 64, None).rgb);
        assert_ne!(a.rgb, generate(8, 3, 64, None).rgb);
    }

    #[test]
    fn masks_are_disjoint_and_match_drawn_pixels() {
        for i in 0..40 {
            let s = generate(1, i, 96, Some(1 + (i as usize % 4)));
            assert_eq!(s.objects.len(), 1 + (i as usize % 4), "scene {i} could not place its objects");
            for (k, o) in s.objects.iter().enumerate() {
                let area = o.mask.iter().filter(|&&m| m).count();
                assert!(area > 20, "scene {i} object {k} has {area} pixels");
                for p in 0..96 * 96 {
                    if o.mask[p] {
                        assert!(s.objects.iter().enumerate().all(|(j, x)| j == k || !x.mask[p]), "overlap");
                        // Drawn pixels carry the object's colour (within its jitter).
                        let want = o.color.rgb();
                        for (c, w) in want.iter().enumerate() {
                            assert!((s.rgb[p * 3 + c] as f32 - w).abs() <= 12.5, "pixel {p} of object {k}");
                        }
                    }
                }
            }
        }
    }
}
