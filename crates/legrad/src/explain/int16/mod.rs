//! LeGrad's per-prompt products on the CPU in 16-bit integers: the browser's CPU path, and x86's.
//!
//! A new prompt on the CPU is two products per layer: `main = (act' ⊙ a) K` (`[N, 4W] x [4W, W]`)
//! and `dA_h = dc_h V_hᵀ` per head, then `Σ_h Σ_i relu(dA_h)`. In wasm, f32 products run on
//! 128-bit SIMD without fused multiply-add (relaxed SIMD's `f32x4.relaxed_madd` is not in every
//! browser, and a module that uses it does not validate where it is missing): `gemm` reaches
//! about 10 G multiply-adds/s per thread there. `i32x4.dot_i16x8_s`, which every browser with
//! SIMD has, does eight 16-bit multiply-adds in one instruction: the same products at about
//! 25 G/s (docs/benchmarks-history.md §5).
//!
//! The factors are rounded to integers with one scale per row or column, which is where the
//! precision goes: `act'` per query row and `diag(a) K` per output column at ±[`DC_LEVELS`]
//! (14 bits), `dc` per query row and head and the values per key and head at
//! ±[`rel_levels`] (13 bits for 64-wide heads). The sums are exact in 32-bit integers (the
//! levels are chosen so that no sum can overflow: `main`'s are moved into f32 every
//! [`kernels::DC_FLUSH`] pairs), so the integer arithmetic of the SIMD form and of the portable form
//! used natively is the same, and so are their results. What the rounding costs the maps is
//! measured in docs/benchmarks-history.md §5 (and bounded by the tests): far below what 8-bit weights cost.
//!
//! [`relevance_sums`] is the kernel's launcher on burn's CPU tensors (in place, no copy of the
//! trace); [`LayerTerms::relevance_sums_plain`] is its plain-tensor twin. It runs where the
//! engine's [`ComputePolicy`](crate::compute::ComputePolicy) says so: for layers of at least
//! [`INT16_MIN_WORK`](crate::compute::INT16_MIN_WORK) multiply-adds (a ViT-B/16 at any size; not
//! the small default model, which stays exact), in wasm and natively on x86 with AVX2 or
//! AVX-512 VNNI.
//!
//! **Where the tower's linear layers are on the integer grid** (`model::int_linear`: a
//! ViT-B/16 on the CPU, in the browser and natively) `main` is their product: `K` on their grid
//! (a scale per row of `K`, made once per model and layer: [`super::terms::FoldedK::Grid`], sent
//! once per model to the browser's helpers) against the rows of `act' ⊙ a` rounded per prompt,
//! where the form above rounds `diag(a) K` per prompt: two passes over `K`'s 9 MB (f32, a
//! ViT-B/16's layer) per prompt, which natively cost more than the products (history §10), and
//! an f32 `K` held by the engine and each helper. The form above stays for a `K` held as a
//! tensor. The relevance's product has AVX2 and AVX-512 VNNI forms (the same sums in the same
//! order as the portable one: equal to the bit), and natively `main`'s rows, the blocks of keys
//! and the rounding of rows go over rayon's threads. Both forms are checked against the plain
//! twin.

use burn::backend::tensor::FloatTensor;
use burn::backend::{DispatchDevice, Flex};
use burn::tensor::{DType, Tensor, TensorData};

use super::terms::{FoldedK, LayerTerms};
use crate::model::int_linear::{IntKernel, IntMatrix};

pub mod kernels;

#[cfg(any(test, feature = "test-support"))]
use crate::testing::values;
use kernels::{
    COLS, DC_LEVELS, PackedValues, QuantRows, ROWS, RelevanceOperands, dc_product, pack_scaled, rel_levels,
    relevance_product,
};

/// A CPU tensor's f32 values where they lie (contiguous, row-major), kept alive while read.
struct Host {
    t: FloatTensor<Flex>,
    range: (usize, usize),
}

impl Host {
    fn of<const D: usize>(t: &Tensor<D>) -> Option<Self> {
        let t = t.clone().try_into_primitive::<Flex>().ok()?;
        if t.dtype() != DType::F32 {
            return None;
        }
        let range = t.layout().contiguous_offsets()?;
        Some(Self { t, range })
    }

    fn data(&self) -> &[f32] {
        &self.t.storage::<f32>()[self.range.0..self.range.1]
    }
}

