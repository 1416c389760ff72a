//! One entry point for every checkpoint kind: bytes or a path in, a [`Clip`] and a description
//! of what was loaded out.

use burn::tensor::Device;

use crate::config::{ActivationSource, ClipConfig};
use crate::error::{LegradError, Result};
use crate::format;
use crate::model::Clip;
use crate::weights::{self, ContainerKind, Layout, TensorMap};

/// A config given next to a checkpoint.
#[derive(Clone, Debug)]
pub enum ConfigSource {
    /// open_clip's JSON model config (or `open_clip_config.json`).
    OpenClipJson(String),
    /// transformers' `config.json`.
    TransformersJson(String),
    /// An open_clip model name with a built-in preset (`ViT-B-16`, `ViT-B-32-quickgelu`, ...).
    Preset(String),
    /// A config already parsed.
    Config(ClipConfig),
}

impl ConfigSource {
    /// Decide from a JSON text which kind of config it is.
    pub fn from_json(text: String) -> Self {
        if text.contains("\"vision_config\"") { Self::TransformersJson(text) } else { Self::OpenClipJson(text) }
    }

    pub fn parse(&self) -> Result<ClipConfig> {
        match self {
            Self::Config(c) => Ok(c.clone()),
            Self::OpenClipJson(t) => ClipConfig::from_openclip_json(t),
            Self::TransformersJson(t) => ClipConfig::from_transformers_json(t),
            Self::Preset(name) => ClipConfig::preset(name).ok_or_else(|| {
                LegradError::Config(format!(
                    "no preset named '{name}': use ViT-B-32, ViT-B-16, ViT-L-14 (optionally -quickgelu) or give a JSON config"
                ))
            }),
        }
    }
}

pub use crate::config::ModelInfo;

/// A checkpoint in open_clip's names with its config: what the model is built from, and what
/// `legrad convert` writes.
#[derive(Clone)]
pub struct Prepared {
    pub map: TensorMap,
    pub config: ClipConfig,
    pub source_format: String,
    pub notes: Vec<String>,
    /// The model's `tokenizer.json` (SigLIP), where one was found or given.
    pub tokenizer: Option<String>,
}

impl Prepared {
    /// Build the model, its tokenizer file attached.
    pub fn build(self, device: &Device) -> Result<(Clip, ModelInfo)> {
        let policy = crate::compute::ComputePolicy::for_device(device);
        self.build_with(device, &policy)
    }

    /// Build the model with its linear layers as `policy` says
    /// ([`ComputePolicy::linear_products`](crate::compute::ComputePolicy::linear_products)).
    pub fn build_with(self, device: &Device, policy: &crate::compute::ComputePolicy) -> Result<(Clip, ModelInfo)> {
        let clip = Clip::from_tensors_with(self.config.clone(), self.map, device, policy)?
            .with_tokenizer(self.tokenizer.as_deref().map(std::sync::Arc::from));
        Ok((clip, ModelInfo { config: self.config, source_format: self.source_format, notes: self.notes }))
    }
}

/// Rename (transformers → open_clip) and settle the config (given, or inferred from shapes).
pub fn prepare(map: TensorMap, config: Option<&ConfigSource>) -> Result<Prepared> {
    let layout = weights::detect_layout(&map)?;
    let mut notes = Vec::new();
    let (map, config, source_format) = match layout {
        Layout::Transformers => {
            let config = match config {
                Some(c) => c.parse()?,
                None => {
                    return Err(LegradError::Config(
                        "a transformers CLIPModel checkpoint needs its config.json (heads and activation are not in the weights): pass it with --config, or load the directory holding both".into(),
                    ));
                }
            };
            (weights::keys::transformers_to_openclip(map)?, config, "transformers CLIPModel")
        }
        Layout::Siglip => {
            let config = match config {
                Some(c) => c.parse()?,
                None => return Err(siglip_needs_config()),
            };
            if config.family != crate::config::Family::Siglip {
                return Err(LegradError::Config(
                    "this checkpoint is a SigLIP model (a timm tower with an attention pool) but its config describes a CLIP: give the SigLIP config (open_clip_config.json, or --config ViT-B-16-SigLIP)".into(),
                ));
            }
            (weights::keys::siglip_to_internal(map)?, config, "open_clip SigLIP")
        }
        Layout::OpenClip => {
            let config = match config {
                Some(c) => c.parse()?,
                None if map.contains("visual.attn_pool.latent") => return Err(siglip_needs_config()),
                None => {
                    let inferred = weights::infer_config(&map.shapes())?;
                    if inferred.activation_source == ActivationSource::Default {
                        notes.push(
                            "the checkpoint does not record its activation: using GELU (open_clip's default, right for LAION weights); OpenAI weights need QuickGELU (--config ViT-B-16-quickgelu or a JSON config with \"quick_gelu\": true)".into(),
                        );
                    }
                    inferred
                }
            };
            (map, config, "open_clip")
        }
    };
    Ok(Prepared { map, config, source_format: source_format.into(), notes, tokenizer: None })
}

fn siglip_needs_config() -> LegradError {
    LegradError::Config(
        "a SigLIP checkpoint needs its config (the heads and the text tower's settings are not in the weights): give open_clip_config.json (--config, or in the checkpoint's directory) or --config ViT-B-16-SigLIP".into(),
    )
}

/// Build a model from a tensor map and an optional config.
pub fn from_tensor_map(map: TensorMap, config: Option<&ConfigSource>, device: &Device) -> Result<(Clip, ModelInfo)> {
    prepare(map, config)?.build(device)
}

