//! The SSD chunked scan in matmul form on tensor cores, for 16-bit inputs on CUDA. The same algorithm
//! as mamba_ssm's Triton chain, in five launches:
//!
//! 1. `cumsum`: per (sequence, head, chunk), softplus/dt_bias/clamp and the within-chunk cumulative
//!    sum of `dt·A` (a shared-memory scan), into `dt` and `cum` (`[batch·heads, len]`, f32).
//! 2. `chunk_state`: each chunk's own final state from a zero state,
//!    `S_c = (x · dt · exp(cum_last − cum))ᵀ · B` (`head_dim × chunk` by `chunk × d_state`), one cube
//!    per (chunk, head) and up to 64 columns of the state.
//! 3. `pass` (f32 on CUDA cores): per state element, the state entering each chunk, written in the
//!    input dtype for step 5, and the final state.
//! 4. `cb`: `C · Bᵀ` for every pair of positions of a chunk, once per group (heads share it), stored
//!    in the order step 5's fragments take it.
//! 5. `chunk_scan`: for each block of 64 positions,
//!    `Y = exp(cum_t) · C · S_inᵀ + (CB ∘ exp(cum_t − cum_s) · dt_s, causal) · X + D · x`.
//!
//! Steps 2, 4 and 5 run on `mma.sync` fragments (m16n8k16, `fragments.rs`): operands staged in
//! shared memory with 16-byte loads and read by `ldmatrix` (`.trans` where the staged rows are the
//! product's depth). Step 4 stores each lane's accumulators as the A fragment it will be in step 5
//! (pairs of f32, a plane's 32 pairs contiguous), and step 5 turns them into the decay matrix in
//! registers (a lane knows which rows and columns it holds): that matrix never goes through shared
//! memory, which `wmma` tiles (whose layout is opaque) would not allow.
//!
//! Operands are rounded to the input dtype for the tensor cores (as mamba_ssm does), products
//! accumulate in f32, and the decay math, `D·x` and the states are f32 (the final state never leaves
//! f32); y is rounded to the input dtype once, when stored (as mamba_ssm writes it). Staging buffers
//! in shared memory have their rows padded by 16 bytes so that the 8 rows an `ldmatrix` reads fall
//! on different banks.

use std::sync::atomic::{AtomicU64, Ordering};

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;
use cubecl::{calculate_cube_count_elemwise, CubeCount, CubeDim};

use super::fragments::{
    accumulator_pair, has_fragments, load_b_pair, load_vectors, stage_vectors, store_vectors, zero_fragment, COLS,
    DEPTH, PAD, PLANE, ROWS, VECTOR,
};
use super::math::{discretize_dt, inclusive_scan};
use super::rms_norm::rows_of_vectors;

/// Positions per block of the output kernel (one 16-row tile per plane, 4 planes).
const BLOCK: usize = 64;
/// Positions staged per step of the chunk-state product.
const STEP: usize = 64;
/// d_state columns staged per step of the `C·Bᵀ` product; the chunk-state and output kernels take
/// the largest multiple of 16 up to this that divides d_state ([`state_cols`]).
const STATE_COLS: usize = 64;
/// Units per cube of the `cb` and `chunk_scan` kernels (one plane per 16-row tile of a block).
const BLOCK_UNITS: usize = PLANE * (BLOCK / ROWS);
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

