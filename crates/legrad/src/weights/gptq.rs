//! GPTQ (Frantar et al. 2022, "GPTQ: Accurate Post-Training Quantization for Generative
//! Pre-trained Transformers"): quantize a weight matrix one input column at a time and push
//! each column's rounding error onto the columns not yet quantized, weighted by the inverse
//! of `H = Σ x xᵀ` over calibration inputs, so that the layer's *outputs* on such inputs move
//! as little as possible. At 4 bits this keeps much more of a model than rounding each weight
//! to its nearest level.
//!
//! The stored form is exactly [`quant::quantize`]'s (same blocks, f16 scales, packing): only
//! the chosen levels differ, so loading and the on-device kernels are unchanged. Each column's
//! block scales are chosen (least squared error, as in `quant`) from the column as the earlier
//! columns' errors left it.
//!
//! Written here rather than taken from a crate: no Rust crate implements GPTQ, and the linear
//! algebra it needs (one Cholesky factor and one triangular inverse per layer) is a few loops;
//! a linear-algebra crate would add minutes to every build for those.

use super::quant::{self, best_scale, block_for, packed, qmax, round_to_grid};
use super::{RawTensor, StoredDType};
use crate::error::{LegradError, Result};

/// `Σ x xᵀ` over the calibration inputs of one linear layer (`n` = its input width).
#[derive(Clone, Debug)]
pub struct Hessian {
    pub n: usize,
    sum: Vec<f64>,
    pub samples: usize,
}

impl Hessian {
    pub fn new(n: usize) -> Self {
        Self { n, sum: vec![0.0; n * n], samples: 0 }
    }

    /// Add `xᵀx` (`[n, n]`, row-major) of `samples` input rows.
    pub fn add(&mut self, xtx: &[f32], samples: usize) -> Result<()> {
        if xtx.len() != self.n * self.n {
            return Err(LegradError::Input(format!("a {}-value Gram matrix for a {}-wide layer", xtx.len(), self.n)));
        }
        for (s, v) in self.sum.iter_mut().zip(xtx) {
            *s += *v as f64;
        }
        self.samples += samples;
        Ok(())
    }
}

/// Relative damping added to `H`'s diagonal (GPTQ's default, 1% of its mean).
const DAMP: f64 = 0.01;

/// Quantize a row-major `[rows (out), cols (in)]` matrix to `bits` with GPTQ, given the
/// Hessian of its inputs (`h.n == cols`). Same output as [`quant::quantize`].
pub fn quantize(
    values: &[f32],
    rows: usize,
    cols: usize,
    bits: u8,
    preferred_block: usize,
    h: &Hessian,
) -> Result<RawTensor> {
    if h.n != cols || values.len() != rows * cols {
        return Err(LegradError::Input(format!("a {cols}-input matrix with a {}-wide Hessian", h.n)));
    }
    if h.samples == 0 {
        return Ok(quant::quantize(values, rows, cols, bits, preferred_block));
    }
    let block = block_for(rows, preferred_block);
    let dtype = if bits == 4 { StoredDType::Q4 { block } } else { StoredDType::Q8 { block } };
    let qm = qmax(dtype);
    // Columns in the order of decreasing H diagonal ("act order"): the inputs that carry the
    // most energy are rounded first, while the most columns remain to absorb their error.
    // Scales belong to single columns, so levels and scales go straight to their own column.
    let n = cols;
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| h.sum[b * n + b].total_cmp(&h.sum[a * n + a]));
    let mut permuted = Hessian::new(n);
    permuted.samples = h.samples;
    for (i, &oi) in order.iter().enumerate() {
        for (j, &oj) in order.iter().enumerate() {
            permuted.sum[i * n + j] = h.sum[oi * n + oj];
        }
    }
    let u = inverse_hessian_factor(&permuted)?;
    let mut w: Vec<f64> = (0..rows * n).map(|idx| values[(idx / n) * n + order[idx % n]] as f64).collect();
    // Levels and scales in the stored (unpermuted) column order.
    let mut q = vec![0i8; rows * cols];
    let mut scales = vec![0f32; (rows / block) * cols];
    let mut column = vec![0f32; block];
    let mut err = vec![0f64; rows];
    for i in 0..n {
        for b in 0..rows / block {
            for (k, c) in column.iter_mut().enumerate() {
                *c = w[(b * block + k) * n + i] as f32;
            }
            let s = best_scale(&column, qm);
            scales[b * n + order[i]] = s;
            for (k, &c) in column.iter().enumerate() {
                let o = b * block + k;
                let level = round_to_grid(c, s, qm);
                q[o * n + order[i]] = level;
                err[o] = (w[o * n + i] - level as f64 * s as f64) / u[i * n + i];
            }
        }
        let ui = &u[i * n + i + 1..(i + 1) * n];
        for (o, &e) in err.iter().enumerate() {
            if e != 0.0 {
                for (wj, &uij) in w[o * n + i + 1..(o + 1) * n].iter_mut().zip(ui) {
                    *wj -= e * uij;
                }
            }
        }
    }
    Ok(packed(q, rows, cols, dtype, scales))
}

