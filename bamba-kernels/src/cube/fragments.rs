//! What the kernels on `mma.sync` fragments share (the flash prefill attention, the SSD scan's chunk
//! products): the m16n8k16 shape with 16-bit operands and f32 accumulators, the check that a device
//! has it with `ldmatrix` and lays fragments out as PTX documents, zeroed accumulators, two B
//! fragments from one `ldmatrix` ×4, and the staging of operand rows in shared memory with 16-byte
//! loads and stores.
//!
//! The kernels rely on where `mma.sync` keeps each element (PTX ISA, "Matrix Fragments for
//! mma.m16n8k16"), lane `l = 4g + t`:
//! - A (16×16): element n at row `g + 8·(⌊n/2⌋ mod 2)`, column `2t + n mod 2 + 8·⌊n/4⌋`;
//! - B (16×8): element n at row `2t + n mod 2 + 8·⌊n/2⌋`, column `g`;
//! - accumulator (16×8): element n at row `g + 8·⌊n/2⌋`, column `2t + n mod 2`.
//!
//! [`has_fragments`] checks that layout once per process by asking the runtime
//! (`MmaDefinition::position_of_nth`) for every lane's elements.

use std::sync::OnceLock;

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use cubecl::cmma::{MatrixIdent, MmaDefinition};
use cubecl::features::MmaConfig;
use cubecl::ir::{ElemType, FloatKind};
use cubecl::prelude::*;
use cubecl::{CubeCount, CubeDim};

use super::ssd_step::plane_size_is;

/// The `mma.sync` shape: 16 rows (one plane's), 8 columns, 16 deep.
pub const ROWS: usize = 16;
pub const COLS: usize = 8;
pub const DEPTH: usize = 16;
/// Elements per 16-byte load of a 16-bit operand.
pub const VECTOR: usize = 8;
/// Threads per plane on the devices these kernels run on.
pub const PLANE: usize = 32;
/// Padding of a row staged in shared memory, in 16-bit elements (16 bytes): the 8 rows one `ldmatrix`
/// reads then start on different banks.
pub const PAD: usize = 8;

/// Whether this device runs m16n8k16 `mma` of `dtype` (bf16 or f16) accumulating in f32, with
/// `ldmatrix`, plane shuffles, 32-unit planes and the PTX fragment layout ([`layout_is_ptx`]).
pub fn has_fragments<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    if !matches!(dtype, DType::BF16 | DType::F16) {
        return false;
    }
    let kind = if dtype == DType::BF16 { FloatKind::BF16 } else { FloatKind::F16 };
    let mma = MmaConfig {
        a_type: dtype.into(),
        b_type: dtype.into(),
        cd_type: DType::F32.into(),
        m: ROWS as u32,
        n: COLS as u32,
        k: DEPTH as u32,
    };
    let features = client.features();
    plane_size_is(client, PLANE)
        && features.plane.contains(cubecl::features::Plane::Ops)
        && features.matmul.mma.contains(&mma)
        && features.matmul.ldmatrix.contains(&ElemType::Float(kind).into())
        && layout_is_ptx(client, dtype)
}

/// Every lane's (row, column) of the A (16×16), B (16×8) and accumulator (16×8) fragments, as the
/// runtime places them: 16 pairs per lane.
#[cube(launch)]
fn layout_probe_kernel<F: Float>(positions: &mut Array<u32>, #[define(F)] _dtype: StorageType) {
    let mma = MmaDefinition::<F, F, f32>::new(ROWS, COLS, DEPTH);
    let lane = UNIT_POS_PLANE;
    let base = lane as usize * 32;
    #[unroll]
    for n in 0..mma.elems_per_lane(MatrixIdent::A) {
        let (r, c) = mma.position_of_nth(lane, n as u32, MatrixIdent::A);
        positions[base + 2 * n] = r;
        positions[base + 2 * n + 1] = c;
    }
    #[unroll]
    for n in 0..mma.elems_per_lane(MatrixIdent::B) {
        let (r, c) = mma.position_of_nth(lane, n as u32, MatrixIdent::B);
        positions[base + 16 + 2 * n] = r;
        positions[base + 16 + 2 * n + 1] = c;
    }
    #[unroll]
    for n in 0..mma.elems_per_lane(MatrixIdent::Accumulator) {
        let (r, c) = mma.position_of_nth(lane, n as u32, MatrixIdent::Accumulator);
        positions[base + 24 + 2 * n] = r;
        positions[base + 24 + 2 * n + 1] = c;
    }
}

