//! `legrad convert` (any checkpoint → the app's model file) and `legrad fidelity` (what
//! quantization costs the maps and embeddings).

use std::path::PathBuf;

use clap::Args;
use legrad::engine::{DEFAULT_TEMPLATE, Engine};
use legrad::eval::{localization, scene_pixels, zero_shot};
use legrad::explain::{ExplainOptions, Method};
use legrad::format::{self, Quant};
use legrad::preprocess::InputSize;
use legrad::{LegradError, scenes};

use crate::{ModelArgs, config_source, load_engine};

#[derive(Args)]
pub struct ConvertArgs {
    /// Checkpoint (any format `explain` loads), or random:<preset>[:seed].
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    config: Option<String>,
    /// The model's tokenizer.json (SigLIP; found next to the weights when it is there), kept in
    /// the model file.
    #[arg(long)]
    tokenizer: Option<PathBuf>,
    /// f32, f16, q8 (8-bit blocks) or q4 (4-bit blocks).
    #[arg(long, default_value = "q8")]
    quant: Quant,
    /// `app`: the app's model file (config included); `openclip`: a plain f32 safetensors state
    /// dict with open_clip's names, as open_clip itself loads.
    #[arg(long, default_value = "app")]
    format: OutputFormat,
    /// Quantize with GPTQ, calibrated on this many synthetic scenes and their captions, instead
    /// of rounding each weight (default: 32 for q4, 0 = rounding for q8).
    #[arg(long)]
    calibrate: Option<u64>,
    #[arg(long)]
    out: PathBuf,
}

#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum OutputFormat {
    App,
    Openclip,
}

/// A random model from a preset name or an open_clip JSON config file: `random:<name or
/// path>[:seed]`.
pub fn random_model(
    spec: &str,
    config: Option<&legrad::load::ConfigSource>,
) -> Result<legrad::load::Prepared, LegradError> {
    let (name, seed) = match spec.rsplit_once(':') {
        Some((n, s)) if s.chars().all(|c| c.is_ascii_digit()) => (n, s),
        _ => (spec, "0"),
    };
    let cfg = match config {
        Some(c) => c.parse()?,
        None if name.ends_with(".json") => legrad::ClipConfig::from_openclip_json(
            &std::fs::read_to_string(name).map_err(|e| LegradError::Io { path: name.into(), source: e })?,
        )?,
        None => {
            legrad::ClipConfig::preset(name).ok_or_else(|| LegradError::Config(format!("no preset named '{name}'")))?
        }
    };
    let seed = seed.parse().map_err(|_| LegradError::Input(format!("bad seed in '{spec}'")))?;
    Ok(legrad::load::Prepared {
        map: legrad::weights::random::random_openclip(&cfg, seed),
        config: cfg,
        source_format: "random".into(),
        notes: vec![],
        tokenizer: None,
    })
}

