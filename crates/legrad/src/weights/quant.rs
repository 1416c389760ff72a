//! Symmetric block quantization of weight matrices, on the host (the converter, and loading).
//!
//! A matrix in PyTorch's layout `[out, in]` gets one scale per block of `block` consecutive
//! rows (output features) in each column: `w[o, i] ≈ q[o, i] · s[o / block, i]`. Transposed to
//! burn's `[in, out]` that is a block of `block` consecutive values along the last dimension,
//! which is the block burn's quantized tensors use (`per_block([1, block])`), so the stored
//! values and scales are exactly what the device holds.

use super::{RawTensor, StoredDType};

/// 8-bit: 127 levels each side. 4-bit: 7.
pub fn qmax(dtype: StoredDType) -> f32 {
    match dtype {
        StoredDType::Q4 { .. } => 7.0,
        _ => 127.0,
    }
}

/// The largest power of two not above `preferred` that divides `rows` (at least 1).
pub fn block_for(rows: usize, preferred: usize) -> usize {
    let mut b = preferred.max(1);
    while b > 1 && !rows.is_multiple_of(b) {
        b /= 2;
    }
    b
}

/// Quantize a row-major `[rows, cols]` matrix. Scales are rounded to f16 (as stored) before
/// the values are computed, so that dequantizing the stored form is exact.
///
/// Each block's scale is the one, among `absmax / qmax × {0.50, 0.55, …, 1.00}`, with the least
/// squared error: clipping the rare largest values buys finer steps for all the others, which
/// matters at 4 bits (burn's own calibration uses the plain absmax).
pub fn quantize(values: &[f32], rows: usize, cols: usize, bits: u8, preferred_block: usize) -> RawTensor {
    let block = block_for(rows, preferred_block);
    let dtype = if bits == 4 { StoredDType::Q4 { block } } else { StoredDType::Q8 { block } };
    let qm = qmax(dtype);
    let nb = rows / block;
    let mut scales = vec![0f32; nb * cols];
    let mut column = vec![0f32; block];
    for b in 0..nb {
        for c in 0..cols {
            for (k, v) in column.iter_mut().enumerate() {
                *v = values[(b * block + k) * cols + c];
            }
            scales[b * cols + c] = best_scale(&column, qm);
        }
    }
    let q: Vec<i8> = values
        .iter()
        .enumerate()
        .map(|(idx, &v)| round_to_grid(v, scales[(idx / cols / block) * cols + idx % cols], qm))
        .collect();
    packed(q, rows, cols, dtype, scales)
}

/// The scale (rounded to f16, as stored) with the least squared error for one block.
pub(crate) fn best_scale(block: &[f32], qm: f32) -> f32 {
    let m = block.iter().fold(0f32, |a, v| a.max(v.abs()));
    let mut best = (f32::INFINITY, 1.0f32);
    for step in 0..=10 {
        let s = half::f16::from_f32(m / qm * (0.5 + 0.05 * step as f32)).to_f32();
        if !(s > 0.0 && s.is_finite()) {
            continue;
        }
        let err: f32 = block.iter().map(|&v| (v - round_to_grid(v, s, qm) as f32 * s).powi(2)).sum();
        if err < best.0 {
            best = (err, s);
        }
    }
    best.1
}

/// The nearest level in `-qm..=qm`. Not -8 at 4 bits: the loader hands burn the dequantized
/// values and burn's quantizer takes `absmax / 7` as the block's scale, which reproduces this
/// grid exactly only when the largest level is ±7 (as the scale search guarantees).
pub(crate) fn round_to_grid(v: f32, scale: f32, qm: f32) -> i8 {
    (v / scale).round().clamp(-qm, qm) as i8
}

/// The stored form of quantized values `q` (row-major `[rows, cols]`).
pub(crate) fn packed(q: Vec<i8>, rows: usize, cols: usize, dtype: StoredDType, scales: Vec<f32>) -> RawTensor {
    let bytes = if matches!(dtype, StoredDType::Q4 { .. }) {
        // Two values per byte along a row (low nibble first); `cols` is even for every
        // matrix quantized here.
        q.chunks(2).map(|p| ((p[0] as u8) & 0x0F) | (((*p.get(1).unwrap_or(&0) as u8) & 0x0F) << 4)).collect()
    } else {
        q.iter().map(|&v| v as u8).collect()
    };
    RawTensor { shape: vec![rows, cols], dtype, bytes, scales }
}

/// The quantized values as i8, one per element.
pub fn values(t: &RawTensor) -> Vec<i8> {
    match t.dtype {
        StoredDType::Q4 { .. } => {
            t.bytes.iter().flat_map(|&b| [((b << 4) as i8) >> 4, (b as i8) >> 4]).take(t.numel()).collect()
        }
        _ => t.bytes.iter().map(|&b| b as i8).collect(),
    }
}

pub fn dequantize(t: &RawTensor) -> Vec<f32> {
    let (StoredDType::Q8 { block } | StoredDType::Q4 { block }) = t.dtype else {
        return t.to_f32();
    };
    let cols = *t.shape.last().unwrap_or(&1);
    values(t)
        .into_iter()
        .enumerate()
        .map(|(idx, q)| q as f32 * t.scales[(idx / cols / block) * cols + idx % cols])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_is_close_and_exact_on_the_grid() {
        let (rows, cols) = (128, 6);
        let v: Vec<f32> = (0..rows * cols).map(|i| ((i * 7919) % 1001) as f32 / 500.0 - 1.0).collect();
        for bits in [8u8, 4] {
            let q = quantize(&v, rows, cols, bits, 64);
            let d = dequantize(&q);
            let worst = crate::testing::max_abs_diff(&d, &v);
            // Clipping may cost a value up to half the range; the mean error is what drops.
            let mean: f32 = v.iter().zip(&d).map(|(a, b)| (a - b).abs()).sum::<f32>() / v.len() as f32;
            let step = if bits == 8 { 1.0 / 127.0 } else { 1.0 / 7.0 };
            assert!(mean <= 0.3 * step, "{bits} bits: mean error {mean}");
            assert!(worst <= 0.6, "{bits} bits: {worst}");
            // Quantizing the dequantized values gives the same stored form.
            let again = quantize(&d, rows, cols, bits, 64);
            assert_eq!(values(&again), values(&q));
        }
    }

    #[test]
    fn block_divides_rows() {
        assert_eq!(block_for(768, 64), 64);
        assert_eq!(block_for(16, 64), 16);
        assert_eq!(block_for(48, 64), 16);
        assert_eq!(block_for(7, 64), 1);
    }
}
