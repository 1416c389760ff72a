//! The integer kernels on plain slices: rounding to 16-bit levels, packing, the two products.
//! Each has a 128-bit SIMD form (wasm) and a portable form, and the products have x86 forms
//! (AVX2, AVX-512 VNNI), that do the same arithmetic in the same order, so their results are
//! equal to the last bit ([`check_simd_against_portable`]). Natively the rows' rounding and the
//! relevance's blocks of keys go over rayon's threads, in an order that leaves every value the
//! same.

use crate::model::int_linear::IntKernel;

/// Rows of a tile (query rows) and 4-lane vectors of columns, in both products (2 x 4 was the
/// fastest of 2x4, 3x3, 4x2, 4x3, 3x4, 2x6, 6x2 in V8: docs/benchmarks-history.md §5).
pub const ROWS: usize = 2;
const VECS: usize = 4;
/// Columns (or keys) of a tile.
pub const COLS: usize = VECS * 4;

/// The levels of `main`'s factors: `|q| ≤ 8191`, so that a pair of products is below 2^27
/// and [`DC_FLUSH`] pairs below 2^31.
pub const DC_LEVELS: i32 = 8191;
/// Pairs of `main`'s integer products summed before the sum moves into f32.
pub const DC_FLUSH: usize = 16;

/// The levels of the relevance product's factors for `d`-wide heads: the largest `q` with
/// `d · q² < 2^31` (`d/2` pairs, each at most `2q²`): 5792 for 64-wide heads.
pub fn rel_levels(d: usize) -> i32 {
    let d = d.max(2) as f64;
    ((i32::MAX as f64 / d).sqrt().floor() as i32).clamp(1, 8191)
}

/// Round `x` to `±levels` times one scale, written to `out`; the scale (0 for a zero row, NaN
/// where `x` has a NaN or an infinity: the outputs are then NaN, as in f32).
pub fn quantize(x: &[f32], levels: i32, out: &mut [i16]) -> f32 {
    let out = &mut out[..x.len()];
    let max = abs_max(x);
    if max == 0.0 || !max.is_finite() {
        out.fill(0);
        return if max.is_finite() { 0.0 } else { f32::NAN };
    }
    round_into(x, levels as f32 / max, out);
    max / levels as f32
}

/// `max |x|`, NaN if any is.
fn abs_max(x: &[f32]) -> f32 {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    return simd128::abs_max(x);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    portable::abs_max(x)
}

/// `out = round(x · inv)`, ties to even.
fn round_into(x: &[f32], inv: f32, out: &mut [i16]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd128::round_into(x, inv, out);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    portable::round_into(x, inv, out);
}

/// Rows rounded to `±levels` with one scale each, padded to whole tiles of [`ROWS`] rows and
/// an even row length (the padding is zero).
pub struct QuantRows {
    pub q: Vec<i16>,
    pub scale: Vec<f32>,
    /// Rows with the padding.
    pub rows: usize,
    /// The padded row length.
    pub len: usize,
}

impl QuantRows {
    pub fn new(x: &[f32], rows: usize, cols: usize, levels: i32) -> Self {
        let len = cols.next_multiple_of(2);
        let padded = rows.next_multiple_of(ROWS);
        let mut q = vec![0i16; padded * len];
        let mut scale = vec![0f32; padded];
        let row = |(i, (q, s)): (usize, (&mut [i16], &mut f32))| {
            *s = quantize(&x[i * cols..(i + 1) * cols], levels, &mut q[..cols]);
        };
        // Natively the rows go over rayon's threads (each row is rounded on its own).
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            q.par_chunks_mut(len).zip(scale.par_iter_mut()).take(rows).enumerate().for_each(row);
        }
        #[cfg(target_family = "wasm")]
        q.chunks_mut(len).zip(scale.iter_mut()).take(rows).enumerate().for_each(row);
        Self { q, scale, rows: padded, len }
    }
}

/// The values of every head, per key rounded to `±rel_levels(d)`, packed for the relevance
/// product: per head, per block of [`COLS`] keys, per pair of the head's dimensions, the block's
/// keys' two values side by side.
pub struct PackedValues {
    pub q: Vec<i16>,
    /// Per head and key (padded).
    pub scale: Vec<f32>,
    /// Keys with the padding.
    pub keys: usize,
    pub pairs: usize,
}

impl PackedValues {
    pub fn new(values: &[f32], h: usize, n: usize, d: usize) -> Self {
        // `[H, N, d]` is `[H·N, d]`: one scale per head and key, rounded as any rows are.
        let rounded = QuantRows::new(values, h * n, d, rel_levels(d));
        let keys = n.next_multiple_of(COLS);
        let pairs = rounded.len / 2;
        let mut q = vec![0i16; h * keys * pairs * 2];
        let mut scale = vec![0f32; h * keys];
        for hh in 0..h {
            for j in 0..n {
                let row = &rounded.q[(hh * n + j) * rounded.len..][..rounded.len];
                scale[hh * keys + j] = rounded.scale[hh * n + j];
                let base = ((hh * keys + j) / COLS * pairs * COLS + j % COLS) * 2;
                for (p, pair) in row.chunks_exact(2).enumerate() {
                    q[base + p * COLS * 2..][..2].copy_from_slice(pair);
                }
            }
        }
        Self { q, scale, keys, pairs }
    }
}

