//! The app's model file: a safetensors file whose `__metadata__` carries the format name and
//! version, the model config and the tokenizer settings, and whose tensors use open_clip's names.
//! safetensors gives a checked, zero-copy container that loads from bytes in the browser; the
//! metadata makes the file self-describing, so a foreign safetensors file is told apart.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::config::ClipConfig;
use crate::error::{LegradError, Result};
use crate::weights::gptq::Hessian;
use crate::weights::{ByteSource, Deferred, RawTensor, StoredDType, TensorMap};

pub const FORMAT_NAME: &str = "legrad-web-model";
pub const FORMAT_VERSION: u32 = 1;

/// How the weights are stored.
///
/// `q8` and `q4` quantize the matrices of every Linear layer of both towers and the token
/// embedding (symmetric, one f16 scale per block of output features: 64 for q8, 32 for q4; see
/// [`crate::weights::quant`]); everything else (norms, biases, positional and class embeddings,
/// the patch embedding and the two projections) is kept in f16. The token embedding is
/// quantized too, against the usual practice, because ViT-B/16's alone is 101 MB in f32 and the
/// 8-bit file must stay under 160 MB; it is looked up on the host, a row at a time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Quant {
    F32,
    F16,
    Q8,
    Q4,
}

impl std::str::FromStr for Quant {
    type Err = LegradError;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "q8" => Ok(Self::Q8),
            "q4" => Ok(Self::Q4),
            _ => Err(LegradError::Input(format!("unknown quantization '{s}': expected f32, f16, q8 or q4"))),
        }
    }
}

/// Tensors that `q8` / `q4` quantize.
pub fn is_quantized_weight(name: &str) -> bool {
    name == "token_embedding.weight" || crate::model::LINEAR_WEIGHTS.iter().any(|s| name.ends_with(s))
}

/// Values per scale: 64 at 8 bits; 32 at 4 bits, and 16 for the token table and the text
/// tower's MLP. The text side costs the maps more than its share of the weights (a random
/// ViT-B/16 with the text tower kept in f16 and the vision tower at 4 bits keeps r = 0.986;
/// with both at 4 bits and blocks of 32, 0.967), and these finer blocks still fit a ViT-B/16
/// under 90 MB (docs/benchmarks-history.md §3).
pub fn quant_block(name: &str, bits: u8) -> usize {
    let text_side = name == "token_embedding.weight" || (name.starts_with("transformer.") && name.contains(".mlp."));
    match bits {
        8 => 64,
        _ if text_side => 16,
        _ => 32,
    }
}

