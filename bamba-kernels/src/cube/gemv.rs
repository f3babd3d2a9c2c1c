//! Decode GEMV: `y = x · Wᵀ` for a weight kept in the checkpoint's `[out, in]` layout and a few rows
//! of `x` — every linear layer at decode, where the whole weight is read to produce a handful of
//! outputs, so the only cost that matters is streaming `W` from memory.
//!
//! One row of `LANES` units per output feature: the lanes walk that feature's weight row with the
//! widest vector loads the device has (16 bytes: 8 bf16 or 4 f32), consecutive lanes on consecutive
//! vectors so that each warp load is one coalesced 512-byte transaction, `UNROLL` loads issued before
//! any is used, and reuse every weight vector for all rows of `x` (held in L1/L2; it is tiny).
//! Products accumulate in f32; one sum across the lanes per output ends it. `FEATURES` rows of lanes
//! share a cube. Measured on the H200: 52% of the copy bandwidth on 4096×16768 (no split-K yet).

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::math::row_sum;
use super::ssd_step::{rows_are_planes, LANES};

/// Output features per cube (rows of `LANES` units).
const FEATURES: usize = 8;
/// Weight vectors each lane loads before using them.
const UNROLL: usize = 4;

/// The most rows of `x` one launch takes: each lane keeps one f32 vector accumulator per row.
/// Larger batches are a (small) GEMM and go to the backend's matmul.
pub const MAX_GEMV_ROWS: usize = 8;

#[cube(launch_unchecked)]
fn gemv_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    #[comptime] rows: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let out_features = w.shape(0);
    let feature = CUBE_POS_X as usize * FEATURES + UNIT_POS_Y as usize;
    // Both operands are contiguous with the same inner size: `vectors` per row.
    let vectors = w.shape(1) / N::value();
    let mut acc = Array::<Vector<f32, N>>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = Vector::new(0.0f32);
    }
    // No early exit past the last feature: every unit takes part in the cube-wide sum below.
    if feature < out_features {
        let base = feature * vectors;
        let mut i = lane;
        // UNROLL weight loads issued before any is used: bytes in flight per lane, which is what a
        // memory-bound loop needs (a plain loop waits on each load in turn).
        let mut wv = Array::<Vector<F, N>>::new(UNROLL);
        while i + (UNROLL - 1) * LANES < vectors {
            #[unroll]
            for u in 0..UNROLL {
                wv[u] = w[base + i + u * LANES];
            }
            #[unroll]
            for u in 0..UNROLL {
                let wf = Vector::<f32, N>::cast_from(wv[u]);
                #[unroll]
                for r in 0..rows {
                    acc[r] += wf * Vector::<f32, N>::cast_from(x[r * vectors + i + u * LANES]);
                }
            }
            i += UNROLL * LANES;
        }
        while i < vectors {
            let wf = Vector::<f32, N>::cast_from(w[base + i]);
            #[unroll]
            for r in 0..rows {
                acc[r] += wf * Vector::<f32, N>::cast_from(x[r * vectors + i]);
            }
            i += LANES;
        }
    }
    let mut smem = SharedMemory::<f32>::new(LANES * FEATURES);
    #[unroll]
    for r in 0..rows {
        let v = acc[r];
        let mut part = 0.0f32;
        #[unroll]
        for e in 0..N::value() {
            part += v[e];
        }
        let total = row_sum(part, &mut smem, LANES, use_plane);
        if lane == 0 && feature < out_features {
            y[r * out_features + feature] = F::cast_from(total);
        }
    }
}

/// The widest vector (≤ 16 bytes) the device loads for `dtype` that divides `inner`.
fn vector_size<R: CubeRuntime>(client: &ComputeClient<R>, elem_bytes: usize, inner: usize) -> usize {
    client.io_optimized_vector_sizes(elem_bytes).filter(|&v| v * elem_bytes <= 16 && inner % v == 0).max().unwrap_or(1)
}

/// # Shapes
/// - `x`: `[rows, in]` with `rows ≤ MAX_GEMV_ROWS`, `weight`: `[out, in]`, one float dtype
/// - returns `[rows, out]` in that dtype, contiguous
pub fn launch<R: CubeRuntime>(x: CubeTensor<R>, weight: CubeTensor<R>) -> CubeTensor<R> {
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let client = x.client.clone();
    let [rows, inner] = x.meta.shape().dims::<2>();
    let out_features = weight.meta.shape().dims::<2>()[0];
    assert!(rows <= MAX_GEMV_ROWS, "gemv takes at most {MAX_GEMV_ROWS} rows, got {rows}");
    let dtype = x.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [rows, out_features].into(), dtype);
    let vector = vector_size(&client, dtype.size(), inner);
    let count = CubeCount::Static(out_features.div_ceil(FEATURES) as u32, 1, 1);
    let use_plane = rows_are_planes(&client);
    // SAFETY: x and weight are contiguous with `inner` a multiple of the vector size; every weight index
    // is below `out_features · inner`, every x index below `rows · inner`, and y is written only for
    // `feature < out_features`.
    unsafe {
        gemv_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_2d(LANES as u32, FEATURES as u32),
            vector,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            rows,
            use_plane,
            dtype.into(),
        );
    }
    y
}