/// The upper-triangular `U` with `Uᵀ U = (H + λI)⁻¹`, row-major. With `J` the reversal, the
/// lower Cholesky factor `L` of `J H J` gives `H = (J L J)(J L J)ᵀ`, so `U = J L⁻¹ J`: one
/// factorisation and one triangular inverse.
fn inverse_hessian_factor(h: &Hessian) -> Result<Vec<f64>> {
    let n = h.n;
    let mean_diag = (0..n).map(|i| h.sum[i * n + i]).sum::<f64>() / n as f64;
    let mut damp = DAMP * mean_diag.max(f64::MIN_POSITIVE);
    for _ in 0..6 {
        let mut a = vec![0f64; n * n];
        for i in 0..n {
            for j in 0..n {
                a[i * n + j] = h.sum[(n - 1 - i) * n + (n - 1 - j)];
            }
            // An input never seen in calibration: its column is rounded and nothing moves.
            if a[i * n + i] == 0.0 {
                a[i * n + i] = 1.0;
            }
            a[i * n + i] += damp;
        }
        if cholesky_lower(&mut a, n) {
            let m = invert_lower(&a, n);
            let mut u = vec![0f64; n * n];
            for i in 0..n {
                for j in i..n {
                    u[i * n + j] = m[(n - 1 - i) * n + (n - 1 - j)];
                }
            }
            return Ok(u);
        }
        damp *= 10.0;
    }
    Err(LegradError::Input("the calibration Hessian is not positive definite".into()))
}

/// In place: the lower Cholesky factor of a symmetric matrix (upper part zeroed), row by row;
/// false when the matrix is not positive definite.
fn cholesky_lower(a: &mut [f64], n: usize) -> bool {
    for i in 0..n {
        let (done, rest) = a.split_at_mut(i * n);
        let row = &mut rest[..n];
        for j in 0..=i {
            let lj = if j < i { &done[j * n..j * n + j] } else { &row[..0] };
            let dot: f64 = if j < i {
                row[..j].iter().zip(lj).map(|(x, y)| x * y).sum()
            } else {
                row[..i].iter().map(|x| x * x).sum()
            };
            let v = row[j] - dot;
            if j < i {
                row[j] = v / done[j * n + j];
            } else {
                if !(v > 0.0 && v.is_finite()) {
                    return false;
                }
                row[i] = v.sqrt();
            }
        }
        for v in &mut row[i + 1..] {
            *v = 0.0;
        }
    }
    true
}

