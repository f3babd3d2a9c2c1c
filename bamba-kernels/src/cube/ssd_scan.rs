//! The SSD chunked scan as three CubeCL kernels, the same chunked algorithm as the reference in
//! state-passing form:
//!
//! 1. `local`: for every (sequence, head, chunk) in parallel, run the recurrence inside the chunk from
//!    a zero state, keeping the state in registers (a cube is `LANES × ROWS` units over
//!    `(d_state, head_dim)`, each unit holding `RPU` rows): the within-chunk output plus `D·x`, the cumulative decay `Σ dt·A` of each
//!    position since the chunk start, and the chunk's own final state.
//! 2. `pass` (shared with the tensor-core scan, `ssd_chunked::pass`): for every state element, walk the
//!    chunks in order: `S ← exp(Σ_chunk dt·A)·S + S_chunk`, writing the state entering each chunk; the
//!    last `S` is the final state.
//! 3. `output`: add what the entering state contributes, `exp(cum_t)·C_t·S_in`, to every position,
//!    writing y in the input dtype (1 writes it in f32).
//!
//! softplus, dt_bias, the clamp and the cumulative sum are fused into 1; all math is f32. The work
//! is `O(len · head_dim · d_state)` with a sequential depth of one chunk plus the number of chunks.

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::math::{discretize_dt, row_sum};
use super::ssd_step::{rows_are_planes, LANES, ROWS};

/// Most d_state this kernel holds in registers per unit (`MAX_STATE_PER_LANE · LANES`).
pub const MAX_STATE_PER_LANE: usize = 8;

/// Rows of the state (head_dim) each unit owns in the scan kernels.
const RPU: usize = 4;

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn local_kernel<F: Float>(
    x: &Tensor<F>,
    dt: &Tensor<F>,
    a_log: &Tensor<f32>,
    d: &Tensor<f32>,
    dt_bias: &Tensor<f32>,
    bmat: &Tensor<F>,
    cmat: &Tensor<F>,
    y: &mut Tensor<f32>,
    cum: &mut Tensor<f32>,
    chunk_states: &mut Tensor<f32>,
    chunk: usize,
    lo: f32,
    hi: f32,
    #[comptime] per_lane: usize,
    #[comptime] has_limit: bool,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let len = x.shape(1);
    let heads = x.shape(2);
    let head_dim = x.shape(3);
    let d_state = bmat.shape(3);
    let chunks = chunk_states.shape(2);
    let g = (CUBE_POS_Y as usize % heads) / (heads / bmat.shape(2));
    let b = CUBE_POS_Y as usize / heads;
    let h = CUBE_POS_Y as usize % heads;
    let ci = CUBE_POS_Z as usize;
    // each unit owns RPU rows (p0 .. p0 + RPU) × per_lane state columns: dt, B and C are loaded
    // and processed once for RPU rows
    let p0 = (CUBE_POS_X as usize * ROWS + UNIT_POS_Y as usize) * RPU;
    let lane = UNIT_POS_X as usize;
    let mut smem = SharedMemory::<f32>::new(LANES * ROWS);
    let mut s = Array::<f32>::new(per_lane * RPU);
    #[unroll]
    for k in 0..per_lane * RPU {
        s[k] = 0.0f32;
    }
    let a = -f32::exp(a_log[h * a_log.stride(0)]);
    let bias = dt_bias[h * dt_bias.stride(0)];
    let d_h = d[h * d.stride(0)];
    // Strides live in a metadata buffer in global memory: read them once, outside the time loop.
    let dts0 = dt.stride(0);
    let dts1 = dt.stride(1);
    let dts2 = dt.stride(2);
    let xs0 = x.stride(0);
    let xs1 = x.stride(1);
    let xs2 = x.stride(2);
    let xs3 = x.stride(3);
    let bs0 = bmat.stride(0);
    let bs1 = bmat.stride(1);
    let bs2 = bmat.stride(2);
    let bs3 = bmat.stride(3);
    let cs0 = cmat.stride(0);
    let cs1 = cmat.stride(1);
    let cs2 = cmat.stride(2);
    let cs3 = cmat.stride(3);
    let start = ci * chunk;
    let end = usize::min(start + chunk, len);
    let mut bv = Array::<f32>::new(per_lane);
    let mut cv = Array::<f32>::new(per_lane);
    let mut xv = Array::<f32>::new(RPU);
    let mut acc = 0.0f32;
    for t in start..end {
        let dt_raw = f32::cast_from(dt[b * dts0 + t * dts1 + h * dts2]);
        let bc = b * bs0 + t * bs1 + g * bs2;
        let cc = b * cs0 + t * cs1 + g * cs2;
        #[unroll]
        for k in 0..per_lane {
            let n = lane + k * LANES;
            bv[k] = 0.0f32;
            cv[k] = 0.0f32;
            if n < d_state {
                bv[k] = f32::cast_from(bmat[bc + n * bs3]);
                cv[k] = f32::cast_from(cmat[cc + n * cs3]);
            }
        }
        let xrow = b * xs0 + t * xs1 + h * xs2;
        #[unroll]
        for r in 0..RPU {
            xv[r] = 0.0f32;
            if p0 + r < head_dim {
                xv[r] = f32::cast_from(x[xrow + (p0 + r) * xs3]);
            }
        }
        let dt_t = discretize_dt(dt_raw, bias, lo, hi, has_limit);
        let a_t = a * dt_t;
        acc += a_t;
        let decay = f32::exp(a_t);
        #[unroll]
        for r in 0..RPU {
            let dtx = dt_t * xv[r];
            let mut part = 0.0f32;
            #[unroll]
            for k in 0..per_lane {
                let v = decay * s[r * per_lane + k] + dtx * bv[k];
                s[r * per_lane + k] = v;
                part += v * cv[k];
            }
            let total = row_sum(part, &mut smem, LANES, use_plane);
            if p0 + r < head_dim && lane == 0 {
                y[((b * len + t) * heads + h) * head_dim + p0 + r] = total + d_h * xv[r];
            }
        }
        if CUBE_POS_X == 0 && UNIT_POS == 0 {
            cum[(b * heads + h) * len + t] = acc;
        }
    }
    #[unroll]
    for r in 0..RPU {
        let p = p0 + r;
        if p < head_dim {
            let base = (((b * heads + h) * chunks + ci) * head_dim + p) * d_state;
            #[unroll]
            for k in 0..per_lane {
                let n = lane + k * LANES;
                if n < d_state {
                    chunk_states[base + n] = s[r * per_lane + k];
                }
            }
        }
    }
}