pub fn convert(args: ConvertArgs) -> Result<(), LegradError> {
    let quantized = matches!(args.quant, Quant::Q4 | Quant::Q8) && matches!(args.format, OutputFormat::App);
    if let Some(n) = args.calibrate.filter(|&n| n > 0 && !quantized) {
        return Err(LegradError::Input(format!(
            "--calibrate {n} calibrates 8- or 4-bit quantization of the app's format; it does nothing for --quant {} --format {}",
            format!("{:?}", args.quant).to_lowercase(),
            format!("{:?}", args.format).to_lowercase()
        )));
    }
    let config = config_source(&args.config)?;
    let model = args.model.to_string_lossy().to_string();
    let prepared = if let Some(spec) = model.strip_prefix("random:") {
        random_model(spec, config.as_ref())?
    } else {
        legrad::load::prepare_path(&args.model, config)?
    };
    let mut prepared = prepared;
    if let Some(t) = crate::tokenizer_file(&args.tokenizer)? {
        prepared.tokenizer = Some(t);
    }
    for n in &prepared.notes {
        eprintln!("note: {n}");
    }
    let calibrate = args.calibrate.unwrap_or(if matches!(args.quant, Quant::Q4) { 32 } else { 0 });
    let hessians = if calibrate > 0 && quantized {
        let (clip, info) = legrad::load::from_tensor_map(
            prepared.map.clone(),
            Some(&legrad::load::ConfigSource::Config(prepared.config.clone())),
            &crate::device(crate::BackendChoice::Cpu),
        )?;
        let clip = clip.with_tokenizer(prepared.tokenizer.as_deref().map(std::sync::Arc::from));
        let engine = Engine::new(clip, info)?;
        // A line per stage on stderr (a progress-bar crate would change the features of a
        // dependency burn shares, and rebuild burn, for one loop).
        pollster::block_on(legrad::calibrate::hessians(&engine, calibrate, &mut |what, done, total| {
            if done == total {
                eprintln!("calibrating (GPTQ): {what} {done}/{total}");
            }
        }))?
    } else {
        Default::default()
    };
    let source = format!("{} ({})", model, prepared.source_format);
    let bytes = match args.format {
        OutputFormat::App => format::write_calibrated(
            &prepared.map,
            &prepared.config,
            prepared.tokenizer.as_deref(),
            args.quant,
            &source,
            &hessians,
            &mut |_, _| {},
        )?,
        OutputFormat::Openclip => format::write_plain(&prepared.map)?,
    };
    std::fs::write(&args.out, &bytes).map_err(|e| LegradError::io_path(&args.out, e))?;
    println!("wrote {} ({:.1} MB, {:?})", args.out.display(), bytes.len() as f64 / 1e6, args.quant);
    Ok(())
}

#[derive(Args)]
pub struct FidelityArgs {
    /// The f32 model to compare with.
    #[arg(long)]
    reference: PathBuf,
    #[arg(long)]
    config: Option<String>,
    /// The converted model file.
    #[arg(long)]
    candidate: PathBuf,
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Synthetic scenes compared (each with 2 to 4 prompts).
    #[arg(long, default_value_t = 16)]
    images: u64,
    /// Also compare zero-shot accuracy and the pointing game on this many scenes (for models
    /// that know the synthetic scenes, like the default model; 0 skips).
    #[arg(long, default_value_t = 0)]
    scenes: u64,
    #[arg(long)]
    json: bool,
}

fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len() as f64;
    let ma = a.iter().map(|&v| v as f64).sum::<f64>() / n;
    let mb = b.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (dx, dy) = (x as f64 - ma, y as f64 - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    if saa == 0.0 || sbb == 0.0 { 1.0 } else { sab / (saa * sbb).sqrt() }
}

/// IoU of the pixels in each map's top 10%.
fn top10_overlap(a: &[f32], b: &[f32]) -> f64 {
    let top = |m: &[f32]| -> Vec<bool> {
        let mut s = m.to_vec();
        s.sort_by(|x, y| y.total_cmp(x));
        let t = s[(m.len() / 10).max(1) - 1];
        m.iter().map(|&v| v >= t).collect()
    };
    let (ta, tb) = (top(a), top(b));
    let inter = ta.iter().zip(&tb).filter(|(x, y)| **x && **y).count();
    let union = ta.iter().zip(&tb).filter(|(x, y)| **x || **y).count();
    inter as f64 / union.max(1) as f64
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

struct Side {
    maps: Vec<Vec<f32>>,
    images: Vec<Vec<f32>>,
    texts: Vec<f32>,
}

fn run_side(engine: &Engine, args: &FidelityArgs) -> Result<Side, LegradError> {
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options)?;
    let (mut maps, mut images) = (Vec::new(), Vec::new());
    let mut all_prompts = Vec::new();
    for i in 0..args.images {
        let scene = scenes::generate(7, i, args.size, Some(2 + (i % 3) as usize));
        let names: Vec<String> = scene.objects.iter().map(|o| scenes::object_name(o.color, o.shape)).collect();
        let prompts = engine.prepare(&names, Some(DEFAULT_TEMPLATE))?;
        let trace = engine.trace(scene_pixels(&scene), InputSize::square(args.size), &request)?;
        images.push(pollster::block_on(legrad::engine::read_f32(trace.embedding.clone()))?);
        for r in pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options))? {
            maps.push(r.map.map);
        }
        all_prompts.extend(prompts);
    }
    let texts = pollster::block_on(engine.embed_texts(&all_prompts))?;
    Ok(Side { maps, images, texts })
}