/// The PTX fragment layout of m16n8k16 with 16-bit A/B and f32 accumulators, lane `l` = 4g + t:
/// A element n at (g + 8·⌊n/2⌋ mod 2, 2t + n mod 2 + 8·⌊n/4⌋), B element n at (2t + n mod 2 + 8·⌊n/2⌋, g),
/// accumulator element n at (g + 8·⌊n/2⌋, 2t + n mod 2).
fn ptx_positions() -> Vec<u32> {
    let mut out = vec![0u32; PLANE * 32];
    for lane in 0..PLANE {
        let (g, t) = (lane / 4, lane % 4);
        let base = lane * 32;
        for n in 0..8 {
            out[base + 2 * n] = (g + 8 * ((n / 2) % 2)) as u32;
            out[base + 2 * n + 1] = (2 * t + n % 2 + 8 * (n / 4)) as u32;
        }
        for n in 0..4 {
            out[base + 16 + 2 * n] = (2 * t + n % 2 + 8 * (n / 2)) as u32;
            out[base + 16 + 2 * n + 1] = g as u32;
            out[base + 24 + 2 * n] = (g + 8 * (n / 2)) as u32;
            out[base + 24 + 2 * n + 1] = (2 * t + n % 2) as u32;
        }
    }
    out
}

/// Whether the runtime's m16n8k16 fragments are laid out as PTX documents them (checked once per
/// process and dtype on the device itself).
fn layout_is_ptx<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    static BF16: OnceLock<bool> = OnceLock::new();
    static F16: OnceLock<bool> = OnceLock::new();
    let cell = if dtype == DType::BF16 { &BF16 } else { &F16 };
    *cell.get_or_init(|| {
        let len = PLANE * 32;
        let unset: Vec<u8> = vec![0xff; len * 4];
        let handle = client.create_from_slice(&unset);
        layout_probe_kernel::launch::<R>(
            client,
            CubeCount::Static(1, 1, 1),
            CubeDim::new_1d(PLANE as u32),
            // SAFETY: the buffer holds `len` u32
            unsafe { ArrayArg::from_raw_parts(handle.clone(), len) },
            dtype.into(),
        );
        let Ok(bytes) = client.read_one(handle) else { return false };
        let positions: Vec<u32> = bytes.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        positions == ptx_positions()
    })
}

/// Two B fragments from one `ldmatrix` ×4 of `stage` (this lane's row at vector `at`; `.trans` when
/// `transpose`), as separate operands.
#[cube]
pub fn load_b_pair<F: Float, N: Size, NB: Size>(
    mma: &MmaDefinition<F, F, f32>,
    stage: &SharedMemory<Vector<F, N>>,
    at: usize,
    #[comptime] vectors: usize,
    #[comptime] transpose: bool,
) -> (Array<Vector<F, NB>>, Array<Vector<F, NB>>) {
    let pair = mma.load_matrix::<Vector<F, N>, NB>(&stage.slice(at, at + 1), MatrixIdent::B, 2 * vectors, transpose);
    let mut first = Array::<Vector<F, NB>>::new(vectors);
    let mut second = Array::<Vector<F, NB>>::new(vectors);
    #[unroll]
    for i in 0..vectors {
        first[i] = pair[i];
        second[i] = pair[vectors + i];
    }
    (first, second)
}

/// `Array` of accumulator vectors holding zeros.
#[cube]
pub fn zero_fragment<NC: Size>(#[comptime] vectors: usize) -> Array<Vector<f32, NC>> {
    let mut fragment = Array::<Vector<f32, NC>>::new(vectors);
    #[unroll]
    for i in 0..vectors {
        fragment[i] = Vector::<f32, NC>::new(0.0f32);
    }
    fragment
}

