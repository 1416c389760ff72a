//! Numbers against the reference implementation (tools/reference/make_fixtures.py), on every
//! native backend. Tolerances (from the issue): embeddings cosine >= 0.99999; maps max abs
//! difference <= 1e-4 from preprocessed pixels, <= 2e-2 through our own decoding and resizing.

mod common;

use common::*;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::legrad::legrad_autodiff;
use legrad::explain::{ExplainOptions, Method, Reads};
use legrad::preprocess::{DecodeLimits, decode};
use legrad::{InputSize, TraceRequest};

const MAP_TOL: f32 = 1e-4;
const COS_TOL: f64 = 0.99999;

#[test]
fn tokenizer_matches_open_clip() {
    let tok = legrad::Tokenizer::new().unwrap();
    let fixture: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("tokenizer.json")).unwrap()).unwrap();
    let mut failures = Vec::new();
    for case in fixture["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["tokens"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let mut got = tok.tokenize(text, 77).ids;
        got.resize(77, 0);
        if got != want {
            failures.push(format!("{text:?}\n  ours {got:?}\n  ref  {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
}

#[test]
fn embeddings_match_reference() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    for (backend, device) in devices() {
        let engine = tiny_b16(&device);
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let text = pollster::block_on(engine.embed_texts(&prepared)).unwrap();
        let want = exp.values("text_emb");
        let e = engine.model.config.embed_dim;
        for p in 0..3 {
            let c = cosine(&text[p * e..][..e], &want[p * e..][..e]);
            assert!(c >= COS_TOL, "{backend}: text embedding {p} cosine {c}");
        }
        let raw = engine.prepare(&prompts(), None).unwrap();
        let text = pollster::block_on(engine.embed_texts(&raw)).unwrap();
        let want = exp.values("text_emb_no_template");
        for p in 0..3 {
            let c = cosine(&text[p * e..][..e], &want[p * e..][..e]);
            assert!(c >= COS_TOL, "{backend}: untemplated text embedding {p} cosine {c}");
        }
        for key in ["64x64", "96x96", "64x96"] {
            let pixels = exp.values(&format!("pixels/{key}")).to_vec();
            let img = pollster::block_on(engine.embed_image(pixels, size_of(key))).unwrap();
            let c = cosine(&img, exp.values(&format!("image_emb/{key}")));
            assert!(c >= COS_TOL, "{backend}: image embedding at {key}: cosine {c}");
        }
    }
}

/// A GPU engine whose text tower runs on the CPU (what the app does where the CPU encodes text
/// faster): the same embeddings and maps as the reference.
#[test]
fn text_tower_on_the_cpu_next_to_a_gpu_matches_reference() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let Some((_, gpu)) = devices().into_iter().find(|(b, _)| *b == "wgpu") else { return };
    let engine = tiny_b16(&gpu).with_text_tower(tiny_b16(&burn::tensor::Device::flex()).into_text_tower());
    assert_ne!(engine.text_device(), engine.device());
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let text = pollster::block_on(engine.embed_texts(&prepared)).unwrap();
    let e = engine.model.config.embed_dim;
    for p in 0..3 {
        let c = cosine(&text[p * e..][..e], &exp.values("text_emb")[p * e..][..e]);
        assert!(c >= 0.99999, "text embedding {p}: cosine {c}");
    }
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let trace = engine.trace(exp.values("pixels/64x96").to_vec(), size_of("64x96"), &request).unwrap();
    let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
    let want = exp.values("legrad/64x96/layer-2/final");
    for (p, r) in out.iter().enumerate() {
        let d = max_abs_diff(&r.map.map, &want[p * 64 * 96..][..64 * 96]);
        assert!(d <= MAP_TOL, "prompt {p}: max abs diff {d}");
    }
}

#[test]
fn legrad_maps_match_reference_from_pixels() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    for (backend, device) in devices() {
        let engine = tiny_b16(&device);
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        for key in ["64x64", "96x96", "64x96"] {
            let size = size_of(key);
            for li in [-2i64, 0] {
                let options = ExplainOptions { layer_index: li };
                let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
                let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size, &request).unwrap();
                let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
                let want = exp.values(&format!("legrad/{key}/layer{li}/final"));
                let n = size.width * size.height;
                let (_, want_layers) = exp.get(&format!("legrad/{key}/layer{li}/per_layer_grid"));
                let cells = out[0].map.grid.0 * out[0].map.grid.1;
                for (p, r) in out.iter().enumerate() {
                    assert_eq!(r.map.size, (size.height, size.width));
                    let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                    assert!(d <= MAP_TOL, "{backend} {key} layer_index {li} prompt {p}: max abs diff {d}");
                    assert!(!r.map.constant);
                    // Per-layer raw maps, before sum and normalisation.
                    for (i, (_, layer_map)) in r.map.per_layer.iter().enumerate() {
                        let w = &want_layers[(i * 3 + p) * cells..][..cells];
                        let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let d = max_abs_diff(layer_map, w);
                        assert!(
                            d <= MAP_TOL * scale,
                            "{backend} {key} layer {i} prompt {p}: per-layer diff {d} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
}

/// The model's warm-up shares its explanation with the helpers, as a prompt's is: each takes
/// rows of the model's size and answers before the first image (history §7).
#[test]
fn the_warm_up_runs_the_row_helpers() {
    use legrad::explain::rows::LocalHelpers;
    let device = burn::tensor::Device::flex();
    let engine = tiny_b16(&device);
    let helpers = LocalHelpers::new(1, &device);
    pollster::block_on(engine.warm_up(InputSize::square(64), &ExplainOptions::default(), Some(&helpers))).unwrap();
    assert_eq!(helpers.answered.get(), 1, "the helper answered the warm-up's explanation");
}

/// CLIP's LeGrad on the CPU with its query rows shared out (`explain::rows`, what the browser's
/// helper workers take): the reference's maps, as without helpers, for 1 to 20 helpers (more
/// than the tokens of a 4x4 grid: some get none), both layer indices, and with helpers that
/// fail (their rows are computed at home). Every helper here runs the helper workers' code
/// (`HeldRows`) on what crosses to them (`HostTensor`s); 5 get their rows before the first
/// prompt (`Engine::prime_helpers`), the others with it.
#[test]
fn legrad_maps_with_row_helpers_match_reference() {
    use legrad::explain::rows::LocalHelpers;
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let device = burn::tensor::Device::flex();
    let engine = tiny_b16(&device);
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    for key in ["64x64", "64x96"] {
        let size = size_of(key);
        for li in [-2i64, 0] {
            let options = ExplainOptions { layer_index: li };
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size, &request).unwrap();
            let alone = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
            let want = exp.values(&format!("legrad/{key}/layer{li}/final"));
            let n = size.width * size.height;
            for (count, fail) in [(1, false), (2, false), (5, false), (20, false), (2, true)] {
                let mut helpers = LocalHelpers::new(count, &device);
                helpers.fail = fail;
                if count == 5 {
                    // As the app does with a new image: the rows go out before the first prompt.
                    pollster::block_on(engine.prime_helpers(&trace, Method::LeGrad, &options, &helpers)).unwrap();
                }
                // Twice: the second explanation finds the rows held.
                for round in 0..2 {
                    let out = pollster::block_on(engine.explain_with(
                        &trace,
                        &prepared,
                        Method::LeGrad,
                        &options,
                        Some(&helpers),
                    ))
                    .unwrap();
                    let what = format!("{key} layer_index {li}, {count} helpers (failing: {fail}), round {round}");
                    for (p, (r, a)) in out.iter().zip(&alone).enumerate() {
                        let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                        assert!(d <= MAP_TOL, "{what}, prompt {p}: max abs diff {d} from the reference");
                        assert!(max_abs_diff(&r.map.map, &a.map.map) <= 1e-5, "{what}, prompt {p}: unlike unshared");
                        for ((_, x), (_, y)) in r.map.per_layer.iter().zip(&a.map.per_layer) {
                            let scale = y.iter().fold(0f32, |m, v| m.max(v.abs()));
                            assert!(max_abs_diff(x, y) <= 1e-5 * scale, "{what}, prompt {p}: a layer's map");
                        }
                        assert_eq!(r.map.per_layer.len(), a.map.per_layer.len());
                    }
                }
                // Every helper with rows answered both rounds (none when they fail).
                // (Shares of ceil(N / (helpers + 1)) rows: 20 helpers on 25 tokens leave 8 out.)
                let per = trace.tokens().div_ceil(count + 1);
                let with_rows = trace.tokens().div_ceil(per) - 1;
                let want = if fail { 0 } else { 2 * with_rows };
                assert_eq!(helpers.answered.get(), want, "{key} layer_index {li}: {count} helpers");
            }
        }
    }

    // One trace, several layer indices (a trace made for 0 serves -2 too): the helpers take the
    // rows of the layers asked each time and answer every time.
    let (key, li0) = ("64x64", ExplainOptions { layer_index: 0 });
    let request = engine.request_for(&[Method::LeGrad], &li0).unwrap();
    let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size_of(key), &request).unwrap();
    let helpers = LocalHelpers::new(1, &device);
    for li in [0i64, -2, 0] {
        let options = ExplainOptions { layer_index: li };
        let shared =
            pollster::block_on(engine.explain_with(&trace, &prepared, Method::LeGrad, &options, Some(&helpers)))
                .unwrap();
        let alone = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
        for (a, b) in shared.iter().zip(&alone) {
            assert!(max_abs_diff(&a.map.map, &b.map.map) <= 1e-5, "layer_index {li} on a trace made for 0");
        }
    }
    assert_eq!(helpers.answered.get(), 3, "the helper answered each layer index");
}

#[test]
fn legrad_maps_match_reference_through_decoding() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let (_, device) = devices().into_iter().next().unwrap();
    let engine = tiny_b16(&device);
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let mut report = Vec::new();
    let mut worst = 0f32;
    for name in ["scene.png", "photo.jpg", "alpha.png", "palette.png", "grey.png", "grey16.png", "exif_rotated.jpg"] {
        let bytes = std::fs::read(fixtures().join("images").join(name)).unwrap();
        let img = decode(&bytes, &DecodeLimits::default()).unwrap();
        for (h, w) in [(64usize, 64usize), (48, 80)] {
            let key = format!("image/{name}/{h}x{w}");
            let Some((_, ref_pixels)) = exp.0.get(&format!("{key}/pixels")) else { continue };
            let size = InputSize { width: w, height: h };
            let pixels = img.to_pixels(h, w).unwrap();
            let pix_diff = max_abs_diff(&pixels, ref_pixels);
            let trace = engine.trace(pixels, size, &request).unwrap();
            let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
            let want = exp.values(&format!("{key}/final"));
            let n = h * w;
            for (p, r) in out.iter().enumerate() {
                let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                worst = worst.max(d);
                report.push(format!("{key} prompt {p}: map diff {d:.2e}, pixel diff {pix_diff:.3}"));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(worst <= 2e-2, "worst map difference through decoding {worst}:\n{}", report.join("\n"));
}

#[test]
fn analytic_gradient_equals_autodiff() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    for (backend, device) in devices() {
        let engine = tiny_b16(&device);
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
fn pytorch_checkpoint_quickgelu_matches_reference() {
    let exp = Expected::load("tiny-vit-b32-quickgelu.expected.safetensors");
    for (backend, device) in devices() {
        let engine = engine("tiny-vit-b32-quickgelu.pt", Some("tiny-vit-b32-quickgelu.json"), &device);
        assert_eq!(engine.model.config.activation, legrad::Activation::QuickGelu);
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let text = pollster::block_on(engine.embed_texts(&prepared)).unwrap();
        let e = engine.model.config.embed_dim;
        for p in 0..3 {
            let c = cosine(&text[p * e..][..e], &exp.values("text_emb")[p * e..][..e]);
            assert!(c >= COS_TOL, "{backend}: text {p} cosine {c}");
        }
        for key in ["64x64", "96x96"] {
            let size = size_of(key);
            let pixels = exp.values(&format!("pixels/{key}")).to_vec();
            let img = pollster::block_on(engine.embed_image(pixels.clone(), size)).unwrap();
            let c = cosine(&img, exp.values(&format!("image_emb/{key}")));
            assert!(c >= COS_TOL, "{backend} {key}: image cosine {c}");
            let options = ExplainOptions::default();
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            let trace = engine.trace(pixels, size, &request).unwrap();
            let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
            let want = exp.values(&format!("legrad/{key}/layer-2/final"));
            let n = size.width * size.height;
            for (p, r) in out.iter().enumerate() {
                let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                assert!(d <= MAP_TOL, "{backend} {key} prompt {p}: {d}");
            }
        }
    }
}

#[test]
fn transformers_checkpoint_matches_reference() {
    let exp = Expected::load("tiny-hf-clip.expected.safetensors");
    for (backend, device) in devices() {
        // A directory: model.safetensors and config.json are found in it.
        let (clip, info) = legrad::load::load_path(&fixtures().join("tiny-hf-clip"), None, &device).unwrap();
        assert_eq!(info.config.activation, legrad::Activation::QuickGelu);
        let engine = legrad::Engine::new(clip, info).unwrap();
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let text = pollster::block_on(engine.embed_texts(&prepared)).unwrap();
        let e = engine.model.config.embed_dim;
        for p in 0..3 {
            let c = cosine(&text[p * e..][..e], &exp.values("text_emb")[p * e..][..e]);
            assert!(c >= COS_TOL, "{backend}: text {p} cosine {c}");
        }
        let img =
            pollster::block_on(engine.embed_image(exp.values("pixels/32x32").to_vec(), InputSize::square(32))).unwrap();
        let c = cosine(&img, exp.values("image_emb/32x32"));
        assert!(c >= COS_TOL, "{backend}: image cosine {c}");
    }
}

#[test]
fn new_prompt_reuses_the_trace() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let (_, device) = devices().into_iter().next().unwrap();
    let engine = tiny_b16(&device);
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let trace = engine.trace(exp.values("pixels/64x64").to_vec(), InputSize::square(64), &request).unwrap();
    let before = engine.model.vision.forward_count();
    for prompts in [vec!["cat".to_string()], vec!["the remote control".to_string(), "something red".to_string()]] {
        let prepared = engine.prepare(&prompts, Some(DEFAULT_TEMPLATE)).unwrap();
        let out = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
        assert_eq!(out.len(), prompts.len());
    }
    assert_eq!(engine.model.vision.forward_count(), before, "explaining a prompt ran the image tower");
    // One prompt alone gives what it gives in a batch (the reference's batch trick).
    let one = engine.prepare(&["something red".to_string()], Some(DEFAULT_TEMPLATE)).unwrap();
    let out = pollster::block_on(engine.explain(&trace, &one, Method::LeGrad, &options)).unwrap();
    let want = exp.values("legrad/64x64/layer-2/final");
    let d = max_abs_diff(&out[0].map.map, &want[2 * 4096..3 * 4096]);
    assert!(d <= MAP_TOL, "single prompt vs batch: {d}");
}

#[test]
fn baselines_match_their_references() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let base = Expected::load("tiny-vit-b16.baselines.safetensors");
    for (backend, device) in devices() {
        let engine = tiny_b16(&device);
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        let options = ExplainOptions::default();
        let methods = [Method::GradCam, Method::Rollout, Method::RawAttention, Method::CheferCam];
        let request = engine.request_for(&methods, &options).unwrap();
        for key in ["64x64", "96x96"] {
            let size = size_of(key);
            let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size, &request).unwrap();
            for (method, name) in methods.iter().zip(["gradcam", "rollout", "raw-attention", "chefercam"]) {
                let out = pollster::block_on(engine.explain(&trace, &prepared, *method, &options)).unwrap();
                let want = base.values(&format!("{name}/{key}"));
                let n = size.width * size.height;
                for (p, r) in out.iter().enumerate() {
                    let d = max_abs_diff(&r.map.map, &want[p * n..][..n]);
                    // relu(∇A ⊙ A) and GradCAM's relu(Σ w A) cut near zero, where GPU summation
                    // order moves values by ~1e-4: the baselines get 1e-3.
                    assert!(d <= 1e-3, "{backend} {name} {key} prompt {p}: max abs diff {d}");
                }
            }
        }
    }
}

/// The trace keeps each prompt's map (`Engine::explain_cached`, the page's path): a prompt seen
/// before on the trace is served from it, a new one computed, and every map equals the one
/// computed without the cache; another layer index is another map.
#[test]
fn a_traces_map_cache_serves_known_prompts_and_computes_new_ones() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let device = burn::tensor::Device::flex();
    let engine = tiny_b16(&device);
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let trace = engine.trace(exp.values("pixels/64x64").to_vec(), size_of("64x64"), &request).unwrap();
    let prepare = |p: &[&str]| engine.prepare(&p.iter().map(|s| s.to_string()).collect::<Vec<_>>(), None).unwrap();
    let first = prepare(&["cat", "the remote control"]);
    pollster::block_on(engine.explain_cached(&trace, &first, Method::LeGrad, &options, None)).unwrap();
    assert_eq!(trace.cached_maps(), 2);
    // Typed again with other spacing, next to a new line: one new map.
    let second = prepare(&["  the remote control ", "something red"]);
    let cached = pollster::block_on(engine.explain_cached(&trace, &second, Method::LeGrad, &options, None)).unwrap();
    assert_eq!(trace.cached_maps(), 3);
    assert_eq!(cached[0].prompt, "the remote control");
    let plain = pollster::block_on(engine.explain(&trace, &second, Method::LeGrad, &options)).unwrap();
    for (c, p) in cached.iter().zip(&plain) {
        let d = max_abs_diff(&c.map.map, &p.map.map);
        assert!(d <= 1e-5, "{}: the cached map differs by {d}", c.prompt);
        assert_eq!(c.text, p.text);
    }
    let other = ExplainOptions { layer_index: -1 };
    pollster::block_on(engine.explain_cached(&trace, &second, Method::LeGrad, &other, None)).unwrap();
    assert_eq!(trace.cached_maps(), 5, "another layer index is another map");
}

#[test]
fn the_cpus_prompt_chunks_give_the_same_maps() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let device = burn::tensor::Device::flex();
    let options = ExplainOptions::default();
    let explain = |engine: &legrad::Engine| {
        let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
        let trace = engine.trace(exp.values("pixels/64x64").to_vec(), size_of("64x64"), &request).unwrap();
        let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
        pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap()
    };
    let engine = tiny_b16(&device);
    let whole = explain(&engine);
    // A bound below one prompt's intermediates: one prompt at a time.
    let policy = legrad::ComputePolicy { prompt_chunk_bytes: 1, ..*engine.policy() };
    let chunked = explain(&engine.with_policy(policy).unwrap());
    assert_eq!(whole.len(), 3);
    for (w, c) in whole.iter().zip(&chunked) {
        assert_eq!(w.prompt, c.prompt);
        assert_close(&c.map.map, &w.map.map, 1e-6, &format!("{}: map", w.prompt));
        assert_close(&[c.score], &[w.score], 1e-6, &format!("{}: score", w.prompt));
        for ((lw, mw), (lc, mc)) in w.map.per_layer.iter().zip(&c.map.per_layer) {
            assert_eq!(lw, lc);
            assert_close(mc, mw, 1e-6, &format!("{}: layer {lw}", w.prompt));
        }
    }
}
