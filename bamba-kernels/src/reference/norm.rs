//! RMSNorm reference in tensor ops: the plain form of the decoder layers and Mamba2's grouped,
//! gated form, both with f32 statistics as transformers computes them.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// `x̂ = v / sqrt(mean(v²) + eps)` over each of `groups` equal slices of the last dim, where
/// `v = x · silu(gate)` with a gate and `v = x` without; returns `x̂ · weight` in the weight's dtype.
/// The plain form rounds `x̂` to that dtype before the weight, the gated form after
/// (transformers' `BambaRMSNorm` and `BambaRMSNormGated`).
///
/// # Shapes
/// - `x`: `[rows, width]`, `gate`: `[rows, width]`, `weight`: `[width]` → `[rows, width]`
pub fn rms_norm<B: Backend>(
    x: Tensor<B, 2>,
    gate: Option<Tensor<B, 2>>,
    weight: Tensor<B, 1>,
    groups: usize,
    eps: f64,
) -> Tensor<B, 2> {
    let dtype = weight.dtype();
    let [rows, width] = x.dims();
    let gated = gate.is_some();
    let v = match gate {
        Some(gate) => x.cast(DType::F32) * silu(gate.cast(DType::F32)),
        None => x.cast(DType::F32),
    };
    let grouped = v.reshape([rows, groups, width / groups]);
    let variance = grouped.clone().square().mean_dim(2);
    let normed = (grouped * (variance + eps).sqrt().recip()).reshape([rows, width]);
    if gated {
        (normed * weight.cast(DType::F32).unsqueeze::<2>()).cast(dtype)
    } else {
        normed.cast(dtype) * weight.unsqueeze::<2>()
    }
}
