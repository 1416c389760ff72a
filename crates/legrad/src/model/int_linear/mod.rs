//! The vision tower's linear layers on the CPU in 16-bit integer products.
//!
//! burn's CPU backend multiplies in f32 (`gemm`): in wasm without fused multiply-add, about
//! 10 G multiply-adds/s per thread; natively about the reference's PyTorch per core at best.
//! Integer dot products do more per instruction (`i32x4.dot_i16x8_s` in wasm: eight; AVX-512
//! VNNI's `vpdpwssd`: thirty-two), and 16-bit weights take half the memory of f32 ones.
//!
//! **Weights.** `w[o, i] ≈ q[o, i] · s[i]`: one scale per input (over all outputs), `q` at
//! ±[`W_LEVELS`](kernels::W_LEVELS). A scale per input folds into the activations (`x ⊙ s`),
//! which are rounded per row anyway, so the product needs no scale inside its sums. A q8
//! checkpoint's values (`weights::quant`: a scale per block of 64 outputs and input) are
//! regridded onto this grid at load, one matrix at a time (no f32 copy is kept): the new step
//! is at most 1/4095 of the input's largest weight, a small fraction of the 8-bit step (1/127
//! of the block's largest); f32 weights are rounded to it the same way. Why not the 8-bit
//! values as stored: their scale varies along the sum (per block of outputs *and* input), so
//! the activations would be rounded once per block of outputs (36 times per row for a qkv
//! layer), which costs more than the products gain.
//!
//! **Activations.** Each row of `x ⊙ s` is rounded to ±[`X_LEVELS`](kernels::X_LEVELS) with
//! its own scale ([`kernels::quantize_row`]).
//!
//! [`IntLinear::forward`] is the launcher on burn's CPU tensors (natively the rows are split
//! over rayon's threads); under autodiff or off the CPU it multiplies by the dequantized weight
//! instead: [`IntLinear::forward_plain`], its twin, which the tests compare it with.

pub mod attention;
pub mod kernels;
pub mod share;

use std::ops::Range;
use std::sync::Arc;

use burn::backend::{DispatchDevice, Flex};
use burn::module::{Module, Param};
use burn::tensor::{DType, Device, Tensor, TensorData};

use crate::config::Activation;
use crate::error::LegradError;

pub use kernels::IntKernel;
use kernels::{Operands, ROWS, TILE, W_LEVELS, flush_pairs, product, quantize_row};

/// A weight matrix on the integer grid, packed for [`kernels::product`].
#[derive(Debug)]
pub struct IntMatrix {
    /// Per tile of [`TILE`] outputs, per pair of inputs, each output's two weights.
    q: Vec<i16>,
    /// Per input.
    scale: Vec<f32>,
    d_in: usize,
    d_out: usize,
    pairs: usize,
    kernel: IntKernel,
}

impl IntMatrix {
    /// Does a `[d_out, d_in]` matrix fit the packing (whole tiles of outputs)?
    pub fn fits(d_in: usize, d_out: usize) -> bool {
        d_in > 0 && d_out > 0 && d_out.is_multiple_of(TILE)
    }

    /// From PyTorch's layout `[d_out, d_in]`, row-major (see the module documentation).
    pub fn new(w: &[f32], d_in: usize, d_out: usize, kernel: IntKernel) -> Self {
        assert!(Self::fits(d_in, d_out) && w.len() == d_in * d_out, "IntMatrix: {d_out}x{d_in} does not fit");
        let mut max = vec![0f32; d_in];
        for row in w.chunks_exact(d_in) {
            for (m, v) in max.iter_mut().zip(row) {
                *m = nan_max(*m, *v);
            }
        }
        Self::packed(d_in, d_out, kernel, max, |o, i| w[o * d_in + i])
    }

    /// From burn's layout `[d_in, d_out]`, row-major (the attention's values, keys by dimensions).
    pub fn from_in_out(w: &[f32], d_in: usize, d_out: usize, kernel: IntKernel) -> Self {
        assert!(Self::fits(d_in, d_out) && w.len() == d_in * d_out, "IntMatrix: {d_in}x{d_out} does not fit");
        let max = w.chunks_exact(d_out).map(|row| row.iter().fold(0f32, |m, &v| nan_max(m, v))).collect();
        Self::packed(d_in, d_out, kernel, max, |o, i| w[i * d_out + o])
    }

