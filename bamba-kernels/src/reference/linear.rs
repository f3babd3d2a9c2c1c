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
