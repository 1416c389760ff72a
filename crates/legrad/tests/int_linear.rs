//! The vision tower's linear layers and attention in 16-bit integer products
//! (`model::int_linear`: the CPU path of large towers) against the f32 path and the reference:
//! issue 28's fidelity bars, on the fixture model (every size forced onto the integer path), on
//! a random ViT-B/16 and on the same model with massive activations
//! (`weights::random::with_outlier_channels`).

mod common;

use std::future::Future;
use std::pin::Pin;

use common::*;
use legrad::compute::Int16Products;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::{ExplainOptions, Method};
use legrad::load::Prepared;
use legrad::model::int_linear::share::{BlockShare, ImageHelpers, StageJob, StageOut};
use legrad::{ClipConfig, ComputePolicy, Engine, InputSize};

#[test]
fn integer_path_matches_the_reference_on_the_fixture() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let int = tiny_b16_cpu(Int16Products::Always);
    let exact = tiny_b16_cpu(Int16Products::Never);
    assert!(matches!(int.model.vision.weights.blocks[0].attn.in_proj, legrad::model::Dense::Integer(_)));
    assert!(matches!(exact.model.vision.weights.blocks[0].attn.in_proj, legrad::model::Dense::Burn(_)));
    let options = ExplainOptions { layer_index: -2 };
    let request = int.request_for(&[Method::LeGrad], &options).unwrap();
    let prepared = int.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let (mut cos, mut worst, mut moved) = (1f64, 0f32, 0f32);
    for key in ["64x64", "96x96", "64x96"] {
        let size = size_of(key);
        let pixels = exp.values(&format!("pixels/{key}")).to_vec();
        let trace = int.trace(pixels.clone(), size, &request).unwrap();
        let emb = pollster::block_on(legrad::engine::read_f32(trace.embedding.clone())).unwrap();
        cos = cos.min(cosine(&emb, exp.values(&format!("image_emb/{key}"))));
        let maps = pollster::block_on(int.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
        let f32_trace = exact.trace(pixels, size, &request).unwrap();
        let f32_maps = pollster::block_on(exact.explain(&f32_trace, &prepared, Method::LeGrad, &options)).unwrap();
        let want = exp.values(&format!("legrad/{key}/layer-2/final"));
        let n = size.width * size.height;
        for (i, (m, e)) in maps.iter().zip(&f32_maps).enumerate() {
            worst = worst.max(compare(&m.map.map, &want[i * n..][..n]).unwrap().max_abs);
            moved = moved.max(compare(&m.map.map, &e.map.map).unwrap().max_abs);
        }
    }
    eprintln!("fixture, integer path: image embedding cosine >= {cos:.7}, maps within {worst:.2e} of the reference");
    assert!(cos >= 0.9995, "image embedding cosine {cos}");
    assert!(worst <= 1e-2, "maps differ from the reference by {worst}");
    assert!(moved > 0.0, "the maps equal the f32 path's: the integer products did not run");
}

/// Issue 28's bars on a random ViT-B/16 at 448 (four images, three prompts), and on the same
/// model with three massive channels (x100).
#[test]
fn integer_path_keeps_the_bars_on_vit_b16_with_and_without_outliers() {
    let config = ClipConfig::preset("ViT-B-16").unwrap();
    let size = InputSize::square(448);
    let images = structured_images(4, 448);
    let prompts = fidelity_prompts();
    for outliers in [false, true] {
        let prepared = |linear| build_cpu(random_vit_b16(&config, outliers), linear);
        let (int, exact) = (prepared(Int16Products::LargeLayers), prepared(Int16Products::Never));
        assert!(matches!(int.model.vision.weights.blocks[0].mlp.c_fc, legrad::model::Dense::Integer(_)));
        let what = format!("ViT-B/16 at 448{}", if outliers { " with outliers" } else { "" });
        assert_bars(&what, fidelity(&int, &exact, &images, size, &prompts));
    }
}

/// Helpers in this thread: each holds its shares as a helper worker does (through
/// [`BlockShare::payload`], what crosses to a worker) and answers at once; counts its jobs.
struct InProcess(Vec<Vec<BlockShare>>, std::cell::Cell<usize>);

impl InProcess {
    fn new(engine: &Engine, helpers: usize) -> Self {
        let v = &engine.model.vision;
        let kernel = engine.policy().int_kernel;
        let shares = (1..=helpers)
            .map(|part| match v.shares(part, helpers + 1) {
                Some(s) => s.into_iter().map(|b| BlockShare::from_payload(b.payload(), kernel).unwrap()).collect(),
                None => Vec::new(),
            })
            .collect();
        Self(shares, std::cell::Cell::new(0))
    }
}

impl ImageHelpers for InProcess {
    fn count(&self) -> usize {
        if self.0.iter().all(|s| !s.is_empty()) { self.0.len() } else { 0 }
    }

    fn start(&self, i: usize, job: StageJob, x: &[f32]) -> Pin<Box<dyn Future<Output = legrad::Result<StageOut>>>> {
        self.1.set(self.1.get() + 1);
        let out = self.0[i][job.block].run(&job, x);
        Box::pin(std::future::ready(out))
    }
}

