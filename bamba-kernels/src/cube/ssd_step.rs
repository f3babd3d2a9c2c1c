//! The SSD decode step as one CubeCL kernel: dt bias + softplus + clamp, `exp(dt·A)` decay, the state
//! update `S ← decay·S + dt·x⊗B`, `y = S·C + D·x`, for every (sequence, head) at once.
//!
//! Decode is bound by moving the state (read + write), so the kernel reads each state element once,
//! coalesced: a cube is `LANES × ROWS` units over `(d_state, head_dim)` of one head, each unit holds
//! `RPU` rows (dt, B and C are loaded once for them) and issues all its loads before computing.
//! State accesses are vectors of up to 16 bytes (4 f32: a warp moves 512 contiguous bytes per
//! access, where scalar accesses moved 128), and the state may be stored in a 16-bit dtype (math in
//! f32, rounded once on the way out: half the bytes, as vLLM keeps Mamba states in the model dtype).

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::math::{discretize_dt, row_sum, vector_sum};

/// Units of a cube along `d_state` (one warp).
pub const LANES: usize = 32;
/// Units of a cube along `head_dim`.
pub const ROWS: usize = 4;
/// State rows (head_dim) each unit of the decode step owns.
pub const RPU: usize = 4;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn step_kernel<F: Float, S: Float, N: Size>(
    x: &Tensor<F>,
    dt: &Tensor<F>,
    a_log: &Tensor<f32>,
    d: &Tensor<f32>,
    dt_bias: &Tensor<f32>,
    bmat: &Tensor<F>,
    cmat: &Tensor<F>,
    state: &Tensor<Vector<S, N>>,
    new_state: &mut Tensor<Vector<S, N>>,
    y: &mut Tensor<f32>,
    lo: f32,
    hi: f32,
    #[comptime] per_lane: usize,
    #[comptime] has_limit: bool,
    #[comptime] use_plane: bool,
    #[define(F, S)] _dtypes: [StorageType; 2],
) {
    let heads = x.shape(2);
    let head_dim = x.shape(3);
    let d_state = bmat.shape(3);
    let heads_per_group = heads / bmat.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let g = h / heads_per_group;
    let p0 = first_row();
    let mut s = Array::<Vector<f32, N>>::new(per_lane * RPU);
    load_state_rows(state, &mut s, bh, head_dim, d_state, per_lane);

    let dt_h = discretize_dt(
        f32::cast_from(dt[b * dt.stride(0) + h * dt.stride(2)]),
        dt_bias[h * dt_bias.stride(0)],
        lo,
        hi,
        has_limit,
    );
    let mut bv = Array::<Vector<f32, N>>::new(per_lane);
    let mut cv = Array::<Vector<f32, N>>::new(per_lane);
    let mut xv = Array::<f32>::new(RPU);
    // strides are loads from a metadata buffer: read each once
    let bs3 = bmat.stride(3);
    let cs3 = cmat.stride(3);
    let xs3 = x.stride(3);
    let bb = b * bmat.stride(0) + g * bmat.stride(2);
    let cb = b * cmat.stride(0) + g * cmat.stride(2);
    let xb = b * x.stride(0) + h * x.stride(2);
    #[unroll]
    for k in 0..per_lane {
        let mut bk = Vector::<f32, N>::new(0.0f32);
        let mut ck = Vector::<f32, N>::new(0.0f32);
        #[unroll]
        for e in 0..N::value() {
            let n = state_column::<N>(k, e);
            if n < d_state {
                bk[e] = f32::cast_from(bmat[bb + n * bs3]);
                ck[e] = f32::cast_from(cmat[cb + n * cs3]);
            }
        }
        bv[k] = bk;
        cv[k] = ck;
    }
    #[unroll]
    for r in 0..RPU {
        let p = p0 + r;
        xv[r] = 0.0f32;
        if p < head_dim {
            xv[r] = f32::cast_from(x[xb + p * xs3]);
        }
    }
    update_state_rows(&s, new_state, y, &bv, &cv, &xv, dt_h, a_log, d, bh, h, head_dim, d_state, per_lane, use_plane);
}