const SCALES: &str = ".__scales";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TokenizerSettings {
    /// `clip-bpe-16e6` (open_clip's built-in `bpe_simple_vocab_16e6`) or `sentencepiece`
    /// (SigLIP: the model's own `tokenizer.json`, carried in `json`).
    pub kind: String,
    pub context_length: usize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<String>,
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

impl Header {
    /// What the model info calls this file.
    pub fn source_format(&self) -> String {
        format!("legrad-web model ({:?})", self.quant).to_lowercase()
    }
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
    write_with_progress(map, config, None, quant, source, &mut |_, _| {})
}

/// As [`write`], reporting `(tensors done, tensors)`.
/// As [`write`], with the model's tokenizer file (SigLIP's `tokenizer.json`, kept in the
/// header so the model file is whole), reporting `(tensors done, tensors)`.
pub fn write_with_progress(
    map: &TensorMap,
    config: &ClipConfig,
    tokenizer: Option<&str>,
    quant: Quant,
    source: &str,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>> {
    write_calibrated(map, config, tokenizer, quant, source, &HashMap::new(), progress)
}

/// As [`write_with_progress`]; the weights with a Hessian in `hessians` (see
/// [`crate::calibrate`]) are quantized with GPTQ instead of rounding.
pub fn write_calibrated(
    map: &TensorMap,
    config: &ClipConfig,
    tokenizer: Option<&str>,
    quant: Quant,
    source: &str,
    hessians: &HashMap<String, Hessian>,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Vec<u8>> {
    let header = Header {
        format_version: FORMAT_VERSION,
        quant,
        config: config.clone(),
        tokenizer: match config.family.anatomy().tokenizer {
            crate::config::TokenizerKind::ClipBpe => TokenizerSettings {
                kind: "clip-bpe-16e6".into(),
                context_length: config.text.context_length,
                json: None,
            },
            crate::config::TokenizerKind::SentencePiece => TokenizerSettings {
                kind: "sentencepiece".into(),
                context_length: config.text.context_length,
                json: Some(
                    tokenizer
                        .ok_or_else(|| {
                            LegradError::Config("a SigLIP model file needs the model's tokenizer.json".into())
                        })?
                        .to_string(),
                ),
            },
        },
        source: source.into(),
    };
    let mut metadata = HashMap::new();
    metadata.insert("format".to_string(), FORMAT_NAME.to_string());
    metadata.insert(
        "header".to_string(),
        serde_json::to_string(&header).map_err(|e| LegradError::ModelFile(e.to_string()))?,
    );
    let f16_bytes =
        |values: &[f32]| -> Vec<u8> { values.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect() };
    let mut owned: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = Vec::new();
    let total = map.len();
    for (done, name) in map.names().enumerate() {
        progress(done, total);
        let t = map.get(name).ok_or_else(|| LegradError::ModelFile(format!("tensor {name} vanished")))?;
        let values = t.to_f32();
        let bits = match quant {
            Quant::Q8 => 8,
            Quant::Q4 => 4,
            _ => 0,
        };
        let matrix = t.shape.len() == 2 && (bits == 8 || t.shape[1] % 2 == 0);
        if bits > 0 && matrix && is_quantized_weight(name) {
            let (rows, cols) = (t.shape[0], t.shape[1]);
            let block = quant_block(name, bits);
            let q = match hessians.get(name) {
                Some(h) => gptq(&values, rows, cols, bits, block, h)?,
                None => crate::weights::quant::quantize(&values, rows, cols, bits, block),
            };
            let (dtype, shape) = if bits == 8 {
                (safetensors::Dtype::I8, vec![rows, cols])
            } else {
                (safetensors::Dtype::U8, vec![rows, cols / 2])
            };
            owned.push((name.to_string(), shape, dtype, q.bytes.clone()));
            owned.push((
                format!("{name}{SCALES}"),
                vec![q.scales.len() / cols, cols],
                safetensors::Dtype::F16,
                f16_bytes(&q.scales),
            ));
            continue;
        }
        let (dtype, bytes) = match quant {
            Quant::F32 => (safetensors::Dtype::F32, bytemuck::cast_slice(&values).to_vec()),
            _ => (safetensors::Dtype::F16, f16_bytes(&values)),
        };
        owned.push((name.to_string(), t.shape.clone(), dtype, bytes));
    }
    progress(total, total);
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, d, b)| {
            safetensors::tensor::TensorView::new(*d, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| LegradError::ModelFile(e.to_string()))
        })
        .collect::<Result<_>>()?;
    let bytes = safetensors::serialize(views, Some(metadata)).map_err(|e| LegradError::ModelFile(e.to_string()))?;
    seal(bytes)
}

/// GPTQ where this build has it (the `gptq` feature; the web app, which only rounds to q8,
/// leaves it out of its module).
#[cfg(feature = "gptq")]
fn gptq(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u8,
    block: usize,
    h: &Hessian,
) -> Result<crate::weights::RawTensor> {
    crate::weights::gptq::quantize(values, rows, cols, bits, block, h)
}

#[cfg(not(feature = "gptq"))]
fn gptq(_: &[f32], _: usize, _: usize, _: u8, _: usize, _: &Hessian) -> Result<crate::weights::RawTensor> {
    Err(LegradError::Unsupported("GPTQ in this build (the `gptq` feature is off): quantize with rounding".into()))
}

/// The metadata key of the tensors' checksum: CRC-32 (IEEE) of the file's data section, every
/// tensor's bytes as stored, in hex.
pub const CHECKSUM_KEY: &str = "tensors_crc32";

/// The header's length and the data section's start in a safetensors file.
fn header_span(bytes: &[u8]) -> Result<(usize, usize)> {
    let err = || LegradError::ModelFile("truncated or corrupt (no safetensors header)".into());
    let len: [u8; 8] = bytes.get(..8).and_then(|b| b.try_into().ok()).ok_or_else(err)?;
    let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| err())?;
    let start = n.checked_add(8).filter(|&s| s <= bytes.len()).ok_or_else(err)?;
    Ok((n, start))
}

