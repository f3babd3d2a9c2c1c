//! The causal softmax of prefill attention in one launch: each row of raw scores (`q·kᵀ` in the
//! operands' dtype) scaled, masked causally and normalized in f32, the probabilities written back in
//! the operands' dtype for the second product.
//!
//! As Burn ops this is a cast, a scale, a mask fill over an expanded mask, a softmax (max, subtract,
//! exp, sum, divide) and a cast: about ten passes over scores that are 2 GB in f32 at 4096 tokens and
//! 32 heads, which made the softmax most of prefill attention's 10.9 ms on the H200 while its two
//! products took well under 1 ms. Here one plane walks one row:
//! a pass over the keys the row sees keeps a running maximum and sum (online softmax), one plane
//! reduction combines the lanes, and a second pass writes the probabilities (zeros past the
//! causal limit, which the first pass never reads). Rows are contiguous, read as vectors of up to
//! 16 bytes.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::gemv::vector_size;
use super::math::{row_max, row_sum, wrapped_cube, wrapped_cube_count};
use super::ssd_step::{rows_are_planes, LANES};
use crate::reference::attention::ScoreRows;

/// Score rows per cube (one row of `LANES` units each).
const ROWS: usize = 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn causal_softmax_kernel<F: Float, N: Size>(
    scores: &Tensor<Vector<F, N>>,
    probs: &mut Tensor<Vector<F, N>>,
    total_rows: u32,
    q_len: u32,
    query_offset: u32,
    scale: f32,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let row = wrapped_cube() * ROWS + UNIT_POS_Y as usize;
    let keys = scores.shape(scores.rank() - 1);
    let vectors = keys / N::value();
    let base = row * vectors;
    // Query `row % q_len` sees keys 0 ..= its position; rows past the end see none but still take
    // part in the reductions (without plane ops they synchronize the cube).
    let mut visible = 0usize;
    if row < total_rows as usize {
        visible = row % q_len as usize + query_offset as usize + 1;
        if visible > keys {
            visible = keys;
        }
    }
    let visible_vectors = visible.div_ceil(N::value());
    // The running maximum starts below any score, finite so that `exp(start − max)` is 0.
    let mut max = f32::new(-1.0e30);
    let mut sum = 0.0f32;
    let mut i = lane;
    while i < visible_vectors {
        let v = Vector::<f32, N>::cast_from(scores[base + i]) * Vector::new(scale);
        #[unroll]
        for e in 0..N::value() {
            if i * N::value() + e < visible {
                let x = v[e];
                if x > max {
                    sum = sum * f32::exp(max - x) + 1.0f32;
                    max = x;
                } else {
                    sum += f32::exp(x - max);
                }
            }
        }
        i += LANES;
    }
    let mut smem = SharedMemory::<f32>::new(LANES * ROWS);
    let row_max = row_max(max, &mut smem, LANES, use_plane);
    let total = row_sum(sum * f32::exp(max - row_max), &mut smem, LANES, use_plane);
    let inv = 1.0f32 / total;
    if row < total_rows as usize {
        let mut i = lane;
        while i < vectors {
            let mut p = Vector::<f32, N>::new(0.0f32);
            if i < visible_vectors {
                let v = Vector::<f32, N>::cast_from(scores[base + i]) * Vector::new(scale);
                #[unroll]
                for e in 0..N::value() {
                    if i * N::value() + e < visible {
                        p[e] = f32::exp(v[e] - row_max) * inv;
                    }
                }
            }
            probs[base + i] = Vector::cast_from(p);
            i += LANES;
        }
    }
}

/// Queries per block of a causal prefill (`reference::attention::causal_attention_in_query_blocks`).
/// Smaller blocks write fewer score bytes but run smaller products and more launches; 1024 was the
/// fastest of 256, 512, 1024 and one block at 4096 tokens on the H200.
pub const QUERY_BLOCK: usize = 1024;

/// Causally masked softmax over the last dim of attention scores laid out as [`ScoreRows`] says.
///
/// # Shapes
/// - `scores`: `[batch, kv_heads, rep·q_len, k_len]`, a float dtype → the same shape and dtype, contiguous
pub fn launch<R: CubeRuntime>(scores: CubeTensor<R>, layout: &ScoreRows) -> CubeTensor<R> {
    let scores = into_contiguous(scores);
    let client = scores.client.clone();
    let shape = scores.meta.shape().clone();
    let keys = shape[shape.len() - 1];
    let total_rows = shape.num_elements() / keys.max(1);
    let probs = empty_device_contiguous_dtype(client.clone(), scores.device.clone(), shape, scores.dtype);
    if total_rows == 0 || keys == 0 {
        return probs;
    }
    let vector = vector_size(&client, scores.dtype.size(), keys);
    let dtype = scores.dtype;
    // SAFETY: both tensors are contiguous `[.., keys]` with `keys` a multiple of the vector size; a
    // unit touches vectors `row · keys / vector + i` with `i < keys / vector` only for
    // `row < total_rows`.
    unsafe {
        causal_softmax_kernel::launch_unchecked::<R>(
            &client,
            wrapped_cube_count(total_rows.div_ceil(ROWS)),
            CubeDim::new_2d(LANES as u32, ROWS as u32),
            vector,
            scores.into_tensor_arg(),
            probs.clone().into_tensor_arg(),
            total_rows as u32,
            layout.q_len as u32,
            layout.query_offset as u32,
            layout.scale as f32,
            rows_are_planes(&client),
            dtype.into(),
        );
    }
    probs
}
