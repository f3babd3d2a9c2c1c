//! Causal prefill attention in one launch on tensor cores (`cmma`), flash-attention style: the
//! scores never leave the chip. For 16-bit operands on devices with 16×16×16 tiles accumulating in
//! f32 and 32-unit planes (CUDA).
//!
//! The materialized path (two batched products around a softmax kernel, in query blocks) writes,
//! normalizes and reads back `rep · q_len × k_len` scores per KV head: at 4096 tokens and 32 heads
//! about 0.7 GB in 16-bit, 1.14 ms on the H200 against SDPA's 0.26 ms (benches/results, session 13).
//! Here a cube takes 64 queries of one head (a 16-row tile per plane) and walks the keys its last
//! query sees in blocks of 64:
//!
//! 1. stage the key and value block in shared memory (16-byte loads and stores);
//! 2. `S = Q · Kᵀ` on tensor cores, into shared memory in f32 (each plane only its own 16 rows);
//! 3. softmax in f32 (two units per row, interleaved columns) against a reference row maximum `m`:
//!    `P = exp(scale·S − m)`, rounded to the operands' dtype as the materialized path rounds its
//!    probabilities, and the row sum `l` in f32;
//! 4. `O += P · V` on tensor cores, the output accumulating in f32 fragments across key blocks.
//!
//! `m` moves only when a block's scores pass it by more than [`RESCALE_MARGIN`] (so probabilities
//! stay below e^8); then the rows' output so far is scaled by `exp(m_old − m)` through shared memory
//! (`wmma` fragments have no row layout to scale in place). After the first block that is rare.
//! At the end each row is divided by `l`.
//!
//! Cubes take query blocks from the last one down, so that the longest (they see the most keys) start
//! first. Rows of the last block past the prompt, and keys past the cache, are staged as zeros
//! and never written or weighted.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::tiles::{has_f32_tiles, zero_accumulator, PAD, PAD_F32, PLANE, TILE};

/// Queries per cube (one 16-row tile per plane) and keys per step.
const BLOCK: usize = 64;
/// Units per cube.
const UNITS: usize = PLANE * (BLOCK / TILE);
/// Most head_dim this path takes: each plane keeps `head_dim / 16` output accumulators.
const MAX_HEAD_DIM: usize = 128;
/// How far (in scaled-score units) a row's scores may pass its reference maximum before the
/// maximum moves and the output accumulated so far is rescaled: probabilities stay below e^8.
const RESCALE_MARGIN: f32 = 8.0;
/// Elements per 16-byte load of a 16-bit operand.
const VECTOR: usize = 8;

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Prefill attentions that ran on this path since the process started (tests check it was taken).
pub fn runs() -> u64 {
    RUNS.load(Ordering::Relaxed)
}

/// Whether the flash path is on: off unless `BAMBA_FLASH_ATTENTION=1` or [`set_enabled`]. On the
/// H200 it is still slower than the materialized path it would replace (4096 tokens, 32/8 heads ×
/// 128: 2.06 ms against 1.15 ms; pp4096 of the Llama shape 27,311 against 31,468 tok/s; session 15),
/// so it is opt-in until it is faster.
fn enabled() -> bool {
    switch().load(Ordering::Relaxed)
}

fn switch() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(std::env::var("BAMBA_FLASH_ATTENTION").as_deref() == Ok("1")))
}

/// Turns the flash path on or off for this process (tests and benches; the default is the environment's).
pub fn set_enabled(on: bool) {
    switch().store(on, Ordering::Relaxed);
}

/// Whether a causal attention of this dtype and head_dim runs here: the path enabled ([`set_enabled`]), 16-bit
/// operands with f32-accumulating 16×16×16 tiles, 32-unit planes, and `head_dim` a multiple of 16
/// up to 128. (An explicit mask, i.e. left padding, takes the materialized path.)
pub fn applies<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType, head_dim: usize) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) || !enabled() {
        return false;
    }
    has_f32_tiles(client, dtype)
        && client.features().plane.contains(cubecl::features::Plane::Ops)
        && head_dim % TILE == 0
        && head_dim <= MAX_HEAD_DIM
}