/// Whether a scan of this dtype and these sizes runs here: 16-bit operands with m16n8k16 `mma.sync`
/// fragments on this device ([`has_fragments`]), `head_dim` and `d_state` multiples of 16
/// (≤ 64 and ≤ 256), and a chunk that is a multiple of 64 up to 1024.
pub fn applies<R: CubeRuntime>(
    client: &ComputeClient<R>,
    dtype: DType,
    head_dim: usize,
    d_state: usize,
    chunk: usize,
) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return false;
    }
    has_fragments(client, dtype)
        && head_dim % DEPTH == 0
        && head_dim <= MAX_HEAD_DIM
        && d_state % DEPTH == 0
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
    inclusive_scan(&mut scan, t, chunk);
    if pos < len {
        cum[bh * len + pos] = scan[t];
        dt_out[bh * len + pos] = dt_t;
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_state_kernel<F: Float, N: Size, N2: Size>(
    x: &Tensor<Vector<F, N>>,
    bmat: &Tensor<Vector<F, N>>,
    dt: &Tensor<f32>,
    cum: &Tensor<f32>,
    states: &mut Tensor<Vector<f32, N2>>,
    #[comptime] chunk: usize,
    #[comptime] head_dim: usize,
    #[comptime] state_cols: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mma = MmaDefinition::<F, F, f32>::new(ROWS, COLS, DEPTH);
    let size!(NA) = mma.vector_size(MatrixIdent::A);
    let size!(NB) = mma.vector_size(MatrixIdent::B);
    let c_width = mma.vector_size(MatrixIdent::Accumulator);
    let size!(NC) = c_width;
    let a_vectors = mma.vectors_per_lane(MatrixIdent::A);
    let b_vectors = mma.vectors_per_lane(MatrixIdent::B);
    let c_vectors = mma.vectors_per_lane(MatrixIdent::Accumulator);

    let len = x.shape(1);
    let heads = x.shape(2);
    let groups = bmat.shape(2);
    let d_state = bmat.shape(3);
    let chunks = states.shape(2);
    // this cube's columns of the state: n0 .. n0 + state_cols. The column blocks of a chunk are
    // neighbours in the grid, so they run together and read x once from DRAM (the second from L2).
    let col_blocks = d_state / state_cols;
    let n0 = (CUBE_POS_X as usize % col_blocks) * state_cols;
    let ci = CUBE_POS_X as usize / col_blocks;
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let g = h / (heads / groups);
    let plane = UNIT_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let threads = comptime!(PLANE * (head_dim / ROWS));
    let start = ci * chunk;
    let end = usize::min(start + chunk, len);
    let last = cum[bh * len + end - 1];
    let x_ldv = comptime!((head_dim + PAD) / VECTOR);
    let b_ldv = comptime!((state_cols + PAD) / VECTOR);
    let mut xs = SharedMemory::<Vector<F, N>>::new_aligned(STEP * x_ldv, 16usize);
    let mut bs = SharedMemory::<Vector<F, N>>::new_aligned(STEP * b_ldv, 16usize);
    // strides read once: they live in a metadata buffer in global memory
    let x_base = b * x.stride(0) + h * x.stride(2);
    let x_t = x.stride(1);
    let b_base = b * bmat.stride(0) + g * bmat.stride(2) + n0;
    let b_t = bmat.stride(1);
    let n_tiles = comptime!(state_cols / COLS);
    let mut acc = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..n_tiles {
        acc.push(zero_fragment::<NC>(c_vectors));
    }
    // this unit's vectors of a step: x with its positions' weights, and B
    let x_vectors = comptime!((STEP * head_dim / VECTOR).div_ceil(threads));
    let mut xv = Array::<Vector<F, N>>::new(x_vectors);
    let mut weights = Array::<f32>::new(x_vectors);
    let mut bv = Array::<Vector<F, N>>::new(comptime!((STEP * state_cols / VECTOR).div_ceil(threads)));
    let no_scale = Array::<f32>::new(1usize);
    let mut t0 = start;
    while t0 < end {
        load_vectors::<F, N>(x, &mut xv, x_base + t0 * x_t, x_t, end - t0, STEP, head_dim, threads);
        load_vectors::<F, N>(bmat, &mut bv, b_base + t0 * b_t, b_t, end - t0, STEP, state_cols, threads);
        position_weights(dt, cum, &mut weights, bh * len, t0, end, last, head_dim, threads);
        // x weighted (zero past the end), rounded to the input dtype
        store_vectors::<F, N>(&xv, &mut xs, &weights, STEP, head_dim, x_ldv, threads, true);
        store_vectors::<F, N>(&bv, &mut bs, &no_scale, STEP, state_cols, b_ldv, threads, false);
        sync_cube();
        #[unroll]
        for kk in 0..STEP / DEPTH {
            // A = (weighted x)ᵀ, rows p of this plane, 16 positions deep: `ldmatrix .trans` ×4 of the
            // staged rows (lanes 0–7 give positions 0–7 at column 0, 8–15 the same at column 8,
            // 16–23 positions 8–15 at column 0, 24–31 at column 8)
            let quarter = lane / 8usize;
            let at = (kk * DEPTH + lane % 8usize + (quarter / 2usize) * 8usize) * x_ldv
                + (plane * ROWS + (quarter % 2usize) * 8usize) / VECTOR;
            let xa = mma.load_matrix::<Vector<F, N>, NA>(&xs.slice(at, at + 1), MatrixIdent::A, a_vectors, true);
            // B's rows are the staged rows as they are: `ldmatrix .trans`, two 8-column tiles each
            #[unroll]
            for j in 0..n_tiles / 2 {
                let at = (kk * DEPTH + lane % 16usize) * b_ldv + (j * 2 + lane / 16usize) * COLS / VECTOR;
                let (first, second) = load_b_pair::<F, N, NB>(&mma, &bs, at, b_vectors, true);
                mma.execute_inplace(&xa, &first, acc.index_mut(comptime!(2 * j)));
                mma.execute_inplace(&xa, &second, acc.index_mut(comptime!(2 * j + 1)));
            }
        }
        sync_cube();
        t0 += STEP;
    }
    // a lane holds rows g and g + 8 of the plane's 16 head_dim rows, columns 2t and 2t + 1 of each
    // tile: one 8-byte store per row and tile
    let row = plane * ROWS + lane / 4usize;
    let col = n0 + 2usize * (lane % 4usize);
    let base = (bh * chunks + ci) * head_dim * d_state;
    #[unroll]
    for j in 0..n_tiles {
        #[unroll]
        for q in 0..2usize {
            let out = accumulator_pair::<NC, N2>(acc.index(j), comptime!(2 * q), c_width);
            states[(base + (row + comptime!(q * 8)) * d_state + col + comptime!(j * COLS)) / 2usize] = out;
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

/// For this unit's vectors of `STEP` positions from `t0` × `cols` columns (as [`load_vectors`] deals
/// them), each one's position's chunk-state weight `dt·exp(cum_last − cum)`, zero at or past `end`.
#[cube]
#[allow(clippy::too_many_arguments)]
fn position_weights(
    dt: &Tensor<f32>,
    cum: &Tensor<f32>,
    weights: &mut Array<f32>,
    row: usize,
    t0: usize,
    end: usize,
    last: f32,
    #[comptime] cols: usize,
    #[comptime] threads: usize,
) {
    let per_row = comptime!(cols / VECTOR);
    let total = comptime!(STEP * cols / VECTOR);
    #[unroll]
    for j in 0..comptime!(total.div_ceil(threads)) {
        let t = t0 + usize::min(UNIT_POS as usize + j * threads, total - 1) / per_row;
        let read = usize::min(t, end - 1);
        weights[j] = select(t < end, dt[row + read] * f32::exp(last - cum[row + read]), 0.0f32);
    }
}

/// `acc[j] += A · Bᵀ` for this plane: A is 16 staged rows of `a_stage` from row `a_row`, B's rows
/// (`tiles` × 8 of them) are `b_stage`'s, both with the product's `depth` along the row (`ldv` vectors
/// apart). A's fragments come from `ldmatrix` ×4 of its rows as they are (lanes 0–15 give rows 0–15
/// at column 0, 16–31 the same at 8); B's two 8-row tiles at a time (lanes 0–7 give a tile's rows at
/// depth 0, 8–15 at depth 8, 16–31 the next tile's).
#[cube]
#[allow(clippy::too_many_arguments)]
fn mma_rows_by_rows<F: Float, N: Size, NA: Size, NB: Size, NC: Size>(
    mma: &MmaDefinition<F, F, f32>,
    acc: &mut Sequence<Array<Vector<f32, NC>>>,
    a_stage: &SharedMemory<Vector<F, N>>,
    b_stage: &SharedMemory<Vector<F, N>>,
    a_row: usize,
    #[comptime] depth: usize,
    #[comptime] tiles: usize,
    #[comptime] ldv: usize,
    #[comptime] a_vectors: usize,
    #[comptime] b_vectors: usize,
) {
    let lane = UNIT_POS_X as usize;
    #[unroll]
    for kk in 0..depth / DEPTH {
        let at = (a_row + lane % 16usize) * ldv + (kk * DEPTH + (lane / 16usize) * 8usize) / VECTOR;
        let a = mma.load_matrix::<Vector<F, N>, NA>(&a_stage.slice(at, at + 1), MatrixIdent::A, a_vectors, false);
        #[unroll]
        for j in 0..tiles / 2 {
            let at = (j * 16usize + (lane / 16usize) * 8usize + lane % 8usize) * ldv
                + (kk * DEPTH + ((lane / 8usize) % 2usize) * 8usize) / VECTOR;
            let (first, second) = load_b_pair::<F, N, NB>(mma, b_stage, at, b_vectors, false);
            mma.execute_inplace(&a, &first, acc.index_mut(comptime!(2 * j)));
            mma.execute_inplace(&a, &second, acc.index_mut(comptime!(2 * j + 1)));
        }
    }
}

/// Where `cb_kernel` puts, and `chunk_scan_kernel` finds, the pair `q` (of 4) of lane `lane`'s A
/// fragment for 16 positions `t` (plane `plane` of block `tb`) × 16 positions `s` (step `kk` of block
/// `sb`) of chunk `ci` of sequence-group `bg`, in pairs of f32: each (tile, q) is 32 lanes' pairs in a
/// row, so a plane's load of one is 256 contiguous bytes.
#[cube]
#[allow(clippy::too_many_arguments)]
fn cb_pair_index(
    bg: usize,
    chunks: usize,
    ci: usize,
    tb: usize,
    sb: usize,
    plane: usize,
    kk: usize,
    q: usize,
    lane: usize,
    #[comptime] blocks: usize,
) -> usize {
    let tile = ((((bg * chunks + ci) * blocks + tb) * blocks + sb) * (BLOCK / ROWS) + plane) * (BLOCK / DEPTH) + kk;
    (tile * 4usize + q) * PLANE + lane
}

/// `C · Bᵀ` of positions `t` (block `tb`) by `s` (block `sb`) of a chunk, for one group: a cube per
/// 64 × 64 block on or below the diagonal, stored in the A-fragment order the output kernel reads.
#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn cb_kernel<F: Float, N: Size, N2: Size>(
    bmat: &Tensor<Vector<F, N>>,
    cmat: &Tensor<Vector<F, N>>,
    cb: &mut Tensor<Vector<f32, N2>>,
    #[comptime] chunk: usize,
    #[comptime] state_cols: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mma = MmaDefinition::<F, F, f32>::new(ROWS, COLS, DEPTH);
    let size!(NA) = mma.vector_size(MatrixIdent::A);
    let size!(NB) = mma.vector_size(MatrixIdent::B);
    let c_width = mma.vector_size(MatrixIdent::Accumulator);
    let size!(NC) = c_width;
    let a_vectors = mma.vectors_per_lane(MatrixIdent::A);
    let b_vectors = mma.vectors_per_lane(MatrixIdent::B);
    let c_vectors = mma.vectors_per_lane(MatrixIdent::Accumulator);

    let blocks = comptime!(chunk / BLOCK);
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
    let lane = UNIT_POS_X as usize;
    let chunk_end = usize::min((ci + 1) * chunk, len);
    let t0 = ci * chunk + tb * BLOCK;
    let s0 = ci * chunk + sb * BLOCK;
    if t0 >= chunk_end {
        // past the sequence: the output kernel skips these rows
        terminate!();
    }
    let ldv = comptime!((state_cols + PAD) / VECTOR);
    let mut cs = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * ldv, 16usize);
    let mut bs = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * ldv, 16usize);
    let c_row = b * cmat.stride(0) + g * cmat.stride(2);
    let c_t = cmat.stride(1);
    let b_row = b * bmat.stride(0) + g * bmat.stride(2);
    let b_t = bmat.stride(1);
    let mut acc = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..BLOCK / COLS {
        acc.push(zero_fragment::<NC>(c_vectors));
    }
    let mut n0 = 0usize;
    while n0 < d_state {
        stage_vectors::<F, N>(
            cmat,
            &mut cs,
            c_row + t0 * c_t + n0,
            c_t,
            chunk_end - t0,
            BLOCK,
            state_cols,
            ldv,
            BLOCK_UNITS,
        );
        stage_vectors::<F, N>(
            bmat,
            &mut bs,
            b_row + s0 * b_t + n0,
            b_t,
            chunk_end - s0,
            BLOCK,
            state_cols,
            ldv,
            BLOCK_UNITS,
        );
        sync_cube();
        mma_rows_by_rows::<F, N, NA, NB, NC>(
            &mma,
            &mut acc,
            &cs,
            &bs,
            plane * ROWS,
            state_cols,
            BLOCK / COLS,
            ldv,
            a_vectors,
            b_vectors,
        );
        sync_cube();
        n0 += state_cols;
    }
    // The A fragment of 16 positions s (step kk) is, element for element, the accumulators of the two
    // 8-column tiles 2kk and 2kk + 1: its pair q is tile 2kk + ⌊q/2⌋'s elements 2(q mod 2) and + 1.
    let chunks = cb.shape(1);
    #[unroll]
    for kk in 0..BLOCK / DEPTH {
        #[unroll]
        for q in 0..4usize {
            let pair =
                accumulator_pair::<NC, N2>(acc.index(comptime!(2 * kk + q / 2)), comptime!(2 * (q % 2)), c_width);
            cb[cb_pair_index(bg, chunks, ci, tb, sb, plane, kk, q, lane, blocks)] = pair;
        }
    }
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn chunk_scan_kernel<F: Float, N: Size, N2: Size>(
    x: &Tensor<Vector<F, N>>,
    x_pairs: &Tensor<Vector<F, N2>>,
    cmat: &Tensor<Vector<F, N>>,
    d: &Tensor<f32>,
    dt: &Tensor<f32>,
    cum: &Tensor<f32>,
    cb: &Tensor<Vector<f32, N2>>,
    entering: &Tensor<Vector<F, N>>,
    y: &mut Tensor<Vector<F, N2>>,
    #[comptime] chunk: usize,
    #[comptime] head_dim: usize,
    #[comptime] state_cols: usize,
    #[define(F)] _dtype: StorageType,
) {
    let mma = MmaDefinition::<F, F, f32>::new(ROWS, COLS, DEPTH);
    let a_width = mma.vector_size(MatrixIdent::A);
    let size!(NA) = a_width;
    let size!(NB) = mma.vector_size(MatrixIdent::B);
    let c_width = mma.vector_size(MatrixIdent::Accumulator);
    let size!(NC) = c_width;
    let a_vectors = mma.vectors_per_lane(MatrixIdent::A);
    let b_vectors = mma.vectors_per_lane(MatrixIdent::B);
    let c_vectors = mma.vectors_per_lane(MatrixIdent::Accumulator);

    let len = x.shape(1);
    let heads = x.shape(2);
    let groups = cmat.shape(2);
    let d_state = cmat.shape(3);
    let chunks = entering.shape(2);
    let blocks = comptime!(chunk / BLOCK);
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
    let lane = UNIT_POS_X as usize;
    let tid = UNIT_POS as usize;
    let threads = comptime!(BLOCK_UNITS);
    let s_ldv = comptime!((state_cols + PAD) / VECTOR);
    let x_ldv = comptime!((head_dim + PAD) / VECTOR);
    let dim_tiles = comptime!(head_dim / COLS);
    // strides read once: they live in a metadata buffer in global memory
    let x_row = b * x.stride(0) + h * x.stride(2);
    let x_t = x.stride(1);
    let c_row = b * cmat.stride(0) + g * cmat.stride(2);
    let c_t = cmat.stride(1);
    let mut c_stage = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * s_ldv, 16usize);
    let mut s_stage = SharedMemory::<Vector<F, N>>::new_aligned(head_dim * s_ldv, 16usize);
    let mut x_stage = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * x_ldv, 16usize);
    let mut cum_s = SharedMemory::<f32>::new(BLOCK);
    let mut dt_s = SharedMemory::<f32>::new(BLOCK);

    // A lane holds rows g and g + 8 of its plane's 16 (slots 0 and 1), columns 2t and 2t + 1 of each
    // 8-wide output tile. Rows past the chunk read the last row's cum (they are never stored).
    let quad = lane / 4usize;
    let pair = 2usize * (lane % 4usize);
    let first_row = plane * ROWS + quad;
    let mut cum_row = Array::<f32>::new(2usize);
    #[unroll]
    for slot in 0..2usize {
        cum_row[slot] = cum[bh * len + usize::min(t0 + first_row + slot * 8usize, chunk_end - 1)];
    }
    let mut acc = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..dim_tiles {
        acc.push(zero_fragment::<NC>(c_vectors));
    }

    // what the entering state contributes: exp(cum_t) · C_t · S_inᵀ, state_cols of d_state at a time
    let state_base = (bh * chunks + ci) * head_dim * d_state;
    let mut n0 = 0usize;
    while n0 < d_state {
        stage_vectors::<F, N>(
            cmat,
            &mut c_stage,
            c_row + t0 * c_t + n0,
            c_t,
            chunk_end - t0,
            BLOCK,
            state_cols,
            s_ldv,
            threads,
        );
        stage_vectors::<F, N>(
            entering,
            &mut s_stage,
            state_base + n0,
            d_state,
            head_dim,
            head_dim,
            state_cols,
            s_ldv,
            threads,
        );
        sync_cube();
        // S_inᵀ: S_in's rows (head_dim of them) are B's columns
        mma_rows_by_rows::<F, N, NA, NB, NC>(
            &mma,
            &mut acc,
            &c_stage,
            &s_stage,
            plane * ROWS,
            state_cols,
            dim_tiles,
            s_ldv,
            a_vectors,
            b_vectors,
        );
        sync_cube();
        n0 += state_cols;
    }
    let mut decay_row = Array::<f32>::new(2usize);
    decay_row[0usize] = f32::exp(cum_row[0usize]);
    decay_row[1usize] = f32::exp(cum_row[1usize]);
    #[unroll]
    for j in 0..dim_tiles {
        #[unroll]
        for i in 0..c_vectors {
            let mut values = acc.index(j)[i];
            #[unroll]
            for e in 0..c_width {
                values[e] *= decay_row[comptime!((i * c_width + e) / 2)];
            }
            acc.index_mut(j)[i] = values;
        }
    }

    // within the chunk: (C_t·B_s · exp(cum_t − cum_s) · dt_s for s ≤ t) · x_s, 64 positions s at a
    // time. The decay matrix goes from `cb` straight into A fragments: a lane's 8 elements of each
    // 16-deep step sit at rows g, g + 8 and columns 2t, 2t + 1, 2t + 8, 2t + 9.
    //
    // Below the diagonal block, exp(cum_t − cum_s) = exp(cum_t − cum_m) · exp(cum_m − cum_s) with m the
    // last position of the s block: cum falls along the chunk, so s ≤ m < t makes both factors ≤ 1 (no
    // overflow; a factor that underflows leaves a product below f32's range anyway). That is one exp
    // per row and one per column (`weight_s`) instead of one per element; the diagonal block, where
    // no such m exists, takes one per element.
    let chunks_cb = cb.shape(1);
    let bg = b * groups + g;
    let mut weight_s = SharedMemory::<f32>::new(BLOCK);
    let mut row_factor = Array::<f32>::new(2usize);
    for sb in 0..tb + 1 {
        let s0 = ci * chunk + sb * BLOCK;
        let cum_m = cum[bh * len + usize::min(s0 + BLOCK - 1, chunk_end - 1)];
        if tid < BLOCK {
            let s = usize::min(s0 + tid, chunk_end - 1);
            let cum_here = cum[bh * len + s];
            let dt_here = dt[bh * len + s];
            cum_s[tid] = cum_here;
            dt_s[tid] = dt_here;
            weight_s[tid] = f32::exp(cum_m - cum_here) * dt_here;
        }
        #[unroll]
        for slot in 0..2usize {
            row_factor[slot] = f32::exp(cum_row[slot] - cum_m);
        }
        stage_vectors::<F, N>(x, &mut x_stage, x_row + s0 * x_t, x_t, chunk_end - s0, BLOCK, head_dim, x_ldv, threads);
        sync_cube();
        #[unroll]
        for kk in 0..BLOCK / DEPTH {
            // the 8 elements in fragment order: `cb` holds them so (pairs of adjacent columns, a plane's
            // load of a pair 256 contiguous bytes)
            let mut elements = Array::<f32>::new(8usize);
            #[unroll]
            for q in 0..4usize {
                let slot = comptime!(q % 2);
                let r = first_row + comptime!(slot * 8);
                let k = kk * DEPTH + pair + comptime!(8 * (q / 2));
                let products = cb[cb_pair_index(bg, chunks_cb, ci, tb, sb, plane, kk, q, lane, blocks)];
                if sb == tb {
                    #[unroll]
                    for e in 0..2usize {
                        let v = products[e] * f32::exp(cum_row[slot] - cum_s[k + e]) * dt_s[k + e];
                        // causal: s ≤ t (the masked values may be inf·0; the select drops them)
                        elements[comptime!(2 * q + e)] = select(k + e <= r, v, 0.0f32);
                    }
                } else {
                    #[unroll]
                    for e in 0..2usize {
                        elements[comptime!(2 * q + e)] = products[e] * row_factor[slot] * weight_s[k + e];
                    }
                }
            }
            let mut decay = Array::<Vector<F, NA>>::new(a_vectors);
            #[unroll]
            for i in 0..a_vectors {
                let mut values = Vector::<F, NA>::empty();
                #[unroll]
                for e in 0..a_width {
                    values[e] = F::cast_from(elements[comptime!(i * a_width + e)]);
                }
                decay[i] = values;
            }
            // x's rows are B's rows: `ldmatrix .trans`, two 8-column tiles each
            #[unroll]
            for j in 0..dim_tiles / 2 {
                let at = (kk * DEPTH + lane % 16usize) * x_ldv + (j * 2 + lane / 16usize) * COLS / VECTOR;
                let (first, second) = load_b_pair::<F, N, NB>(&mma, &x_stage, at, b_vectors, true);
                mma.execute_inplace(&decay, &first, acc.index_mut(comptime!(2 * j)));
                mma.execute_inplace(&decay, &second, acc.index_mut(comptime!(2 * j + 1)));
            }
        }
        sync_cube();
    }

    // + D·x in f32 (as mamba_ssm), then the rows inside the chunk to y in the input dtype: a lane's two
    // adjacent columns of a row as one 4-byte store
    let d_h = d[h * d.stride(0)];
    let x_base = b * x_pairs.stride(0) + h * x_pairs.stride(2);
    let x_t = x_pairs.stride(1);
    #[unroll]
    for j in 0..dim_tiles {
        #[unroll]
        for q in 0..2usize {
            let t = t0 + first_row + comptime!(q * 8);
            if t < chunk_end {
                let p = pair + comptime!(j * COLS);
                let xv = x_pairs[(x_base + t * x_t + p) / 2usize];
                let sums = accumulator_pair::<NC, N2>(acc.index(j), comptime!(2 * q), c_width);
                let mut out = Vector::<F, N2>::empty();
                #[unroll]
                for e in 0..2usize {
                    out[e] = F::cast_from(sums[e] + d_h * f32::cast_from(xv[e]));
                }
                y[(((b * len + t) * heads + h) * head_dim + p) / 2usize] = out;
            }
        }
    }
}

