//! RMSNorm (plain, and Mamba2's grouped gated form) as one CubeCL kernel: one cube of up to
//! `MAX_PLANES` rows of `LANES` units per (row, group) sums the squares in f32, then writes the
//! normalized, weighted values (a unit's first `HELD` vectors kept in registers between the two);
//! operands move as vectors of up to 16 bytes.
//!
//! One launch instead of Burn's fused reduce + elementwise pair, and a way around a Burn 0.21 bug:
//! its fused reduce, autotuned on a half-precision RMSNorm of a single row (every decode step),
//! indexes past its inputs (`burn-cubecl-fusion` `GlobalArgsLaunch::strides`) and takes the device
//! down on CUDA.

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::math::{cube_sum, vector_sum};
use super::ssd_step::{rows_are_planes, LANES};

/// Most rows of `LANES` units in a cube. A cube takes one (row, group), so at decode (one row, one
/// group) a single cube does all the work and must be wide: the gated norm of a Bamba-9B decode step
/// (8192 wide) took 46 µs in 8 rows of scalar loads on the H200, and 200 µs in one row.
const MAX_PLANES: usize = 32;
/// Vectors per unit held in registers between the sum of squares and the writes, so that the second
/// pass neither reads them again nor recomputes their gate (an 8192-wide decode row is 2 per unit).
const HELD: usize = 2;