    /// Pack `w(o, i)` with one scale per input from its largest magnitude `max[i]`.
    fn packed(d_in: usize, d_out: usize, kernel: IntKernel, max: Vec<f32>, w: impl Fn(usize, usize) -> f32) -> Self {
        // A weight that is NaN or infinite makes its input's scale NaN (`nan_max`), so that the
        // outputs it reaches are NaN, as in f32 (never a zero in its place).
        let scale: Vec<f32> = max.iter().map(|&m| if m.is_finite() { m / W_LEVELS as f32 } else { f32::NAN }).collect();
        let inv: Vec<f32> = scale.iter().map(|&s| if s > 0.0 { 1.0 / s } else { 0.0 }).collect();
        let pairs = d_in.div_ceil(2);
        let tiles = d_out / TILE;
        let mut q = vec![0i16; tiles * pairs * 2 * TILE];
        // Output tile by tile, input pair by pair: the packed order, written in sequence.
        for t in 0..tiles {
            for p in 0..pairs {
                let dst = &mut q[(t * pairs + p) * 2 * TILE..(t * pairs + p + 1) * 2 * TILE];
                for lane in 0..TILE {
                    for half in 0..2 {
                        let i = 2 * p + half;
                        if i < d_in {
                            let v = w(t * TILE + lane, i) * inv[i];
                            dst[lane * 2 + half] = kernels::round_half_even(v).clamp(-4095.0, 4095.0) as i16;
                        }
                    }
                }
            }
        }
        Self { q, scale, d_in, d_out, pairs, kernel }
    }

    /// The weights it multiplies by, in burn's layout `[d_in, d_out]`.
    pub fn dequantized(&self) -> Vec<f32> {
        let mut w = vec![0f32; self.d_in * self.d_out];
        for i in 0..self.d_in {
            let (p, half) = (i / 2, i % 2);
            for o in 0..self.d_out {
                let (t, lane) = (o / TILE, o % TILE);
                w[i * self.d_out + o] = self.q[((t * self.pairs + p) * TILE + lane) * 2 + half] as f32 * self.scale[i];
            }
        }
        w
    }

    /// [`dequantized`](Self::dequantized) as a tensor `[d_in, d_out]` on `device`: the plain
    /// twin's operand, and burn's product where the integer one does not run.
    pub fn weight(&self, device: &Device) -> Tensor<2> {
        Tensor::from_data(TensorData::new(self.dequantized(), [self.d_in, self.d_out]), device)
    }

    /// `dx [rows, d_in] = dy [rows, d_out] · W`: a gradient through the layer, in f32 over the
    /// stored weights (no f32 copy of the matrix; the text tower's word relevance,
    /// [`crate::explain::words`]). Its twin is the product with [`dequantized`](Self::dequantized).
    pub fn backward(&self, dy: &[f32], rows: usize) -> Vec<f32> {
        assert!(dy.len() == rows * self.d_out, "IntMatrix::backward: operands do not fit");
        // A pair of inputs has 2·TILE stored values per tile (each output's two weights side by
        // side): summed lane by lane over the tiles against the gradient with each value
        // doubled, in registers, a multiply and an add per stored weight that the compiler
        // vectorizes; the lanes are summed at the end. Up to `GROUP` rows at once, so that a
        // block of weights is read and converted once for them (a prompt batch's rows).
        const BLOCK: usize = 2 * TILE;
        const GROUP: usize = 4;
        let tiles = self.d_out / TILE;
        let mut dx = vec![0f32; rows * self.d_in];
        let doubled: Vec<f32> = dy.iter().flat_map(|&v| [v, v]).collect();
        for first in (0..rows).step_by(GROUP) {
            let group = GROUP.min(rows - first);
            for p in 0..self.pairs {
                let mut acc = [[0f32; BLOCK]; GROUP];
                for t in 0..tiles {
                    let w: &[i16; BLOCK] = self.q[(t * self.pairs + p) * BLOCK..][..BLOCK].try_into().expect("a block");
                    let w: [f32; BLOCK] = std::array::from_fn(|k| w[k] as f32);
                    for (g, acc) in acc.iter_mut().enumerate().take(group) {
                        let r = first + g;
                        let dr: &[f32; BLOCK] =
                            doubled[(r * tiles + t) * BLOCK..][..BLOCK].try_into().expect("a block");
                        for k in 0..BLOCK {
                            acc[k] += w[k] * dr[k];
                        }
                    }
                }
                for (g, acc) in acc.iter().enumerate().take(group) {
                    let out = &mut dx[(first + g) * self.d_in..][..self.d_in];
                    for half in 0..2 {
                        let i = 2 * p + half;
                        if i < self.d_in {
                            let sum: f32 = (0..TILE).map(|lane| acc[2 * lane + half]).sum();
                            out[i] = sum * self.scale[i];
                        }
                    }
                }
            }
        }
        dx
    }

