//! Linear layers for a few rows on the CPU: a prompt's tokens through the text tower.
//!
//! burn's CPU backend (Flex) multiplies with `gemm`, which is built for large products: for
//! `x [R, in] @ W [in, out]` with R a prompt's 5 to 20 tokens it walks each weight column
//! across all the input rows, a page further at every step. Here the weight is read once, row
//! after row as it lies in memory: four of its rows at a time are scaled by each token's four
//! inputs and added into that token's output row, which stays in the first-level cache
//! (`y[t] += x[t, i..i+4] · W[i..i+4]`). A random ViT-B/16's text tower (48 products, 151 MB
//! of f32 weights) for 8 rows, measured alone on this project's machine, nothing else running:
//! in wasm 75 ms by gemm, 37 ms by this (explicit 128-bit SIMD; the portable loop 40 ms);
//! natively 45 ms by gemm, 34 ms by this (the compiler's own vectors). In `legrad bench` (one
//! thread, natively) the tower's encoding of a prompt went from 80 to 59 ms (docs/benchmarks-history.md §5).
//!
//! [`linear`] takes this path on Flex for at most [`MAX_ROWS`] rows of f32 and leaves
//! everything else, autodiff included, to burn's `Linear::forward`, its plain-tensor twin (the
//! tests check that the two agree).

use burn::backend::{DispatchDevice, Flex};
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};

/// The most rows [`linear`] computes itself: a few prompts' tokens. (At 16 rows it took 64 ms
/// in wasm against gemm's 109 ms for the tower above; gemm's blocked product is what large
/// products need.)
pub const MAX_ROWS: usize = 64;

/// `lin.forward(x)`: by [`axpy_rows`] where `x` has at most [`MAX_ROWS`] rows (all dimensions
/// but the last) of f32 on Flex, not under autodiff; else by burn.
pub fn linear<const D: usize>(lin: &Linear, x: Tensor<D>) -> Tensor<D> {
    match few_rows(lin, &x) {
        Some(y) => y,
        None => lin.forward(x),
    }
}

fn few_rows<const D: usize>(lin: &Linear, x: &Tensor<D>) -> Option<Tensor<D>> {
    let dims = x.dims();
    let rows: usize = dims[..D - 1].iter().product();
    let device = x.device();
    if rows > MAX_ROWS || rows == 0 || !matches!(device.as_dispatch(), DispatchDevice::Flex(_)) {
        return None;
    }
    // An autodiff tensor is not a plain Flex one: the conversion fails and burn keeps the graph.
    let xt = x.clone().try_into_primitive::<Flex>().ok()?;
    let wt = lin.weight.val().try_into_primitive::<Flex>().ok()?;
    if xt.dtype() != DType::F32 || wt.dtype() != DType::F32 {
        return None;
    }
    let shape = wt.layout().shape();
    if shape.num_dims() != 2 || shape[0] != dims[D - 1] {
        return None;
    }
    let (k, n) = (shape[0], shape[1]);
    let (w_start, w_end) = wt.layout().contiguous_offsets()?;
    let w = wt.storage::<f32>().get(w_start..w_end)?;
    let x_data = xt.into_data().try_into_vec::<f32>().ok()?;
    let mut y = match &lin.bias {
        Some(b) => {
            let b = b.val().into_data().try_into_vec::<f32>().ok()?;
            if b.len() != n {
                return None;
            }
            b.repeat(rows)
        }
        None => vec![0.0; rows * n],
    };
    axpy_rows(&x_data, rows, w, k, n, &mut y);
    let mut out = dims;
    out[D - 1] = n;
    Some(Tensor::from_data(TensorData::new(y, out), &device))
}