/// d_state columns per step of the chunk-state and output products: the largest multiple of 16 up to
/// 64 dividing `d_state` (a multiple of 16), so that no staged row reads past its own columns.
fn state_cols(d_state: usize) -> usize {
    (1..=STATE_COLS / DEPTH)
        .rev()
        .map(|steps| steps * DEPTH)
        .find(|cols| d_state.is_multiple_of(*cols))
        .unwrap_or(DEPTH)
}

/// # Shapes
/// As [`super::ssd_scan::launch`]: `x` `[batch, len, heads, head_dim]`, `dt` `[batch, len, heads]`, `b`, `c`
/// `[batch, len, groups, d_state]` (bf16 or f16); `a_log`, `d`, `dt_bias` `[heads]` f32; `initial`
/// `[batch, heads, head_dim, d_state]` f32. Returns `y` `[batch, len, heads, head_dim]` in x's dtype and the final
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
    // x, B and C are read as 16-byte vectors: views that are not rows of vectors are copied
    let in_vectors = |t: CubeTensor<R>| if rows_of_vectors(&t, VECTOR) { t } else { into_contiguous(t) };
    let (x, b, c) = (in_vectors(x), in_vectors(b), in_vectors(c));
    let [batch, len, heads, head_dim] = x.meta.shape().dims::<4>();
    let [_, _, groups, d_state] = b.meta.shape().dims::<4>();
    let chunks = len.div_ceil(chunk);
    let dtype = x.dtype;
    let empty_of = |shape: Vec<usize>, dtype: DType| {
        empty_device_contiguous_dtype(client.clone(), device.clone(), shape.into(), dtype)
    };
    let empty = |shape: Vec<usize>| empty_of(shape, DType::F32);
    let y = empty_of(vec![batch, len, heads, head_dim], dtype);
    let dt_out = empty(vec![batch * heads, len]);
    let cum = empty(vec![batch * heads, len]);
    let states = empty(vec![batch, heads, chunks, head_dim, d_state]);
    let entering = empty_of(vec![batch, heads, chunks, head_dim, d_state], dtype);
    let final_state = empty(vec![batch, heads, head_dim, d_state]);
    let cb = empty(vec![batch * groups, chunks, chunk, chunk]);
    let (lo, hi) = dt_limit.unwrap_or((0.0, f32::INFINITY));
    let blocks = chunk / BLOCK;
    let state_cols = state_cols(d_state);
    let planes_of = |rows: usize| CubeDim::new_2d(PLANE as u32, (rows / ROWS) as u32);
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
            CubeCount::Static((chunks * (d_state / state_cols)) as u32, (batch * heads) as u32, 1),
            planes_of(head_dim),
            VECTOR,
            2,
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
            VECTOR,
            2,
            b.into_tensor_arg(),
            c.clone().into_tensor_arg(),
            cb.clone().into_tensor_arg(),
            chunk,
            state_cols,
            dtype.into(),
        );
        chunk_scan_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static((chunks * blocks) as u32, (batch * heads) as u32, 1),
            planes_of(BLOCK),
            VECTOR,
            2,
            x.clone().into_tensor_arg(),
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
            state_cols,
            dtype.into(),
        );
    }
    (y, final_state)
}
