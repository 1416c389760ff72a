//! Model configuration: the fields of an OpenCLIP ViT CLIP, read from open_clip's JSON model
//! config, from a transformers `config.json`, or inferred from tensor shapes.
//!
//! Presets cite the open_clip config they copy (`open_clip/model_configs/*.json`, v2.23.0).

use serde::{Deserialize, Serialize};

use crate::error::LegradError;

/// The reference demo's prompt template.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

/// Is a timm model name one of the SigLIP ViTs (`vit_base_patch16_siglip_224`, ...)?
fn is_timm_siglip(name: &str) -> bool {
    name.contains("siglip")
}

/// The MLP activation. It changes the numbers and is not visible in the weights: OpenAI's
/// checkpoints use QuickGELU, LAION's use exact GELU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// `0.5 x (1 + erf(x / sqrt 2))`, torch's `nn.GELU()` (open_clip's default).
    #[default]
    Gelu,
    /// `x * sigmoid(1.702 x)` (OpenAI CLIP, open_clip's `-quickgelu` configs).
    QuickGelu,
}

impl std::str::FromStr for Activation {
    type Err = LegradError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
            "gelu" => Ok(Self::Gelu),
            "quickgelu" => Ok(Self::QuickGelu),
            _ => Err(LegradError::Config(format!("unknown activation '{s}': expected 'gelu' or 'quick_gelu'"))),
        }
    }
}

/// Where the activation came from: written in the checkpoint or config, or open_clip's default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ActivationSource {
    /// Read from a config (open_clip JSON, transformers `config.json`, the app's model file).
    #[default]
    Config,
    /// Not recorded anywhere: open_clip's default (GELU) was used.
    Default,
}

/// Which model family the towers are: one vision and one text tower, two variants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Family {
    /// open_clip's own ViT CLIP: class token, `ln_pre`, pooled at the class token through
    /// `proj`; causal text pooled at end-of-text; LayerNorm eps 1e-5; cosine similarity.
    #[default]
    Clip,
    /// timm's SigLIP ViT in open_clip (`ViT-B-16-SigLIP`, ...): patch embedding with a bias, no
    /// class token, no `ln_pre`, a final LayerNorm then the attention-pooling head (`map`), no
    /// projection; bidirectional text pooled at its last position, a projection with a bias;
    /// LayerNorm eps 1e-6; the score is `sigmoid(exp(logit_scale) cos + logit_bias)`.
    Siglip,
}

impl Family {
    /// How this family's towers are built, aspect by aspect: the one place the families are
    /// told apart. Loaders, writers and generators match on the aspect they need (a third
    /// family is a new row here, and new variants only where one of its aspects is new).
    pub const fn anatomy(self) -> Anatomy {
        match self {
            Family::Clip => Anatomy {
                vision_head: HeadKind::ClassToken,
                text_pooling: TextPooling::CausalEndOfText,
                text_projection_bias: false,
                scoring: ScoringKind::Cosine,
                tokenizer: TokenizerKind::ClipBpe,
                ln_eps: 1e-5,
                whole_patches: true,
            },
            Family::Siglip => Anatomy {
                vision_head: HeadKind::AttentionPool,
                text_pooling: TextPooling::BidirectionalLast,
                text_projection_bias: true,
                scoring: ScoringKind::Sigmoid,
                tokenizer: TokenizerKind::SentencePiece,
                ln_eps: 1e-6,
                // timm's patch embedding drops a partial last patch (So400m/14 at 384 px: a
                // 27 x 27 grid of 378 px).
                whole_patches: false,
            },
        }
    }
}

/// What a family is made of (see `anatomy` on [`Family`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Anatomy {
    pub vision_head: HeadKind,
    pub text_pooling: TextPooling,
    /// Whether the text projection has a bias (`text_projection_bias`).
    pub text_projection_bias: bool,
    pub scoring: ScoringKind,
    pub tokenizer: TokenizerKind,
    /// LayerNorm's eps in both towers.
    pub ln_eps: f64,
    /// Whether the image size must be a whole number of patches (else a typo in a config).
    pub whole_patches: bool,
}

/// How the vision tower ends (the weights of each: `model::vision::VisionHead`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeadKind {
    /// A class token with `ln_pre`, pooled at the class token through `proj`.
    ClassToken,
    /// A patch embedding with a bias, a final LayerNorm, the attention-pooling head, no projection.
    AttentionPool,
}

