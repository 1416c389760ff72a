//! SigLIP against the reference (tools/reference/make_siglip_fixtures.py: legrad-torch 1.1
//! `compute_legrad_siglip` on open_clip 2.23.0 and timm 0.9.16), on every native backend: the
//! tokenizer's ids, both towers' embeddings, the sigmoid scores, LeGrad's maps (with the
//! correction) and its per-layer terms, at two native grids and at resampled and non-square sizes;
//! the closed form against autodiff; the model file round trip.

mod common;

use common::*;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::legrad::legrad_autodiff;
use legrad::explain::{ExplainOptions, Method, Reads};
use legrad::load::{ConfigSource, prepare_path};
use legrad::{Engine, Family, TraceRequest};

const MAP_TOL: f32 = 1e-4;
const COS_TOL: f64 = 0.99999;

fn siglip(name: &str) -> std::path::PathBuf {
    fixtures().join("siglip").join(name)
}

fn tokenizer_json() -> String {
    std::fs::read_to_string(siglip("tokenizer/tokenizer.json")).unwrap()
}

fn engine(name: &str, device: &burn::tensor::Device) -> Engine {
    let config = ConfigSource::from_json(std::fs::read_to_string(siglip(&format!("{name}.json"))).unwrap());
    let mut p = prepare_path(&siglip(&format!("{name}.safetensors")), Some(config)).unwrap();
    p.tokenizer = Some(tokenizer_json());
    let (clip, info) = p.build(device).unwrap();
    assert_eq!(clip.config.family, Family::Siglip);
    Engine::new(clip, info).unwrap()
}

struct Case {
    name: &'static str,
    sizes: &'static [&'static str],
    layer_index: i64,
}

const CASES: [Case; 2] = [
    Case { name: "tiny-siglip-p16", sizes: &["64x64", "96x96", "64x96"], layer_index: -2 },
    Case { name: "tiny-siglip-p8", sizes: &["48x48", "64x64"], layer_index: 0 },
];