    /// `y [rows, d_out] = x [rows, d_in] · Wᵀ + bias`, the rows over rayon's threads natively.
    pub fn forward(&self, x: &[f32], rows: usize, bias: &[f32]) -> Vec<f32> {
        self.forward_after(x, rows, bias, None)
    }

    /// `act(x) · Wᵀ + bias` where `act` is given: the activation applied to each row as it is
    /// rounded (no activated copy of `x` is made).
    pub fn forward_after(&self, x: &[f32], rows: usize, bias: &[f32], act: Option<Activation>) -> Vec<f32> {
        assert!(x.len() == rows * self.d_in && bias.len() == self.d_out, "IntMatrix::forward: operands do not fit");
        let mut y = vec![0f32; rows * self.d_out];
        let part = |x: &[f32], y: &mut [f32]| self.rows_into(x, y, bias, act);
        #[cfg(not(target_family = "wasm"))]
        {
            use rayon::prelude::*;
            // Shares of whole steps, a few per thread (the rows are independent).
            let per = rows.div_ceil(4 * rayon::current_num_threads()).next_multiple_of(ROWS).max(ROWS);
            x.par_chunks(per * self.d_in).zip(y.par_chunks_mut(per * self.d_out)).for_each(|(x, y)| part(x, y));
        }
        #[cfg(target_family = "wasm")]
        part(x, &mut y);
        y
    }

    /// Rows `x` into `y` on this thread (`act`: applied to each row first).
    pub fn rows_into(&self, x: &[f32], y: &mut [f32], bias: &[f32], act: Option<Activation>) {
        let rows = self.quantize(x, act);
        self.product_into(&rows, 0..self.d_out / TILE, bias, y);
    }

    /// The rows of `x` (`act` applied first) rounded for this matrix's inputs.
    pub fn quantize(&self, x: &[f32], act: Option<Activation>) -> QuantizedRows {
        self.quantize_inputs(x, 0..self.d_in, act)
    }