/// `diag(a) K` (`K` `[M, W]`) rounded per column to `±DC_LEVELS`, packed for [`dc_product`]: per
/// block of [`COLS`] columns, per pair of rows, the block's columns' two values side by side.
/// The packed values and the columns' scales.
pub fn pack_scaled(a: &[f32], k: &[f32], m: usize, w: usize) -> (Vec<i16>, Vec<f32>) {
    let cols = w.next_multiple_of(COLS);
    let pairs = m.div_ceil(2);
    let mut max = vec![0f32; w];
    for (kk, &ak) in a.iter().enumerate().take(m) {
        col_max(ak.abs(), &k[kk * w..(kk + 1) * w], &mut max);
    }
    let inv: Vec<f32> = max.iter().map(|&x| if x > 0.0 { DC_LEVELS as f32 / x } else { 0.0 }).collect();
    let mut q = vec![0i16; cols * pairs * 2];
    for p in 0..pairs {
        let row = |kk: usize| (kk < m).then(|| (a[kk], &k[kk * w..(kk + 1) * w]));
        pack_pair(row(2 * p), row(2 * p + 1), &inv, &mut q, p, pairs);
    }
    let scale = max.iter().map(|&x| x / DC_LEVELS as f32).collect();
    (q, scale)
}

/// `max[j] = max(max[j], a · |row[j]|)`, NaN once any is.
fn col_max(a: f32, row: &[f32], max: &mut [f32]) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd128::col_max(a, row, max);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    portable::col_max(a, row, max);
}

/// Rows `2p` and `2p + 1` of `diag(a) K` (each `(a_k, K[k])`, `None` past the end), rounded by
/// the columns' `inv` scales, into pair `p` of the packed `q`.
fn pack_pair(r0: Option<(f32, &[f32])>, r1: Option<(f32, &[f32])>, inv: &[f32], q: &mut [i16], p: usize, pairs: usize) {
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd128::pack_pair(r0, r1, inv, q, p, pairs);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    portable::pack_pair(r0, r1, inv, q, p, pairs);
}

/// `out [rows, cols] = a [rows, 2·pairs] · b` (`b` packed by [`pack_scaled`]), the integer sums
/// moved into f32 every [`DC_FLUSH`] pairs; `rows` a multiple of [`ROWS`], `cols` of [`COLS`].
/// Natively on x86 with AVX2 or AVX-512 VNNI (`kernel`) by the image step's kernel
/// (`model::int_linear::kernels`: the same packing, sums and order, so the same result to the
/// bit); else by this module's own forms.
pub fn dc_product(kernel: IntKernel, a: &[i16], b: &[i16], rows: usize, pairs: usize, cols: usize, out: &mut [f32]) {
    assert!(
        rows.is_multiple_of(ROWS)
            && cols.is_multiple_of(COLS)
            && a.len() >= rows * pairs * 2
            && b.len() >= cols * pairs * 2
            && out.len() >= rows * cols,
        "dc_product: operands do not fit"
    );
    if matches!(kernel, IntKernel::Avx2 | IntKernel::Avx512Vnni) {
        return by_int_linear(kernel, a, b, rows, pairs, cols, out);
    }
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    // SAFETY: the operands' lengths are asserted above; the kernel reads and writes within them.
    unsafe {
        simd128::dc_product(a, b, rows, pairs, cols, out)
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    portable::dc_product(a, b, rows, pairs, cols, out);
}

/// [`dc_product`] by `model::int_linear`'s kernel: a scale of 1 and no bias, rows padded to its
/// step.
fn by_int_linear(kernel: IntKernel, a: &[i16], b: &[i16], rows: usize, pairs: usize, cols: usize, out: &mut [f32]) {
    use crate::model::int_linear::kernels::{Operands, ROWS as STEP, product};
    let padded = rows.next_multiple_of(STEP);
    let (ones, zeros) = (vec![1f32; padded], vec![0f32; cols]);
    let mut xq = a[..rows * pairs * 2].to_vec();
    xq.resize(padded * pairs * 2, 0);
    let o = Operands {
        xq: &xq,
        sx: &ones,
        rows: padded,
        pairs,
        w: b,
        stride: pairs,
        tiles: cols / COLS,
        bias: &zeros,
        flush: DC_FLUSH,
    };
    if padded == rows {
        product(kernel, &o, &mut out[..rows * cols]);
    } else {
        let mut y = vec![0f32; padded * cols];
        product(kernel, &o, &mut y);
        out[..rows * cols].copy_from_slice(&y[..rows * cols]);
    }
}

/// The operands of [`relevance_product`]: `q` `[rows, H, 2·pairs]` with one scale per row and
/// head, and the packed values.
pub struct RelevanceOperands<'a> {
    pub q: &'a [i16],
    pub scale: &'a [f32],
    pub rows: usize,
    pub heads: usize,
    pub values: &'a PackedValues,
}

