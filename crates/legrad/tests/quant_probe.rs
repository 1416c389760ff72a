use burn::tensor::quantization::{QuantScheme, QuantValue, QuantStore, ScaleDtype, QuantizationParameters};
use burn::tensor::{Device, Tensor, TensorData};

fn data(k: usize, n: usize) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let w: Vec<f32> = (0..k * n).map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5)).collect();
    let nb = n / 32;
    let mut scales = vec![0f32; k * nb];
    for r in 0..k { for b in 0..nb {
        let m = (0..32).map(|j| w[r * n + b * 32 + j].abs()).fold(0f32, f32::max);
        scales[r * nb + b] = m / 127.0;
    }}
    let deq: Vec<f32> = (0..k*n).map(|i| { let s = scales[(i / n) * nb + (i % n) / 32]; (w[i] / s).round().clamp(-127.0, 127.0) * s }).collect();
    (w, scales, deq)
}

fn err(a: &[f32], b: &[f32]) -> f32 { a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) }

#[test]
fn probe() {
    let (k, n) = (64usize, 96usize);
    let (w, scales, deq) = data(k, n);
    let flex = Device::flex();
    let wgpu = Device::wgpu(Default::default());
    for store in [QuantStore::PackedU32(0), QuantStore::Native] {
        let scheme = QuantScheme::default().with_value(QuantValue::Q8S).with_store(store).per_block([1u8, 32], ScaleDtype::F32);
        for (name, dev) in [("flex", &flex), ("wgpu", &wgpu)] {
            let r = std::panic::catch_unwind(|| {
                let t: Tensor<2> = Tensor::from_data(TensorData::new(w.clone(), [k, n]), dev);
                let qp = QuantizationParameters { scales: Tensor::from_data(TensorData::new(scales.clone(), [k * n / 32]), dev), global: None };
                let q = t.quantize(&scheme, qp);
                let dq: Vec<f32> = q.clone().dequantize().into_data().to_vec().unwrap();
                println!("{store:?} {name}: quantize-here dequant err {:e}", err(&dq, &deq));
                if name == "flex" {
                    let moved = q.to_device(&wgpu);
                    let dq2: Vec<f32> = moved.clone().dequantize().into_data().to_vec().unwrap();
                    println!("{store:?} flex->wgpu moved dequant err {:e}", err(&dq2, &deq));
                    let x: Tensor<2> = Tensor::from_data(TensorData::new(vec![0.5f32; 5 * k], [5, k]), &wgpu);
                    let y: Vec<f32> = x.clone().matmul(moved.clone()).into_data().to_vec().unwrap();
                    let yr: Vec<f32> = x.clone().matmul(Tensor::from_data(TensorData::new(deq.clone(), [k, n]), &wgpu)).into_data().to_vec().unwrap();
                    println!("{store:?} flex->wgpu matmul err {:e}", err(&y, &yr));
                    let x2: Tensor<2> = Tensor::from_data(TensorData::new(vec![0.25f32; 5 * n], [5, n]), &wgpu);
                    let y2: Vec<f32> = x2.clone().matmul(moved.clone().transpose()).into_data().to_vec().unwrap();
                    let y2r: Vec<f32> = x2.matmul(Tensor::<2>::from_data(TensorData::new(deq.clone(), [k, n]), &wgpu).transpose()).into_data().to_vec().unwrap();
                    println!("{store:?} flex->wgpu transposed matmul err {:e}", err(&y2, &y2r));
                }
            });
            if r.is_err() { println!("{store:?} {name}: PANIC"); }
        }
    }
}
