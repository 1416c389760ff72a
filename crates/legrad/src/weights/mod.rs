//! Checkpoint containers (safetensors, PyTorch pickles, the app's model file) read into one
//! name → tensor map, and the key mapping from each published layout to open_clip's names.
//!
//! | source layout | example | handled by |
//! |---|---|---|
//! | open_clip state dict, `.safetensors` | `open_clip_model.safetensors` on the Hub | [`TensorMap::from_safetensors`] |
//! | open_clip state dict, `.bin` / `.pt` | `open_clip_pytorch_model.bin`, training checkpoints | [`TensorMap::from_pytorch_file`] |
//! | transformers `CLIPModel` | `model.safetensors` + `config.json` | [`keys::transformers_to_openclip`] |
//! | the app's model file (safetensors with its own metadata) | `legrad convert` output | [`crate::format`] |
//!
//! Everything downstream sees open_clip's names (`visual.transformer.resblocks.0.attn.in_proj_weight`).

pub mod gptq;
pub mod keys;
pub mod quant;
pub mod random;

use std::collections::BTreeMap;

use crate::config::ClipConfig;
use crate::error::{LegradError, Result};

/// Element type of a stored tensor. Everything is computed in f32; these are storage formats.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoredDType {
    F32,
    F16,
    BF16,
    F64,
    /// Symmetric 8-bit, one scale per block of `block` consecutive rows in a column
    /// (see [`quant`]).
    Q8 {
        block: usize,
    },
    /// Symmetric 4-bit (-7..=7), two values per byte along a row, scales as `Q8`.
    Q4 {
        block: usize,
    },
}

impl StoredDType {
    fn size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
            Self::F64 => 8,
            Self::Q8 { .. } | Self::Q4 { .. } => 1,
        }
    }

    pub fn is_quantized(self) -> bool {
        matches!(self, Self::Q8 { .. } | Self::Q4 { .. })
    }
}

/// One tensor as stored: shape, element type and little-endian bytes (and, quantized, its
/// per-block scales).
#[derive(Clone, Debug)]
pub struct RawTensor {
    pub shape: Vec<usize>,
    pub dtype: StoredDType,
    pub bytes: Vec<u8>,
    /// Quantized tensors: `[rows / block, cols]` scales, row-major.
    pub scales: Vec<f32>,
}

impl RawTensor {
    pub fn from_f32(shape: Vec<usize>, data: &[f32]) -> Self {
        Self { shape, dtype: StoredDType::F32, bytes: bytemuck::cast_slice(data).to_vec(), scales: Vec::new() }
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (f16, bf16 and f64 converted exactly or rounded to nearest).
    pub fn to_f32(&self) -> Vec<f32> {
        let b = &self.bytes;
        match self.dtype {
            StoredDType::F32 => b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
            StoredDType::F16 => b.chunks_exact(2).map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StoredDType::BF16 => b.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
            StoredDType::F64 => {
                b.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32).collect()
            }
            StoredDType::Q8 { .. } | StoredDType::Q4 { .. } => quant::dequantize(self),
        }
    }
}

/// A checkpoint's tensors by name. A map read with [`crate::format::read_map_deferred`] holds
/// its quantized and f16 tensors as places in a [`ByteSource`], read when taken: the browser's
/// engine builds a model from a file that stays outside its memory, one tensor at a time.
#[derive(Clone, Debug, Default)]
pub struct TensorMap {
    tensors: BTreeMap<String, Entry>,
}

/// A tensor in memory, or still in its source.
#[derive(Clone, Debug)]
enum Entry {
    Held(RawTensor),
    Deferred(Deferred),
}

impl Entry {
    fn shape(&self) -> &[usize] {
        match self {
            Entry::Held(t) => &t.shape,
            Entry::Deferred(t) => &t.shape,
        }
    }

    fn read(self) -> RawTensor {
        match self {
            Entry::Held(t) => t,
            Entry::Deferred(t) => t.read(),
        }
    }
}