/// The image step with its products shared (`int_linear::share`) against the unshared one:
/// the same but for each share's rounding of its part of a row, on the fixture (two heads) and
/// on a random ViT-B/16 in two, three and four shares; five shares do not fit twelve heads (the
/// step runs unshared, to the bit).
#[test]
fn shared_image_step_matches_the_unshared_one() {
    let vit = || {
        let config = ClipConfig::preset("ViT-B-16").unwrap();
        let map = legrad::weights::random::random_openclip(&config, 0);
        build_cpu(
            Prepared { map, config, source_format: "random".into(), notes: vec![], tokenizer: None },
            Int16Products::LargeLayers,
        )
    };
    let prompts: Vec<String> = ["a cat", "a red circle"].map(String::from).to_vec();
    let options = ExplainOptions::default();
    for (engine, side, counts) in [(tiny_b16_cpu(Int16Products::Always), 96, vec![1]), (vit(), 224, vec![1, 2, 3, 4])] {
        let size = InputSize::square(side);
        // By default the tiny model's 37 tokens are not shared (too few to pay for the
        // messages), a ViT-B/16's 197 at 224 px are (from 128: history §11); here both are.
        assert_eq!(engine.shares_image_step(size), side == 224);
        let policy = ComputePolicy { shared_step_tokens: 0, ..*engine.policy() };
        let engine = engine.with_policy(policy).unwrap();
        let mut rng = legrad::rng::Rng::new(7);
        let pixels: Vec<f32> = (0..3 * side * side).map(|_| rng.normal()).collect();
        let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
        let alone = engine.trace(pixels.clone(), size, &request).unwrap();
        let prepared = engine.prepare(&prompts, Some(DEFAULT_TEMPLATE)).unwrap();
        let read = |t: &legrad::explain::trace::ImageTrace| {
            pollster::block_on(legrad::engine::read_f32(t.embedding.clone())).unwrap()
        };
        let maps = |t: &legrad::explain::trace::ImageTrace| {
            pollster::block_on(engine.explain(t, &prepared, Method::LeGrad, &options)).unwrap()
        };
        let (want_emb, want_maps) = (read(&alone), maps(&alone));
        for helpers in counts {
            let fake = InProcess::new(&engine, helpers);
            let shares = if fake.count() > 0 { helpers + 1 } else { 1 };
            assert_eq!(shares, if helpers < 4 || side == 96 { helpers + 1 } else { 1 }, "{helpers} helpers");
            let shared = pollster::block_on(engine.trace_shared(pixels.clone(), size, &request, &fake)).unwrap();
            assert_eq!(fake.1.get() > 0, shares > 1, "{helpers} helpers: jobs sent");
            let emb = read(&shared);
            let cos = cosine(&emb, &want_emb);
            let (mut worst, mut r) = (0f32, 1f64);
            for (a, b) in maps(&shared).iter().zip(&want_maps) {
                worst = worst.max(compare(&a.map.map, &b.map.map).unwrap().max_abs);
                r = r.min(pearson(&a.map.map, &b.map.map));
            }
            eprintln!(
                "{side} px in {shares} shares: embedding cosine {cos:.7}, maps within {worst:.2e}, Pearson r >= {r:.6}"
            );
            if shares == 1 {
                assert_eq!(emb, want_emb, "one share is the unshared step");
            }
            assert!(cos >= 0.99999, "{side} px, {shares} shares: embedding cosine {cos}");
            assert!(worst <= 1e-3, "{side} px, {shares} shares: maps differ by {worst}");
            assert!(r >= 0.9999, "{side} px, {shares} shares: maps Pearson r {r}");
        }
    }
}

/// A trace for a reader of the attention keeps its probabilities through the shared step too
/// (LeGrad's trace keeps none, `model::Keep`): Rollout and raw attention on the fixture, shared
/// with one helper, against the unshared step.
#[test]
fn shared_step_keeps_the_probabilities_where_a_reader_asks() {
    let engine = tiny_b16_cpu(Int16Products::Always);
    let policy = ComputePolicy { shared_step_tokens: 0, ..*engine.policy() };
    let engine = engine.with_policy(policy).unwrap();
    let (side, options) = (96, ExplainOptions::default());
    let size = InputSize::square(side);
    let mut rng = legrad::rng::Rng::new(11);
    let pixels: Vec<f32> = (0..3 * side * side).map(|_| rng.normal()).collect();
    let methods = [Method::Rollout, Method::RawAttention, Method::LeGrad];
    let request = engine.request_for(&methods, &options).unwrap();
    let alone = engine.trace(pixels.clone(), size, &request).unwrap();
    let fake = InProcess::new(&engine, 1);
    assert_eq!(fake.count(), 1);
    let shared = pollster::block_on(engine.trace_shared(pixels, size, &request, &fake)).unwrap();
    let prepared = engine.prepare(&["a cat".to_string()], Some(DEFAULT_TEMPLATE)).unwrap();
    for method in methods {
        let maps = |t: &legrad::explain::trace::ImageTrace| {
            pollster::block_on(engine.explain(t, &prepared, method, &options)).unwrap()
        };
        let (a, b) = (maps(&shared), maps(&alone));
        let diff = compare(&a[0].map.map, &b[0].map.map).unwrap().max_abs;
        eprintln!("{method:?}, shared against unshared: maps within {diff:.2e}");
        assert!(diff <= 1e-3, "{method:?}: the shared step's map differs by {diff}");
    }
}