#[test]
fn tokenizer_matches_open_clip() {
    let tok = legrad::SentencePieceTokenizer::from_json(&tokenizer_json(), 64).unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(siglip("tokenizer-cases.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let cases = fixture["cases"].as_array().unwrap();
    assert!(cases.len() >= 20);
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.tokenize(text).unwrap();
        if got.ids != want {
            failures.push(format!("{text:?}\n  ours {:?}\n  ref  {want:?}", got.ids));
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
    // A long prompt is cut with its end token kept, and says so.
    let long = tok.tokenize(&"a very long prompt ".repeat(30)).unwrap();
    assert!(long.truncated);
    assert_eq!(long.ids.len(), 64);
    assert_eq!(*long.ids.last().unwrap(), tok.pad_id);
    assert!(!tok.tokenize("a cat").unwrap().truncated);
}

#[test]
fn a_siglip_model_without_its_tokenizer_is_a_clear_error() {
    let config = ConfigSource::from_json(std::fs::read_to_string(siglip("tiny-siglip-p8.json")).unwrap());
    let p = prepare_path(&siglip("tiny-siglip-p8.safetensors"), Some(config)).unwrap();
    let (clip, info) = p.build(&burn::tensor::Device::flex()).unwrap();
    let err = Engine::new(clip, info).unwrap_err().to_string();
    assert!(err.contains("tokenizer"), "{err}");
    // Without a config: the heads are not in the weights.
    let err = prepare_path(&siglip("tiny-siglip-p8.safetensors"), None).err().unwrap().to_string();
    assert!(err.contains("SigLIP") && err.contains("config"), "{err}");
    // A baseline on SigLIP says why not.
    let e = engine("tiny-siglip-p8", &burn::tensor::Device::flex());
    let request = e.request_for(&[Method::LeGrad], &ExplainOptions::default()).unwrap();
    let trace = e.trace(vec![0.1; 3 * 48 * 48], size_of("48x48"), &request).unwrap();
    let prompts = e.prepare(&["cat".into()], None).unwrap();
    let err = pollster::block_on(e.explain(&trace, &prompts, Method::GradCam, &ExplainOptions::default()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("class token"), "{err}");
}

#[test]
fn embeddings_and_scores_match_reference() {
    for case in &CASES {
        let exp = Expected::load(&format!("siglip/{}.expected.safetensors", case.name));
        for (backend, device) in devices() {
            let engine = engine(case.name, &device);
            let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
            let text = pollster::block_on(engine.embed_texts(&prepared)).unwrap();
            let want = exp.values("text_emb");
            let e = engine.model.config.embed_dim;
            for p in 0..3 {
                let c = cosine(&text[p * e..][..e], &want[p * e..][..e]);
                assert!(c >= COS_TOL, "{} {backend}: text embedding {p} cosine {c}", case.name);
            }
            for key in case.sizes {
                let size = size_of(key);
                let pixels = exp.values(&format!("pixels/{key}")).to_vec();
                let img = pollster::block_on(engine.embed_image(pixels.clone(), size)).unwrap();
                let c = cosine(&img, exp.values(&format!("image_emb/{key}")));
                assert!(c >= COS_TOL, "{} {backend}: image embedding at {key}: cosine {c}", case.name);
                // The score shown is SigLIP's sigmoid probability.
                let options = ExplainOptions { layer_index: case.layer_index };
                let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
                let trace = engine.trace(pixels, size, &request).unwrap();
                let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
                let probs = exp.values(&format!("probs/{key}"));
                for (p, r) in out.iter().enumerate() {
                    let d = (r.score - probs[p]).abs();
                    assert!(
                        d <= 1e-4 * probs[p].max(1e-3) + 1e-7,
                        "{} {backend} {key}: score {} vs {}",
                        case.name,
                        r.score,
                        probs[p]
                    );
                }
            }
        }
    }
}

#[test]
fn legrad_maps_match_reference() {
    for case in &CASES {
        let exp = Expected::load(&format!("siglip/{}.expected.safetensors", case.name));
        for (backend, device) in devices() {
            let engine = engine(case.name, &device);
            let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
            let options = ExplainOptions { layer_index: case.layer_index };
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            for key in case.sizes {
                let size = size_of(key);
                let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size, &request).unwrap();
                let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
                let want = exp.values(&format!("legrad/{key}/final"));
                let (_, want_layers) = exp.get(&format!("legrad/{key}/per_layer_grid"));
                let n = size.width * size.height;
                let cells = out[0].map.grid.0 * out[0].map.grid.1;
                let mut zeroed = 0;
                for (p, r) in out.iter().enumerate() {
                    assert_eq!(r.map.size, (size.height, size.width));
                    let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                    assert!(d <= MAP_TOL, "{} {backend} {key} prompt {p}: max abs diff {d}", case.name);
                    zeroed += r.map.grid_map.iter().filter(|v| **v == 0.0).count();
                    for (i, (_, layer_map)) in r.map.per_layer.iter().enumerate() {
                        let w = &want_layers[(i * 3 + p) * cells..][..cells];
                        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = max_abs_diff(layer_map, w);
                        assert!(
                            d <= MAP_TOL * scale.max(1e-6),
                            "{} {backend} {key} layer {i} prompt {p}: {d} (scale {scale})",
                            case.name
                        );
                    }
                }
                assert!(zeroed > 0, "the correction should zero some cells");
            }
        }
    }
}

#[test]
fn the_correction_is_what_changes_the_map() {
    // Without the correction the reference map differs from the corrected one: the fixture's
    // correction is not vacuous, and ours reproduces the corrected one (legrad_maps_match_reference).
    let exp = Expected::load("siglip/tiny-siglip-p16.expected.safetensors");
    let n = 64 * 64;
    let with = &exp.values("legrad/64x64/final")[..n];
    let without = exp.values("legrad/64x64/final_no_correction/0");
    assert!(max_abs_diff(with, without) > 0.05);
}

#[test]
fn analytic_gradient_equals_autodiff() {
    let exp = Expected::load("siglip/tiny-siglip-p16.expected.safetensors");
    for (backend, device) in devices() {
        let engine = engine("tiny-siglip-p16", &device);
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let texts = engine.encode(&prepared).unwrap();
        for key in ["64x64", "64x96"] {
            let request = TraceRequest::new(Reads::LeGrad, 0).with(Reads::Tokens, 0);
            let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size_of(key), &request).unwrap();
            let analytic = Method::LeGrad
                .explainer(&ExplainOptions { layer_index: 0 })
                .explain(&engine.context(), &trace, texts.clone())
                .unwrap();
            let auto = legrad_autodiff(&engine.context(), &trace, texts.clone(), 0).unwrap();
            let a = pollster::block_on(legrad::engine::read_f32(analytic.per_layer.unwrap().1)).unwrap();
            let b = pollster::block_on(legrad::engine::read_f32(auto.per_layer.unwrap().1)).unwrap();
            let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let d = max_abs_diff(&a, &b);
            assert!(scale > 0.0);
            assert!(d <= 5e-5 * scale.max(1e-3), "{backend} {key}: analytic vs autodiff {d} (scale {scale})");
        }
    }
}

#[test]
fn model_file_round_trip_keeps_the_tokenizer_and_the_maps() {
    use legrad::format::{self, Quant};
    let config = ConfigSource::from_json(std::fs::read_to_string(siglip("tiny-siglip-p16.json")).unwrap());
    let p = prepare_path(&siglip("tiny-siglip-p16.safetensors"), Some(config)).unwrap();
    let tok = tokenizer_json();
    let bytes = format::write_with_progress(&p.map, &p.config, Some(&tok), Quant::F32, "test", &mut |_, _| {}).unwrap();
    let device = burn::tensor::Device::flex();
    let (clip, info) = legrad::load::load_bytes(&bytes, None, &device).unwrap();
    assert_eq!(clip.tokenizer_json.as_deref(), Some(tok.as_str()));
    let engine = Engine::new(clip, info).unwrap();
    let exp = Expected::load("siglip/tiny-siglip-p16.expected.safetensors");
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let options = ExplainOptions { layer_index: -2 };
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let trace = engine.trace(exp.values("pixels/64x64").to_vec(), size_of("64x64"), &request).unwrap();
    let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
    let d = max_abs_diff(&out[0].map.map, &exp.values("legrad/64x64/final")[..64 * 64]);
    assert!(d <= MAP_TOL, "{d}");
    // Without the tokenizer a SigLIP model file cannot be written.
    assert!(format::write(&p.map, &p.config, Quant::Q8, "test").is_err());
}