/// How the text tower reads a prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TextPooling {
    /// CLIP: a causal mask, the feature at the end-of-text token (the largest id).
    CausalEndOfText,
    /// SigLIP: no mask, the whole padded context, the feature at the last position.
    BidirectionalLast,
}

/// How an image-text cosine becomes the score (the values of each: `model::Scoring`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScoringKind {
    /// The cosine itself.
    Cosine,
    /// `sigmoid(exp(logit_scale) cos + logit_bias)`, from the checkpoint's two scalars.
    Sigmoid,
}

/// The tokenizer a family's text tower reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// CLIP's byte-pair encoding, built into the program.
    ClipBpe,
    /// A SentencePiece vocabulary: the model's `tokenizer.json`, needed beside its weights.
    SentencePiece,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VisionConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub patch_size: usize,
    /// The image size the checkpoint was trained at (its positional embedding's grid × patch).
    pub image_size: usize,
    pub mlp_width: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TextConfig {
    pub width: usize,
    pub layers: usize,
    pub heads: usize,
    pub context_length: usize,
    pub vocab_size: usize,
    pub mlp_width: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClipConfig {
    pub embed_dim: usize,
    pub vision: VisionConfig,
    pub text: TextConfig,
    pub activation: Activation,
    #[serde(default)]
    pub activation_source: ActivationSource,
    #[serde(default)]
    pub family: Family,
}

impl VisionConfig {
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }
    pub fn head_dim(&self) -> usize {
        self.width / self.heads
    }
}

impl ClipConfig {
    /// open_clip `ViT-B-32.json` (LAION weights; `ViT-B-32-quickgelu` for OpenAI's).
    pub fn vit_b_32() -> Self {
        Self::openclip_vit(512, 768, 12, 32, 224, 512, 8, 12)
    }
    /// open_clip `ViT-B-16.json`; the reference demo's model (`laion2b_s34b_b88k`).
    pub fn vit_b_16() -> Self {
        Self::openclip_vit(512, 768, 12, 16, 224, 512, 8, 12)
    }
    /// open_clip `ViT-L-14.json`.
    pub fn vit_l_14() -> Self {
        Self::openclip_vit(768, 1024, 24, 14, 224, 768, 12, 12)
    }

    /// A preset by open_clip model name (`ViT-B-16`, `ViT-B-32-quickgelu`, ...).
    pub fn preset(name: &str) -> Option<Self> {
        let (base, quick) = match name.strip_suffix("-quickgelu") {
            Some(base) => (base, true),
            None => (name, false),
        };
        let mut config = match base {
            "ViT-B-32" => Self::vit_b_32(),
            "ViT-B-16" => Self::vit_b_16(),
            "ViT-L-14" => Self::vit_l_14(),
            "ViT-B-16-SigLIP" => Self::vit_b_16_siglip(224),
            "ViT-B-16-SigLIP-256" => Self::vit_b_16_siglip(256),
            "ViT-B-16-SigLIP-384" => Self::vit_b_16_siglip(384),
            "ViT-B-16-SigLIP-512" => Self::vit_b_16_siglip(512),
            _ => return None,
        };
        if quick {
            config.activation = Activation::QuickGelu;
        }
        Some(config)
    }

    #[allow(clippy::too_many_arguments)]
    fn openclip_vit(
        embed_dim: usize,
        vision_width: usize,
        vision_layers: usize,
        patch_size: usize,
        image_size: usize,
        text_width: usize,
        text_heads: usize,
        text_layers: usize,
    ) -> Self {
        Self {
            embed_dim,
            vision: VisionConfig {
                width: vision_width,
                layers: vision_layers,
                // open_clip: heads = width // head_width, head_width = 64.
                heads: vision_width / 64,
                patch_size,
                image_size,
                mlp_width: vision_width * 4,
            },
            text: TextConfig {
                width: text_width,
                layers: text_layers,
                heads: text_heads,
                context_length: 77,
                vocab_size: 49408,
                mlp_width: text_width * 4,
            },
            activation: Activation::Gelu,
            activation_source: ActivationSource::Config,
            family: Family::Clip,
        }
    }