/// The first of the `RPU` state rows (`head_dim` positions) this unit owns.
#[cube]
pub fn first_row() -> usize {
    (CUBE_POS_X as usize * ROWS + UNIT_POS_Y as usize) * RPU
}

/// The state column (`d_state` index) of element `e` of this lane's `k`-th vector: lanes take
/// consecutive vectors, so a warp's access is contiguous.
#[cube]
pub fn state_column<N: Size>(k: usize, e: usize) -> usize {
    (UNIT_POS_X as usize + k * LANES) * N::value() + e
}

/// Loads this unit's `RPU` rows × `per_lane` vectors of the state of (sequence, head) `bh` into `s`
/// in f32 (zeros past `head_dim` / `d_state`). Called before anything else the kernel loads or
/// computes, so that these loads, the bulk of a step's bytes, are in flight while the rest happens.
/// The state is contiguous `[batch, heads, head_dim, d_state]` and the vector size divides `d_state`.
#[cube]
pub fn load_state_rows<S: Float, N: Size>(
    state: &Tensor<Vector<S, N>>,
    s: &mut Array<Vector<f32, N>>,
    bh: usize,
    head_dim: usize,
    d_state: usize,
    #[comptime] per_lane: usize,
) {
    let p0 = first_row();
    let lane = UNIT_POS_X as usize;
    let vectors = d_state / N::value();
    let head_base = bh * head_dim * vectors;
    #[unroll]
    for r in 0..RPU {
        let p = p0 + r;
        #[unroll]
        for k in 0..per_lane {
            let j = lane + k * LANES;
            s[r * per_lane + k] = Vector::new(0.0f32);
            if p < head_dim && j < vectors {
                s[r * per_lane + k] = Vector::<f32, N>::cast_from(state[head_base + p * vectors + j]);
            }
        }
    }
}

/// The update of this unit's rows of the state `s` of (sequence, head) `bh` (head `h`), given its x
/// values `xv`, the group's B and C values `bv`, `cv` (columns [`state_column`]) and the discretized
/// `dt_h`: `S ← exp(dt·A)·S + dt·x⊗B` into `new_state` (rounded to its dtype), `y = S·C + D·x`
/// (from the f32 state) into `y`. Every unit of the cube must call it (a row sum).
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn update_state_rows<S: Float, N: Size>(
    s: &Array<Vector<f32, N>>,
    new_state: &mut Tensor<Vector<S, N>>,
    y: &mut Tensor<f32>,
    bv: &Array<Vector<f32, N>>,
    cv: &Array<Vector<f32, N>>,
    xv: &Array<f32>,
    dt_h: f32,
    a_log: &Tensor<f32>,
    d: &Tensor<f32>,
    bh: usize,
    h: usize,
    head_dim: usize,
    d_state: usize,
    #[comptime] per_lane: usize,
    #[comptime] use_plane: bool,
) {
    let p0 = first_row();
    let lane = UNIT_POS_X as usize;
    let vectors = d_state / N::value();
    let decay = Vector::<f32, N>::new(f32::exp(-f32::exp(a_log[h * a_log.stride(0)]) * dt_h));
    let d_h = d[h * d.stride(0)];
    let mut smem = SharedMemory::<f32>::new(LANES * ROWS);
    #[unroll]
    for r in 0..RPU {
        let p = p0 + r;
        let dtx = Vector::<f32, N>::new(dt_h * xv[r]);
        let out_row = (bh * head_dim + p) * vectors;
        let mut part = 0.0f32;
        #[unroll]
        for k in 0..per_lane {
            let j = lane + k * LANES;
            let v = decay * s[r * per_lane + k] + dtx * bv[k];
            if p < head_dim && j < vectors {
                new_state[out_row + j] = Vector::cast_from(v);
            }
            part += vector_sum(v * cv[k]);
        }
        let total = row_sum(part, &mut smem, LANES, use_plane);
        if p < head_dim && lane == 0 {
            y[bh * head_dim + p] = total + d_h * xv[r];
        }
    }
}

