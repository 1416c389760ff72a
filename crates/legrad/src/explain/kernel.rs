//! LeGrad's per-layer closed form as GPU kernels (CubeCL, launched on burn tensors), each
//! beside its plain-tensor twin in [`super::legrad`], which stays the reference and the CPU
//! path; `tests/kernel.rs` checks that they agree.
//!
//! * **Relevance** ([`relevance_fused`]): from the gradient at the attention's heads `dc`
//!   `[P, N, W]` and the values `V` `[H, N, d]` of one layer, `R[p, j] = 1/(H N) Σ_h Σ_i
//!   relu(dA[p, h, i, j])` with `dA_h = dc_h V_hᵀ`: `dA` (`P·H·N²` values, 30 MB for a
//!   ViT-B/16 at 448 px) is never written, and the op-by-op path's per-head loop (a slice, a
//!   matmul, a clamp, a sum and an add per head: about 100 launches per layer for ViT-B/16)
//!   becomes one launch and a sum. Twin: [`super::legrad::relevance_plain`].
//! * **Head gradient** ([`head_gradient_fused`]): `dc` itself from the closed form's terms, the
//!   prologue `act' ⊙ a`, the MLP-sized matmul and the LayerNorm/`out_proj` epilogue in one
//!   launch (`[P, N, M]` never written). Twin: [`super::legrad::LayerTerms::head_gradient`].
//!
//! Both are register-tiled with no shared memory and no barriers: a unit computes a tile of
//! `dA_h` (query rows by key tokens) or of `dc` (rows by columns) in registers, the rows shared
//! by its whole cube. How large a tile is depends on the adapter ([`Tiling`]). Software adapters
//! (lavapipe, SwiftShader) run a cube's units as the lanes of CPU vectors and pay for every
//! storage-buffer load lane by lane (lavapipe about 20 cycles per lane and load, whether the
//! address is shared or not): there, a big tile's fewer loads per multiply-add are what counts
//! (a 32 x 16 tile: 49 loads per 512 multiply-adds), and 8 units per cube fill the vectors. A GPU
//! gets small tiles (registers are its scarce resource) and many units, and keeps burn's own
//! matmul for `dc` (tuned, shared memory, tensor cores where there are).

#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

pub use crate::compute::Tiling;

/// How many chunks the query rows are split into for `units` units of one chunk each.
fn chunks_for(tiling: &Tiling, units: usize) -> usize {
    tiling.target_units.div_ceil(units.max(1)).clamp(1, MAX_CHUNKS)
}

/// At most this many chunks of query rows.
const MAX_CHUNKS: usize = 16;

#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait LegradKernels: Backend {
    /// Relevance sums `[P, H * chunks, N]` (head-major, then chunk), scaled by `1/(H N)`, not yet
    /// summed or cut to the patches, with `query_rows` by `keys` tiles and `units` per cube: see the module
    /// documentation.
    #[fusion(meta = relevance_meta)]
    fn legrad_relevance(
        dc: FloatTensor<Self>,
        values: FloatTensor<Self>,
        chunks: usize,
        query_rows: usize,
        keys: usize,
        units: usize,
    ) -> FloatTensor<Self>;

    /// The gradient at the attention's concatenated heads `dc` `[P, N, W]` from the closed
    /// form's terms (see [`head_gradient_fused`]), `rows` by `cols` per unit.
    #[fusion(meta = head_gradient_meta)]
    #[allow(clippy::too_many_arguments)]
    fn legrad_head_gradient(
        act: FloatTensor<Self>,
        ag: FloatTensor<Self>,
        k: FloatTensor<Self>,
        m: FloatTensor<Self>,
        ones_out: FloatTensor<Self>,
        xhat_out: FloatTensor<Self>,
        rstd: FloatTensor<Self>,
        rows: usize,
        cols: usize,
        units: usize,
    ) -> FloatTensor<Self>;
}

/// The outputs' shapes and types, for fusion (which queues the launch and runs it later).
#[cfg(feature = "fusion")]
fn relevance_meta(
    dc: &TensorSpec,
    values: &TensorSpec,
    chunks: &usize,
    _query_rows: &usize,
    _keys: &usize,
    _units: &usize,
) -> TensorSpec {
    TensorSpec::new(Shape::new([dc.shape[0], values.shape[0] * *chunks, values.shape[1]]), dc.dtype)
}

