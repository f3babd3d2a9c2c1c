//! A Mamba2 mixer's decode step between its projections on the CPU, in one pass over plain f32 slices:
//! the same math as [`crate::reference::mamba_step::mamba_decode_step`] (conv window shift, conv + bias +
//! SiLU, dt processing, SSD state update, `y = S·C + D·x`, gated RMSNorm), without the ~40 small tensor
//! ops (each a new array, strided slices copied element by element) that made most of a CPU decode step.

use rayon::prelude::*;

use super::conv::silu;
use super::scan::discretize;
use crate::reference::mamba_step::MambaStepConfig;

/// One layer's step weights as f32 slices.
pub struct StepWeights<'a> {
    /// `[conv_dim, kernel]`.
    pub conv_weight: &'a [f32],
    /// `[conv_dim]`.
    pub conv_bias: Option<&'a [f32]>,
    /// `[heads]`: A = -exp(a_log).
    pub a_log: &'a [f32],
    /// `[heads]`: the skip connection's weight.
    pub d: &'a [f32],
    /// `[heads]`: added to dt before softplus.
    pub dt_bias: &'a [f32],
    /// `[d_inner]`.
    pub norm_weight: &'a [f32],
}

/// What [`step`] returns: the normed output, the next window and the next state.
pub struct StepOutput {
    /// `[batch, d_inner]`.
    pub y: Vec<f32>,
    /// `[batch, conv_dim, kernel - 1]`.
    pub window: Vec<f32>,
    /// `[batch, heads, head_dim, d_state]`.
    pub state: Vec<f32>,
}

/// # Shapes
/// - `zxbcdt`: `[batch, d_inner + conv_dim + heads]`, `window`: `[batch, conv_dim, kernel - 1]`,
///   `state`: `[batch, heads, head_dim, d_state]` → [`StepOutput`]
pub fn step(
    zxbcdt: &[f32],
    weights: &StepWeights<'_>,
    window: &[f32],
    state: &[f32],
    batch: usize,
    config: &MambaStepConfig,
) -> StepOutput {
    let (heads, head_dim, groups, d_state) = (config.heads, config.head_dim, config.groups, config.d_state);
    let (d_inner, conv_dim) = (config.d_inner(), config.conv_dim());
    let kernel = weights.conv_weight.len() / conv_dim;
    let taps = kernel - 1;
    let row = d_inner + conv_dim + heads;
    let head_state = head_dim * d_state;
    let mut out = StepOutput {
        y: vec![0.0; batch * d_inner],
        window: vec![0.0; batch * conv_dim * taps],
        state: vec![0.0; batch * heads * head_state],
    };
    let mut conv = vec![0f32; conv_dim];
    for b in 0..batch {
        let input = &zxbcdt[b * row..(b + 1) * row];
        let (z, xbc, dt) = (&input[..d_inner], &input[d_inner..d_inner + conv_dim], &input[d_inner + conv_dim..]);
        let old_window = &window[b * conv_dim * taps..(b + 1) * conv_dim * taps];
        let new_window = &mut out.window[b * conv_dim * taps..(b + 1) * conv_dim * taps];
        for c in 0..conv_dim {
            let (past, w) = (&old_window[c * taps..(c + 1) * taps], &weights.conv_weight[c * kernel..(c + 1) * kernel]);
            let mut acc = 0f32;
            for j in 0..taps {
                acc += past[j] * w[j];
            }
            acc += xbc[c] * w[taps];
            if let Some(bias) = weights.conv_bias {
                acc += bias[c];
            }
            conv[c] = silu(acc);
            if taps > 0 {
                let shifted = &mut new_window[c * taps..(c + 1) * taps];
                shifted[..taps - 1].copy_from_slice(&past[1..]);
                shifted[taps - 1] = xbc[c];
            }
        }
        let (x, bc) = conv.split_at(d_inner);
        let (b_all, c_all) = bc.split_at(groups * d_state);
        let y = &mut out.y[b * d_inner..(b + 1) * d_inner];
        let heads_per_group = heads / groups;
        out.state[b * heads * head_state..(b + 1) * heads * head_state]
            .par_chunks_mut(head_state)
            .zip(y.par_chunks_mut(head_dim))
            .enumerate()
            .for_each(|(h, (next, y_h))| {
                let g = h / heads_per_group;
                let (b_g, c_g) = (&b_all[g * d_state..(g + 1) * d_state], &c_all[g * d_state..(g + 1) * d_state]);
                let dt_h = discretize(dt[h], weights.dt_bias[h], config.dt_limit);
                let decay = (dt_h * -weights.a_log[h].exp()).exp();
                let previous = &state[(b * heads + h) * head_state..(b * heads + h + 1) * head_state];
                for p in 0..head_dim {
                    let x_p = x[h * head_dim + p];
                    let (s_old, s_new) =
                        (&previous[p * d_state..(p + 1) * d_state], &mut next[p * d_state..(p + 1) * d_state]);
                    let mut sum = 0f32;
                    for n in 0..d_state {
                        let s = s_old[n] * decay + x_p * b_g[n] * dt_h;
                        s_new[n] = s;
                        sum += s * c_g[n];
                    }
                    y_h[p] = sum + x_p * weights.d[h];
                }
            });
        // Gated RMSNorm over `groups` slices: v = y·silu(z), v / sqrt(mean(v²) + eps) · w.
        let width = d_inner / groups;
        for (g, slice) in y.chunks_mut(width).enumerate() {
            let z_g = &z[g * width..(g + 1) * width];
            let mut squares = 0f32;
            for (v, &z) in slice.iter_mut().zip(z_g) {
                *v *= silu(z);
                squares += *v * *v;
            }
            let scale = 1.0 / (squares / width as f32 + config.norm_eps as f32).sqrt();
            for (v, &w) in slice.iter_mut().zip(&weights.norm_weight[g * width..(g + 1) * width]) {
                *v = *v * scale * w;
            }
        }
    }
    out
}
