//! Times what a new prompt's words add on the CPU (issue 29's bar): the text encoding with and
//! without the word trace, the closed form per prompt, and the whole `explain` of one new prompt,
//! for the default model and a random ViT-B/16 with its large layers on the integer grid
//! (`cargo run --release -p legrad --example words_times`). Each time is the median of 9 calls
//! after one untimed call.
use std::time::Instant;

use burn::tensor::{Device, Tensor, TensorData};
use legrad::compute::Int16Products;
use legrad::explain::ExplainOptions;
use legrad::explain::words::token_relevance;
use legrad::{ClipConfig, ComputePolicy, Engine, InputSize, Method};

fn time(what: &str, f: &mut dyn FnMut()) {
    f();
    let mut t: Vec<f64> = (0..9)
        .map(|_| {
            let t0 = Instant::now();
            f();
            t0.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    println!("  {what:<44} {:>8.3} ms", t[4]);
}

fn report(name: &str, engine: &Engine, size: usize) {
    println!("-- {name}");
    let tower = &engine.model.text;
    let options = ExplainOptions::default();
    let word_layer = engine.word_layer(options.layer_index).unwrap();
    let depth = tower.weights.blocks.len();
    let prompts = engine.prepare(&["a photo of a red circle".to_string()], None).unwrap();
    let seqs = vec![prompts[0].tokens.ids.clone()];
    time("text encoding, no word trace", &mut || {
        let _ = tower.encode_traced(&seqs, 0, depth).unwrap().0.into_data();
    });
    time(&format!("text encoding, word trace from block {word_layer}"), &mut || {
        let _ = tower.encode_traced(&seqs, 0, word_layer).unwrap().0.into_data();
    });
    let (emb, traces) = tower.encode_traced(&seqs, 0, word_layer).unwrap();
    let e = emb.dims()[1];
    let image: Tensor<1> = Tensor::from_data(TensorData::new(vec![1.0 / (e as f32).sqrt(); e], [e]), &emb.device());
    time("words: closed form, one prompt", &mut || {
        let _ = token_relevance(tower, &traces[0], &image).unwrap().into_data();
    });
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let pixels = vec![0.1f32; 3 * size * size];
    let trace = engine.trace(pixels, InputSize::square(size), &request).unwrap();
    let mut n = 0;
    time("explain, one new prompt (text, map, presence, words)", &mut || {
        n += 1;
        let p = engine.prepare(&[format!("a photo of a red circle {n}")], None).unwrap();
        let _ = pollster::block_on(engine.explain(&trace, &p, Method::LeGrad, &options)).unwrap();
    });
    time("explain, the same prompt (text cached)", &mut || {
        let _ = pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options)).unwrap();
    });
}

fn main() {
    let device = Device::flex();
    for (d_out, d_in) in [(2048, 512), (512, 2048)] {
        let w: Vec<f32> = (0..d_out * d_in).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let m =
            legrad::model::int_linear::IntMatrix::new(&w, d_in, d_out, ComputePolicy::for_device(&device).int_kernel);
        let dy = vec![0.01f32; d_out];
        time(&format!("IntMatrix::backward, one row, {d_out} -> {d_in}"), &mut || {
            let _ = m.backward(&dy, 1);
        });
    }
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let (clip, info) =
        legrad::load::load_path(&root.join("www/models/default.safetensors"), None, &device).expect("default model");
    let size = clip.config.vision.image_size;
    report("default model", &Engine::new(clip, info).unwrap(), size);
    let config = ClipConfig::preset("ViT-B-16").expect("preset");
    let prepared = legrad::load::Prepared {
        map: legrad::weights::random::random_openclip(&config, 0),
        config,
        source_format: "random".into(),
        notes: vec![],
        tokenizer: None,
    };
    let policy = ComputePolicy::for_device(&device).with_int_linear(Int16Products::LargeLayers);
    let (clip, info) = prepared.build_with(&device, &policy).expect("model");
    report("random ViT-B/16, large layers on the integer grid", &Engine::new(clip, info).unwrap(), 224);
}
