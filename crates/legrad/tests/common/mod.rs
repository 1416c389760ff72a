//! Shared helpers: fixture paths, the reference outputs, devices and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::Device;
use legrad::compute::Int16Products;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::{ExplainOptions, Method};
use legrad::load::{ConfigSource, Prepared, load_path, prepare_path};
use legrad::{ComputePolicy, Engine, InputSize};

pub fn fixtures() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test")).join("../../tests/fixtures")
}

/// The backends every numeric test runs on: burn's CPU backend (Flex) and wgpu (Vulkan; lavapipe
/// on a machine without a GPU). `LEGRAD_TEST_BACKENDS=cpu` limits the run.
pub fn devices() -> Vec<(&'static str, Device)> {
    let wanted = std::env::var("LEGRAD_TEST_BACKENDS").unwrap_or_else(|_| "cpu,wgpu".into());
    let mut out = Vec::new();
    for name in wanted.split(',') {
        match name.trim() {
            "cpu" => out.push(("cpu", Device::flex())),
            "wgpu" => out.push(("wgpu", Device::wgpu(Default::default()))),
            "" => {}
            other => panic!("unknown backend {other} in LEGRAD_TEST_BACKENDS"),
        }
    }
    out
}

/// The reference's outputs: name → (shape, values).
pub struct Expected(pub HashMap<String, (Vec<usize>, Vec<f32>)>);

impl Expected {
    pub fn load(name: &str) -> Self {
        let bytes = std::fs::read(fixtures().join(name)).expect("fixture");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        let mut map = HashMap::new();
        for (k, v) in st.tensors() {
            let vals: Vec<f32> =
                v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            map.insert(k.to_string(), (v.shape().to_vec(), vals));
        }
        Self(map)
    }

    pub fn get(&self, key: &str) -> &(Vec<usize>, Vec<f32>) {
        self.0.get(key).unwrap_or_else(|| panic!("no reference array {key}"))
    }

    pub fn values(&self, key: &str) -> &[f32] {
        &self.get(key).1
    }
}

pub fn engine(model: &str, config: Option<&str>, device: &Device) -> Engine {
    let config = config.map(|c| ConfigSource::from_json(std::fs::read_to_string(fixtures().join(c)).unwrap()));
    let (clip, info) = load_path(&fixtures().join(model), config, device).expect("load fixture model");
    Engine::new(clip, info).unwrap()
}

pub fn tiny_b16(device: &Device) -> Engine {
    engine("tiny-vit-b16.safetensors", Some("tiny-vit-b16.json"), device)
}

/// A prepared model built on the CPU with the vision and text towers' linear layers on the
/// integer grid as `linear` says.
pub fn build_cpu(p: Prepared, linear: Int16Products) -> Engine {
    let device = Device::flex();
    let policy = ComputePolicy::for_device(&device).with_int_linear(linear);
    let (clip, info) = p.build_with(&device, &policy).expect("build");
    Engine::new(clip, info).unwrap()
}

/// The tiny ViT-B/16 fixture on the CPU, its linear layers as `linear` says.
pub fn tiny_b16_cpu(linear: Int16Products) -> Engine {
    let config = ConfigSource::from_json(std::fs::read_to_string(fixtures().join("tiny-vit-b16.json")).unwrap());
    build_cpu(prepare_path(&fixtures().join("tiny-vit-b16.safetensors"), Some(config)).unwrap(), linear)
}

pub fn size_of(key: &str) -> InputSize {
    // "64x96" is (height, width) in the fixture keys.
    let (h, w) = key.split_once('x').unwrap();
    InputSize { height: h.parse().unwrap(), width: w.parse().unwrap() }
}

/// The one comparison (`legrad::testing`): fails on NaN, infinity and a length mismatch.
#[allow(unused_imports)]
pub use legrad::testing::{assert_close, compare, max_abs_diff};

pub fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

pub fn prompts() -> Vec<String> {
    ["cat", "the remote control", "something red"].map(String::from).to_vec()
}

