//! open_clip's text tower (`CLIP.encode_text`): token and positional embeddings, causal blocks,
//! `ln_final`, the feature at the end-of-text token, `@ text_projection`. SigLIP's variant
//! (open_clip's `TextTransformer` with `no_causal_mask`, `pool_type='last'`, `proj_bias`): no
//! mask, the whole padded context runs, the feature is the last position's, the projection has
//! a bias.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};

use super::vision::l2_normalize;
use super::{Block, LayerNorm, tensor2};
use crate::compute::LinearProducts;
use crate::config::{Activation, ClipConfig};
use crate::error::{LegradError, Result};
use crate::weights::{RawTensor, StoredDType, TensorMap, quant};

#[derive(Module, Debug)]
pub struct TextWeights {
    /// `[context, W]`.
    pub positional_embedding: Param<Tensor<2>>,
    pub blocks: Vec<Block>,
    pub ln_final: LayerNorm,
    /// `[W, E]`.
    pub text_projection: Param<Tensor<2>>,
    /// SigLIP's projection bias `[E]`.
    pub text_projection_bias: Option<Param<Tensor<1>>>,
}

#[derive(Debug)]
pub struct TextTower {
    pub weights: TextWeights,
    /// `[vocab, W]`, on the host, as stored (f32, f16 or quantized): a prompt needs a handful
    /// of rows, not a 49408-row table on the GPU.
    token_embedding: RawTensor,
    pub vocab_size: usize,
    pub width: usize,
    pub context_length: usize,
    pub activation: Activation,
    pub pooling: TextPooling,
}

/// What one prompt's words' relevance needs of the text tower's forward pass
/// ([`crate::explain::words`]): per block from `first_layer` on, at the pooled token.
#[derive(Clone, Debug)]
pub struct PromptWordTrace {
    pub first_layer: usize,
    pub layers: Vec<WordLayer>,
}

/// One block's share of a [`PromptWordTrace`].
#[derive(Clone, Debug)]
pub struct WordLayer {
    /// The values `[H, T, d]` of the tokens the pooled row attends to.
    pub values: Tensor<3>,
    /// `ln_2` at the pooled row `[1, W]`.
    pub ln_2: crate::model::LayerNormStats<2>,
    /// The MLP's pre-activation at the pooled row `[1, M]`.
    pub mlp_pre: Tensor<2>,
    /// The block's output at the pooled row `[1, W]`.
    pub output: Tensor<2>,
}

/// How the text tower reads a prompt (one of a family's aspects: `anatomy` on [`crate::config::Family`]).
pub use crate::config::TextPooling;

impl TextTower {
    pub(crate) fn load(
        config: &ClipConfig,
        map: &mut TensorMap,
        products: LinearProducts,
        device: &Device,
    ) -> Result<Self> {
        let t = &config.text;
        let eps = config.family.anatomy().ln_eps;
        let token_embedding = map.take_raw("token_embedding.weight", &[t.vocab_size, t.width])?;
        let pos = map.take("positional_embedding", &[t.context_length, t.width])?;
        let blocks = (0..t.layers)
            .map(|i| {
                // A large tower's layers on the integer grid (half the bytes of f32 per weight; a
                // prompt's few rows read each weight once either way); `few_rows`' f32 products else.
                let prefix = format!("transformer.resblocks.{i}");
                Block::load(map, &prefix, t.width, t.heads, t.mlp_width, eps, products, device)
            })
            .collect::<Result<Vec<_>>>()?;
        let ln_final = LayerNorm::load(map, "ln_final", t.width, eps, device)?;
        let proj = map.take("text_projection", &[t.width, config.embed_dim])?;
        let anatomy = config.family.anatomy();
        let pooling = anatomy.text_pooling;
        let proj_bias = if anatomy.text_projection_bias {
            Some(Param::from_tensor(super::tensor1(map.take("text_projection_bias", &[config.embed_dim])?, device)))
        } else {
            None
        };
        Ok(Self {
            weights: TextWeights {
                positional_embedding: Param::from_tensor(tensor2(pos, [t.context_length, t.width], device)),
                blocks,
                ln_final,
                text_projection: Param::from_tensor(tensor2(proj, [t.width, config.embed_dim], device)),
                text_projection_bias: proj_bias,
            },
            token_embedding,
            vocab_size: t.vocab_size,
            width: t.width,
            context_length: t.context_length,
            activation: config.activation,
            pooling,
        })
    }

