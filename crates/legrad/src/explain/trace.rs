//! What an image's forward pass leaves for the explainers: one trace per reader, each with no
//! optional fields, built from the blocks' values as the vision tower gives them out
//! ([`crate::model::vision::BlockRun`]). Made once per image and size; every prompt reuses it.
//!
//! * [`LegradTrace`](super::legrad::LegradTrace): LeGrad's closed-form terms per layer, by head;
//! * [`AttentionTrace`]: attention probabilities per layer (Rollout, raw attention);
//! * [`TokenTrace`]: each block's input and output tokens (GradCAM, CheferCAM, and the autodiff
//!   forms the tests check LeGrad's closed form with).
//!
//! The trace also owns what is cached per image: LeGrad's score Jacobians (in its trace) and the
//! maps already explained on it ([`ImageTrace::maps`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use burn::tensor::{Distribution, Tensor};

use super::Method;
use super::legrad_trace::{LegradModel, LegradTrace, LegradTraceBuilder, missing_layer};
use crate::error::{LegradError, Result};
use crate::model::int_linear::share::ImageHelpers;
use crate::model::vision::{TracedBlock, l2_normalize};
use crate::model::{Clip, Keep};

/// What an explainer reads of an image's forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reads {
    /// LeGrad's closed-form terms (LEGRAD.md section 5).
    LeGrad,
    /// Post-softmax attention probabilities.
    Attention,
    /// Each block's input and output tokens.
    Tokens,
}

/// What a trace must hold: each reader, from which layer on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceRequest {
    reads: BTreeMap<Reads, usize>,
}

impl TraceRequest {
    pub fn new(reads: Reads, first_layer: usize) -> Self {
        Self { reads: BTreeMap::from([(reads, first_layer)]) }
    }

    /// This request and `reads` from `first_layer` on.
    pub fn with(self, reads: Reads, first_layer: usize) -> Self {
        self.merge(&Self::new(reads, first_layer))
    }

    /// The union of two requests.
    pub fn merge(&self, other: &Self) -> Self {
        let mut reads = self.reads.clone();
        for (&r, &l) in &other.reads {
            let e = reads.entry(r).or_insert(l);
            *e = (*e).min(l);
        }
        Self { reads }
    }

    /// Does a trace made for `self` hold everything `other` needs?
    pub fn covers(&self, other: &Self) -> bool {
        other.reads.iter().all(|(r, &l)| self.reads.get(r).is_some_and(|&have| have <= l))
    }

    /// The first layer any reader keeps.
    pub fn first_layer(&self) -> usize {
        self.reads.values().copied().min().unwrap_or(0)
    }

    pub fn reads(&self) -> impl Iterator<Item = (Reads, usize)> + '_ {
        self.reads.iter().map(|(&r, &l)| (r, l))
    }
}

/// Attention probabilities `[H, N, N]` of layers `first_layer..depth`.
#[derive(Clone, Debug)]
pub struct AttentionTrace {
    pub first_layer: usize,
    pub probs: Vec<Tensor<3>>,
}

/// Block inputs and outputs `[N, W]` of layers `first_layer..depth`.
#[derive(Clone, Debug)]
pub struct TokenTrace {
    pub first_layer: usize,
    pub inputs: Vec<Tensor<2>>,
    pub outputs: Vec<Tensor<2>>,
}

/// Layer `index` of a per-layer list that starts at `first_layer`.
fn layer_of<T>(list: &[T], first_layer: usize, index: usize) -> Result<&T> {
    index.checked_sub(first_layer).and_then(|i| list.get(i)).ok_or_else(|| missing_layer(index))
}

impl AttentionTrace {
    pub fn layer(&self, index: usize) -> Result<&Tensor<3>> {
        layer_of(&self.probs, self.first_layer, index)
    }
}

impl TokenTrace {
    /// Block `index`'s input tokens `[N, W]`.
    pub fn input(&self, index: usize) -> Result<&Tensor<2>> {
        layer_of(&self.inputs, self.first_layer, index)
    }

    /// Block `index`'s output tokens `[N, W]`.
    pub fn output(&self, index: usize) -> Result<&Tensor<2>> {
        layer_of(&self.outputs, self.first_layer, index)
    }
}

/// One reader's trace.
#[derive(Debug)]
pub enum ReaderTrace {
    LeGrad(LegradTrace),
    Attention(AttentionTrace),
    Tokens(TokenTrace),
}

/// A map already explained on a trace, by method, layer index and templated text.
pub type MapKey = (Method, i64, String);

/// Maps kept per trace (a 448 map is 0.8 MB); past it the cache starts again.
pub const MAP_CACHE_CAPACITY: usize = 48;

