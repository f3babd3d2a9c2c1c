//! The Mamba2 SSD (state-space duality) chunked scan in plain tensor ops.
//!
//! Canonical chunked form (`ssd_minimal_discrete` in state-spaces/mamba, transformers' torch path):
//! with `x ← x·dt` and `a = A·dt`, per chunk of `Q` positions: `Acs = cumsum(a)`,
//! `Y_diag = (C·Bᵀ ∘ exp(Acs_i − Acs_j)[i ≥ j])·x`, chunk states `Σ_l B_l·exp(Acs_last − Acs_l)·x_l`,
//! states passed between chunks with decay `exp(Acs_last)`, `Y_off = C·S_prev·exp(Acs)`,
//! `y = Y_diag + Y_off + D·x`. All of it in f32, as the CUDA kernels do.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

/// Inputs of one SSD scan. Any float dtype; the scan casts to f32.
#[derive(Debug, Clone)]
pub struct SsdInputs<B: Backend> {
    /// `[batch, len, heads, head_dim]`, post-conv x (not yet scaled by dt).
    pub x: Tensor<B, 4>,
    /// `[batch, len, heads]`, raw dt from the projection (before dt_bias and softplus).
    pub dt: Tensor<B, 3>,
    /// `[heads]`; `A = -exp(A_log)`.
    pub a_log: Tensor<B, 1>,
    /// `[batch, len, groups, d_state]`; head `h` reads group `h / (heads / groups)`.
    pub b: Tensor<B, 4>,
    /// `[batch, len, groups, d_state]`.
    pub c: Tensor<B, 4>,
    /// `[heads]`, skip connection on the unscaled x.
    pub d: Tensor<B, 1>,
    /// `[heads]`, added to dt before softplus.
    pub dt_bias: Tensor<B, 1>,
    /// `[batch, heads, head_dim, d_state]`, the state to continue from (zeros when `None`).
    pub initial_state: Option<Tensor<B, 4>>,
}

/// Static parameters of the scan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SsdConfig {
    /// Chunk length `Q`; the result does not depend on it beyond rounding.
    pub chunk_size: usize,
    /// `time_step_limit`: dt is clamped to `[min, max]` after softplus, when given.
    pub dt_limit: Option<(f32, f32)>,
}

/// Output of one SSD scan.
#[derive(Debug, Clone)]
pub struct SsdOutput<B: Backend> {
    /// `[batch, len, heads, head_dim]`, including the `D·x` skip term: from the chunk scan in x's dtype
    /// (the f32 result rounded once, as mamba_ssm's chain writes it: half the bytes of f32 for the
    /// gated norm to read), from the recurrence (the decode step's math) in f32.
    pub y: Tensor<B, 4>,
    /// `[batch, heads, head_dim, d_state]`, f32, the state after the last position.
    pub final_state: Tensor<B, 4>,
}

/// `softplus(x) = log(1 + exp(x))` in a form that does not overflow: `relu(x) + log1p(exp(-|x|))`.
/// (torch switches to the identity above 20; the difference there is below 2e-9.)
pub fn softplus<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let tail = x.clone().abs().neg().exp().log1p();
    x.clamp_min(0.0) + tail
}

/// dt after bias, softplus and clamp: `clamp(softplus(dt + dt_bias), limit)`, in f32.
///
/// # Shapes
/// - `dt`: `[batch, len, heads]`, `dt_bias`: `[heads]` → `[batch, len, heads]`
pub fn discretize_dt<B: Backend>(
    dt: Tensor<B, 3>,
    dt_bias: Tensor<B, 1>,
    dt_limit: Option<(f32, f32)>,
) -> Tensor<B, 3> {
    let heads = dt_bias.dims()[0];
    let dt = softplus(dt.cast(DType::F32) + dt_bias.cast(DType::F32).reshape([1, 1, heads]));
    match dt_limit {
        Some((lo, hi)) => dt.clamp(lo, hi),
        None => dt,
    }
}

/// Expands per-group B/C to per-head: head `h` takes group `h / (heads / groups)` (repeat_interleave).
///
/// # Shapes
/// - `t`: `[batch, len, groups, n]` → `[batch, len, heads, n]`
pub fn groups_to_heads<B: Backend>(t: Tensor<B, 4>, heads: usize) -> Tensor<B, 4> {
    let [batch, len, groups, n] = t.dims();
    if groups == heads {
        return t;
    }
    t.unsqueeze_dim::<5>(3).expand([batch, len, groups, heads / groups, n]).reshape([batch, len, heads, n])
}