/// Copies `64 × head_dim` of a contiguous `[.., len, head_dim]` operand, from row `first`, into
/// `stage` (row stride `ld` elements), 16 bytes per load and per store (consecutive lanes on
/// consecutive 16 bytes: no bank conflicts; scalar 2-byte stores had four-way conflicts); rows at or
/// past `len` become zeros. Unrolled so that all of a unit's loads are in flight before its first
/// store. Every unit of the cube calls it.
#[cube]
fn stage_rows<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    stage: &mut SharedMemory<Vector<F, N>>,
    base: usize,
    first: usize,
    len: usize,
    #[comptime] head_dim: usize,
    #[comptime] ld: usize,
) {
    let per_row = comptime!(head_dim / VECTOR);
    let per_unit = comptime!((BLOCK * head_dim / VECTOR).div_ceil(UNITS));
    let mut values = Array::<Vector<F, N>>::new(per_unit);
    #[unroll]
    for j in 0..per_unit {
        let i = UNIT_POS as usize + j * UNITS;
        let r = i / per_row;
        let mut v = Vector::<F, N>::new(F::new(0.0));
        if i < BLOCK * per_row && first + r < len {
            v = src[(base + (first + r) * head_dim) / VECTOR + i % per_row];
        }
        values[j] = v;
    }
    #[unroll]
    for j in 0..per_unit {
        let i = UNIT_POS as usize + j * UNITS;
        if i < BLOCK * per_row {
            stage[(i / per_row) * (ld / VECTOR) + i % per_row] = values[j];
        }
    }
}

/// The 16×16 fragment at element `start` of a stage of 16-byte vectors whose rows are `ld`
/// elements apart (`start` a multiple of the vector).
#[cube]
fn stage_fragment<F: Float, N: Size>(
    stage: &SharedMemory<Vector<F, N>>,
    start: usize,
    #[comptime] ident: cmma::MatrixIdent,
    #[comptime] layout: cmma::MatrixLayout,
    #[comptime] ld: usize,
) -> cmma::Matrix<F> {
    // SAFETY: loaded in full below
    let fragment = unsafe { cmma::Matrix::<F>::uninitialized(ident, TILE, TILE, TILE, layout) };
    cmma::load(&fragment, &stage.slice(start / VECTOR, BLOCK * ld / VECTOR), ld as u32);
    fragment
}

