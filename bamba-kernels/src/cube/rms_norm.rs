//! RMSNorm (plain, and Mamba2's grouped gated form) as one CubeCL kernel: one cube of `PLANES` rows of
//! `LANES` units per (row, group) sums the squares in f32, then writes the normalized, weighted values.
//!
//! One launch instead of Burn's fused reduce + elementwise pair, and a way around a Burn 0.21 bug:
//! its fused reduce, autotuned on a half-precision RMSNorm of a single row (every decode step),
//! indexes past its inputs (`burn-cubecl-fusion` `GlobalArgsLaunch::strides`) and takes the device
//! down on CUDA.

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::math::cube_sum;
use super::ssd_step::{rows_are_planes, LANES};

/// Rows of `LANES` units in a cube: one cube per (row, group) of the input, so at decode (one row,
/// one group) a single cube does all the work and must be wide. With 32 units, the gated norm of a
/// decode step (8192 wide) took 200 µs on the H200.
const PLANES: usize = 8;

/// `x · silu(gate)` at one position (or `x` alone), in f32.
#[cube]
fn gated_value<X: Float, F: Float>(
    x: &Tensor<X>,
    gate: &Tensor<F>,
    row: usize,
    col: usize,
    #[comptime] gated: bool,
) -> f32 {
    let mut v = f32::cast_from(x[row * x.stride(0) + col * x.stride(1)]);
    if gated {
        let z = f32::cast_from(gate[row * gate.stride(0) + col * gate.stride(1)]);
        v *= z / (1.0f32 + f32::exp(-z));
    }
    v
}

#[cube(launch_unchecked)]
fn rms_norm_kernel<X: Float, F: Float>(
    x: &Tensor<X>,
    gate: &Tensor<F>,
    weight: &Tensor<F>,
    y: &mut Tensor<F>,
    eps: f32,
    #[comptime] gated: bool,
    #[comptime] use_plane: bool,
    #[define(X, F)] _dtypes: [StorageType; 2],
) {
    let row = CUBE_POS_X as usize;
    let width = y.shape(1);
    let size = width / CUBE_COUNT_Y as usize;
    let start = CUBE_POS_Y as usize * size;
    let unit = UNIT_POS_Y as usize * LANES + UNIT_POS_X as usize;
    let mut part = 0.0f32;
    let mut i = unit;
    while i < size {
        let v = gated_value(x, gate, row, start + i, gated);
        part += v * v;
        i += LANES * PLANES;
    }
    let mut smem = SharedMemory::<f32>::new(LANES * PLANES);
    let mut partials = SharedMemory::<f32>::new(PLANES);
    let total = cube_sum(part, &mut smem, &mut partials, LANES, PLANES, use_plane);
    let inv = 1.0f32 / f32::sqrt(total / size as f32 + eps);
    let mut j = unit;
    while j < size {
        let col = start + j;
        let normed = gated_value(x, gate, row, col, gated) * inv;
        let w = f32::cast_from(weight[col * weight.stride(0)]);
        // As transformers: the plain norm rounds to the model dtype before the weight, the gated one after.
        if gated {
            y[row * width + col] = F::cast_from(normed * w);
        } else {
            y[row * width + col] = F::cast_from(f32::cast_from(F::cast_from(normed)) * w);
        }
        j += LANES * PLANES;
    }
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
    // Without a gate the kernel does not read its gate argument; the weight fills the slot.
    let gate = gate.unwrap_or_else(|| weight.clone());
    let client = x.client.clone();
    let [rows, _] = x.meta.shape().dims::<2>();
    let dtype: DType = weight.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let use_plane = rows_are_planes(&client);
    let dtypes = [x.dtype.into(), dtype.into()];
    // SAFETY: a cube per (row, group) with rows and groups from the shapes; column indices stay below
    // width (groups divides width, checked by the config); the gate is read only when `gated`.
    unsafe {
        rms_norm_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(rows as u32, groups as u32, 1),
            CubeDim::new_2d(LANES as u32, PLANES as u32),
            x.into_tensor_arg(),
            gate.into_tensor_arg(),
            weight.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            eps as f32,
            gated,
            use_plane,
            dtypes,
        );
    }
    y
}
