//! The engine: a model, its tokenizer, and the caches that make a new prompt cheap.
//!
//! * text embeddings are cached per templated prompt;
//! * the image trace is made once per image and size ([`Engine::trace`]) and reused by every
//!   prompt and every method whose request it covers;
//! * reads from the device are asynchronous (WebGPU has no blocking read); native callers block
//!   on them with `pollster`.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use burn::tensor::{Device, Tensor, TensorData};
use serde::Serialize;

use crate::compute::ComputePolicy;
use crate::error::{LegradError, Result};
pub use crate::explain::ExplainedPrompt;
use crate::explain::legrad::{LegradModel, LegradTrace, score_jacobians};
use crate::explain::rows::RowHelpers;
use crate::explain::trace::{MAP_CACHE_CAPACITY, placeholder_trace, trace_image};
use crate::explain::words::{WordRelevance, token_relevance, word_relevance};
use crate::explain::{Context, ExplainOptions, ImageTrace, Method, TraceRequest, finish_maps};
use crate::load::ModelInfo;
use crate::model::Clip;
use crate::model::int_linear::share::ImageHelpers;
use crate::model::text::PromptWordTrace;
use crate::model::vision::VisionHead;
use crate::preprocess::InputSize;
use crate::presence::{PresenceRule, presence};
pub use crate::readback::read_f32;
use crate::tokenizer::{TextTokenizer, Tokens};

pub use crate::config::DEFAULT_TEMPLATE;

const TEXT_CACHE_CAPACITY: usize = 512;

/// On a GPU, kernels are compiled for the shapes they meet (cubecl specialises matmuls and
/// reductions on them), so a prompt count or a prompt length not seen before compiles
/// pipelines on the keystroke path: 0.5 to 2 s each on a software adapter (docs/benchmarks-history.md §4).
/// There, the prompts of a request are explained in chunks of at most the largest of these
/// counts, each padded to the next count (a padded prompt is a zero text embedding, whose map is
/// zero and is dropped), and text is encoded at the next of [`TOKEN_BUCKETS`] tokens; warm-up
/// compiles every combination once. On the CPU nothing compiles and nothing is padded.
pub const PROMPT_BUCKETS: [usize; 4] = [1, 2, 4, 8];

/// Token counts text is padded to on a GPU (see [`PROMPT_BUCKETS`]); the last is capped at the
/// model's context length. Padding after the end-of-text token cannot change its feature (the
/// mask is causal).
pub const TOKEN_BUCKETS: [usize; 3] = [16, 32, 77];

/// The smallest bucket that holds `n`, or the largest.
fn bucket(n: usize, buckets: &[usize]) -> usize {
    buckets.iter().copied().find(|&b| b >= n).unwrap_or(buckets[buckets.len() - 1])
}

/// A prompt ready for the text tower.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedPrompt {
    /// What the user typed.
    pub prompt: String,
    /// After the template.
    pub text: String,
    pub tokens: Tokens,
    /// Each word of `prompt` and its token positions in `tokens`.
    pub words: Vec<(String, std::ops::Range<usize>)>,
}

/// A prompt's text embedding and what its words' relevance needs, from one forward pass.
#[derive(Clone, Debug)]
struct TextEntry {
    embedding: Tensor<1>,
    words: Arc<PromptWordTrace>,
}

/// How fast an engine is on its device, for choosing between backends (see [`Engine::speed`]).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Speed {
    /// Seconds for a new prompt: its text encoding and LeGrad on a trace at the model's own
    /// size (median).
    pub new_prompt_s: f64,
    /// Seconds for an image encode at the model's own size, estimated from one block.
    pub image_s: f64,
    /// Seconds for a new prompt's text encoding alone (median).
    pub text_s: f64,
}

pub struct Engine {
    pub model: Clip,
    pub info: ModelInfo,
    pub tokenizer: TextTokenizer,
    text_cache: Mutex<HashMap<String, TextEntry>>,
    /// Which path each step takes on the vision tower's device ([`crate::compute`]).
    policy: ComputePolicy,
    /// What LeGrad keeps per model (its folded weights; SigLIP's "a photo of a" embedding).
    legrad: LegradModel,
    /// The text tower on another device (the CPU), when it encodes faster there than next to
    /// the vision tower ([`Engine::with_text_tower`]); its embeddings are moved to the vision
    /// tower's device.
    text_elsewhere: Option<crate::model::TextTower>,
    /// Grids, methods and layer settings whose per-prompt kernels warm-up has compiled, and
    /// whether the text tower's have been.
    warmed: Mutex<std::collections::HashSet<WarmKey>>,
    text_warmed: std::sync::atomic::AtomicBool,
    /// Where the explanations' time went since [`Engine::take_steps`] last read it.
    steps: Mutex<ExplainSteps>,
}