#[cube(launch_unchecked)]
#[allow(clippy::too_many_arguments)]
fn flash_attention_kernel<F: Float, N: Size>(
    q: &Tensor<Vector<F, N>>,
    k: &Tensor<Vector<F, N>>,
    v: &Tensor<Vector<F, N>>,
    out: &mut Tensor<F>,
    query_offset: u32,
    scale: f32,
    #[comptime] head_dim: usize,
    #[define(F)] _dtype: StorageType,
) {
    let heads = q.shape(1);
    let q_len = q.shape(2);
    let kv_heads = k.shape(1);
    let k_len = k.shape(2);
    // the heaviest blocks (most keys) first
    let qb = q_len.div_ceil(BLOCK) - 1 - CUBE_POS_X as usize;
    let bh = CUBE_POS_Y as usize;
    let b = bh / heads;
    let h = bh % heads;
    let kv = b * kv_heads + h / (heads / kv_heads);
    let plane = UNIT_POS_Y as usize;
    let lane = UNIT_POS_X as usize;
    let q0 = qb * BLOCK;
    let kv_ld = comptime!(head_dim + PAD);
    let s_ld = comptime!(BLOCK + PAD_F32);
    let p_ld = comptime!(BLOCK + PAD);
    let tiles = comptime!(head_dim / TILE);
    // Key and value stages hold 16-byte vectors; fragments load from them with strides in elements.
    let mut ks = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * kv_ld / VECTOR, 32usize);
    let mut vs = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * kv_ld / VECTOR, 32usize);
    let mut ss = SharedMemory::<f32>::new_aligned(BLOCK * s_ld, 32usize);
    let mut ps = SharedMemory::<F>::new_aligned(BLOCK * p_ld, 32usize);
    let mut row_factor = SharedMemory::<f32>::new(BLOCK);

    // This plane's 16 query rows as A fragments, staged through the key buffer.
    stage_rows::<F, N>(q, &mut ks, bh * q_len * head_dim, q0, q_len, head_dim, kv_ld);
    sync_cube();
    let mut qf = Sequence::<cmma::Matrix<F>>::new();
    #[unroll]
    for kk in 0..tiles {
        qf.push(stage_fragment::<F, N>(
            &ks,
            plane * TILE * kv_ld + kk * TILE,
            cmma::MatrixIdent::A,
            cmma::MatrixLayout::RowMajor,
            kv_ld,
        ));
    }
    sync_cube();

    // Softmax roles: unit (row r, half) reads columns 2j + half of row r.
    let r = lane % TILE;
    let half = lane / TILE;
    let my_row = plane * TILE + r;
    let q_pos = query_offset as usize + q0 + my_row;
    // The row's reference maximum (probabilities are exp(scale·s − m)) and its sum of them.
    let mut m = f32::new(-1.0e30);
    let mut l = 0.0f32;
    let last_query = query_offset as usize + usize::min(q0 + BLOCK, q_len);
    let key_end = usize::min(k_len, last_query);
    let kv_base = kv * k_len * head_dim;
    // S's accumulators (a 16×64 block of scores, cleared per key block) and the output's (16 × head_dim)
    let mut sacc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..BLOCK / TILE {
        sacc.push(zero_accumulator());
    }
    let mut acc = Sequence::<cmma::Matrix<f32>>::new();
    #[unroll]
    for _ in 0..tiles {
        acc.push(zero_accumulator());
    }
    let mut k0 = 0usize;
    while k0 < key_end {
        stage_rows::<F, N>(k, &mut ks, kv_base, k0, k_len, head_dim, kv_ld);
        stage_rows::<F, N>(v, &mut vs, kv_base, k0, k_len, head_dim, kv_ld);
        sync_cube();

        // S = Q · Kᵀ for the plane's 16 rows: Kᵀ's element (d, key) sits at ks[key·kv_ld + d]
        #[unroll]
        for j in 0..BLOCK / TILE {
            cmma::fill(sacc.index(j), 0.0f32);
        }
        #[unroll]
        for kk in 0..tiles {
            #[unroll]
            for j in 0..BLOCK / TILE {
                let kt = stage_fragment::<F, N>(
                    &ks,
                    j * TILE * kv_ld + kk * TILE,
                    cmma::MatrixIdent::B,
                    cmma::MatrixLayout::ColMajor,
                    kv_ld,
                );
                cmma::execute::<F, F, f32, f32>(qf.index(kk), &kt, sacc.index(j), sacc.index(j));
            }
        }
        #[unroll]
        for j in 0..BLOCK / TILE {
            cmma::store(
                &mut ss.slice_mut(plane * TILE * s_ld + j * TILE, BLOCK * s_ld),
                sacc.index(j),
                s_ld as u32,
                cmma::MatrixLayout::RowMajor,
            );
        }
        sync_plane();

        // Softmax against the reference maximum. It moves only when a score passes it by more than
        // RESCALE_MARGIN (probabilities up to e^8 are exact enough in f32 sums and 16-bit operands),
        // so that the accumulated output rarely needs rescaling (as FlashAttention-3 does).
        let mut scores = Array::<f32>::new(comptime!(BLOCK / 2));
        let mut block_max = f32::new(-1.0e30);
        #[unroll]
        for j in 0..BLOCK / 2 {
            let key = k0 + 2 * j + half;
            let mut s = f32::new(-1.0e30);
            if key <= q_pos && key < k_len {
                s = ss[my_row * s_ld + 2 * j + half] * scale;
            }
            scores[j] = s;
            block_max = f32::max(block_max, s);
        }
        block_max = f32::max(block_max, plane_shuffle_xor(block_max, TILE as u32));
        let mut factor = 1.0f32;
        let moves = block_max > m + RESCALE_MARGIN;
        if moves {
            factor = f32::exp(m - block_max);
            m = block_max;
        }
        let mut sum = 0.0f32;
        #[unroll]
        for j in 0..BLOCK / 2 {
            let key = k0 + 2 * j + half;
            let mut p = 0.0f32;
            if key <= q_pos && key < k_len {
                p = f32::exp(scores[j] - m);
            }
            sum += p;
            ps[my_row * p_ld + 2 * j + half] = F::cast_from(p);
        }
        sum += plane_shuffle_xor(sum, TILE as u32);
        l = l * factor + sum;
        if half == 0 {
            row_factor[my_row] = factor;
        }
        // the plane's rows whose maximum moved: their output so far scaled by `factor`, through
        // shared memory (the score stage, free now) half a row of tiles at a time
        if plane_any(moves) && k0 > 0 {
            sync_plane();
            scale_rows(&mut acc, &mut ss, &row_factor, plane, s_ld, tiles);
        }
        sync_plane();

        // O += P · V
        #[unroll]
        for kk in 0..BLOCK / TILE {
            let a = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::A,
                TILE,
                TILE,
                TILE,
                cmma::MatrixLayout::RowMajor,
                &ps.slice(plane * TILE * p_ld + kk * TILE, BLOCK * p_ld),
                p_ld as u32,
            );
            #[unroll]
            for j in 0..tiles {
                let vt = stage_fragment::<F, N>(
                    &vs,
                    kk * TILE * kv_ld + j * TILE,
                    cmma::MatrixIdent::B,
                    cmma::MatrixLayout::RowMajor,
                    kv_ld,
                );
                cmma::execute::<F, F, f32, f32>(&a, &vt, acc.index(j), acc.index(j));
            }
        }
        // the next block overwrites every stage
        sync_cube();
        k0 += BLOCK;
    }

    // normalize by each row's sum and write the rows inside the prompt, 4 tiles at a time
    if half == 0 {
        row_factor[my_row] = 1.0f32 / l;
    }
    #[unroll]
    for part in 0..comptime!(tiles.div_ceil(BLOCK / TILE)) {
        sync_plane();
        store_tiles(&acc, &mut ss, plane, part, s_ld, tiles);
        sync_plane();
        let cols = comptime!(usize::min(BLOCK, head_dim));
        #[unroll]
        for i in 0..TILE * cols / PLANE {
            let at = lane + i * PLANE;
            let row = plane * TILE + at / cols;
            let col = part * BLOCK + at % cols;
            if q0 + row < q_len && col < head_dim {
                out[(bh * q_len + q0 + row) * head_dim + col] =
                    F::cast_from(ss[row * s_ld + at % cols] * row_factor[row]);
            }
        }
    }
}