/// What one image's forward pass leaves for explainers: computed once per image and size.
#[derive(Debug)]
pub struct ImageTrace {
    /// Grid `(rows, cols)`.
    pub grid: (usize, usize),
    pub patch_size: usize,
    /// Tokens before the patches (1: CLIP's class token; 0: SigLIP).
    pub prefix_tokens: usize,
    /// The normalised image embedding `[E]`.
    pub embedding: Tensor<1>,
    pub request: TraceRequest,
    /// Unique in the process: names the trace to those who hold a copy of parts of it
    /// ([`super::rows::RowHelpers`]).
    pub id: u64,
    readers: Vec<ReaderTrace>,
    /// Maps explained on this trace, by method, layer index and text: a new prompt next to N
    /// shown costs one prompt, not N + 1 (a prompt's map does not depend on the prompts beside
    /// it). Filled by [`crate::Engine::explain_cached`].
    pub(crate) maps: Mutex<HashMap<MapKey, super::ExplainedPrompt>>,
    /// Each prompt's words on this image, by the text block they start at and text
    /// ([`crate::Engine::words`]).
    pub(crate) words: Mutex<HashMap<(usize, String), Vec<super::words::WordRelevance>>>,
    /// `embedding` read back, once ([`embedding_values`](Self::embedding_values)).
    embedding_read: std::sync::OnceLock<Vec<f32>>,
}

fn next_trace_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl ImageTrace {
    /// Tokens per image: the patches and the prefix.
    pub fn tokens(&self) -> usize {
        self.grid.0 * self.grid.1 + self.prefix_tokens
    }

    pub fn legrad(&self) -> Result<&LegradTrace> {
        self.reader("LeGrad's terms", |r| if let ReaderTrace::LeGrad(t) = r { Some(t) } else { None })
    }

    pub fn attention(&self) -> Result<&AttentionTrace> {
        self.reader("attention probabilities", |r| if let ReaderTrace::Attention(t) = r { Some(t) } else { None })
    }

    pub fn token_trace(&self) -> Result<&TokenTrace> {
        self.reader("block inputs and outputs", |r| if let ReaderTrace::Tokens(t) = r { Some(t) } else { None })
    }

    /// The reader's trace `pick` finds, or an error saying the trace lacks `what`.
    fn reader<'a, T>(&'a self, what: &str, pick: impl Fn(&'a ReaderTrace) -> Option<&'a T>) -> Result<&'a T> {
        self.readers.iter().find_map(pick).ok_or_else(|| {
            LegradError::Input(format!("the image trace lacks {what}: trace the image with this method's request"))
        })
    }

    /// The image embedding's values, read from its device once (a GPU has no synchronous
    /// read in the browser: a tensor moves to another device through these).
    pub async fn embedding_values(&self) -> Result<Vec<f32>> {
        if let Some(v) = self.embedding_read.get() {
            return Ok(v.clone());
        }
        let v = crate::readback::read_f32(self.embedding.clone()).await?;
        Ok(self.embedding_read.get_or_init(|| v).clone())
    }

    /// How many maps this trace keeps.
    pub fn cached_maps(&self) -> usize {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn new(
        model: &Clip,
        grid: (usize, usize),
        embedding: Tensor<1>,
        request: &TraceRequest,
        readers: Vec<ReaderTrace>,
    ) -> Self {
        Self {
            grid,
            patch_size: model.vision.patch_size,
            prefix_tokens: model.vision.prefix_tokens(),
            embedding,
            request: request.clone(),
            id: next_trace_id(),
            readers,
            maps: Mutex::new(HashMap::new()),
            words: Mutex::new(HashMap::new()),
            embedding_read: std::sync::OnceLock::new(),
        }
    }
}

/// A reader's trace while the blocks run.
enum Building {
    LeGrad(LegradTraceBuilder),
    Attention(AttentionTrace),
    Tokens(TokenTrace),
}

impl Building {
    fn new(reads: Reads, first_layer: usize, model: &Clip) -> Self {
        match reads {
            Reads::LeGrad => Building::LeGrad(LegradTraceBuilder::new(model, first_layer)),
            Reads::Attention => Building::Attention(AttentionTrace { first_layer, probs: Vec::new() }),
            Reads::Tokens => Building::Tokens(TokenTrace { first_layer, inputs: Vec::new(), outputs: Vec::new() }),
        }
    }

