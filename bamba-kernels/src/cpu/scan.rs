//! The Mamba2 SSD scan on the CPU as the plain recurrence, one rayon task per (sequence, head):
//! `S_t = exp(dt_t·A)·S_{t-1} + x_t ⊗ B_t · dt_t`, `y_t = S_t·C_t + D·x_t`, the state (`head_dim ×
//! d_state` f32) kept in L1 for the whole sequence. It is the math of
//! [`crate::reference::ssd::ssd_recurrent`] (which the chunked form equals up to rounding), in
//! `L·head_dim·d_state` multiply-adds per head and no intermediate arrays, where the tensor-op chunked
//! scan builds `[chunk, chunk]` decay and score matrices per head.

use rayon::prelude::*;

/// The sizes of one scan.
#[derive(Debug, Clone, Copy)]
pub struct ScanShape {
    /// Sequences.
    pub batch: usize,
    /// Positions per sequence.
    pub len: usize,
    /// SSM heads.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Groups sharing B and C.
    pub groups: usize,
    /// State size per head channel.
    pub d_state: usize,
}

/// The scan's f32 operands, row-major.
pub struct ScanInputs<'a> {
    /// `[batch, len, heads, head_dim]`.
    pub x: &'a [f32],
    /// `[batch, len, heads]`, before bias and softplus.
    pub dt: &'a [f32],
    /// `[heads]`: A = -exp(a_log).
    pub a_log: &'a [f32],
    /// `[heads]`: the skip connection's weight.
    pub d: &'a [f32],
    /// `[heads]`: added to dt before softplus.
    pub dt_bias: &'a [f32],
    /// `[batch, len, groups, d_state]`: the input projection of the state.
    pub b: &'a [f32],
    /// `[batch, len, groups, d_state]`: the output projection of the state.
    pub c: &'a [f32],
    /// `[batch, heads, head_dim, d_state]`, zeros when `None`.
    pub initial_state: Option<&'a [f32]>,
}

/// `dt` after bias, softplus (`relu(x) + log1p(exp(-|x|))`, as the reference) and the clamp.
pub fn discretize(dt: f32, bias: f32, limit: Option<(f32, f32)>) -> f32 {
    let v = dt + bias;
    let soft = v.max(0.0) + (-v.abs()).exp().ln_1p();
    match limit {
        Some((lo, hi)) => soft.clamp(lo, hi),
        None => soft,
    }
}

/// # Shapes
/// - see [`ScanInputs`] → `y` `[batch, len, heads, head_dim]`, final state `[batch, heads, head_dim, d_state]`
pub fn scan(inputs: &ScanInputs<'_>, shape: ScanShape, dt_limit: Option<(f32, f32)>) -> (Vec<f32>, Vec<f32>) {
    let ScanShape { batch, len, heads, head_dim, groups, d_state } = shape;
    let head_state = head_dim * d_state;
    let heads_per_group = heads / groups;
    let mut y = vec![0f32; batch * len * heads * head_dim];
    let mut states = vec![0f32; batch * heads * head_state];
    let per_head: Vec<Vec<f32>> = states
        .par_chunks_mut(head_state)
        .enumerate()
        .map(|(bh, state)| {
            let (b, h) = (bh / heads, bh % heads);
            let g = h / heads_per_group;
            if let Some(initial) = inputs.initial_state {
                state.copy_from_slice(&initial[bh * head_state..(bh + 1) * head_state]);
            }
            let a = -inputs.a_log[h].exp();
            let mut ys = vec![0f32; len * head_dim];
            for t in 0..len {
                let row = b * len + t;
                let dt = discretize(inputs.dt[row * heads + h], inputs.dt_bias[h], dt_limit);
                let decay = (dt * a).exp();
                let x = &inputs.x[(row * heads + h) * head_dim..(row * heads + h + 1) * head_dim];
                let b_t = &inputs.b[(row * groups + g) * d_state..(row * groups + g + 1) * d_state];
                let c_t = &inputs.c[(row * groups + g) * d_state..(row * groups + g + 1) * d_state];
                for (p, (&x_p, s)) in x.iter().zip(state.chunks_exact_mut(d_state)).enumerate() {
                    let mut sum = 0f32;
                    for ((s, &b_n), &c_n) in s.iter_mut().zip(b_t).zip(c_t) {
                        *s = *s * decay + x_p * b_n * dt;
                        sum += *s * c_n;
                    }
                    ys[t * head_dim + p] = sum + x_p * inputs.d[h];
                }
            }
            ys
        })
        .collect();
    for (bh, ys) in per_head.iter().enumerate() {
        let (b, h) = (bh / heads, bh % heads);
        for t in 0..len {
            let at = ((b * len + t) * heads + h) * head_dim;
            y[at..at + head_dim].copy_from_slice(&ys[t * head_dim..(t + 1) * head_dim]);
        }
    }
    (y, states)
}
