//! Causal prefill attention in one launch on tensor cores, flash-attention style: the scores never
//! leave the chip. For 16-bit operands on CUDA (`mma.sync` m16n8k16 with f32 accumulation, `ldmatrix`).
//!
//! The materialized path (two batched products around a softmax kernel, in query blocks) writes,
//! normalizes and reads back `rep · q_len × k_len` scores per KV head: at 4096 tokens and 32 heads
//! about 0.7 GB in 16-bit.
//! Here a cube takes 64 queries of one head (16 rows per plane) and walks the keys its last query
//! sees in blocks of 64, as FlashAttention-2 does:
//!
//! 1. stage the key and value block in shared memory (16-byte loads and stores);
//! 2. `S = Q · Kᵀ` with the plane's query fragments kept in registers, the key fragments loaded by
//!    `ldmatrix` straight from the staged rows;
//! 3. softmax on the accumulators themselves: a lane holds 2 rows × 16 of the block's columns, so a
//!    row's maximum is 16 local comparisons and two shuffles across its 4 lanes. The running maximum
//!    moves, the output so far is scaled in registers, `P = exp(scale·S − m)` in f32;
//! 4. `O += P · V`: the accumulators of two 8-key tiles are, element for element, the A fragment of a
//!    16-key step, so `P` is rounded to the operands' dtype (as the materialized path rounds its
//!    probabilities) without leaving registers; V's fragments come from `ldmatrix .trans`.
//!
//! At the end each row is divided by its sum (kept per lane, added across the 4 lanes once).
//!
//! Step 4 and the softmax rely on where `mma.sync` keeps each element (PTX ISA, "Matrix Fragments
//! for mma.m16n8k16", restated in `fragments.rs`), which [`applies`] checks once per process.
//!
//! Cubes take query blocks from the last one down, so that the longest (they see the most keys) start
//! first. Rows of the last block past the prompt, and keys past the cache, are staged as copies of
//! the last row (no per-element select) and never written or weighted.
//!
//! It holds 229 registers per thread, so 2 cubes per SM: latency-bound, with the key/value loads not
//! yet overlapping the math (times in backends.md). `mma.sync` fragments, unlike `wmma` tiles, have a
//! documented layout, which is what lets the softmax work on the accumulators in registers.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::OnceLock;

use burn::tensor::DType;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::fragments::{
    has_fragments, load_b_pair, stage_vectors, zero_fragment, COLS, DEPTH, PAD, PLANE, ROWS, VECTOR,
};

/// Queries per cube and keys per step.
const BLOCK: usize = 64;
/// Units per cube.
const UNITS: usize = PLANE * (BLOCK / ROWS);
/// Most head_dim this path takes: each lane keeps `head_dim / 2` output accumulators.
const MAX_HEAD_DIM: usize = 128;
/// A masked score: below any real one. `exp` of it against a real maximum is 0; a row whose keys so
/// far were all masked sums exp(0) of them, which the first real maximum's factor zeroes.
const MASKED: f32 = -1.0e30;

static RUNS: AtomicU64 = AtomicU64::new(0);

/// Prefill attentions that ran on this path since the process started (tests check it was taken).
pub fn runs() -> u64 {
    RUNS.load(Ordering::Relaxed)
}

/// Whether the flash path is on: on unless [`set_enabled`]`(false)` (the materialized path stays for
/// comparison and for padded batches).
fn enabled() -> bool {
    switch().load(Ordering::Relaxed)
}

fn switch() -> &'static AtomicBool {
    static ON: OnceLock<AtomicBool> = OnceLock::new();
    ON.get_or_init(|| AtomicBool::new(true))
}

/// Turns the flash path on or off for this process (on by default).
/// Returns whether it was on.
pub fn set_enabled(on: bool) -> bool {
    switch().swap(on, Ordering::Relaxed)
}

/// Whether a causal attention of this dtype and head_dim runs here: the path enabled ([`set_enabled`]),
/// 16-bit operands with m16n8k16 `mma` accumulating in f32 and `ldmatrix`, 32-unit planes, the fragment
/// layout this kernel is written for ([`has_fragments`]), and `head_dim` a multiple of 16 up to 128.
/// (An explicit mask, i.e. left padding, takes the materialized path.)
pub fn applies<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType, head_dim: usize) -> bool {
    enabled() && head_dim % DEPTH == 0 && head_dim <= MAX_HEAD_DIM && has_fragments(client, dtype)
}