    /// Parse open_clip's JSON model config (`model_configs/ViT-B-16.json`, or the
    /// `open_clip_config.json` published next to Hugging Face checkpoints, which wraps it in
    /// `model_cfg`).
    pub fn from_openclip_json(text: &str) -> Result<Self, LegradError> {
        #[derive(Deserialize)]
        struct Vision {
            image_size: serde_json::Value,
            layers: serde_json::Value,
            width: usize,
            patch_size: usize,
            #[serde(default = "default_head_width")]
            head_width: usize,
            #[serde(default = "default_mlp_ratio")]
            mlp_ratio: f64,
            #[serde(default)]
            timm_model_name: Option<String>,
            #[serde(default)]
            attentional_pool: bool,
            #[serde(default)]
            ls_init_value: Option<f64>,
            #[serde(default)]
            final_ln_after_pool: bool,
            #[serde(default)]
            pool_type: Option<String>,
        }
        #[derive(Deserialize)]
        struct Text {
            #[serde(default = "default_context")]
            context_length: usize,
            #[serde(default = "default_vocab")]
            vocab_size: usize,
            #[serde(default = "default_text_width")]
            width: usize,
            #[serde(default = "default_text_heads")]
            heads: usize,
            #[serde(default = "default_text_layers")]
            layers: usize,
            #[serde(default = "default_mlp_ratio")]
            mlp_ratio: f64,
            #[serde(default)]
            hf_model_name: Option<String>,
        }
        #[derive(Deserialize)]
        struct Model {
            embed_dim: usize,
            #[serde(default)]
            quick_gelu: bool,
            vision_cfg: Vision,
            text_cfg: Text,
        }
        fn default_head_width() -> usize {
            64
        }
        fn default_mlp_ratio() -> f64 {
            4.0
        }
        fn default_context() -> usize {
            77
        }
        fn default_vocab() -> usize {
            49408
        }
        fn default_text_width() -> usize {
            512
        }
        fn default_text_heads() -> usize {
            8
        }
        fn default_text_layers() -> usize {
            12
        }

        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| LegradError::Config(format!("not a JSON model config: {e}")))?;
        let value = value.get("model_cfg").cloned().unwrap_or(value);
        if value.pointer("/vision_cfg/timm_model_name").and_then(|n| n.as_str()).is_some_and(is_timm_siglip) {
            return Self::from_siglip_json(&value);
        }
        let m: Model = serde_json::from_value(value)
            .map_err(|e| LegradError::Config(format!("not an open_clip ViT model config: {e}")))?;
        let v = m.vision_cfg;
        if v.timm_model_name.is_some() {
            return Err(LegradError::Unsupported(
                "timm vision towers (SigLIP, ConvNeXt, ...): only open_clip's own ViT is supported".into(),
            ));
        }
        if v.attentional_pool {
            return Err(LegradError::Unsupported("attentional pooling (CoCa) vision towers".into()));
        }
        if v.ls_init_value.is_some() {
            return Err(LegradError::Unsupported("LayerScale (ls_init_value)".into()));
        }
        if v.final_ln_after_pool || v.pool_type.as_deref().is_some_and(|p| p != "tok") {
            return Err(LegradError::Unsupported("vision pooling other than the class token".into()));
        }
        if m.text_cfg.hf_model_name.is_some() {
            return Err(LegradError::Unsupported("Hugging Face text towers (hf_model_name)".into()));
        }
        let layers = v
            .layers
            .as_u64()
            .ok_or_else(|| LegradError::Unsupported("ResNet vision towers (layers given as a list)".into()))?
            as usize;
        let image_size = square_image_size(&v.image_size)?;
        let t = m.text_cfg;
        let config = Self {
            embed_dim: m.embed_dim,
            vision: VisionConfig {
                width: v.width,
                layers,
                heads: v.width / v.head_width.max(1),
                patch_size: v.patch_size,
                image_size,
                mlp_width: (v.width as f64 * v.mlp_ratio) as usize,
            },
            text: TextConfig {
                width: t.width,
                layers: t.layers,
                heads: t.heads,
                context_length: t.context_length,
                vocab_size: t.vocab_size,
                mlp_width: (t.width as f64 * t.mlp_ratio) as usize,
            },
            activation: if m.quick_gelu { Activation::QuickGelu } else { Activation::Gelu },
            activation_source: ActivationSource::Config,
            family: Family::Clip,
        };
        config.validate()?;
        Ok(config)
    }

    /// Parse a Hugging Face transformers `CLIPModel` `config.json`.
    pub fn from_transformers_json(text: &str) -> Result<Self, LegradError> {
        #[derive(Deserialize)]
        struct Vision {
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            patch_size: usize,
            image_size: usize,
            #[serde(default)]
            hidden_act: Option<String>,
            #[serde(default)]
            layer_norm_eps: Option<f64>,
        }
        #[derive(Deserialize)]
        struct Text {
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            max_position_embeddings: usize,
            vocab_size: usize,
            #[serde(default)]
            hidden_act: Option<String>,
        }
        #[derive(Deserialize)]
        struct Model {
            projection_dim: usize,
            vision_config: Vision,
            text_config: Text,
        }
        let m: Model = serde_json::from_str(text)
            .map_err(|e| LegradError::Config(format!("not a transformers CLIPModel config.json: {e}")))?;
        let act = |a: &Option<String>| -> Result<Activation, LegradError> {
            match a.as_deref().unwrap_or("quick_gelu") {
                "quick_gelu" => Ok(Activation::QuickGelu),
                "gelu" => Ok(Activation::Gelu),
                other => Err(LegradError::Unsupported(format!("hidden_act '{other}'"))),
            }
        };
        let activation = act(&m.vision_config.hidden_act)?;
        if act(&m.text_config.hidden_act)? != activation {
            return Err(LegradError::Unsupported("different activations in the two towers".into()));
        }
        if let Some(eps) = m.vision_config.layer_norm_eps
            && (eps - 1e-5).abs() > 1e-12
        {
            return Err(LegradError::Unsupported(format!("layer_norm_eps {eps}")));
        }
        let v = m.vision_config;
        let t = m.text_config;
        let config = Self {
            embed_dim: m.projection_dim,
            vision: VisionConfig {
                width: v.hidden_size,
                layers: v.num_hidden_layers,
                heads: v.num_attention_heads,
                patch_size: v.patch_size,
                image_size: v.image_size,
                mlp_width: v.intermediate_size,
            },
            text: TextConfig {
                width: t.hidden_size,
                layers: t.num_hidden_layers,
                heads: t.num_attention_heads,
                context_length: t.max_position_embeddings,
                vocab_size: t.vocab_size,
                mlp_width: t.intermediate_size,
            },
            activation,
            activation_source: ActivationSource::Config,
            family: Family::Clip,
        };
        config.validate()?;
        Ok(config)
    }

    /// open_clip's JSON config of a SigLIP model (`ViT-B-16-SigLIP.json`, `open_clip_config.json`
    /// of `timm/ViT-B-16-SigLIP`): the vision tower's size comes from timm's model name (the
    /// config names it and nothing else), or from `width`, `layers`, `head_width`, `patch_size`
    /// and `mlp_ratio` written in `vision_cfg` (open_clip ignores them for timm towers; the test
    /// models use them).
    fn from_siglip_json(value: &serde_json::Value) -> Result<Self, LegradError> {
        #[derive(Deserialize)]
        struct Vision {
            image_size: serde_json::Value,
            timm_model_name: String,
            #[serde(default)]
            timm_pool: Option<String>,
            #[serde(default)]
            timm_proj: Option<String>,
            #[serde(default)]
            width: Option<usize>,
            #[serde(default)]
            layers: Option<usize>,
            #[serde(default)]
            head_width: Option<usize>,
            #[serde(default)]
            patch_size: Option<usize>,
            #[serde(default)]
            mlp_ratio: Option<f64>,
        }
        #[derive(Deserialize)]
        struct Text {
            context_length: usize,
            vocab_size: usize,
            width: usize,
            heads: usize,
            layers: usize,
            #[serde(default)]
            mlp_ratio: Option<f64>,
            #[serde(default)]
            no_causal_mask: bool,
            #[serde(default)]
            proj_bias: bool,
            #[serde(default)]
            pool_type: Option<String>,
        }
        #[derive(Deserialize)]
        struct Model {
            embed_dim: usize,
            #[serde(default)]
            quick_gelu: bool,
            vision_cfg: Vision,
            text_cfg: Text,
        }
        let m: Model = serde_json::from_value(value.clone())
            .map_err(|e| LegradError::Config(format!("not an open_clip SigLIP model config: {e}")))?;
        let v = m.vision_cfg;
        let t = m.text_cfg;
        let unsupported = |what: String| Err(LegradError::Unsupported(what));
        if v.timm_pool.as_deref() != Some("map") || !matches!(v.timm_proj.as_deref(), Some("none") | None) {
            return unsupported(format!(
                "the SigLIP tower '{}' with timm_pool {:?} and timm_proj {:?}: only the attention-pool head ('map') without a projection",
                v.timm_model_name, v.timm_pool, v.timm_proj
            ));
        }
        if !t.no_causal_mask || t.pool_type.as_deref() != Some("last") || !t.proj_bias {
            return unsupported(
                "a SigLIP text tower other than open_clip's (no causal mask, last-token pool, projection with a bias)"
                    .into(),
            );
        }
        let image_size = square_image_size(&v.image_size)?;
        let name = v.timm_model_name.as_str();
        // timm 0.9.16's `vit_*_siglip_*` definitions: (width, depth, heads, mlp_ratio).
        let known = if name.contains("so400m") {
            Some((1152, 27, 16, 3.7362))
        } else if name.contains("large") {
            Some((1024, 24, 16, 4.0))
        } else if name.contains("base") {
            Some((768, 12, 12, 4.0))
        } else {
            None
        };
        let patch_from_name =
            name.split('_').find_map(|part| part.strip_prefix("patch").and_then(|p| p.parse::<usize>().ok()));
        let (width, layers, heads, ratio, patch) = match (v.width, v.layers, v.patch_size, known) {
            (Some(w), Some(l), Some(p), _) => {
                (w, l, w / v.head_width.unwrap_or(64).max(1), v.mlp_ratio.unwrap_or(4.0), p)
            }
            (_, _, _, Some((w, l, h, r))) => match patch_from_name {
                Some(p) => (w, l, h, r, p),
                None => return unsupported(format!("the timm model '{name}': its patch size is not in its name")),
            },
            _ => {
                return unsupported(format!(
                    "the timm model '{name}': not a SigLIP size this program knows (B/16, L/16, So400m/14); write width, layers, head_width, patch_size and mlp_ratio into vision_cfg"
                ));
            }
        };
        let config = Self {
            embed_dim: m.embed_dim,
            vision: VisionConfig {
                width,
                layers,
                heads,
                patch_size: patch,
                image_size,
                mlp_width: (width as f64 * ratio) as usize,
            },
            text: TextConfig {
                width: t.width,
                layers: t.layers,
                heads: t.heads,
                context_length: t.context_length,
                vocab_size: t.vocab_size,
                mlp_width: (t.width as f64 * t.mlp_ratio.unwrap_or(4.0)) as usize,
            },
            activation: if m.quick_gelu { Activation::QuickGelu } else { Activation::Gelu },
            activation_source: ActivationSource::Config,
            family: Family::Siglip,
        };
        if config.embed_dim != width {
            return Err(LegradError::Config(format!(
                "a SigLIP tower without a projection gives {width}-wide embeddings, but embed_dim is {}",
                config.embed_dim
            )));
        }
        config.validate()?;
        Ok(config)
    }

    /// open_clip's `ViT-B-16-SigLIP` (`timm/ViT-B-16-SigLIP`, WebLI) at `image_size` (224, 256,
    /// 384 or 512 as published).
    pub fn vit_b_16_siglip(image_size: usize) -> Self {
        let mut c = Self::vit_b_16();
        c.embed_dim = 768;
        c.vision.image_size = image_size;
        c.text =
            TextConfig { width: 768, layers: 12, heads: 12, context_length: 64, vocab_size: 32000, mlp_width: 3072 };
        c.family = Family::Siglip;
        c
    }

    /// Sanity checks that make later shape errors impossible.
    pub fn validate(&self) -> Result<(), LegradError> {
        let bad = |what: String| Err(LegradError::Config(what));
        let v = &self.vision;
        let t = &self.text;
        if v.width == 0 || v.layers == 0 || v.heads == 0 || v.patch_size == 0 || v.image_size == 0 {
            return bad("vision width, layers, heads, patch size and image size must be positive".into());
        }
        if !v.width.is_multiple_of(v.heads) {
            return bad(format!("vision width {} is not divisible by {} heads", v.width, v.heads));
        }
        // open_clip's CLIP configs are whole multiples, and a CLIP that is not is a typo.
        if self.family.anatomy().whole_patches && !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision image size {} is not a multiple of the patch size {}",
                v.image_size, v.patch_size
            ));
        }
        if t.width == 0 || t.layers == 0 || t.heads == 0 || t.context_length < 2 {
            return bad("text width, layers, heads must be positive and the context at least 2".into());
        }
        if !t.width.is_multiple_of(t.heads) {
            return bad(format!("text width {} is not divisible by {} heads", t.width, t.heads));
        }
        if self.embed_dim == 0 {
            return bad("embed_dim must be positive".into());
        }
        Ok(())
    }
}

