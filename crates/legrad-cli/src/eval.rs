//! `legrad eval`: localisation on held-out synthetic scenes, per method: pointing game, mIoU of
//! the map binarised at 0.5 (the paper's protocol), time per map; faithfulness (deletion and
//! insertion AUC, positive and negative perturbation, `legrad::eval::faithfulness`);
//! presence (AUROC of each scene's objects against every name not in it,
//! `legrad::eval::presence`); the wrong-word rate of the prompts' word relevance
//! (`legrad::eval::wrong_word`); and zero-shot accuracy.

use clap::Args;
use legrad::LegradError;
use legrad::eval::{faithfulness, localization, presence, wrong_word, zero_shot};
use legrad::explain::{ExplainOptions, Method};
use legrad::scenes;

use crate::{ModelArgs, load_engine};

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Multi-object scenes (2 to 4 objects each; every object is a target).
    #[arg(long, default_value_t = 500)]
    scenes: u64,
    /// Scene stream (the default model was trained on stream 0).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Methods (default: all).
    #[arg(long)]
    method: Vec<Method>,
    /// Input size (scenes are drawn at this size).
    #[arg(long, default_value_t = 224)]
    size: usize,
    #[arg(long, default_value_t = -2, allow_hyphen_values = true)]
    layer_index: i64,
    /// Single-object scenes for the zero-shot check (0 skips it).
    #[arg(long, default_value_t = 500)]
    zero_shot: u64,
    /// Scenes for the faithfulness columns (this many multi-object scenes for deletion and
    /// insertion, as many single-object ones for the perturbation test; 0 skips them).
    #[arg(long, default_value_t = 100)]
    faithfulness: u64,
    /// Scenes for presence and for the wrong-word rate (0 skips them).
    #[arg(long, default_value_t = 500)]
    presence: u64,
    #[arg(long)]
    json: bool,
}

pub fn run(args: EvalArgs) -> Result<(), LegradError> {
    let engine = load_engine(&args.model)?;
    let head = &engine.model.vision.weights.head;
    let methods = if args.method.is_empty() {
        // Every method this model's head runs (SigLIP: LeGrad; the baselines read a class token).
        Method::ALL.into_iter().filter(|m| m.supports(head).is_ok()).collect()
    } else {
        args.method.clone()
    };
    let options = ExplainOptions { layer_index: args.layer_index };
    let mut rows = Vec::new();
    for m in &methods {
        let r = pollster::block_on(localization(&engine, *m, &options, args.seed, args.scenes, args.size))?;
        let f = if args.faithfulness > 0 {
            Some(pollster::block_on(faithfulness(&engine, *m, &options, args.seed, args.faithfulness, args.size))?)
        } else {
            None
        };
        if !args.json {
            eprintln!(
                "{:<13} pointing {:.3}  mIoU {:.3}  {:.1} ms/map  ({} maps){}",
                m.name(),
                r.pointing,
                r.miou,
                r.ms_per_map,
                r.maps,
                f.as_ref()
                    .map(|f| format!(
                        "  deletion {:.4} insertion {:.4} positive {:.3} negative {:.3}",
                        f.deletion_auc, f.insertion_auc, f.positive_auc, f.negative_auc
                    ))
                    .unwrap_or_default()
            );
        }
        rows.push((m, r, f));
    }
    let zs = if args.zero_shot > 0 {
        Some(pollster::block_on(zero_shot(&engine, args.seed, args.zero_shot, args.size))?)
    } else {
        None
    };
    let (pres, words) = if args.presence > 0 {
        (
            Some(pollster::block_on(presence(&engine, args.seed, args.presence, args.size))?),
            Some(pollster::block_on(wrong_word(&engine, args.seed, args.presence, args.size))?),
        )
    } else {
        (None, None)
    };
    if args.json {
        let rows: Vec<_> = rows
            .iter()
            .map(|(m, r, f)| serde_json::json!({"method": m.name(), "pointing_game": r.pointing, "miou": r.miou, "ms_per_map": r.ms_per_map, "maps": r.maps, "faithfulness": f}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"scenes": args.scenes, "seed": args.seed, "size": args.size, "layer_index": args.layer_index, "zero_shot_top1": zs, "presence": pres, "wrong_word": words, "methods": rows})
        );
    } else {
        println!(
            "| method | pointing game | mIoU (map ≥ 0.5) | deletion AUC ↓ | insertion AUC ↑ | positive perturbation ↓ | negative perturbation ↑ | time per map |"
        );
        println!("|---|---|---|---|---|---|---|---|");
        for (m, r, f) in &rows {
            let faith = match f {
                Some(f) => format!(
                    "{:.4} | {:.4} | {:.1}% | {:.1}%",
                    f.deletion_auc,
                    f.insertion_auc,
                    100.0 * f.positive_auc,
                    100.0 * f.negative_auc
                ),
                None => "- | - | - | -".into(),
            };
            println!(
                "| {} | {:.1}% | {:.1}% | {faith} | {:.1} ms |",
                m.name(),
                100.0 * r.pointing,
                100.0 * r.miou,
                r.ms_per_map
            );
        }
        if let Some(f) = rows.iter().find_map(|(_, _, f)| f.as_ref()) {
            println!(
                "\nfaithfulness: deletion/insertion AUC of the prompt's cosine similarity over {} maps ({} multi-object scenes, {} steps); positive/negative perturbation: zero-shot top-1 with 10%..90% of patches removed (most / least relevant first), mean over the steps, {} single-object scenes",
                f.maps,
                args.faithfulness,
                legrad::eval::CURVE_STEPS,
                f.scenes
            );
        }
        if let Some(p) = &pres {
            println!(
                "\npresence: AUROC {:.4} (by the standing among a reference vocabulary's scores instead: {:.4}) over {} present and {} absent prompts ({} scenes: each one's objects against every colour x shape name not in it); called present {:.1}% of present, absent {:.1}% of absent",
                p.auroc,
                p.auroc_vocabulary_standing,
                p.present,
                p.absent,
                args.presence,
                100.0 * p.present_called_present,
                100.0 * p.absent_called_absent
            );
            println!("pointing game and mIoU above are over present prompts only (each scene's own objects)");
        }
        if let Some(w) = &words {
            println!(
                "wrong word: the wrong colour word gets the higher relevance in {:.1}% of {} prompts naming an object in another colour",
                100.0 * w.rate,
                w.prompts
            );
        }
        if let Some(z) = zs {
            println!(
                "\nzero-shot top-1 over {} colour x shape names on {} single-object scenes: {:.1}%",
                scenes::all_names().len(),
                args.zero_shot,
                100.0 * z
            );
        }
    }
    Ok(())
}