/// Pads dim 1 with zeros up to `padded_len`.
fn pad_len<B: Backend, const D: usize>(t: Tensor<B, D>, padded_len: usize) -> Tensor<B, D> {
    let mut dims = t.dims();
    let pad = padded_len - dims[1];
    if pad == 0 {
        return t;
    }
    dims[1] = pad;
    let zeros = Tensor::zeros(dims, (&t.device(), t.dtype()));
    Tensor::cat(vec![t, zeros], 1)
}

/// `[batch, len, heads, k]` → `[batch, heads, chunks, Q, k]`.
fn into_chunks<B: Backend>(t: Tensor<B, 4>, chunk: usize) -> Tensor<B, 5> {
    let [batch, len, heads, k] = t.dims();
    t.reshape([batch, len / chunk, chunk, heads, k]).permute([0, 3, 1, 2, 4])
}

/// `S[i, j] = Acs_i − Acs_j = Σ_{j < k ≤ i} a_k` for `i ≥ j`, −∞ above the diagonal: `[b,h,c,Q]` →
/// `[b,h,c,Q,Q]`. Summed segment by segment (a masked cumsum, as transformers' `segment_sum`), not as the
/// difference of two cumulative sums: over a long chunk those grow to hundreds, and their difference
/// loses a short segment's decay to f32 cancellation (11× transformers' own f32 error on a 140-token
/// chunk of a random config, `scripts/sweep_parity.py --backend ndarray --seed 1`).
fn segment_sums<B: Backend>(a: Tensor<B, 4>) -> Tensor<B, 5> {
    let [batch, heads, chunks, q] = a.dims();
    let device = a.device();
    // [.., i, j] = a_i where i > j, else 0; summed over i.
    let at_or_above_diagonal: Tensor<B, 5, Bool> = Tensor::<B, 2, Bool>::tril_mask([q, q], -1, &device).unsqueeze();
    let above_diagonal: Tensor<B, 5, Bool> = Tensor::<B, 2, Bool>::tril_mask([q, q], 0, &device).unsqueeze();
    let terms = a.unsqueeze_dim::<5>(4).expand([batch, heads, chunks, q, q]).mask_fill(at_or_above_diagonal, 0.0);
    terms.cumsum(3).mask_fill(above_diagonal, f32::NEG_INFINITY)
}