/// Pearson's r of two maps.
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().map(|&v| v as f64).sum::<f64>() / n, b.iter().map(|&v| v as f64).sum::<f64>() / n);
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        let (x, y) = (*x as f64 - ma, *y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

/// The share of `b`'s top 10 % of pixels that are in `a`'s top 10 %.
pub fn top_overlap(a: &[f32], b: &[f32]) -> f64 {
    let k = a.len().div_ceil(10);
    let top = |m: &[f32]| {
        let mut idx: Vec<usize> = (0..m.len()).collect();
        idx.sort_by(|&i, &j| m[j].total_cmp(&m[i]));
        let mut set = vec![false; m.len()];
        idx[..k].iter().for_each(|&i| set[i] = true);
        set
    };
    let (ta, tb) = (top(a), top(b));
    (0..a.len()).filter(|&i| ta[i] && tb[i]).count() as f64 / k as f64
}

/// `approx` against `exact`: the worst of each bar's number over `images` and `prompts` at
/// `size`: embedding cosine, map Pearson r, top-10 % overlap, and the largest map difference.
pub fn fidelity(
    approx: &Engine,
    exact: &Engine,
    images: &[Vec<f32>],
    size: InputSize,
    prompts: &[String],
) -> (f64, f64, f64, f32) {
    let options = ExplainOptions::default();
    let request = exact.request_for(&[Method::LeGrad], &options).unwrap();
    let (mut cos, mut r, mut overlap, mut diff) = (1f64, 1f64, 1f64, 0f32);
    for pixels in images {
        let a = approx.trace(pixels.clone(), size, &request).unwrap();
        let b = exact.trace(pixels.clone(), size, &request).unwrap();
        let read = |t: &legrad::explain::trace::ImageTrace| {
            pollster::block_on(legrad::engine::read_f32(t.embedding.clone())).unwrap()
        };
        cos = cos.min(cosine(&read(&a), &read(&b)));
        let pa = approx.prepare(prompts, Some(DEFAULT_TEMPLATE)).unwrap();
        let pb = exact.prepare(prompts, Some(DEFAULT_TEMPLATE)).unwrap();
        let ma = pollster::block_on(approx.explain(&a, &pa, Method::LeGrad, &options)).unwrap();
        let mb = pollster::block_on(exact.explain(&b, &pb, Method::LeGrad, &options)).unwrap();
        for (x, y) in ma.iter().zip(&mb) {
            diff = diff.max(compare(&x.map.map, &y.map.map).unwrap().max_abs);
            r = r.min(pearson(&x.map.map, &y.map.map));
            overlap = overlap.min(top_overlap(&x.map.map, &y.map.map));
        }
    }
    (cos, r, overlap, diff)
}

/// Print `what`'s numbers from [`fidelity`] and assert issue 28's bars on them: embedding cosine
/// >= 0.9995, maps Pearson r >= 0.999, top-10 % overlap >= 0.98.
pub fn assert_bars(what: &str, (cos, r, overlap, diff): (f64, f64, f64, f32)) {
    eprintln!(
        "{what}: embedding cosine >= {cos:.6}, maps Pearson r >= {r:.6}, top-10% overlap >= {overlap:.4}, max difference {diff:.2e}"
    );
    assert!(cos >= 0.9995, "{what}: embedding cosine {cos}");
    assert!(r >= 0.999, "{what}: maps Pearson r {r}");
    assert!(overlap >= 0.98, "{what}: top-10% overlap {overlap}");
}

/// `count` images of `size`² with structure (smooth blobs plus noise, not white noise), for
/// maps with structure.
pub fn structured_images(count: u64, size: usize) -> Vec<Vec<f32>> {
    (0..count)
        .map(|s| {
            let mut rng = legrad::rng::Rng::new(100 + s);
            (0..3 * size * size)
                .map(|i| {
                    let (y, x) = ((i / size) % size, i % size);
                    let f = 0.01 * (1.0 + s as f32);
                    (x as f32 * f).sin() * (y as f32 * f * 0.7).cos() + 0.3 * rng.normal()
                })
                .collect()
        })
        .collect()
}

/// Issue 28's three prompts for its fidelity bars.
pub fn fidelity_prompts() -> Vec<String> {
    ["a cat", "a red circle", "the remote control"].map(String::from).to_vec()
}

/// A random ViT-B/16 (seed 0), with three massive residual channels (x100) where `outliers`
/// (`weights::random::with_outlier_channels`).
pub fn random_vit_b16(config: &legrad::ClipConfig, outliers: bool) -> Prepared {
    let mut map = legrad::weights::random::random_openclip(config, 0);
    if outliers {
        legrad::weights::random::with_outlier_channels(&mut map, config.vision.layers, &[17, 300, 611], 100.0).unwrap();
    }
    Prepared { map, config: config.clone(), source_format: "random".into(), notes: vec![], tokenizer: None }
}

/// `p` with its weights as the app's q8 file stores them (`format::write`, read back).
pub fn q8(p: Prepared) -> Prepared {
    let q8 = legrad::format::Quant::Q8;
    let bytes =
        legrad::format::write_with_progress(&p.map, &p.config, p.tokenizer.as_deref(), q8, "test", &mut |_, _| {})
            .unwrap();
    Prepared { map: legrad::format::read_map(&bytes).unwrap().0, ..p }
}