/// open_clip's `vision_cfg.image_size`: a number, or a pair of equal numbers.
fn square_image_size(v: &serde_json::Value) -> Result<usize, LegradError> {
    match v {
        serde_json::Value::Number(n) => Ok(n.as_u64().unwrap_or(0) as usize),
        serde_json::Value::Array(a) if a.len() == 2 && a[0] == a[1] => Ok(a[0].as_u64().unwrap_or(0) as usize),
        other => Err(LegradError::Config(format!("vision image_size {other} is not a square size"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// open_clip 2.23.0's `model_configs/*.json` for the SigLIP family: every size goes through
    /// the one parser, its tower's size from timm's model name.
    #[test]
    fn siglip_family_configs() {
        let so400m = r#"{"embed_dim": 1152, "init_logit_bias": -10, "custom_text": true, "vision_cfg": {"image_size": 384, "timm_model_name": "vit_so400m_patch14_siglip_384", "timm_model_pretrained": false, "timm_pool": "map", "timm_proj": "none"}, "text_cfg": {"context_length": 64, "vocab_size": 32000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 1152, "heads": 16, "layers": 27, "mlp_ratio": 3.7362, "no_causal_mask": true, "proj_bias": true, "pool_type": "last", "norm_kwargs": {"eps": 1e-06}}}"#;
        let c = ClipConfig::from_openclip_json(so400m).unwrap();
        assert_eq!(c.family, Family::Siglip);
        assert_eq!((c.vision.width, c.vision.layers, c.vision.heads, c.vision.patch_size), (1152, 27, 16, 14));
        assert_eq!((c.vision.image_size, c.vision.mlp_width, c.text.mlp_width), (384, 4304, 4304));
        let large = r#"{"embed_dim": 1024, "init_logit_bias": -10, "custom_text": true, "vision_cfg": {"image_size": 256, "timm_model_name": "vit_large_patch16_siglip_256", "timm_model_pretrained": false, "timm_pool": "map", "timm_proj": "none"}, "text_cfg": {"context_length": 64, "vocab_size": 32000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 1024, "heads": 16, "layers": 24, "no_causal_mask": true, "proj_bias": true, "pool_type": "last", "norm_kwargs": {"eps": 1e-06}}}"#;
        let c = ClipConfig::from_openclip_json(large).unwrap();
        assert_eq!(
            (c.vision.width, c.vision.layers, c.vision.heads, c.vision.patch_size, c.vision.image_size),
            (1024, 24, 16, 16, 256)
        );
        // The hub's open_clip_config.json wraps the same in model_cfg.
        let b512 = r#"{"model_cfg": {"embed_dim": 768, "init_logit_bias": -10, "custom_text": true, "vision_cfg": {"image_size": 512, "timm_model_name": "vit_base_patch16_siglip_512", "timm_model_pretrained": false, "timm_pool": "map", "timm_proj": "none"}, "text_cfg": {"context_length": 64, "vocab_size": 32000, "hf_tokenizer_name": "timm/ViT-B-16-SigLIP", "tokenizer_kwargs": {"clean": "canonicalize"}, "width": 768, "heads": 12, "layers": 12, "no_causal_mask": true, "proj_bias": true, "pool_type": "last", "norm_kwargs": {"eps": 1e-06}}}}"#;
        assert_eq!(ClipConfig::from_openclip_json(b512).unwrap(), ClipConfig::vit_b_16_siglip(512));
        // A head this program does not run is refused by name.
        let avg = so400m.replace(r#""timm_pool": "map""#, r#""timm_pool": "avg""#);
        assert!(matches!(ClipConfig::from_openclip_json(&avg), Err(LegradError::Unsupported(_))));
    }
}

/// What was loaded, for the user.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub config: ClipConfig,
    /// "open_clip", "transformers" or "legrad-web model (q8)".
    pub source_format: String,
    /// Things the user should know (e.g. an assumed activation).
    pub notes: Vec<String>,
}