/// Where a model file's bytes are read from, a range at a time: the browser's engine reads a
/// cached model from a JavaScript buffer, so that its own memory (which never shrinks) holds the
/// model and never the file as well.
pub trait ByteSource {
    fn len(&self) -> usize;
    /// `range`'s bytes (within [`len`](Self::len)): always `range.len()` of them, zeros where a
    /// read failed ([`failure`](Self::failure) then says why).
    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Why a read failed, once one has: a model built from this source is then refused (a
    /// source in memory never fails).
    fn failure(&self) -> Option<String> {
        None
    }
}

impl ByteSource for [u8] {
    fn len(&self) -> usize {
        <[u8]>::len(self)
    }
    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self[range].to_vec()
    }
}

impl ByteSource for Vec<u8> {
    fn len(&self) -> usize {
        Vec::len(self)
    }
    fn read(&self, range: std::ops::Range<usize>) -> Vec<u8> {
        self.as_slice().read(range)
    }
}

/// A tensor still in its [`ByteSource`]: everything but its bytes.
#[derive(Clone)]
pub(crate) struct Deferred {
    pub(crate) shape: Vec<usize>,
    pub(crate) dtype: StoredDType,
    pub(crate) scales: Vec<f32>,
    pub(crate) range: std::ops::Range<usize>,
    pub(crate) source: std::rc::Rc<dyn ByteSource>,
}

impl std::fmt::Debug for Deferred {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Deferred({:?} {:?}, bytes {:?})", self.dtype, self.shape, self.range)
    }
}

impl Deferred {
    fn read(self) -> RawTensor {
        RawTensor { shape: self.shape, dtype: self.dtype, bytes: self.source.read(self.range), scales: self.scales }
    }
}

/// What a file's first bytes say it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContainerKind {
    Safetensors,
    /// A ZIP archive (torch.save since PyTorch 1.6) or a legacy pickle stream.
    Pytorch,
}

/// Is this a safetensors file of open_clip's SigLIP (its header names the timm tower's attention
/// pool)? Reads the header only.
pub fn is_siglip_safetensors(bytes: &[u8]) -> bool {
    safetensors::SafeTensors::read_metadata(bytes)
        .map(|(_, m)| m.tensors().contains_key("visual.trunk.attn_pool.latent"))
        .unwrap_or(false)
}

/// Identify a checkpoint from its first bytes.
pub fn sniff(bytes: &[u8]) -> Option<ContainerKind> {
    // safetensors first: its header length is any number, and one whose low byte is 0x80 starts
    // like a pickle (a 7,296-byte header did).
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().ok()?);
        if n > 1 && n < 100_000_000 && bytes[8] == b'{' {
            return Some(ContainerKind::Safetensors);
        }
    }
    // ZIP (torch.save since 1.6), or a pickle's PROTO opcode with protocol 2 to 5.
    if bytes.starts_with(b"PK\x03\x04") || (bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1])) {
        return Some(ContainerKind::Pytorch);
    }
    None
}

