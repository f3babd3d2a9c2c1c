//! Causal depthwise conv1d + bias + SiLU as a CubeCL kernel: one unit per output element, f32
//! accumulation, positions before the chunk read the carried window; a second tiny kernel writes the
//! window to carry into the next call.

use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeDim};

#[cube(launch_unchecked)]
fn conv_kernel<F: Float>(
    x: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    window: &Tensor<F>,
    y: &mut Tensor<F>,
    #[comptime] has_bias: bool,
    #[define(F)] _dtype: StorageType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= y.len() {
        terminate!();
    }
    let channels = y.shape(2);
    let len = y.shape(1);
    let c = idx % channels;
    let t = (idx / channels) % len;
    let b = idx / (channels * len);
    let k = weight.shape(1);
    let mut acc = 0.0f32;
    for j in 0..k {
        // tap j reads padded position t + j, where the first k - 1 padded positions are the window
        let w = f32::cast_from(weight[c * weight.stride(0) + j * weight.stride(1)]);
        let src = t + j;
        if src < k - 1 {
            acc += w * f32::cast_from(window[b * window.stride(0) + c * window.stride(1) + src * window.stride(2)]);
        } else {
            let tt = src - (k - 1);
            acc += w * f32::cast_from(x[b * x.stride(0) + tt * x.stride(1) + c * x.stride(2)]);
        }
    }
    if has_bias {
        acc += f32::cast_from(bias[c * bias.stride(0)]);
    }
    y[idx] = F::cast_from(acc / (1.0f32 + f32::exp(-acc)));
}

#[cube(launch_unchecked)]
fn window_kernel<F: Float>(x: &Tensor<F>, window: &Tensor<F>, out: &mut Tensor<F>, #[define(F)] _dtype: StorageType) {
    let idx = ABSOLUTE_POS;
    if idx >= out.len() {
        terminate!();
    }
    let keep = out.shape(2); // k - 1
    let channels = out.shape(1);
    let len = x.shape(1);
    let i = idx % keep;
    let c = (idx / keep) % channels;
    let b = idx / (keep * channels);
    // padded = [window (k-1) | x (len)]; the new window is its last k - 1 entries
    let src = len + i;
    if src < keep {
        out[idx] = window[b * window.stride(0) + c * window.stride(1) + src * window.stride(2)];
    } else {
        out[idx] = x[b * x.stride(0) + (src - keep) * x.stride(1) + c * x.stride(2)];
    }
}

/// # Shapes
/// - `x`: `[batch, len, channels]`, `weight`: `[channels, kernel]`, `bias`: `[channels]` (ignored
///   unless `has_bias`), `window`: `[batch, channels, kernel - 1]`, all one float dtype
/// - returns `y` `[batch, len, channels]` and the new window, contiguous, in that dtype
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
    has_bias: bool,
    window: CubeTensor<R>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let client = x.client.clone();
    let dtype = x.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), dtype);
    let new_window =
        empty_device_contiguous_dtype(client.clone(), x.device.clone(), window.meta.shape().clone(), dtype);
    let n = y.meta.num_elements();
    let cube_dim = CubeDim::new_1d(256);
    let count = calculate_cube_count_elemwise(&client, n, cube_dim);
    let nw = new_window.meta.num_elements();
    let window_count = calculate_cube_count_elemwise(&client, nw, cube_dim);
    // SAFETY: every index is bounds-checked against the output length and derived from the shapes.
    unsafe {
        conv_kernel::launch_unchecked::<R>(
            &client,
            count,
            cube_dim,
            x.clone().into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            window.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            has_bias,
            dtype.into(),
        );
        if nw > 0 {
            window_kernel::launch_unchecked::<R>(
                &client,
                window_count,
                cube_dim,
                x.into_tensor_arg(),
                window.into_tensor_arg(),
                new_window.clone().into_tensor_arg(),
                dtype.into(),
            );
        }
    }
    (y, new_window)
}
