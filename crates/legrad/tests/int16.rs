//! LeGrad's maps by the CPU's 16-bit integer products (`explain::int16`: what the browser's CPU
//! path runs for large models), forced on for every size by the engine's compute policy
//! ([`Int16Products::Always`]), against the reference: the rounding's cost on whole maps,
//! within [`INT16_TOL`] where the f32 path is within 1e-4 (`tests/reference.rs`).

mod common;

use common::*;
use legrad::compute::Int16Products;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::rows::LocalHelpers;
use legrad::explain::{ExplainOptions, Method};

/// Max abs difference of a final map (min-max normalised, so relative to its range).
const INT16_TOL: f32 = 1e-3;

#[test]
fn legrad_maps_by_integer_products_match_reference() {
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let device = burn::tensor::Device::flex();
    let engine = tiny_b16(&device);
    let policy = engine.policy().with_int16(Int16Products::Always);
    assert!(policy.int16_for(1, 1, 1));
    let engine = engine.with_policy(policy).unwrap();
    let exact = tiny_b16(&device);
    let prepared = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let mut worst = 0f32;
    let mut from_exact = 0f32;
    for key in ["64x64", "96x96", "64x96"] {
        let size = size_of(key);
        let n = size.width * size.height;
        for li in [-2i64, 0] {
            let options = ExplainOptions { layer_index: li };
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size, &request).unwrap();
            let alone = pollster::block_on(engine.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
            let f32_maps = pollster::block_on(exact.explain(&trace, &prepared, Method::LeGrad, &options)).unwrap();
            for (a, e) in alone.iter().zip(&f32_maps) {
                from_exact = from_exact.max(max_abs_diff(&a.map.map, &e.map.map));
            }
            let mut helpers = LocalHelpers::new(1, &device);
            helpers.policy = policy;
            let shared =
                pollster::block_on(engine.explain_with(&trace, &prepared, Method::LeGrad, &options, Some(&helpers)))
                    .unwrap();
            assert!(helpers.answered.get() > 0, "{key} layer_index {li}: the helper took no rows");
            let want = exp.values(&format!("legrad/{key}/layer{li}/final"));
            for (p, (a, s)) in alone.iter().zip(&shared).enumerate() {
                let d = max_abs_diff(&a.map.map, &want[p * n..][..n]);
                worst = worst.max(d);
                assert!(d <= INT16_TOL, "{key} layer_index {li} prompt {p}: max abs diff {d} from the reference");
                // The rows' shares round the same numbers (per row, per column of the whole).
                let split = max_abs_diff(&a.map.map, &s.map.map);
                assert!(split <= 1e-5, "{key} layer_index {li} prompt {p}: shared rows differ by {split}");
            }
        }
    }
    eprintln!("integer products: largest difference from the reference {worst}, from the f32 path {from_exact}");
    // The integer products ran: their maps are not the f32 path's to the bit.
    assert!(from_exact > 0.0, "the maps equal the f32 path's: the integer products did not run");
}