/// `x · silu(gate)` (or `x` alone) at vector `i` of the row, in f32.
#[cube]
fn gated_value<X: Float, F: Float, N: Size>(
    x: &Tensor<Vector<X, N>>,
    gate: &Tensor<Vector<F, N>>,
    x_at: usize,
    gate_at: usize,
    #[comptime] gated: bool,
) -> Vector<f32, N> {
    let mut v = Vector::<f32, N>::cast_from(x[x_at]);
    if gated {
        let z = Vector::<f32, N>::cast_from(gate[gate_at]);
        #[unroll]
        for e in 0..N::value() {
            v[e] *= z[e] / (1.0f32 + f32::exp(-z[e]));
        }
    }
    v
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn rms_norm_kernel<X: Float, F: Float, N: Size>(
    x: &Tensor<Vector<X, N>>,
    gate: &Tensor<Vector<F, N>>,
    weight: &Tensor<Vector<F, N>>,
    y: &mut Tensor<Vector<F, N>>,
    eps: f32,
    #[comptime] planes: usize,
    #[comptime] gated: bool,
    #[comptime] use_plane: bool,
    #[define(X, F)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS_X as usize;
    let width = y.shape(1);
    let size = width / CUBE_COUNT_Y as usize;
    // In vectors: the group's size and first column; rows start at multiples of the vector size.
    let vectors = size / N::value();
    let start = CUBE_POS_Y as usize * vectors;
    let x_row = row * x.stride(0) / N::value() + start;
    let gate_row = row * gate.stride(0) / N::value() + start;
    let y_row = row * width / N::value() + start;
    let unit = UNIT_POS_Y as usize * LANES + UNIT_POS_X as usize;
    let stride = LANES * planes;
    let mut part = 0.0f32;
    let mut held = Array::<Vector<f32, N>>::new(HELD);
    #[unroll]
    for k in 0..HELD {
        let i = unit + k * stride;
        let mut v = Vector::<f32, N>::new(0.0f32);
        if i < vectors {
            v = gated_value(x, gate, x_row + i, gate_row + i, gated);
        }
        part += vector_sum(v * v);
        held[k] = v;
    }
    let mut i = unit + HELD * stride;
    while i < vectors {
        let v = gated_value(x, gate, x_row + i, gate_row + i, gated);
        part += vector_sum(v * v);
        i += stride;
    }
    let mut smem = SharedMemory::<f32>::new(LANES * planes);
    let mut partials = SharedMemory::<f32>::new(planes);
    let total = cube_sum(part, &mut smem, &mut partials, LANES, planes, use_plane);
    let inv = Vector::<f32, N>::new(1.0f32 / f32::sqrt(total / size as f32 + eps));
    #[unroll]
    for k in 0..HELD {
        let j = unit + k * stride;
        if j < vectors {
            store_normed(y, weight, held[k] * inv, y_row + j, start + j, gated);
        }
    }
    let mut j = unit + HELD * stride;
    while j < vectors {
        let normed = gated_value(x, gate, x_row + j, gate_row + j, gated) * inv;
        store_normed(y, weight, normed, y_row + j, start + j, gated);
        j += stride;
    }
}

/// `normed · weight` into `y` at vector `y_at`. As transformers: the plain norm rounds to the model
/// dtype before the weight, the gated one after.
#[cube]
fn store_normed<F: Float, N: Size>(
    y: &mut Tensor<Vector<F, N>>,
    weight: &Tensor<Vector<F, N>>,
    normed: Vector<f32, N>,
    y_at: usize,
    weight_at: usize,
    #[comptime] gated: bool,
) {
    let w = Vector::<f32, N>::cast_from(weight[weight_at]);
    if gated {
        y[y_at] = Vector::cast_from(normed * w);
    } else {
        y[y_at] = Vector::cast_from(Vector::<f32, N>::cast_from(Vector::<F, N>::cast_from(normed)) * w);
    }
}

/// Whether `t` (any rank, its last dimension the row) is indexable as rows of `vector`-element
/// vectors: unit stride along the row, every other stride a multiple of the vector size, the view
/// starting on a vector boundary (the RMSNorm's operands, the tensor-core scan's x, B and C).
pub(super) fn rows_of_vectors<R: CubeRuntime>(t: &CubeTensor<R>, vector: usize) -> bool {
    let strides = t.meta.strides();
    let Some((last, outer)) = strides.split_last() else { return false };
    let offset = t.handle.offset_start.unwrap_or(0) as usize;
    *last == 1 && outer.iter().all(|s| s.is_multiple_of(vector)) && offset.is_multiple_of(vector * t.dtype.size())
}

/// # Shapes
/// - `x`: `[rows, width]` (any float dtype); `gate`: `[rows, width]` and `weight`: `[width]` in one float
///   dtype, which the output has
/// - returns `[rows, width]` contiguous
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    gate: Option<CubeTensor<R>>,
    weight: CubeTensor<R>,
    groups: usize,
    eps: f64,
) -> CubeTensor<R> {
    let gated = gate.is_some();
    let client = x.client.clone();
    let [rows, width] = x.meta.shape().dims::<2>();
    let size = width / groups;
    let dtype: DType = weight.dtype;
    // Operands need unit column strides (a copy otherwise); the gate may be wider than x (z is read
    // in place, the first columns of in_proj's output).
    let unit_columns = |t: CubeTensor<R>| if t.meta.strides()[1] == 1 { t } else { into_contiguous(t) };
    let (x, weight) = (unit_columns(x), into_contiguous(weight));
    let gate = gate.map(unit_columns);
    // Vectors of at most 16 bytes of the wider dtype, dividing the group size, where every operand's
    // rows and view start on vector boundaries; else scalars.
    let widest = x.dtype.size().max(dtype.size());
    let vector = client
        .io_optimized_vector_sizes(widest)
        .filter(|&v| v * widest <= 16 && size.is_multiple_of(v))
        .filter(|&v| rows_of_vectors(&x, v) && gate.as_ref().is_none_or(|g| rows_of_vectors(g, v)))
        .max()
        .unwrap_or(1);
    // Without a gate the kernel does not read its gate argument; the weight fills the slot.
    let gate = gate.unwrap_or_else(|| weight.clone());
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let planes = (size / vector).div_ceil(2 * LANES).next_power_of_two().clamp(4, MAX_PLANES);
    let use_plane = rows_are_planes(&client);
    let dtypes = [x.dtype.into(), dtype.into()];
    // SAFETY: a cube per (row, group) with rows and groups from the shapes; vector indices stay below
    // each row's width (groups divides width, checked by the config; the vector divides the group);
    // every operand has unit column stride and rows at multiples of the vector; the gate is read
    // only when `gated`.
    unsafe {
        rms_norm_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(rows as u32, groups as u32, 1),
            CubeDim::new_2d(LANES as u32, planes as u32),
            vector,
            x.into_tensor_arg(),
            gate.into_tensor_arg(),
            weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            eps as f32,
            planes,
            gated,
            use_plane,
            dtypes,
        );
    }
    y
}
