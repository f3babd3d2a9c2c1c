//! A Mamba2 mixer's decode step between its two projections in two launches (issue: a decode step is
//! launch-bound; unfused it was nine: the z and xBC slices, conv, window, three copies for x/B/C,
//! the SSD step, the gated norm):
//!
//! 1. `mamba_step_kernel` reads the in_proj output `zxbcdt` of one token per sequence as it is and,
//!    per (sequence, block of up to `MAX_HEADS_PER_CUBE` heads of one group), applies the causal conv + bias +
//!    SiLU to the channels it needs (its x rows, the group's B and C: the conv is 4 taps, so
//!    recomputing B and C in every cube is cheaper than a launch, and a cube's heads share them;
//!    the cube's units split that work through shared memory), shifts the conv window (each
//!    channel written by exactly one unit), and runs the SSD state update of [`super::ssd_step`]
//!    for each of its heads in turn, whose state loads are issued first.
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

/// Conv output of xBC channel `c` of the sequence whose `zxbcdt` row starts at `zx_row` and whose
/// window of channel `c` starts at `win`: `SiLU(bias + Σ w·[window, x])`, in f32 after rounding to
/// `F` (as the conv kernel stores it). Every operand but the weight is contiguous (indices computed
/// here, not read from the tensors' metadata, which costs a load per stride); the weight's rows may
/// be pitched (one stride load).
#[cube]
#[allow(clippy::too_many_arguments)]
fn conv_channel<F: Float>(
    zxbcdt: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    window: &Tensor<F>,
    zx_row: usize,
    win: usize,
    c: usize,
    d_inner: usize,
    #[comptime] taps: usize,
    #[comptime] has_bias: bool,
) -> f32 {
    let mut acc = 0.0f32;
    let row = c * weight.stride(0);
    #[unroll]
    for j in 0..taps - 1 {
        acc += f32::cast_from(weight[row + j]) * f32::cast_from(window[win + j]);
    }
    let new = f32::cast_from(zxbcdt[zx_row + d_inner + c]);
    acc += f32::cast_from(weight[row + taps - 1]) * new;
    if has_bias {
        acc += f32::cast_from(bias[c]);
    }
    f32::cast_from(F::cast_from(acc / (1.0f32 + f32::exp(-acc))))
}

