//! Rotary position embedding reference in tensor ops: partial RoPE in the NeoX "rotate_half"
//! convention, rounded as transformers' `apply_rotary_pos_emb` computes it in the model dtype.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

/// Rotates the first `rotary_dim` dims of every head: `x·cos + rotate_half(x)·sin` with
/// `rotate_half(x) = [-x₂, x₁]` over those dims' halves (each product rounded to the dtype, then
/// the sum); the other dims pass through.
///
/// # Shapes
/// - `x`: `[batch, heads, len, head_dim]`; `cos`, `sin`: `[1 or batch, 1, len, rotary_dim]`, x's
///   dtype → `[batch, heads, len, head_dim]`
pub fn rope<B: Backend>(x: Tensor<B, 4>, cos: Tensor<B, 4>, sin: Tensor<B, 4>, rotary_dim: usize) -> Tensor<B, 4> {
    let head_dim = x.dims()[3];
    let half = rotary_dim / 2;
    let x_rot = x.clone().narrow(3, 0, rotary_dim);
    let rotated_half =
        Tensor::cat(vec![x_rot.clone().narrow(3, half, half).neg(), x_rot.clone().narrow(3, 0, half)], 3);
    let embedded = x_rot * cos + rotated_half * sin;
    if rotary_dim == head_dim {
        embedded
    } else {
        Tensor::cat(vec![embedded, x.narrow(3, rotary_dim, head_dim - rotary_dim)], 3)
    }
}
