//! Masks, presence and the prompt's words (issue 29): the words' closed form against its autodiff
//! twin (CLIP and SigLIP fixture models, f32 and integer text towers), word spans, and what the
//! engine returns with each map.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use legrad::compute::Int16Products;
use legrad::engine::DEFAULT_TEMPLATE;
use legrad::explain::words::{token_relevance, token_relevance_autodiff};
use legrad::explain::{ExplainOptions, Method};
use legrad::load::{ConfigSource, prepare_path};
use legrad::{Engine, InputSize};

fn siglip() -> Engine {
    let dir = fixtures().join("siglip");
    let config = ConfigSource::from_json(std::fs::read_to_string(dir.join("tiny-siglip-p16.json")).unwrap());
    let mut p = prepare_path(&dir.join("tiny-siglip-p16.safetensors"), Some(config)).unwrap();
    p.tokenizer = Some(std::fs::read_to_string(dir.join("tokenizer/tokenizer.json")).unwrap());
    build_cpu(p, Int16Products::Never)
}

/// A unit image embedding, not a random text's: the score has a gradient in every direction.
fn image_embedding(e: usize, device: &Device) -> Tensor<1> {
    let v: Vec<f32> = (0..e).map(|i| ((i * 37 % 23) as f32 - 11.0) / 11.0).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    Tensor::from_data(TensorData::new(v.iter().map(|x| x / n).collect::<Vec<_>>(), [e]), device)
}

/// The closed form's token relevance against the autodiff twin's for `prompt`, from text layer
/// `first`: the largest difference relative to the largest value.
fn twin_gap(engine: &Engine, prompt: &str, first: usize) -> f32 {
    let text = &engine.model.text;
    let prepared = engine.prepare(&[prompt.to_string()], Some(DEFAULT_TEMPLATE)).unwrap();
    let ids = &prepared[0].tokens.ids;
    let (_, traces) = text.encode_traced(std::slice::from_ref(ids), 0, first).unwrap();
    let device = engine.text_device();
    let image = image_embedding(engine.model.config.embed_dim, &device);
    let closed = token_relevance(text, &traces[0], &image).unwrap();
    let (inputs, mask, pool) = text.block_inputs(ids).unwrap();
    let auto = token_relevance_autodiff(text, first, &inputs[first..], mask, pool, &image).unwrap();
    let a: Vec<f32> = closed.into_data().try_to_vec::<f32>().unwrap();
    let b: Vec<f32> = auto.into_data().try_to_vec::<f32>().unwrap();
    assert_eq!(a.len(), b.len(), "{prompt}: token counts differ");
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0 && scale.is_finite(), "{prompt}: the twin's relevance is {scale}");
    let diff = legrad::testing::max_abs_diff(&a, &b);
    // Panics on NaN on either side (not comparable).
    diff / scale
}

#[test]
fn words_closed_form_agrees_with_autodiff() {
    for (name, engine) in [("CLIP f32", tiny_b16_cpu(Int16Products::Never)), ("SigLIP", siglip())] {
        let depth = engine.model.text.weights.blocks.len();
        for first in [0, depth - 1] {
            for prompt in ["red circle", "a remote control on the sofa"] {
                let gap = twin_gap(&engine, prompt, first);
                eprintln!("{name}, from layer {first}, {prompt:?}: {gap:.2e} of the largest");
                assert!(gap < 1e-4, "{name} {prompt}: {gap}");
            }
        }
    }
    // The integer text tower's backward products (over the stored weights) against autodiff
    // through its dequantized weights: the same weights, f32 sums.
    let engine = tiny_b16_cpu(Int16Products::Always);
    assert!(matches!(engine.model.text.weights.blocks[0].mlp.c_fc, legrad::model::Dense::Integer(_)));
    let gap = twin_gap(&engine, "red circle", 0);
    eprintln!("CLIP integer text tower: {gap:.2e}");
    assert!(gap < 1e-3, "integer: {gap}");
}

#[test]
fn word_spans_follow_the_prompt() {
    let engine = tiny_b16_cpu(Int16Products::Never);
    let p = engine.prepare(&["Red  qwxzvk".to_string()], Some(DEFAULT_TEMPLATE)).unwrap();
    let spans = &p[0].words;
    assert_eq!(spans.len(), 2);
    assert_eq!(spans[0].0, "Red");
    // "a photo of a red qwxzvk.": start, a, photo, of, a, then the prompt.
    assert_eq!(spans[0].1, 5..6);
    assert!(spans[1].1.start == 6 && spans[1].1.len() >= 2, "{spans:?}");
    // No template: right after the start token.
    let p = engine.prepare(&["cat".to_string()], None).unwrap();
    assert_eq!(p[0].words, vec![("cat".to_string(), 1..2)]);
    // A template glued to the prompt ("photograph dog" is not "photo" + "graph"): one span for
    // the whole prompt.
    let p = engine.prepare(&["graph dog".to_string()], Some("photo{}")).unwrap();
    assert_eq!(p[0].words.len(), 1, "{:?}", p[0].words);
}

