//! A Mamba2 mixer's decode step between its two projections in two launches (issue: a decode step is
//! launch-bound; unfused it was nine: the z and xBC slices, conv, window, three copies for x/B/C,
//! the SSD step, the gated norm):
//!
//! 1. `mamba_step_kernel` reads the in_proj output `zxbcdt` of one token per sequence as it is and,
//!    per (sequence, head), applies the causal conv + bias + SiLU to the channels it needs (its x
//!    rows, its group's B and C: the conv is 4 taps, so recomputing B and C in every head's cube is
//!    cheaper than a launch; the cube's units split that work through shared memory), shifts the conv
//!    window (each channel written by exactly one unit), and runs the SSD state update of
//!    [`super::ssd_step`], whose state loads are issued first.
//! 2. The gated RMSNorm kernel, with z read straight out of `zxbcdt` (its first `d_inner` columns).

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::math::discretize_dt;
use super::ssd_step::{
    load_state_rows, rows_are_planes, state_column, state_vector_size, update_state_rows, LANES, ROWS, RPU,
};

/// Conv output of xBC channel `c` of sequence `b` for the new token: `SiLU(bias + Σ w·[window, x])`,
/// in f32 after rounding to `F` (as the conv kernel stores it).
#[cube]
#[allow(clippy::too_many_arguments)]
fn conv_channel<F: Float>(
    zxbcdt: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    window: &Tensor<F>,
    b: usize,
    c: usize,
    d_inner: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    let taps = weight.shape(1);
    let ws = c * weight.stride(0);
    let wb = b * window.stride(0) + c * window.stride(1);
    let mut acc = 0.0f32;
    for j in 0..taps - 1 {
        acc += f32::cast_from(weight[ws + j * weight.stride(1)]) * f32::cast_from(window[wb + j * window.stride(2)]);
    }
    let new = f32::cast_from(zxbcdt[b * zxbcdt.stride(0) + (d_inner + c) * zxbcdt.stride(1)]);
    acc += f32::cast_from(weight[ws + (taps - 1) * weight.stride(1)]) * new;
    if has_bias {
        acc += f32::cast_from(bias[c * bias.stride(0)]);
    }
    f32::cast_from(F::cast_from(acc / (1.0f32 + f32::exp(-acc))))
}

