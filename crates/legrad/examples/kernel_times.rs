//! Times LeGrad's GPU kernels ([`legrad::explain::kernel`]) at both tilings against their
//! plain-tensor twins, on random inputs of one layer's shapes: tokens N, MLP width M, width W,
//! heads H. A ViT-B/16 at 224 px:
//! `cargo run --release -p legrad --features wgpu --example kernel_times -- 197 3072 768 12`.
//! Each time is the mean of 3 calls after one untimed call (which compiles).
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use legrad::engine::read_f32;
use legrad::explain::kernel::{Tiling, head_gradient_fused, relevance_fused};
use legrad::explain::legrad::relevance_plain;

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [n, m, w, h] = args[..] else { panic!("N M W H") };
    let p = 1;
    let device = Device::wgpu(Default::default());
    let r = |s: Vec<usize>| Tensor::<2>::random([s[0], s[1]], Distribution::Normal(0.0, 1.0), &device);
    let act = r(vec![n, m]);
    let ag = r(vec![p, m + w]);
    let k = r(vec![m, w]);
    let mm = r(vec![p, 2 * n]);
    let ones = r(vec![1, w]).reshape([w]);
    let xo = r(vec![n, w]);
    let rstd = r(vec![1, n]).reshape([n]);
    let values = Tensor::<3>::random([h, n, w / h], Distribution::Normal(0.0, 1.0), &device);
    let sync = |t: Tensor<2>| pollster::block_on(read_f32(t)).unwrap();
    let time = |what: &str, f: &dyn Fn() -> Tensor<2>| {
        sync(f());
        let t0 = Instant::now();
        let runs = 3;
        for _ in 0..runs {
            sync(f());
        }
        println!("{what}: {:.1} ms", t0.elapsed().as_secs_f64() * 1e3 / runs as f64);
    };
    let plain = || {
        let dh = act.clone().unsqueeze::<3>() * ag.clone().narrow(1, 0, m).unsqueeze_dim(1);
        dh.matmul(k.clone().unsqueeze()).reshape([p * n, w])
    };
    let fused = |tile: (usize, usize), units: u32| {
        head_gradient_fused(
            act.clone(),
            ag.clone(),
            k.clone(),
            mm.clone(),
            ones.clone(),
            xo.clone(),
            rstd.clone(),
            tile,
            units,
        )
        .reshape([p * n, w])
    };
    time("dc: dh then dh K by burn's matmul (the GPU tiling's path)", &plain);
    for tile in [(4, 4), (16, 8), (32, 16)] {
        time(&format!("dc: head-gradient kernel, {} x {} tiles, 8 units", tile.0, tile.1), &|| fused(tile, 8));
    }
    let dc = plain().reshape([p, n, w]);
    time("relevance: plain tensor form", &|| relevance_plain(dc.clone(), values.clone()));
    for (what, tiling) in [("GPU", Tiling::GPU), ("software", Tiling::SOFTWARE)] {
        time(&format!("relevance: kernel, {what} tiling"), &|| relevance_fused(dc.clone(), values.clone(), tiling));
    }
}