/// `Σ_h Σ_i relu(dA_h)[:, i, :]` `[P, N]` over the terms' query rows, as
/// [`LayerTerms::relevance_sums_plain`], by 16-bit integer products. `None` where the terms are
/// not f32 tensors of burn's CPU backend (the caller then takes the plain form).
pub fn relevance_sums(t: &LayerTerms, kernel: IntKernel) -> Option<Tensor<2>> {
    let device = t.act_grad.device();
    if !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        return None;
    }
    let ([r, m], [km, w], [p, mw], [h, n, d]) = (t.act_grad.dims(), t.k.dims(), t.ag.dims(), t.values.dims());
    if km != m || mw != m + w || h * d != w || t.m.dims() != [p, 2 * r] {
        return None;
    }
    let act = Host::of(&t.act_grad)?;
    let ag = Host::of(&t.ag)?;
    let mm = Host::of(&t.m)?;
    let ones_out = Host::of(&t.ones_out)?;
    let xhat_out = Host::of(&t.xhat_out)?;
    let rstd = Host::of(&t.rstd)?;
    let values = Host::of(&t.values)?;
    let shape = Shape { r, m, w, h, n, d, kernel };
    let v = PackedValues::new(values.data(), h, n, d);
    // `K` on the linear layers' grid (a tower on it): per prompt only the rows `act' ⊙ a`
    // rounded; a tensor `K`: `act'` rounded once here and `diag(a) K` per prompt.
    let k_here;
    let main = match &t.k {
        FoldedK::Grid(k) => Main::OnGrid(k),
        FoldedK::Tensor(k) => {
            k_here = Host::of(k)?;
            Main::PerPrompt(QuantRows::new(act.data(), r, m, DC_LEVELS), k_here.data())
        }
    };
    let mut sums = Vec::with_capacity(p * n);
    for q in 0..p {
        let ag = &ag.data()[q * (m + w)..(q + 1) * (m + w)];
        let terms = PromptTerms {
            a: &ag[..m],
            g_out: &ag[m..],
            m1: &mm.data()[q * 2 * r..q * 2 * r + r],
            m2: &mm.data()[q * 2 * r + r..(q + 1) * 2 * r],
        };
        let (ones_out, xhat_out, rstd) = (ones_out.data(), xhat_out.data(), rstd.data());
        let dc = match &main {
            Main::OnGrid(k) => head_gradient_on_grid(&shape, act.data(), k, &terms, ones_out, xhat_out, rstd),
            Main::PerPrompt(a, k) => head_gradient(&shape, a, k, &terms, ones_out, xhat_out, rstd),
        };
        sums.extend(relevance_of(&shape, &dc, &v));
    }
    Some(Tensor::from_data(TensorData::new(sums, [p, n]), &device))
}

/// How `main = (act' ⊙ a) K` is multiplied (`relevance_sums`).
enum Main<'a> {
    /// `K` on the linear layers' grid against `act' ⊙ a` rounded per prompt ([`head_gradient_on_grid`]).
    OnGrid(&'a IntMatrix),
    /// `act'` rounded once, `diag(a) K` per prompt ([`head_gradient`]).
    PerPrompt(QuantRows, &'a [f32]),
}

/// The dimensions: `r` query rows, `m` hidden (4W), `w` width, `h` heads of `d`, `n` keys.
struct Shape {
    /// The form of `main`'s product.
    kernel: IntKernel,
    r: usize,
    m: usize,
    w: usize,
    h: usize,
    n: usize,
    d: usize,
}

/// One prompt's vectors: `a = g W_projᵀ` `[M]`, `g W_outᵀ` `[W]`, the mean terms `[R]` each.
struct PromptTerms<'a> {
    a: &'a [f32],
    g_out: &'a [f32],
    m1: &'a [f32],
    m2: &'a [f32],
}

/// `dc` `[R, W]` of one prompt: `(main - m₁ 1ᵀW_outᵀ - m₂ x̂W_outᵀ) ⊙ rstd + g W_outᵀ`, with
/// `main = (act' ⊙ a) K` by the integer product.
fn head_gradient(
    s: &Shape,
    act: &QuantRows,
    k: &[f32],
    t: &PromptTerms,
    ones_out: &[f32],
    xhat_out: &[f32],
    rstd: &[f32],
) -> Vec<f32> {
    let (bq, bscale) = pack_scaled(t.a, k, s.m, s.w);
    let cols = s.w.next_multiple_of(COLS);
    let mut main = vec![0f32; act.rows * cols];
    dc_product(s.kernel, &act.q, &bq, act.rows, act.len / 2, cols, &mut main);
    let mut dc = vec![0f32; s.r * s.w];
    for i in 0..s.r {
        let (sa, m1, m2, rs) = (act.scale[i], t.m1[i], t.m2[i], rstd[i]);
        let out = dc[i * s.w..(i + 1) * s.w].iter_mut();
        let src = main[i * cols..i * cols + s.w].iter().zip(&bscale);
        let rest = ones_out.iter().zip(&xhat_out[i * s.w..(i + 1) * s.w]).zip(t.g_out);
        for ((o, (x, sb)), ((one, xo), g)) in out.zip(src).zip(rest) {
            *o = (x * (sa * sb) - m1 * one - m2 * xo) * rs + g;
        }
    }
    dc
}