    /// Row `token` of the token embedding.
    fn embedding_row(&self, token: usize) -> Vec<f32> {
        let w = self.width;
        let t = &self.token_embedding;
        match t.dtype {
            StoredDType::F32 => t.bytes[token * w * 4..(token + 1) * w * 4]
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
            StoredDType::Q8 { block } | StoredDType::Q4 { block } => {
                let values = quant::values(&RawTensor {
                    shape: vec![1, w],
                    dtype: t.dtype,
                    bytes: match t.dtype {
                        StoredDType::Q4 { .. } => t.bytes[token * w / 2..(token + 1) * w / 2].to_vec(),
                        _ => t.bytes[token * w..(token + 1) * w].to_vec(),
                    },
                    scales: vec![],
                });
                let srow = &t.scales[(token / block) * w..][..w];
                values.iter().zip(srow).map(|(&q, &s)| q as f32 * s).collect()
            }
            _ => {
                let size = t.bytes.len() / t.numel().max(1);
                RawTensor {
                    shape: vec![1, w],
                    dtype: t.dtype,
                    bytes: t.bytes[token * w * size..(token + 1) * w * size].to_vec(),
                    scales: vec![],
                }
                .to_f32()
            }
        }
    }

    /// Encode token sequences (start token first, as the tokenizer gives them, at most the
    /// context length) into L2-normalised embeddings `[P, E]`.
    ///
    /// The feature is read at the highest token id (the end-of-text token, as open_clip's
    /// `argmax`). The mask is causal, so only the tokens up to it are run: the padding the
    /// reference also runs cannot change that feature.
    pub fn encode(&self, sequences: &[Vec<u32>]) -> Result<Tensor<2>> {
        self.encode_padded(sequences, 0)
    }

    /// [`encode`](Self::encode), running at least `len` tokens (at most the context length): a
    /// fixed shape for a GPU, which compiles its kernels per shape. The feature is the same.
    pub fn encode_padded(&self, sequences: &[Vec<u32>], len: usize) -> Result<Tensor<2>> {
        Ok(self.encode_traced(sequences, len, self.weights.blocks.len())?.0)
    }

    /// [`encode_padded`](Self::encode_padded), keeping for each sequence what its words'
    /// relevance needs ([`crate::explain::words`]) of the blocks from `first_layer` on (none
    /// when it is the depth): the same embeddings, from the same forward pass.
    pub fn encode_traced(
        &self,
        sequences: &[Vec<u32>],
        len: usize,
        first_layer: usize,
    ) -> Result<(Tensor<2>, Vec<PromptWordTrace>)> {
        let (mut x, mask, pool_at) = self.embed(sequences, len)?;
        let w = self.width;
        let mut traces: Vec<PromptWordTrace> =
            pool_at.iter().map(|_| PromptWordTrace { first_layer, layers: Vec::new() }).collect();
        for (l, block) in self.weights.blocks.iter().enumerate() {
            if l < first_layer {
                x = block.forward(x, mask.clone(), self.activation);
                continue;
            }
            // Block::forward's steps, keeping the pooled row's values on the way.
            let attention = block.attn.forward(block.ln_1.forward(x.clone()), mask.clone());
            let u = x + attention.output;
            let (n2, ln_2) = block.ln_2.forward_with_stats(u.clone());
            let h = block.mlp.c_fc.forward(n2);
            x = u + block.mlp.project(self.activation, h.clone());
            let [_, heads, t, d] = attention.values.dims();
            let m = h.dims()[2];
            for (i, &at) in pool_at.iter().enumerate() {
                // The pooled row attends to the tokens up to it (causal) or to all (SigLIP).
                let keys = if self.pooling == TextPooling::BidirectionalLast { t } else { at + 1 };
                let row =
                    |v: &Tensor<3>, width: usize| v.clone().slice([i..i + 1, at..at + 1, 0..width]).reshape([1, width]);
                traces[i].layers.push(WordLayer {
                    values: attention
                        .values
                        .clone()
                        .slice([i..i + 1, 0..heads, 0..keys, 0..d])
                        .reshape([heads, keys, d]),
                    ln_2: crate::model::LayerNormStats {
                        x_hat: row(&ln_2.x_hat, w),
                        rstd: ln_2.rstd.clone().slice([i..i + 1, at..at + 1, 0..1]).reshape([1, 1]),
                    },
                    mlp_pre: row(&h, m),
                    output: row(&x, w),
                });
            }
        }
        let x = self.weights.ln_final.forward(x);
        let pooled: Vec<Tensor<2>> = pool_at
            .iter()
            .enumerate()
            .map(|(i, &at)| x.clone().slice([i..i + 1, at..at + 1, 0..w]).reshape([1, w]))
            .collect();
        Ok((l2_normalize(self.project(Tensor::cat(pooled, 0))), traces))
    }

