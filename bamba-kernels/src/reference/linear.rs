//! Linear-layer references: the plain product and its fused decode forms (SwiGLU's gate·up, a
//! residual add), as Burn tensor ops.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::BambaOps;

/// `x · Wᵀ` for a weight in the checkpoint's `[out, in]` layout (the transposed view, no copy).
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]` → `[rows, out]`
pub fn linear_no_bias<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(weight.transpose())
}

/// `silu(x · Gᵀ) · (x · Uᵀ)`, each product stored in `x`'s dtype before the rest. The products are
/// the backend's [`BambaOps::linear_no_bias`] (this is also the GPU backends' form for many rows).
///
/// # Shapes
/// - `x`: `[rows, in]`, `gate`, `up`: `[out, in]` → `[rows, out]`
pub fn swiglu_linear<B: BambaOps>(x: Tensor<B, 2>, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(B::linear_no_bias(x.clone(), gate)) * B::linear_no_bias(x, up)
}

/// `x · Wᵀ + residual`, the product ([`BambaOps::linear_no_bias`]) stored in `x`'s dtype before the add.
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]`, `residual`: `[rows, out]` → `[rows, out]`
pub fn linear_residual<B: BambaOps>(x: Tensor<B, 2>, weight: Tensor<B, 2>, residual: Tensor<B, 2>) -> Tensor<B, 2> {
    B::linear_no_bias(x, weight) + residual
}

/// A decoder layer's pre-norm and the projection after it: `linear_no_bias(rms_norm(x), W)`, both the
/// backend's ops ([`BambaOps::rms_norm`], [`BambaOps::linear_no_bias`]).
///
/// # Shapes
/// - `x`: `[rows, in]`, `norm_weight`: `[in]`, `weight`: `[out, in]` → `[rows, out]`
pub fn rms_norm_linear<B: BambaOps>(
    x: Tensor<B, 2>,
    norm_weight: Tensor<B, 1>,
    eps: f64,
    weight: Tensor<B, 2>,
) -> Tensor<B, 2> {
    B::linear_no_bias(B::rms_norm(x, None, norm_weight, 1, eps), weight)
}

/// The MLP's pre-norm and SwiGLU's first half: `swiglu_linear(rms_norm(x), G, U)` with the backend's ops.
///
/// # Shapes
/// - `x`: `[rows, in]`, `norm_weight`: `[in]`, `gate`, `up`: `[out, in]` → `[rows, out]`
pub fn rms_norm_swiglu<B: BambaOps>(
    x: Tensor<B, 2>,
    norm_weight: Tensor<B, 1>,
    eps: f64,
    gate: Tensor<B, 2>,
    up: Tensor<B, 2>,
) -> Tensor<B, 2> {
    B::swiglu_linear(B::rms_norm(x, None, norm_weight, 1, eps), gate, up)
}