/// Stages `64 × head_dim` of a contiguous `[.., len, head_dim]` operand from row `first` (rows at or
/// past `len` repeat row `len − 1`: finite values that the causal mask, the key mask and the output
/// guard all ignore), rows `ldv` vectors apart. Every unit of the cube calls it.
#[cube]
fn stage_rows<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    stage: &mut SharedMemory<Vector<F, N>>,
    base: usize,
    first: usize,
    len: usize,
    #[comptime] head_dim: usize,
    #[comptime] ldv: usize,
) {
    stage_vectors::<F, N>(src, stage, base + first * head_dim, head_dim, len - first, BLOCK, head_dim, ldv, UNITS);
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
    let mma = MmaDefinition::<F, F, f32>::new(ROWS, COLS, DEPTH);
    let a_width = mma.vector_size(MatrixIdent::A);
    let c_width = mma.vector_size(MatrixIdent::Accumulator);
    let size!(NA) = a_width;
    let size!(NB) = mma.vector_size(MatrixIdent::B);
    let size!(NC) = c_width;
    let a_vectors = mma.vectors_per_lane(MatrixIdent::A);
    let b_vectors = mma.vectors_per_lane(MatrixIdent::B);
    let c_vectors = mma.vectors_per_lane(MatrixIdent::Accumulator);

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
    // staged rows: `ld` elements, `ldv` 16-byte vectors apart (the padding puts the 8 rows one
    // `ldmatrix` reads on different banks)
    let ld = comptime!(head_dim + PAD);
    let ldv = comptime!(ld / VECTOR);
    let dim_steps = comptime!(head_dim / DEPTH);
    let dim_tiles = comptime!(head_dim / COLS);
    let key_tiles = comptime!(BLOCK / COLS);
    let mut ks = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * ldv, 16usize);
    let mut vs = SharedMemory::<Vector<F, N>>::new_aligned(BLOCK * ldv, 16usize);

    // This plane's 16 query rows as A fragments, staged through the key buffer (`ldmatrix` ×4:
    // lanes 0–15 give rows 0–15 at column 0, lanes 16–31 the same rows at column 8).
    stage_rows::<F, N>(q, &mut ks, bh * q_len * head_dim, q0, q_len, head_dim, ldv);
    sync_cube();
    let mut qf = Sequence::<Array<Vector<F, NA>>>::new();
    #[unroll]
    for kk in 0..dim_steps {
        let at = (plane * ROWS + lane % 16usize) * ldv + (kk * DEPTH + (lane / 16) * 8usize) / VECTOR;
        qf.push(mma.load_matrix::<Vector<F, N>, NA>(&ks.slice(at, at + 1), MatrixIdent::A, a_vectors, false));
    }
    sync_cube();

    // A lane holds rows g and g + 8 of the plane's 16 (slots 0 and 1), columns 2t and 2t + 1 of
    // every 8-wide tile.
    let g = lane / 4usize;
    let t = lane % 4usize;
    let row_pos = query_offset as usize + q0 + plane * ROWS + g;
    // per slot: the running maximum of scale·s and this lane's share of the row sum
    let mut m = Array::<f32>::new(2usize);
    let mut l = Array::<f32>::new(2usize);
    #[unroll]
    for slot in 0..2usize {
        m[slot] = MASKED;
        l[slot] = 0.0f32;
    }
    let last_query = query_offset as usize + usize::min(q0 + BLOCK, q_len);
    let key_end = usize::min(k_len, last_query);
    let kv_base = kv * k_len * head_dim;
    let mut o = Sequence::<Array<Vector<f32, NC>>>::new();
    #[unroll]
    for _ in 0..dim_tiles {
        o.push(zero_fragment::<NC>(c_vectors));
    }
    let mut k0 = 0usize;
    while k0 < key_end {
        stage_rows::<F, N>(k, &mut ks, kv_base, k0, k_len, head_dim, ldv);
        stage_rows::<F, N>(v, &mut vs, kv_base, k0, k_len, head_dim, ldv);
        sync_cube();

        // S = Q · Kᵀ, 8 keys per tile. Kᵀ's B fragments are K's rows as they are, two 16-deep steps
        // per `ldmatrix` ×4 (lanes 0–7 give keys 0–7 at column 0, lanes 8–15 at 8, 16–23 at 16,
        // 24–31 at 24).
        let mut s = Sequence::<Array<Vector<f32, NC>>>::new();
        #[unroll]
        for j in 0..key_tiles {
            let mut acc = zero_fragment::<NC>(c_vectors);
            #[unroll]
            for kk in 0..dim_steps / 2 {
                let at = (j * COLS + lane % 8usize) * ldv + (kk * 2 * DEPTH + (lane / 8usize) * 8usize) / VECTOR;
                let (first, second) = load_b_pair::<F, N, NB>(&mma, &ks, at, b_vectors, false);
                mma.execute_inplace(qf.index(comptime!(2 * kk)), &first, &mut acc);
                mma.execute_inplace(qf.index(comptime!(2 * kk + 1)), &second, &mut acc);
            }
            if comptime!(dim_steps % 2 == 1) {
                // an odd step count (head_dim 80): the last step alone, `ldmatrix` ×2
                let kk = comptime!(dim_steps - 1);
                let at = (j * COLS + lane % 8usize) * ldv + (kk * DEPTH + ((lane / 8usize) % 2usize) * 8usize) / VECTOR;
                let kt = mma.load_matrix::<Vector<F, N>, NB>(&ks.slice(at, at + 1), MatrixIdent::B, b_vectors, false);
                mma.execute_inplace(qf.index(kk), &kt, &mut acc);
            }
            s.push(acc);
        }

        // Blocks that reach past the cube's first query or past the keys: masked scores to MASKED.
        // Most blocks do not, and skip this.
        if k0 + BLOCK > query_offset as usize + q0 || k0 + BLOCK > k_len {
            #[unroll]
            for j in 0..key_tiles {
                #[unroll]
                for i in 0..c_vectors {
                    let mut values = s.index(j)[i];
                    #[unroll]
                    for e in 0..c_width {
                        let n = comptime!(i * c_width + e);
                        let key = k0 + j * COLS + 2usize * t + comptime!(n % 2);
                        let outside = key > row_pos + comptime!(n / 2) * 8usize || key >= k_len;
                        values[e] = select(outside, MASKED, values[e]);
                    }
                    s.index_mut(j)[i] = values;
                }
            }
        }
        // Each slot's block maximum across the row's 4 lanes, the running maximum (scaled) and the
        // factor that takes what was summed so far to it. A row with every key so far masked sums
        // exp(0) of its masked scores, which the first real maximum multiplies by exp(MASKED·scale − m) = 0.
        let mut block_max = Array::<f32>::new(2usize);
        block_max[0usize] = MASKED;
        block_max[1usize] = MASKED;
        #[unroll]
        for j in 0..key_tiles {
            #[unroll]
            for i in 0..c_vectors {
                let values = s.index(j)[i];
                #[unroll]
                for e in 0..c_width {
                    let slot = comptime!((i * c_width + e) / 2);
                    block_max[slot] = f32::max(block_max[slot], values[e]);
                }
            }
        }
        let mut factor = Array::<f32>::new(2usize);
        #[unroll]
        for slot in 0..2usize {
            let mut x = block_max[slot];
            x = f32::max(x, plane_shuffle_xor(x, 1u32));
            x = f32::max(x, plane_shuffle_xor(x, 2u32));
            let moved = f32::max(m[slot], x * scale);
            factor[slot] = f32::exp(m[slot] - moved);
            m[slot] = moved;
            l[slot] *= factor[slot];
        }
        // the output so far, at the new maximum
        #[unroll]
        for j in 0..dim_tiles {
            #[unroll]
            for i in 0..c_vectors {
                let mut values = o.index(j)[i];
                #[unroll]
                for e in 0..c_width {
                    values[e] *= factor[comptime!((i * c_width + e) / 2)];
                }
                o.index_mut(j)[i] = values;
            }
        }

        // O += P · V, 16 keys per step: A element n of step kk is element n mod 4 of score tile
        // 2kk + ⌊n/4⌋, P = exp(scale·s − m). V's B fragments: `ldmatrix .trans` ×4 for two 8-wide
        // output tiles (lanes 0–15 give keys 0–15 at the first tile's column, 16–31 at the second's).
        #[unroll]
        for kk in 0..BLOCK / DEPTH {
            let mut p = Array::<Vector<F, NA>>::new(a_vectors);
            #[unroll]
            for i in 0..a_vectors {
                let mut values = Vector::<F, NA>::empty();
                #[unroll]
                for e in 0..a_width {
                    let n = comptime!(i * a_width + e);
                    let cn = comptime!(n % 4);
                    let slot = comptime!(cn / 2);
                    let x = s.index(comptime!(2 * kk + n / 4))[comptime!(cn / c_width)][comptime!(cn % c_width)];
                    let prob = f32::exp(x * scale - m[slot]);
                    l[slot] += prob;
                    values[e] = F::cast_from(prob);
                }
                p[i] = values;
            }
            #[unroll]
            for j in 0..dim_tiles / 2 {
                let at = (kk * DEPTH + lane % 16usize) * ldv + (j * 2 + lane / 16usize) * COLS / VECTOR;
                let (first, second) = load_b_pair::<F, N, NB>(&mma, &vs, at, b_vectors, true);
                mma.execute_inplace(&p, &first, o.index_mut(comptime!(2 * j)));
                mma.execute_inplace(&p, &second, o.index_mut(comptime!(2 * j + 1)));
            }
        }
        // the next block overwrites both stages
        sync_cube();
        k0 += BLOCK;
    }

    // each row's sum across its 4 lanes, then the rows inside the prompt divided by it
    let mut inverse = Array::<f32>::new(2usize);
    #[unroll]
    for slot in 0..2usize {
        let mut sum = l[slot];
        sum += plane_shuffle_xor(sum, 1u32);
        sum += plane_shuffle_xor(sum, 2u32);
        inverse[slot] = 1.0f32 / sum;
    }
    #[unroll]
    for j in 0..dim_tiles {
        #[unroll]
        for i in 0..c_vectors {
            let values = o.index(j)[i];
            #[unroll]
            for e in 0..c_width {
                let n = comptime!(i * c_width + e);
                let row = plane * ROWS + g + comptime!(n / 2) * 8;
                if q0 + row < q_len {
                    out[(bh * q_len + q0 + row) * head_dim + j * COLS + 2usize * t + comptime!(n % 2)] =
                        F::cast_from(values[e] * inverse[comptime!(n / 2)]);
                }
            }
        }
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
            CubeDim::new_2d(PLANE as u32, (BLOCK / ROWS) as u32),
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
