//! The engine in a real browser (headless Chromium): WebGPU (SwiftShader here) and the CPU
//! fallback, against the reference's numbers with the native tests' tolerances.
//! Run by `cargo xtask test` through wasm-bindgen-test-runner and chromedriver
//! (Chromium's flags are in webdriver.json).
#![cfg(target_family = "wasm")]

use std::cell::RefCell;
use std::collections::HashMap;

use burn::tensor::Device;
use legrad::InputSize;
use legrad::engine::{DEFAULT_TEMPLATE, Engine};
use legrad::explain::{ExplainOptions, Method};
use legrad::format::{self, Quant};
use legrad::load::{ConfigSource, load_bytes, prepare_bytes};
use wasm_bindgen_test::*;

// In a dedicated worker, as the app runs its engine: the page (and chromedriver, which polls it)
// stays responsive while the tests compute.
wasm_bindgen_test_configure!(run_in_dedicated_worker);

const MODEL: &[u8] = include_bytes!("fixtures/tiny-vit-b16.safetensors");
const CONFIG: &str = include_str!("fixtures/tiny-vit-b16.json");
const EXPECTED: &[u8] = include_bytes!("fixtures/tiny-vit-b16.expected.safetensors");
const BASELINES: &[u8] = include_bytes!("fixtures/tiny-vit-b16.baselines.safetensors");

thread_local! {
    static WEBGPU: RefCell<Option<Device>> = const { RefCell::new(None) };
}

/// The WebGPU device, initialised once per page.
async fn webgpu() -> Device {
    if let Some(d) = WEBGPU.with(|w| w.borrow().clone()) {
        return d;
    }
    let d = Device::wgpu_options()
        .init_async()
        .await
        .expect("no WebGPU adapter: Chromium must run with --enable-unsafe-webgpu (see webdriver.json)");
    WEBGPU.with(|w| *w.borrow_mut() = Some(d.clone()));
    d
}

fn expected(bytes: &[u8]) -> HashMap<String, Vec<f32>> {
    let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(k, v)| (k, v.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()))
        .collect()
}

fn engine(bytes: &[u8], device: &Device) -> Engine {
    let (clip, info) = load_bytes(bytes, Some(&ConfigSource::from_json(CONFIG.to_string())), device).unwrap();
    Engine::new(clip, info).unwrap()
}

fn prompts() -> Vec<String> {
    ["cat", "the remote control", "something red"].map(String::from).to_vec()
}

/// The one comparison the native tests use too: fails on NaN, infinity and a length mismatch.
use legrad::testing::max_abs_diff;

/// The comparison fails on a planted NaN and a length mismatch in the browser's build too (a
/// panic aborts there, so `max_abs_diff`'s panic is not caught: `compare` is checked).
#[wasm_bindgen_test]
fn comparison_fails_on_a_planted_nan() {
    let good = vec![0.5f32; 16];
    let mut bad = good.clone();
    bad[9] = f32::NAN;
    assert!(legrad::testing::compare(&bad, &good).is_err());
    assert!(legrad::testing::compare(&good[..15], &good).is_err());
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let d: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    d / (a.iter().map(|x| x * x).sum::<f32>().sqrt() * b.iter().map(|x| x * x).sum::<f32>().sqrt())
}

/// LeGrad maps and embeddings against the reference, at three grids and two layer settings.
async fn check_against_reference(device: &Device, backend: &str) {
    let exp = expected(EXPECTED);
    let engine = engine(MODEL, device);
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let text = engine.embed_texts(&prepared).await.unwrap();
    let e = engine.model.config.embed_dim;
    for p in 0..3 {
        let c = cosine(&text[p * e..][..e], &exp["text_emb"][p * e..][..e]);
        assert!(c >= 0.99999, "{backend}: text embedding {p}: cosine {c}");
    }
    for (key, h, w) in [("64x64", 64, 64), ("96x96", 96, 96), ("64x96", 64, 96)] {
        let size = InputSize { width: w, height: h };
        let pixels = exp[&format!("pixels/{key}")].clone();
        let img = engine.embed_image(pixels.clone(), size).await.unwrap();
        let c = cosine(&img, &exp[&format!("image_emb/{key}")]);
        assert!(c >= 0.99999, "{backend} {key}: image embedding cosine {c}");
        for li in [-2i64, 0] {
            let options = ExplainOptions { layer_index: li };
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            let trace = engine.trace(pixels.clone(), size, &request).unwrap();
            let out = engine.explain(&trace, &prepared, Method::LeGrad, &options).await.unwrap();
            let want = &exp[&format!("legrad/{key}/layer{li}/final")];
            for (p, r) in out.iter().enumerate() {
                let d = max_abs_diff(&r.map.map, &want[p * h * w..][..h * w]);
                assert!(d <= 1e-4, "{backend} {key} layer_index {li} prompt {p}: max abs diff {d}");
            }
        }
    }
}