/// The tensors of a checkpoint held in memory (safetensors, open_clip or transformers names),
/// renamed to open_clip's, with its config.
pub fn prepare_bytes(bytes: &[u8], config: Option<&ConfigSource>) -> Result<Prepared> {
    match weights::sniff(bytes) {
        Some(ContainerKind::Safetensors) => prepare(TensorMap::from_safetensors(bytes)?, config),
        Some(ContainerKind::Pytorch) => Err(LegradError::Unsupported(
            "PyTorch pickles (.bin/.pt) load from a file path (CLI), not from memory: convert with `legrad convert` first, or use the .safetensors file".into(),
        )),
        None => Err(LegradError::Checkpoint(
            "this is not a model file: expected safetensors (open_clip or transformers), a PyTorch .bin/.pt, or a model written by `legrad convert`".into(),
        )),
    }
}

/// Load from bytes: safetensors (open_clip or transformers names) or the app's model file.
/// PyTorch pickles need random access and load from a path ([`load_path`]).
pub fn load_bytes(bytes: &[u8], config: Option<&ConfigSource>, device: &Device) -> Result<(Clip, ModelInfo)> {
    read_bytes(bytes, config)?.build(device)
}

/// What [`load_bytes`] builds from, the tensors copied out of `bytes`: a caller that drops the
/// bytes before [`Prepared::build`] never holds the file, its tensors and the model at once.
pub fn read_bytes(bytes: &[u8], config: Option<&ConfigSource>) -> Result<Prepared> {
    if !format::is_app_model(bytes) {
        return prepare_bytes(bytes, config);
    }
    Ok(app_model(format::read_map(bytes)?))
}

/// [`read_bytes`] for an app model file in a [`ByteSource`](crate::weights::ByteSource) whose
/// checksum the caller has checked ([`format::verify_source`]): its tensors stay in the source
/// until the model takes them, so that building the model never holds the file beside it (the
/// browser's engine, whose memory never shrinks).
pub fn read_source(source: std::rc::Rc<dyn crate::weights::ByteSource>) -> Result<Prepared> {
    Ok(app_model(format::read_map_deferred(source)?))
}

/// An app model file's tensors and header as what a model is built from.
fn app_model((map, header): (TensorMap, format::Header)) -> Prepared {
    Prepared {
        map,
        source_format: header.source_format(),
        config: header.config,
        notes: vec![],
        tokenizer: header.tokenizer.json,
    }
}

/// Load from a file or a directory (a transformers model directory with `config.json`, or an
/// open_clip Hub directory with `open_clip_config.json`). A config next to the weights is used
/// when none is given.
#[cfg(not(target_family = "wasm"))]
pub fn load_path(path: &std::path::Path, config: Option<ConfigSource>, device: &Device) -> Result<(Clip, ModelInfo)> {
    prepare_path(path, config)?.build(device)
}

/// [`prepare`] for a file or directory, any container.
#[cfg(not(target_family = "wasm"))]
pub fn prepare_path(path: &std::path::Path, config: Option<ConfigSource>) -> Result<Prepared> {
    if !path.exists() {
        return Err(LegradError::io_path(
            path,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no such file or directory"),
        ));
    }
    let (file, dir) = if path.is_dir() {
        let candidates =
            ["open_clip_model.safetensors", "model.safetensors", "open_clip_pytorch_model.bin", "pytorch_model.bin"];
        let file = candidates
            .iter()
            .map(|c| path.join(c))
            .find(|p| p.exists())
            .ok_or_else(|| LegradError::Checkpoint(format!("{} holds none of {candidates:?}", path.display())))?;
        (file, path.to_path_buf())
    } else {
        (path.to_path_buf(), path.parent().map(|p| p.to_path_buf()).unwrap_or_default())
    };
    let config = match config {
        Some(c) => Some(c),
        None => ["open_clip_config.json", "config.json"]
            .iter()
            .map(|n| dir.join(n))
            .find(|p| p.exists())
            .map(|p| std::fs::read_to_string(&p).map_err(|e| LegradError::io_path(&p, e)))
            .transpose()?
            .map(ConfigSource::from_json),
    };
    let head = {
        use std::io::Read;
        let mut f = std::fs::File::open(&file).map_err(|e| LegradError::io_path(&file, e))?;
        let mut head = vec![0u8; 16];
        let n = f.read(&mut head).map_err(|e| LegradError::io_path(&file, e))?;
        head.truncate(n);
        head
    };
    let named = |e: LegradError| match e {
        LegradError::Checkpoint(msg) => LegradError::Checkpoint(format!("{}: {msg}", file.display())),
        other => other,
    };
    // SigLIP's tokenizer file, where it sits next to the weights.
    let tokenizer = {
        let p = dir.join("tokenizer.json");
        if p.is_file() { Some(std::fs::read_to_string(&p).map_err(|e| LegradError::io_path(&p, e))?) } else { None }
    };
    let with_tokenizer = |p: Prepared| Prepared { tokenizer: p.tokenizer.or(tokenizer.clone()), ..p };
    match weights::sniff(&head) {
        Some(ContainerKind::Pytorch) => {
            prepare(TensorMap::from_pytorch_file(&file)?, config.as_ref()).map(with_tokenizer)
        }
        _ => {
            let bytes = std::fs::read(&file).map_err(|e| LegradError::io_path(&file, e))?;
            if format::is_app_model(&bytes) {
                let (map, header) = format::read_map(&bytes)?;
                return Ok(Prepared {
                    map,
                    config: header.config,
                    source_format: format!("legrad-web model ({:?})", header.quant).to_lowercase(),
                    notes: vec![],
                    tokenizer: header.tokenizer.json,
                });
            }
            prepare_bytes(&bytes, config.as_ref()).map_err(named).map(with_tokenizer)
        }
    }
}
