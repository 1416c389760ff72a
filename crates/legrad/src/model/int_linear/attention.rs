//! Self-attention's two products per head (`q kᵀ` and `p v`) through the integer kernel, and
//! the softmax between them on the host, for one image on the CPU: the integer path's
//! attention ([`super`]). burn's CPU backend runs them as batched f32 `gemm` calls and a
//! softmax of scalar `exp`s on one thread; at 448 px (785 tokens) a ViT-B/16 layer's `q kᵀ`,
//! softmax and `p v` took about 31 ms of its 78.
//!
//! Per head: the keys `[N, d]` become an [`IntMatrix`] (`N` outputs, one scale per dimension,
//! folded into `q`'s rows), so `q kᵀ` is the linear layers' product; the values transposed
//! `[d, N]` likewise (one scale per key, folded into `p`'s rows). The heads run on rayon's
//! threads natively.

use super::{IntKernel, IntMatrix, exp};

/// What one call computed: the context `[N, H·d]` (heads merged, `out_proj`'s input) and, where
/// asked, the probabilities `[H, N, N]` (else empty).
pub struct HostAttention {
    pub context: Vec<f32>,
    pub probs: Vec<f32>,
}

/// Can heads of width `d` take this path? (The values' product has `d` outputs, in whole tiles.)
pub fn fits(d: usize) -> bool {
    IntMatrix::fits(1, d)
}

/// `softmax(q kᵀ / √d) v` per head for `qkv` `[N, 3·H·d]` (q, k, v side by side, as
/// `in_proj` writes them); `keep`: return the probabilities too.
pub fn attention(qkv: &[f32], n: usize, heads: usize, d: usize, kernel: IntKernel, keep: bool) -> HostAttention {
    let w = heads * d;
    assert!(qkv.len() == n * 3 * w && fits(d), "attention: operands do not fit");
    let head = |h: usize| one_head(qkv, n, w, h, d, kernel, keep);
    // Natively the heads run on rayon's threads, then are put together; in wasm (one thread)
    // each head is put in its place as it is made, so that only one head's probabilities are
    // held twice.
    #[cfg(not(target_family = "wasm"))]
    let per_head: Box<dyn Iterator<Item = (Vec<f32>, Vec<f32>)>> = {
        use rayon::prelude::*;
        Box::new((0..heads).into_par_iter().map(head).collect::<Vec<_>>().into_iter())
    };
    #[cfg(target_family = "wasm")]
    let per_head: Box<dyn Iterator<Item = (Vec<f32>, Vec<f32>)>> = Box::new((0..heads).map(head));
    let mut context = vec![0f32; n * w];
    let mut probs = Vec::with_capacity(if keep { heads * n * n } else { 0 });
    for (h, (ctx, p)) in per_head.enumerate() {
        for (i, row) in ctx.chunks_exact(d).enumerate() {
            context[i * w + h * d..i * w + (h + 1) * d].copy_from_slice(row);
        }
        if keep {
            probs.extend_from_slice(&p);
        }
    }
    HostAttention { context, probs }
}

/// The values of `qkv` `[N, 3·H·d]` by head: `[H, N, d]` (what explainers read).
pub fn values(qkv: &[f32], n: usize, heads: usize, d: usize) -> Vec<f32> {
    let w = heads * d;
    let mut values = vec![0f32; heads * n * d];
    for i in 0..n {
        for h in 0..heads {
            values[(h * n + i) * d..][..d].copy_from_slice(&qkv[i * 3 * w + 2 * w + h * d..][..d]);
        }
    }
    values
}

/// Head `h`: its context `[N, d]` and, where `keep`, its probabilities `[N, N]` (else none:
/// every head's at once would be 30 MB at 448 px).
fn one_head(
    qkv: &[f32],
    n: usize,
    w: usize,
    h: usize,
    d: usize,
    kernel: IntKernel,
    keep: bool,
) -> (Vec<f32>, Vec<f32>) {
    let keys = n.next_multiple_of(super::kernels::TILE);
    let col = |part: usize, i: usize| &qkv[i * 3 * w + part * w + h * d..i * 3 * w + part * w + (h + 1) * d];
    // torch scales q before the product (F.multi_head_attention_forward).
    let scale = (d as f32).powf(-0.5);
    let q: Vec<f32> = (0..n).flat_map(|i| col(0, i).iter().map(move |v| v * scale)).collect();
    let mut k = vec![0f32; keys * d];
    for i in 0..n {
        k[i * d..(i + 1) * d].copy_from_slice(col(1, i));
    }
    let km = IntMatrix::new(&k, d, keys, kernel);
    let mut scores = vec![0f32; n * keys];
    km.rows_into(&q, &mut scores, &vec![0f32; keys], None);
    let mut probs = vec![0f32; n * n];
    for (p, s) in probs.chunks_exact_mut(n).zip(scores.chunks_exact(keys)) {
        softmax_into(&s[..n], p);
    }
    // The values `[N, d]`: d outputs over N inputs (the keys).
    let v: Vec<f32> = (0..n).flat_map(|i| col(2, i).iter().copied()).collect();
    let vm = IntMatrix::from_in_out(&v, n, d, kernel);
    let mut ctx = vec![0f32; n * d];
    vm.rows_into(&probs, &mut ctx, &vec![0f32; d], None);
    (ctx, if keep { probs } else { Vec::new() })
}

/// `p = softmax(s)`; a row with NaN gives NaN. The max and the sum in eight lanes, the
/// exponentials in their own loop: what lets the compiler vectorize them.
pub fn softmax_into(s: &[f32], p: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; 8];
    let chunks = s.chunks_exact(8);
    for &v in chunks.remainder() {
        lanes[0] = max_nan(lanes[0], v);
    }
    for c in chunks {
        for l in 0..8 {
            lanes[l] = max_nan(lanes[l], c[l]);
        }
    }
    let max = lanes.into_iter().fold(f32::NEG_INFINITY, max_nan);
    for (o, &v) in p.iter_mut().zip(s) {
        *o = exp(v - max);
    }
    let mut sums = [0f32; 8];
    let chunks = p.chunks_exact(8);
    sums[0] = chunks.remainder().iter().sum();
    for c in chunks {
        for l in 0..8 {
            sums[l] += c[l];
        }
    }
    let inv = 1.0 / sums.into_iter().sum::<f32>();
    p.iter_mut().for_each(|o| *o *= inv);
}

/// The larger, NaN once either is.
#[inline(always)]
fn max_nan(a: f32, b: f32) -> f32 {
    if b > a || b.is_nan() { b } else { a }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_sums_to_one_and_keeps_nan() {
        let s = [1.0, 2.0, -3.0, 0.5, 9.0, 9.0, -100.0, 4.0, 3.0];
        let mut p = [0f32; 9];
        softmax_into(&s, &mut p);
        let exact: Vec<f32> = {
            let m = 9.0f32;
            let e: Vec<f32> = s.iter().map(|v| (v - m).exp()).collect();
            let sum: f32 = e.iter().sum();
            e.iter().map(|v| v / sum).collect()
        };
        crate::testing::assert_close(&p, &exact, 1e-6, "softmax");
        let mut q = [0f32; 3];
        softmax_into(&[1.0, f32::NAN, 2.0], &mut q);
        assert!(q.iter().all(|v| v.is_nan()));
    }
}
