//! The integer product on plain slices: `out [rows, 16·tiles] = sx ⊙ (xq [rows, 2·pairs] · W)`
//! with 16-bit activations and weights, in four forms that do the same integer arithmetic and
//! the same f32 steps in the same order, so their results are equal to the last bit
//! ([`check_forms_agree`]): portable Rust (any CPU), wasm's 128-bit SIMD (`i32x4.dot_i16x8_s`),
//! x86's AVX2 (`vpmaddwd`) and AVX-512 VNNI (`vpdpwssd`).
//!
//! Each sum runs in 32-bit integers over at most [`Operands::flush`] pairs of inputs (chosen so
//! that no sum can overflow), then moves into an f32 accumulator; the last step is
//! `acc · sx[row] + bias`, a product and a sum (never fused).

/// Outputs per tile: one AVX-512 register of 32-bit lanes, two of AVX2, four of wasm's.
pub const TILE: usize = 16;
/// Rows per step, in every form (the padding of the activations' rows).
pub const ROWS: usize = 4;
/// The activations' levels: `|xq| <= X_LEVELS` (14 bits).
pub const X_LEVELS: i32 = 8191;
/// The weights' levels: `|q| <= W_LEVELS` (13 bits; `weights::quant`'s 8-bit grid regridded,
/// or f32 weights rounded: `super`'s documentation says what that costs).
pub const W_LEVELS: i32 = 4095;

/// Pairs of products summed in 32 bits before the sum moves into f32: the most with
/// `pairs · 2 · X_LEVELS · w_levels <= i32::MAX`.
pub fn flush_pairs(w_levels: i32) -> usize {
    let pair = 2 * X_LEVELS as i64 * w_levels.max(1) as i64;
    ((i32::MAX as i64 / pair) as usize).max(1)
}

pub use crate::compute::IntKernel;

/// Round `x ⊙ s` to `±X_LEVELS` into `out` (same length); the row's scale (0 for a zero row, NaN
/// where a value is not finite: the outputs are then NaN, as in f32). Portable, and written so
/// the compiler vectorizes it: every form uses this one.
pub fn quantize_row(x: &[f32], s: &[f32], out: &mut [i16]) -> f32 {
    let (x, s, out) = (&x[..out.len()], &s[..out.len()], out);
    let max = max_abs_scaled(x, s);
    if max == 0.0 || max.is_nan() {
        out.fill(0);
        return max;
    }
    let inv = X_LEVELS as f32 / max;
    for ((o, a), b) in out.iter_mut().zip(x).zip(s) {
        *o = round_to_int((a * b) * inv) as i16;
    }
    max / X_LEVELS as f32
}

/// `max |x ⊙ s|`, NaN where a product is NaN or infinite; in eight lanes, so that the compiler
/// vectorizes it (a float fold in order cannot be reordered).
pub fn max_abs_scaled(x: &[f32], s: &[f32]) -> f32 {
    let (mut max, mut bad) = ([0f32; 8], [false; 8]);
    let (xc, sc) = (x.chunks_exact(8), s.chunks_exact(8));
    let (xr, sr) = (xc.remainder(), sc.remainder());
    for (a, b) in xc.zip(sc) {
        for l in 0..8 {
            let v = (a[l] * b[l]).abs();
            bad[l] |= !v.is_finite();
            max[l] = max[l].max(v);
        }
    }
    for (a, b) in xr.iter().zip(sr) {
        let v = (a * b).abs();
        bad[0] |= !v.is_finite();
        max[0] = max[0].max(v);
    }
    // No NaN is left in `max` past the check (`bad` holds every non-finite product).
    if bad.iter().any(|&b| b) { f32::NAN } else { max.into_iter().fold(0.0, f32::max) }
}

/// `1.5 · 2^23`: added to `|v| < 2^22`, the float adder rounds `v` to an integer (ties to even)
/// and leaves it in the low bits of the sum's mantissa.
const MAGIC: f32 = 12_582_912.0;

/// `round(v)` to the nearest integer, ties to even (for `|v| < 2^22`): vectorizable where
/// `f32::round` is a library call.
#[inline(always)]
pub fn round_half_even(v: f32) -> f32 {
    (v + MAGIC) - MAGIC
}

