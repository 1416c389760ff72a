//! Times a random ViT-B/16's image forward on the CPU (`legrad::model::VisionTower::forward`)
//! with the linear layers in integers and in f32, and one block's parts, at `size` px
//! (`cargo run --release -p legrad --example vision_forward -- 224`). Each time is the mean of
//! 5 calls after one untimed call; rayon's threads: all cores unless RAYON_NUM_THREADS says.
use std::time::Instant;

use burn::tensor::{Device, Distribution, Tensor, activation};
use legrad::compute::Int16Products;
use legrad::{ClipConfig, ComputePolicy};

fn time<T>(what: &str, f: &dyn Fn() -> T) {
    let _ = f();
    let t0 = Instant::now();
    for _ in 0..5 {
        let _ = f();
    }
    println!("{what:<36} {:>8.2} ms", t0.elapsed().as_secs_f64() / 5.0 * 1e3);
}

fn main() {
    let size: usize = std::env::args().nth(1).map(|a| a.parse().expect("a size")).unwrap_or(224);
    let device = Device::flex();
    let config = ClipConfig::preset("ViT-B-16").expect("preset");
    let pixels = Tensor::<4>::random([1, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
    for linear in [Int16Products::Never, Int16Products::LargeLayers] {
        let policy = ComputePolicy::for_device(&device).with_int_linear(linear);
        let map = legrad::weights::random::random_openclip(&config, 0);
        let prepared = legrad::load::Prepared {
            map,
            config: config.clone(),
            source_format: "random".into(),
            notes: vec![],
            tokenizer: None,
        };
        let (clip, _) = prepared.build_with(&device, &policy).expect("model");
        let v = &clip.vision;
        println!("-- linear layers: {linear:?}");
        time("image forward", &|| v.forward(pixels.clone()).unwrap().into_data());
        let (x, _) = v.embed(pixels.clone()).unwrap();
        let b = &v.weights.blocks[5];
        let sync = |t: Tensor<3>| t.into_data();
        time("embed", &|| v.embed(pixels.clone()).unwrap().0.into_data());
        time("ln_1", &|| sync(b.ln_1.forward(x.clone())));
        let a = b.ln_1.forward(x.clone());
        time("in_proj", &|| sync(b.attn.in_proj.forward(a.clone())));
        time("attention (all)", &|| sync(b.attn.forward(a.clone(), None).output));
        let [bb, n, w] = x.dims();
        let (h, d) = (12, w / 12);
        let qkv = b.attn.in_proj.forward(a.clone());
        let split = |i: usize| qkv.clone().narrow(2, i * w, w).reshape([bb, n, h, d]).swap_dims(1, 2);
        let (q, k, vv) = (split(0), split(1), split(2));
        time("q kᵀ", &|| q.clone().matmul(k.clone().swap_dims(2, 3)).into_data());
        let s = q.clone().matmul(k.clone().swap_dims(2, 3));
        time("softmax", &|| activation::softmax(s.clone(), 3).into_data());
        let p = activation::softmax(s.clone(), 3);
        time("p v", &|| p.clone().matmul(vv.clone()).into_data());
        let ctx = b.attn.context(p.clone(), vv.clone());
        let qkv_host = qkv.clone().into_data().try_into_vec::<f32>().unwrap();
        let kernel = ComputePolicy::for_device(&device).int_kernel;
        time("host attention core (integer)", &|| {
            legrad::model::int_linear::attention::attention(&qkv_host, n, h, d, kernel, false).context
        });
        time("host attention core, probs kept", &|| {
            legrad::model::int_linear::attention::attention(&qkv_host, n, h, d, kernel, true).context
        });
        time("context (p v, heads merged)", &|| sync(b.attn.context(p.clone(), vv.clone())));
        time("out_proj", &|| sync(b.attn.out_proj.forward(ctx.clone())));
        time("ln_2", &|| sync(b.ln_2.forward(x.clone())));
        time("c_fc", &|| sync(b.mlp.c_fc.forward(a.clone())));
        let hh = b.mlp.c_fc.forward(a.clone());
        time("activation", &|| sync(b.mlp.activate(clip.config.activation, hh.clone())));
        let g = b.mlp.activate(clip.config.activation, hh.clone());
        time("c_proj", &|| sync(b.mlp.c_proj.forward(g.clone())));
        time("whole block", &|| sync(b.forward(x.clone(), None, clip.config.activation)));
        time("block, traced", &|| {
            sync(b.forward_traced(x.clone(), clip.config.activation, legrad::model::Keep::Everything).output)
        });
    }
}
