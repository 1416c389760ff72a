//! LeGrad's GPU kernels (`explain::kernel`) against their plain-tensor twins
//! (`explain::legrad::relevance_plain`, `LayerTerms::head_gradient`), on wgpu (lavapipe on a
//! machine without a GPU), at both tilings (a GPU's small tiles, a software adapter's large
//! ones): on random inputs of awkward shapes (token counts that leave partial tiles, cubes and
//! uneven chunks, several prompts and heads, odd head widths, widths that are no multiple of a
//! tile) and on the fixture model's real terms. Tolerance: 1e-5 of the largest value (the two
//! sum in different orders).
#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, Distribution, Tensor};
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::engine::read_f32;
use legrad::explain::kernel::{Tiling, relevance_fused};
use legrad::explain::legrad::{LayerTerms, LegradTrace, layer_terms_for, relevance_plain};
use legrad::explain::{ExplainOptions, Method};

use common::*;

fn gpu() -> Device {
    Device::wgpu(Default::default())
}

const TILINGS: [(&str, Tiling); 2] = [("GPU", Tiling::GPU), ("software", Tiling::SOFTWARE)];

fn assert_close<const D: usize>(plain: Tensor<D>, fused: Tensor<D>, what: &str) {
    assert_eq!(plain.dims(), fused.dims(), "{what}: shapes");
    let a = pollster::block_on(read_f32(plain)).unwrap();
    let b = pollster::block_on(read_f32(fused)).unwrap();
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-20);
    let d = max_abs_diff(&a, &b);
    assert!(d <= 1e-5 * scale, "{what}: max abs diff {d} (largest value {scale})");
    assert!(a.iter().any(|v| *v > 0.0), "{what}: an all-zero relevance proves nothing");
}

#[test]
fn fused_relevance_equals_the_plain_tensor_form_on_random_terms() {
    let device = gpu();
    // (prompts, tokens, heads, head width): token counts that leave a partial cube of 64 and
    // uneven chunks of query rows, several prompts and heads, odd head widths.
    for (p, n, h, d) in [(1, 17, 2, 32), (3, 50, 2, 24), (2, 197, 12, 64), (8, 5, 1, 16), (1, 2, 4, 8), (1, 785, 2, 64)]
    {
        let dc = Tensor::<3>::random([p, n, h * d], Distribution::Normal(0.0, 1.0), &device);
        let values = Tensor::<3>::random([h, n, d], Distribution::Normal(0.0, 1.0), &device);
        let plain = relevance_plain(dc.clone(), values.clone());
        for (name, tiling) in TILINGS {
            assert_close(
                plain.clone(),
                relevance_fused(dc.clone(), values.clone(), tiling),
                &format!("{name} tiling: P {p}, N {n}, H {h}, d {d}"),
            );
        }
    }
}

#[test]
fn head_gradient_kernel_equals_the_plain_tensor_form_on_random_terms() {
    let device = gpu();
    let normal = |shape: [usize; 2]| Tensor::<2>::random(shape, Distribution::Normal(0.0, 1.0), &device);
    // (prompts, tokens, MLP width, width): partial row and column tiles, several prompts, the
    // fixture's and the default model's shapes, a width below one tile.
    for (p, n, m, w) in [(1, 17, 64, 32), (3, 50, 40, 24), (2, 197, 512, 128), (1, 5, 16, 8), (1, 65, 96, 80)] {
        let terms = LayerTerms {
            act_grad: normal([n, m]),
            ag: normal([p, m + w]),
            k: legrad::explain::terms::FoldedK::Tensor(normal([m, w])),
            m: normal([p, 2 * n]),
            ones_out: normal([1, w]).reshape([w]),
            xhat_out: normal([n, w]),
            rstd: normal([1, n]).reshape([n]),
            values: Tensor::<3>::zeros([1, n, w], &device),
        };
        let plain = terms.head_gradient();
        for tile in [(4, 4), (32, 16), (3, 5)] {
            assert_close(
                plain.clone(),
                terms.head_gradient_fused(tile, 8),
                &format!("{tile:?} tiles: P {p}, N {n}, M {m}, W {w}"),
            );
        }
    }
}

#[test]
fn fused_relevance_equals_the_plain_tensor_form_on_the_fixture_model() {
    let device = gpu();
    let engine = tiny_b16(&device);
    let exp = Expected::load("tiny-vit-b16.expected.safetensors");
    let prompts = engine.prepare(&prompts(), Some(DEFAULT_TEMPLATE)).unwrap();
    let texts = engine.encode(&prompts).unwrap();
    for key in ["64x64", "64x96"] {
        for layer_index in [-2i64, 0] {
            let options = ExplainOptions { layer_index };
            let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
            let trace = engine.trace(exp.values(&format!("pixels/{key}")).to_vec(), size_of(key), &request).unwrap();
            let LegradTrace::ClassToken(clip) = trace.legrad().unwrap() else { panic!("a CLIP model") };
            let (layers, terms) =
                layer_terms_for(&engine.context(), clip, trace.tokens(), texts.clone(), layer_index).unwrap();
            for (l, t) in layers.iter().zip(&terms) {
                let dc = t.head_gradient();
                let plain = relevance_plain(dc.clone(), t.values.clone());
                for (name, tiling) in TILINGS {
                    let (rows, cols) = tiling.head_gradient.unwrap_or((4, 4));
                    let fused_dc = t.head_gradient_fused((rows, cols), tiling.units);
                    assert_close(dc.clone(), fused_dc.clone(), &format!("{name} tiling: {key}, layer {l}, dc"));
                    assert_close(
                        plain.clone(),
                        relevance_fused(fused_dc, t.values.clone(), tiling),
                        &format!("{name} tiling: {key}, layer {l}, relevance"),
                    );
                }
            }
        }
    }
}

#[test]
fn gpu_memory_is_reported_on_wgpu_and_not_on_the_cpu() {
    use legrad::device_stats::gpu_memory;
    assert_eq!(gpu_memory(&Device::flex()), None);
    let device = gpu();
    let t = Tensor::<2>::random([256, 256], Distribution::Normal(0.0, 1.0), &device);
    let _ = pollster::block_on(read_f32(t.clone() * 2.0)).unwrap();
    let (in_use, reserved) = gpu_memory(&device).expect("a wgpu device reports its memory");
    assert!(in_use >= 256 * 256 * 4, "{in_use} bytes in use with a 256 KB tensor alive");
    assert!(reserved >= in_use, "reserved {reserved} < in use {in_use}");
    drop(t);
}
