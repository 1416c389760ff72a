//! Every bad input gives a typed error with a message that names the problem; none panics.

mod common;

use burn::tensor::Device;
use common::*;
use legrad::engine::{DEFAULT_TEMPLATE, apply_template};
use legrad::explain::{ExplainOptions, Method};
use legrad::load::{ConfigSource, load_bytes, load_path};
use legrad::preprocess::{DecodeLimits, decode};
use legrad::weights::TensorMap;
use legrad::{InputSize, LegradError};

fn cpu() -> Device {
    Device::flex()
}

fn png_chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
    let mut crc = flate2::Crc::new();
    crc.update(kind);
    crc.update(data);
    let mut out = (data.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc.sum().to_be_bytes());
    out
}

/// A few hundred bytes claiming 30000 x 30000 RGB pixels (2.7 GB decoded).
fn png_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&30000u32.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(&vec![0u8; 1 << 20]).unwrap();
    let idat = z.finish().unwrap();
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    png.extend(png_chunk(b"IHDR", &ihdr));
    png.extend(png_chunk(b"IDAT", &idat));
    png.extend(png_chunk(b"IEND", &[]));
    png
}

#[test]
fn bad_images_are_refused_with_clear_errors() {
    let limits = DecodeLimits::default();
    let e = decode(&png_bomb(), &limits).unwrap_err();
    assert!(matches!(e, LegradError::ImageTooLarge { width: 30000, height: 30000, .. }), "{e}");
    assert!(e.to_string().contains("30000x30000"), "{e}");

    let e = decode(b"", &limits).unwrap_err();
    assert!(matches!(e, LegradError::ImageDecode(_)), "{e}");
    let e = decode(b"hello, this is a text file and not an image", &limits).unwrap_err();
    assert!(e.to_string().contains("not an image"), "{e}");

    let good = std::fs::read(fixtures().join("images/scene.png")).unwrap();
    let e = decode(&good[..good.len() / 2], &limits).unwrap_err();
    assert!(matches!(e, LegradError::ImageDecode(_)), "truncated PNG: {e}");
    let mut corrupt = good.clone();
    for b in corrupt.iter_mut().skip(60).step_by(7) {
        *b ^= 0x5a;
    }
    assert!(decode(&corrupt, &limits).is_err(), "corrupt PNG decoded");
    let jpg = std::fs::read(fixtures().join("images/photo.jpg")).unwrap();
    assert!(decode(&jpg[..200], &limits).is_err(), "truncated JPEG decoded");
}

#[test]
fn bad_prompts_and_options_are_refused() {
    assert!(matches!(apply_template(Some(DEFAULT_TEMPLATE), ""), Err(LegradError::EmptyPrompt)));
    assert!(matches!(apply_template(Some(DEFAULT_TEMPLATE), "  \n\t "), Err(LegradError::EmptyPrompt)));
    let e = apply_template(Some("a photo"), "cat").unwrap_err();
    assert!(e.to_string().contains("{}"), "{e}");
    assert_eq!(apply_template(Some(DEFAULT_TEMPLATE), " cat ").unwrap(), "a photo of a cat.");
    assert_eq!(apply_template(None, "cat").unwrap(), "cat");

    let engine = tiny_b16(&cpu());
    assert!(matches!(engine.prepare(&[], Some(DEFAULT_TEMPLATE)), Err(LegradError::EmptyPrompt)));
    let e = engine.request_for(&[Method::LeGrad], &ExplainOptions { layer_index: 3 }).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let e = engine.request_for(&[Method::LeGrad], &ExplainOptions { layer_index: -4 }).unwrap_err();
    assert!(e.to_string().contains("out of range"), "{e}");
    let request = engine.request_for(&[Method::LeGrad], &ExplainOptions::default()).unwrap();
    let e = engine.trace(vec![0.0; 3 * 8 * 8], InputSize::square(8), &request).unwrap_err();
    assert!(e.to_string().contains("smaller than one 16x16 patch"), "{e}");
    let e = engine.trace(vec![0.0; 10], InputSize::square(64), &request).unwrap_err();
    assert!(matches!(e, LegradError::Input(_)), "{e}");
    assert!("0".parse::<InputSize>().is_err());
    assert!("64x".parse::<InputSize>().is_err());
    assert_eq!("96x64".parse::<InputSize>().unwrap(), InputSize { width: 96, height: 64 });
    // A prompt longer than the context is cut, and says so.
    let long = engine.prepare(&["cat ".repeat(100)], Some(DEFAULT_TEMPLATE)).unwrap();
    assert!(long[0].tokens.truncated);
    assert_eq!(long[0].tokens.ids.len(), 77);
}

