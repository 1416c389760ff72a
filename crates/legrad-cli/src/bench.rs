//! `legrad bench`: the steps a user waits for, each timed with the kernel launches and pipeline
//! compilations it caused (on wgpu; counts that transfer from a software adapter to a real GPU).
//! First call (a fresh process: what compiles) and steady state (median of `--runs`). Prints
//! numbers, asserts nothing.

use std::time::Instant;

use clap::Args;
use legrad::ImageTrace;
use legrad::LegradError;
use legrad::device_stats::{self, Counts};
use legrad::engine::{DEFAULT_TEMPLATE, Engine};
use legrad::explain::{ExplainOptions, Method};
use legrad::preprocess::InputSize;
use serde_json::{Value, json};

use crate::{BackendChoice, ModelArgs, load_engine};

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
    /// Timed runs per step after the first call.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Worker threads for the CPU backend (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Also explain 1 to N new prompts once each, after the steady state, and count what
    /// compiles for each count (what typing one more line costs).
    #[arg(long, default_value_t = 8)]
    prompt_counts: usize,
    /// Skip the warm-up the app runs at model load (on a GPU: compiling every prompt count's
    /// kernels), to see what a cold process compiles on each step.
    #[arg(long)]
    no_warm_up: bool,
    /// Time every kernel of one new-prompt explanation, after the steady state, and print the
    /// slowest (each launch then waits for its kernel: where time goes, not how long it takes).
    #[arg(long)]
    profile: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 }
}

/// Peak resident memory of this process (Linux), in bytes.
pub(crate) fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One run of a step: seconds, and what it launched and compiled.
#[derive(Clone, Copy)]
struct Sample {
    secs: f64,
    counts: Counts,
}

/// A step's first call and its later runs.
#[derive(Default)]
struct Step {
    samples: Vec<Sample>,
}

impl Step {
    fn first(&self) -> Option<Sample> {
        self.samples.first().copied()
    }

    fn steady(&self) -> Vec<Sample> {
        self.samples.iter().skip(1).copied().collect()
    }

    fn steady_secs(&self) -> f64 {
        median(self.steady().iter().map(|s| s.secs).collect())
    }

    /// Counts of the steady runs: the median launches, the most compilations of any run.
    fn steady_counts(&self) -> Counts {
        let steady = self.steady();
        Counts {
            launches: median(steady.iter().map(|s| s.counts.launches as f64).collect()) as usize,
            compilations: steady.iter().map(|s| s.counts.compilations).try_fold(0, |m, c| c.map(|c| c.max(m))),
        }
    }

    fn json(&self) -> Value {
        let first = self.first();
        let steady = self.steady_counts();
        json!({
            "first_s": first.map(|f| f.secs),
            "first_launches": first.map(|f| f.counts.launches),
            "first_compilations": first.and_then(|f| f.counts.compilations),
            "steady_s": self.steady_secs(),
            "steady_launches": steady.launches,
            "steady_compilations": steady.compilations,
        })
    }
}

/// Run `f`, wait for the device, and count.
fn measure<T>(engine: &Engine, f: impl FnOnce() -> Result<T, LegradError>) -> Result<(T, Sample), LegradError> {
    let device = engine.device();
    let before = device_stats::counts();
    let t = Instant::now();
    let out = f()?;
    device.sync().map_err(|e| LegradError::Backend(format!("{e:?}")))?;
    let secs = t.elapsed().as_secs_f64();
    device_stats::settle();
    Ok((out, Sample { secs, counts: device_stats::counts().since(before) }))
}