/// Milliseconds the explanations spent in each step (summed over calls): what the page reports
/// beside its timing, so that a step's share of a prompt is measured in the same run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ExplainSteps {
    /// Text encoding (new prompts only: the rest come from the cache).
    pub text_ms: f64,
    /// The maps and scores.
    pub maps_ms: f64,
    /// The prompts' word relevance ([`Engine::words`]).
    pub words_ms: f64,
}

/// A grid, a method and a layer setting whose kernels warm-up has compiled.
type WarmKey = ((usize, usize), Method, i64);

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("info", &self.info).finish()
    }
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
        Some(t) => Err(LegradError::Input(format!("the template '{t}' has no {{}} to put the prompt in"))),
    }
}

impl Engine {
    pub fn new(model: Clip, info: ModelInfo) -> Result<Self> {
        let tokenizer = TextTokenizer::for_model(&model.config, model.tokenizer_json.as_deref())?;
        let legrad = LegradModel::new(&model, &tokenizer)?;
        Ok(Self {
            legrad,
            policy: ComputePolicy::for_device(&model.vision.device()),
            tokenizer,
            text_cache: Mutex::new(HashMap::new()),
            warmed: Mutex::new(Default::default()),
            text_warmed: Default::default(),
            steps: Mutex::new(ExplainSteps::default()),
            text_elsewhere: None,
            model,
            info,
        })
    }

    pub fn device(&self) -> Device {
        self.model.vision.device()
    }

    /// The same engine with another compute policy (the page's reading of its adapter, the
    /// CLI's flags, the tests' forced paths). Its processor must be the device's.
    pub fn with_policy(mut self, policy: ComputePolicy) -> Result<Self> {
        let own = ComputePolicy::for_device(&self.device());
        if own.is_gpu() != policy.is_gpu() {
            return Err(LegradError::Input(format!(
                "a compute policy for {:?} does not fit this engine's device ({:?})",
                policy.processor, own.processor
            )));
        }
        self.policy = policy;
        Ok(self)
    }