#[test]
fn bad_model_files_are_refused_with_clear_errors() {
    let device = cpu();
    let weights = std::fs::read(fixtures().join("tiny-vit-b16.safetensors")).unwrap();
    let config = ConfigSource::from_json(std::fs::read_to_string(fixtures().join("tiny-vit-b16.json")).unwrap());

    let e = load_bytes(&weights[..weights.len() / 3], Some(&config), &device).unwrap_err();
    assert!(matches!(e, LegradError::Checkpoint(_)), "truncated: {e}");
    let png = std::fs::read(fixtures().join("images/scene.png")).unwrap();
    let e = load_bytes(&png, None, &device).unwrap_err();
    assert!(e.to_string().contains("not a model file"), "{e}");
    let e = load_bytes(b"", None, &device).unwrap_err();
    assert!(e.to_string().contains("not a model file"), "{e}");

    // A config that disagrees with the weights: the key and both shapes are named.
    let wrong = ConfigSource::OpenClipJson(
        std::fs::read_to_string(fixtures().join("tiny-vit-b16.json"))
            .unwrap()
            .replace("\"width\": 64", "\"width\": 96"),
    );
    let e = load_bytes(&weights, Some(&wrong), &device).unwrap_err();
    match &e {
        LegradError::ShapeMismatch { key, expected, found } => {
            assert_eq!(key, "visual.conv1.weight");
            assert_eq!(expected, &vec![96, 3, 16, 16]);
            assert_eq!(found, &vec![64, 3, 16, 16]);
        }
        other => panic!("expected a shape mismatch, got {other}"),
    }
    assert!(e.to_string().contains("visual.conv1.weight") && e.to_string().contains("[64, 3, 16, 16]"));
    let fewer = ConfigSource::OpenClipJson(
        std::fs::read_to_string(fixtures().join("tiny-vit-b16.json"))
            .unwrap()
            .replace("\"layers\": 3", "\"layers\": 2"),
    );
    let e = load_bytes(&weights, Some(&fewer), &device).unwrap_err();
    assert!(e.to_string().contains("more"), "{e}");

    // A missing tensor is named.
    let mut map = TensorMap::from_safetensors(&weights).unwrap();
    map.remove("visual.transformer.resblocks.1.mlp.c_fc.bias");
    let e = legrad::load::from_tensor_map(map, Some(&config), &device).unwrap_err();
    assert!(
        matches!(&e, LegradError::MissingTensor { key, .. } if key == "visual.transformer.resblocks.1.mlp.c_fc.bias"),
        "{e}"
    );

    // Something that is not CLIP at all.
    let mut foreign = TensorMap::new();
    foreign.insert("encoder.weight", legrad::weights::RawTensor::from_f32(vec![2, 2], &[0.0; 4]));
    let e = legrad::load::from_tensor_map(foreign, None, &device).unwrap_err();
    assert!(e.to_string().contains("no CLIP vision tower"), "{e}");

    // transformers weights without config.json.
    let hf = std::fs::read(fixtures().join("tiny-hf-clip/model.safetensors")).unwrap();
    let e = load_bytes(&hf, None, &device).unwrap_err();
    assert!(e.to_string().contains("config.json"), "{e}");

    // Files that do not exist, and a config preset that does not exist.
    assert!(matches!(load_path(&fixtures().join("nope.safetensors"), None, &device), Err(LegradError::Io { .. })));
    let e = load_bytes(&weights, Some(&ConfigSource::Preset("ViT-Z-99".into())), &device).unwrap_err();
    assert!(e.to_string().contains("ViT-Z-99"), "{e}");
}

#[test]
fn config_is_inferred_from_shapes() {
    use std::collections::BTreeMap;
    // ViT-B/16's shapes (no data needed).
    let c = legrad::ClipConfig::vit_b_16();
    let mut shapes: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    let v = &c.vision;
    shapes.insert("visual.conv1.weight".into(), vec![768, 3, 16, 16]);
    shapes.insert("visual.positional_embedding".into(), vec![197, 768]);
    shapes.insert("visual.proj".into(), vec![768, 512]);
    for i in 0..v.layers {
        shapes.insert(format!("visual.transformer.resblocks.{i}.attn.in_proj_weight"), vec![2304, 768]);
        shapes.insert(format!("visual.transformer.resblocks.{i}.mlp.c_fc.weight"), vec![3072, 768]);
    }
    shapes.insert("token_embedding.weight".into(), vec![49408, 512]);
    shapes.insert("positional_embedding".into(), vec![77, 512]);
    shapes.insert("text_projection".into(), vec![512, 512]);
    for i in 0..12 {
        shapes.insert(format!("transformer.resblocks.{i}.attn.in_proj_weight"), vec![1536, 512]);
        shapes.insert(format!("transformer.resblocks.{i}.mlp.c_fc.weight"), vec![2048, 512]);
    }
    let inferred = legrad::weights::infer_config(&shapes).unwrap();
    assert_eq!(inferred.vision, c.vision);
    assert_eq!(inferred.text, c.text);
    assert_eq!(inferred.embed_dim, 512);
    assert_eq!(inferred.activation_source, legrad::config::ActivationSource::Default);
    // Without a config the loader says that it assumed GELU.
    let weights = std::fs::read(fixtures().join("tiny-vit-b32-quickgelu.pt"));
    assert!(weights.is_ok());
}
