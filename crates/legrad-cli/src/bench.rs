//! `legrad bench`: medians of the steps a user waits for. Prints numbers, asserts nothing.

use std::time::Instant;

use clap::Args;
use legrad::LegradError;
use legrad::explain::{ExplainOptions, Method};
use legrad::preprocess::InputSize;

use crate::{ModelArgs, load_engine};

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Input size, N or WxH.
    #[arg(long, default_value = "448")]
    size: InputSize,
    /// Prompts explained at once.
    #[arg(long, default_value_t = 1)]
    prompts: usize,
    #[arg(long, default_value_t = -2, allow_hyphen_values = true)]
    layer_index: i64,
    /// Timed runs per step (after one warm-up run).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Peak resident memory of this process (Linux), in bytes.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub fn run(args: BenchArgs) -> Result<(), LegradError> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| LegradError::Input(format!("--threads: {e}")))?;
    }
    let t0 = Instant::now();
    let engine = load_engine(&args.model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let device = engine.device();
    let sync = || device.sync().map_err(|e| LegradError::Backend(format!("{e:?}")));
    sync()?;
    // The model at rest: weights uploaded (quantized weights stay packed), nothing computed yet.
    let gpu_at_rest = device.memory_pool_usage().map(|u| u.bytes_in_use);
    let size = args.size;
    let options = ExplainOptions { layer_index: args.layer_index };
    let request = engine.request_for(&[Method::LeGrad], &options)?;
    // Deterministic pixels: timings do not depend on content.
    let pixels: Vec<f32> = (0..3 * size.width * size.height)
        .map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0)
        .collect();
    let words = ["cat", "dog", "remote control", "red circle", "tree", "car", "person", "sky", "boat", "lamp"];
    let batch = |round: usize| -> Vec<String> {
        (0..args.prompts).map(|i| format!("{} {round} {i}", words[(i + round) % words.len()])).collect()
    };

    let mut trace_t = Vec::new();
    let mut trace = None;
    for r in 0..=args.runs {
        let t = Instant::now();
        let tr = engine.trace(pixels.clone(), size, &request)?;
        let _ = pollster::block_on(legrad::engine::read_f32(tr.embedding.clone()))?;
        sync()?;
        if r > 0 {
            trace_t.push(t.elapsed().as_secs_f64());
        }
        trace = Some(tr);
    }
    let trace = trace.ok_or_else(|| LegradError::Input("--runs must be at least 1".into()))?;

    let mut text_t = Vec::new();
    let mut new_prompt_t = Vec::new();
    let mut cached_t = Vec::new();
    for r in 0..=args.runs {
        // New prompts: text encoding plus explanation, as when the user types.
        let prompts = engine.prepare(&batch(r), Some(legrad::engine::DEFAULT_TEMPLATE))?;
        let t = Instant::now();
        let out = pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options))?;
        sync()?;
        let new_s = t.elapsed().as_secs_f64();
        // The same prompts again: text embeddings cached, as the reference's
        // compute_legrad_clip(text_embedding, image=None) which takes embeddings.
        let t = Instant::now();
        let again = pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options))?;
        sync()?;
        let cached_s = t.elapsed().as_secs_f64();
        debug_assert_eq!(out.len(), again.len());
        // Text encoding alone, on prompts not seen before.
        let fresh = engine.prepare(&batch(r + 10_000), Some(legrad::engine::DEFAULT_TEMPLATE))?;
        let t = Instant::now();
        let _ = pollster::block_on(engine.embed_texts(&fresh))?;
        sync()?;
        let text_s = t.elapsed().as_secs_f64();
        if r > 0 {
            new_prompt_t.push(new_s);
            cached_t.push(cached_s);
            text_t.push(text_s);
        }
    }
    // During an explanation: the pools keep what the trace and the explanations needed.
    let gpu = device.memory_pool_usage().map(|u| u.bytes_reserved);
    let rss = peak_rss();
    let c = &engine.model.config;
    let result = serde_json::json!({
        "model": args.model.label(),
        "vision": format!("width {} layers {} patch {}", c.vision.width, c.vision.layers, c.vision.patch_size),
        "backend": format!("{:?}", args.model.backend),
        "threads": args.threads.unwrap_or_else(rayon::current_num_threads),
        "size": size.to_string(),
        "prompts": args.prompts,
        "layer_index": args.layer_index,
        "runs": args.runs,
        "load_s": load_s,
        "image_forward_with_trace_s": median(trace_t),
        "explain_cached_text_s": median(cached_t),
        "explain_new_prompts_s": median(new_prompt_t),
        "text_encode_s": median(text_t),
        "peak_rss_bytes": rss,
        "device_memory_at_rest_bytes": gpu_at_rest,
        "device_memory_reserved_bytes": gpu,
    });
    if args.json {
        println!("{result}");
    } else {
        let ms = |k: &str| result[k].as_f64().unwrap_or(f64::NAN) * 1e3;
        println!("model {} ({}), backend {}, {} threads, size {}, {} prompt(s), layer_index {}, median of {} runs",
            result["model"].as_str().unwrap_or(""), result["vision"].as_str().unwrap_or(""), result["backend"].as_str().unwrap_or(""),
            result["threads"], size, args.prompts, args.layer_index, args.runs);
        println!("  image forward with trace      {:10.1} ms", ms("image_forward_with_trace_s"));
        println!("  explain, cached trace + text  {:10.1} ms", ms("explain_cached_text_s"));
        println!("  explain, new prompt(s)        {:10.1} ms", ms("explain_new_prompts_s"));
        println!("  text encoding                 {:10.1} ms", ms("text_encode_s"));
        if let Some(r) = rss {
            println!("  peak RSS                      {:10.1} MiB", r as f64 / (1 << 20) as f64);
        }
        if let Some(g) = gpu_at_rest {
            println!("  device memory, model at rest  {:10.1} MiB", g as f64 / (1 << 20) as f64);
        }
        if let Some(g) = gpu {
            println!("  device memory, peak reserved  {:10.1} MiB", g as f64 / (1 << 20) as f64);
        }
    }
    Ok(())
}