/// [`head_gradient`] with `main = (act' ⊙ a) K` by the linear layers' integer product
/// (`model::int_linear`: `K` with a scale per row, each row of `act' ⊙ a` rounded with its own).
fn head_gradient_on_grid(
    s: &Shape,
    act: &[f32],
    k: &IntMatrix,
    t: &PromptTerms,
    ones_out: &[f32],
    xhat_out: &[f32],
    rstd: &[f32],
) -> Vec<f32> {
    let mut x = vec![0f32; s.r * s.m];
    let row = |(x, act): (&mut [f32], &[f32])| {
        for ((x, h), a) in x.iter_mut().zip(act).zip(t.a) {
            *x = h * a;
        }
    };
    #[cfg(not(target_family = "wasm"))]
    {
        use rayon::prelude::*;
        x.par_chunks_mut(s.m).zip(act.par_chunks(s.m)).for_each(row);
    }
    #[cfg(target_family = "wasm")]
    x.chunks_mut(s.m).zip(act.chunks(s.m)).for_each(row);
    let main = k.forward(&x, s.r, &vec![0f32; s.w]);
    let mut dc = vec![0f32; s.r * s.w];
    for i in 0..s.r {
        let (m1, m2, rs) = (t.m1[i], t.m2[i], rstd[i]);
        let out = dc[i * s.w..(i + 1) * s.w].iter_mut().zip(&main[i * s.w..(i + 1) * s.w]);
        let rest = ones_out.iter().zip(&xhat_out[i * s.w..(i + 1) * s.w]).zip(t.g_out);
        for ((o, x), ((one, xo), g)) in out.zip(rest) {
            *o = (x - m1 * one - m2 * xo) * rs + g;
        }
    }
    dc
}

/// `Σ_h Σ_i relu(dc_h V_hᵀ)` `[N]` of one prompt's `dc` `[R, W]`.
fn relevance_of(s: &Shape, dc: &[f32], v: &PackedValues) -> Vec<f32> {
    // `dc` `[R, W]` is `[R·H, d]`: one scale per row and head. The kernel reads whole tiles of
    // query rows, so the padding is whole rows of every head.
    let mut q = QuantRows::new(dc, s.r * s.h, s.d, rel_levels(s.d));
    let rows = s.r.next_multiple_of(ROWS);
    q.q.resize(rows * s.h * q.len, 0);
    q.scale.resize(rows * s.h, 0.0);
    let mut out = vec![0f32; v.keys];
    relevance_product(s.kernel, &RelevanceOperands { q: &q.q, scale: &q.scale, rows, heads: s.h, values: v }, &mut out);
    out.truncate(s.n);
    out
}

#[cfg(any(test, feature = "test-support"))]
/// The shapes [`check_against_plain`] runs: `(rows, hidden, heads, head width, keys, prompts)`,
/// with remainders of every tile and pair, and one ViT-B/16-like layer's proportions.
pub const CHECKED_SHAPES: [(usize, usize, usize, usize, usize, usize); 4] =
    [(7, 10, 3, 8, 9, 2), (1, 33, 1, 6, 2, 1), (40, 96, 4, 16, 40, 1), (65, 3072, 12, 64, 197, 1)];

#[cfg(any(test, feature = "test-support"))]
/// The largest difference [`check_against_plain`] allows, relative to the largest sum.
pub const CHECKED_TOL: f32 = 5e-4;

