//! The engine: a model, its tokenizer, and the caches that make a new prompt cheap.
//!
//! * text embeddings are cached per templated prompt;
//! * the image trace is made once per image and size ([`Engine::trace`]) and reused by every
//!   prompt and every method whose request it covers;
//! * reads from the device are asynchronous (WebGPU has no blocking read); native callers block
//!   on them with `pollster`.

use std::collections::HashMap;
use std::sync::Mutex;

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::error::{LegradError, Result};
use crate::explain::{ExplainOptions, Method, PromptMap, finish_maps};
use crate::load::ModelInfo;
use crate::model::{Clip, ImageTrace, TraceRequest};
use crate::preprocess::InputSize;
use crate::tokenizer::{Tokenizer, Tokens};

/// The reference demo's prompt template.
pub const DEFAULT_TEMPLATE: &str = "a photo of a {}.";

const TEXT_CACHE_CAPACITY: usize = 512;

/// A prompt ready for the text tower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedPrompt {
    /// What the user typed.
    pub prompt: String,
    /// After the template.
    pub text: String,
    pub tokens: Tokens,
}

/// One prompt's explanation.
#[derive(Clone, Debug, Serialize)]
pub struct ExplainedPrompt {
    pub prompt: String,
    pub text: String,
    /// The prompt was cut to the context length.
    pub truncated: bool,
    /// Cosine similarity of the image and text embeddings.
    pub score: f32,
    #[serde(skip)]
    pub map: PromptMap,
}

pub struct Engine {
    pub model: Clip,
    pub info: ModelInfo,
    pub tokenizer: Tokenizer,
    text_cache: Mutex<HashMap<String, Tensor<1>>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
}

/// Read a tensor back as f32 values.
pub async fn read_f32<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    let data: TensorData = t
        .into_data_async()
        .await
        .map_err(|e| LegradError::Backend(format!("{e:?}")))?;
    data.convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| LegradError::Backend(format!("{e:?}")))
}

/// Apply a template (`{}` marks where the prompt goes); `None` uses the prompt as it is.
pub fn apply_template(template: Option<&str>, prompt: &str) -> Result<String> {
    let prompt = prompt.trim();
    if prompt.is_empty() {
        return Err(LegradError::EmptyPrompt);
    }
    match template {
        None => Ok(prompt.to_string()),
        Some(t) if t.contains("{}") => Ok(t.replacen("{}", prompt, 1)),
        Some(t) => Err(LegradError::Input(format!(
            "the template '{t}' has no {{}} to put the prompt in"
        ))),
    }
}

impl Engine {
    pub fn new(model: Clip, info: ModelInfo) -> Result<Self> {
        Ok(Self {
            model,
            info,
            tokenizer: Tokenizer::new()?,
            text_cache: Mutex::new(HashMap::new()),
        })
    }

    pub fn device(&self) -> Device {
        self.model.vision.device()
    }

    /// Template and tokenize; an empty prompt is an error.
    pub fn prepare(&self, prompts: &[String], template: Option<&str>) -> Result<Vec<PreparedPrompt>> {
        if prompts.is_empty() {
            return Err(LegradError::EmptyPrompt);
        }
        prompts
            .iter()
            .map(|p| {
                let text = apply_template(template, p)?;
                let tokens = self.tokenizer.tokenize(&text, self.model.config.text.context_length);
                Ok(PreparedPrompt {
                    prompt: p.trim().to_string(),
                    text,
                    tokens,
                })
            })
            .collect()
    }