    /// The rows of `x` `[rows, |inputs|]` (`act` applied first) rounded for this matrix's inputs
    /// `inputs` (starting at an even input): what a share of its inputs multiplies ([`share`]).
    pub fn quantize_inputs(&self, x: &[f32], inputs: Range<usize>, act: Option<Activation>) -> QuantizedRows {
        assert!(inputs.start.is_multiple_of(2) && inputs.end <= self.d_in, "IntMatrix: inputs {inputs:?} do not fit");
        let width = inputs.len();
        let rows = x.len() / width.max(1);
        let padded = rows.next_multiple_of(ROWS);
        let pairs = width.div_ceil(2);
        let len = 2 * pairs;
        let mut xq = vec![0i16; padded * len];
        let mut sx = vec![0f32; padded];
        let mut activated = vec![0f32; if act.is_some() { width } else { 0 }];
        let scale = &self.scale[inputs.clone()];
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let row = match act {
                Some(act) => {
                    activated.copy_from_slice(row);
                    activate_in_place(act, &mut activated);
                    &activated[..]
                }
                None => row,
            };
            sx[r] = quantize_row(row, scale, &mut xq[r * len..r * len + width]);
        }
        QuantizedRows { xq, sx, rows, padded, first_pair: inputs.start / 2, pairs }
    }

    /// `y [rows, 16·|tiles|]`: the outputs of tiles `tiles` alone, `bias` theirs, over the
    /// inputs `x` was rounded for.
    pub fn product_into(&self, x: &QuantizedRows, tiles: Range<usize>, bias: &[f32], y: &mut [f32]) {
        let cols = tiles.len() * TILE;
        let o = Operands {
            xq: &x.xq,
            sx: &x.sx,
            rows: x.padded,
            pairs: x.pairs,
            w: &self.q[(tiles.start * self.pairs + x.first_pair) * 2 * TILE..],
            stride: self.pairs,
            tiles: tiles.len(),
            bias,
            flush: flush_pairs(W_LEVELS),
        };
        if x.padded == x.rows {
            product(self.kernel, &o, y);
        } else {
            let mut out = vec![0f32; x.padded * cols];
            product(self.kernel, &o, &mut out);
            y.copy_from_slice(&out[..x.rows * cols]);
        }
    }

    /// A matrix of the outputs in `tiles` (ranges of tiles, in order), the same scales: a
    /// share of this one's columns that another thread multiplies ([`share`]).
    pub fn columns(&self, tiles: &[Range<usize>]) -> IntMatrix {
        let per_tile = self.pairs * 2 * TILE;
        let q: Vec<i16> = tiles.iter().flat_map(|t| &self.q[t.start * per_tile..t.end * per_tile]).copied().collect();
        let d_out = tiles.iter().map(|t| t.len() * TILE).sum();
        IntMatrix { q, scale: self.scale.clone(), d_in: self.d_in, d_out, pairs: self.pairs, kernel: self.kernel }
    }

    /// A matrix of the inputs `inputs` (starting at an even input), every output: a share of
    /// this one's inputs that another thread multiplies ([`share`]).
    pub fn inputs(&self, inputs: Range<usize>) -> IntMatrix {
        assert!(inputs.start.is_multiple_of(2) && inputs.end <= self.d_in, "IntMatrix: inputs {inputs:?} do not fit");
        let (first, pairs) = (inputs.start / 2, inputs.len().div_ceil(2));
        let q = (0..self.d_out / TILE)
            .flat_map(|t| &self.q[(t * self.pairs + first) * 2 * TILE..(t * self.pairs + first + pairs) * 2 * TILE])
            .copied()
            .collect();
        let scale = self.scale[inputs.clone()].to_vec();
        IntMatrix { q, scale, d_in: inputs.len(), d_out: self.d_out, pairs, kernel: self.kernel }
    }

    /// Its packed weights and scales, read ([`from_parts`](Self::from_parts) takes copies).
    pub fn parts(&self) -> (&[i16], &[f32]) {
        (&self.q, &self.scale)
    }

    /// Its packed weights and scales, to be sent elsewhere ([`from_parts`](Self::from_parts)).
    pub fn into_parts(self) -> (Vec<i16>, Vec<f32>) {
        (self.q, self.scale)
    }

    /// A matrix from [`into_parts`](Self::into_parts) of a `[d_out, d_in]` one; parts of other sizes are
    /// an error.
    pub fn from_parts(
        q: Vec<i16>,
        scale: Vec<f32>,
        d_in: usize,
        d_out: usize,
        kernel: IntKernel,
    ) -> crate::error::Result<Self> {
        let pairs = d_in.div_ceil(2);
        if !Self::fits(d_in, d_out) || scale.len() != d_in || q.len() != d_out * pairs * 2 {
            return Err(LegradError::Input(format!(
                "an integer matrix of {d_out}x{d_in} came as {} weights and {} scales",
                q.len(),
                scale.len()
            )));
        }
        Ok(IntMatrix { q, scale, d_in, d_out, pairs, kernel })
    }

    pub fn kernel(&self) -> IntKernel {
        self.kernel
    }

    pub fn d_in(&self) -> usize {
        self.d_in
    }

    pub fn d_out(&self) -> usize {
        self.d_out
    }
}

