//! The Mamba2 mixer: in_proj → causal conv → SSD scan → gated RMSNorm → out_proj.
//!
//! The conv and the scan go through [`BambaOps`], so a backend with kernels runs them and ndarray
//! runs the tensor-op references.

use bamba_kernels::{BambaOps, MambaStepConfig, MambaStepWeights, SsdConfig, SsdInputs};
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::norm::{GatedRmsNorm, RmsNorm};

/// The recurrent state of one Mamba layer for a batch of sequences.
#[derive(Debug, Clone)]
pub struct MambaState<B: Backend> {
    /// `[batch, conv_dim, d_conv - 1]`: the last pre-conv xBC columns, oldest first.
    pub conv_window: Tensor<B, 3>,
    /// `[batch, heads, head_dim, d_state]`, f32.
    pub ssm: Tensor<B, 4>,
}

#[derive(Debug, Clone)]
/// The Mamba2 mixer: in-projection, causal conv, SSD scan (or one recurrent step), gated RMSNorm, out-projection.
pub struct Mamba2Mixer<B: BambaOps> {
    /// `[hidden] → [z | x B C | dt]`.
    pub in_proj: Linear<B>,
    /// `[conv_dim, d_conv]` (the checkpoint's `[conv_dim, 1, d_conv]` without the unit dim).
    pub conv_weight: Tensor<B, 2>,
    /// `[conv_dim]`.
    pub conv_bias: Option<Tensor<B, 1>>,
    /// `[heads]`, f32.
    pub dt_bias: Tensor<B, 1>,
    /// `[heads]`, f32.
    pub a_log: Tensor<B, 1>,
    /// `[heads]`, f32.
    pub d: Tensor<B, 1>,
    /// The RMSNorm gated by `z`.
    pub norm: GatedRmsNorm<B>,
    /// `[d_inner] → [hidden]`.
    pub out_proj: Linear<B>,
    /// `heads · head_dim`.
    pub d_inner: usize,
    /// Channels of the conv: `d_inner + 2 · groups · d_state`.
    pub conv_dim: usize,
    /// SSM heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Groups sharing B and C.
    pub groups: usize,
    /// State size per head channel.
    pub d_state: usize,
    /// Shapes and options of the SSD scan.
    pub scan: SsdConfig,
}

impl<B: BambaOps> Mamba2Mixer<B> {
    /// Reads `{prefix}.{in_proj, conv1d, dt_bias, A_log, D, norm, out_proj}`.
    pub fn load(w: &mut WeightReader<'_, B>, prefix: &str, c: &BambaConfig) -> Result<Self, LoadError> {
        let (h, heads, conv_dim, k) = (c.hidden_size, c.mamba_n_heads, c.conv_dim(), c.mamba_d_conv);
        let conv_weight = w.tensor_reshaped(&format!("{prefix}.conv1d.weight"), &[conv_dim, 1, k], [conv_dim, k])?;
        let conv_bias =
            if c.mamba_conv_bias { Some(w.tensor(&format!("{prefix}.conv1d.bias"), [conv_dim])?) } else { None };
        // Falcon-H1's µP multipliers: the input's on in_proj's weight, each output segment's
        // (z, x, B, C, dt) on its rows, weight and bias.
        let (d_inner, gn, scales) = (c.d_inner(), c.mamba_n_groups * c.mamba_d_state, &c.scales);
        let segments = |input: f64| -> Vec<(usize, f64)> {
            [d_inner, d_inner, gn, gn, heads].into_iter().zip(scales.mamba_segments.map(|s| s * input)).collect()
        };
        let in_name = format!("{prefix}.in_proj");
        let in_proj = Linear {
            weight: w.tensor_row_scaled(
                &format!("{in_name}.weight"),
                [c.in_proj_dim(), h],
                &segments(scales.mamba_in),
            )?,
            bias: match c.mamba_proj_bias {
                true => Some(w.tensor_row_scaled(&format!("{in_name}.bias"), [c.in_proj_dim()], &segments(1.0))?),
                false => None,
            },
        };
        Ok(Mamba2Mixer {
            in_proj,
            conv_weight,
            conv_bias,
            dt_bias: w.tensor_f32(&format!("{prefix}.dt_bias"), [heads])?,
            a_log: w.tensor_f32(&format!("{prefix}.A_log"), [heads])?,
            d: w.tensor_f32(&format!("{prefix}.D"), [heads])?,
            norm: GatedRmsNorm::load(
                w,
                &format!("{prefix}.norm.weight"),
                c.d_inner(),
                c.mamba_n_groups,
                c.mamba_norm_eps,
                c.mamba_gated_norm,
                c.mamba_norm_weight_f32,
            )?,
            // The residual multiplier (Granite) and the output multiplier (Falcon-H1) are folded into
            // the output projection.
            out_proj: Linear::load_scaled(
                w,
                &format!("{prefix}.out_proj"),
                c.d_inner(),
                h,
                c.mamba_out_bias,
                c.residual_multiplier * scales.mamba_out,
            )?,
            d_inner: c.d_inner(),
            conv_dim,
            heads,
            head_dim: c.mamba_d_head,
            groups: c.mamba_n_groups,
            d_state: c.mamba_d_state,
            scan: SsdConfig { chunk_size: c.mamba_chunk_size, dt_limit: c.dt_limit() },
        })
    }