/// `out [keys] += Σ_h sv_h ⊙ Σ_i relu(q_h[i] · v_h) · scale[i, h]`. Natively the blocks of keys
/// go over rayon's threads (each block's heads in order, so the sums are the same), on x86 by
/// the AVX2 or AVX-512 VNNI form (`kernel`).
pub fn relevance_product(kernel: IntKernel, o: &RelevanceOperands, out: &mut [f32]) {
    let (v, pairs) = (o.values, o.values.pairs);
    assert!(
        o.rows.is_multiple_of(ROWS)
            && v.keys.is_multiple_of(COLS)
            && o.q.len() >= o.rows * o.heads * pairs * 2
            && o.scale.len() >= o.rows * o.heads
            && v.q.len() >= o.heads * v.keys * pairs * 2
            && v.scale.len() >= o.heads * v.keys
            && out.len() >= v.keys,
        "relevance_product: operands do not fit"
    );
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    // SAFETY: the operands' lengths are asserted above; the kernel reads and writes within them.
    unsafe {
        let _ = kernel;
        simd128::relevance_product(o, out)
    };
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    {
        let blocks = |kb: std::ops::Range<usize>, out: &mut [f32]| match kernel {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the CPU has the features (checked where `kernel` is chosen: `IntKernel::best`
            // and `available`, and again here); the lengths are asserted above.
            IntKernel::Avx512Vnni if IntKernel::best() == IntKernel::Avx512Vnni => unsafe {
                x86::relevance_avx512(o, kb, out)
            },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: as above.
            IntKernel::Avx2 if std::arch::is_x86_feature_detected!("avx2") => unsafe {
                x86::relevance_avx2(o, kb, out)
            },
            _ => portable::relevance_blocks(o, kb, out),
        };
        let n = v.keys / COLS;
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            let per = n.div_ceil(2 * rayon::current_num_threads()).max(1);
            out[..v.keys].par_chunks_mut(per * COLS).enumerate().for_each(|(c, out)| {
                let first = c * per;
                blocks(first..first + out.len() / COLS, out)
            });
        }
        #[cfg(target_family = "wasm")]
        blocks(0..n, out);
    }
}

/// The same arithmetic in plain Rust, in the same order: natively, and the SIMD form's
/// reference.
#[cfg_attr(all(target_arch = "wasm32", target_feature = "simd128"), allow(dead_code))]
mod portable {
    use super::{COLS, DC_FLUSH, ROWS, RelevanceOperands};

    /// Two values' products with a pair, summed: `i32x4.dot_i16x8_s`'s lane.
    #[inline(always)]
    fn dot(a: &[i16], b: &[i16]) -> i32 {
        a[0] as i32 * b[0] as i32 + a[1] as i32 * b[1] as i32
    }

    /// `f32x4.max`: NaN if either is.
    #[inline(always)]
    fn max_nan(a: f32, b: f32) -> f32 {
        if a.is_nan() || b.is_nan() { f32::NAN } else { a.max(b) }
    }

    /// `max |x|`, NaN if any is: eight lanes and a flag each, so that the compiler vectorizes
    /// it (a fold through `max_nan` cannot be reordered).
    pub fn abs_max(x: &[f32]) -> f32 {
        let (mut max, mut nan) = ([0f32; 8], [false; 8]);
        let chunks = x.chunks_exact(8);
        let tail = chunks.remainder();
        for c in chunks {
            for l in 0..8 {
                nan[l] |= c[l].is_nan();
                max[l] = max[l].max(c[l].abs());
            }
        }
        for v in tail {
            nan[0] |= v.is_nan();
            max[0] = max[0].max(v.abs());
        }
        if nan.iter().any(|&b| b) { f32::NAN } else { max.into_iter().fold(0.0, f32::max) }
    }

    /// `v.round_ties_even() as i16` (saturating, NaN to 0, as `i32x4.trunc_sat_f32x4` after
    /// `f32x4.nearest` and the narrowing do), in operations the compiler vectorizes: the
    /// library's `rint` is a call per value on x86-64's baseline.
    #[inline(always)]
    pub fn round_sat(v: f32) -> i16 {
        let v = if v.is_nan() { 0.0 } else { v.clamp(-32768.0, 32767.0) };
        crate::model::int_linear::kernels::round_to_int(v) as i16
    }

    pub fn round_into(x: &[f32], inv: f32, out: &mut [i16]) {
        for (o, v) in out.iter_mut().zip(x) {
            *o = round_sat(v * inv);
        }
    }

    pub fn col_max(a: f32, row: &[f32], max: &mut [f32]) {
        for (m, v) in max.iter_mut().zip(row) {
            *m = max_nan(*m, a * v.abs());
        }
    }

    pub fn pack_pair(
        r0: Option<(f32, &[f32])>,
        r1: Option<(f32, &[f32])>,
        inv: &[f32],
        q: &mut [i16],
        p: usize,
        pairs: usize,
    ) {
        for (e, r) in [r0, r1].into_iter().enumerate() {
            let Some((a, row)) = r else { continue };
            for (j, (&v, &s)) in row.iter().zip(inv).enumerate() {
                let at = ((j / COLS) * pairs * COLS + p * COLS + j % COLS) * 2 + e;
                q[at] = round_sat(a * v * s);
            }
        }
    }