#[cube(launch_unchecked)]
fn output_kernel<F: Float>(
    cmat: &Tensor<F>,
    cum: &Tensor<f32>,
    entering: &Tensor<f32>,
    y_local: &Tensor<f32>,
    y: &mut Tensor<F>,
    chunk: usize,
    #[comptime] per_lane: usize,
    #[comptime] use_plane: bool,
    #[define(F)] _dtype: StorageType,
) {
    let len = y.shape(1);
    let heads = y.shape(2);
    let head_dim = y.shape(3);
    let d_state = cmat.shape(3);
    let chunks = entering.shape(2);
    let b = CUBE_POS_Y as usize / heads;
    let h = CUBE_POS_Y as usize % heads;
    let g = h / (heads / cmat.shape(2));
    let ci = CUBE_POS_Z as usize;
    let p0 = (CUBE_POS_X as usize * ROWS + UNIT_POS_Y as usize) * RPU;
    let lane = UNIT_POS_X as usize;
    let mut smem = SharedMemory::<f32>::new(LANES * ROWS);
    let mut s = Array::<f32>::new(per_lane * RPU);
    #[unroll]
    for r in 0..RPU {
        let base = (((b * heads + h) * chunks + ci) * head_dim + p0 + r) * d_state;
        #[unroll]
        for k in 0..per_lane {
            let n = lane + k * LANES;
            s[r * per_lane + k] = 0.0f32;
            if p0 + r < head_dim && n < d_state {
                s[r * per_lane + k] = entering[base + n];
            }
        }
    }
    let cs0 = cmat.stride(0);
    let cs1 = cmat.stride(1);
    let cs2 = cmat.stride(2);
    let cs3 = cmat.stride(3);
    let mut cv = Array::<f32>::new(per_lane);
    let start = ci * chunk;
    let end = usize::min(start + chunk, len);
    for t in start..end {
        let cc = b * cs0 + t * cs1 + g * cs2;
        #[unroll]
        for k in 0..per_lane {
            let n = lane + k * LANES;
            cv[k] = 0.0f32;
            if n < d_state {
                cv[k] = f32::cast_from(cmat[cc + n * cs3]);
            }
        }
        let decay = f32::exp(cum[(b * heads + h) * len + t]);
        #[unroll]
        for r in 0..RPU {
            let mut part = 0.0f32;
            #[unroll]
            for k in 0..per_lane {
                part += s[r * per_lane + k] * cv[k];
            }
            let total = row_sum(part, &mut smem, LANES, use_plane);
            if p0 + r < head_dim && lane == 0 {
                let at = ((b * len + t) * heads + h) * head_dim + p0 + r;
                y[at] = F::cast_from(y_local[at] + decay * total);
            }
        }
    }
}