#[wasm_bindgen_test]
async fn webgpu_matches_reference() {
    check_against_reference(&webgpu().await, "webgpu").await;
}

/// The CPU path's kernel for a prompt's tokens (`model::few_rows`, 128-bit SIMD in wasm)
/// against its twin, burn's `Linear::forward`.
#[wasm_bindgen_test]
fn cpu_few_rows_kernel_matches_burns_linear() {
    for (rows, k, n, bias) in legrad::model::few_rows::CHECKED_SHAPES {
        let worst = legrad::model::few_rows::check_against_burn(rows, k, n, bias).unwrap();
        assert!(worst < 1e-5 * (k as f32).sqrt(), "{rows}x{k}x{n}: worst difference {worst}");
    }
}

/// The CPU path's 16-bit integer products for LeGrad (`explain::int16`, 128-bit SIMD in wasm):
/// equal to the last bit to their portable form (what the native tests run), and close to
/// their twin, the plain f32 tensor form.
#[wasm_bindgen_test]
fn cpu_int16_kernel_matches_its_twins() {
    legrad::explain::int16::kernels::check_simd_against_portable().unwrap();
    for shape in legrad::explain::int16::CHECKED_SHAPES {
        let rel = legrad::explain::int16::check_against_plain(shape).unwrap();
        assert!(rel < legrad::explain::int16::CHECKED_TOL, "{shape:?}: largest difference {rel} of the largest sum");
    }
}

/// The image step's integer kernels in wasm's SIMD form (`model::int_linear`): equal to the bit
/// to the portable form, and within their bounds of the f32 products (the tolerances of the
/// native tests).
#[wasm_bindgen_test]
fn cpu_int_linear_kernels_match_their_twins() {
    let forms = legrad::model::int_linear::kernels::check_forms_agree().unwrap();
    assert!(forms.contains(&legrad::model::int_linear::IntKernel::Simd128), "forms compared: {forms:?}");
    for (rows, k, n) in legrad::model::int_linear::CHECKED_SHAPES {
        let rel = legrad::model::int_linear::check_against_plain(rows, k, n).unwrap();
        assert!(rel < 2e-3, "{rows}x{k}x{n}: {rel}");
    }
    for (n, h, d) in [(197, 12, 64), (50, 3, 32)] {
        let (out, probs) = legrad::model::check_attention_against_burn(n, h, d).unwrap();
        assert!(out < 2e-3 && probs < 5e-3, "{n}x{h}x{d}: output {out}, probabilities {probs}");
    }
}

#[wasm_bindgen_test]
async fn cpu_fallback_matches_reference() {
    check_against_reference(&Device::flex(), "cpu").await;
}

#[wasm_bindgen_test]
async fn webgpu_baselines_match_reference() {
    let device = webgpu().await;
    let exp = expected(EXPECTED);
    let base = expected(BASELINES);
    let engine = engine(MODEL, &device);
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let options = ExplainOptions::default();
    let methods = [Method::GradCam, Method::Rollout, Method::RawAttention, Method::CheferCam];
    let request = engine.request_for(&methods, &options).unwrap();
    let trace = engine.trace(exp["pixels/64x64"].clone(), InputSize::square(64), &request).unwrap();
    for (m, name) in methods.iter().zip(["gradcam", "rollout", "raw-attention", "chefercam"]) {
        let out = engine.explain(&trace, &prepared, *m, &options).await.unwrap();
        for (p, r) in out.iter().enumerate() {
            let d = max_abs_diff(&r.map.map, &base[&format!("{name}/64x64")][p * 4096..][..4096]);
            assert!(d <= 1e-3, "webgpu {name} prompt {p}: {d}");
        }
    }
}