impl TensorMap {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, name: impl Into<String>, tensor: RawTensor) {
        self.tensors.insert(name.into(), Entry::Held(tensor));
    }

    pub(crate) fn insert_deferred(&mut self, name: impl Into<String>, tensor: Deferred) {
        self.tensors.insert(name.into(), Entry::Deferred(tensor));
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn shape(&self, name: &str) -> Option<&[usize]> {
        self.tensors.get(name).map(Entry::shape)
    }

    /// A tensor held in memory; `None` for one still in its source (a map read deferred answers
    /// through [`take`](Self::take), [`take_raw`](Self::take_raw) and [`remove`](Self::remove)).
    pub fn get(&self, name: &str) -> Option<&RawTensor> {
        match self.tensors.get(name)? {
            Entry::Held(t) => Some(t),
            Entry::Deferred(_) => None,
        }
    }

    /// Remove `name`, read from its source where it is still there.
    pub fn remove(&mut self, name: &str) -> Option<RawTensor> {
        self.tensors.remove(name).map(Entry::read)
    }

    /// Shapes of every tensor, for config inference.
    pub fn shapes(&self) -> BTreeMap<String, Vec<usize>> {
        self.tensors.iter().map(|(k, v)| (k.clone(), v.shape().to_vec())).collect()
    }

    /// Remove `name`, checking its shape; a missing or mis-shaped tensor names the key and both
    /// shapes.
    pub fn take(&mut self, name: &str, expected: &[usize]) -> Result<Vec<f32>> {
        Ok(self.take_raw(name, expected)?.to_f32())
    }

    /// As [`take`](Self::take), keeping the stored form (quantized weights stay quantized).
    pub fn take_raw(&mut self, name: &str, expected: &[usize]) -> Result<RawTensor> {
        let tensor = self
            .remove(name)
            .ok_or_else(|| LegradError::MissingTensor { key: name.to_string(), expected: expected.to_vec() })?;
        // A [1, N, W] positional embedding and a [N, W] one hold the same numbers.
        let squeezed: Vec<usize> = tensor.shape.iter().copied().filter(|&d| d != 1).collect();
        let expected_squeezed: Vec<usize> = expected.iter().copied().filter(|&d| d != 1).collect();
        if tensor.shape != expected && squeezed != expected_squeezed {
            return Err(LegradError::ShapeMismatch {
                key: name.to_string(),
                expected: expected.to_vec(),
                found: tensor.shape,
            });
        }
        Ok(tensor)
    }

    /// Read a safetensors file from memory.
    pub fn from_safetensors(bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| LegradError::Checkpoint(format!("not a valid safetensors file: {e}")))?;
        let mut map = Self::new();
        for (name, view) in st.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => StoredDType::F32,
                safetensors::Dtype::F16 => StoredDType::F16,
                safetensors::Dtype::BF16 => StoredDType::BF16,
                safetensors::Dtype::F64 => StoredDType::F64,
                // Integer buffers (e.g. transformers' `position_ids`) carry no weights.
                _ => continue,
            };
            let bytes = view.data().to_vec();
            debug_assert_eq!(bytes.len(), view.shape().iter().product::<usize>() * dtype.size());
            map.insert(name, RawTensor { shape: view.shape().to_vec(), dtype, bytes, scales: Vec::new() });
        }
        map.strip_wrapper_prefixes();
        Ok(map)
    }

    /// Read a `torch.save` checkpoint (`.bin`, `.pt`, `.pth`) from a file.
    ///
    /// PyTorch's ZIP container is read by random access, so this takes a path (the browser
    /// build loads safetensors and the app's model file, which read from memory).
    #[cfg(not(target_family = "wasm"))]
    pub fn from_pytorch_file(path: &std::path::Path) -> Result<Self> {
        let reader = pytorch_reader::PytorchReader::new(path).map_err(|e| {
            LegradError::Checkpoint(format!("{} is not a readable PyTorch checkpoint: {e}", path.display()))
        })?;
        let mut map = Self::new();
        for (name, tensor) in reader.into_tensors() {
            let dtype = match tensor.dtype() {
                pytorch_reader::DType::F32 => StoredDType::F32,
                pytorch_reader::DType::F16 => StoredDType::F16,
                pytorch_reader::DType::BF16 => StoredDType::BF16,
                pytorch_reader::DType::F64 => StoredDType::F64,
                _ => continue,
            };
            let shape = tensor.shape().to_vec();
            let bytes = tensor.read().map_err(|e| {
                LegradError::Checkpoint(format!("{}: tensor '{name}' is unreadable: {e}", path.display()))
            })?;
            map.insert(name, RawTensor { shape, dtype, bytes, scales: Vec::new() });
        }
        map.strip_wrapper_prefixes();
        Ok(map)
    }

    /// Training checkpoints nest the weights (`state_dict.module.visual...`); drop the wrapper.
    fn strip_wrapper_prefixes(&mut self) {
        for prefix in ["state_dict.", "model.", "module."] {
            if !self.tensors.is_empty() && self.tensors.keys().all(|k| k.starts_with(prefix)) {
                let tensors = std::mem::take(&mut self.tensors);
                self.tensors = tensors.into_iter().map(|(k, v)| (k[prefix.len()..].to_string(), v)).collect();
            }
        }
    }
}

/// Which published layout a tensor map follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    OpenClip,
    Transformers,
    /// open_clip's SigLIP: a timm `VisionTransformer` (`visual.trunk.*`) with the attention-pool
    /// head, and open_clip's text tower (`text.*`).
    Siglip,
}