/// Rows rounded for one matrix's inputs ([`IntMatrix::quantize`]), padded to whole steps.
pub struct QuantizedRows {
    xq: Vec<i16>,
    sx: Vec<f32>,
    rows: usize,
    padded: usize,
    /// The first of the matrix's input pairs they were rounded for, and how many.
    first_pair: usize,
    pairs: usize,
}

/// `max(m, |v|)`, NaN once `v` is not finite.
fn nan_max(m: f32, v: f32) -> f32 {
    if v.is_finite() && !m.is_nan() { m.max(v.abs()) } else { f32::NAN }
}

/// A linear layer with its weight on the integer grid (the CPU path of large towers).
#[derive(Module, Debug)]
pub struct IntLinear {
    #[module(skip)]
    pub matrix: Arc<IntMatrix>,
    pub bias: Param<Tensor<1>>,
}

impl IntLinear {
    /// The weight it multiplies by, `[d_in, d_out]` on the bias's device.
    pub fn weight(&self) -> Tensor<2> {
        self.matrix.weight(&self.bias.val().device())
    }

    /// `dy Wᵀ` (the gradient at the inputs): on the host over the stored weights for plain CPU
    /// tensors, else by burn with the dequantized weight.
    pub fn backward<const D: usize>(&self, dy: Tensor<D>) -> Tensor<D> {
        let dims = dy.dims();
        if dims[D - 1] == self.matrix.d_out
            && let Some(g) = host_f32(&dy)
        {
            let rows = g.len() / self.matrix.d_out;
            let mut out = dims;
            out[D - 1] = self.matrix.d_in;
            return Tensor::from_data(TensorData::new(self.matrix.backward(&g, rows), out), &dy.device());
        }
        let w = self.weight().to_device(&dy.device());
        dy.matmul(w.transpose().unsqueeze())
    }

    /// `x W + b` by the integer kernel on plain CPU tensors, else by [`forward_plain`](Self::forward_plain).
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        match self.integer(&x) {
            Some(y) => y,
            None => self.forward_plain(x),
        }
    }

    /// The twin: burn's matmul by the dequantized weight (autodiff, other devices).
    pub fn forward_plain<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        let w = self.weight().to_device(&x.device());
        x.matmul(w.unsqueeze()) + self.bias.val().unsqueeze()
    }

    /// `act(x) W + b`: the activation fused into the integer path's rounding of the rows;
    /// else `forward_plain(act(x))` with burn's activation.
    pub fn forward_after<const D: usize>(&self, act: Activation, x: Tensor<D>) -> Tensor<D> {
        match self.integer_after(&x, Some(act)) {
            Some(y) => y,
            None => self.forward_plain(super::activation::activate(act, x)),
        }
    }

    fn integer<const D: usize>(&self, x: &Tensor<D>) -> Option<Tensor<D>> {
        self.integer_after(x, None)
    }

    fn integer_after<const D: usize>(&self, x: &Tensor<D>, act: Option<Activation>) -> Option<Tensor<D>> {
        let dims = x.dims();
        let device = x.device();
        let data = host_f32(x)?;
        if dims[D - 1] != self.matrix.d_in {
            return None;
        }
        let bias = self.bias.val().into_data().try_into_vec::<f32>().ok()?;
        let rows = data.len() / self.matrix.d_in;
        let y = self.matrix.forward_after(&data, rows, &bias, act);
        let mut out = dims;
        out[D - 1] = self.matrix.d_out;
        Some(Tensor::from_data(TensorData::new(y, out), &device))
    }
}

/// A plain CPU tensor's values (f32 on burn's CPU backend, not under autodiff); `None` else.
pub(crate) fn host_f32<const D: usize>(x: &Tensor<D>) -> Option<Vec<f32>> {
    if !matches!(x.device().as_dispatch(), DispatchDevice::Flex(_)) {
        return None;
    }
    // An autodiff tensor is not a plain Flex one: the conversion fails and burn keeps the graph.
    let t = x.clone().try_into_primitive::<Flex>().ok()?;
    if t.dtype() != DType::F32 {
        return None;
    }
    t.into_data().try_into_vec::<f32>().ok()
}