    /// The time [`explain_with`](Self::explain_with) spent per step since the last call (then
    /// set back to zero).
    pub fn take_steps(&self) -> ExplainSteps {
        std::mem::take(&mut *self.steps.lock().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn policy(&self) -> &ComputePolicy {
        &self.policy
    }

    /// What the explainers are given: the model, LeGrad's per-model values, the policy.
    pub fn context(&self) -> Context<'_> {
        Context { model: &self.model, legrad: &self.legrad, policy: &self.policy }
    }

    /// Encode text with `tower` (on another device, typically the CPU) instead of the model's
    /// own text tower: for a small text tower next to a GPU whose every launch costs
    /// milliseconds (a software adapter), where a prompt's dozens of tiny kernels cost more than
    /// the whole tower on the CPU. Its embeddings are moved to the vision tower's device.
    pub fn with_text_tower(mut self, tower: crate::model::TextTower) -> Self {
        self.text_elsewhere = Some(tower);
        self.text_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
        self
    }

    /// Where the text is encoded: the vision tower's device, or the one given to
    /// [`Engine::with_text_tower`].
    pub fn text_device(&self) -> Device {
        self.text_tower().weights.text_projection.val().device()
    }

    fn text_tower(&self) -> &crate::model::TextTower {
        self.text_elsewhere.as_ref().unwrap_or(&self.model.text)
    }

    /// Does the text tower run on a device that compiles per shape?
    fn pad_text(&self) -> bool {
        self.policy.is_gpu() && self.text_elsewhere.is_none()
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
                let tokens = self.tokenizer.tokenize(&text, self.model.config.text.context_length)?;
                let words = self.tokenizer.word_spans(template, p, &tokens.ids);
                Ok(PreparedPrompt { prompt: p.trim().to_string(), text, tokens, words })
            })
            .collect()
    }

    /// Text embeddings `[P, E]`, from the cache where possible.
    pub fn encode(&self, prompts: &[PreparedPrompt]) -> Result<Tensor<2>> {
        Ok(self.encode_for(prompts, self.word_layer(ExplainOptions::default().layer_index)?)?.0)
    }

    /// The first text block whose attention a prompt's word relevance reads for LeGrad's
    /// `layer_index`: as many of the text tower's last blocks as LeGrad sums of the vision
    /// tower's (all of them when the text tower has fewer).
    pub fn word_layer(&self, layer_index: i64) -> Result<usize> {
        let depth = self.model.vision.depth();
        let used = depth - crate::explain::first_layer(layer_index, depth)?;
        Ok(self.text_tower().weights.blocks.len().saturating_sub(used))
    }

    /// Text embeddings `[P, E]` and each prompt's word trace from block `word_layer` on, from
    /// the cache where it holds those blocks.
    fn encode_for(
        &self,
        prompts: &[PreparedPrompt],
        word_layer: usize,
    ) -> Result<(Tensor<2>, Vec<Arc<PromptWordTrace>>)> {
        let mut cache = self.text_cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<&PreparedPrompt> = Vec::new();
        for p in prompts {
            let known = cache.get(&p.text).is_some_and(|e| e.words.first_layer <= word_layer);
            if !known && !missing.iter().any(|m| m.text == p.text) {
                missing.push(p);
            }
        }
        if !missing.is_empty() {
            if cache.len() + missing.len() > TEXT_CACHE_CAPACITY {
                cache.clear();
            }
            let pad = self.pad_text();
            let chunk = if pad { PROMPT_BUCKETS[PROMPT_BUCKETS.len() - 1] } else { missing.len() };
            for part in missing.chunks(chunk) {
                let seqs: Vec<Vec<u32>> = part.iter().map(|p| p.tokens.ids.clone()).collect();
                let (emb, words) = self.encode_sequences(seqs, word_layer)?;
                for (i, (p, w)) in part.iter().zip(words).enumerate() {
                    let row: Tensor<1> = emb.clone().narrow(0, i, 1).squeeze_dim(0);
                    cache.insert(p.text.clone(), TextEntry { embedding: row, words: Arc::new(w) });
                }
            }
        }
        let rows: Vec<Tensor<1>> = prompts.iter().map(|p| cache[&p.text].embedding.clone()).collect();
        let words = prompts.iter().map(|p| cache[&p.text].words.clone()).collect();
        Ok((Tensor::stack(rows, 0), words))
    }

    /// Embeddings `[P, E]` on the vision tower's device, and word traces from `word_layer` on,
    /// of token sequences (at most the largest prompt bucket where text is padded).
    fn encode_sequences(
        &self,
        mut seqs: Vec<Vec<u32>>,
        word_layer: usize,
    ) -> Result<(Tensor<2>, Vec<PromptWordTrace>)> {
        let tower = self.text_tower();
        if !self.pad_text() {
            let (emb, words) = tower.encode_traced(&seqs, 0, word_layer)?;
            return Ok((emb.to_device(&self.device()), words));
        }
        // Padded rows repeat the last prompt; their embeddings are dropped.
        let p = seqs.len();
        let rows = bucket(p, &PROMPT_BUCKETS);
        while seqs.len() < rows {
            seqs.push(seqs[seqs.len() - 1].clone());
        }
        let needed = seqs.iter().map(|s| s.len()).max().unwrap_or(1);
        let context = self.model.config.text.context_length;
        let buckets: Vec<usize> = TOKEN_BUCKETS.iter().map(|&b| b.min(context)).collect();
        let (emb, mut words) = tower.encode_traced(&seqs, bucket(needed, &buckets), word_layer)?;
        words.truncate(p);
        Ok((emb, words))
    }

    /// Presence of each prompt from its cosine and shown score ([`crate::presence`]).
    fn presences(&self, cosines: &[f32], scores: &[f32]) -> Vec<f32> {
        let rule = PresenceRule::for_scoring(self.model.scoring);
        cosines.iter().zip(scores).map(|(&c, &s)| presence(rule, c, s)).collect()
    }

    /// Each prompt's words and how much of its score rests on each, on `trace`'s image
    /// ([`crate::explain::words`]), for LeGrad's `options.layer_index`. Apart from
    /// [`explain`](Self::explain) so that a map never waits for its words (the page sends them
    /// in an answer of their own); the text's word trace comes from the text encoding the map
    /// made, and each prompt's words are kept with the trace (by word layer and text, up to
    /// [`MAP_CACHE_CAPACITY`]).
    pub async fn words(
        &self,
        trace: &ImageTrace,
        prompts: &[PreparedPrompt],
        options: &ExplainOptions,
    ) -> Result<Vec<Vec<WordRelevance>>> {
        let t0 = web_time::Instant::now();
        let word_layer = self.word_layer(options.layer_index)?;
        let compute = |missing: Vec<PreparedPrompt>| async move {
            let (_, traces) = self.encode_for(&missing, word_layer)?;
            self.word_rows(trace, &missing, &traces).await
        };
        let out =
            kept_by_text(&trace.words, prompts, |t| (word_layer, t.to_string()), compute, "a prompt's words").await?;
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        steps.words_ms += (web_time::Instant::now() - t0).as_secs_f64() * 1e3;
        Ok(out)
    }

    /// The word relevance of `prompts` from their word traces.
    async fn word_rows(
        &self,
        trace: &ImageTrace,
        prompts: &[PreparedPrompt],
        traces: &[Arc<PromptWordTrace>],
    ) -> Result<Vec<Vec<WordRelevance>>> {
        let tower = self.text_tower();
        // On the text tower's device, through the host: a move between devices reads
        // synchronously, which a GPU in the browser cannot.
        let values = trace.embedding_values().await?;
        let n = values.len();
        let image: Tensor<1> = Tensor::from_data(TensorData::new(values, [n]), &self.text_device());
        let rows = traces.iter().map(|t| token_relevance(tower, t, &image)).collect::<Result<Vec<_>>>()?;
        let lengths: Vec<usize> = rows.iter().map(|r| r.dims()[0]).collect();
        let all = read_f32(Tensor::cat(rows, 0)).await?;
        let mut at = 0;
        Ok(prompts
            .iter()
            .zip(lengths)
            .map(|(p, n)| {
                let r = &all[at..at + n];
                at += n;
                word_relevance(&p.words, r)
            })
            .collect())
    }

    /// Preprocessed pixels `[3, H, W]` (normalised) → the image's trace. Run once per image and
    /// size; every later prompt reuses it.
    pub fn trace(&self, pixels: Vec<f32>, size: InputSize, request: &TraceRequest) -> Result<ImageTrace> {
        // Without helpers nothing in the image step waits: its future is ready at the first poll.
        let mut step = std::pin::pin!(self.trace_with(pixels, size, request, None));
        match step.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(trace) => trace,
            std::task::Poll::Pending => {
                Err(LegradError::Backend("the image step waited with no helper to wait for".into()))
            }
        }
    }

    /// Is the image step at `size` shared where helpers hold their shares (enough tokens:
    /// [`ComputePolicy::shared_step_tokens`])?
    pub fn shares_image_step(&self, size: InputSize) -> bool {
        let p = self.model.vision.patch_size;
        let tokens = (size.height / p) * (size.width / p) + self.model.vision.prefix_tokens();
        tokens >= self.policy.shared_step_tokens
    }

    /// The side of the smallest square image whose step is shared
    /// ([`shares_image_step`](Self::shares_image_step)).
    pub fn shared_step_side(&self) -> usize {
        let v = &self.model.vision;
        let grid = (self.policy.shared_step_tokens.saturating_sub(v.prefix_tokens()) as f64).sqrt().ceil();
        grid as usize * v.patch_size
    }

    /// [`trace`](Self::trace) with the vision tower's integer products shared with `helpers`
    /// (other threads holding their shares: [`crate::model::int_linear::share`]) where the
    /// image is large enough ([`shares_image_step`](Self::shares_image_step)). The same trace
    /// but for the shares' rounding.
    pub async fn trace_shared(
        &self,
        pixels: Vec<f32>,
        size: InputSize,
        request: &TraceRequest,
        helpers: &dyn ImageHelpers,
    ) -> Result<ImageTrace> {
        let helpers = self.shares_image_step(size).then_some(helpers);
        self.trace_with(pixels, size, request, helpers).await
    }

    async fn trace_with(
        &self,
        pixels: Vec<f32>,
        size: InputSize,
        request: &TraceRequest,
        helpers: Option<&dyn ImageHelpers>,
    ) -> Result<ImageTrace> {
        if pixels.len() != 3 * size.width * size.height {
            return Err(LegradError::Input(format!(
                "expected {} values for a 3x{}x{} image, got {}",
                3 * size.width * size.height,
                size.height,
                size.width,
                pixels.len()
            )));
        }
        let t: Tensor<3> = Tensor::from_data(TensorData::new(pixels, [3, size.height, size.width]), &self.device());
        let trace = trace_image(&self.model, &self.legrad, t, request, helpers).await?;
        // With the image, where the user waits anyway, not with the first prompt.
        self.score_jacobians(&trace)?;
        Ok(trace)
    }

    /// The trace request that serves every method in `methods`.
    pub fn request_for(&self, methods: &[Method], options: &ExplainOptions) -> Result<TraceRequest> {
        let depth = self.model.vision.depth();
        let mut request: Option<TraceRequest> = None;
        for m in methods {
            m.supports(self.head())?;
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
        self.explain_with(trace, prompts, method, options, None).await
    }

    /// [`explain`](Self::explain), with CLIP's LeGrad on the CPU sharing its per-prompt rows
    /// with `helpers` (other threads: [`crate::explain::rows`]). The same maps.
    pub async fn explain_with(
        &self,
        trace: &ImageTrace,
        prompts: &[PreparedPrompt],
        method: Method,
        options: &ExplainOptions,
        helpers: Option<&dyn RowHelpers>,
    ) -> Result<Vec<ExplainedPrompt>> {
        method.supports(self.head())?;
        let explainer = method.explainer(options);
        let request = explainer.trace_request(self.model.vision.depth())?;
        if !trace.request.covers(&request) {
            return Err(LegradError::Input(format!(
                "this image was traced for other settings; trace it again for {}",
                method.name()
            )));
        }
        let t0 = web_time::Instant::now();
        // With the word trace, which the words read later ([`Engine::words`]): one text forward.
        let (texts, _) = self.encode_for(prompts, self.word_layer(options.layer_index)?)?;
        let t1 = web_time::Instant::now();
        let split = helpers.filter(|h| self.shares_rows(method, *h)).map(|h| (h, options.layer_index));
        let (summed, per_layer, scores) = self.explain_texts(explainer.as_ref(), method, trace, texts, split).await?;
        let maps = finish_maps(
            &summed,
            per_layer.as_ref().map(|(l, d)| (l.as_slice(), d.as_slice())),
            prompts.len(),
            trace.grid,
            trace.patch_size,
            method.map_order(self.head()),
        );
        let t2 = web_time::Instant::now();
        let shown: Vec<f32> = scores.iter().map(|&c| self.model.score(c)).collect();
        let presence = self.presences(&scores, &shown);
        {
            let ms = |a: web_time::Instant, b: web_time::Instant| (b - a).as_secs_f64() * 1e3;
            let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
            steps.text_ms += ms(t0, t1);
            steps.maps_ms += ms(t1, t2);
        }
        Ok(prompts
            .iter()
            .zip(maps)
            .zip(shown)
            .zip(presence)
            .map(|(((p, map), score), presence)| ExplainedPrompt {
                prompt: p.prompt.clone(),
                text: p.text.clone(),
                truncated: p.tokens.truncated,
                score,
                presence,
                map,
            })
            .collect())
    }

    /// [`explain_with`](Self::explain_with), keeping each prompt's map in `trace` (by method,
    /// layer index and templated text, up to [`MAP_CACHE_CAPACITY`]): only the prompts not
    /// explained on this trace before are computed, so typing a line next to N shown explains
    /// that line alone. The page's path; the plain forms always compute (the tests compare
    /// paths on one trace).
    pub async fn explain_cached(
        &self,
        trace: &ImageTrace,
        prompts: &[PreparedPrompt],
        method: Method,
        options: &ExplainOptions,
        helpers: Option<&dyn RowHelpers>,
    ) -> Result<Vec<ExplainedPrompt>> {
        let compute = |missing: Vec<PreparedPrompt>| async move {
            self.explain_with(trace, &missing, method, options, helpers).await
        };
        let key = |t: &str| (method, options.layer_index, t.to_string());
        let kept = kept_by_text(&trace.maps, prompts, key, compute, "a prompt's map").await?;
        // The map of the same text under the prompt as typed this time.
        let out = prompts.iter().zip(kept).map(|(p, r)| ExplainedPrompt { prompt: p.prompt.clone(), ..r }).collect();
        Ok(out)
    }

    /// Does `method` share its rows with `helpers` here (CLIP's LeGrad on the CPU)?
    fn shares_rows(&self, method: Method, helpers: &dyn RowHelpers) -> bool {
        helpers.count() > 0
            && method == Method::LeGrad
            && matches!(self.head(), VisionHead::ClassToken(_))
            && !self.compiles_kernels()
    }

    /// Where [`explain_with`](Self::explain_with) would share `method`'s rows with `helpers`:
    /// hand them their rows of `trace` now (after a new image) instead of with its first prompt.
    pub async fn prime_helpers(
        &self,
        trace: &ImageTrace,
        method: Method,
        options: &ExplainOptions,
        helpers: &dyn RowHelpers,
    ) -> Result<()> {
        if !self.shares_rows(method, helpers) {
            return Ok(());
        }
        crate::explain::rows::prime(&self.context(), trace, options.layer_index, helpers).await
    }

    /// Maps and scores for text embeddings `[P, E]`, read back: summed grid maps `[P, cells]`,
    /// per-layer maps `[L, P, cells]` where the method has layers, and scores `[P]`. On a GPU,
    /// in chunks padded to [`PROMPT_BUCKETS`] (a method that explains prompt by prompt gets one
    /// at a time), so that only warmed-up shapes run; on the CPU, in chunks whose intermediates
    /// stay within [`ComputePolicy::prompt_chunk_bytes`] (each prompt's map is its own: the
    /// same maps in any chunks).
    async fn explain_texts(
        &self,
        explainer: &dyn crate::explain::Explainer,
        method: Method,
        trace: &ImageTrace,
        texts: Tensor<2>,
        split: Option<(&dyn RowHelpers, i64)>,
    ) -> Result<(Vec<f32>, Option<(Vec<usize>, Vec<f32>)>, Vec<f32>)> {
        let [p, e] = texts.dims();
        let (chunk, pad) = match (self.policy.is_gpu(), method.batches_prompts()) {
            (false, _) => (self.cpu_prompt_chunk(trace.tokens()), false),
            (true, true) => (PROMPT_BUCKETS[PROMPT_BUCKETS.len() - 1], true),
            (true, false) => (1, false),
        };
        let cells = trace.grid.0 * trace.grid.1;
        let mut summed = Vec::with_capacity(p * cells);
        let mut scores = Vec::with_capacity(p);
        let mut layers: Option<(Vec<usize>, Vec<Vec<f32>>)> = None;
        for start in (0..p).step_by(chunk.max(1)) {
            let k = chunk.min(p - start);
            let mut part = texts.clone().narrow(0, start, k);
            if pad && bucket(k, &PROMPT_BUCKETS) > k {
                let zeros = Tensor::zeros([bucket(k, &PROMPT_BUCKETS) - k, e], &texts.device());
                part = Tensor::cat(vec![part, zeros], 0);
            }
            let pb = part.dims()[0];
            let part_scores = part.clone().matmul(trace.embedding.clone().unsqueeze_dim(1)); // [Pb, 1]
            let grid_maps = match split {
                Some((helpers, layer_index)) => {
                    crate::explain::rows::explain_split(&self.context(), trace, part, layer_index, helpers).await?
                }
                None => explainer.explain(&self.context(), trace, part)?,
            };
            // One read for the chunk (each read waits for the device: a round trip that costs
            // more than a kernel on some adapters): the summed maps, the scores, the layers.
            let mut parts = vec![grid_maps.summed.reshape([pb * cells]), part_scores.reshape([pb])];
            if let Some((_, t)) = &grid_maps.per_layer {
                let n: usize = t.dims().iter().product();
                parts.push(t.clone().reshape([n]));
            }
            let all = read_f32(Tensor::cat(parts, 0)).await?;
            summed.extend_from_slice(&all[..k * cells]);
            scores.extend_from_slice(&all[pb * cells..][..k]);
            if let Some((ls, _)) = grid_maps.per_layer {
                let d = &all[pb * cells + pb..];
                let entry = layers.get_or_insert_with(|| (ls.clone(), vec![Vec::new(); ls.len()]));
                for (li, rows) in entry.1.iter_mut().enumerate() {
                    rows.extend_from_slice(&d[li * pb * cells..][..k * cells]);
                }
            }
        }
        let per_layer = layers.map(|(ls, rows)| (ls, rows.concat()));
        Ok((summed, per_layer, scores))
    }

    /// How many prompts the CPU explains at once on an image of `tokens` tokens: the
    /// attention-shaped intermediates of a prompt are `tokens² · heads` values a layer.
    fn cpu_prompt_chunk(&self, tokens: usize) -> usize {
        let per_prompt = 4 * tokens * tokens * self.model.vision.heads;
        (self.policy.prompt_chunk_bytes / per_prompt.max(1)).max(1)
    }

    /// On a GPU, compile the per-prompt kernels for a trace's grid, for every prompt count and
    /// prompt length a request can bring (once per grid; the page calls it after a new image's
    /// trace, before its first map). On the CPU, where nothing compiles, the trace's share of
    /// every prompt's work: CLIP's LeGrad starts each prompt from the score's Jacobian of the
    /// image (`explain::legrad::score_jacobians`), made here with the image instead of with its
    /// first prompt.
    pub async fn warm_up_prompts(&self, trace: &ImageTrace, method: Method, options: &ExplainOptions) -> Result<()> {
        if !self.policy.is_gpu() {
            if method == Method::LeGrad {
                self.score_jacobians(trace)?;
            }
            return Ok(());
        }
        let key = (trace.grid, method, options.layer_index);
        if self.warmed.lock().unwrap_or_else(|e| e.into_inner()).insert(key) {
            // The explanation, for each padded count: zero texts are enough to compile it.
            let explainer = method.explainer(options);
            // Each padded count, and one count that needs padding (what padding a chunk uses).
            let counts = PROMPT_BUCKETS.iter().copied().chain([PROMPT_BUCKETS[1] + 1]);
            for rows in counts {
                let texts = Tensor::zeros([rows, self.model.config.embed_dim], &self.device());
                self.explain_texts(explainer.as_ref(), method, trace, texts, None).await?;
            }
        }
        if self.pad_text() && !self.text_warmed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            // The text encoding, for each padded count and length.
            let context = self.model.config.text.context_length;
            let lengths: std::collections::BTreeSet<usize> = TOKEN_BUCKETS.iter().map(|&b| b.min(context)).collect();
            for &rows in &PROMPT_BUCKETS {
                for &len in &lengths {
                    let seqs = vec![self.tokenizer.tokenize("warm up", context)?.ids; rows];
                    read_f32(self.text_tower().encode_padded(&seqs, len)?).await?;
                }
            }
        }
        Ok(())
    }

    /// Prepare the engine for the page's first requests at `size`: on a GPU, compile the kernels
    /// an image forward and LeGrad use (a blank image's trace, then an explanation); on the CPU,
    /// where nothing compiles, fill the per-model caches (LeGrad's per-layer constants) on a
    /// placeholder trace, without paying for an image forward. With `helpers`, the explanation
    /// is shared with them as a prompt's is: each takes rows of the model's size once before the
    /// first image (its memory grown and its code run then, not with the first prompt, where a
    /// first hold cost twice a later one: docs/benchmarks-history.md §7).
    pub async fn warm_up(
        &self,
        size: InputSize,
        options: &ExplainOptions,
        helpers: Option<&dyn RowHelpers>,
    ) -> Result<()> {
        let request = self.request_for(&[Method::LeGrad], options)?;
        let trace = if self.compiles_kernels() {
            let trace = self.trace(vec![0.0; 3 * size.width * size.height], size, &request)?;
            read_f32(trace.embedding.clone()).await?;
            trace
        } else {
            let grid = self.model.vision.grid_for(size.height, size.width)?;
            placeholder_trace(&self.model, grid, &request)
        };
        self.warm_up_prompts(&trace, Method::LeGrad, options).await?;
        let prompts = self.prepare(&["warm up".to_string()], None)?;
        self.explain_with(&trace, &prompts, Method::LeGrad, options, helpers).await?;
        Ok(())
    }

    fn head(&self) -> &VisionHead {
        &self.model.vision.weights.head
    }

    /// CLIP's LeGrad starts each prompt from the score's Jacobian of the image: made once per
    /// trace (kept in it), here with the image rather than with its first prompt.
    fn score_jacobians(&self, trace: &ImageTrace) -> Result<()> {
        if let Ok(LegradTrace::ClassToken(t)) = trace.legrad()
            && !t.layers.is_empty()
        {
            score_jacobians(&self.model, t, trace.tokens())?;
        }
        Ok(())
    }

    /// Does this engine's device compile kernels (a GPU runtime), so that a first call costs
    /// more than the next?
    pub fn compiles_kernels(&self) -> bool {
        self.policy.is_gpu()
    }

    /// Time what a user waits for, at the model's own size: a new prompt (text encoding and
    /// LeGrad on a placeholder trace; median of `runs` after one untimed run that compiles) and
    /// an image encode (one block forward, untimed once, then timed and multiplied by the depth).
    pub async fn speed(&self, runs: usize) -> Result<Speed> {
        use burn::tensor::Distribution;
        let native = self.model.config.vision.image_size;
        let grid = self.model.vision.grid_for(native, native)?;
        let options = ExplainOptions::default();
        let request = self.request_for(&[Method::LeGrad], &options)?;
        let trace = placeholder_trace(&self.model, grid, &request);
        let mut times = Vec::with_capacity(runs);
        for r in 0..=runs {
            let prompts = self.prepare(&[format!("timing run {r}")], None)?;
            let t = web_time::Instant::now();
            self.explain(&trace, &prompts, Method::LeGrad, &options).await?;
            if r > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
        };
        let new_prompt_s = median(times);
        let text_s = self.text_speed(runs).await?;
        let v = &self.model.vision;
        let tokens: Tensor<3> =
            Tensor::random([1, grid.0 * grid.1 + 1, v.width], Distribution::Uniform(-1.0, 1.0), &self.device());
        let block = &v.weights.blocks[0];
        let mut block_s = 0.0;
        for r in 0..2 {
            let t = web_time::Instant::now();
            read_f32(block.forward(tokens.clone(), None, v.activation)).await?;
            if r == 1 {
                block_s = t.elapsed().as_secs_f64();
            }
        }
        Ok(Speed { new_prompt_s, image_s: block_s * v.depth() as f64, text_s })
    }

    /// Seconds to encode one new prompt's text, read back (median of `runs` after one untimed
    /// run that compiles).
    pub async fn text_speed(&self, runs: usize) -> Result<f64> {
        let mut times = Vec::with_capacity(runs);
        for r in 0..=runs {
            let prompts = self.prepare(&[format!("text timing run {r}")], None)?;
            let t = web_time::Instant::now();
            read_f32(self.encode(&prompts)?).await?;
            if r > 0 {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        times.sort_by(f64::total_cmp);
        Ok(times.get(times.len() / 2).copied().unwrap_or(f64::NAN))
    }

    /// The model's text tower, for [`Engine::with_text_tower`] on another engine.
    pub fn into_text_tower(self) -> crate::model::TextTower {
        self.model.text
    }

    /// Normalised image embedding `[E]` from preprocessed pixels.
    pub async fn embed_image(&self, pixels: Vec<f32>, size: InputSize) -> Result<Vec<f32>> {
        let t: Tensor<4> = Tensor::from_data(TensorData::new(pixels, [1, 3, size.height, size.width]), &self.device());
        read_f32(self.model.vision.forward(t)?).await
    }

    /// Normalised image embeddings `[B, E]`, row-major, of `batch` preprocessed images (`[B, 3, H, W]`).
    pub async fn embed_images(&self, pixels: Vec<f32>, batch: usize, size: InputSize) -> Result<Vec<f32>> {
        if pixels.len() != batch * 3 * size.height * size.width {
            return Err(LegradError::Input(format!("expected {batch} images of 3x{}x{}", size.height, size.width)));
        }
        let t: Tensor<4> =
            Tensor::from_data(TensorData::new(pixels, [batch, 3, size.height, size.width]), &self.device());
        read_f32(self.model.vision.forward(t)?).await
    }

    /// Normalised text embeddings `[P, E]`, row-major.
    pub async fn embed_texts(&self, prompts: &[PreparedPrompt]) -> Result<Vec<f32>> {
        read_f32(self.encode(prompts)?).await
    }
}

/// `prompts`' values kept with a trace in `cache` by `key` of their text: those not there are
/// computed once each by `compute` (a text typed twice once), the rest read back; past
/// [`MAP_CACHE_CAPACITY`] the cache starts again. The page's paths (maps, words): a new line
/// next to N shown costs one.
async fn kept_by_text<K, V, Fut>(
    cache: &Mutex<HashMap<K, V>>,
    prompts: &[PreparedPrompt],
    key: impl Fn(&str) -> K,
    compute: impl FnOnce(Vec<PreparedPrompt>) -> Fut,
    what: &str,
) -> Result<Vec<V>>
where
    K: Eq + std::hash::Hash,
    V: Clone,
    Fut: Future<Output = Result<Vec<V>>>,
{
    let missing: Vec<PreparedPrompt> = {
        let known = cache.lock().unwrap_or_else(|e| e.into_inner());
        let mut missing: Vec<PreparedPrompt> = Vec::new();
        for p in prompts {
            if !known.contains_key(&key(&p.text)) && !missing.iter().any(|m| m.text == p.text) {
                missing.push(p.clone());
            }
        }
        missing
    };
    let texts: Vec<String> = missing.iter().map(|p| p.text.clone()).collect();
    let fresh = if missing.is_empty() { Vec::new() } else { compute(missing).await? };
    let mut known = cache.lock().unwrap_or_else(|e| e.into_inner());
    let fresh: HashMap<String, V> = texts.into_iter().zip(fresh).collect();
    let out = prompts
        .iter()
        .map(|p| fresh.get(&p.text).or_else(|| known.get(&key(&p.text))).cloned())
        .collect::<Option<Vec<_>>>()
        .ok_or_else(|| LegradError::Input(format!("{what} went missing; type it again")))?;
    if known.len() + fresh.len() > MAP_CACHE_CAPACITY {
        known.clear();
    }
    for (text, v) in fresh {
        known.insert(key(&text), v);
    }
    Ok(out)
}
