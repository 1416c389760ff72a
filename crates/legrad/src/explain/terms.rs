//! What one layer's LeGrad relevance is made from (LEGRAD.md section 5), and its plain
//! tensor forms: the reference every faster path is checked against (the GPU kernels in
//! [`super::kernel`], the CPU's integer products in [`super::int16`]) and the CPU's f32 path.

use std::sync::Arc;

use burn::tensor::{Device, Tensor};

use crate::model::int_linear::IntMatrix;

/// `K = W_fcᵀ diag(γ₂) W_outᵀ` `[M, W]` as the tower holds its linear layers.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // one per layer
pub enum FoldedK {
    /// A tensor: burn's layers (a GPU; the CPU's f32 path of small towers).
    Tensor(Tensor<2>),
    /// On the integer grid of the CPU's linear layers (`model::int_linear`, a scale per row of
    /// `K`): where the tower's layers are on it. Made once per model and layer, the form the
    /// integer products multiply (`super::int16`); no f32 copy is kept.
    Grid(Arc<IntMatrix>),
}

impl FoldedK {
    /// `[M, W]`.
    pub fn dims(&self) -> [usize; 2] {
        match self {
            FoldedK::Tensor(k) => k.dims(),
            FoldedK::Grid(k) => [k.d_in(), k.d_out()],
        }
    }

    /// `K`'s values as a tensor on `device`: the grid's, dequantized (what the integer products
    /// multiply by: the plain twin's operand).
    pub fn tensor(&self, device: &Device) -> Tensor<2> {
        match self {
            FoldedK::Tensor(k) => k.clone(),
            FoldedK::Grid(k) => k.weight(device),
        }
    }
}

/// What one layer's relevance is made from, for `P` prompts (LEGRAD.md section 5, with ln_2
/// and `out_proj` folded as in [`crate::model::VisionTower::legrad_consts`]): the gradient at
/// the attention's concatenated heads is
/// `dc = (main - m₁ 1ᵀW_outᵀ - m₂ x̂W_outᵀ) ⊙ rstd + g W_outᵀ`, and `dA_h = dc_h V_hᵀ`.
/// Pairs of per-prompt vectors come from one product each (one launch on a GPU, where launches
/// are what a small model's prompt costs): `ag = [a | g W_outᵀ]`, `m = [m₁ | m₂]`.
#[derive(Clone)]
pub struct LayerTerms {
    /// `act'(h)` `[N, M]`.
    pub act_grad: Tensor<2>,
    /// `[a | g W_outᵀ]` `[P, M + W]`, `a = g W_projᵀ`.
    pub ag: Tensor<2>,
    /// `K = W_fcᵀ diag(γ₂) W_outᵀ` `[M, W]`: `main = (act' ⊙ a) K` `[P, N, W]`.
    pub k: FoldedK,
    /// `[m₁ | m₂]` `[P, 2N]`: the LayerNorm's mean terms.
    pub m: Tensor<2>,
    /// `1ᵀ W_outᵀ` `[W]`.
    pub ones_out: Tensor<1>,
    /// `x̂ W_outᵀ` `[N, W]`.
    pub xhat_out: Tensor<2>,
    /// ln_2's `1/σ` `[N]`.
    pub rstd: Tensor<1>,
    /// The values `[H, N, d]`.
    pub values: Tensor<3>,
}

impl LayerTerms {
    /// `dc` `[P, N, W]`, the gradient at the attention's concatenated heads.
    pub fn head_gradient(&self) -> Tensor<3> {
        let [n, m] = self.act_grad.dims();
        let w = self.k.dims()[1];
        let k = self.k.tensor(&self.act_grad.device());
        let a = self.ag.clone().narrow(1, 0, m);
        let g_out = self.ag.clone().narrow(1, m, w);
        let m1 = self.m.clone().narrow(1, 0, n);
        let m2 = self.m.clone().narrow(1, n, n);
        let dh = self.act_grad.clone().unsqueeze::<3>() * a.unsqueeze_dim(1); // [P, N, M]
        let main = dh.matmul(k.unsqueeze()); // [P, N, W]
        (main
            - m1.unsqueeze_dim::<3>(2) * self.ones_out.clone().unsqueeze::<3>()
            - m2.unsqueeze_dim::<3>(2) * self.xhat_out.clone().unsqueeze::<3>())
            * self.rstd.clone().reshape([1, n, 1])
            + g_out.unsqueeze_dim::<3>(1)
    }

