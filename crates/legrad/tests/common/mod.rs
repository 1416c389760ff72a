//! Shared helpers: fixture paths, the reference outputs, devices and comparisons.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::Device;
use legrad::compute::Int16Products;
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
