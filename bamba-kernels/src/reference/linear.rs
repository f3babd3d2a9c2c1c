//! Linear-layer references: the plain product and its fused decode forms (SwiGLU's gate·up, a
//! residual add), as Burn tensor ops.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// `x · Wᵀ` for a weight in the checkpoint's `[out, in]` layout (the transposed view, no copy).
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]` → `[rows, out]`
pub fn linear_no_bias<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>) -> Tensor<B, 2> {
    x.matmul(weight.transpose())
}

/// `silu(x · Gᵀ) · (x · Uᵀ)`, each product stored in `x`'s dtype before the rest.
///
/// # Shapes
/// - `x`: `[rows, in]`, `gate`, `up`: `[out, in]` → `[rows, out]`
pub fn swiglu_linear<B: Backend>(x: Tensor<B, 2>, gate: Tensor<B, 2>, up: Tensor<B, 2>) -> Tensor<B, 2> {
    silu(linear_no_bias(x.clone(), gate)) * linear_no_bias(x, up)
}

/// `x · Wᵀ + residual`, the product stored in `x`'s dtype before the add.
///
/// # Shapes
/// - `x`: `[rows, in]`, `weight`: `[out, in]`, `residual`: `[rows, out]` → `[rows, out]`
pub fn linear_residual<B: Backend>(x: Tensor<B, 2>, weight: Tensor<B, 2>, residual: Tensor<B, 2>) -> Tensor<B, 2> {
    linear_no_bias(x, weight) + residual
}
