//! Which kernel takes an op (the policy shared by the `CubeBackend` and `Fusion` impls), and each
//! op's operands in the order and dtypes its kernel takes them.

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{DType, Int, Tensor};
use burn_cubecl::CubeRuntime;

use crate::shapes::{self, assert_ok};
use crate::{MambaStepConfig, MambaStepWeights, SsdInputs};

#[cfg(feature = "cuda")]
use super::cublaslt;
use super::{moe, prim, MAX_GEMV_ROWS, MAX_KERNEL_D_STATE};

/// The SSD inputs as the kernels take them, in order x, dt, A_log, B, C, D, dt_bias, state: x/dt/B/C in
/// x's dtype, the per-head vectors and the state in f32, the state materialized (zeros when absent).
pub(super) fn ssd_kernel_inputs<B: Backend>(inputs: SsdInputs<B>) -> [FloatTensor<B>; 8] {
    let [batch, _, heads, head_dim] = inputs.x.dims();
    let d_state = inputs.b.dims()[3];
    let dtype = inputs.x.dtype();
    let state = match inputs.initial_state {
        Some(s) => s.cast(DType::F32),
        None => Tensor::zeros([batch, heads, head_dim, d_state], (&inputs.x.device(), DType::F32)),
    };
    [
        prim(inputs.x),
        prim(inputs.dt.cast(dtype)),
        prim(inputs.a_log.cast(DType::F32)),
        prim(inputs.b.cast(dtype)),
        prim(inputs.c.cast(dtype)),
        prim(inputs.d.cast(DType::F32)),
        prim(inputs.dt_bias.cast(DType::F32)),
        prim(state),
    ]
}

/// The conv inputs as the kernel takes them, in order x, weight, bias, window, all in x's dtype, bias
/// and window materialized (zeros when absent), and whether there was a bias.
pub(super) fn conv_kernel_inputs<B: Backend>(
    x: Tensor<B, 3>,
    weight: Tensor<B, 2>,
    bias: Option<Tensor<B, 1>>,
    window: Option<Tensor<B, 3>>,
) -> ([FloatTensor<B>; 4], bool) {
    let [batch, _, channels] = x.dims();
    let kernel = weight.dims()[1];
    let (dtype, device) = (x.dtype(), x.device());
    let has_bias = bias.is_some();
    let bias = bias.map(|b| b.cast(dtype)).unwrap_or_else(|| Tensor::zeros([channels], (&device, dtype)));
    let window = match window {
        Some(w) => w.cast(dtype),
        None => Tensor::zeros([batch, channels, kernel - 1], (&device, dtype)),
    };
    ([prim(x), prim(weight.cast(dtype)), prim(bias), prim(window)], has_bias)
}

/// The fused Mamba step's inputs as the kernels take them, in order zxbcdt, conv weight, conv bias
/// (zeros when absent), window (all in zxbcdt's dtype), A_log, D, dt_bias (f32), state (in its own
/// dtype: the kernel keeps it), norm weight.
pub(super) fn mamba_step_inputs<B: Backend>(
    zxbcdt: Tensor<B, 2>,
    weights: MambaStepWeights<B>,
    window: Tensor<B, 3>,
    state: Tensor<B, 4>,
) -> [FloatTensor<B>; 9] {
    let (dtype, device) = (zxbcdt.dtype(), zxbcdt.device());
    let channels = weights.conv_weight.dims()[0];
    let bias = weights.conv_bias.map(|b| b.cast(dtype)).unwrap_or_else(|| Tensor::zeros([channels], (&device, dtype)));
    [
        prim(zxbcdt),
        prim(weights.conv_weight.cast(dtype)),
        prim(bias),
        prim(window.cast(dtype)),
        prim(weights.a_log.cast(DType::F32)),
        prim(weights.d.cast(DType::F32)),
        prim(weights.dt_bias.cast(DType::F32)),
        prim(state),
        prim(weights.norm_weight),
    ]
}