/// Finish a model file written by safetensors: its tensors' checksum goes into `__metadata__`
/// ([`CHECKSUM_KEY`]), and the header is written with its keys sorted (safetensors writes
/// `__metadata__` in a `HashMap`'s order, which changes from run to run; the same checkpoint must
/// give the same file). The tensor data is not touched; the header is padded to 8 bytes as
/// safetensors pads it.
pub fn seal(bytes: Vec<u8>) -> Result<Vec<u8>> {
    let err = |m: String| LegradError::ModelFile(format!("writing the model file's header: {m}"));
    let (_, start) = header_span(&bytes)?;
    let text = std::str::from_utf8(&bytes[8..start]).map_err(|e| err(e.to_string()))?;
    let mut value: serde_json::Value =
        serde_json::from_str(text.trim_end_matches(' ')).map_err(|e| err(e.to_string()))?;
    let checksum = format!("{:08x}", crc32fast::hash(&bytes[start..]));
    value
        .as_object_mut()
        .and_then(|o| o.get_mut("__metadata__"))
        .and_then(|m| m.as_object_mut())
        .ok_or_else(|| err("no __metadata__".into()))?
        .insert(CHECKSUM_KEY.into(), serde_json::Value::String(checksum));
    let mut header = serde_json::to_string(&value).map_err(|e| err(e.to_string()))?.into_bytes();
    while (8 + header.len()) % 8 != 0 {
        header.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + header.len() + bytes.len() - start);
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&bytes[start..]);
    Ok(out)
}

/// Check a model file's tensors against the checksum in its header, where it has one (files
/// written before the checksum existed have none, and load as before).
fn verify_checksum(bytes: &[u8], metadata: &HashMap<String, String>) -> Result<()> {
    let Some(expected) = metadata.get(CHECKSUM_KEY) else {
        return Ok(());
    };
    let (_, start) = header_span(bytes)?;
    checksum_matches(crc32fast::hash(&bytes[start..]), expected)
}

fn checksum_matches(hash: u32, expected: &str) -> Result<()> {
    let found = format!("{hash:08x}");
    if !found.eq_ignore_ascii_case(expected.trim()) {
        return Err(LegradError::ModelFile(format!(
            "the file is damaged: its tensors' checksum is {found}, its header says {expected} (changed or cut after it was written); download or convert it again"
        )));
    }
    Ok(())
}

/// A plain f32 safetensors state dict in open_clip's names (what `open_clip.create_model`
/// loads; no legrad metadata).
pub fn write_plain(map: &TensorMap) -> Result<Vec<u8>> {
    let owned: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .names()
        .filter_map(|n| {
            map.get(n).map(|t| (n.to_string(), t.shape.clone(), bytemuck::cast_slice(&t.to_f32()).to_vec()))
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| LegradError::ModelFile(e.to_string()))
        })
        .collect::<Result<_>>()?;
    safetensors::serialize(views, None).map_err(|e| LegradError::ModelFile(e.to_string()))
}

/// Read the header of an app model file.
pub fn read_header(bytes: &[u8]) -> Result<Header> {
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| LegradError::ModelFile(format!("truncated or corrupt ({e})")))?;
    header_of(&meta.metadata().clone().unwrap_or_default())
}

/// The header in a model file's `__metadata__`.
fn header_of(md: &HashMap<String, String>) -> Result<Header> {
    let md = Some(md)
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

/// Read the header of an app model file and check its tensors against the checksum it carries
/// (see [`seal`]); a file without one (written before it existed) passes.
pub fn verify(bytes: &[u8]) -> Result<Header> {
    let header = read_header(bytes)?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
        .map_err(|e| LegradError::ModelFile(format!("truncated or corrupt ({e})")))?;
    if let Some(md) = meta.metadata().as_ref() {
        verify_checksum(bytes, md)?;
    }
    Ok(header)
}

/// The tensors of an app model file (quantized ones kept quantized) and its header.
pub fn read_map(bytes: &[u8]) -> Result<(TensorMap, Header)> {
    let header = verify(bytes)?;
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| LegradError::ModelFile(format!("truncated or corrupt ({e})")))?;
    let mut map = TensorMap::new();
    let tensors = st.tensors();
    let scales: HashMap<&str, &safetensors::tensor::TensorView<'_>> =
        tensors.iter().filter_map(|(n, v)| n.strip_suffix(SCALES).map(|base| (base, v))).collect();
    for (name, view) in &tensors {
        if name.ends_with(SCALES) {
            continue;
        }
        let s = scales.get(name.as_str()).map(|s| (s.shape(), s.data()));
        let (shape, dtype, scales) = stored(name, view.dtype(), view.shape(), s)?;
        map.insert(name.clone(), RawTensor { shape, dtype, bytes: view.data().to_vec(), scales });
    }
    Ok((map, header))
}

