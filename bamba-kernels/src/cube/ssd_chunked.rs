//! The SSD chunked scan in matmul form on tensor cores (`cmma`), for 16-bit inputs on devices that
//! have 16×16×16 tiles with f32 accumulation (CUDA). The same algorithm as mamba_ssm's Triton chain,
//! in five launches:
//!
//! 1. `cumsum`: per (sequence, head, chunk), softplus/dt_bias/clamp and the within-chunk cumulative
//!    sum of `dt·A` (a shared-memory scan), into `dt` and `cum` (`[batch·heads, len]`, f32).
//! 2. `chunk_state`: each chunk's own final state from a zero state,
//!    `S_c = (x · dt · exp(cum_last − cum))ᵀ · B` (`head_dim × chunk` by `chunk × d_state`), one cube
//!    per 64 columns of the state.
//! 3. `pass` (f32 on CUDA cores): per state element, the state entering each chunk, written in the
//!    input dtype for step 5, and the final state.
//! 4. `cb`: `C · Bᵀ` for every pair of positions of a chunk, once per group (heads share it).
//! 5. `chunk_scan`: for each block of 64 positions,
//!    `Y = (CB ∘ exp(cum_t − cum_s) · dt_s, causal, + D on the diagonal) · X + exp(cum_t) · C · S_inᵀ`.
//!
//! Operands are rounded to the input dtype for the tensor cores (as mamba_ssm does), products
//! accumulate in f32, and the decay math and the states are f32 (the final state never leaves f32).
//! Staging buffers in shared memory have their rows padded by 16 bytes so that the fragment loads of
//! consecutive rows fall on different banks; 16-element tile offsets keep the 32-byte alignment
//! `wmma` needs.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::DType;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

use super::math::discretize_dt;
use super::tiles::{has_f32_tiles, mma_staged, zero_accumulator, StagedTiles, PAD, PAD_F32, PLANE, TILE};

/// Positions per block of the output kernel (one 16-row tile per plane, 4 planes).
const BLOCK: usize = 64;
/// Positions staged per step of the chunk-state product.
const STATE_STEP: usize = 32;
/// d_state columns staged per step of the `C·Bᵀ` and `C·S_inᵀ` products, and per cube of the
/// chunk-state product.
const STATE_COLS: usize = 64;
/// Units per cube of the `cb` and `chunk_scan` kernels (one plane per 16-row tile of a block).
const BLOCK_UNITS: usize = PLANE * (BLOCK / TILE);
/// Most d_state this path takes: the same limit as the portable kernel (`MAX_KERNEL_D_STATE`).
const MAX_D_STATE: usize = 256;
/// Most head_dim this path takes: the output kernel's per-plane accumulators (head_dim / 16) and its
/// shared-memory stages are sized for it.
const MAX_HEAD_DIM: usize = 64;

static SCANS_RUN: AtomicU64 = AtomicU64::new(0);

/// Scans that ran on this path since the process started (tests check the path was taken).
pub fn scans_run() -> u64 {
    SCANS_RUN.load(Ordering::Relaxed)
}