/// The fused Mamba step's operands: checks their shapes ([`shapes::mamba_step`], a panic with its message)
/// and tells whether the kernel takes this layer: a conv window to carry and a state that fits the kernel's
/// registers (else the composition of the other ops runs).
pub(super) fn mamba_step_operands<B: Backend>(
    zxbcdt: &Tensor<B, 2>,
    weights: &MambaStepWeights<B>,
    window: &Tensor<B, 3>,
    state: &Tensor<B, 4>,
    config: &MambaStepConfig,
) -> bool {
    assert_ok(shapes::mamba_step(zxbcdt, weights, window, state, config));
    weights.conv_weight.dims()[1] >= 2 && config.d_state <= MAX_KERNEL_D_STATE
}

/// A linear op's operands: checks their shapes ([`shapes::linear`], a panic naming `op`) and tells whether
/// they all share x's dtype, as every kernel path of the linear ops needs (else the reference runs).
pub(super) fn linear_operands<B: Backend>(
    op: &'static str,
    x: &Tensor<B, 2>,
    weights: &[&Tensor<B, 2>],
    residual: Option<&Tensor<B, 2>>,
    norm_weight: Option<&Tensor<B, 1>>,
) -> bool {
    assert_ok(shapes::linear(op, x, weights, residual, norm_weight));
    let dtype = x.dtype();
    weights.iter().all(|w| w.dtype() == dtype)
        && residual.is_none_or(|r| r.dtype() == dtype)
        && norm_weight.is_none_or(|n| n.dtype() == dtype)
}

/// Whether the GEMV kernel takes this product: few rows, one dtype (else the matmul path does:
/// Burn's matmul, or cuBLASLt on CUDA).
pub(super) fn gemv_applies<R: CubeRuntime, B: Backend>(x: &Tensor<B, 2>, weight: &Tensor<B, 2>) -> bool {
    let rows = x.dims()[0];
    // On CUDA the GEMV's steps slow down past 2 rows; there cuBLASLt takes what it can.
    #[cfg(feature = "cuda")]
    {
        let [cols, inner] = weight.dims();
        if rows >= cublaslt::GEMV_CUBLASLT_FROM_ROWS && cublaslt::takes::<R>(rows, inner, cols) {
            return false;
        }
    }
    rows <= MAX_GEMV_ROWS && x.dtype() == weight.dtype()
}

/// Whether the MoE expert kernels take these operands: at most [`moe::MAX_KERNEL_PAIRS`] (token,
/// slot) pairs (past that, prefill, the reference's host-grouped matmuls cost less), one float dtype
/// for x and both expert weights, and float routing weights.
pub(super) fn experts_apply<B: Backend>(
    x: &Tensor<B, 2>,
    weights: &Tensor<B, 2>,
    experts: &Tensor<B, 2, Int>,
    gate_up: &Tensor<B, 3>,
    down: &Tensor<B, 3>,
) -> bool {
    let dtype = x.dtype();
    let pairs: usize = experts.dims().iter().product();
    pairs <= moe::MAX_KERNEL_PAIRS
        && dtype.is_float()
        && gate_up.dtype() == dtype
        && down.dtype() == dtype
        && weights.dtype().is_float()
}

/// Whether the RoPE kernel takes these operands: one dtype, an even `rotary_dim` within the head,
/// and tables covering the positions (else the reference's broadcasting rules and errors apply).
pub(super) fn rope_applies<B: Backend>(
    x: &Tensor<B, 4>,
    cos: &Tensor<B, 4>,
    sin: &Tensor<B, 4>,
    rotary_dim: usize,
) -> bool {
    let [batch, _, len, head_dim] = x.dims();
    let table_fits = |t: &Tensor<B, 4>| {
        let [rows, one, positions, width] = t.dims();
        (rows == 1 || rows == batch) && one == 1 && positions == len && width == rotary_dim && t.dtype() == x.dtype()
    };
    rotary_dim.is_multiple_of(2) && rotary_dim <= head_dim && table_fits(cos) && table_fits(sin)
}