/// The inverse of a lower-triangular matrix, row by row (`M[i] = (e_i − Σ_k<i L[i,k] M[k]) / L[i,i]`).
fn invert_lower(l: &[f64], n: usize) -> Vec<f64> {
    let mut m = vec![0f64; n * n];
    for i in 0..n {
        let (done, rest) = m.split_at_mut(i * n);
        let row = &mut rest[..n];
        row[i] = 1.0;
        for k in 0..i {
            let lik = l[i * n + k];
            if lik != 0.0 {
                for (r, &mk) in row[..=k].iter_mut().zip(&done[k * n..k * n + k + 1]) {
                    *r -= lik * mk;
                }
            }
        }
        let lii = l[i * n + i];
        for r in &mut row[..=i] {
            *r /= lii;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// The Hessian of `x` (`[samples, n]`, row-major).
    fn hessian_of(x: &[f32], n: usize) -> Hessian {
        let mut xtx = vec![0f32; n * n];
        for r in x.chunks(n) {
            for i in 0..n {
                for j in 0..n {
                    xtx[i * n + j] += r[i] * r[j];
                }
            }
        }
        let mut h = Hessian::new(n);
        h.add(&xtx, x.len() / n).unwrap();
        h
    }

    #[test]
    fn factor_inverts_the_hessian() {
        let n = 5;
        let mut rng = Rng::for_item(3, 0);
        let x: Vec<f32> = (0..40 * n).map(|_| rng.normal()).collect();
        let h = hessian_of(&x, n);
        let u = inverse_hessian_factor(&h).unwrap();
        // (Uᵀ U)(H + λI) = I.
        let damp = DAMP * (0..n).map(|i| h.sum[i * n + i]).sum::<f64>() / n as f64;
        for i in 0..n {
            for j in 0..n {
                let mut v = 0.0;
                for k in 0..n {
                    let hinv_ik: f64 = (0..n).map(|m| u[m * n + i] * u[m * n + k]).sum();
                    v += hinv_ik * (h.sum[k * n + j] + if k == j { damp } else { 0.0 });
                }
                assert!((v - if i == j { 1.0 } else { 0.0 }).abs() < 1e-9, "({i},{j}) {v}");
            }
            for j in 0..i {
                assert_eq!(u[i * n + j], 0.0);
            }
        }
    }

    #[test]
    fn outputs_move_less_than_with_rounding() {
        // Inputs with a few strong directions, as a model's activations have.
        let (rows, cols, samples) = (64, 48, 400);
        let mut rng = Rng::for_item(5, 0);
        let basis: Vec<f32> = (0..4 * cols).map(|_| rng.normal()).collect();
        let mut x = Vec::with_capacity(samples * cols);
        for _ in 0..samples {
            let c: Vec<f32> = (0..4).map(|_| rng.normal()).collect();
            for j in 0..cols {
                let noise = 0.05 * rng.normal();
                x.push((0..4).map(|k| c[k] * basis[k * cols + j]).sum::<f32>() + noise);
            }
        }
        let w: Vec<f32> = (0..rows * cols).map(|_| rng.normal() * 0.1).collect();
        let h = hessian_of(&x, cols);
        let out_err = |wq: &[f32]| -> f64 {
            x.chunks(cols)
                .map(|r| {
                    (0..rows)
                        .map(|o| {
                            let d: f32 = (0..cols).map(|j| (w[o * cols + j] - wq[o * cols + j]) * r[j]).sum();
                            (d as f64).powi(2)
                        })
                        .sum::<f64>()
                })
                .sum()
        };
        for bits in [4u8, 8] {
            let rtn = quant::dequantize(&quant::quantize(&w, rows, cols, bits, 32));
            let g = quantize(&w, rows, cols, bits, 32, &h).unwrap();
            assert_eq!(g.dtype, quant::quantize(&w, rows, cols, bits, 32).dtype);
            let gptq = quant::dequantize(&g);
            let (e_rtn, e_gptq) = (out_err(&rtn), out_err(&gptq));
            assert!(e_gptq < 0.5 * e_rtn, "{bits} bits: output error {e_gptq} (GPTQ) vs {e_rtn} (rounding)");
        }
    }
}
