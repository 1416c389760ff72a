//! The shipped default model (www/models/default.safetensors, the app's model file, 8-bit):
//! it loads through the same path as any checkpoint and knows its synthetic scenes.

use burn::tensor::Device;
use legrad::eval::{localization, zero_shot};
use legrad::explain::{ExplainOptions, Method};
use legrad::{Engine, format};

fn path() -> std::path::PathBuf {
    std::path::PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test"))
        .join("../../www/models/default.safetensors")
}

#[test]
fn default_model_is_small_and_self_describing() {
    let bytes = std::fs::read(path()).expect("www/models/default.safetensors");
    assert!(bytes.len() <= 20_000_000, "the shipped model is {} bytes (at most 20 MB)", bytes.len());
    let header = format::verify(&bytes).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert!(
        String::from_utf8_lossy(&bytes[8..8 + n]).contains(format::CHECKSUM_KEY),
        "the shipped model carries no checksum"
    );
    assert_eq!(header.quant, format::Quant::Q8);
    assert_eq!(header.config.vision.image_size, 224);
}

#[test]
fn default_model_knows_colours_and_shapes_and_points_at_them() {
    let (clip, info) = legrad::load::load_path(&path(), None, &Device::flex()).unwrap();
    let engine = Engine::new(clip, info).unwrap();
    // Held-out scenes (the model was trained on stream 0); the recorded run in BENCHMARKS.md
    // uses 500 scenes, this check 60 and 30. The shipped model scores 100% and 86.7% here
    // (chance: 2.8% for 36 names; about 5% for the pointing game, the targets' share of the
    // image): the bars sit a few points below, to catch a broken model or loader, not noise.
    let zs = pollster::block_on(zero_shot(&engine, 1, 60, 224)).unwrap();
    assert!(zs >= 0.95, "zero-shot top-1 {zs} on 60 single-object scenes");
    let pg = pollster::block_on(localization(&engine, Method::LeGrad, &ExplainOptions::default(), 1, 30, 224)).unwrap();
    assert!(pg.pointing >= 0.80, "LeGrad pointing game {} on 30 scenes", pg.pointing);
}