/// Conversion to 8 and 4 bits in the browser, then maps on the quantized models (WebGPU).
/// Bars as natively (crates/legrad/tests/quantized.rs): q8 r ≥ 0.99; q4 r ≥ 0.90 on this
/// 64-wide random fixture, whose maps are fragile noise patterns.
#[wasm_bindgen_test]
async fn webgpu_quantized_round_trip() {
    let device = webgpu().await;
    let prepared = prepare_bytes(MODEL, Some(&ConfigSource::from_json(CONFIG.to_string()))).unwrap();
    for (quant, bar) in [(Quant::Q8, 0.99), (Quant::Q4, 0.90)] {
        let bytes = format::write(&prepared.map, &prepared.config, quant, "test").unwrap();
        assert!(
            bytes.len() * 3 < MODEL.len() * 2,
            "{quant:?} file not smaller than f16: {} vs {}",
            bytes.len(),
            MODEL.len()
        );
        let (clip, info) = load_bytes(&bytes, None, &device).unwrap();
        let quantized = Engine::new(clip, info).unwrap();
        let exp = expected(EXPECTED);
        let prompts = quantized.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let options = ExplainOptions::default();
        let request = quantized.request_for(&[Method::LeGrad], &options).unwrap();
        let trace = quantized.trace(exp["pixels/64x64"].clone(), InputSize::square(64), &request).unwrap();
        let out = quantized.explain(&trace, &prompts, Method::LeGrad, &options).await.unwrap();
        for (p, r) in out.iter().enumerate() {
            let want = &exp["legrad/64x64/layer-2/final"][p * 4096..][..4096];
            let (ma, mb) = (mean(&r.map.map), mean(want));
            let cov: f32 = r.map.map.iter().zip(want).map(|(a, b)| (a - ma) * (b - mb)).sum();
            let va: f32 = r.map.map.iter().map(|a| (a - ma).powi(2)).sum();
            let vb: f32 = want.iter().map(|b| (b - mb).powi(2)).sum();
            let corr = cov / (va * vb).sqrt();
            assert!(corr >= bar, "{quant:?} map {p}: Pearson r {corr} against the f32 reference (bar {bar})");
        }
    }
}

/// LeGrad's GPU kernels against their plain-tensor twins, at both tilings, on WebGPU
/// (crates/legrad/tests/kernel.rs does the same natively): random inputs whose shapes leave
/// partial tiles and cubes.
#[wasm_bindgen_test]
async fn webgpu_fused_kernel_matches_its_plain_twin() {
    use burn::tensor::{Distribution, Tensor};
    use legrad::explain::kernel::Tiling;
    let device = webgpu().await;
    for (p, n, h, d) in [(1usize, 17usize, 2usize, 32usize), (3, 50, 2, 24), (2, 197, 4, 64)] {
        let dc = Tensor::<3>::random([p, n, h * d], Distribution::Normal(0.0, 1.0), &device);
        let values = Tensor::<3>::random([h, n, d], Distribution::Normal(0.0, 1.0), &device);
        let plain = legrad::engine::read_f32(legrad::explain::legrad::relevance_plain(dc.clone(), values.clone()))
            .await
            .unwrap();
        let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
        for tiling in [Tiling::GPU, Tiling::SOFTWARE] {
            let fused =
                legrad::engine::read_f32(legrad::explain::kernel::relevance_fused(dc.clone(), values.clone(), tiling))
                    .await
                    .unwrap();
            let diff = max_abs_diff(&plain, &fused);
            assert!(
                scale > 0.0 && diff <= 1e-5 * scale,
                "{tiling:?}: P {p} N {n} H {h} d {d}: max abs diff {diff} of {scale}"
            );
        }
    }
    // The head-gradient kernel against `LayerTerms::head_gradient`, at a software adapter's tile
    // and a small one, with partial tiles.
    let normal = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    for (p, n, m, w) in [(1usize, 17usize, 64usize, 32usize), (2, 197, 512, 128)] {
        let terms = legrad::explain::legrad::LayerTerms {
            act_grad: normal([n, m]),
            ag: normal([p, m + w]),
            k: legrad::explain::terms::FoldedK::Tensor(normal([m, w])),
            m: normal([p, 2 * n]),
            ones_out: normal([1, w]).reshape([w]),
            xhat_out: normal([n, w]),
            rstd: normal([1, n]).reshape([n]),
            values: Tensor::<3>::zeros([1, n, w], &device),
        };
        let plain = legrad::engine::read_f32(terms.head_gradient()).await.unwrap();
        let scale = plain.iter().fold(0f32, |m, v| m.max(v.abs()));
        for tile in [(4, 4), (32, 16)] {
            let fused = legrad::engine::read_f32(terms.head_gradient_fused(tile, 8)).await.unwrap();
            let diff = max_abs_diff(&plain, &fused);
            assert!(diff <= 1e-5 * scale, "{tile:?} tiles: P {p} N {n} M {m} W {w}: max abs diff {diff} of {scale}");
        }
    }
}

fn mean(v: &[f32]) -> f32 {
    v.iter().sum::<f32>() / v.len() as f32
}