/// Reference chunked SSD scan (see the module docs for the math).
pub fn ssd_chunk_scan<B: Backend>(inputs: SsdInputs<B>, config: SsdConfig) -> SsdOutput<B> {
    let SsdInputs { x, dt, a_log, b, c, d, dt_bias, initial_state } = inputs;
    let [batch, len, heads, head_dim] = x.dims();
    let d_state = b.dims()[3];
    let q = config.chunk_size.max(1);
    let device = x.device();
    let f32 = DType::F32;
    let out_dtype = x.dtype();

    let x = x.cast(f32);
    let dt = discretize_dt(dt, dt_bias, config.dt_limit); // [b, l, h]
    let a = a_log.cast(f32).exp().neg(); // [h]
    let b = groups_to_heads(b.cast(f32), heads);
    let c = groups_to_heads(c.cast(f32), heads);
    let d_skip = x.clone() * d.cast(f32).reshape([1, 1, heads, 1]);

    // Padding at the end is harmless: padded positions have dt = 0, i.e. no decay and no input.
    let padded = len.div_ceil(q) * q;
    let chunks = padded / q;
    let x_dt = into_chunks(pad_len(x * dt.clone().unsqueeze_dim::<4>(3), padded), q); // [b,h,c,Q,p]
    let b = into_chunks(pad_len(b, padded), q); // [b,h,c,Q,n]
    let c = into_chunks(pad_len(c, padded), q); // [b,h,c,Q,n]
    let a_dt = pad_len(dt * a.reshape([1, 1, heads]), padded).reshape([batch, chunks, q, heads]).permute([0, 3, 1, 2]); // [b,h,c,Q]
    let a_cumsum = a_dt.clone().cumsum(3); // [b,h,c,Q]

    // 1. Intra-chunk (diagonal blocks): (C·Bᵀ ∘ L)·x with L[i,j] = exp(Acs_i − Acs_j) for i ≥ j.
    let decay_mask = segment_sums(a_dt).exp(); // [b,h,c,Q,Q]
    let scores = c.clone().matmul(b.clone().swap_dims(3, 4)) * decay_mask.clone();
    let y_diag = scores.matmul(x_dt.clone()); // [b,h,c,Q,p]

    // 2. Each chunk's own contribution to the state at its end: Σ_l x_l ⊗ B_l · exp(Acs_last − Acs_l).
    let a_last = a_cumsum.clone().narrow(3, q - 1, 1); // [b,h,c,1]
    let decay_to_end = decay_mask.narrow(3, q - 1, 1).swap_dims(3, 4); // [b,h,c,Q,1], L's last row
    let chunk_states = x_dt.swap_dims(3, 4).matmul(b * decay_to_end); // [b,h,c,p,n]

    // 3. Pass states across chunks, sequentially: S ← S·exp(Acs_last) + chunk_state.
    let chunk_decay = a_last.exp(); // [b,h,c,1]
    let mut state = match initial_state {
        Some(s) => s.cast(f32),
        None => Tensor::zeros([batch, heads, head_dim, d_state], (&device, f32)),
    };
    let mut starts = Vec::with_capacity(chunks);
    for k in 0..chunks {
        starts.push(state.clone());
        let decay = chunk_decay.clone().narrow(2, k, 1).reshape([batch, heads, 1, 1]);
        let own = chunk_states.clone().narrow(2, k, 1).reshape([batch, heads, head_dim, d_state]);
        state = state * decay + own;
    }
    let starts = Tensor::stack::<5>(starts, 2); // [b,h,c,p,n]

    // 4. Inter-chunk output: C·S_start · exp(Acs).
    let y_off = c.matmul(starts.swap_dims(3, 4)) * a_cumsum.exp().unsqueeze_dim::<5>(4);

    let y =
        (y_diag + y_off).permute([0, 2, 3, 1, 4]).reshape([batch, padded, heads, head_dim]).narrow(1, 0, len) + d_skip;
    SsdOutput { y: y.cast(out_dtype), final_state: state }
}

/// The step-by-step recurrence `S_t = exp(dt_t·A)·S_{t-1} + dt_t·x_t⊗B_t`, `y_t = S_t·C_t + D·x_t`.
///
/// Slow (a few ops per position); it exists to test the chunked form and as the decode step's math.
pub fn ssd_recurrent<B: Backend>(inputs: SsdInputs<B>, config: SsdConfig) -> SsdOutput<B> {
    let SsdInputs { x, dt, a_log, b, c, d, dt_bias, initial_state } = inputs;
    let [batch, len, heads, head_dim] = x.dims();
    let d_state = b.dims()[3];
    let device = x.device();
    let f32 = DType::F32;
    let x = x.cast(f32);
    let dt = discretize_dt(dt, dt_bias, config.dt_limit);
    let a = a_log.cast(f32).exp().neg().reshape([1, heads, 1, 1]);
    let d = d.cast(f32).reshape([1, heads, 1]);
    let b = groups_to_heads(b.cast(f32), heads);
    let c = groups_to_heads(c.cast(f32), heads);
    let mut state = match initial_state {
        Some(s) => s.cast(f32),
        None => Tensor::zeros([batch, heads, head_dim, d_state], (&device, f32)),
    };
    let mut ys = Vec::with_capacity(len);
    for t in 0..len {
        let x_t = x.clone().narrow(1, t, 1).reshape([batch, heads, head_dim]);
        let dt_t = dt.clone().narrow(1, t, 1).reshape([batch, heads, 1, 1]);
        let b_t = b.clone().narrow(1, t, 1).reshape([batch, heads, 1, d_state]);
        let c_t = c.clone().narrow(1, t, 1).reshape([batch, heads, d_state, 1]);
        let input = x_t.clone().reshape([batch, heads, head_dim, 1]) * b_t * dt_t.clone();
        state = state * (dt_t * a.clone()).exp() + input;
        let y_t = state.clone().matmul(c_t).reshape([batch, heads, head_dim]) + x_t * d.clone();
        ys.push(y_t);
    }
    let y = Tensor::stack::<4>(ys, 1);
    SsdOutput { y, final_state: state }
}