    /// The same `dc` in one GPU launch of `tile` (rows, columns) tiles and `units` per cube
    /// ([`super::kernel::head_gradient_fused`]).
    #[cfg(feature = "wgpu")]
    pub fn head_gradient_fused(&self, tile: (usize, usize), units: u32) -> Tensor<3> {
        super::kernel::head_gradient_fused(
            self.act_grad.clone(),
            self.ag.clone(),
            self.k.tensor(&self.act_grad.device()),
            self.m.clone(),
            self.ones_out.clone(),
            self.xhat_out.clone(),
            self.rstd.clone(),
            tile,
            units,
        )
    }
}

impl LayerTerms {
    /// The same terms for the query rows `start..start + len` only: `dc`'s rows are independent
    /// (each its own LayerNorm statistics and mean terms), and every row sees all the keys.
    pub fn rows(&self, start: usize, len: usize) -> LayerTerms {
        let n = self.act_grad.dims()[0];
        let m = Tensor::cat(vec![self.m.clone().narrow(1, start, len), self.m.clone().narrow(1, n + start, len)], 1);
        LayerTerms {
            act_grad: self.act_grad.clone().narrow(0, start, len),
            ag: self.ag.clone(),
            k: self.k.clone(),
            m,
            ones_out: self.ones_out.clone(),
            xhat_out: self.xhat_out.clone().narrow(0, start, len),
            rstd: self.rstd.clone().narrow(0, start, len),
            values: self.values.clone(),
        }
    }

    /// `Σ_h Σ_i relu(dA_h)[:, i, :]` `[P, N]` over these terms' query rows, in plain f32 tensor
    /// operations: the CPU's f32 path, and the integer kernel's twin
    /// ([`super::int16::relevance_sums`]). [`finish_sums`] of the sum over all rows is the
    /// layer's relevance.
    pub fn relevance_sums_plain(&self) -> Tensor<2> {
        let dc = self.head_gradient();
        let [p, r, w] = dc.dims();
        let [h, _, d] = self.values.dims();
        debug_assert_eq!(w, h * d);
        relevance_sums_per_head(dc.reshape([p, r, h, d]).swap_dims(1, 2), self.values.clone())
    }
}

/// `Σ_h Σ_i relu(dc_h V_hᵀ)[:, i, :]` `[P, N]` for the query rows `i` of `dc` `[P, H, R, d]`
/// (all `N` rows, or a share of them: [`super::rows`]), the values `[H, N, d]` of every key.
pub(crate) fn relevance_sums_per_head(dc: Tensor<4>, values: Tensor<3>) -> Tensor<2> {
    let [p, h, _, _] = dc.dims();
    let n = values.dims()[1];
    let mut sum: Option<Tensor<3>> = None;
    for k in 0..h {
        let dc_k = dc.clone().narrow(1, k, 1).squeeze_dim::<3>(1); // [P, R, d]
        let v_k = values.clone().narrow(0, k, 1).swap_dims(1, 2); // [1, d, N]
        let r = dc_k.matmul(v_k).clamp_min(0.0).sum_dim(1); // [P, 1, N]
        sum = Some(match sum {
            None => r,
            Some(s) => s + r,
        });
    }
    sum.expect("at least one head").reshape([p, n])
}

/// The sums of [`relevance_sums_per_head`] over all `n` query rows → `R` `[P, N - 1]`: the mean
/// over heads and rows, the class token's column dropped.
pub(crate) fn finish_sums(sums: Tensor<2>, heads: usize, n: usize) -> Tensor<2> {
    sums.div_scalar((heads * n) as f64).narrow(1, 1, n - 1)
}