#[cfg(any(test, feature = "test-support"))]
/// Random terms of one layer for `(rows, hidden, heads, head width, keys, prompts)` on the CPU
/// (`act'` in GELU's derivative's range).
pub fn random_terms(shape: (usize, usize, usize, usize, usize, usize), seed: u32) -> LayerTerms {
    let (r, m, h, d, n, p) = shape;
    let w = h * d;
    let device = burn::tensor::Device::flex();
    let t = |v: Vec<f32>, dims: &[usize]| TensorData::new(v, dims.to_vec());
    LayerTerms {
        act_grad: Tensor::from_data(t(values(r * m, seed, -0.17, 1.13), &[r, m]), &device),
        ag: Tensor::from_data(t(values(p * (m + w), seed + 1, -1.0, 1.0), &[p, m + w]), &device),
        k: FoldedK::Tensor(Tensor::from_data(t(values(m * w, seed + 2, -0.1, 0.1), &[m, w]), &device)),
        m: Tensor::from_data(t(values(p * 2 * r, seed + 3, -0.5, 0.5), &[p, 2 * r]), &device),
        ones_out: Tensor::from_data(t(values(w, seed + 4, -1.0, 1.0), &[w]), &device),
        xhat_out: Tensor::from_data(t(values(r * w, seed + 5, -1.0, 1.0), &[r, w]), &device),
        rstd: Tensor::from_data(t(values(r, seed + 6, 0.5, 2.0), &[r]), &device),
        values: Tensor::from_data(t(values(h * n * d, seed + 7, -1.0, 1.0), &[h, n, d]), &device),
    }
}

#[cfg(any(test, feature = "test-support"))]
/// For the tests, natively and in the browser (where the SIMD form runs): the kernel's sums
/// against its twin's ([`LayerTerms::relevance_sums_plain`]) on random terms of `shape`. The
/// largest difference relative to the twin's largest sum, or why the kernel did not run.
pub fn check_against_plain(shape: (usize, usize, usize, usize, usize, usize)) -> Result<f32, String> {
    let t = random_terms(shape, 11);
    let read = |x: Tensor<2>| x.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
    let plain = read(t.relevance_sums_plain())?;
    let (m, w) = (shape.1, shape.2 * shape.3);
    let k = t.k.tensor(&t.act_grad.device()).into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"))?;
    // Every form this CPU runs, each with `K` as a tensor (rounded per prompt) and, where its
    // width fits the tiles, on the linear layers' grid (against the grid's values: its twin).
    let mut worst = 0f32;
    for kernel in IntKernel::available() {
        let mut forms = vec![(t.clone(), plain.clone())];
        if IntMatrix::fits(m, w) {
            let on_grid = LayerTerms { k: FoldedK::Grid(IntMatrix::from_in_out(&k, m, w, kernel).into()), ..t.clone() };
            let twin = read(on_grid.relevance_sums_plain())?;
            forms.push((on_grid, twin));
        }
        for (terms, twin) in forms {
            let ours = relevance_sums(&terms, kernel).ok_or("the kernel did not take the terms")?;
            let d = crate::testing::relative_diff(&read(ours)?, &twin).map_err(|e| format!("{kernel:?}: {e}"))?;
            worst = if d.is_nan() || worst.is_nan() { f32::NAN } else { worst.max(d) };
        }
    }
    Ok(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_agrees_with_its_plain_twin() {
        for shape in CHECKED_SHAPES {
            let rel = check_against_plain(shape).unwrap();
            eprintln!("{shape:?}: largest difference {rel:.2e} of the largest sum");
            assert!(rel < CHECKED_TOL, "{shape:?}: largest difference {rel} of the largest sum");
        }
    }

    #[test]
    fn simd_and_portable_forms_agree_to_the_bit() {
        kernels::check_simd_against_portable().unwrap();
    }

    /// No sum of `main`'s products can overflow: DC_FLUSH pairs at the extreme levels, and the
    /// relevance's pairs of a head.
    #[test]
    fn integer_sums_cannot_overflow() {
        let worst = 2 * kernels::DC_FLUSH as i64 * (DC_LEVELS as i64).pow(2);
        assert!(worst <= i32::MAX as i64);
        for d in [2, 8, 32, 64, 80, 128, 256] {
            let q = rel_levels(d) as i64;
            assert!(d as i64 * q * q <= i32::MAX as i64, "d = {d}");
            assert!(q >= 1000 || d > 256, "d = {d}: only {q} levels");
        }
    }

    /// A row of zeros and a row with NaN: zeros stay zero, NaN reaches the sums.
    #[test]
    fn zero_and_nan_rows() {
        let mut out = vec![1i16; 4];
        assert_eq!(kernels::quantize(&[0.0; 4], DC_LEVELS, &mut out), 0.0);
        assert_eq!(out, [0; 4]);
        assert!(kernels::quantize(&[1.0, f32::NAN, 2.0, 0.5], DC_LEVELS, &mut out).is_nan());
        assert_eq!(kernels::quantize(&[1.0, -2.0], DC_LEVELS, &mut out[..2]), 2.0 / DC_LEVELS as f32);
        assert_eq!(&out[..2], &[4096, -8191]);
    }
}