pub fn fidelity(args: FidelityArgs) -> Result<(), LegradError> {
    let reference = load_engine(&ModelArgs::cpu(args.reference.clone(), args.config.clone()))?;
    let candidate = load_engine(&ModelArgs::cpu(args.candidate.clone(), None))?;
    let a = run_side(&reference, &args)?;
    let b = run_side(&candidate, &args)?;
    let corr: Vec<f64> = a.maps.iter().zip(&b.maps).map(|(x, y)| pearson(x, y)).collect();
    let overlap: Vec<f64> = a.maps.iter().zip(&b.maps).map(|(x, y)| top10_overlap(x, y)).collect();
    let img_cos: Vec<f64> = a.images.iter().zip(&b.images).map(|(x, y)| cosine(x, y)).collect();
    let e = reference.model.config.embed_dim;
    let txt_cos: Vec<f64> = a.texts.chunks(e).zip(b.texts.chunks(e)).map(|(x, y)| cosine(x, y)).collect();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let min = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    let mut task = None;
    if args.scenes > 0 {
        let options = ExplainOptions::default();
        let zs_a = pollster::block_on(zero_shot(&reference, 1, args.scenes, args.size))?;
        let zs_b = pollster::block_on(zero_shot(&candidate, 1, args.scenes, args.size))?;
        let pg_a =
            pollster::block_on(localization(&reference, Method::LeGrad, &options, 1, args.scenes, args.size))?.pointing;
        let pg_b =
            pollster::block_on(localization(&candidate, Method::LeGrad, &options, 1, args.scenes, args.size))?.pointing;
        task = Some((zs_a, zs_b, pg_a, pg_b));
    }
    let size = std::fs::metadata(&args.candidate).map(|m| m.len()).unwrap_or(0);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "candidate": args.candidate.display().to_string(), "candidate_bytes": size, "size": args.size, "maps": corr.len(),
                "map_pearson_mean": mean(&corr), "map_pearson_min": min(&corr),
                "top10_overlap_mean": mean(&overlap), "image_cosine_min": min(&img_cos), "text_cosine_min": min(&txt_cos),
                "zero_shot": task.map(|t| [t.0, t.1]), "pointing_game": task.map(|t| [t.2, t.3]),
            })
        );
    } else {
        println!(
            "candidate {} ({:.1} MB) vs {} at {} px, {} maps",
            args.candidate.display(),
            size as f64 / 1e6,
            args.reference.display(),
            args.size,
            corr.len()
        );
        println!("  LeGrad maps Pearson r       mean {:.5}  min {:.5}", mean(&corr), min(&corr));
        println!("  top-10% region overlap      mean {:.4}  min {:.4}", mean(&overlap), min(&overlap));
        println!("  image embedding cosine      min {:.6}", min(&img_cos));
        println!("  text embedding cosine       min {:.6}", min(&txt_cos));
        if let Some((za, zb, pa, pb)) = task {
            println!("  zero-shot top-1             reference {:.1}%  candidate {:.1}%", 100.0 * za, 100.0 * zb);
            println!("  pointing game (LeGrad)      reference {:.1}%  candidate {:.1}%", 100.0 * pa, 100.0 * pb);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrate_without_quantization_is_an_error() {
        let args = |quant, format, calibrate| ConvertArgs {
            model: "/nonexistent.safetensors".into(),
            config: None,
            tokenizer: None,
            quant,
            format,
            calibrate,
            out: "/nonexistent-out".into(),
        };
        for (quant, format) in
            [(Quant::F32, OutputFormat::App), (Quant::F16, OutputFormat::App), (Quant::Q8, OutputFormat::Openclip)]
        {
            match convert(args(quant, format, Some(16))) {
                Err(LegradError::Input(m)) => assert!(m.contains("--calibrate 16"), "{m}"),
                other => panic!("{quant:?} {format:?}: {:?}", other.err()),
            }
        }
        // `--calibrate 0` asks for nothing; the missing file is then the error.
        assert!(
            !matches!(convert(args(Quant::F32, OutputFormat::App, Some(0))), Err(LegradError::Input(m)) if m.contains("--calibrate"))
        );
    }
}