/// Whether a scan of this dtype and these sizes runs here: 16-bit operands with f32-accumulating
/// 16×16×16 tiles on this device, 32-unit planes, `head_dim` and `d_state` multiples of 16
/// (≤ 64 and ≤ 256), a chunk that is a multiple of 64 up to 1024, and `BAMBA_SSD_TENSOR_CORES` not 0.
pub fn applies<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    d_state: usize,
    chunk: usize,
) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) || std::env::var("BAMBA_SSD_TENSOR_CORES").as_deref() == Ok("0") {
        return false;
    }
    has_f32_tiles(client, dtype)
        && head_dim % TILE == 0
        && head_dim <= MAX_HEAD_DIM
        && d_state % TILE == 0
        && d_state <= MAX_D_STATE
        && chunk % BLOCK == 0
        && chunk <= 1024
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn cumsum_kernel<F: Float>(
    dt: &Tensor<F>,
    a_log: &Tensor<f32>,
    dt_bias: &Tensor<f32>,
    dt_out: &mut Tensor<f32>,
    cum: &mut Tensor<f32>,
    lo: f32,
    hi: f32,
    #[comptime] chunk: usize,
    #[comptime] has_limit: bool,
    #[define(F)] _dtype: StorageType,
) {
    let len = dt.shape(1);
    let heads = dt.shape(2);
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let t = UNIT_POS as usize;
    let pos = CUBE_POS_X as usize * chunk + t;
    let mut scan = SharedMemory::<f32>::new(chunk);
    let mut dt_t = 0.0f32;
    let mut a_t = 0.0f32;
    if pos < len {
        let raw = f32::cast_from(dt[b * dt.stride(0) + pos * dt.stride(1) + h * dt.stride(2)]);
        dt_t = discretize_dt(raw, dt_bias[h * dt_bias.stride(0)], lo, hi, has_limit);
        a_t = -f32::exp(a_log[h * a_log.stride(0)]) * dt_t;
    }
    scan[t] = a_t;
    sync_cube();
    // Hillis–Steele inclusive scan (a runtime counter: a comptime-initialised one cannot be mutated)
    let mut offset = 1usize;
    while offset < chunk {
        let mut add = 0.0f32;
        if t >= offset {
            add = scan[t - offset];
        }
        sync_cube();
        scan[t] += add;
        sync_cube();
        offset *= 2;
    }
    if pos < len {
        cum[bh * len + pos] = scan[t];
        dt_out[bh * len + pos] = dt_t;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_state_kernel<F: Float>(
    x: &Tensor<F>,
    bmat: &Tensor<F>,
    dt: &Tensor<f32>,
    cum: &Tensor<f32>,
    states: &mut Tensor<f32>,
    #[comptime] chunk: usize,
    #[comptime] head_dim: usize,
    #[comptime] state_cols: usize,
    #[define(F)] _dtype: StorageType,
) {
    let len = x.shape(1);
    let heads = x.shape(2);
    let groups = bmat.shape(2);
    let d_state = bmat.shape(3);
    let chunks = states.shape(2);
    // this cube's columns of the state: n0 .. n0 + state_cols
    let n0 = CUBE_POS_Z as usize * state_cols;
    let ci = CUBE_POS_X as usize;
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let g = h / (heads / groups);
    let plane = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let threads = comptime!(PLANE * (head_dim / TILE));
    let start = ci * chunk;
    let end = usize::min(start + chunk, len);
    let last = cum[bh * len + end - 1];
    let x_ld = comptime!(head_dim + PAD);
    let b_ld = comptime!(state_cols + PAD);
    let mut xs = SharedMemory::<F>::new_aligned(STATE_STEP * x_ld, 32usize);
    let mut bs = SharedMemory::<F>::new_aligned(STATE_STEP * b_ld, 32usize);
    let mut weight = SharedMemory::<f32>::new(chunk);
    // strides read once: they live in a metadata buffer in global memory
    let x_base = b * x.stride(0) + h * x.stride(2);
    let x_t = x.stride(1);
    let x_p = x.stride(3);
    let b_t = bmat.stride(1);
    let b_n = bmat.stride(3);
    let b_base = b * bmat.stride(0) + g * bmat.stride(2) + n0 * b_n;
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..state_cols / TILE {
        acc.push(zero_accumulator());
    }
    // per-position weight dt·exp(cum_last − cum_t) of the whole chunk, zero past the end
    let mut r = tid;
    while r < chunk {
        let t = start + r;
        let mut w = 0.0f32;
        if t < end {
            w = dt[bh * len + t] * f32::exp(last - cum[bh * len + t]);
        }
        weight[r] = w;
        r += threads;
    }
    sync_cube();
    let mut t0 = start;
    while t0 < end {
        let rows = end - t0;
        stage_block::<F>(
            x,
            &mut xs,
            &weight,
            t0 - start,
            x_base + t0 * x_t,
            x_t,
            x_p,
            rows,
            head_dim,
            STATE_STEP,
            head_dim,
            x_ld,
            threads,
            true,
        );
        stage_block::<F>(
            bmat,
            &mut bs,
            &weight,
            0usize,
            b_base + t0 * b_t,
            b_t,
            b_n,
            rows,
            d_state - n0,
            STATE_STEP,
            state_cols,
            b_ld,
            threads,
            false,
        );
        sync_cube();
        // A = (weighted x)ᵀ: element (p, t) sits at xs[t·x_ld + p], column-major
        mma_staged::<F>(
            &mut acc,
            &xs,
            StagedTiles {
                start: plane * TILE,
                step_k: TILE * x_ld,
                step_n: 0usize,
                ld: x_ld,
                layout: cmma::MatrixLayout::ColMajor,
            },
            &bs,
            StagedTiles {
                start: 0usize,
                step_k: TILE * b_ld,
                step_n: TILE,
                ld: b_ld,
                layout: cmma::MatrixLayout::RowMajor,
            },
            STATE_STEP / TILE,
            state_cols / TILE,
        );
        sync_cube();
        t0 += STATE_STEP;
    }
    let base = ((bh * chunks + ci) * head_dim + plane * TILE) * d_state + n0;
    let total = states.len();
    #[unroll]
    for j in 0..state_cols / TILE {
        if n0 + j * TILE < d_state {
            cmma::store(
                &mut states.slice_mut(base + j * TILE, total),
                acc.index(j),
                d_state as u32,
                cmma::MatrixLayout::RowMajor,
            );
        }
    }
}

/// Chunks whose loads one unit of `pass_kernel` issues together.
const PASS_UNROLL: usize = 8;

/// The state entering each chunk: per state element, walk the chunks in order,
/// `entering_c = S; S ← exp(cum_last(c))·S + own_c`, the last `S` being the final state. Unlike the
/// portable kernel's pass it writes the entering states to their own buffer in the input dtype (what
/// the output kernel's tensor cores take; f32 for the portable scan), so the loads of `PASS_UNROLL`
/// chunks issue together.
#[cube(launch_unchecked)]
fn pass_kernel<F: Float>(
    initial: &Tensor<f32>,
    cum: &Tensor<f32>,
    own: &Tensor<f32>,
    entering: &mut Tensor<F>,
    final_state: &mut Tensor<f32>,
    chunk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let idx = ABSOLUTE_POS;
    if idx >= final_state.len() {
        terminate!();
    }
    let heads = final_state.shape(1);
    let head_dim = final_state.shape(2);
    let d_state = final_state.shape(3);
    let chunks = own.shape(2);
    let len = cum.shape(1);
    let n = idx % d_state;
    let p = (idx / d_state) % head_dim;
    let bh = idx / (d_state * head_dim);
    let h = bh % heads;
    let b = bh / heads;
    let mut s = initial[b * initial.stride(0) + h * initial.stride(1) + p * initial.stride(2) + n * initial.stride(3)];
    let slab = head_dim * d_state;
    let base = bh * chunks * slab + p * d_state + n;
    let cum_row = bh * len;
    let mut own_v = Array::<f32>::new(PASS_UNROLL);
    let mut decay = Array::<f32>::new(PASS_UNROLL);
    let mut c0 = 0usize;
    while c0 < chunks {
        #[unroll]
        for u in 0..PASS_UNROLL {
            let ci = c0 + u;
            own_v[u] = 0.0f32;
            decay[u] = 1.0f32;
            if ci < chunks {
                own_v[u] = own[base + ci * slab];
                decay[u] = f32::exp(cum[cum_row + usize::min((ci + 1) * chunk, len) - 1]);
            }
        }
        #[unroll]
        for u in 0..PASS_UNROLL {
            if c0 + u < chunks {
                entering[base + (c0 + u) * slab] = F::cast_from(s);
                s = decay[u] * s + own_v[u];
            }
        }
        c0 += PASS_UNROLL;
    }
    final_state[idx] = s;
}

/// Launches `pass_kernel`: `own` `[batch, heads, chunks, head_dim, d_state]` f32 (each chunk's own final
/// state), `cum` `[batch·heads, len]` (within-chunk cumulative `dt·A`), `entering` like `own` in any float
/// dtype (written), `initial` and `final_state` `[batch, heads, head_dim, d_state]` f32.
///
/// # Safety
/// The shapes must agree as above (indices are not checked).
pub(super) unsafe fn pass<R: CubeRuntime>(
    client: &ComputeClient<R>,
    initial: CubeTensor<R>,
    cum: CubeTensor<R>,
    own: CubeTensor<R>,
    entering: CubeTensor<R>,
    final_state: CubeTensor<R>,
    chunk: usize,
) {
    let elems = final_state.meta.shape().num_elements();
    let flat = CubeDim::new_1d(256);
    let dtype = entering.dtype;
    // SAFETY: the caller's shapes; idx is guarded against the final state's length.
    unsafe {
        pass_kernel::launch_unchecked::<R>(
            client,
            calculate_cube_count_elemwise(client, elems, flat),
            flat,
            initial.into_tensor_arg(),
            cum.into_tensor_arg(),
            own.into_tensor_arg(),
            entering.into_tensor_arg(),
            final_state.into_tensor_arg(),
            chunk,
            dtype.into(),
        );
    }
}

/// Copies a `rows × cols` block of a strided source into `stage` (row stride `ld`): element (r, k) is
/// `src[base + r·row_stride + k·col_stride]`, times `scale[scale_base + r]` when `scaled`, and zero where
/// `r ≥ valid_rows` or `k ≥ valid_cols`. Unrolled so that all of a unit's loads are in flight before
/// its first store. Every unit of the cube (`threads` of them) must call it.
#[cube]
#[allow(clippy::too_many_arguments)]
fn stage_block<F: Float>(
    src: &Tensor<F>,
    stage: &mut SharedMemory<F>,
    scale: &SharedMemory<f32>,
    scale_base: usize,
    base: usize,
    row_stride: usize,
    col_stride: usize,
    valid_rows: usize,
    valid_cols: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] ld: usize,
    #[comptime] threads: usize,
    #[comptime] scaled: bool,
) {
    let per_unit = comptime!((rows * cols).div_ceil(threads));
    let mut values = Array::<F>::new(per_unit);
    let mut factors = Array::<f32>::new(comptime!(if scaled { per_unit } else { 1 }));
    #[unroll]
    for j in 0..per_unit {
        let i = UNIT_POS as usize + j * threads;
        let r = i / cols;
        let k = i % cols;
        let mut v = F::new(0.0);
        if i < rows * cols && r < valid_rows && k < valid_cols {
            v = src[base + r * row_stride + k * col_stride];
        }
        values[j] = v;
        if scaled {
            // read before the first store below (the compiler cannot tell the buffers apart)
            factors[j] = scale[scale_base + usize::min(r, rows - 1)];
        }
    }
    #[unroll]
    for j in 0..per_unit {
        let i = UNIT_POS as usize + j * threads;
        let r = i / cols;
        if i < rows * cols {
            let mut v = values[j];
            if scaled {
                v = F::cast_from(f32::cast_from(v) * factors[j]);
            }
            stage[r * ld + i % cols] = v;
        }
    }
}

#[cube(launch_unchecked)]
fn cb_kernel<F: Float>(
    bmat: &Tensor<F>,
    cmat: &Tensor<F>,
    cb: &mut Tensor<f32>,
    #[comptime] chunk: usize,
    #[define(F)] _dtype: StorageType,
) {
    let blocks = chunk / BLOCK;
    let tb = CUBE_POS_Z as usize / blocks;
    let sb = CUBE_POS_Z as usize % blocks;
    if sb > tb {
        // above the diagonal: never read
        terminate!();
    }
    let len = bmat.shape(1);
    let groups = bmat.shape(2);
    let d_state = bmat.shape(3);
    let ci = CUBE_POS_X as usize;
    let bg = CUBE_POS_Y as usize;
    let b = bg / groups;
    let g = bg % groups;
    let plane = UNIT_POS_Y as usize;
    let chunk_end = usize::min((ci + 1) * chunk, len);
    let t0 = ci * chunk + tb * BLOCK;
    let s0 = ci * chunk + sb * BLOCK;
    if t0 >= chunk_end {
        // past the sequence: the output kernel skips these rows
        terminate!();
    }
    let ld = comptime!(STATE_COLS + PAD);
    let mut cs = SharedMemory::<F>::new_aligned(BLOCK * ld, 32usize);
    let mut bs = SharedMemory::<F>::new_aligned(BLOCK * ld, 32usize);
    let no_scale = SharedMemory::<f32>::new(1usize);
    let c_row = b * cmat.stride(0) + g * cmat.stride(2);
    let c_t = cmat.stride(1);
    let c_n = cmat.stride(3);
    let b_row = b * bmat.stride(0) + g * bmat.stride(2);
    let b_t = bmat.stride(1);
    let b_n = bmat.stride(3);
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..BLOCK / TILE {
        acc.push(zero_accumulator());
    }
    let mut n0 = 0usize;
    while n0 < d_state {
        let cols = d_state - n0;
        stage_block::<F>(
            cmat,
            &mut cs,
            &no_scale,
            0usize,
            c_row + t0 * c_t + n0 * c_n,
            c_t,
            c_n,
            chunk_end - t0,
            cols,
            BLOCK,
            STATE_COLS,
            ld,
            BLOCK_UNITS,
            false,
        );
        stage_block::<F>(
            bmat,
            &mut bs,
            &no_scale,
            0usize,
            b_row + s0 * b_t + n0 * b_n,
            b_t,
            b_n,
            chunk_end - s0,
            cols,
            BLOCK,
            STATE_COLS,
            ld,
            BLOCK_UNITS,
            false,
        );
        sync_cube();
        // Bᵀ: element (n, s) sits at bs[s·ld + n], column-major
        mma_staged::<F>(
            &mut acc,
            &cs,
            StagedTiles {
                start: plane * TILE * ld,
                step_k: TILE,
                step_n: 0usize,
                ld,
                layout: cmma::MatrixLayout::RowMajor,
            },
            &bs,
            StagedTiles { start: 0usize, step_k: TILE, step_n: TILE * ld, ld, layout: cmma::MatrixLayout::ColMajor },
            STATE_COLS / TILE,
            BLOCK / TILE,
        );
        sync_cube();
        n0 += STATE_COLS;
    }
    let chunks = cb.shape(1);
    let row = ((bg * chunks + ci) * chunk + tb * BLOCK + plane * TILE) * chunk + sb * BLOCK;
    let total = cb.len();
    #[unroll]
    for j in 0..BLOCK / TILE {
        cmma::store(&mut cb.slice_mut(row + j * TILE, total), acc.index(j), chunk as u32, cmma::MatrixLayout::RowMajor);
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_scan_kernel<F: Float>(
    x: &Tensor<F>,
    cmat: &Tensor<F>,
    d: &Tensor<f32>,
    dt: &Tensor<f32>,
    cum: &Tensor<f32>,
    cb: &Tensor<f32>,
    entering: &Tensor<F>,
    y: &mut Tensor<f32>,
    #[comptime] chunk: usize,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: StorageType,
) {
    let len = x.shape(1);
    let heads = x.shape(2);
    let groups = cmat.shape(2);
    let d_state = cmat.shape(3);
    let chunks = entering.shape(2);
    let blocks = chunk / BLOCK;
    let ci = CUBE_POS_X as usize / blocks;
    let tb = CUBE_POS_X as usize % blocks;
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let g = h / (heads / groups);
    let t0 = ci * chunk + tb * BLOCK;
    if t0 >= len {
        terminate!();
    }
    let chunk_end = usize::min((ci + 1) * chunk, len);
    let plane = UNIT_POS_Y as usize;
    let tid = UNIT_POS as usize;
    let threads = comptime!(BLOCK_UNITS);
    let a_ld = comptime!(BLOCK + PAD);
    let s_ld = comptime!(STATE_COLS + PAD);
    let x_ld = comptime!(head_dim + PAD);
    let y_ld = comptime!(head_dim + PAD_F32);
    // strides read once: they live in a metadata buffer in global memory
    let x_row = b * x.stride(0) + h * x.stride(2);
    let x_t = x.stride(1);
    let x_p = x.stride(3);
    let c_row = b * cmat.stride(0) + g * cmat.stride(2);
    let c_t = cmat.stride(1);
    let c_n = cmat.stride(3);
    let d_h = d[h * d.stride(0)];
    // stage_a holds C·exp(cum_t) (BLOCK × STATE_COLS) or the masked decay matrix (BLOCK × BLOCK);
    // stage_b holds S_in (head_dim × STATE_COLS) or x (BLOCK × head_dim)
    let mut stage_a = SharedMemory::<F>::new_aligned(BLOCK * a_ld, 32usize);
    let mut stage_b = SharedMemory::<F>::new_aligned(BLOCK * x_ld, 32usize);
    let mut cum_t = SharedMemory::<f32>::new(BLOCK);
    let mut exp_t = SharedMemory::<f32>::new(BLOCK);
    let mut cum_s = SharedMemory::<f32>::new(BLOCK);
    let mut dt_s = SharedMemory::<f32>::new(BLOCK);
    if tid < BLOCK {
        let mut c = 0.0f32;
        if t0 + tid < chunk_end {
            c = cum[bh * len + t0 + tid];
        }
        cum_t[tid] = c;
        exp_t[tid] = f32::exp(c);
    }
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..head_dim / TILE {
        acc.push(zero_accumulator());
    }
    sync_cube();

    // what the entering state contributes: exp(cum_t)·C_t · S_inᵀ
    let state_base = (bh * chunks + ci) * head_dim * d_state;
    let mut n0 = 0usize;
    while n0 < d_state {
        let cols = d_state - n0;
        stage_block::<F>(
            cmat,
            &mut stage_a,
            &exp_t,
            0usize,
            c_row + t0 * c_t + n0 * c_n,
            c_t,
            c_n,
            chunk_end - t0,
            cols,
            BLOCK,
            STATE_COLS,
            s_ld,
            threads,
            true,
        );
        stage_block::<F>(
            entering,
            &mut stage_b,
            &exp_t,
            0usize,
            state_base + n0,
            d_state,
            1usize,
            head_dim,
            cols,
            head_dim,
            STATE_COLS,
            s_ld,
            threads,
            false,
        );
        sync_cube();
        // S_inᵀ: element (n, p) sits at stage_b[p·s_ld + n], column-major
        mma_staged::<F>(
            &mut acc,
            &stage_a,
            StagedTiles {
                start: plane * TILE * s_ld,
                step_k: TILE,
                step_n: 0usize,
                ld: s_ld,
                layout: cmma::MatrixLayout::RowMajor,
            },
            &stage_b,
            StagedTiles {
                start: 0usize,
                step_k: TILE,
                step_n: TILE * s_ld,
                ld: s_ld,
                layout: cmma::MatrixLayout::ColMajor,
            },
            STATE_COLS / TILE,
            head_dim / TILE,
        );
        sync_cube();
        n0 += STATE_COLS;
    }

    // within the chunk: (C_t·B_s · exp(cum_t − cum_s) · dt_s for s ≤ t) · x_s, block by block
    let chunks_cb = cb.shape(1);
    let cb_base = (((b * groups + g) * chunks_cb + ci) * chunk + tb * BLOCK) * chunk;
    for sb in 0..tb + 1 {
        let s0 = ci * chunk + sb * BLOCK;
        if tid < BLOCK {
            let mut c = 0.0f32;
            let mut w = 0.0f32;
            if s0 + tid < chunk_end {
                c = cum[bh * len + s0 + tid];
                w = dt[bh * len + s0 + tid];
            }
            cum_s[tid] = c;
            dt_s[tid] = w;
        }
        sync_cube();
        let per_unit = comptime!(BLOCK * BLOCK / BLOCK_UNITS);
        let mut values = Array::<f32>::new(per_unit);
        #[unroll]
        for j in 0..per_unit {
            let i = tid + j * threads;
            values[j] = cb[cb_base + (i / BLOCK) * chunk + sb * BLOCK + i % BLOCK];
        }
        // a unit's column k is the same for every j (`threads` is a multiple of BLOCK): its cum and dt
        // are read once, and every row's cum before the first store to shared memory
        let k = tid % BLOCK;
        let cum_k = cum_s[k];
        let dt_k = dt_s[k];
        let mut cum_r = Array::<f32>::new(per_unit);
        #[unroll]
        for j in 0..per_unit {
            cum_r[j] = cum_t[(tid + j * threads) / BLOCK];
        }
        #[unroll]
        for j in 0..per_unit {
            let r = (tid + j * threads) / BLOCK;
            let mut v = 0.0f32;
            if sb * BLOCK + k <= tb * BLOCK + r {
                v = values[j] * f32::exp(cum_r[j] - cum_k) * dt_k;
            }
            if sb == tb && k == r {
                // D·x as part of the product: D on the diagonal
                v += d_h;
            }
            stage_a[r * a_ld + k] = F::cast_from(v);
        }
        stage_block::<F>(
            x,
            &mut stage_b,
            &exp_t,
            0usize,
            x_row + s0 * x_t,
            x_t,
            x_p,
            chunk_end - s0,
            head_dim,
            BLOCK,
            head_dim,
            x_ld,
            threads,
            false,
        );
        sync_cube();
        mma_staged::<F>(
            &mut acc,
            &stage_a,
            StagedTiles {
                start: plane * TILE * a_ld,
                step_k: TILE,
                step_n: 0usize,
                ld: a_ld,
                layout: cmma::MatrixLayout::RowMajor,
            },
            &stage_b,
            StagedTiles {
                start: 0usize,
                step_k: TILE * x_ld,
                step_n: TILE,
                ld: x_ld,
                layout: cmma::MatrixLayout::RowMajor,
            },
            BLOCK / TILE,
            head_dim / TILE,
        );
        sync_cube();
    }

    // A full block goes straight from the accumulators to y; the last block of a sequence that stops
    // short of 64 rows goes through shared memory.
    if t0 + BLOCK <= chunk_end {
        let row = ((b * len + t0 + plane * TILE) * heads + h) * head_dim;
        let total = y.len();
        #[unroll]
        for j in 0..head_dim / TILE {
            cmma::store(
                &mut y.slice_mut(row + j * TILE, total),
                acc.index(j),
                (heads * head_dim) as u32,
                cmma::MatrixLayout::RowMajor,
            );
        }
    } else {
        let mut ys = SharedMemory::<f32>::new_aligned(BLOCK * y_ld, 32usize);
        #[unroll]
        for j in 0..head_dim / TILE {
            cmma::store(
                &mut ys.slice_mut(plane * TILE * y_ld + j * TILE, BLOCK * y_ld),
                acc.index(j),
                y_ld as u32,
                cmma::MatrixLayout::RowMajor,
            );
        }
        sync_cube();
        #[unroll]
        for j in 0..comptime!(BLOCK * head_dim / BLOCK_UNITS) {
            let i = tid + j * threads;
            let r = i / head_dim;
            if t0 + r < chunk_end {
                y[((b * len + t0 + r) * heads + h) * head_dim + i % head_dim] = ys[r * y_ld + i % head_dim];
            }
        }
    }
}

/// # Shapes
/// As [`super::ssd_scan::launch`]: `x` `[batch, len, heads, head_dim]`, `dt` `[batch, len, heads]`, `b`, `c`
/// `[batch, len, groups, d_state]` (bf16 or f16); `a_log`, `d`, `dt_bias` `[heads]` f32; `initial`
/// `[batch, heads, head_dim, d_state]` f32. Returns `y` `[batch, len, heads, head_dim]` f32 and the final
/// state, contiguous. Call only where [`applies`] holds.
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
    let [_, _, groups, d_state] = b.meta.shape().dims::<4>();
    let chunks = len.div_ceil(chunk);
    let empty =
        |shape: Vec<usize>| empty_device_contiguous_dtype(client.clone(), device.clone(), shape.into(), DType::F32);
    let y = empty(vec![batch, len, heads, head_dim]);
    let dt_out = empty(vec![batch * heads, len]);
    let cum = empty(vec![batch * heads, len]);
    let states = empty(vec![batch, heads, chunks, head_dim, d_state]);
    let entering = empty_device_contiguous_dtype(
        client.clone(),
        device.clone(),
        vec![batch, heads, chunks, head_dim, d_state].into(),
        x.dtype,
    );
    let final_state = empty(vec![batch, heads, head_dim, d_state]);
    let cb = empty(vec![batch * groups, chunks, chunk, chunk]);
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    let dtype = x.dtype;
    let blocks = chunk / BLOCK;
    let state_cols = d_state.min(STATE_COLS);
    let planes_of = |rows: usize| CubeDim::new_2d(PLANE as u32, (rows / TILE) as u32);
    SCANS_RUN.fetch_add(1, Ordering::Relaxed);
    // SAFETY: every index derives from the shapes and is guarded against len, d_state and the chunk;
    // `applies` holds (tile-multiple head_dim/d_state, chunk a multiple of BLOCK).
    unsafe {
        cumsum_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(chunks as u32, (batch * heads) as u32, 1),
            CubeDim::new_1d(chunk as u32),
            dt.into_tensor_arg(),
            a_log.into_tensor_arg(),
            dt_bias.into_tensor_arg(),
            dt_out.clone().into_tensor_arg(),
            cum.clone().into_tensor_arg(),
            lo,
            hi,
            chunk,
            dt_limit.is_some(),
            dtype.into(),
        );
        chunk_state_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(chunks as u32, (batch * heads) as u32, d_state.div_ceil(state_cols) as u32),
            planes_of(head_dim),
            x.clone().into_tensor_arg(),
            b.clone().into_tensor_arg(),
            dt_out.clone().into_tensor_arg(),
            cum.clone().into_tensor_arg(),
            states.clone().into_tensor_arg(),
            chunk,
            head_dim,
            state_cols,
            dtype.into(),
        );
        pass(&client, initial, cum.clone(), states, entering.clone(), final_state.clone(), chunk);
        cb_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(chunks as u32, (batch * groups) as u32, (blocks * blocks) as u32),
            planes_of(BLOCK),
            b.into_tensor_arg(),
            c.clone().into_tensor_arg(),
            cb.clone().into_tensor_arg(),
            chunk,
            dtype.into(),
        );
        chunk_scan_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((chunks * blocks) as u32, (batch * heads) as u32, 1),
            planes_of(BLOCK),
            x.into_tensor_arg(),
            c.into_tensor_arg(),
            d.into_tensor_arg(),
            dt_out.into_tensor_arg(),
            cum.into_tensor_arg(),
            cb.into_tensor_arg(),
            entering.into_tensor_arg(),
            y.clone().into_tensor_arg(),
            chunk,
            head_dim,
            dtype.into(),
        );
    }
    (y, final_state)
}