/// # Shapes
/// - `x`: `[batch, len, heads, head_dim]`, `dt`: `[batch, len, heads]`, `b`, `c`: `[batch, len, groups, d_state]`
///   (one float dtype); `a_log`, `d`, `dt_bias`: `[heads]` f32; `initial`: `[batch, heads, head_dim, d_state]` f32
/// - returns `y` `[batch, len, heads, head_dim]` in x's dtype and the final state (f32), contiguous
///
/// # Panics
/// If `d_state > MAX_STATE_PER_LANE · LANES` (the caller falls back to the reference).
#[allow(clippy::too_many_arguments)]
pub fn launch<R: CubeRuntime>(
    x: CubeTensor<R>,
    dt: CubeTensor<R>,
    a_log: CubeTensor<R>,
    b: CubeTensor<R>,
    c: CubeTensor<R>,
    d: CubeTensor<R>,
    dt_bias: CubeTensor<R>,
    initial: CubeTensor<R>,
    chunk: usize,
    dt_limit: Option<(f32, f32)>,
) -> (CubeTensor<R>, CubeTensor<R>) {
    let client = x.client.clone();
    let device = x.device.clone();
    let [batch, len, heads, head_dim] = x.meta.shape().dims::<4>();
    let d_state = b.meta.shape().dims::<4>()[3];
    let per_lane = d_state.div_ceil(LANES);
    assert!(per_lane <= MAX_STATE_PER_LANE, "d_state {d_state} exceeds the kernel's register budget");
    let chunks = len.div_ceil(chunk);
    let dtype = x.dtype;
    let empty_of = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape.into(), dtype)
    };
    let empty = |shape: Vec<usize>| empty_of(shape, DType::F32);
    // the within-chunk output in f32 (kernel 1), then y in x's dtype (kernel 3)
    let y_local = empty(vec![batch, len, heads, head_dim]);
    let y = empty_of(vec![batch, len, heads, head_dim], dtype);
    let cum = empty(vec![batch * heads, len]);
    let states = empty(vec![batch, heads, chunks, head_dim, d_state]);
    let entering = empty(vec![batch, heads, chunks, head_dim, d_state]);
    let final_state = empty(vec![batch, heads, head_dim, d_state]);
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    let use_plane = rows_are_planes(&client);
    let tiles = CubeCount::Static(head_dim.div_ceil(ROWS * RPU) as u32, (batch * heads) as u32, chunks as u32);
    let tile_dim = CubeDim::new_2d(LANES as u32, ROWS as u32);
    // SAFETY: indices derive from the shapes; p, n and t are guarded against their extents.
    unsafe {
        local_kernel::launch_unchecked::<R>(
            &client,
            tiles.clone(),
            tile_dim,
            x.into_tensor_arg(),
            dt.into_tensor_arg(),
            a_log.into_tensor_arg(),
            d.into_tensor_arg(),
            dt_bias.into_tensor_arg(),
            b.into_tensor_arg(),
            c.clone().into_tensor_arg(),
            y_local.clone().into_tensor_arg(),
            cum.clone().into_tensor_arg(),
            states.clone().into_tensor_arg(),
            chunk,
            lo,
            hi,
            per_lane,
            dt_limit.is_some(),
            use_plane,
            dtype.into(),
        );
        super::ssd_chunked::pass(&client, initial, cum.clone(), states, entering.clone(), final_state.clone(), chunk);
        output_kernel::launch_unchecked::<R>(
            &client,
            tiles,
            tile_dim,
            c.into_tensor_arg(),
            cum.into_tensor_arg(),
            entering.into_tensor_arg(),
            y_local.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            chunk,
            per_lane,
            use_plane,
            dtype.into(),
        );
    }
    (y, final_state)
}