#[cfg(feature = "fusion")]
#[allow(clippy::too_many_arguments)]
fn head_gradient_meta(
    act: &TensorSpec,
    ag: &TensorSpec,
    k: &TensorSpec,
    _m: &TensorSpec,
    _ones_out: &TensorSpec,
    _xhat_out: &TensorSpec,
    _rstd: &TensorSpec,
    _rows: &usize,
    _cols: &usize,
    _units: &usize,
) -> TensorSpec {
    TensorSpec::new(Shape::new([ag.shape[0], act.shape[0], k.shape[1]]), act.dtype)
}

impl LegradKernels for CubeBackend {
    fn legrad_relevance(
        dc: CubeTensor,
        values: CubeTensor,
        chunks: usize,
        query_rows: usize,
        keys: usize,
        units: usize,
    ) -> CubeTensor {
        let dc = into_contiguous(dc);
        let values = into_contiguous(values);
        let p = dc.meta.shape()[0];
        let (h, n, d) = (values.meta.shape()[0], values.meta.shape()[1], values.meta.shape()[2]);
        let dtype = dc.dtype;
        let client = dc.client.clone();
        let out = empty_device_dtype(client.clone(), dc.device.clone(), Shape::new([p, h * chunks, n]), dtype);
        let key_units = n.div_ceil(keys) as u32;
        let units = units as u32;
        let cube_count = CubeCount::Static(key_units.div_ceil(units), (h * chunks) as u32, p as u32);
        // Unchecked: rows and keys past the ends are clamped for reading and neither counted nor
        // written, head columns come from the shapes; the checks cost more than the arithmetic
        // on software adapters.
        unsafe {
            relevance_kernel::launch_unchecked(
                &client,
                cube_count,
                CubeDim::new_1d(units),
                dc.into_tensor_arg(),
                values.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                chunks as u32,
                d,
                query_rows,
                keys,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            )
        };
        out
    }

    fn legrad_head_gradient(
        act: CubeTensor,
        ag: CubeTensor,
        k: CubeTensor,
        m: CubeTensor,
        ones_out: CubeTensor,
        xhat_out: CubeTensor,
        rstd: CubeTensor,
        rows: usize,
        cols: usize,
        units: usize,
    ) -> CubeTensor {
        let [act, ag, k, m, ones_out, xhat_out, rstd] = [act, ag, k, m, ones_out, xhat_out, rstd].map(into_contiguous);
        let (n, w) = (act.meta.shape()[0], k.meta.shape()[1]);
        let p = ag.meta.shape()[0];
        let dtype = act.dtype;
        let client = act.client.clone();
        let out = empty_device_dtype(client.clone(), act.device.clone(), Shape::new([p, n, w]), dtype);
        let col_units = w.div_ceil(cols) as u32;
        let units = units as u32;
        let cube_count = CubeCount::Static(col_units.div_ceil(units), n.div_ceil(rows) as u32, p as u32);
        // Unchecked: rows and columns past the ends are clamped for reading and not written.
        unsafe {
            head_gradient_kernel::launch_unchecked(
                &client,
                cube_count,
                CubeDim::new_1d(units),
                act.into_tensor_arg(),
                ag.into_tensor_arg(),
                k.into_tensor_arg(),
                m.into_tensor_arg(),
                ones_out.into_tensor_arg(),
                xhat_out.into_tensor_arg(),
                rstd.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                rows,
                cols,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            )
        };
        out
    }
}