pub fn run(args: BenchArgs) -> Result<(), LegradError> {
    if let Some(t) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build_global()
            .map_err(|e| LegradError::Input(format!("--threads: {e}")))?;
    }
    if args.runs == 0 {
        return Err(LegradError::Input("--runs must be at least 1".into()));
    }
    if args.profile {
        device_stats::enable_profile();
    }
    let counting = matches!(args.model.backend, BackendChoice::Wgpu) && device_stats::install();
    let t0 = Instant::now();
    let engine = load_engine(&args.model)?;
    let load_s = t0.elapsed().as_secs_f64();
    let device = engine.device();
    device.sync().map_err(|e| LegradError::Backend(format!("{e:?}")))?;
    // The model at rest: weights uploaded (quantized weights stay packed), nothing computed yet.
    let gpu_at_rest = device.memory_pool_usage().map(|u| u.bytes_in_use);
    let size = args.size;
    let options = ExplainOptions { layer_index: args.layer_index };
    let request = engine.request_for(&[Method::LeGrad], &options)?;
    // Deterministic pixels: timings do not depend on content.
    let pixels: Vec<f32> =
        (0..3 * size.width * size.height).map(|i| ((i * 2_654_435_761usize) % 1000) as f32 / 500.0 - 1.0).collect();
    let words = ["cat", "dog", "remote control", "red circle", "tree", "car", "person", "sky", "boat", "lamp"];
    let batch = |round: usize, count: usize| -> Vec<String> {
        (0..count).map(|i| format!("{} {round} {i}", words[(i + round) % words.len()])).collect()
    };
    let explain = |trace: &ImageTrace, prompts: &[String]| -> Result<usize, LegradError> {
        let prepared = engine.prepare(prompts, Some(DEFAULT_TEMPLATE))?;
        Ok(pollster::block_on(engine.explain(trace, &prepared, Method::LeGrad, &options))?.len())
    };

    // What the app does at model load (and, on a GPU, after each new image size).
    let mut warm_s = Step::default();
    if !args.no_warm_up {
        let (_, s) = measure(&engine, || pollster::block_on(engine.warm_up(size, &options, None)))?;
        warm_s.samples.push(s);
    }
    let (mut trace_s, mut text_s, mut cached_s, mut new_s) =
        (Step::default(), Step::default(), Step::default(), Step::default());
    let mut trace = None;
    for r in 0..=args.runs {
        // A new image: the traced forward, read back as the app reads it.
        let (tr, s) = measure(&engine, || {
            let tr = engine.trace(pixels.clone(), size, &request)?;
            pollster::block_on(legrad::engine::read_f32(tr.embedding.clone()))?;
            Ok(tr)
        })?;
        trace_s.samples.push(s);
        let tr = trace.insert(tr);
        // Text encoding alone, on prompts not seen before.
        let fresh = engine.prepare(&batch(r, args.prompts), Some(DEFAULT_TEMPLATE))?;
        let (_, s) = measure(&engine, || pollster::block_on(engine.embed_texts(&fresh)))?;
        text_s.samples.push(s);
        // The same prompts again: text embeddings cached, as the reference's
        // compute_legrad_clip(text_embedding, image=None), which takes embeddings.
        let (_, s) = measure(&engine, || explain(tr, &batch(r, args.prompts)))?;
        cached_s.samples.push(s);
        // New prompts: text encoding plus explanation, as when the user types.
        let (_, s) = measure(&engine, || explain(tr, &batch(r + 10_000, args.prompts)))?;
        new_s.samples.push(s);
    }
    let trace = trace.ok_or_else(|| LegradError::Input("no trace".into()))?;
    // Each prompt count once, on new prompts: what compiles when the user adds a line.
    let mut per_count = Vec::new();
    for count in 1..=args.prompt_counts {
        let (_, s) = measure(&engine, || explain(&trace, &batch(20_000 + count, count)))?;
        per_count.push(json!({ "prompts": count, "s": s.secs, "launches": s.counts.launches, "compilations": s.counts.compilations }));
    }
    // Kernel times: one new prompt (text encoding and explanation), then the same prompts
    // again (text embeddings cached: the explanation alone, what the app's GPU path runs when
    // the text tower is on the CPU).
    let mut profiles = Vec::new();
    if args.profile && counting {
        for what in ["one new prompt", "the same prompt again (text cached)"] {
            device_stats::take_profile();
            measure(&engine, || explain(&trace, &batch(30_000, args.prompts)))?;
            profiles.push((what, device_stats::take_profile()));
        }
    }
    // During an explanation: the pools keep what the trace and the explanations needed.
    let gpu = device.memory_pool_usage().map(|u| u.bytes_reserved);
    let rss = peak_rss();
    let c = &engine.model.config;
    let result = json!({
        "model": args.model.label(),
        "vision": format!("width {} layers {} patch {}", c.vision.width, c.vision.layers, c.vision.patch_size),
        "backend": format!("{:?}", args.model.backend),
        "image_products": engine.model.vision.weights.blocks.first().map(|b| b.mlp.c_fc.products()),
        "threads": args.threads.unwrap_or_else(rayon::current_num_threads),
        "size": size.to_string(),
        "prompts": args.prompts,
        "layer_index": args.layer_index,
        "runs": args.runs,
        "load_s": load_s,
        "counting": counting,
        "image_forward_with_trace_s": trace_s.steady_secs(),
        "explain_cached_text_s": cached_s.steady_secs(),
        "explain_new_prompts_s": new_s.steady_secs(),
        "text_encode_s": text_s.steady_secs(),
        "steps": {
            "warm_up": warm_s.json(),
            "image_trace": trace_s.json(),
            "text_encoding": text_s.json(),
            "explain_cached_text": cached_s.json(),
            "explain_new_prompts": new_s.json(),
        },
        "prompt_counts": per_count,
        "peak_rss_bytes": rss,
        "device_memory_at_rest_bytes": gpu_at_rest,
        "device_memory_reserved_bytes": gpu,
    });
    if args.json {
        println!("{result}");
        return Ok(());
    }
    println!(
        "model {} ({}), backend {} ({} image products), {} threads, size {}, {} prompt(s), layer_index {}, first call then median of {} runs",
        result["model"].as_str().unwrap_or(""),
        result["vision"].as_str().unwrap_or(""),
        result["backend"].as_str().unwrap_or(""),
        result["image_products"].as_str().unwrap_or("-"),
        result["threads"],
        size,
        args.prompts,
        args.layer_index,
        args.runs
    );
    let count = |c: Option<usize>| c.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
    println!(
        "  {:<32} {:>10} {:>9} {:>9}   {:>10} {:>9} {:>9}",
        "step", "first ms", "launches", "compiled", "steady ms", "launches", "compiled"
    );
    for (name, step) in [
        ("warm-up (at load)", &warm_s),
        ("image forward with trace", &trace_s),
        ("text encoding", &text_s),
        ("explain, cached trace + text", &cached_s),
        ("explain, new prompt(s)", &new_s),
    ] {
        let Some(first) = step.first() else { continue };
        let steady = step.steady_counts();
        let has_steady = step.samples.len() > 1;
        let shown = |v: String| if counting { v } else { "-".into() };
        let (sms, sl, sc) = if has_steady {
            (
                format!("{:.1}", step.steady_secs() * 1e3),
                shown(steady.launches.to_string()),
                shown(count(steady.compilations)),
            )
        } else {
            ("-".into(), "-".into(), "-".into())
        };
        println!(
            "  {:<32} {:>10.1} {:>9} {:>9}   {:>10} {:>9} {:>9}",
            name,
            first.secs * 1e3,
            shown(first.counts.launches.to_string()),
            shown(count(first.counts.compilations)),
            sms,
            sl,
            sc,
        );
    }
    if counting && !per_count.is_empty() {
        let line: Vec<String> = per_count
            .iter()
            .map(|v| {
                format!(
                    "{}: {} ms, {} compiled",
                    v["prompts"],
                    (v["s"].as_f64().unwrap_or(f64::NAN) * 1e3).round(),
                    count(v["compilations"].as_u64().map(|c| c as usize))
                )
            })
            .collect();
        println!("  new prompts by count (once each)  {}", line.join("; "));
    }
    for (what, profile) in &profiles {
        let total: f64 = profile.iter().map(|p| p.2).sum();
        println!("  kernel times, {what} (each waited for; {:.1} ms in all):", total * 1e3);
        for (name, n, t) in profile.iter().take(15) {
            println!("    {:>8.2} ms {:>5} x {name}", t * 1e3, n);
        }
    }
    if let Some(r) = rss {
        println!("  peak RSS                      {:10.1} MiB", r as f64 / (1 << 20) as f64);
    }
    if let Some(g) = gpu_at_rest {
        println!("  device memory, model at rest  {:10.1} MiB", g as f64 / (1 << 20) as f64);
    }
    if let Some(g) = gpu {
        println!("  device memory, peak reserved  {:10.1} MiB", g as f64 / (1 << 20) as f64);
    }
    Ok(())
}