/// `y [rows, n] += x [rows, k] @ w [k, n]`, all row-major: each weight read once, in order.
pub fn axpy_rows(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize, y: &mut [f32]) {
    assert!(x.len() >= rows * k && w.len() >= k * n && y.len() >= rows * n, "axpy_rows: operands too short");
    let k4 = k - k % 4;
    #[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
    simd128::rows_by_four(x, rows, w, k, n, k4, y);
    #[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
    for i in (0..k4).step_by(4) {
        let (w0, rest) = w[i * n..(i + 4) * n].split_at(n);
        let (w1, rest) = rest.split_at(n);
        let (w2, w3) = rest.split_at(n);
        for t in 0..rows {
            let [a0, a1, a2, a3]: [f32; 4] = x[t * k + i..t * k + i + 4].try_into().expect("four inputs");
            let yt = &mut y[t * n..(t + 1) * n];
            for o in 0..n {
                yt[o] += (w0[o] * a0 + w1[o] * a1) + (w2[o] * a2 + w3[o] * a3);
            }
        }
    }
    for i in k4..k {
        for t in 0..rows {
            let a = x[t * k + i];
            for (yo, wo) in y[t * n..(t + 1) * n].iter_mut().zip(&w[i * n..(i + 1) * n]) {
                *yo += a * wo;
            }
        }
    }
}

/// The same four-row step in wasm's 128-bit SIMD, two tokens at a time: LLVM does not turn
/// the portable loop into quite this (for an 8-token prompt through a ViT-B/16's text tower the
/// portable form took 40 ms against 37 ms alone, 98 ms against 54 to 63 ms with the machine
/// busy compiling).
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod simd128 {
    use core::arch::wasm32::*;

    pub(super) fn rows_by_four(x: &[f32], rows: usize, w: &[f32], k: usize, n: usize, k4: usize, y: &mut [f32]) {
        let n4 = n - n % 4;
        for i in (0..k4).step_by(4) {
            let wr = &w[i * n..(i + 4) * n];
            let mut t = 0;
            while t < rows {
                let two = t + 1 < rows;
                let xa: [f32; 4] = x[t * k + i..t * k + i + 4].try_into().expect("four inputs");
                let xb: [f32; 4] =
                    if two { x[(t + 1) * k + i..(t + 1) * k + i + 4].try_into().expect("four inputs") } else { xa };
                let (ya, yb) = y[t * n..].split_at_mut(n);
                let yb: &mut [f32] = if two { &mut yb[..n] } else { &mut [] };
                step(wr, n, n4, xa, xb, ya, yb);
                t += 2;
            }
        }
    }

    /// `ya += xa · wr`, `yb += xb · wr` over `n` columns (`yb` empty: one token).
    #[inline(always)]
    fn step(wr: &[f32], n: usize, n4: usize, xa: [f32; 4], xb: [f32; 4], ya: &mut [f32], yb: &mut [f32]) {
        assert!(wr.len() >= 4 * n && ya.len() >= n && (yb.is_empty() || yb.len() >= n));
        let a = xa.map(|v| f32x4_splat(v));
        let b = xb.map(|v| f32x4_splat(v));
        let wp = wr.as_ptr();
        let two = !yb.is_empty();
        let mut o = 0;
        while o < n4 {
            // SAFETY: o + 4 <= n4 <= n, and wr holds 4 rows of n, ya and yb (when not empty) n each
            // (asserted above); v128 loads and stores need no alignment.
            unsafe {
                let w0 = v128_load(wp.add(o) as *const v128);
                let w1 = v128_load(wp.add(n + o) as *const v128);
                let w2 = v128_load(wp.add(2 * n + o) as *const v128);
                let w3 = v128_load(wp.add(3 * n + o) as *const v128);
                let pa = ya.as_mut_ptr().add(o) as *mut v128;
                let sa = f32x4_add(
                    f32x4_add(f32x4_mul(w0, a[0]), f32x4_mul(w1, a[1])),
                    f32x4_add(f32x4_mul(w2, a[2]), f32x4_mul(w3, a[3])),
                );
                v128_store(pa, f32x4_add(v128_load(pa), sa));
                if two {
                    let pb = yb.as_mut_ptr().add(o) as *mut v128;
                    let sb = f32x4_add(
                        f32x4_add(f32x4_mul(w0, b[0]), f32x4_mul(w1, b[1])),
                        f32x4_add(f32x4_mul(w2, b[2]), f32x4_mul(w3, b[3])),
                    );
                    v128_store(pb, f32x4_add(v128_load(pb), sb));
                }
            }
            o += 4;
        }
        for o in n4..n {
            let col = |j: usize| wr[j * n + o];
            ya[o] += (col(0) * xa[0] + col(1) * xa[1]) + (col(2) * xa[2] + col(3) * xa[3]);
            if two {
                yb[o] += (col(0) * xb[0] + col(1) * xb[1]) + (col(2) * xb[2] + col(3) * xb[3]);
            }
        }
    }
}