#[wasm_bindgen_test]
fn decoding_errors_are_errors_in_the_browser() {
    let limits = legrad::preprocess::DecodeLimits::default();
    assert!(legrad::preprocess::decode(b"not an image", &limits).is_err());
    let png = include_bytes!("fixtures/images/scene.png");
    let img = legrad::preprocess::decode(png, &limits).unwrap();
    assert_eq!((img.width, img.height), (150, 100));
    // The web build reads the formats a browser shows; another known format is named, not
    // mistaken for garbage (a QOI header: "qoif", 1x1, RGB, sRGB).
    let qoi = [b'q', b'o', b'i', b'f', 0, 0, 0, 1, 0, 0, 0, 1, 3, 0, 0xfe, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 1];
    let err = legrad::preprocess::decode(&qoi, &limits).unwrap_err().to_string();
    assert!(err.contains("Qoi images are not read here") && err.contains(legrad::preprocess::FORMATS), "{err}");
    let tok = legrad::Tokenizer::new().unwrap();
    assert_eq!(tok.tokenize("a photo of a cat.", 77).ids, vec![49406, 320, 1125, 539, 320, 2368, 269, 49407]);
}

/// A SigLIP fixture: name, weights, config, the reference's outputs, layer_index, sizes
/// (key, height, width).
type SiglipCase =
    (&'static str, &'static [u8], &'static str, &'static [u8], i64, &'static [(&'static str, usize, usize)]);

const SIGLIP_MODELS: [SiglipCase; 2] = [
    (
        "p16",
        include_bytes!("fixtures/siglip/tiny-siglip-p16.safetensors"),
        include_str!("fixtures/siglip/tiny-siglip-p16.json"),
        include_bytes!("fixtures/siglip/tiny-siglip-p16.expected.safetensors"),
        -2,
        &[("64x64", 64, 64), ("96x96", 96, 96), ("64x96", 64, 96)],
    ),
    (
        "p8",
        include_bytes!("fixtures/siglip/tiny-siglip-p8.safetensors"),
        include_str!("fixtures/siglip/tiny-siglip-p8.json"),
        include_bytes!("fixtures/siglip/tiny-siglip-p8.expected.safetensors"),
        0,
        &[("48x48", 48, 48), ("64x64", 64, 64)],
    ),
];
const SIGLIP_TOKENIZER: &str = include_str!("fixtures/siglip/tokenizer/tokenizer.json");

/// SigLIP (legrad-torch's `compute_legrad_siglip`, with its correction) against the reference,
/// through the app's path: converted to the app's file (tokenizer inside) and loaded back.
async fn check_siglip(device: &Device, backend: &str) {
    for (name, model, config, expected_bytes, layer_index, sizes) in SIGLIP_MODELS {
        let exp = expected(expected_bytes);
        let mut p = prepare_bytes(model, Some(&ConfigSource::from_json(config.to_string()))).unwrap();
        p.tokenizer = Some(SIGLIP_TOKENIZER.to_string());
        let file =
            format::write_with_progress(&p.map, &p.config, p.tokenizer.as_deref(), Quant::F32, "test", &mut |_, _| {})
                .unwrap();
        let (clip, info) = load_bytes(&file, None, device).unwrap();
        let engine = Engine::new(clip, info).unwrap();
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let text = engine.embed_texts(&prepared).await.unwrap();
        let e = engine.model.config.embed_dim;
        for p in 0..3 {
            let c = cosine(&text[p * e..][..e], &exp["text_emb"][p * e..][..e]);
            assert!(c >= 0.99999, "{backend} siglip {name}: text embedding {p}: cosine {c}");
        }
        let options = ExplainOptions { layer_index };
        let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
        for (key, h, w) in sizes.iter().copied() {
            let size = InputSize { width: w, height: h };
            let pixels = exp[&format!("pixels/{key}")].clone();
            let trace = engine.trace(pixels, size, &request).unwrap();
            let out = engine.explain(&trace, &prepared, Method::LeGrad, &options).await.unwrap();
            let want = &exp[&format!("legrad/{key}/final")];
            let probs = &exp[&format!("probs/{key}")];
            for (p, r) in out.iter().enumerate() {
                let d = max_abs_diff(&r.map.map, &want[p * h * w..][..h * w]);
                assert!(d <= 1e-4, "{backend} siglip {name} {key} prompt {p}: max abs diff {d}");
                assert!((r.score - probs[p]).abs() <= 1e-4 * probs[p].max(1e-3) + 1e-7, "{backend} {key}: score");
            }
        }
    }
}

#[wasm_bindgen_test]
async fn webgpu_siglip_matches_reference() {
    check_siglip(&webgpu().await, "webgpu").await;
}

#[wasm_bindgen_test]
async fn cpu_siglip_matches_reference() {
    check_siglip(&Device::flex(), "cpu").await;
}
