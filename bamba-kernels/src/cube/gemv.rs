//! Decode GEMV: `y = x · Wᵀ` for a weight kept in the checkpoint's `[out, in]` layout and a few rows
//! of `x` — every linear layer at decode, where the whole weight is read to produce a handful of
//! outputs, so the only cost that matters is streaming `W` from memory.
//!
//! One row of `LANES` units per output feature: the lanes walk that feature's weight row with the
//! widest vector loads the device has (16 bytes: 8 bf16 or 4 f32), consecutive lanes on consecutive
//! vectors so that each warp load is one coalesced 512-byte transaction, `UNROLL` loads issued before
//! any is used, and reuse every weight vector for all rows of `x`. Products accumulate in f32; one
//! sum across the lanes per output ends it. `FEATURES` rows of lanes share a cube. An [`Epilogue`]
//! fuses what follows the product at decode (SwiGLU's gate·up, a residual add), each of which was
//! several launches of its own: a decode step is launch-bound. A [`PreNorm`] applies the decoder
//! layer's RMSNorm to x on the way in (one launch fewer per norm); x, normalized, is then staged in
//! shared memory once per cube (when it fits), where every row of lanes reads it: recomputing the
//! norm per weight vector made in_proj issue-bound.
//!
//! In-model at batch 1 on the H200 what keeps it below the copy rate is latency (too few loads in
//! flight for a grid of 512 cubes) and partial last waves (numbers in backends.md).

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::math::{cube_sum, row_sum, vector_sum};
use super::ssd_step::{rows_are_planes, LANES};

/// Output features per cube (rows of `LANES` units).
const FEATURES: usize = 8;
/// Weight vectors each lane loads before using them.
const UNROLL: usize = 8;

/// The most rows of `x` one launch takes: each lane keeps one f32 vector accumulator per row.
/// Larger batches are a (small) GEMM and go to the backend's matmul.
pub const MAX_GEMV_ROWS: usize = 8;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn gemv_kernel<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    w: &Tensor<Vector<F, N>>,
    w_up: &Tensor<Vector<F, N>>,
    residual: &Tensor<F>,
    norm_weight: &Tensor<Vector<F, N>>,
    y: &mut Tensor<F>,
    eps: f32,
    #[comptime] features: usize,
    #[comptime] unroll: usize,
    #[comptime] staged: usize,
    #[comptime] rows: usize,
    #[comptime] swiglu: bool,
    #[comptime] add_residual: bool,
    #[comptime] normalize: bool,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let lane = UNIT_POS_X as usize;
    let out_features = w.shape(0);
    let feature = CUBE_POS_X as usize * features + UNIT_POS_Y as usize;
    // All operands are contiguous with the same inner size: `vectors` per row.
    let vectors = w.shape(1) / N::value();
    let mut smem = SharedMemory::<f32>::new(LANES * features);
    // With `normalize`, each row's 1 / rms: every cube sums the squares of the (small) x rows itself.
    let mut inv_rms = Array::<f32>::new(rows);
    if normalize {
        let mut partials = SharedMemory::<f32>::new(features);
        #[unroll]
        for r in 0..rows {
            let mut part = 0.0f32;
            let mut i = UNIT_POS_Y as usize * LANES + lane;
            while i < vectors {
                let v = Vector::<f32, N>::cast_from(x[r * vectors + i]);
                part += vector_sum(v * v);
                i += LANES * features;
            }
            let total = cube_sum(part, &mut smem, &mut partials, LANES, features, use_plane);
            inv_rms[r] = 1.0f32 / f32::sqrt(total / (vectors * N::value()) as f32 + eps);
        }
    }
    // With `staged > 0` (= rows · vectors), x (normalized, as the model dtype stores it) is computed
    // once per cube into shared memory instead of once per weight vector by every row of lanes.
    let mut x_staged = SharedMemory::<Vector<F, N>>::new(comptime!(staged.max(1)));
    if staged > 0 {
        let mut at = UNIT_POS_Y as usize * LANES + lane;
        while at < staged {
            let r = at / vectors;
            let i = at - r * vectors;
            x_staged[at] = Vector::<F, N>::cast_from(x_value(x, norm_weight, &inv_rms, r, vectors, i, normalize));
            at += LANES * features;
        }
        sync_cube();
    }
    let mut acc = Array::<Vector<f32, N>>::new(rows);
    // With `swiglu`, the up projection's dot products (`w_up` is read only then).
    let mut acc_up = Array::<Vector<f32, N>>::new(rows);
    #[unroll]
    for r in 0..rows {
        acc[r] = Vector::new(0.0f32);
        acc_up[r] = Vector::new(0.0f32);
    }
    // No early exit past the last feature: every unit takes part in the cube-wide sum below.
    if feature < out_features {
        let base = feature * vectors;
        let mut i = lane;
        // `unroll` weight loads issued before any is used: bytes in flight per lane, which is what a
        // memory-bound loop needs (a plain loop waits on each load in turn). Loads predicated on
        // the row's end instead of the plain tail loop below make batch-1 decode 15% slower on the
        // H200; the Bamba and Llama widths never reach that loop at 8 loads.
        let mut wv = Array::<Vector<F, N>>::new(unroll);
        let mut uv = Array::<Vector<F, N>>::new(unroll);
        while i + (unroll - 1) * LANES < vectors {
            #[unroll]
            for u in 0..unroll {
                wv[u] = w[base + i + u * LANES];
                if swiglu {
                    uv[u] = w_up[base + i + u * LANES];
                }
            }
            #[unroll]
            for u in 0..unroll {
                let wf = Vector::<f32, N>::cast_from(wv[u]);
                #[unroll]
                for r in 0..rows {
                    let xf = x_input(x, norm_weight, &inv_rms, &x_staged, r, vectors, i + u * LANES, normalize, staged);
                    acc[r] += wf * xf;
                    if swiglu {
                        acc_up[r] += Vector::<f32, N>::cast_from(uv[u]) * xf;
                    }
                }
            }
            i += unroll * LANES;
        }
        while i < vectors {
            let wf = Vector::<f32, N>::cast_from(w[base + i]);
            #[unroll]
            for r in 0..rows {
                let xf = x_input(x, norm_weight, &inv_rms, &x_staged, r, vectors, i, normalize, staged);
                acc[r] += wf * xf;
                if swiglu {
                    acc_up[r] += Vector::<f32, N>::cast_from(w_up[base + i]) * xf;
                }
            }
            i += LANES;
        }
    }
    #[unroll]
    for r in 0..rows {
        let total = row_sum(vector_sum(acc[r]), &mut smem, LANES, use_plane);
        // Each product is rounded to the model dtype first, as the unfused ops would store it.
        let mut out = f32::cast_from(F::cast_from(total));
        if swiglu {
            let up = f32::cast_from(F::cast_from(row_sum(vector_sum(acc_up[r]), &mut smem, LANES, use_plane)));
            let gate = f32::cast_from(F::cast_from(out / (1.0f32 + f32::exp(-out))));
            out = gate * up;
        }
        if lane == 0 && feature < out_features {
            let at = r * out_features + feature;
            if add_residual {
                out = f32::cast_from(F::cast_from(out)) + f32::cast_from(residual[at]);
            }
            y[at] = F::cast_from(out);
        }
    }
}