    /// Text embeddings `[P, E]`, from the cache where possible.
    pub fn encode(&self, prompts: &[PreparedPrompt]) -> Result<Tensor<2>> {
        let mut cache = self.text_cache.lock().unwrap_or_else(|e| e.into_inner());
        let missing: Vec<&PreparedPrompt> = prompts
            .iter()
            .filter(|p| !cache.contains_key(&p.text))
            .collect();
        if !missing.is_empty() {
            let seqs: Vec<Vec<u32>> = missing.iter().map(|p| p.tokens.ids.clone()).collect();
            let emb = self.model.text.encode(&seqs)?;
            if cache.len() + missing.len() > TEXT_CACHE_CAPACITY {
                cache.clear();
            }
            for (i, p) in missing.iter().enumerate() {
                let row: Tensor<1> = emb.clone().narrow(0, i, 1).squeeze_dim(0);
                cache.insert(p.text.clone(), row);
            }
        }
        let rows: Vec<Tensor<1>> = prompts.iter().map(|p| cache[&p.text].clone()).collect();
        Ok(Tensor::stack(rows, 0))
    }

    /// Preprocessed pixels `[3, H, W]` (normalised) → the image's trace. Run once per image and
    /// size; every later prompt reuses it.
    pub fn trace(&self, pixels: Vec<f32>, size: InputSize, request: &TraceRequest) -> Result<ImageTrace> {
        if pixels.len() != 3 * size.width * size.height {
            return Err(LegradError::Input(format!(
                "expected {} values for a 3x{}x{} image, got {}",
                3 * size.width * size.height,
                size.height,
                size.width,
                pixels.len()
            )));
        }
        let t: Tensor<3> = Tensor::from_data(
            TensorData::new(pixels, [3, size.height, size.width]),
            &self.device(),
        );
        self.model.vision.forward_with_trace(t, request)
    }

    /// The trace request that serves every method in `methods`.
    pub fn request_for(&self, methods: &[Method], options: &ExplainOptions) -> Result<TraceRequest> {
        let depth = self.model.vision.depth();
        let mut request: Option<TraceRequest> = None;
        for m in methods {
            let r = m.explainer(options).trace_request(depth)?;
            request = Some(match request {
                Some(q) => q.merge(&r),
                None => r,
            });
        }
        request.ok_or_else(|| LegradError::Input("no method chosen".into()))
    }

    /// Explain prompts on a traced image: maps at grid and image resolution, and scores.
    pub async fn explain(
        &self,
        trace: &ImageTrace,
        prompts: &[PreparedPrompt],
        method: Method,
        options: &ExplainOptions,
    ) -> Result<Vec<ExplainedPrompt>> {
        let explainer = method.explainer(options);
        let request = explainer.trace_request(self.model.vision.depth())?;
        if !trace.request.covers(&request) {
            return Err(LegradError::Input(format!(
                "this image was traced for other settings; trace it again for {}",
                method.name()
            )));
        }
        let texts = self.encode(prompts)?;
        let scores = texts.clone().matmul(trace.embedding.clone().unsqueeze_dim(1));
        let grid_maps = explainer.explain(&self.model, trace, texts)?;
        let summed = read_f32(grid_maps.summed).await?;
        let per_layer = match grid_maps.per_layer {
            Some((layers, t)) => Some((layers, read_f32(t).await?)),
            None => None,
        };
        let scores = read_f32(scores).await?;
        let maps = finish_maps(
            &summed,
            per_layer.as_ref().map(|(l, d)| (l.as_slice(), d.as_slice())),
            prompts.len(),
            trace.grid,
            trace.patch_size,
        );
        Ok(prompts
            .iter()
            .zip(maps)
            .zip(scores)
            .map(|((p, map), score)| ExplainedPrompt {
                prompt: p.prompt.clone(),
                text: p.text.clone(),
                truncated: p.tokens.truncated,
                score,
                map,
            })
            .collect())
    }

    /// Normalised image embedding `[E]` from preprocessed pixels.
    pub async fn embed_image(&self, pixels: Vec<f32>, size: InputSize) -> Result<Vec<f32>> {
        let t: Tensor<4> = Tensor::from_data(
            TensorData::new(pixels, [1, 3, size.height, size.width]),
            &self.device(),
        );
        read_f32(self.model.vision.forward(t)?).await
    }

    /// Normalised text embeddings `[P, E]`, row-major.
    pub async fn embed_texts(&self, prompts: &[PreparedPrompt]) -> Result<Vec<f32>> {
        read_f32(self.encode(prompts)?).await
    }
}
