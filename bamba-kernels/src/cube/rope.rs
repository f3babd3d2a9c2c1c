//! Rotary position embedding in one launch: the queries or keys of an attention layer rotated
//! straight from the projection's output (a strided head view, read in place), for every
//! position of a prefill chunk or the one of a decode step.
//!
//! As Burn ops this was ten launches per tensor (two slices, a negation, two concatenations of two
//! slice writes each, two products and a sum), twenty per attention layer: at a batch-1 decode step
//! each launch costs a few µs of GPU time and as much again of gap and host time, and the
//! Llama-shaped baseline (32 attention layers) was bound by that host time. Rounding
//! is the reference's (`reference::rope`): each product rounded to the dtype, then their sum.

use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::math::{wrapped_cube, wrapped_cube_count};

/// Units per cube.
const UNITS: usize = 256;

/// One unit per output element `(b, h, l, j)` of the contiguous `[batch, heads, len, head_dim]`
/// output; `x`, `cos` and `sin` are read through their strides (the tables' batch dim broadcasts
/// when it is 1).
#[cube(launch_unchecked)]
#[allow(unused_assignments)]
fn rope_kernel<F: Float>(
    x: &Tensor<F>,
    cos: &Tensor<F>,
    sin: &Tensor<F>,
    y: &mut Tensor<F>,
    rotary_dim: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = wrapped_cube() * UNITS + UNIT_POS_X as usize;
    if i < y.len() {
        let head_dim = y.shape(3);
        let len = y.shape(2);
        let heads = y.shape(1);
        let j = i % head_dim;
        let l = (i / head_dim) % len;
        let h = (i / (head_dim * len)) % heads;
        let b = i / (head_dim * len * heads);
        let row = b * x.stride(0) + h * x.stride(1) + l * x.stride(2);
        let value = x[row + j * x.stride(3)];
        let rot = rotary_dim as usize;
        if j < rot {
            let half = rot / 2;
            // rotate_half: [-x₂, x₁] over the rotated dims.
            let mut partner = F::cast_from(0.0f32);
            if j < half {
                partner = -x[row + (j + half) * x.stride(3)];
            } else {
                partner = x[row + (j - half) * x.stride(3)];
            }
            let c = table_value(cos, b, l, j);
            let s = table_value(sin, b, l, j);
            // Each product rounded to the dtype, then the sum, as the tensor ops store them.
            let xc = f32::cast_from(F::cast_from(f32::cast_from(value) * f32::cast_from(c)));
            let ps = f32::cast_from(F::cast_from(f32::cast_from(partner) * f32::cast_from(s)));
            y[i] = F::cast_from(xc + ps);
        } else {
            y[i] = value;
        }
    }
}

/// Entry `(b, l, j)` of a `[1 or batch, 1, len, rotary_dim]` table: row b, or row 0 when the
/// table is shared by the batch.
#[cube]
#[allow(unused_assignments)]
fn table_value<F: Float>(table: &Tensor<F>, b: usize, l: usize, j: usize) -> F {
    let mut row = b * table.stride(0);
    if table.shape(0) == 1 {
        row = 0;
    }
    table[row + l * table.stride(2) + j * table.stride(3)]
}

/// # Shapes
/// - `x`: `[batch, heads, len, head_dim]` (any strides); `cos`, `sin`: `[1 or batch, 1, len,
///   rotary_dim]` (any strides), x's dtype, `rotary_dim` even and at most `head_dim` → `[batch, heads,
///   len, head_dim]` in x's dtype, contiguous
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    cos: CubeTensor<R>,
    sin: CubeTensor<R>,
    rotary_dim: usize,
) -> CubeTensor<R> {
    let client = x.client.clone();
    let shape = x.meta.shape().clone();
    let dtype = x.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), shape.clone(), dtype);
    let elements = shape.num_elements();
    if elements == 0 {
        return y;
    }
    // SAFETY: units write element `i < y.len()` of the contiguous output; x is read at its own
    // strides within its shape (the output's), the tables at positions `l < len` and dims
    // `j < rotary_dim ≤ head_dim` of their shapes (row 0 when their batch dim is 1).
    unsafe {
        rope_kernel::launch_unchecked::<R>(
            &client,
            wrapped_cube_count(elements.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            x.into_tensor_arg(),
            cos.into_tensor_arg(),
            sin.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rotary_dim as u32,
            dtype.into(),
        );
    }
    y
}