/// A tensor's shape, stored type and scales from its safetensors entry (`scales`: the shape and
/// bytes of its `.scales` entry, where it has one).
fn stored(
    name: &str,
    dtype: safetensors::Dtype,
    shape: &[usize],
    scales: Option<(&[usize], &[u8])>,
) -> Result<(Vec<usize>, StoredDType, Vec<f32>)> {
    let bad = |what: &str| LegradError::ModelFile(format!("tensor {name}: {what}"));
    Ok(match dtype {
        safetensors::Dtype::F32 => (shape.to_vec(), StoredDType::F32, vec![]),
        safetensors::Dtype::F16 => (shape.to_vec(), StoredDType::F16, vec![]),
        dt @ (safetensors::Dtype::I8 | safetensors::Dtype::U8) => {
            let (sshape, sbytes) = scales.ok_or_else(|| bad("quantized values without scales"))?;
            let scale_values: Vec<f32> =
                sbytes.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
            let (rows, cols) = match (dt, shape) {
                (safetensors::Dtype::I8, &[r, c]) => (r, c),
                (_, &[r, c]) => (r, c * 2),
                _ => return Err(bad("quantized tensors must be matrices")),
            };
            if sshape.len() != 2 || sshape[1] != cols || sshape[0] == 0 || rows % sshape[0] != 0 {
                return Err(bad(&format!("scales of shape {sshape:?} do not fit [{rows}, {cols}]")));
            }
            let block = rows / sshape[0];
            let dtype =
                if dt == safetensors::Dtype::I8 { StoredDType::Q8 { block } } else { StoredDType::Q4 { block } };
            (vec![rows, cols], dtype, scale_values)
        }
        other => return Err(bad(&format!("unexpected type {other:?}"))),
    })
}

/// An app model file's header in `source`, its safetensors metadata and where its tensors'
/// bytes start (the offsets checked against the source's length).
fn source_metadata(source: &dyn ByteSource) -> Result<(Header, safetensors::tensor::Metadata, usize)> {
    let err = |m: &str| LegradError::ModelFile(format!("truncated or corrupt ({m})"));
    if source.len() < 8 {
        return Err(err("no safetensors header"));
    }
    let len: [u8; 8] = source.read(0..8).try_into().map_err(|_| err("no safetensors header"))?;
    let n = usize::try_from(u64::from_le_bytes(len)).map_err(|_| err("header length"))?;
    let start =
        n.checked_add(8).filter(|&s| s <= source.len() && n <= 100_000_000).ok_or_else(|| err("header length"))?;
    let meta: safetensors::tensor::Metadata =
        serde_json::from_slice(&source.read(8..start)).map_err(|e| err(&e.to_string()))?;
    let end = meta.tensors().values().map(|t| t.data_offsets.1).max().unwrap_or(0);
    if start + end != source.len() {
        return Err(err("the tensors do not end where the file does"));
    }
    let md = meta.metadata().clone().unwrap_or_default();
    Ok((header_of(&md)?, meta, start))
}

/// [`verify`] for a file in a [`ByteSource`]: its header, and its tensors against their checksum,
/// read a few megabytes at a time.
pub fn verify_source(source: &dyn ByteSource) -> Result<Header> {
    let (header, meta, start) = source_metadata(source)?;
    if let Some(expected) = meta.metadata().as_ref().and_then(|m| m.get(CHECKSUM_KEY)) {
        const CHUNK: usize = 8 << 20;
        let mut hasher = crc32fast::Hasher::new();
        for at in (start..source.len()).step_by(CHUNK) {
            hasher.update(&source.read(at..(at + CHUNK).min(source.len())));
        }
        checksum_matches(hasher.finalize(), expected)?;
    }
    Ok(header)
}

/// [`read_map`] for a file in a [`ByteSource`], whose checksum the caller has checked
/// ([`verify_source`]): each tensor stays in the source until the model takes it
/// ([`TensorMap`]), so that a model is built from a file never held whole beside it.
pub fn read_map_deferred(source: std::rc::Rc<dyn ByteSource>) -> Result<(TensorMap, Header)> {
    let (header, meta, start) = source_metadata(source.as_ref())?;
    let infos = meta.tensors();
    let mut map = TensorMap::new();
    for (name, info) in &infos {
        if name.ends_with(SCALES) {
            continue;
        }
        let scales = infos.get(&format!("{name}{SCALES}")).map(|s| {
            let (a, b) = s.data_offsets;
            (s.shape.as_slice(), source.read(start + a..start + b))
        });
        let (shape, dtype, scales) =
            stored(name, info.dtype, &info.shape, scales.as_ref().map(|(s, b)| (*s, b.as_slice())))?;
        let (a, b) = info.data_offsets;
        map.insert_deferred(
            name.clone(),
            Deferred { shape, dtype, scales, range: start + a..start + b, source: source.clone() },
        );
    }
    Ok((map, header))
}
