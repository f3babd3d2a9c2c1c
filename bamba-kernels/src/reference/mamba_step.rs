//! A Mamba2 mixer's decode step between its projections, composed of the other [`BambaOps`]:
//! split the in_proj output, conv (window shift, bias, SiLU), SSD decode step, gated RMSNorm. The
//! default of [`BambaOps::mamba_decode_step`] and what its fused kernel is tested against.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::ssd::{SsdConfig, SsdInputs};
use crate::BambaOps;

/// One Mamba2 layer's weights that its decode step reads.
#[derive(Debug, Clone)]
pub struct MambaStepWeights<B: Backend> {
    /// `[conv_dim, kernel]`.
    pub conv_weight: Tensor<B, 2>,
    /// `[conv_dim]`.
    pub conv_bias: Option<Tensor<B, 1>>,
    /// `[heads]` f32, `A = -exp(A_log)`.
    pub a_log: Tensor<B, 1>,
    /// `[heads]` f32.
    pub d: Tensor<B, 1>,
    /// `[heads]` f32.
    pub dt_bias: Tensor<B, 1>,
    /// `[d_inner]`, the gated RMSNorm's weight (its dtype is the output's).
    pub norm_weight: Tensor<B, 1>,
}

/// The sizes and constants of a Mamba2 layer's decode step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MambaStepConfig {
    /// SSM heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Groups sharing B and C.
    pub groups: usize,
    /// State size per head channel.
    pub d_state: usize,
    /// The gated RMSNorm's epsilon (its groups are the B/C groups, as in transformers 5.x).
    pub norm_eps: f64,
    /// `time_step_limit`, see [`SsdConfig::dt_limit`].
    pub dt_limit: Option<(f32, f32)>,
}

impl MambaStepConfig {
    /// `heads · head_dim`.
    pub fn d_inner(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Channels of the conv: `d_inner + 2 · groups · d_state`.
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.groups * self.d_state
    }
}

/// What a decode step leaves: the normed output and the layer's next recurrent state.
#[derive(Debug, Clone)]
pub struct MambaStepOutput<B: Backend> {
    /// `[batch, d_inner]` in the norm weight's dtype, the input of out_proj.
    pub y: Tensor<B, 2>,
    /// `[batch, conv_dim, kernel - 1]`, the next conv window.
    pub window: Tensor<B, 3>,
    /// `[batch, heads, head_dim, d_state]`, the next SSM state, in the input state's dtype (f32, or
    /// 16-bit to halve the bytes a step moves; the math is f32 either way).
    pub state: Tensor<B, 4>,
}

/// # Shapes
/// - `zxbcdt`: `[batch, d_inner + conv_dim + heads]`, the in_proj output of one token per sequence
/// - `window`: `[batch, conv_dim, kernel - 1]`; `state`: `[batch, heads, head_dim, d_state]`
/// - returns [`MambaStepOutput`]
pub fn mamba_decode_step<B: BambaOps>(
    zxbcdt: Tensor<B, 2>,
    weights: MambaStepWeights<B>,
    window: Tensor<B, 3>,
    state: Tensor<B, 4>,
    config: MambaStepConfig,
) -> MambaStepOutput<B> {
    let (batch, state_dtype) = (zxbcdt.dims()[0], state.dtype());
    let (d_inner, conv_dim, gn) = (config.d_inner(), config.conv_dim(), config.groups * config.d_state);
    let z = zxbcdt.clone().narrow(1, 0, d_inner);
    let xbc = zxbcdt.clone().narrow(1, d_inner, conv_dim).reshape([batch, 1, conv_dim]);
    let dt = zxbcdt.narrow(1, d_inner + conv_dim, config.heads).reshape([batch, 1, config.heads]);
    let conv = B::causal_conv1d_silu(xbc, weights.conv_weight, weights.conv_bias, Some(window));
    let rows = |offset: usize, count: usize, width: usize| {
        conv.y.clone().narrow(2, offset, count * width).reshape([batch, 1, count, width])
    };
    let inputs = SsdInputs {
        x: rows(0, config.heads, config.head_dim),
        dt,
        a_log: weights.a_log,
        b: rows(d_inner, config.groups, config.d_state),
        c: rows(d_inner + gn, config.groups, config.d_state),
        d: weights.d,
        dt_bias: weights.dt_bias,
        initial_state: Some(state),
    };
    let scan = B::ssd_decode_step(inputs, SsdConfig { chunk_size: 1, dt_limit: config.dt_limit });
    let y = B::rms_norm(scan.y.reshape([batch, d_inner]), Some(z), weights.norm_weight, config.groups, config.norm_eps);
    MambaStepOutput { y, window: conv.window, state: scan.final_state.cast(state_dtype) }
}