    /// Pooled rows `[P, W]` after `ln_final` through the projection (and SigLIP's bias), not
    /// yet normalised.
    pub fn project(&self, pooled: Tensor<2>) -> Tensor<2> {
        let z = pooled.matmul(self.weights.text_projection.val());
        match &self.weights.text_projection_bias {
            Some(bias) => z + bias.val().unsqueeze(),
            None => z,
        }
    }

    /// Every block's input `[1, T, W]` for one token sequence, the mask, and the pooled
    /// token's position: what [`crate::explain::words::token_relevance_autodiff`] runs from.
    pub fn block_inputs(&self, sequence: &[u32]) -> Result<(Vec<Tensor<3>>, Option<Tensor<2>>, usize)> {
        let (mut x, mask, pool_at) = self.embed(std::slice::from_ref(&sequence.to_vec()), 0)?;
        let mut inputs = Vec::with_capacity(self.weights.blocks.len());
        for block in &self.weights.blocks {
            inputs.push(x.clone());
            x = block.forward(x, mask.clone(), self.activation);
        }
        Ok((inputs, mask, pool_at[0]))
    }

    /// Each block's linear-layer inputs for one token sequence, up to its end-of-text token
    /// (see [`Block::forward_linear_inputs`](super::Block::forward_linear_inputs)).
    pub fn linear_inputs(&self, sequence: &[u32]) -> Result<Vec<[Tensor<3>; 4]>> {
        let (mut x, mask, _) = self.embed(std::slice::from_ref(&sequence.to_vec()), 0)?;
        let mut inputs = Vec::with_capacity(self.weights.blocks.len());
        for block in &self.weights.blocks {
            let (out, seen) = block.forward_linear_inputs(x, mask.clone(), self.activation);
            inputs.push(seen);
            x = out;
        }
        Ok(inputs)
    }

    /// Token and positional embeddings `[P, len, W]` up to the last end-of-text token (or
    /// `min_len` tokens, within the context), the causal mask, and where each sequence's feature
    /// is read. SigLIP: the whole context (the tokenizer pads to it), no mask, the last position.
    fn embed(&self, sequences: &[Vec<u32>], min_len: usize) -> Result<(Tensor<3>, Option<Tensor<2>>, Vec<usize>)> {
        let device = self.weights.text_projection.val().device();
        let siglip = self.pooling == TextPooling::BidirectionalLast;
        if siglip && let Some(seq) = sequences.iter().find(|s| s.len() != self.context_length) {
            return Err(LegradError::Input(format!(
                "a SigLIP token sequence must fill the context ({} tokens, padded by the tokenizer); this one has {}",
                self.context_length,
                seq.len()
            )));
        }
        if sequences.is_empty() {
            return Err(LegradError::Input("no prompts to encode".into()));
        }
        let mut pool_at = Vec::with_capacity(sequences.len());
        for seq in sequences {
            if seq.is_empty() || seq.len() > self.context_length {
                return Err(LegradError::Input(format!(
                    "a token sequence has {} tokens; the context holds 1 to {}",
                    seq.len(),
                    self.context_length
                )));
            }
            if let Some(&bad) = seq.iter().find(|&&t| t as usize >= self.vocab_size) {
                return Err(LegradError::Input(format!(
                    "token id {bad} is outside the model's vocabulary of {}",
                    self.vocab_size
                )));
            }
            if siglip {
                pool_at.push(seq.len() - 1);
                continue;
            }
            // First position of the maximum, as torch.argmax.
            let max = *seq.iter().max().unwrap_or(&0);
            pool_at.push(seq.iter().position(|&t| t == max).unwrap_or(0));
        }
        let p = sequences.len();
        let len = (pool_at.iter().max().copied().unwrap_or(0) + 1).max(min_len.min(self.context_length));
        let w = self.width;
        let mut x = vec![0f32; p * len * w];
        for (i, seq) in sequences.iter().enumerate() {
            for j in 0..len {
                let token = seq.get(j).copied().unwrap_or(0) as usize;
                x[(i * len + j) * w..][..w].copy_from_slice(&self.embedding_row(token));
            }
        }
        let x: Tensor<3> = Tensor::from_data(TensorData::new(x, [p, len, w]), &device);
        let pos = self.weights.positional_embedding.val().narrow(0, 0, len);
        let x = x + pos.unsqueeze();
        if siglip {
            return Ok((x, None, pool_at));
        }
        let mut mask = vec![0f32; len * len];
        for r in 0..len {
            for c in r + 1..len {
                mask[r * len + c] = f32::NEG_INFINITY;
            }
        }
        Ok((x, Some(tensor2(mask, [len, len], &device)), pool_at))
    }
}
