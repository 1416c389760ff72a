//! The app's model file: a safetensors file whose `__metadata__` carries the format name and
//! version, the model config and the tokenizer settings, and whose tensors use open_clip's names.
//! safetensors gives a checked, zero-copy container that loads from bytes in the browser; the
//! metadata makes the file self-describing, so a foreign safetensors file is told apart.

use std::collections::HashMap;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::config::ClipConfig;
use crate::error::{LegradError, Result};
use crate::load::ModelInfo;
use crate::model::Clip;
use crate::weights::{RawTensor, StoredDType, TensorMap};

pub const FORMAT_NAME: &str = "legrad-web-model";
pub const FORMAT_VERSION: u32 = 1;

/// How the weights are stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    F32,
    F16,
}

impl std::str::FromStr for Quant {
    type Err = LegradError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            _ => Err(LegradError::Input(format!("unknown quantization '{s}': expected f32 or f16"))),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenizerSettings {
    /// The BPE vocabulary: open_clip's `bpe_simple_vocab_16e6`.
    pub kind: String,
    pub context_length: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub quant: Quant,
    pub config: ClipConfig,
    pub tokenizer: TokenizerSettings,
    /// Free text: where the weights came from.
    pub source: String,
}

/// Does this safetensors file carry our metadata?
pub fn is_app_model(bytes: &[u8]) -> bool {
    safetensors::SafeTensors::read_metadata(bytes)
        .ok()
        .and_then(|(_, m)| m.metadata().as_ref().map(|md| md.get("format").map(String::as_str) == Some(FORMAT_NAME)))
        .unwrap_or(false)
}

/// Write `map` (open_clip names) with its config.
pub fn write(map: &TensorMap, config: &ClipConfig, quant: Quant, source: &str) -> Result<Vec<u8>> {
    let header = Header {
        format_version: FORMAT_VERSION,
        quant,
        config: config.clone(),
        tokenizer: TokenizerSettings {
            kind: "clip-bpe-16e6".into(),
            context_length: config.text.context_length,
        },
        source: source.into(),
    };
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT_NAME.to_string());
    metadata.insert(
        "header".to_string(),
        serde_json::to_string(&header).map_err(|e| LegradError::ModelFile(e.to_string()))?,
    );
    let mut owned: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    for name in map.names() {
        let t = map.get(name).ok_or_else(|| LegradError::ModelFile(format!("tensor {name} vanished")))?;
        let values = t.to_f32();
        let (dtype, bytes) = match quant {
            Quant::F32 => (safetensors::Dtype::F32, bytemuck::cast_slice(&values).to_vec()),
            Quant::F16 => (
                safetensors::Dtype::F16,
                values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect(),
            ),
        };
        owned.push((name.to_string(), t.shape.clone(), dtype, bytes));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| LegradError::ModelFile(e.to_string()))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, Some(metadata)).map_err(|e| LegradError::ModelFile(e.to_string()))
}

/// Read the header of an app model file.
pub fn read_header(bytes: &[u8]) -> Result<Header> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| LegradError::ModelFile(format!("truncated or corrupt ({e})")))?;
    let md = meta
        .metadata()
        .as_ref()
        .filter(|m| m.get("format").map(String::as_str) == Some(FORMAT_NAME))
        .ok_or_else(|| LegradError::ModelFile("not a legrad-web model file (no legrad-web metadata)".into()))?;
    let header: Header = serde_json::from_str(md.get("header").map(String::as_str).unwrap_or(""))
        .map_err(|e| LegradError::ModelFile(format!("unreadable header: {e}")))?;
    if header.format_version != FORMAT_VERSION {
        return Err(LegradError::ModelFile(format!(
            "format version {} is not supported by this build (it reads version {FORMAT_VERSION}); convert the checkpoint again",
            header.format_version
        )));
    }
    Ok(header)
}

/// Load an app model file.
pub fn read(bytes: &[u8], device: &Device) -> Result<(Clip, ModelInfo)> {
    let header = read_header(bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| LegradError::ModelFile(format!("truncated or corrupt ({e})")))?;
    let mut map = TensorMap::new();
    for (name, view) in st.tensors() {
        let dtype = match view.dtype() {
            safetensors::Dtype::F32 => StoredDType::F32,
            safetensors::Dtype::F16 => StoredDType::F16,
            other => return Err(LegradError::ModelFile(format!("tensor {name} has unexpected type {other:?}"))),
        };
        map.insert(name, RawTensor { shape: view.shape().to_vec(), dtype, bytes: view.data().to_vec() });
    }
    let clip = Clip::from_tensors(header.config.clone(), map, device)?;
    Ok((
        clip,
        ModelInfo {
            config: header.config,
            source_format: format!("legrad-web model ({:?})", header.quant).to_lowercase(),
            notes: vec![],
        },
    ))
}
