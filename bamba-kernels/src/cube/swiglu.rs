//! SwiGLU's elementwise half, `silu(gate) · up`, in one launch, for products too wide for the GEMV
//! (prefill, decode batches past `MAX_GEMV_ROWS`), where the gate and up projections are two matmuls.
//!
//! As Burn ops this was about ten elementwise launches (silu alone is a sigmoid composed of several,
//! each reading and writing the whole tensor): at pp4096 on the Bamba-9B shape that is ~1 GB of
//! traffic per layer, and at a batch-64 decode step ~320 launches of host time. Rounding is the
//! GEMV epilogue's (`gemv.rs`): `silu(gate)` rounded to the dtype, times `up`, rounded once.

use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;

use super::gemv::vector_size;
use super::math::{wrapped_cube, wrapped_cube_count};

/// Units per cube.
const UNITS: usize = 256;

#[cube(launch_unchecked)]
fn silu_mul_kernel<F: Float, N: Size>(
    gate: &Tensor<Vector<F, N>>,
    up: &Tensor<Vector<F, N>>,
    y: &mut Tensor<Vector<F, N>>,
    vectors: u32,
    #[define(F)] _dtype: StorageType,
) {
    let i = wrapped_cube() * UNITS + UNIT_POS_X as usize;
    if i < vectors as usize {
        let g = Vector::<f32, N>::cast_from(gate[i]);
        let mut silu = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for e in 0..N::value() {
            silu[e] = g[e] / (1.0f32 + f32::exp(-g[e]));
        }
        let silu = Vector::<f32, N>::cast_from(Vector::<F, N>::cast_from(silu));
        y[i] = Vector::cast_from(silu * Vector::<f32, N>::cast_from(up[i]));
    }
}

/// # Shapes
/// - `gate`, `up`: one shape, one float dtype → that shape and dtype, contiguous
pub fn launch<R: CubeRuntime>(gate: CubeTensor<R>, up: CubeTensor<R>) -> CubeTensor<R> {
    let (gate, up) = (into_contiguous(gate), into_contiguous(up));
    let client = gate.client.clone();
    let shape = gate.meta.shape().clone();
    let dtype = gate.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), gate.device.clone(), shape.clone(), dtype);
    let elements = shape.num_elements();
    let inner = shape[shape.len() - 1];
    let vector = vector_size(&client, dtype.size(), inner);
    let vectors = elements / vector;
    if vectors == 0 {
        return y;
    }
    // SAFETY: the three tensors are contiguous with `elements` values, a multiple of the vector
    // size (it divides the inner dim); units touch vector `i` only for `i < vectors`.
    unsafe {
        silu_mul_kernel::launch_unchecked::<R>(
            &client,
            wrapped_cube_count(vectors.div_ceil(UNITS)),
            CubeDim::new_1d(UNITS as u32),
            vector,
            gate.into_tensor_arg(),
            up.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            vectors as u32,
            dtype.into(),
        );
    }
    y
}