/// A lane's accumulator elements `first` and `first + 1` of one 16×8 tile (`first` even: the lane's
/// two adjacent columns `2t`, `2t + 1` of row `g` for 0, of row `g + 8` for 2), as one pair to
/// store 8 bytes at a time. `width` is the accumulator's vector size.
#[cube]
pub fn accumulator_pair<NC: Size, N2: Size>(
    tile: &Array<Vector<f32, NC>>,
    #[comptime] first: usize,
    #[comptime] width: usize,
) -> Vector<f32, N2> {
    let mut pair = Vector::<f32, N2>::empty();
    #[unroll]
    for e in 0..2usize {
        let n = comptime!(first + e);
        pair[e] = tile[comptime!(n / width)][comptime!(n % width)];
    }
    pair
}

/// Loads this unit's share of `rows × cols` of a 16-bit operand as 16-byte vectors (consecutive units
/// on consecutive vectors) into `values`, for staging where `ldmatrix` reads it: vector `j` is unit
/// `UNIT_POS + j·threads`'s, element
/// (r, k) being `src[base + r·row_stride + k]` in element offsets (`base` and `row_stride` multiples of
/// the vector). Rows at or past `valid_rows` repeat row `valid_rows − 1`: finite values the caller
/// zeroes by weight or mask, loaded without a branch per element. All of a unit's loads are issued
/// before any is used. [`store_vectors`] puts them in shared memory.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn load_vectors<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    values: &mut Array<Vector<F, N>>,
    base: usize,
    row_stride: usize,
    valid_rows: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] threads: usize,
) {
    let per_row = comptime!(cols / VECTOR);
    let total = comptime!(rows * cols / VECTOR);
    let last = valid_rows - 1;
    #[unroll]
    for j in 0..comptime!(total.div_ceil(threads)) {
        let i = usize::min(UNIT_POS as usize + j * threads, total - 1);
        let r = usize::min(i / per_row, last);
        values[j] = src[(base + r * row_stride) / VECTOR + i % per_row];
    }
}

/// Stores what [`load_vectors`] loaded (same `rows`, `cols`, `threads`) into `stage`, row r at vector
/// `r·ldv`, each vector times `scale[j]` (its row's weight, in f32) when `scaled`.
#[cube]
pub fn store_vectors<F: Float, N: Size>(
    values: &Array<Vector<F, N>>,
    stage: &mut SharedMemory<Vector<F, N>>,
    scale: &Array<f32>,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] ldv: usize,
    #[comptime] threads: usize,
    #[comptime] scaled: bool,
) {
    let per_row = comptime!(cols / VECTOR);
    let total = comptime!(rows * cols / VECTOR);
    #[unroll]
    for j in 0..comptime!(total.div_ceil(threads)) {
        let i = UNIT_POS as usize + j * threads;
        if comptime!(total % threads == 0) || i < total {
            let mut v = values[j];
            if scaled {
                v = Vector::cast_from(Vector::<f32, N>::cast_from(v) * Vector::new(scale[j]));
            }
            stage[(i / per_row) * ldv + i % per_row] = v;
        }
    }
}

/// [`load_vectors`] then [`store_vectors`], unscaled. Every unit of the cube (`threads`) calls it.
#[cube]
#[allow(clippy::too_many_arguments)]
pub fn stage_vectors<F: Float, N: Size>(
    src: &Tensor<Vector<F, N>>,
    stage: &mut SharedMemory<Vector<F, N>>,
    base: usize,
    row_stride: usize,
    valid_rows: usize,
    #[comptime] rows: usize,
    #[comptime] cols: usize,
    #[comptime] ldv: usize,
    #[comptime] threads: usize,
) {
    let mut values = Array::<Vector<F, N>>::new(comptime!((rows * cols / VECTOR).div_ceil(threads)));
    let no_scale = Array::<f32>::new(1usize);
    load_vectors::<F, N>(src, &mut values, base, row_stride, valid_rows, rows, cols, threads);
    store_vectors::<F, N>(&values, stage, &no_scale, rows, cols, ldv, threads, false);
}