/// The activation between the integer `c_fc` and `c_proj` where the caller needs its values
/// (the integer path otherwise fuses it into `c_proj`, [`IntLinear::forward_after`]): on plain
/// CPU tensors on the host in vectorizable f32 (burn's CPU GELU calls a scalar `erf` per value:
/// on a ViT-B/16 at 224 px that took half as long as the integer products themselves); else
/// burn's.
pub fn activate<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    let Some(mut v) = host_f32(&x) else { return super::activation::activate(act, x) };
    activate_in_place(act, &mut v);
    Tensor::from_data(TensorData::new(v, x.dims()), &x.device())
}

/// GELU or QuickGELU in place. GELU's `erf` is a rational approximation (Eigen's and XLA's
/// `erf` for f32, absolute error below 5e-7 over the line: GELU within 8e-7 of the exact one,
/// far below what the 14-bit activations of `c_proj` keep).
pub fn activate_in_place(act: Activation, v: &mut [f32]) {
    match act {
        Activation::Gelu => {
            v.iter_mut().for_each(|x| *x = 0.5 * *x * (1.0 + erf(*x * std::f32::consts::FRAC_1_SQRT_2)))
        }
        Activation::QuickGelu => v.iter_mut().for_each(|x| *x /= 1.0 + exp(-1.702 * *x)),
    }
}

/// `act'(x)` for LeGrad's analytic backward where `c_proj` is on the integer grid, on the host
/// with the same `erf` and `exp` as [`activate_in_place`] (burn's form passes over the tensor
/// once per operation, a scalar `erf` and `exp` per value: a third of the engine's serial part
/// of a shared 224 px step in the browser, history §11); else burn's, its twin.
pub fn activate_grad<const D: usize>(act: Activation, x: Tensor<D>) -> Tensor<D> {
    let Some(mut v) = host_f32(&x) else { return super::activation::activate_grad(act, x) };
    activate_grad_in_place(act, &mut v);
    Tensor::from_data(TensorData::new(v, x.dims()), &x.device())
}

/// `act'(x)` in place: GELU's `Φ(x) + x φ(x)`, QuickGELU's `σ(ax) + a x σ(ax)(1 - σ(ax))`.
pub fn activate_grad_in_place(act: Activation, v: &mut [f32]) {
    const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
    match act {
        Activation::Gelu => v.iter_mut().for_each(|x| {
            let t = *x;
            *x = 0.5 * (1.0 + erf(t * std::f32::consts::FRAC_1_SQRT_2)) + t * (exp(-0.5 * t * t) * FRAC_1_SQRT_2PI)
        }),
        Activation::QuickGelu => v.iter_mut().for_each(|x| {
            let s = 1.0 / (1.0 + exp(-1.702 * *x));
            *x = s + 1.702 * *x * s * (1.0 - s)
        }),
    }
}

/// `e^x` in f32, vectorizable: `2^n · p(r)` with `r = x - n ln 2` and a degree-6 polynomial
/// (relative error below 2e-7 over `[-87, 88]`; 0 below, infinity above; NaN stays NaN).
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let c = x.clamp(-87.0, 88.0);
    let n = kernels::round_half_even(c * LOG2E);
    let r = (c - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // 2^n from its bits (n in -126..=127 after the clamp; a NaN's n gives any finite scale).
    let scale = f32::from_bits(((kernels::round_to_int(c * LOG2E) + 127) as u32 & 0xFF) << 23);
    let y = p * scale;
    if x < -87.0 {
        0.0
    } else if x > 88.0 {
        f32::INFINITY
    } else {
        y
    }
}

/// `erf(x)` in f32 by a rational function of degree 13/8 (see [`activate_in_place`]).
pub fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10_f32;
    for c in [2.770_681_4e-8, -2.101_024e-6, -5.692_506_4e-5, -7.349_906e-4, -2.954_600_1e-3, -1.609_603_3e-2] {
        p = p * x2 + c;
    }
    let mut q = -1.456_607_2e-5_f32;
    for c in [-2.133_740_6e-4, -1.682_827e-3, -7.373_329e-3, -1.426_474e-2] {
        q = q * x2 + c;
    }
    x * p / q
}