/// Shapes: `dc [P, N, H·d]`, `values [H, N, d]`, `out [P, H·chunks, N]`. A unit takes `tj` key
/// tokens `j = x, x + X, ...` (`X` units along the keys) and walks its chunk of query rows `ti`
/// at a time: a `ti` x `tj` tile of `dA_h` in registers, `ti + tj` loads per step of the head
/// width for `ti · tj` multiply-adds, then relu and the sum over the tile's rows. The rows are
/// the same for the whole cube.
#[cube(launch_unchecked)]
fn relevance_kernel<F: Float>(
    dc: &Tensor<F>,
    values: &Tensor<F>,
    out: &mut Tensor<F>,
    chunks: u32,
    #[comptime] d: usize,
    #[comptime] ti: usize,
    #[comptime] tj: usize,
    #[define(F)] _dtype: ElemType,
) {
    let x = ABSOLUTE_POS_X as usize;
    let hc = CUBE_POS_Y as usize;
    let p = CUBE_POS_Z as usize;
    let n = values.shape(1);
    let key_units = n.div_ceil(tj);
    let chunks = chunks as usize;
    let head = hc / chunks;
    let rows = n.div_ceil(chunks);
    let start = (hc % chunks) * rows;
    let mut end = start + rows;
    if end > n {
        end = n;
    }
    // Both inputs are contiguous (the launcher makes them so): the last stride is 1. Keys past
    // the last token compute on the last one and write nothing: an early return would make the
    // loops below divergent, and software adapters then gather every load.
    let zero = F::new(0.0);
    let col = head * d;
    let (s0, s1) = (dc.stride(0), dc.stride(1));
    let (v0, v1) = (values.stride(0), values.stride(1));
    let mut v_at = Array::<usize>::new(tj);
    #[unroll]
    for t in 0..tj {
        let mut j = x + t * key_units;
        if j >= n {
            j = n - 1;
        }
        v_at[t] = head * v0 + j * v1;
    }
    let mut sum = Array::<F>::new(tj);
    #[unroll]
    for t in 0..tj {
        sum[t] = zero;
    }
    let mut i0 = start;
    while i0 < end {
        let mut acc = Array::<F>::new(ti * tj);
        #[unroll]
        for e in 0..ti * tj {
            acc[e] = zero;
        }
        for k in 0..d {
            let mut v = Array::<F>::new(tj);
            #[unroll]
            for t in 0..tj {
                v[t] = values[v_at[t] + k];
            }
            #[unroll]
            for r in 0..ti {
                let mut i = i0 + r;
                if i >= end {
                    i = end - 1;
                }
                let q = dc[p * s0 + i * s1 + col + k];
                #[unroll]
                for t in 0..tj {
                    acc[r * tj + t] += q * v[t];
                }
            }
        }
        #[unroll]
        for r in 0..ti {
            // Rows past the chunk's end were computed on its last row: not counted. The test is
            // the same for the whole cube.
            if i0 + r < end {
                #[unroll]
                for t in 0..tj {
                    sum[t] += F::max(acc[r * tj + t], zero);
                }
            }
        }
        i0 += ti;
    }
    // The mean over heads and query rows, scaled here rather than by one more launch.
    let scale = F::new(1.0) / F::cast_from((values.shape(0) * n) as u32);
    #[unroll]
    for t in 0..tj {
        let j = x + t * key_units;
        if x < key_units && j < n {
            let at = p * out.stride(0) + hc * out.stride(1) + j * out.stride(2);
            out[at] = sum[t] * scale;
        }
    }
}