    fn take(&mut self, b: &TracedBlock<'_>, model: &Clip, legrad: &LegradModel) -> Result<()> {
        match self {
            Building::LeGrad(t) => t.take(b, model, legrad)?,
            Building::Attention(t) if b.index >= t.first_layer => {
                t.probs.push(b.out.attention.probs.kept()?.clone().squeeze_dim(0))
            }
            Building::Tokens(t) if b.index >= t.first_layer => {
                t.inputs.push(b.input.clone().squeeze_dim(0));
                t.outputs.push(b.out.output.clone().squeeze_dim(0));
            }
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> ReaderTrace {
        match self {
            Building::LeGrad(t) => ReaderTrace::LeGrad(t.finish()),
            Building::Attention(t) => ReaderTrace::Attention(t),
            Building::Tokens(t) => ReaderTrace::Tokens(t),
        }
    }
}

/// One image `[3, H, W]` through the vision tower, keeping what `request` asks for; its
/// products shared with `helpers` where they hold their shares
/// ([`VisionTower::run_shared`](crate::model::VisionTower::run_shared)). Without helpers
/// nothing in it waits.
pub async fn trace_image(
    model: &Clip,
    legrad: &LegradModel,
    pixels: Tensor<3>,
    request: &TraceRequest,
    helpers: Option<&dyn ImageHelpers>,
) -> Result<ImageTrace> {
    let depth = model.vision.depth();
    if let Some((_, l)) = request.reads().find(|&(_, l)| l >= depth) {
        return Err(LegradError::Input(format!("layer {l} does not exist: the vision tower has {depth} layers")));
    }
    let mut run = match helpers {
        Some(h) => model.vision.run_shared(pixels, h)?,
        None => model.vision.run(pixels)?,
    };
    let mut building: Vec<Building> = request.reads().map(|(r, l)| Building::new(r, l, model)).collect();
    run.skip_to(request.first_layer()).await?;
    // The attention's probabilities only where a reader of them asked (LeGrad reads none).
    let keep = if request.reads().any(|(r, _)| r == Reads::Attention) { Keep::Everything } else { Keep::Terms };
    while let Some(block) = run.next_block(keep).await? {
        for b in &mut building {
            b.take(&block, model, legrad)?;
        }
    }
    let grid = run.grid;
    let embedding = run.finish().await?;
    Ok(ImageTrace::new(model, grid, embedding, request, building.into_iter().map(Building::finish).collect()))
}

/// A trace of the right shapes for a `grid`, filled with seeded noise instead of an image's
/// values: what timing the per-prompt path needs (its cost does not depend on the values)
/// without paying for an image forward (seconds for a ViT-B/16 on a CPU).
pub fn placeholder_trace(model: &Clip, grid: (usize, usize), request: &TraceRequest) -> ImageTrace {
    let v = &model.vision;
    let device = v.device();
    let n = grid.0 * grid.1 + v.prefix_tokens();
    let (w, h, depth) = (v.width, v.heads, v.depth());
    let noise2 = |shape: [usize; 2]| -> Tensor<2> { Tensor::random(shape, Distribution::Uniform(-1.0, 1.0), &device) };
    let readers = request
        .reads()
        .map(|(reads, first_layer)| {
            let layers = first_layer..depth;
            match reads {
                Reads::LeGrad => ReaderTrace::LeGrad(LegradTrace::placeholder(model, grid, first_layer)),
                Reads::Attention => ReaderTrace::Attention(AttentionTrace {
                    first_layer,
                    probs: layers
                        .map(|_| Tensor::<3>::random([h, n, n], Distribution::Uniform(0.0, 1.0), &device))
                        .collect(),
                }),
                Reads::Tokens => ReaderTrace::Tokens(TokenTrace {
                    first_layer,
                    inputs: layers.clone().map(|_| noise2([n, w])).collect(),
                    outputs: layers.map(|_| noise2([n, w])).collect(),
                }),
            }
        })
        .collect();
    let embedding = l2_normalize(Tensor::random([v.embed_dim()], Distribution::Uniform(-1.0, 1.0), &device));
    ImageTrace::new(model, grid, embedding, request, readers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_merge_and_cover_by_reader_and_layer() {
        let legrad = TraceRequest::new(Reads::LeGrad, 10);
        let both = legrad.clone().with(Reads::Tokens, 11).with(Reads::LeGrad, 4);
        assert_eq!(both.first_layer(), 4);
        assert!(both.covers(&legrad));
        assert!(both.covers(&TraceRequest::new(Reads::Tokens, 11)));
        assert!(!both.covers(&TraceRequest::new(Reads::Tokens, 3)), "layer 3 is not kept");
        assert!(!both.covers(&TraceRequest::new(Reads::Attention, 11)), "no attention kept");
        assert!(!legrad.covers(&both));
        assert_eq!(both.reads().collect::<Vec<_>>(), vec![(Reads::LeGrad, 4), (Reads::Tokens, 11)]);
    }
}
