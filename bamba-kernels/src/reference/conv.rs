//! Causal depthwise conv1d + bias + SiLU in tensor ops, with a carried window for continuation.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

/// Result of the causal conv: activations and the window to carry into the next call.
#[derive(Debug, Clone)]
pub struct ConvOutput<B: Backend> {
    /// `[batch, len, channels]`, SiLU(conv + bias), in the input's dtype.
    pub y: Tensor<B, 3>,
    /// `[batch, channels, kernel - 1]`: the last `kernel - 1` pre-conv inputs, oldest first.
    pub window: Tensor<B, 3>,
}

/// Reference causal depthwise conv1d: `y[t, c] = silu(bias[c] + Σ_j w[c, j] · x[t + j - (K-1), c])`,
/// where positions before 0 read the carried `window` (zeros when `None`).
///
/// Math runs in f32 whatever the input dtype; the output is cast back.
///
/// # Shapes
/// - `x`: `[batch, len, channels]`, `weight`: `[channels, kernel]`, `bias`: `[channels]`
/// - `window`: `[batch, channels, kernel - 1]`
pub fn causal_conv1d_silu<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    window: Option<Tensor<B, 3>>,
) -> ConvOutput<B> {
    let dtype = x.dtype();
    let [batch, len, channels] = x.dims();
    let [_, kernel] = weight.dims();
    let device = x.device();
    let x = x.cast(DType::F32).swap_dims(1, 2); // [b, c, l]
    let prefix = match window {
        Some(w) => w.cast(DType::F32),
        None => Tensor::zeros([batch, channels, kernel - 1], (&device, DType::F32)),
    };
    let padded = Tensor::cat(vec![prefix, x], 2); // [b, c, l + K - 1]
    let weight = weight.cast(DType::F32);
    let mut acc = Tensor::<B, 3>::zeros([batch, channels, len], (&device, DType::F32));
    for j in 0..kernel {
        let tap = weight.clone().narrow(1, j, 1).reshape([1, channels, 1]);
        acc = acc + padded.clone().narrow(2, j, len) * tap;
    }
    if let Some(bias) = bias {
        acc = acc + bias.cast(DType::F32).reshape([1, channels, 1]);
    }
    let y = silu(acc).swap_dims(1, 2).cast(dtype);
    let window = padded.narrow(2, len, kernel - 1).cast(dtype);
    ConvOutput { y, window }
}