/// Vector `i` of x's row `r` in f32 as the product uses it: from shared memory when staged.
#[cube]
#[allow(clippy::too_many_arguments, unused_assignments)]
fn x_input<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    norm_weight: &Tensor<Vector<F, N>>,
    inv_rms: &Array<f32>,
    x_staged: &SharedMemory<Vector<F, N>>,
    r: usize,
    vectors: usize,
    i: usize,
    #[comptime] normalize: bool,
    #[comptime] staged: usize,
) -> Vector<f32, N> {
    let mut xf = Vector::<f32, N>::new(0.0f32);
    if staged > 0 {
        xf = Vector::<f32, N>::cast_from(x_staged[r * vectors + i]);
    } else {
        xf = x_value(x, norm_weight, inv_rms, r, vectors, i, normalize);
    }
    xf
}

/// Vector `i` of x's row `r` in f32; with `normalize`, RMSNorm applied first, rounded as
/// [`crate::reference::norm::rms_norm`] stores it (x̂ in the model dtype, then the weight product).
#[cube]
fn x_value<F: Float, N: Size>(
    x: &Tensor<Vector<F, N>>,
    norm_weight: &Tensor<Vector<F, N>>,
    inv_rms: &Array<f32>,
    r: usize,
    vectors: usize,
    i: usize,
    #[comptime] normalize: bool,
) -> Vector<f32, N> {
    let mut xf = Vector::<f32, N>::cast_from(x[r * vectors + i]);
    if normalize {
        let normed = Vector::<f32, N>::cast_from(Vector::<F, N>::cast_from(xf * Vector::new(inv_rms[r])));
        xf = Vector::<f32, N>::cast_from(Vector::<F, N>::cast_from(
            normed * Vector::<f32, N>::cast_from(norm_weight[i]),
        ));
    }
    xf
}

/// The widest vector (≤ 16 bytes) the device loads for `dtype` that divides `inner`.
pub(super) fn vector_size<R: CubeRuntime>(client: &ComputeClient<R>, elem_bytes: usize, inner: usize) -> usize {
    client.io_optimized_vector_sizes(elem_bytes).filter(|&v| v * elem_bytes <= 16 && inner % v == 0).max().unwrap_or(1)
}