    pub fn dc_product(a: &[i16], b: &[i16], rows: usize, pairs: usize, cols: usize, out: &mut [f32]) {
        for cb in 0..cols / COLS {
            let block = &b[cb * pairs * COLS * 2..(cb + 1) * pairs * COLS * 2];
            for i in (0..rows).step_by(ROWS) {
                let mut fa = [[0f32; COLS]; ROWS];
                let mut p = 0;
                while p < pairs {
                    let end = (p + DC_FLUSH).min(pairs);
                    let mut acc = [[0i32; COLS]; ROWS];
                    for pp in p..end {
                        let bp = &block[pp * COLS * 2..(pp + 1) * COLS * 2];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let ap = &a[(i + r) * pairs * 2 + 2 * pp..][..2];
                            for (c, acc) in acc.iter_mut().enumerate() {
                                *acc = acc.wrapping_add(dot(ap, &bp[2 * c..]));
                            }
                        }
                    }
                    for (fa, acc) in fa.iter_mut().zip(&acc) {
                        for (f, &x) in fa.iter_mut().zip(acc) {
                            *f += x as f32;
                        }
                    }
                    p = end;
                }
                for (r, fa) in fa.iter().enumerate() {
                    out[(i + r) * cols + cb * COLS..][..COLS].copy_from_slice(fa);
                }
            }
        }
    }

    #[allow(dead_code)] // the tests' reference (the launcher goes by ranges of blocks)
    pub fn relevance_product(o: &RelevanceOperands, out: &mut [f32]) {
        relevance_blocks(o, 0..o.values.keys / COLS, out)
    }

    /// The blocks of keys `kbs`, into `out` (their outputs: `out[0]` is block `kbs.start`'s first).
    pub fn relevance_blocks(o: &RelevanceOperands, kbs: std::ops::Range<usize>, out: &mut [f32]) {
        let (v, h) = (o.values, o.heads);
        let (pairs, keys) = (v.pairs, v.keys);
        let blocks = keys / COLS;
        for hh in 0..h {
            for kb in kbs.clone() {
                let block = &v.q[(hh * blocks + kb) * pairs * COLS * 2..][..pairs * COLS * 2];
                let mut racc = [0f32; COLS];
                for i in (0..o.rows).step_by(ROWS) {
                    let mut acc = [[0i32; COLS]; ROWS];
                    for p in 0..pairs {
                        let bp = &block[p * COLS * 2..(p + 1) * COLS * 2];
                        for (r, acc) in acc.iter_mut().enumerate() {
                            let ap = &o.q[((i + r) * h + hh) * pairs * 2 + 2 * p..][..2];
                            for (c, acc) in acc.iter_mut().enumerate() {
                                *acc = acc.wrapping_add(dot(ap, &bp[2 * c..]));
                            }
                        }
                    }
                    for (r, acc) in acc.iter().enumerate() {
                        let s = o.scale[(i + r) * h + hh];
                        for (ra, &x) in racc.iter_mut().zip(acc) {
                            *ra += x.max(0) as f32 * s;
                        }
                    }
                }
                let at = (kb - kbs.start) * COLS;
                let out = &mut out[at..at + COLS];
                for ((o, ra), s) in out.iter_mut().zip(&racc).zip(&v.scale[hh * keys + kb * COLS..]) {
                    *o += ra * s;
                }
            }
        }
    }
}