#[cfg(any(test, feature = "test-support"))]
/// The shapes [`check_against_burn`] runs: `(rows, in, out, bias)`, with and without
/// remainders of four, one row and the most rows, with and without a bias.
pub const CHECKED_SHAPES: [(usize, usize, usize, bool); 4] =
    [(1, 512, 1536, true), (7, 64, 36, true), (8, 30, 21, false), (MAX_ROWS, 96, 128, true)];

#[cfg(any(test, feature = "test-support"))]
/// For the tests, natively and in the browser (where the SIMD form runs): the kernel against
/// burn's `Linear::forward` on Flex for `(rows, in, out, bias)`. The largest difference over
/// the outputs, or why the kernel did not run.
pub fn check_against_burn(rows: usize, k: usize, n: usize, bias: bool) -> std::result::Result<f32, String> {
    use burn::module::Param;
    let device = burn::tensor::Device::flex();
    let values = |len: usize, seed: u32| crate::testing::values(len, seed, -0.5, 0.5);
    let lin = Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(values(k * n, 1), [k, n]), &device)),
        bias: bias.then(|| Param::from_tensor(Tensor::from_data(TensorData::new(values(n, 2), [n]), &device))),
    };
    let x: Tensor<3> = Tensor::from_data(TensorData::new(values(rows * k, 3), [1, rows, k]), &device);
    let ours = few_rows(&lin, &x).ok_or_else(|| format!("the kernel did not take {rows} rows of {k}"))?;
    let read = |t: Tensor<3>| t.into_data().try_into_vec::<f32>().map_err(|e| format!("{e:?}"));
    let (ours, burns) = (read(ours)?, read(lin.forward(x))?);
    Ok(crate::testing::compare_or_explain(&ours, &burns)?.max_abs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::module::Param;
    use burn::tensor::Device;

    #[test]
    fn few_rows_agree_with_burns_linear() {
        for (rows, k, n, bias) in CHECKED_SHAPES {
            let worst = check_against_burn(rows, k, n, bias).unwrap();
            assert!(worst < 1e-5 * (k as f32).sqrt(), "{rows}x{k}x{n}: worst difference {worst}");
        }
    }

    /// Too many rows, or autodiff, go to burn.
    #[test]
    fn many_rows_and_autodiff_go_to_burn() {
        let device = Device::flex();
        let lin = Linear {
            weight: Param::from_tensor(Tensor::from_data(TensorData::new(vec![0.5; 16 * 8], [16, 8]), &device)),
            bias: None,
        };
        let many: Tensor<2> =
            Tensor::from_data(TensorData::new(vec![1.0; (MAX_ROWS + 1) * 16], [MAX_ROWS + 1, 16]), &device);
        assert!(few_rows(&lin, &many).is_none());
        let tracked: Tensor<2> =
            Tensor::from_data(TensorData::new(vec![1.0; 2 * 16], [2, 16]), &device).autodiff().require_grad();
        assert!(few_rows(&lin, &tracked).is_none());
        assert!(check_against_burn(MAX_ROWS + 1, 16, 8, false).is_err());
    }
}