/// Writes channel `c`'s next window (at `win`, as in the old one): the old one shifted by one,
/// the new pre-conv value last.
#[cube]
#[allow(clippy::too_many_arguments)]
fn shift_window<F: Float>(
    zxbcdt: &Tensor<F>,
    window: &Tensor<F>,
    new_window: &mut Tensor<F>,
    zx_row: usize,
    win: usize,
    c: usize,
    d_inner: usize,
    #[comptime] taps: usize,
) {
    #[unroll]
    for j in 0..taps - 2 {
        new_window[win + j] = window[win + j + 1];
    }
    new_window[win + taps - 2] = zxbcdt[zx_row + d_inner + c];
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
    groups: usize,
    #[comptime] heads_per_cube: usize,
    #[comptime] taps: usize,
    #[comptime] per_lane: usize,
    // B's (then C's) conv outputs in shared memory: `N` rows of `bc_side / N` columns, see below.
    #[comptime] bc_side: usize,
    #[comptime] has_bias: bool,
    #[comptime] has_limit: bool,
    #[comptime] use_plane: bool,
    // the state is read from `new_state` (the same buffer updated in place; `state` is not read)
    #[comptime] in_place: bool,
    #[define(F, S)] _dtypes: [StorageType; 2],
) {
    let heads = new_state.shape(1);
    let head_dim = new_state.shape(2);
    let d_state = new_state.shape(3);
    let d_inner = heads * head_dim;
    let conv_dim = d_inner + 2 * groups * d_state;
    let proj = d_inner + conv_dim + heads;
    let heads_per_group = heads / groups;
    let blocks = heads / heads_per_cube;
    let b = CUBE_POS_Y as usize / blocks;
    let h0 = (CUBE_POS_Y as usize % blocks) * heads_per_cube;
    let g = h0 / heads_per_group;
    let zx_row = b * proj;
    // Channel c's window starts at win_row + c·(taps - 1) (contiguous [batch, conv_dim, taps - 1]).
    let win_row = b * conv_dim * (taps - 1);
    // xBC channels: x (d_inner), then B and C (groups · d_state each).
    let b_channel = d_inner + g * d_state;
    let c_channel = d_inner + groups * d_state + g * d_state;
    let mut s = Array::<Vector<f32, N>>::new(per_lane * RPU);
    load_head_state(state, new_state, &mut s, b * heads + h0, head_dim, d_state, per_lane, in_place);

    // The cube's units share the conv work through shared memory: first the group's B and C
    // (2·d_state channels), then the ROWS·RPU x rows of each of its heads. Each channel's window
    // is shifted by the unit that convolves it, B and C only in the first cube of the group's
    // first head block.
    let unit = UNIT_POS_Y as usize * LANES + UNIT_POS_X as usize;
    let shifts_bc = h0 % heads_per_group == 0 && CUBE_POS_X == 0;
    // Column n of B sits at bc[(n % N)·cols + n / N] (C's a side further): a lane reads element e of
    // its vectors from row e, consecutive lanes on consecutive words. Stored plainly (n at n), those
    // reads were N-way bank conflicts, 56% of the step's shared wavefronts (Nsight Compute); `cols` is padded by 8 so that the writes of consecutive columns spread over the banks too.
    let cols = bc_side / N::value();
    let mut bc = SharedMemory::<f32>::new(2 * bc_side);
    let mut i = unit;
    while i < 2 * d_state {
        let mut c = b_channel + i;
        let mut n = i;
        let mut side = 0usize;
        if i >= d_state {
            c = c_channel + i - d_state;
            n = i - d_state;
            side = bc_side;
        }
        let win = win_row + c * (taps - 1);
        let slot = side + (n % N::value()) * cols + n / N::value();
        bc[slot] = conv_channel(zxbcdt, weight, bias, window, zx_row, win, c, d_inner, taps, has_bias);
        if shifts_bc {
            shift_window(zxbcdt, window, new_window, zx_row, win, c, d_inner, taps);
        }
        i += LANES * ROWS;
    }
    let mut xs = SharedMemory::<f32>::new(heads_per_cube * ROWS * RPU);
    let mut i = unit;
    while i < heads_per_cube * ROWS * RPU {
        let hh = i / (ROWS * RPU);
        let p = CUBE_POS_X as usize * ROWS * RPU + i % (ROWS * RPU);
        xs[i] = 0.0f32;
        if p < head_dim {
            let c = (h0 + hh) * head_dim + p;
            let win = win_row + c * (taps - 1);
            xs[i] = conv_channel(zxbcdt, weight, bias, window, zx_row, win, c, d_inner, taps, has_bias);
            shift_window(zxbcdt, window, new_window, zx_row, win, c, d_inner, taps);
        }
        i += LANES * ROWS;
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
                let slot = e * cols + UNIT_POS_X as usize + k * LANES;
                bk[e] = bc[slot];
                ck[e] = bc[bc_side + slot];
            }
        }
        bv[k] = bk;
        cv[k] = ck;
    }
    for hh in 0..heads_per_cube {
        let h = h0 + hh;
        let bh = b * heads + h;
        if hh > 0 {
            load_head_state(state, new_state, &mut s, bh, head_dim, d_state, per_lane, in_place);
        }
        let raw_dt = zxbcdt[zx_row + d_inner + conv_dim + h];
        let dt_h = discretize_dt(f32::cast_from(raw_dt), dt_bias[h], lo, hi, has_limit);
        #[unroll]
        for r in 0..RPU {
            xv[r] = xs[(hh * ROWS + UNIT_POS_Y as usize) * RPU + r];
        }
        update_state_rows(
            &s, new_state, y, &bv, &cv, &xv, dt_h, a_log, d, bh, h, head_dim, d_state, per_lane, use_plane,
        );
    }
}

/// Loads head row `bh`'s state: from `new_state` when the step updates it in place (`state` is then
/// a stand-in), else from `state`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn load_head_state<S: Float, N: Size>(
    state: &Tensor<Vector<S, N>>,
    new_state: &Tensor<Vector<S, N>>,
    s: &mut Array<Vector<f32, N>>,
    bh: usize,
    head_dim: usize,
    d_state: usize,
    #[comptime] per_lane: usize,
    #[comptime] in_place: bool,
) {
    if in_place {
        load_state_rows(new_state, s, bh, head_dim, d_state, per_lane);
    } else {
        load_state_rows(state, s, bh, head_dim, d_state, per_lane);
    }
}

/// Most heads one cube of the step takes: the B/C conv, the same for every head of a group, is done
/// once for them all.
const MAX_HEADS_PER_CUBE: usize = 4;
/// Cubes per SM the step's grid keeps, where the batch allows, before cubes take several heads.
const STEP_CUBES_PER_SM: usize = 4;