/// `round(v)` as an integer, ties to even (for `|v| < 2^22`; NaN gives a meaningless value,
/// which callers have ruled out): read from the sum's bits, so that it vectorizes (Rust's
/// saturating `as` casts do not).
#[inline(always)]
pub fn round_to_int(v: f32) -> i32 {
    (v + MAGIC).to_bits() as i32 - MAGIC.to_bits() as i32
}

/// The product's operands: `xq` `[rows, 2·pairs]` (rows a multiple of [`ROWS`]) with one scale
/// per row, `w` packed (per tile of [`TILE`] outputs, per pair of inputs, each output's two
/// weights side by side; a tile every `stride` pairs, of which the first `pairs` are used: a
/// range of a matrix's inputs), the bias `[16·tiles]`.
pub struct Operands<'a> {
    pub xq: &'a [i16],
    pub sx: &'a [f32],
    pub rows: usize,
    pub pairs: usize,
    pub w: &'a [i16],
    pub stride: usize,
    pub tiles: usize,
    pub bias: &'a [f32],
    pub flush: usize,
}

impl Operands<'_> {
    fn check(&self, out: &[f32]) {
        let cols = self.tiles * TILE;
        assert!(
            self.rows.is_multiple_of(ROWS)
                && self.flush >= 1
                && self.xq.len() >= self.rows * self.pairs * 2
                && self.sx.len() >= self.rows
                && self.stride >= self.pairs
                && self.tiles >= 1
                && self.w.len() >= ((self.tiles - 1) * self.stride + self.pairs) * 2 * TILE
                && self.bias.len() >= cols
                && out.len() >= self.rows * cols,
            "int_linear: operands do not fit"
        );
    }
}

/// `out [rows, 16·tiles] = sx ⊙ (xq · W) + bias` by `kernel` (the portable form where this CPU
/// lacks the one named).
pub fn product(kernel: IntKernel, o: &Operands, out: &mut [f32]) {
    o.check(out);
    match kernel {
        #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
        // SAFETY: the operands' lengths are checked above; the kernel stays within them.
        IntKernel::Simd128 => unsafe { simd128::product(o, out) },
        #[cfg(target_arch = "x86_64")]
        IntKernel::Avx512Vnni if IntKernel::best() == IntKernel::Avx512Vnni => {
            // SAFETY: the CPU has the features (checked on the line above); lengths checked.
            unsafe { avx512::product(o, out) }
        }
        #[cfg(target_arch = "x86_64")]
        IntKernel::Avx2 if std::arch::is_x86_feature_detected!("avx2") => {
            // SAFETY: as above.
            unsafe { avx2::product(o, out) }
        }
        _ => portable(o, out),
    }
}

