//! LeGrad's per-layer relevance as one GPU kernel (CubeCL, launched on burn tensors), beside
//! its plain-tensor twin [`super::legrad::relevance_plain`], which stays the reference and the
//! CPU path; `tests/kernel.rs` checks that the two agree.
//!
//! From the gradient at the attention's heads `dc` `[P, N, W]` and the values `V` `[H, N, d]`
//! of one layer it computes `R[p, j] = 1/(H N) Σ_h Σ_i relu(dA[p, h, i, j])` with
//! `dA_h = dc_h V_hᵀ`: `dA` (`P·H·N²` values, 30 MB for a ViT-B/16 at 448 px) is never
//! written, and the op-by-op path's per-head loop (a slice, a matmul, a clamp, a sum and an add
//! per head: about 100 launches per layer for ViT-B/16) becomes one launch and a sum.
//!
//! Layout: one unit per `(prompt, head, key token j, chunk of query tokens)`. A unit holds
//! `V_h[j]` in registers (the head width is a compile-time constant) and walks its chunk of
//! query rows `i`, where every unit of a cube reads the same `dc` row: broadcast loads, no
//! shared memory and no barriers, which software adapters (lavapipe, SwiftShader) emulate
//! slowly. The chunks give a GPU enough units (a ViT-B/16 at 448 px has 9,420 `(h, j)` pairs
//! per prompt) and are summed with the heads afterwards.

#[cfg(feature = "fusion")]
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::{Backend, Dispatch, backend_extension, tensor::FloatTensor};
use burn::tensor::Shape;
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;

/// Units per cube, along the key tokens.
const UNITS: u32 = 64;
/// Aim for about this many units per launch: enough to fill a GPU.
const TARGET_UNITS: usize = 65_536;
/// At most this many chunks of query rows.
const MAX_CHUNKS: usize = 16;

/// How many chunks the query rows are split into for `units` `(p, h, j)` triples.
pub fn chunks_for(units: usize) -> usize {
    TARGET_UNITS.div_ceil(units.max(1)).clamp(1, MAX_CHUNKS)
}

#[backend_extension(Cube, Fusion: cfg(feature = "fusion"))]
pub trait LegradKernels: Backend {
    /// Relevance sums `[P, H * chunks, N]` (head-major, then chunk), not yet summed, scaled or
    /// cut to the patches: see the module documentation.
    #[fusion(meta = relevance_meta)]
    fn legrad_relevance(dc: FloatTensor<Self>, values: FloatTensor<Self>, chunks: usize) -> FloatTensor<Self>;
}

/// The output's shape and type, for fusion (which queues the launch and runs it later).
#[cfg(feature = "fusion")]
fn relevance_meta(dc: &TensorSpec, values: &TensorSpec, chunks: &usize) -> TensorSpec {
    TensorSpec::new(Shape::new([dc.shape[0], values.shape[0] * *chunks, values.shape[1]]), dc.dtype)
}

impl LegradKernels for CubeBackend {
    fn legrad_relevance(dc: CubeTensor, values: CubeTensor, chunks: usize) -> CubeTensor {
        let dc = into_contiguous(dc);
        let values = into_contiguous(values);
        let p = dc.meta.shape()[0];
        let (h, n, d) = (values.meta.shape()[0], values.meta.shape()[1], values.meta.shape()[2]);
        let dtype = dc.dtype;
        let client = dc.client.clone();
        let out = empty_device_dtype(client.clone(), dc.device.clone(), Shape::new([p, h * chunks, n]), dtype);
        let cube_count = CubeCount::Static((n as u32).div_ceil(UNITS), (h * chunks) as u32, p as u32);
        // Unchecked: every index is in bounds by construction (j < N is tested; rows and head
        // columns come from the shapes), and the checks cost more than the arithmetic on
        // software adapters.
        unsafe {
            relevance_kernel::launch_unchecked(
                &client,
                cube_count,
                CubeDim::new_1d(UNITS),
                dc.into_tensor_arg(),
                values.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                chunks as u32,
                d,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            )
        };
        out
    }
}

/// Shapes: `dc [P, N, H·d]`, `values [H, N, d]`, `out [P, H·chunks, N]`.
#[cube(launch_unchecked)]
fn relevance_kernel<F: Float>(
    dc: &Tensor<F>,
    values: &Tensor<F>,
    out: &mut Tensor<F>,
    chunks: u32,
    #[comptime] d: usize,
    #[define(F)] _dtype: ElemType,
) {
    let j = ABSOLUTE_POS_X as usize;
    let hc = CUBE_POS_Y as usize;
    let p = CUBE_POS_Z as usize;
    let n = values.shape(1);
    // Units past the last token compute on the last one and write nothing: an early return would
    // make the loop below divergent, and software adapters then gather every load.
    let mut jj = j;
    if jj >= n {
        jj = n - 1;
    }
    let chunks = chunks as usize;
    let head = hc / chunks;
    let rows = n.div_ceil(chunks);
    let start = (hc % chunks) * rows;
    let mut end = start + rows;
    if end > n {
        end = n;
    }
    // Both inputs are contiguous (the launcher makes them so): the last stride is 1.
    let mut v = Array::<F>::new(d);
    let v_at = head * values.stride(0) + jj * values.stride(1);
    #[unroll]
    for k in 0..d {
        v[k] = values[v_at + k];
    }
    let zero = F::new(0.0);
    let col = head * d;
    let (s0, s1) = (dc.stride(0), dc.stride(1));
    let mut acc = zero;
    for i in start..end {
        let row = p * s0 + i * s1 + col;
        let mut dot = zero;
        #[unroll]
        for k in 0..d {
            dot += dc[row + k] * v[k];
        }
        acc += F::max(dot, zero);
    }
    if j < n {
        let at = p * out.stride(0) + hc * out.stride(1) + j * out.stride(2);
        out[at] = acc;
    }
}

/// `[P, N - 1]`: the same relevance as [`super::legrad::relevance_plain`], in one launch and a
/// sum.
pub fn relevance_fused(dc: burn::tensor::Tensor<3>, values: burn::tensor::Tensor<3>) -> burn::tensor::Tensor<2> {
    let p = dc.dims()[0];
    let [h, n, _] = values.dims();
    let chunks = chunks_for(p * h * n);
    let out = Dispatch::legrad_relevance(dc.into_dispatch(), values.into_dispatch(), chunks);
    let sums = burn::tensor::Tensor::<3>::from_dispatch(out);
    sums.sum_dim(1).reshape([p, n]).div_scalar((h * n) as f64).narrow(1, 1, n - 1)
}