/// Stores output tiles `4·part .. 4·part + 4` (those below `tiles`) side by side into the plane's 16
/// rows of `stage` (row stride `ld`).
#[cube]
fn store_tiles(
    acc: &Sequence<cmma::Matrix<f32>>,
    stage: &mut SharedMemory<f32>,
    plane: usize,
    #[comptime] part: usize,
    #[comptime] ld: usize,
    #[comptime] tiles: usize,
) {
    #[unroll]
    for j in 0..BLOCK / TILE {
        let t = part * (BLOCK / TILE) + j;
        if t < tiles {
            cmma::store(
                &mut stage.slice_mut(plane * TILE * ld + j * TILE, BLOCK * ld),
                acc.index(t),
                ld as u32,
                cmma::MatrixLayout::RowMajor,
            );
        }
    }
}

/// Multiplies row `r` of the plane's output accumulators by `row_factor[plane·16 + r]`: `wmma`
/// fragments have no row layout to scale in place, so 4 tiles at a time go through `stage`.
#[cube]
fn scale_rows(
    acc: &mut Sequence<cmma::Matrix<f32>>,
    stage: &mut SharedMemory<f32>,
    row_factor: &SharedMemory<f32>,
    plane: usize,
    #[comptime] ld: usize,
    #[comptime] tiles: usize,
) {
    let lane = UNIT_POS_X as usize;
    #[unroll]
    for part in 0..comptime!(tiles.div_ceil(BLOCK / TILE)) {
        store_tiles(acc, stage, plane, part, ld, tiles);
        sync_plane();
        #[unroll]
        for i in 0..TILE * BLOCK / PLANE {
            let at = lane + i * PLANE;
            let row = plane * TILE + at / BLOCK;
            stage[row * ld + at % BLOCK] *= row_factor[row];
        }
        sync_plane();
        #[unroll]
        for j in 0..BLOCK / TILE {
            let t = part * (BLOCK / TILE) + j;
            if t < tiles {
                cmma::load_with_layout(
                    acc.index(t),
                    &stage.slice(plane * TILE * ld + j * TILE, BLOCK * ld),
                    ld as u32,
                    cmma::MatrixLayout::RowMajor,
                );
            }
        }
        sync_plane();
    }
}

/// Causal attention, query `i` at absolute position `query_offset + i` seeing keys
/// `0 ..= query_offset + i`. Call only where [`applies`] holds.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`, `k`, `v`: `[batch, kv_heads, k_len, head_dim]` (bf16 or
///   f16) → like `q`, contiguous
pub fn launch<R: CubeRuntime>(
    q: CubeTensor<R>,
    k: CubeTensor<R>,
    v: CubeTensor<R>,
    query_offset: usize,
) -> CubeTensor<R> {
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let client = q.client.clone();
    let [batch, heads, q_len, head_dim] = q.meta.shape().dims::<4>();
    let out = empty_device_contiguous_dtype(client.clone(), q.device.clone(), q.meta.shape().clone(), q.dtype);
    if batch * heads * q_len == 0 {
        return out;
    }
    let dtype = q.dtype;
    let scale = (head_dim as f32).powf(-0.5);
    RUNS.fetch_add(1, Ordering::Relaxed);
    // SAFETY: all three operands are contiguous with head_dim a multiple of 16 (so of the 8-element
    // vector); staged rows are guarded against q_len and k_len, and output rows against q_len.
    unsafe {
        flash_attention_kernel::launch_unchecked::<R>(
            &client,
            CubeCount::Static(q_len.div_ceil(BLOCK) as u32, (batch * heads) as u32, 1),
            CubeDim::new_2d(PLANE as u32, (BLOCK / TILE) as u32),
            VECTOR,
            q.into_tensor_arg(),
            k.into_tensor_arg(),
            v.into_tensor_arg(),
            out.clone().into_tensor_arg(),
            query_offset as u32,
            scale,
            head_dim,
            dtype.into(),
        );
    }
    out
}