/// Heads per cube: up to [`MAX_HEADS_PER_CUBE`] (dividing a group's heads) while the grid still has
/// [`STEP_CUBES_PER_SM`] cubes per SM. At batch 1 of Bamba-9B, 4 heads per cube left 128 cubes of 128
/// units for 132 SMs, each cube streaming its heads' states one after another (10.2 µs per layer for
/// 8 MB on the H200, against 7.3 µs with one head per cube).
fn heads_per_cube<R: CubeRuntime>(
    client: &ComputeClient<R>,
    batch: usize,
    heads: usize,
    groups: usize,
    head_dim: usize,
) -> usize {
    let sms = client.properties().hardware.num_streaming_multiprocessors.unwrap_or(1) as usize;
    let cubes_of = |n: usize| head_dim.div_ceil(ROWS * RPU) * batch * heads / n;
    (1..=MAX_HEADS_PER_CUBE)
        .rev()
        .filter(|&n| (heads / groups).is_multiple_of(n))
        .find(|&n| cubes_of(n) >= STEP_CUBES_PER_SM * sms)
        .unwrap_or(1)
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
    // Contiguous operands: the kernel computes their indices instead of loading strides. The conv
    // weight only needs unit column strides: CUDA pitches rows narrower than 16 bytes (4 bf16 taps),
    // and copying it to contiguous would be a launch per layer and step.
    let weight = if weight.meta.strides()[1] == 1 { weight } else { into_contiguous(weight) };
    let [zxbcdt, bias, window, a_log, d, dt_bias, state] =
        [zxbcdt, bias, window, a_log, d, dt_bias, state].map(into_contiguous);
    let [batch, heads, head_dim, d_state] = state.meta.shape().dims::<4>();
    let [conv_dim, taps] = weight.meta.shape().dims::<2>();
    let groups = (conv_dim - heads * head_dim) / (2 * d_state);
    let dtype = zxbcdt.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), device.clone(), [batch, heads * head_dim].into(), DType::F32);
    let new_window = empty_device_contiguous_dtype(client.clone(), device.clone(), window.meta.shape().clone(), dtype);
    // A state no one else holds (the cache hands it over each step) is updated in place: a decode
    // step then allocates no batch-sized state per layer, which under serving (batch sizes
    // changing as requests come and go) left a dead buffer of every size in the exact-size pool of
    // decode steps. Each unit reads its own state elements before it writes them, so in place is safe.
    // The kernel then does not read `state`: a one-vector stand-in takes its binding, as a buffer
    // bound both read-only and writable is an aliasing error (wgpu) or undefined (CUDA's restrict).
    let in_place = state.can_mut();
    let vector = state_vector_size(&client, state.dtype.size(), d_state);
    let (state, new_state) = if in_place {
        let stand_in = empty_device_contiguous_dtype(client.clone(), device, [vector].into(), state.dtype);
        (stand_in, state)
    } else {
        let new_state = empty_device_contiguous_dtype(client.clone(), device, state.meta.shape().clone(), state.dtype);
        (state, new_state)
    };
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    // 16 state rows per cube (4 rows of lanes, 4 state rows per unit) and up to 4 heads of one group
    // per cube ([`heads_per_cube`]), one after the other. One cube per head with all 64 state rows at
    // once (16 rows of lanes × 4 state rows, or 4 × 16) is slower end to end with an f32 state.
    let heads_per_cube = heads_per_cube(&client, batch, heads, groups, head_dim);
    let count = CubeCount::Static(head_dim.div_ceil(ROWS * RPU) as u32, (batch * heads / heads_per_cube) as u32, 1);
    let use_plane = rows_are_planes(&client);
    let dtypes = [dtype.into(), state.dtype.into()];
    // SAFETY: every operand is contiguous (the weight's rows at its row stride, columns unit-strided)
    // and indices derive from the shapes: p < head_dim and
    // n < d_state are checked before use, channels stay below conv_dim (x rows below d_inner, B/C
    // columns below d_state), heads_per_cube divides the heads of a group, and the window and state
    // outputs are contiguous with the inputs' shapes (`vector` divides d_state).
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
            groups,
            heads_per_cube,
            taps,
            d_state.div_ceil(LANES * vector),
            vector * (d_state.div_ceil(LANES * vector) * LANES + 8),
            has_bias,
            dt_limit.is_some(),
            use_plane,
            in_place,
            dtypes,
        );
    }
    MambaStep { y, window: new_window, state: new_state }
}