#[test]
fn every_map_comes_with_presence_and_words() {
    let engine = tiny_b16_cpu(Int16Products::Never);
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let size = engine.model.config.vision.image_size;
    let pixels = legrad::testing::values(3 * size * size, 3, -1.0, 1.0);
    let trace = engine.trace(pixels, InputSize::square(size), &request).unwrap();
    let prompts = engine.prepare(&["red circle".into(), "a dog".into()], Some(DEFAULT_TEMPLATE)).unwrap();
    let out = pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options)).unwrap();
    let words = pollster::block_on(engine.words(&trace, &prompts, &options)).unwrap();
    for (r, ws) in out.iter().zip(&words) {
        assert!((0.0..=1.0).contains(&r.presence), "{}: presence {}", r.prompt, r.presence);
        let names: Vec<&str> = ws.iter().map(|w| w.word.as_str()).collect();
        assert_eq!(names, r.prompt.split_whitespace().collect::<Vec<_>>());
        assert!(ws.iter().all(|w| w.relevance.is_finite() && w.relevance >= 0.0), "{ws:?}");
        assert!(ws.iter().any(|w| w.relevance > 0.0), "{ws:?}");
    }
    // Kept with the trace: asked again, alone or beside another prompt, the same words.
    let again = pollster::block_on(engine.words(&trace, &prompts[1..], &options)).unwrap();
    assert_eq!(again[0], words[1]);
    let other = engine.prepare(&["a blue square".into()], Some(DEFAULT_TEMPLATE)).unwrap();
    let both = [other[0].clone(), prompts[0].clone()];
    let mixed = pollster::block_on(engine.words(&trace, &both, &options)).unwrap();
    assert_eq!(mixed[1], words[0]);
    assert_eq!(mixed[0].len(), 3);
    // The engine's words are the twin's token relevance summed over each word's tokens.
    let text = &engine.model.text;
    let first = engine.word_layer(options.layer_index).unwrap();
    let (inputs, mask, pool) = text.block_inputs(&prompts[0].tokens.ids).unwrap();
    let auto = token_relevance_autodiff(text, first, &inputs[first..], mask, pool, &trace.embedding).unwrap();
    let auto: Vec<f32> = auto.into_data().try_to_vec::<f32>().unwrap();
    for (w, (_, span)) in words[0].iter().zip(&prompts[0].words) {
        let want: f32 = auto[span.clone()].iter().sum();
        assert!((w.relevance - want).abs() <= 1e-4 * want.abs().max(1e-3), "{}: {} vs {want}", w.word, w.relevance);
    }
    // Presence is the family's rule on the shown score.
    assert_eq!(out[0].presence, legrad::presence::clip_cosine_to_presence(out[0].score));
    // The engine kept where the time went (the page's split of a prompt), and reading it
    // starts the count again.
    let steps = engine.take_steps();
    assert!(steps.text_ms > 0.0 && steps.maps_ms > 0.0 && steps.words_ms > 0.0, "{steps:?}");
    assert_eq!(engine.take_steps(), legrad::engine::ExplainSteps::default());
}

#[test]
fn siglip_presence_is_its_probability() {
    let engine = siglip();
    let options = ExplainOptions::default();
    let request = engine.request_for(&[Method::LeGrad], &options).unwrap();
    let pixels = legrad::testing::values(3 * 64 * 64, 5, -1.0, 1.0);
    let trace = engine.trace(pixels, InputSize::square(64), &request).unwrap();
    let prompts = engine.prepare(&["a red circle".into()], Some(DEFAULT_TEMPLATE)).unwrap();
    let out = pollster::block_on(engine.explain(&trace, &prompts, Method::LeGrad, &options)).unwrap();
    assert_eq!(out[0].presence, out[0].score);
    let words = pollster::block_on(engine.words(&trace, &prompts, &options)).unwrap();
    assert_eq!(words[0].len(), 3);
    assert!(words[0].iter().all(|w| w.relevance.is_finite()));
}