/// x86-64: the relevance product with `vpdpwssd` (AVX-512 VNNI: a block's 16 keys in one
/// register) or `vpmaddwd` (AVX2: two), four query rows per step; each row's sum is added to
/// the block's in row order, as in the portable form, so the results are the same to the bit.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{COLS, RelevanceOperands};
    use std::arch::x86_64::*;
    use std::ops::Range;

    /// Rows per step.
    const STEP: usize = 4;

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn relevance_avx512(o: &RelevanceOperands, kbs: Range<usize>, out: &mut [f32]) {
        // SAFETY: `relevance_product` asserted the operands' lengths; every pointer stays within
        // them (`out` holds `kbs`' outputs).
        unsafe {
            let (v, h) = (o.values, o.heads);
            let (pairs, keys) = (v.pairs, v.keys);
            let blocks = keys / COLS;
            let (qp, zero) = (o.q.as_ptr(), _mm512_setzero_si512());
            let pair = |row: usize, p: usize| _mm512_set1_epi32((qp.add(row + 2 * p) as *const i32).read_unaligned());
            for hh in 0..h {
                for kb in kbs.clone() {
                    let block = v.q.as_ptr().add((hh * blocks + kb) * pairs * COLS * 2);
                    let mut racc = _mm512_setzero_ps();
                    let mut i = 0;
                    while i < o.rows {
                        let n = STEP.min(o.rows - i);
                        let row = |r: usize| ((i + r.min(n - 1)) * h + hh) * pairs * 2;
                        let (r0, r1, r2, r3) = (row(0), row(1), row(2), row(3));
                        let mut acc = [zero; STEP];
                        for p in 0..pairs {
                            let b = _mm512_loadu_si512(block.add(p * COLS * 2) as *const __m512i);
                            acc[0] = _mm512_dpwssd_epi32(acc[0], pair(r0, p), b);
                            acc[1] = _mm512_dpwssd_epi32(acc[1], pair(r1, p), b);
                            acc[2] = _mm512_dpwssd_epi32(acc[2], pair(r2, p), b);
                            acc[3] = _mm512_dpwssd_epi32(acc[3], pair(r3, p), b);
                        }
                        for (r, a) in acc.into_iter().enumerate().take(n) {
                            let s = _mm512_set1_ps(o.scale[(i + r) * h + hh]);
                            let x = _mm512_cvtepi32_ps(_mm512_max_epi32(a, zero));
                            racc = _mm512_add_ps(racc, _mm512_mul_ps(x, s));
                        }
                        i += n;
                    }
                    let y = out.as_mut_ptr().add((kb - kbs.start) * COLS);
                    let s = _mm512_loadu_ps(v.scale.as_ptr().add(hh * keys + kb * COLS));
                    _mm512_storeu_ps(y, _mm512_add_ps(_mm512_loadu_ps(y), _mm512_mul_ps(racc, s)));
                }
            }
        }
    }

    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn relevance_avx2(o: &RelevanceOperands, kbs: Range<usize>, out: &mut [f32]) {
        // SAFETY: as `relevance_avx512`.
        unsafe {
            let (v, h) = (o.values, o.heads);
            let (pairs, keys) = (v.pairs, v.keys);
            let blocks = keys / COLS;
            let (qp, zero) = (o.q.as_ptr(), _mm256_setzero_si256());
            for hh in 0..h {
                for kb in kbs.clone() {
                    let block = v.q.as_ptr().add((hh * blocks + kb) * pairs * COLS * 2);
                    let mut racc = [_mm256_setzero_ps(); 2];
                    let mut i = 0;
                    while i < o.rows {
                        let n = STEP.min(o.rows - i);
                        let rows: [usize; STEP] = std::array::from_fn(|r| ((i + r.min(n - 1)) * h + hh) * pairs * 2);
                        let mut acc = [[zero; 2]; STEP];
                        for p in 0..pairs {
                            let b0 = _mm256_loadu_si256(block.add(p * COLS * 2) as *const __m256i);
                            let b1 = _mm256_loadu_si256(block.add(p * COLS * 2 + COLS) as *const __m256i);
                            for (a, &row) in acc.iter_mut().zip(&rows) {
                                let x = _mm256_set1_epi32((qp.add(row + 2 * p) as *const i32).read_unaligned());
                                a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(x, b0));
                                a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(x, b1));
                            }
                        }
                        for (r, a) in acc.into_iter().enumerate().take(n) {
                            let s = _mm256_set1_ps(o.scale[(i + r) * h + hh]);
                            for (ra, a) in racc.iter_mut().zip(a) {
                                let x = _mm256_cvtepi32_ps(_mm256_max_epi32(a, zero));
                                *ra = _mm256_add_ps(*ra, _mm256_mul_ps(x, s));
                            }
                        }
                        i += n;
                    }
                    let y = out.as_mut_ptr().add((kb - kbs.start) * COLS);
                    let s = v.scale.as_ptr().add(hh * keys + kb * COLS);
                    for (e, ra) in racc.into_iter().enumerate() {
                        let y = y.add(8 * e);
                        let s = _mm256_loadu_ps(s.add(8 * e));
                        _mm256_storeu_ps(y, _mm256_add_ps(_mm256_loadu_ps(y), _mm256_mul_ps(ra, s)));
                    }
                }
            }
        }
    }
}