/// `dc[p, i, c] = (Σ_m act[i, m] a[p, m] K[m, c] - m1[p, i] ones_out[c] - m2[p, i] x̂W[i, c])
/// · rstd[i] + g_out[p, c]`, with `[a | g_out] = ag[p]` and `[m1 | m2] = m[p]`: the prologue (`act' ⊙ a`), the matmul and the epilogue of
/// [`super::legrad::LayerTerms::head_gradient`] in one pass, `dh` `[P, N, M]` never written.
/// A unit computes `tm` rows (the cube's, so their loads are shared) by `tn` columns
/// (`c = x, x + X, ...`), all in registers: per step of `m`, `tm + tn + 1` loads serve `tm · tn`
/// multiply-adds. No shared memory and no barriers: software adapters emulate both slowly.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn head_gradient_kernel<F: Float>(
    act: &Tensor<F>,
    ag: &Tensor<F>,
    k: &Tensor<F>,
    m: &Tensor<F>,
    ones_out: &Tensor<F>,
    xhat_out: &Tensor<F>,
    rstd: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] tm: usize,
    #[comptime] tn: usize,
    #[define(F)] _dtype: ElemType,
) {
    let n = act.shape(0);
    let mm = act.shape(1);
    let w = k.shape(1);
    let p = CUBE_POS_Z as usize;
    let x = ABSOLUTE_POS_X as usize;
    let col_units = w.div_ceil(tn);
    let row0 = CUBE_POS_Y as usize * tm;
    let zero = F::new(0.0);
    let mut acc = Array::<F>::new(tm * tn);
    #[unroll]
    for e in 0..tm * tn {
        acc[e] = zero;
    }
    // ag's row p is [a | g_out], m's row p is [m1 | m2].
    let ag_row = p * (mm + w);
    for j in 0..mm {
        let am = ag[ag_row + j];
        let mut b = Array::<F>::new(tn);
        #[unroll]
        for t in 0..tn {
            let mut c = x + t * col_units;
            if c >= w {
                c = w - 1;
            }
            b[t] = k[j * w + c];
        }
        #[unroll]
        for r in 0..tm {
            let mut i = row0 + r;
            if i >= n {
                i = n - 1;
            }
            let h = act[i * mm + j] * am;
            #[unroll]
            for t in 0..tn {
                acc[r * tn + t] += h * b[t];
            }
        }
    }
    #[unroll]
    for r in 0..tm {
        let i = row0 + r;
        let mut ic = i;
        if ic >= n {
            ic = n - 1;
        }
        let s = rstd[ic];
        let q1 = m[p * 2 * n + ic];
        let q2 = m[p * 2 * n + n + ic];
        #[unroll]
        for t in 0..tn {
            let c = x + t * col_units;
            let mut cc = c;
            if cc >= w {
                cc = w - 1;
            }
            let value = (acc[r * tn + t] - q1 * ones_out[cc] - q2 * xhat_out[ic * w + cc]) * s + ag[ag_row + mm + cc];
            if i < n && x < col_units && c < w {
                out[(p * n + i) * w + c] = value;
            }
        }
    }
}

/// `[P, N - 1]`: the same relevance as [`super::legrad::relevance_plain`], in one launch and a
/// sum, tiled for `tiling`.
pub fn relevance_fused(
    dc: burn::tensor::Tensor<3>,
    values: burn::tensor::Tensor<3>,
    tiling: Tiling,
) -> burn::tensor::Tensor<2> {
    let p = dc.dims()[0];
    let [h, n, _] = values.dims();
    let chunks = chunks_for(&tiling, p * h * n.div_ceil(tiling.keys));
    let out = Dispatch::legrad_relevance(
        dc.into_dispatch(),
        values.into_dispatch(),
        chunks,
        tiling.query_rows,
        tiling.keys,
        tiling.units as usize,
    );
    let sums = burn::tensor::Tensor::<3>::from_dispatch(out);
    sums.sum_dim(1).reshape([p, n]).narrow(1, 1, n - 1)
}

/// `dc` `[P, N, W]` as [`super::legrad::LayerTerms::head_gradient`] computes it, in one launch of
/// `rows` x `cols` tiles: `act` `[N, M]`, `ag` `[P, M + W]`, `k` `[M, W]`, `m` `[P, 2N]`,
/// `ones_out` `[W]`, `xhat_out` `[N, W]`, `rstd` `[N]`.
#[allow(clippy::too_many_arguments)]
pub fn head_gradient_fused(
    act: burn::tensor::Tensor<2>,
    ag: burn::tensor::Tensor<2>,
    k: burn::tensor::Tensor<2>,
    m: burn::tensor::Tensor<2>,
    ones_out: burn::tensor::Tensor<1>,
    xhat_out: burn::tensor::Tensor<2>,
    rstd: burn::tensor::Tensor<1>,
    (rows, cols): (usize, usize),
    units: u32,
) -> burn::tensor::Tensor<3> {
    let out = Dispatch::legrad_head_gradient(
        act.into_dispatch(),
        ag.into_dispatch(),
        k.into_dispatch(),
        m.into_dispatch(),
        ones_out.into_dispatch(),
        xhat_out.into_dispatch(),
        rstd.into_dispatch(),
        rows,
        cols,
        units as usize,
    );
    burn::tensor::Tensor::<3>::from_dispatch(out)
}