/// The plain form: the same sums, lane by lane.
fn portable(o: &Operands, out: &mut [f32]) {
    let cols = o.tiles * TILE;
    let len = 2 * o.pairs;
    for r in 0..o.rows {
        let x = &o.xq[r * len..(r + 1) * len];
        for t in 0..o.tiles {
            let w = &o.w[t * o.stride * 2 * TILE..(t * o.stride + o.pairs) * 2 * TILE];
            let mut accf = [0f32; TILE];
            let mut p = 0;
            while p < o.pairs {
                let end = (p + o.flush).min(o.pairs);
                let mut acc = [0i32; TILE];
                for pp in p..end {
                    let (a0, a1) = (x[2 * pp] as i32, x[2 * pp + 1] as i32);
                    let wp = &w[pp * 2 * TILE..(pp + 1) * 2 * TILE];
                    for (l, s) in acc.iter_mut().enumerate() {
                        *s += a0 * wp[2 * l] as i32 + a1 * wp[2 * l + 1] as i32;
                    }
                }
                for (f, s) in accf.iter_mut().zip(acc) {
                    *f += s as f32;
                }
                p = end;
            }
            let y = &mut out[r * cols + t * TILE..r * cols + (t + 1) * TILE];
            for ((y, f), b) in y.iter_mut().zip(accf).zip(&o.bias[t * TILE..]) {
                *y = f * o.sx[r] + b;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{Operands, ROWS, TILE};
    use std::arch::x86_64::*;

    /// [`ROWS`] rows by one tile (one register) per step.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn product(o: &Operands, out: &mut [f32]) {
        // SAFETY: `product` checked the operands' lengths; every pointer below stays within them.
        unsafe {
            let cols = o.tiles * TILE;
            let len = 2 * o.pairs;
            let (xp, wp, op) = (o.xq.as_ptr(), o.w.as_ptr(), out.as_mut_ptr());
            for r0 in (0..o.rows).step_by(ROWS) {
                for t in 0..o.tiles {
                    let wt = wp.add(t * o.stride * 2 * TILE);
                    let mut accf = [_mm512_setzero_ps(); ROWS];
                    let mut p = 0;
                    while p < o.pairs {
                        let end = (p + o.flush).min(o.pairs);
                        let mut acc = [_mm512_setzero_si512(); ROWS];
                        for pp in p..end {
                            let wv = _mm512_loadu_si512(wt.add(pp * 2 * TILE) as *const __m512i);
                            for (r, a) in acc.iter_mut().enumerate() {
                                let pair = (xp.add((r0 + r) * len + 2 * pp) as *const i32).read_unaligned();
                                *a = _mm512_dpwssd_epi32(*a, _mm512_set1_epi32(pair), wv);
                            }
                        }
                        for (f, a) in accf.iter_mut().zip(acc) {
                            *f = _mm512_add_ps(*f, _mm512_cvtepi32_ps(a));
                        }
                        p = end;
                    }
                    let bias = _mm512_loadu_ps(o.bias.as_ptr().add(t * TILE));
                    for (r, f) in accf.into_iter().enumerate() {
                        let y = _mm512_add_ps(_mm512_mul_ps(f, _mm512_set1_ps(o.sx[r0 + r])), bias);
                        _mm512_storeu_ps(op.add((r0 + r) * cols + t * TILE), y);
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{Operands, ROWS, TILE};
    use std::arch::x86_64::*;

    /// [`ROWS`] rows by one tile (two registers) per step.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn product(o: &Operands, out: &mut [f32]) {
        // SAFETY: `product` checked the operands' lengths; every pointer below stays within them.
        unsafe {
            let cols = o.tiles * TILE;
            let len = 2 * o.pairs;
            let (xp, wp, op) = (o.xq.as_ptr(), o.w.as_ptr(), out.as_mut_ptr());
            for r0 in (0..o.rows).step_by(ROWS) {
                for t in 0..o.tiles {
                    let wt = wp.add(t * o.stride * 2 * TILE);
                    let mut accf = [[_mm256_setzero_ps(); 2]; ROWS];
                    let mut p = 0;
                    while p < o.pairs {
                        let end = (p + o.flush).min(o.pairs);
                        let mut acc = [[_mm256_setzero_si256(); 2]; ROWS];
                        for pp in p..end {
                            let w0 = _mm256_loadu_si256(wt.add(pp * 2 * TILE) as *const __m256i);
                            let w1 = _mm256_loadu_si256(wt.add(pp * 2 * TILE + TILE) as *const __m256i);
                            for (r, a) in acc.iter_mut().enumerate() {
                                let pair = (xp.add((r0 + r) * len + 2 * pp) as *const i32).read_unaligned();
                                let x = _mm256_set1_epi32(pair);
                                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x, w0));
                                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x, w1));
                            }
                        }
                        for (f, a) in accf.iter_mut().zip(acc) {
                            f[0] = _mm256_add_ps(f[0], _mm256_cvtepi32_ps(a[0]));
                            f[1] = _mm256_add_ps(f[1], _mm256_cvtepi32_ps(a[1]));
                        }
                        p = end;
                    }
                    let b0 = _mm256_loadu_ps(o.bias.as_ptr().add(t * TILE));
                    let b1 = _mm256_loadu_ps(o.bias.as_ptr().add(t * TILE + 8));
                    for (r, f) in accf.into_iter().enumerate() {
                        let s = _mm256_set1_ps(o.sx[r0 + r]);
                        let y = op.add((r0 + r) * cols + t * TILE);
                        _mm256_storeu_ps(y, _mm256_add_ps(_mm256_mul_ps(f[0], s), b0));
                        _mm256_storeu_ps(y.add(8), _mm256_add_ps(_mm256_mul_ps(f[1], s), b1));
                    }
                }
            }
        }
    }
}

#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{Operands, ROWS, TILE};
    use core::arch::wasm32::*;

    /// Two rows by one tile (four registers each) per step, twice per [`ROWS`].
    pub(super) unsafe fn product(o: &Operands, out: &mut [f32]) {
        // SAFETY: `product` checked the operands' lengths; every pointer below stays within them.
        unsafe {
            let cols = o.tiles * TILE;
            let len = 2 * o.pairs;
            let (xp, wp, op) = (o.xq.as_ptr(), o.w.as_ptr(), out.as_mut_ptr());
            for r0 in (0..o.rows).step_by(2) {
                for t in 0..o.tiles {
                    let wt = wp.add(t * o.stride * 2 * TILE);
                    let mut accf = [[f32x4_splat(0.0); 4]; 2];
                    let mut p = 0;
                    while p < o.pairs {
                        let end = (p + o.flush).min(o.pairs);
                        let mut acc = [[i32x4_splat(0); 4]; 2];
                        for pp in p..end {
                            let w = wt.add(pp * 2 * TILE);
                            let wv = [0, 1, 2, 3].map(|v| v128_load(w.add(8 * v) as *const v128));
                            for (r, a) in acc.iter_mut().enumerate() {
                                let pair = (xp.add((r0 + r) * len + 2 * pp) as *const i32).read_unaligned();
                                let x = i32x4_splat(pair);
                                for (a, w) in a.iter_mut().zip(wv) {
                                    *a = i32x4_add(*a, i32x4_dot_i16x8(x, w));
                                }
                            }
                        }
                        for (f, a) in accf.iter_mut().zip(acc) {
                            for (f, a) in f.iter_mut().zip(a) {
                                *f = f32x4_add(*f, f32x4_convert_i32x4(a));
                            }
                        }
                        p = end;
                    }
                    for (r, f) in accf.into_iter().enumerate() {
                        let s = f32x4_splat(o.sx[r0 + r]);
                        for (v, f) in f.into_iter().enumerate() {
                            let b = v128_load(o.bias.as_ptr().add(t * TILE + 4 * v) as *const v128);
                            let y = op.add((r0 + r) * cols + t * TILE + 4 * v) as *mut v128;
                            v128_store(y, f32x4_add(f32x4_mul(f, s), b));
                        }
                    }
                }
            }
            let _ = ROWS;
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
/// For the tests, natively and in the browser: every form this CPU runs against the portable
/// one on random operands (a remainder of a flush, odd tiles, a zero row), equal to the bit.
/// The forms compared, or the first that differs.
pub fn check_forms_agree() -> Result<Vec<IntKernel>, String> {
    let (rows, pairs, tiles, flush) = (8, 77, 3, 31);
    let mut s = 7u32;
    let mut next = |levels: i32| {
        s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        ((s >> 8) % (2 * levels as u32 + 1)) as i32 - levels
    };
    let mut xq: Vec<i16> = (0..rows * pairs * 2).map(|_| next(X_LEVELS) as i16).collect();
    xq[2 * pairs * 2..3 * pairs * 2].fill(0);
    // The extremes, where an overflow would show.
    xq[..2 * pairs].fill(-X_LEVELS as i16);
    let mut w: Vec<i16> = (0..tiles * pairs * 2 * TILE).map(|_| next(W_LEVELS) as i16).collect();
    w[..2 * TILE * flush].fill(-W_LEVELS as i16);
    let sx: Vec<f32> = (0..rows).map(|r| 1e-3 * (r as f32 + 0.37)).collect();
    let bias: Vec<f32> = (0..tiles * TILE).map(|i| i as f32 * 0.013 - 0.2).collect();
    let forms = IntKernel::available();
    // Every input, then a range of them (a share's: the tiles `stride` pairs apart).
    for (first, used) in [(0, pairs), (3, pairs - 13)] {
        let xq: Vec<i16> =
            xq.chunks_exact(2 * pairs).flat_map(|r| &r[2 * first..2 * (first + used)]).copied().collect();
        let w = &w[first * 2 * TILE..];
        let o = Operands { xq: &xq, sx: &sx, rows, pairs: used, w, stride: pairs, tiles, bias: &bias, flush };
        let mut plain = vec![0f32; rows * tiles * TILE];
        portable(&o, &mut plain);
        for &k in &forms {
            let mut out = vec![f32::NAN; rows * tiles * TILE];
            product(k, &o, &mut out);
            if let Some(i) = (0..out.len()).find(|&i| out[i].to_bits() != plain[i].to_bits()) {
                return Err(format!(
                    "{k:?} differs from the portable form at {i} (inputs from pair {first}): {} against {}",
                    out[i], plain[i]
                ));
            }
        }
    }
    Ok(forms)
}