/// Writes channel `c`'s next window: the old one shifted by one, the new pre-conv value last.
#[cube]
fn shift_window<F: Float>(
    zxbcdt: &Tensor<F>,
    window: &Tensor<F>,
    new_window: &mut Tensor<F>,
    b: usize,
    c: usize,
    d_inner: usize,
) {
    let keep = new_window.shape(2);
    let wb = b * window.stride(0) + c * window.stride(1);
    let out = (b * new_window.shape(1) + c) * keep;
    for j in 0..keep - 1 {
        new_window[out + j] = window[wb + (j + 1) * window.stride(2)];
    }
    new_window[out + keep - 1] = zxbcdt[b * zxbcdt.stride(0) + (d_inner + c) * zxbcdt.stride(1)];
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn mamba_step_kernel<F: Float, S: Float, N: Size>(
    zxbcdt: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    window: &Tensor<F>,
    a_log: &Tensor<f32>,
    d: &Tensor<f32>,
    dt_bias: &Tensor<f32>,
    state: &Tensor<Vector<S, N>>,
    new_window: &mut Tensor<F>,
    new_state: &mut Tensor<Vector<S, N>>,
    y: &mut Tensor<f32>,
    lo: f32,
    hi: f32,
    #[comptime] per_lane: usize,
    // d_state rounded up to the columns the lanes cover: B's and C's conv outputs in shared memory.
    #[comptime] state_width: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_limit: bool,
    #[comptime] use_plane: bool,
    #[define(F, S)] _dtypes: [StorageType; 2],
) {
    let heads = state.shape(1);
    let head_dim = state.shape(2);
    let d_state = state.shape(3);
    let d_inner = heads * head_dim;
    let conv_dim = weight.shape(0);
    let groups = (conv_dim - d_inner) / (2 * d_state);
    let heads_per_group = heads / groups;
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let g = h / heads_per_group;
    // xBC channels: x (d_inner), then B and C (groups · d_state each).
    let b_channel = d_inner + g * d_state;
    let c_channel = d_inner + groups * d_state + g * d_state;
    let mut s = Array::<Vector<f32, N>>::new(per_lane * RPU);
    load_state_rows(state, &mut s, bh, head_dim, d_state, per_lane);

    let raw_dt = zxbcdt[b * zxbcdt.stride(0) + (d_inner + conv_dim + h) * zxbcdt.stride(1)];
    let dt_h = discretize_dt(f32::cast_from(raw_dt), dt_bias[h * dt_bias.stride(0)], lo, hi, has_limit);
    // The cube's units share the conv work through shared memory: first the group's B and C
    // (2·d_state channels), then the cube's ROWS·RPU x rows. Each channel's window is shifted by the
    // unit that convolves it, B and C only in the first cube of the group's first head.
    let unit = UNIT_POS_Y as usize * LANES + UNIT_POS_X as usize;
    let shifts_bc = h % heads_per_group == 0 && CUBE_POS_X == 0;
    let mut bc = SharedMemory::<f32>::new(2 * state_width);
    let mut i = unit;
    while i < 2 * d_state {
        let mut c = b_channel + i;
        if i >= d_state {
            c = c_channel + i - d_state;
        }
        bc[i] = conv_channel(zxbcdt, weight, bias, window, b, c, d_inner, has_bias);
        if shifts_bc {
            shift_window(zxbcdt, window, new_window, b, c, d_inner);
        }
        i += LANES * ROWS;
    }
    let mut xs = SharedMemory::<f32>::new(ROWS * RPU);
    if unit < ROWS * RPU {
        let p = CUBE_POS_X as usize * ROWS * RPU + unit;
        xs[unit] = 0.0f32;
        if p < head_dim {
            let c = h * head_dim + p;
            xs[unit] = conv_channel(zxbcdt, weight, bias, window, b, c, d_inner, has_bias);
            shift_window(zxbcdt, window, new_window, b, c, d_inner);
        }
    }
    sync_cube();
    let mut bv = Array::<Vector<f32, N>>::new(per_lane);
    let mut cv = Array::<Vector<f32, N>>::new(per_lane);
    let mut xv = Array::<f32>::new(RPU);
    #[unroll]
    for k in 0..per_lane {
        let mut bk = Vector::<f32, N>::new(0.0f32);
        let mut ck = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for e in 0..N::value() {
            let n = state_column::<N>(k, e);
            if n < d_state {
                bk[e] = bc[n];
                ck[e] = bc[d_state + n];
            }
        }
        bv[k] = bk;
        cv[k] = ck;
    }
    #[unroll]
    for r in 0..RPU {
        xv[r] = xs[UNIT_POS_Y as usize * RPU + r];
    }
    update_state_rows(&s, new_state, y, &bv, &cv, &xv, dt_h, a_log, d, bh, h, head_dim, d_state, per_lane, use_plane);
}

/// The results of [`launch`].
pub struct MambaStep<R: CubeRuntime> {
    /// `[batch, heads · head_dim]`, the SSD output before the gated norm, f32.
    pub y: CubeTensor<R>,
    /// `[batch, conv_dim, kernel - 1]` in `zxbcdt`'s dtype.
    pub window: CubeTensor<R>,
    /// `[batch, heads, head_dim, d_state]` in the input state's dtype.
    pub state: CubeTensor<R>,
}

/// The conv + SSD step of one token per sequence (launch 1 of 2; the caller runs the gated norm).
///
/// # Shapes
/// - `zxbcdt`: `[batch, d_inner + conv_dim + heads]`; `weight`: `[conv_dim, kernel]`; `bias`: `[conv_dim]`
///   (read only when `has_bias`); `window`: `[batch, conv_dim, kernel - 1]`, all one float dtype
/// - `a_log`, `d`, `dt_bias`: `[heads]` f32; `state`: `[batch, heads, head_dim, d_state]` in f32 or a
///   16-bit float dtype (kept in it)
#[allow(clippy::too_many_arguments)]
pub fn launch<R: CubeRuntime>(
    zxbcdt: CubeTensor<R>,
    weight: CubeTensor<R>,
    bias: CubeTensor<R>,
    has_bias: bool,
    window: CubeTensor<R>,
    a_log: CubeTensor<R>,
    d: CubeTensor<R>,
    dt_bias: CubeTensor<R>,
    state: CubeTensor<R>,
    dt_limit: Option<(f32, f32)>,
) -> MambaStep<R> {
    let client = zxbcdt.client.clone();
    let device = zxbcdt.device.clone();
    let state = into_contiguous(state);
    let [batch, heads, head_dim, d_state] = state.meta.shape().dims::<4>();
    let dtype = zxbcdt.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), device.clone(), [batch, heads * head_dim].into(), DType::F32);
    let new_window = empty_device_contiguous_dtype(client.clone(), device.clone(), window.meta.shape().clone(), dtype);
    let new_state = empty_device_contiguous_dtype(client.clone(), device, state.meta.shape().clone(), state.dtype);
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    // 16 state rows per cube (4 rows of lanes, 4 state rows per unit): 4 cubes per Bamba head. Tried
    // on the H200 in session 11 (batch 64 at 8K), one cube per head does the B/C conv once per head:
    // 16 rows of lanes × 4 state rows, or 4 × 16. With an f32 state both made the step slower end to
    // end (19.05 and 21.76 ms per step, against 18.83 ms with this layout and the norm kernel before
    // its speed-up; runs 4, 5 and 2 in benches/results/h200-2026-12-02-s11). With a
    // bf16 state Nsight Compute put this kernel at 212 and 174 µs per layer, 1.2–1.5 TB/s: neither
    // reaches the bandwidth, so the layout stays as it was.
    let count = CubeCount::Static(head_dim.div_ceil(ROWS * RPU) as u32, (batch * heads) as u32, 1);
    let use_plane = rows_are_planes(&client);
    let vector = state_vector_size(&client, state.dtype.size(), d_state);
    let dtypes = [dtype.into(), state.dtype.into()];
    // SAFETY: indices derive from the shapes: p < head_dim and n < d_state are checked before use,
    // channels stay below conv_dim (x rows below d_inner, B/C columns below d_state), and the window
    // and state outputs are contiguous with the inputs' shapes (`vector` divides d_state).
    unsafe {
        mamba_step_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_2d(LANES as u32, ROWS as u32),
            vector,
            zxbcdt.into_tensor_arg(),
            weight.into_tensor_arg(),
            bias.into_tensor_arg(),
            window.into_tensor_arg(),
            a_log.into_tensor_arg(),
            d.into_tensor_arg(),
            dt_bias.into_tensor_arg(),
            state.into_tensor_arg(),
            new_window.clone().into_tensor_arg(),
            new_state.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            lo,
            hi,
            d_state.div_ceil(LANES * vector),
            d_state.next_multiple_of(LANES * vector),
            has_bias,
            dt_limit.is_some(),
            use_plane,
            dtypes,
        );
    }
    MambaStep { y, window: new_window, state: new_state }
}
