//! Times the integer linear layers ([`legrad::model::int_linear`]) in each form this CPU runs,
//! on rayon's threads, against burn's f32 product, for `rows in out` (a ViT-B/16's qkv at 224 px:
//! `cargo run --release -p legrad --example int_linear_times -- 197 768 2304`). Each time is
//! the mean of 10 calls after one untimed call.
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor};
use legrad::model::int_linear::{IntKernel, IntMatrix};

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let [rows, k, n] = args[..] else { panic!("ROWS IN OUT") };
    let device = Device::flex();
    let w = Tensor::<2>::random([k, n], Distribution::Normal(0.0, 0.05), &device);
    let x = Tensor::<2>::random([rows, k], Distribution::Normal(0.0, 1.0), &device);
    let xs = x.clone().into_data().try_into_vec::<f32>().unwrap();
    let ws = w.clone().transpose().into_data().try_into_vec::<f32>().unwrap();
    let bias = vec![0f32; n];
    let macs = (rows * k * n) as f64;
    let time = |what: &str, f: &dyn Fn()| {
        f();
        let t0 = Instant::now();
        for _ in 0..10 {
            f();
        }
        let s = t0.elapsed().as_secs_f64() / 10.0;
        println!("{what:<28} {:>8.2} ms  {:>6.1} G multiply-adds/s", s * 1e3, macs / s / 1e9);
    };
    time("burn f32 (gemm)", &|| {
        let _ = x.clone().matmul(w.clone()).into_data();
    });
    for kernel in IntKernel::available() {
        let m = IntMatrix::new(&ws, k, n, kernel);
        time(&format!("integer, {kernel:?}"), &|| {
            let _ = m.forward(&xs, rows, &bias);
        });
    }
}