    /// Runs the mixer on `norm(x)` over a chunk of tokens, continuing from `state` (zeros when
    /// `None`), and returns `residual` + the output, and the state after the chunk (the norm is fused
    /// into in_proj and the residual add into out_proj at decode). `residual` is the layer input
    /// itself, or it in f32 where the residual stream is. `token_mask` (left padding) zeroes xBC at
    /// pad positions before and after the conv, so pads leave the window and the state at zero.
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, len, hidden]` (the layer input, before its norm) → `[batch, len, hidden]`
    /// - `token_mask`: `[batch, len, 1]`, 1 at real tokens, 0 at pads
    pub fn forward(
        &self,
        norm: &RmsNorm<B>,
        x: Tensor<B, 3>,
        residual: Tensor<B, 3>,
        state: Option<MambaState<B>>,
        token_mask: Option<&Tensor<B, 3>>,
    ) -> (Tensor<B, 3>, MambaState<B>) {
        let masked = |t: Tensor<B, 3>| match token_mask {
            Some(mask) => t * mask.clone(),
            None => t,
        };
        let [batch, len, _] = x.dims();
        let (gn, d_inner) = (self.groups * self.d_state, self.d_inner);
        let zxbcdt = self.in_proj.forward_normed(norm, x); // [b, l, d_inner + conv_dim + heads]
        let state = match (len, state, token_mask, self.norm.fusable_weight()) {
            (1, Some(state), None, Some(norm_weight)) => {
                return self.decode_step(zxbcdt, state, norm_weight.clone(), residual)
            }
            (_, state, _, _) => state,
        };
        let z = zxbcdt.clone().narrow(2, 0, d_inner);
        let xbc = masked(zxbcdt.clone().narrow(2, d_inner, self.conv_dim));
        let dt = zxbcdt.narrow(2, d_inner + self.conv_dim, self.heads);

        let (window, ssm) = match state {
            Some(s) => (Some(s.conv_window), Some(s.ssm)),
            None => (None, None),
        };
        let conv = B::causal_conv1d_silu(xbc, self.conv_weight.clone(), self.conv_bias.clone(), window);
        let xbc = masked(conv.y);
        let inputs = SsdInputs {
            x: split_rows(xbc.clone(), 0, self.heads, self.head_dim),
            dt,
            a_log: self.a_log.clone(),
            b: split_rows(xbc.clone(), d_inner, self.groups, self.d_state),
            c: split_rows(xbc, d_inner + gn, self.groups, self.d_state),
            d: self.d.clone(),
            dt_bias: self.dt_bias.clone(),
            initial_state: ssm,
        };
        // A single token continuing a state is a decode step: the recurrent form, not the chunked scan.
        let scan = if len == 1 && inputs.initial_state.is_some() {
            B::ssd_decode_step(inputs, self.scan)
        } else {
            B::ssd_chunk_scan(inputs, self.scan)
        };
        let y = self.norm.forward(scan.y.reshape([batch, len, d_inner]), z);
        let out = self.out_proj.forward_residual(y, residual);
        (out, MambaState { conv_window: conv.window, ssm: scan.final_state.cast(DType::F32) })
    }

    /// A decode step without pads: everything between the projections is one
    /// [`BambaOps::mamba_decode_step`], then out_proj with the residual add.
    ///
    /// # Shapes
    /// - `zxbcdt`: `[batch, 1, d_inner + conv_dim + heads]`, `residual`: `[batch, 1, hidden]` → `[batch, 1, hidden]`
    fn decode_step(
        &self,
        zxbcdt: Tensor<B, 3>,
        state: MambaState<B>,
        norm_weight: Tensor<B, 1>,
        residual: Tensor<B, 3>,
    ) -> (Tensor<B, 3>, MambaState<B>) {
        let [batch, _, proj] = zxbcdt.dims();
        let weights = MambaStepWeights {
            conv_weight: self.conv_weight.clone(),
            conv_bias: self.conv_bias.clone(),
            a_log: self.a_log.clone(),
            d: self.d.clone(),
            dt_bias: self.dt_bias.clone(),
            norm_weight,
        };
        let config = MambaStepConfig {
            heads: self.heads,
            head_dim: self.head_dim,
            groups: self.groups,
            d_state: self.d_state,
            norm_eps: self.norm.eps,
            dt_limit: self.scan.dt_limit,
        };
        let step = B::mamba_decode_step(zxbcdt.reshape([batch, proj]), weights, state.conv_window, state.ssm, config);
        let out = self.out_proj.forward_residual(step.y.reshape([batch, 1, self.d_inner]), residual);
        (out, MambaState { conv_window: step.window, ssm: step.state })
    }
}

/// Channels `offset .. offset + count·width` of `t` as `count` rows of `width`: a view when `width`
/// divides the offset and the channel count (then no copy is launched), else a copy.
///
/// # Shapes
/// - `t`: `[batch, len, channels]` → `[batch, len, count, width]`
fn split_rows<B: Backend>(t: Tensor<B, 3>, offset: usize, count: usize, width: usize) -> Tensor<B, 4> {
    let [batch, len, channels] = t.dims();
    if offset.is_multiple_of(width) && channels.is_multiple_of(width) {
        t.reshape([batch, len, channels / width, width]).narrow(2, offset / width, count)
    } else {
        t.narrow(2, offset, count * width).reshape([batch, len, count, width])
    }
}