pub fn detect_layout(map: &TensorMap) -> Result<Layout> {
    if map.get("visual.conv1.weight").is_some() {
        Ok(Layout::OpenClip)
    } else if map.get("vision_model.embeddings.patch_embedding.weight").is_some() {
        Ok(Layout::Transformers)
    } else if map.get("visual.trunk.attn_pool.latent").is_some() && map.get("visual.trunk.pos_embed").is_some() {
        Ok(Layout::Siglip)
    } else if map.names().any(|n| n.starts_with("visual.trunk.")) {
        Err(LegradError::Unsupported(
            "timm vision towers other than SigLIP's ViT with its attention-pool head (ConvNeXt, EVA, ...)".into(),
        ))
    } else if map.get("visual.layer1.0.conv1.weight").is_some() {
        Err(LegradError::Unsupported("ResNet (RN50...) vision towers: LeGrad needs a ViT".into()))
    } else {
        let some: Vec<&str> = map.names().take(3).collect();
        Err(LegradError::Checkpoint(format!(
            "this file holds no CLIP vision tower (neither 'visual.conv1.weight' (open_clip) nor \
             'vision_model.embeddings.patch_embedding.weight' (transformers)); its first keys are {some:?}"
        )))
    }
}

/// Infer an open_clip ViT config from tensor shapes (open_clip names).
///
/// Shapes fix every size but two: the number of heads, taken as width / 64 (open_clip's
/// `head_width` default, true of every published OpenCLIP ViT), and the activation, which is
/// invisible in the weights: GELU, open_clip's default, marked as such so callers can say so.
pub fn infer_config(shapes: &BTreeMap<String, Vec<usize>>) -> Result<ClipConfig> {
    use crate::config::{Activation, ActivationSource, TextConfig, VisionConfig};
    let get = |k: &str, rank: usize| -> Result<&Vec<usize>> {
        let s = shapes.get(k).ok_or_else(|| LegradError::MissingTensor { key: k.to_string(), expected: vec![] })?;
        if s.len() != rank {
            return Err(LegradError::Checkpoint(format!("tensor '{k}' has shape {s:?}, expected {rank} dimensions")));
        }
        Ok(s)
    };
    let count_layers = |prefix: &str| -> usize {
        (0..).take_while(|i| shapes.contains_key(&format!("{prefix}{i}.attn.in_proj_weight"))).count()
    };
    let conv = get("visual.conv1.weight", 4)?;
    let (width, patch) = (conv[0], conv[2]);
    let pos = shapes
        .get("visual.positional_embedding")
        .ok_or_else(|| LegradError::MissingTensor { key: "visual.positional_embedding".into(), expected: vec![] })?;
    let tokens = pos[pos.len() - 2];
    let grid = ((tokens - 1) as f64).sqrt().round() as usize;
    if grid * grid + 1 != tokens {
        return Err(LegradError::Checkpoint(format!(
            "visual.positional_embedding has {tokens} positions, not a square grid plus a class token"
        )));
    }
    let proj = get("visual.proj", 2)?;
    let vision_mlp = get("visual.transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
    let tok = get("token_embedding.weight", 2)?;
    let text_pos = shapes
        .get("positional_embedding")
        .ok_or_else(|| LegradError::MissingTensor { key: "positional_embedding".into(), expected: vec![] })?;
    let text_mlp = get("transformer.resblocks.0.mlp.c_fc.weight", 2)?[0];
    let text_proj = get("text_projection", 2)?;
    if text_proj[1] != proj[1] {
        return Err(LegradError::Checkpoint(format!(
            "the towers' projections disagree on the embedding size: visual.proj {proj:?}, text_projection {text_proj:?}"
        )));
    }
    let text_width = tok[1];
    let config = ClipConfig {
        embed_dim: proj[1],
        vision: VisionConfig {
            width,
            layers: count_layers("visual.transformer.resblocks."),
            heads: (width / 64).max(1),
            patch_size: patch,
            image_size: grid * patch,
            mlp_width: vision_mlp,
        },
        text: TextConfig {
            width: text_width,
            layers: count_layers("transformer.resblocks."),
            heads: (text_width / 64).max(1),
            context_length: text_pos[text_pos.len() - 2],
            vocab_size: tok[0],
            mlp_width: text_mlp,
        },
        activation: Activation::Gelu,
        activation_source: ActivationSource::Default,
        family: crate::config::Family::Clip,
    };
    config.validate()?;
    Ok(config)
}