/// The state's vector size: the widest the device loads for its dtype, at most 16 bytes, that
/// divides `d_state` and still gives every lane of a row a vector (`LANES · size ≤ d_state`).
pub fn state_vector_size<R: CubeRuntime>(client: &ComputeClient<R>, elem_bytes: usize, d_state: usize) -> usize {
    client
        .io_optimized_vector_sizes(elem_bytes)
        .filter(|&v| v * elem_bytes <= 16 && d_state.is_multiple_of(v) && v * LANES <= d_state)
        .max()
        .unwrap_or(1)
}

/// Whether a row of `LANES` units is exactly one plane on this device (then plane sums are used).
pub fn rows_are_planes<R: CubeRuntime>(client: &ComputeClient<R>) -> bool {
    plane_size_is(client, LANES) && client.features().plane.contains(cubecl::features::Plane::Ops)
}

/// Whether every plane on this device has exactly `size` units.
pub fn plane_size_is<R: CubeRuntime>(client: &ComputeClient<R>, size: usize) -> bool {
    let hw = &client.properties().hardware;
    hw.plane_size_min as usize == size && hw.plane_size_max as usize == size
}

/// # Shapes
/// - `x`: `[batch, 1, heads, head_dim]`, `dt`: `[batch, 1, heads]`, `b`, `c`: `[batch, 1, groups, d_state]`
///   (one float dtype); `a_log`, `d`, `dt_bias`: `[heads]` f32; `state`: `[batch, heads, head_dim, d_state]`
///   in any float dtype
/// - returns `y` `[batch, 1, heads, head_dim]` f32 and the new state in the state's dtype, contiguous
#[allow(clippy::too_many_arguments)]
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    dt: CubeTensor<R>,
    a_log: CubeTensor<R>,
    b: CubeTensor<R>,
    c: CubeTensor<R>,
    d: CubeTensor<R>,
    dt_bias: CubeTensor<R>,
    state: CubeTensor<R>,
    dt_limit: Option<(f32, f32)>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let client = x.client.clone();
    let state = into_contiguous(state);
    let [batch, _, heads, head_dim] = x.meta.shape().dims::<4>();
    let d_state = b.meta.shape().dims::<4>()[3];
    let state_dtype = state.dtype;
    let y = empty_device_contiguous_dtype(client.clone(), x.device.clone(), x.meta.shape().clone(), DType::F32);
    let new_state =
        empty_device_contiguous_dtype(client.clone(), x.device.clone(), state.meta.shape().clone(), state_dtype);
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    let count = CubeCount::Static(head_dim.div_ceil(ROWS * RPU) as u32, (batch * heads) as u32, 1);
    let use_plane = rows_are_planes(&client);
    let vector = state_vector_size(&client, state_dtype.size(), d_state);
    let dtypes = [x.dtype.into(), state_dtype.into()];
    // SAFETY: indices derive from the shapes; p and the state columns are guarded against head_dim
    // and d_state; the state tensors are contiguous with `vector` dividing d_state.
    unsafe {
        step_kernel::launch_unchecked::<R>(
            &client,
            count,
            CubeDim::new_2d(LANES as u32, ROWS as u32),
            vector,
            x.into_tensor_arg(),
            dt.into_tensor_arg(),
            a_log.into_tensor_arg(),
            d.into_tensor_arg(),
            dt_bias.into_tensor_arg(),
            b.into_tensor_arg(),
            c.into_tensor_arg(),
            state.into_tensor_arg(),
            new_state.clone().into_tensor_arg(),
            y.clone().into_tensor_arg(),
            lo,
            hi,
            d_state.div_ceil(LANES * vector),
            dt_limit.is_some(),
            use_plane,
            dtypes,
        );
    }
    (y, new_state)
}