/// Where the integer path is taken, and the matrix's device for its bias.
pub fn int_linear(w: &[f32], b: Vec<f32>, d_in: usize, d_out: usize, kernel: IntKernel, device: &Device) -> IntLinear {
    let n = b.len();
    IntLinear {
        matrix: Arc::new(IntMatrix::new(w, d_in, d_out, kernel)),
        bias: Param::from_tensor(Tensor::from_data(TensorData::new(b, [n]), device)),
    }
}

#[cfg(any(test, feature = "test-support"))]
/// The shapes [`check_against_plain`] runs: `(rows, in, out)`: a remainder of a step, an odd
/// input, a ViT-B/16 layer's proportions.
pub const CHECKED_SHAPES: [(usize, usize, usize); 3] = [(7, 33, 48), (1, 64, 16), (197, 768, 2304)];

#[cfg(any(test, feature = "test-support"))]
/// For the tests, natively and in the browser: the kernel against the f32 product by the
/// original weights on random operands of `(rows, in, out)`. The largest difference relative
/// to the largest output, or why it did not run.
pub fn check_against_plain(rows: usize, k: usize, n: usize) -> Result<f32, String> {
    let device = Device::flex();
    let values = |len: usize, seed: u32, amp: f32| crate::testing::values(len, seed, -amp / 2.0, amp / 2.0);
    let w = values(n * k, 1, 0.2);
    let lin = int_linear(&w, values(n, 2, 0.1), k, n, IntKernel::best(), &device);
    let x: Tensor<3> = Tensor::from_data(TensorData::new(values(rows * k, 3, 4.0), [1, rows, k]), &device);
    let ours = lin.integer(&x).ok_or("the kernel did not take the input")?;
    // The reference: f32 by the original weights (transposed to [in, out]).
    let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
    let plain =
        x.matmul(Tensor::<2>::from_data(TensorData::new(wt, [k, n]), &device).unsqueeze()) + lin.bias.val().unsqueeze();
    let read = |t: Tensor<3>| t.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
    crate::testing::relative_diff(&read(ours)?, &read(plain)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_agrees_with_the_f32_product() {
        for (rows, k, n) in CHECKED_SHAPES {
            let rel = check_against_plain(rows, k, n).unwrap();
            eprintln!("{rows}x{k}x{n}: largest difference {rel:.2e} of the largest output");
            assert!(rel < 2e-3, "{rows}x{k}x{n}: {rel}");
        }
    }

    #[test]
    fn every_form_agrees_with_the_portable_one_to_the_bit() {
        let forms = kernels::check_forms_agree().unwrap();
        eprintln!("forms compared: {forms:?}");
    }

    #[test]
    fn no_sum_can_overflow() {
        let f = flush_pairs(W_LEVELS) as i64;
        assert!(f * 2 * kernels::X_LEVELS as i64 * W_LEVELS as i64 <= i32::MAX as i64);
        assert!(f >= 16);
    }

    #[test]
    fn the_backward_product_agrees_with_the_dequantized_weight() {
        // dy · W over the packed weights against the f32 product with the weights it stores.
        let (d_in, d_out, rows) = (37, 48, 6); // a group of four rows and a remainder
        let w: Vec<f32> = (0..d_in * d_out).map(|i| ((i * 53 % 97) as f32 - 48.0) / 40.0).collect();
        let m = IntMatrix::new(&w, d_in, d_out, IntKernel::best());
        let dy: Vec<f32> = (0..rows * d_out).map(|i| ((i * 29 % 31) as f32 - 15.0) / 7.0).collect();
        let got = m.backward(&dy, rows);
        let deq = m.dequantized(); // [d_in, d_out]
        let mut worst = 0f32;
        for r in 0..rows {
            for i in 0..d_in {
                let want: f32 = (0..d_out).map(|o| dy[r * d_out + o] * deq[i * d_out + o]).sum();
                let diff = (got[r * d_in + i] - want).abs();
                worst = if diff.is_nan() { f32::INFINITY } else { worst.max(diff) };
            }
        }
        assert!(worst < 1e-4, "largest difference {worst}");
    }

    #[test]
    fn the_twin_and_the_dequantized_weight_agree() {
        let device = Device::flex();
        let w: Vec<f32> = (0..32 * 10).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
        let lin = int_linear(&w, vec![0.5; 32], 10, 32, IntKernel::best(), &device);
        let x: Tensor<2> =
            Tensor::from_data(TensorData::new((0..30).map(|i| i as f32 / 7.0).collect::<Vec<_>>(), [3, 10]), &device);
        let a = lin.forward(x.clone()).into_data().try_into_vec::<f32>().unwrap();
        let b = lin.forward_plain(x).into_data().try_into_vec::<f32>().unwrap();
        let d = crate::testing::compare_or_explain(&a, &b).unwrap();
        assert!(d.max_abs < 2e-3, "{}", d.max_abs);
    }

    #[test]
    fn fast_activations_and_derivatives_agree_with_burns() {
        use super::super::activation as burn;
        type Form = fn(Activation, Tensor<1>) -> Tensor<1>;
        let device = Device::flex();
        let line: Vec<f32> = (0..4001).map(|i| (i as f32 - 2000.0) / 250.0).collect();
        // The derivative also far out, where `exp(-x²/2)` underflows (the activation's `erf`
        // saturates there: GELU(-60) is -4e-6, not 0).
        let far: Vec<f32> = line.iter().copied().chain([-60.0, -20.0, 20.0, 60.0]).collect();
        let pairs: [(&str, Form, Form, &[f32]); 2] =
            [("act", activate, burn::activate, &line), ("act'", activate_grad, burn::activate_grad, &far)];
        for (what, fast, plain, xs) in pairs {
            for act in [Activation::Gelu, Activation::QuickGelu] {
                let x: Tensor<1> = Tensor::from_data(TensorData::new(xs.to_vec(), [xs.len()]), &device);
                let ours = fast(act, x.clone()).into_data().try_into_vec::<f32>().unwrap();
                let burns = plain(act, x).into_data().try_into_vec::<f32>().unwrap();
                // Fails on a NaN on either side.
                crate::testing::compare_or_explain(&ours, &burns).unwrap();
                // Within 2e-6, relative beyond 1 (GELU(60) is 60 to within an ulp).
                let err = |i: usize| (ours[i] - burns[i]).abs() / burns[i].abs().max(1.0);
                let worst = (0..xs.len()).max_by(|&a, &b| err(a).total_cmp(&err(b))).unwrap();
                let (x, o, p) = (xs[worst], ours[worst], burns[worst]);
                assert!(err(worst) < 2e-6, "{what} {act:?}: {} at {x}: {o} vs {p}", err(worst));
            }
        }
        assert!(erf(f32::NAN).is_nan());
        let mut nan = [f32::NAN];
        activate_grad_in_place(Activation::Gelu, &mut nan);
        assert!(nan[0].is_nan());
    }

    #[test]
    fn a_nan_weight_gives_nan_outputs() {
        let mut w = vec![0.1f32; 16 * 4];
        w[5] = f32::NAN;
        let m = IntMatrix::new(&w, 4, 16, IntKernel::best());
        let y = m.forward(&[1.0, 1.0, 1.0, 1.0], 1, &[0.0; 16]);
        assert!(y.iter().all(|v| v.is_nan()), "{y:?}");
    }

    #[test]
    fn nan_input_gives_nan_rows() {
        let device = Device::flex();
        let lin = int_linear(&[0.1; 16 * 4], vec![0.0; 16], 4, 16, IntKernel::best(), &device);
        let y = lin.matrix.forward(&[1.0, f32::NAN, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0], 2, &[0.0; 16]);
        assert!(y[..16].iter().all(|v| v.is_nan()));
        assert!(y[16..].iter().all(|v| (v - 0.4).abs() < 1e-3));
    }
}