/// 128-bit SIMD. The products: a tile of [`ROWS`] rows x [`VECS`] vectors of four columns;
/// each step loads a row's pair of values once, as a 32-bit splat, and multiplies it with every
/// vector (`i32x4.dot_i16x8_s`: a pair per lane).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use super::{COLS, DC_FLUSH, ROWS, RelevanceOperands, VECS};
    use core::arch::wasm32::*;

    /// The lanes' maximum, NaN if any is (`f32x4.max` propagates NaN).
    fn lanes_max(v: v128) -> f32 {
        let [a, b, c, d] = [
            f32x4_extract_lane::<0>(v),
            f32x4_extract_lane::<1>(v),
            f32x4_extract_lane::<2>(v),
            f32x4_extract_lane::<3>(v),
        ];
        let m = |x: f32, y: f32| if x.is_nan() || y.is_nan() { f32::NAN } else { x.max(y) };
        m(m(a, b), m(c, d))
    }

    pub fn abs_max(x: &[f32]) -> f32 {
        let mut m = f32x4_splat(0.0);
        let chunks = x.chunks_exact(4);
        let tail = chunks.remainder();
        for c in chunks {
            // SAFETY: a chunk holds four values; v128 loads need no alignment.
            let v = unsafe { v128_load(c.as_ptr() as *const v128) };
            m = f32x4_max(m, f32x4_abs(v));
        }
        let mut m = lanes_max(m);
        for v in tail {
            m = if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) };
        }
        m
    }

    /// Eight values to i16 lanes: `round(x · inv)`, ties to even, saturating.
    #[inline(always)]
    fn round8(lo: v128, hi: v128, inv: v128) -> v128 {
        let lo = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(lo, inv)));
        let hi = i32x4_trunc_sat_f32x4(f32x4_nearest(f32x4_mul(hi, inv)));
        i16x8_narrow_i32x4(lo, hi)
    }

    pub fn round_into(x: &[f32], inv: f32, out: &mut [i16]) {
        let n8 = x.len() - x.len() % 8;
        let s = f32x4_splat(inv);
        for i in (0..n8).step_by(8) {
            // SAFETY: i + 8 <= n8 <= x.len() = out.len() (the caller cuts out to x's length).
            unsafe {
                let lo = v128_load(x.as_ptr().add(i) as *const v128);
                let hi = v128_load(x.as_ptr().add(i + 4) as *const v128);
                v128_store(out.as_mut_ptr().add(i) as *mut v128, round8(lo, hi, s));
            }
        }
        for (o, v) in out[n8..].iter_mut().zip(&x[n8..]) {
            *o = (v * inv).round_ties_even() as i16;
        }
    }

    pub fn col_max(a: f32, row: &[f32], max: &mut [f32]) {
        let n4 = row.len() - row.len() % 4;
        let av = f32x4_splat(a);
        for j in (0..n4).step_by(4) {
            // SAFETY: j + 4 <= n4 <= row.len() = max.len().
            unsafe {
                let m = max.as_mut_ptr().add(j) as *mut v128;
                let v = f32x4_mul(av, f32x4_abs(v128_load(row.as_ptr().add(j) as *const v128)));
                v128_store(m, f32x4_max(v128_load(m), v));
            }
        }
        for (m, v) in max[n4..].iter_mut().zip(&row[n4..]) {
            let x = a * v.abs();
            *m = if m.is_nan() || x.is_nan() { f32::NAN } else { m.max(x) };
        }
    }

    pub fn pack_pair(
        r0: Option<(f32, &[f32])>,
        r1: Option<(f32, &[f32])>,
        inv: &[f32],
        q: &mut [i16],
        p: usize,
        pairs: usize,
    ) {
        let w = inv.len();
        let w4 = w - w % 4;
        let zero = f32x4_splat(0.0);
        // A row past the end is zero: (0 · 0) · inv.
        let (a0, k0) = r0.map_or((0.0, None), |(a, r)| (a, Some(r)));
        let (a1, k1) = r1.map_or((0.0, None), |(a, r)| (a, Some(r)));
        let (a0, a1) = (f32x4_splat(a0), f32x4_splat(a1));
        let one = f32x4_splat(1.0);
        for j in (0..w4).step_by(4) {
            // SAFETY: j + 4 <= w4 <= w (each row and inv hold w values); the store goes to pair
            // p's four columns j..j+4, within q (cols · pairs · 2 values, cols ≥ w).
            unsafe {
                let load = |k: Option<&[f32]>| k.map_or(zero, |k| v128_load(k.as_ptr().add(j) as *const v128));
                let iv = v128_load(inv.as_ptr().add(j) as *const v128);
                let x0 = f32x4_mul(f32x4_mul(a0, load(k0)), iv);
                let x1 = f32x4_mul(f32x4_mul(a1, load(k1)), iv);
                let q8 = round8(x0, x1, one);
                let at = ((j / COLS) * pairs * COLS + p * COLS + j % COLS) * 2;
                v128_store(q.as_mut_ptr().add(at) as *mut v128, i16x8_shuffle::<0, 4, 1, 5, 2, 6, 3, 7>(q8, q8));
            }
        }
        for (e, r) in [r0, r1].into_iter().enumerate() {
            let Some((a, row)) = r else { continue };
            for j in w4..w {
                let at = ((j / COLS) * pairs * COLS + p * COLS + j % COLS) * 2 + e;
                q[at] = (a * row[j] * inv[j]).round_ties_even() as i16;
            }
        }
    }

    /// `acc += dot(x, b)` for a row's pair `x` (splat) and the tile's four vectors of pairs.
    #[inline(always)]
    fn row_step(acc: [v128; VECS], x: v128, b: [v128; VECS]) -> [v128; VECS] {
        let [a0, a1, a2, a3] = acc;
        let [b0, b1, b2, b3] = b;
        [
            i32x4_add(a0, i32x4_dot_i16x8(x, b0)),
            i32x4_add(a1, i32x4_dot_i16x8(x, b1)),
            i32x4_add(a2, i32x4_dot_i16x8(x, b2)),
            i32x4_add(a3, i32x4_dot_i16x8(x, b3)),
        ]
    }

    /// The tile's four vectors of pair `p` of a packed block.
    ///
    /// # Safety
    /// The block holds pair `p` (`COLS` pairs of values).
    #[inline(always)]
    unsafe fn block_pair(block: *const i16, p: usize) -> [v128; VECS] {
        // SAFETY: as the caller promises.
        unsafe {
            let at = block.add(p * COLS * 2);
            [
                v128_load(at as *const v128),
                v128_load(at.add(8) as *const v128),
                v128_load(at.add(16) as *const v128),
                v128_load(at.add(24) as *const v128),
            ]
        }
    }

    /// `f += acc` as f32, lane by lane.
    #[inline(always)]
    fn add_as_f32(f: [v128; VECS], acc: [v128; VECS]) -> [v128; VECS] {
        let [f0, f1, f2, f3] = f;
        let [a0, a1, a2, a3] = acc;
        [
            f32x4_add(f0, f32x4_convert_i32x4(a0)),
            f32x4_add(f1, f32x4_convert_i32x4(a1)),
            f32x4_add(f2, f32x4_convert_i32x4(a2)),
            f32x4_add(f3, f32x4_convert_i32x4(a3)),
        ]
    }

    /// `r += relu(acc) · s` as f32, lane by lane.
    #[inline(always)]
    fn add_relu_scaled(r: [v128; VECS], acc: [v128; VECS], s: v128) -> [v128; VECS] {
        let zero = i32x4_splat(0);
        let term = |a: v128| f32x4_mul(f32x4_convert_i32x4(i32x4_max(a, zero)), s);
        let [r0, r1, r2, r3] = r;
        let [a0, a1, a2, a3] = acc;
        [f32x4_add(r0, term(a0)), f32x4_add(r1, term(a1)), f32x4_add(r2, term(a2)), f32x4_add(r3, term(a3))]
    }

    // The tiles are written out (two rows, four vectors, as whole arrays destructured) rather
    // than looped over: the browser's build is optimised for size (`opt-level = "z"`), which
    // unrolls no loop, and a looped tile's accumulators then live in memory (4.5x slower).
    const _: () = assert!(ROWS == 2 && VECS == 4);

    /// # Safety
    /// The operands fit (`super::dc_product` asserts it).
    pub unsafe fn dc_product(a: &[i16], b: &[i16], rows: usize, pairs: usize, cols: usize, out: &mut [f32]) {
        let (a, b, out) = (a.as_ptr(), b.as_ptr(), out.as_mut_ptr());
        let zero = [i32x4_splat(0); VECS];
        for cb in 0..cols / COLS {
            // SAFETY (all below): indices stay within the asserted lengths.
            let block = unsafe { b.add(cb * pairs * COLS * 2) };
            for i in (0..rows).step_by(ROWS) {
                let (r0, r1) = unsafe { (a.add(i * pairs * 2), a.add((i + 1) * pairs * 2)) };
                let (mut f0, mut f1) = (zero, zero);
                let mut p = 0;
                while p < pairs {
                    let end = (p + DC_FLUSH).min(pairs);
                    let (mut acc0, mut acc1) = (zero, zero);
                    while p < end {
                        let bv = unsafe { block_pair(block, p) };
                        acc0 = row_step(acc0, unsafe { v128_load32_splat(r0.add(2 * p) as *const u32) }, bv);
                        acc1 = row_step(acc1, unsafe { v128_load32_splat(r1.add(2 * p) as *const u32) }, bv);
                        p += 1;
                    }
                    f0 = add_as_f32(f0, acc0);
                    f1 = add_as_f32(f1, acc1);
                }
                for (r, f) in [f0, f1].into_iter().enumerate() {
                    let at = unsafe { out.add((i + r) * cols + cb * COLS) };
                    for (v, f) in f.into_iter().enumerate() {
                        unsafe { v128_store(at.add(v * 4) as *mut v128, f) };
                    }
                }
            }
        }
    }

    /// # Safety
    /// The operands fit (`super::relevance_product` asserts it).
    pub unsafe fn relevance_product(o: &RelevanceOperands, out: &mut [f32]) {
        let (v, h) = (o.values, o.heads);
        let (pairs, keys) = (v.pairs, v.keys);
        let blocks = keys / COLS;
        let (qp, vp, op) = (o.q.as_ptr(), v.q.as_ptr(), out.as_mut_ptr());
        let zero = [i32x4_splat(0); VECS];
        let zf = [f32x4_splat(0.0); VECS];
        for hh in 0..h {
            for kb in 0..blocks {
                // SAFETY (all below): indices stay within the asserted lengths.
                let block = unsafe { vp.add((hh * blocks + kb) * pairs * COLS * 2) };
                let mut racc = zf;
                for i in (0..o.rows).step_by(ROWS) {
                    let r0 = unsafe { qp.add((i * h + hh) * pairs * 2) };
                    let r1 = unsafe { qp.add(((i + 1) * h + hh) * pairs * 2) };
                    let (mut acc0, mut acc1) = (zero, zero);
                    for p in 0..pairs {
                        let bv = unsafe { block_pair(block, p) };
                        acc0 = row_step(acc0, unsafe { v128_load32_splat(r0.add(2 * p) as *const u32) }, bv);
                        acc1 = row_step(acc1, unsafe { v128_load32_splat(r1.add(2 * p) as *const u32) }, bv);
                    }
                    racc = add_relu_scaled(racc, acc0, f32x4_splat(o.scale[i * h + hh]));
                    racc = add_relu_scaled(racc, acc1, f32x4_splat(o.scale[(i + 1) * h + hh]));
                }
                for (k, ra) in racc.into_iter().enumerate() {
                    let at = kb * COLS + k * 4;
                    unsafe {
                        let o = op.add(at) as *mut v128;
                        let s = v128_load(v.scale.as_ptr().add(hh * keys + at) as *const v128);
                        v128_store(o, f32x4_add(v128_load(o), f32x4_mul(ra, s)));
                    }
                }
            }
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
/// For the tests: every kernel of the form that runs here (SIMD in wasm) against the portable
/// form, which must be equal to the last bit (the same arithmetic in the same order), with
/// remainders of every vector, tile and pair, a NaN and an infinity. `Err` says which differs.
pub fn check_simd_against_portable() -> Result<(), String> {
    use crate::testing::values;
    let same = |what: &str, x: &[f32], y: &[f32]| {
        let eq = x.len() == y.len() && x.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits());
        if eq { Ok(()) } else { Err(format!("{what} differs from its portable form")) }
    };
    let same_i = |what: &str, x: &[i16], y: &[i16]| {
        if x == y { Ok(()) } else { Err(format!("{what} differs from its portable form")) }
    };
    // Rounding and maxima, at lengths around the vectors' (and with NaN, an infinity).
    for len in [1usize, 3, 4, 7, 8, 9, 17, 64] {
        let mut x = values(len, len as u32, -3.0, 3.0);
        same("abs_max", &[abs_max(&x)], &[portable::abs_max(&x)])?;
        let (mut here, mut there) = (vec![0i16; len], vec![0i16; len]);
        round_into(&x, 2730.5, &mut here);
        portable::round_into(&x, 2730.5, &mut there);
        same_i("round_into", &here, &there)?;
        let (mut here, mut there) = (values(len, 9, 0.0, 2.0), values(len, 9, 0.0, 2.0));
        col_max(0.7, &x, &mut here);
        portable::col_max(0.7, &x, &mut there);
        same("col_max", &here, &there)?;
        x[len / 2] = if len % 2 == 0 { f32::NAN } else { f32::INFINITY };
        same("abs_max with NaN", &[abs_max(&x)], &[portable::abs_max(&x)])?;
    }
    // Packing, with widths and row counts off the tiles.
    for (m, w) in [(5usize, 7usize), (6, 16), (3, 33)] {
        let (a, k) = (values(m, 1, -2.0, 2.0), values(m * w, 2, -1.0, 1.0));
        let (pairs, cols) = (m.div_ceil(2), w.next_multiple_of(COLS));
        let inv = values(w, 3, 100.0, 4000.0);
        let (mut here, mut there) = (vec![0i16; cols * pairs * 2], vec![0i16; cols * pairs * 2]);
        for p in 0..pairs {
            let row = |kk: usize| (kk < m).then(|| (a[kk], &k[kk * w..(kk + 1) * w]));
            pack_pair(row(2 * p), row(2 * p + 1), &inv, &mut here, p, pairs);
            portable::pack_pair(row(2 * p), row(2 * p + 1), &inv, &mut there, p, pairs);
        }
        same_i("pack_pair", &here, &there)?;
    }
    // The products, at the extreme levels' range.
    let ints = |len: usize, seed: u32, levels: i32| -> Vec<i16> {
        values(len, seed, -(levels as f32), levels as f32 + 1.0).iter().map(|v| v.floor() as i16).collect()
    };
    let (rows, pairs, cols, h) = (6, 37, 2 * COLS, 3);
    let (a, b) = (ints(rows * pairs * 2, 1, DC_LEVELS), ints(cols * pairs * 2, 2, DC_LEVELS));
    let (mut here, mut there) = (vec![0f32; rows * cols], vec![0f32; rows * cols]);
    for kernel in IntKernel::available() {
        dc_product(kernel, &a, &b, rows, pairs, cols, &mut here);
        portable::dc_product(&a, &b, rows, pairs, cols, &mut there);
        same(&format!("dc_product ({kernel:?})"), &here, &there)?;
    }
    let d = 2 * pairs;
    let levels = rel_levels(d);
    let packed = PackedValues::new(&values(h * 40 * d, 4, -1.0, 1.0), h, 40, d);
    let q = ints(rows * h * d, 3, levels);
    let scale = values(rows * h, 5, 0.0, 1e-3);
    let o = RelevanceOperands { q: &q, scale: &scale, rows, heads: h, values: &packed };
    let mut there = vec![0.5f32; packed.keys];
    portable::relevance_product(&o, &mut there);
    for kernel in IntKernel::available() {
        let mut here = vec![0.5f32; packed.keys];
        relevance_product(kernel, &o, &mut here);
        same(&format!("relevance_product ({kernel:?})"), &here, &there)?;
    }
    Ok(())
}