/// The launch shape: cube rows, loads in flight per lane (plain and SwiGLU), and when x is staged in
/// shared memory (0 never, 1 with a pre-norm, 2 always; up to `stage_limit` bytes).
struct Tuning {
    features: usize,
    unroll: usize,
    stage: usize,
    stage_limit: usize,
    unroll_swiglu: usize,
}

/// The launch shape: 8 features per cube, 8 loads in flight, x staged with a pre-norm, the fastest
/// batch-1 decode of the 8 shapes tried on the H200.
const TUNING: Tuning =
    Tuning { features: FEATURES, unroll: UNROLL, stage: 1, stage_limit: 48 * 1024, unroll_swiglu: UNROLL };

/// What a GEMV launch computes besides `x · Wᵀ`.
pub enum Epilogue<R: CubeRuntime> {
    /// `x · Wᵀ`.
    None,
    /// `silu(x · Wᵀ) · (x · Uᵀ)` with this `U` (`[out, in]`, like `W`): SwiGLU's gate and up
    /// projections in one pass over both weights.
    SwiGlu(CubeTensor<R>),
    /// `x · Wᵀ + residual` with this `[rows, out]` residual.
    Residual(CubeTensor<R>),
}

/// An RMSNorm to apply to x before the product: a decoder layer's pre-norm (`[in]` weight, eps).
pub struct PreNorm<R: CubeRuntime> {
    pub weight: CubeTensor<R>,
    pub eps: f64,
}

/// # Shapes
/// - `x`: `[rows, in]` with `rows ≤ MAX_GEMV_ROWS`, `weight`: `[out, in]`, one float dtype; see
///   [`Epilogue`] for its operand; the norm's weight `[in]` in that dtype
/// - returns `[rows, out]` in that dtype, contiguous
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    epilogue: Epilogue<R>,
    norm: Option<PreNorm<R>>,
) -> CubeTensor<R> {
    let (x, weight) = (into_contiguous(x), into_contiguous(weight));
    let client = x.client.clone();
    let [rows, inner] = x.meta.shape().dims::<2>();
    let out_features = weight.meta.shape().dims::<2>()[0];
    assert!(rows <= MAX_GEMV_ROWS, "gemv takes at most {MAX_GEMV_ROWS} rows, got {rows}");
    let dtype = x.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), [rows, out_features].into(), dtype);
    let vector = vector_size(&client, dtype.size(), inner);
    let tune = &TUNING;
    let features = tune.features;
    let count = CubeCount::Static(out_features.div_ceil(features) as u32, 1, 1);
    let use_plane = rows_are_planes(&client);
    let stage_bytes = rows * inner * dtype.size();
    let stage_limit = tune.stage_limit.min(client.properties().hardware.max_shared_memory_size.saturating_sub(1024));
    let staged = match tune.stage {
        1 if norm.is_some() && stage_bytes <= stage_limit => rows * inner / vector,
        2 if stage_bytes <= stage_limit => rows * inner / vector,
        _ => 0,
    };
    // Operands an epilogue does not use are never read; the weight and x fill their slots.
    let (w_up, residual, swiglu, add_residual) = match epilogue {
        Epilogue::None => (weight.clone(), x.clone(), false, false),
        Epilogue::SwiGlu(up) => (into_contiguous(up), x.clone(), true, false),
        Epilogue::Residual(residual) => (weight.clone(), into_contiguous(residual), false, true),
    };
    // Without a norm the kernel does not read its norm weight; the weight fills the slot.
    let (norm_weight, eps, normalize) = match norm {
        Some(norm) => (into_contiguous(norm.weight), norm.eps as f32, true),
        None => (weight.clone(), 0.0, false),
    };
    // SAFETY: x, weight, w_up and the norm weight are contiguous with `inner` a multiple of the
    // vector size; every weight index is below `out_features · inner`, every x index below
    // `rows · inner`, every norm weight index below `inner`, and y and the residual (`[rows, out]`,
    // contiguous) are touched only for `feature < out_features`.
    unsafe {
        gemv_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_2d(LANES as u32, features as u32),
            vector,
            x.into_tensor_arg(),
            weight.into_tensor_arg(),
            w_up.into_tensor_arg(),
            residual.into_tensor_arg(),
            norm_weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            eps,
            features,
            if swiglu { tune.unroll_swiglu } else { tune.unroll },
            staged,
            rows,
            swiglu,
            add_residual,
            normalize,
            use_plane,
            dtype.into(),
        );
    }
    y
}
