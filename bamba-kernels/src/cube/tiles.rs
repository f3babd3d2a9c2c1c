//! What the tensor-core kernels share: the 16×16×16 `cmma` tile, the 32-unit plane they are written
//! for, the padding of rows staged in shared memory, the check that a device has such tiles, a zeroed
//! f32 accumulator and the block product over two staged operands. The SSD scan's matmul form
//! (`ssd_chunked.rs`) uses all of it; the flash prefill attention (`flash_attention.rs`, on `mma.sync`
//! fragments instead) the plane and the padding.

use burn::tensor::DType;
use burn_cubecl::CubeRuntime;
use cubecl::features::MmaConfig;
use cubecl::prelude::*;

use super::ssd_step::plane_size_is;

/// Tile edge of one `cmma` product (m = n = k).
pub const TILE: usize = 16;
/// Threads per plane on the devices these kernels run on.
pub const PLANE: usize = 32;
/// Padding of a staged row: 16 bytes of 16-bit values, 16 bytes of f32 (rows of consecutive tiles
/// fall on different banks; 16-element tile offsets keep `wmma`'s 32-byte alignment).
pub const PAD: usize = 8;
pub const PAD_F32: usize = 4;

/// Whether this device multiplies 16×16×16 tiles of `dtype` accumulating in f32 and has 32-unit
/// planes: what the tensor-core kernels are written for.
pub fn has_f32_tiles<R: CubeRuntime>(client: &ComputeClient<R>, dtype: DType) -> bool {
    let tile = MmaConfig {
        a_type: dtype.into(),
        b_type: dtype.into(),
        cd_type: DType::F32.into(),
        m: TILE as u32,
        n: TILE as u32,
        k: TILE as u32,
    };
    plane_size_is(client, PLANE) && client.features().matmul.cmma.contains(&tile)
}

/// A 16×16 f32 accumulator of zeros.
#[cube]
pub fn zero_accumulator() -> cmma::Matrix<f32> {
    cmma::Matrix::<f32>::from_value(
        cmma::MatrixIdent::Accumulator,
        TILE,
        TILE,
        TILE,
        cmma::MatrixLayout::Undefined,
        0.0f32,
    )
}

/// Where a product's tiles sit in a shared-memory stage: tile `(kk, j)` (k step `kk`, output column
/// tile `j`) starts at element `start + kk·step_k + j·step_n`, rows `ld` elements apart, in `layout`.
#[derive(CubeType, Clone, Copy)]
pub struct StagedTiles {
    pub start: usize,
    #[cube(comptime)]
    pub step_k: usize,
    #[cube(comptime)]
    pub step_n: usize,
    #[cube(comptime)]
    pub ld: usize,
    #[cube(comptime)]
    pub layout: cmma::MatrixLayout,
}

/// `acc[j] += Σ_kk A(kk) · B(kk, j)` for `kk < k_tiles`, `j < n_tiles`: a plane's block product
/// from two staged operands (A's tiles do not depend on `j`, so its `step_n` is unused).
#[cube]
pub fn mma_staged<F: Float>(
    acc: &mut Sequence<cmma::Matrix<f32>>,
    a_stage: &SharedMemory<F>,
    a: StagedTiles,
    b_stage: &SharedMemory<F>,
    b: StagedTiles,
    #[comptime] k_tiles: usize,
    #[comptime] n_tiles: usize,
) {
    #[unroll]
    for kk in 0..k_tiles {
        let at = cmma::Matrix::<F>::from_slice(
            cmma::MatrixIdent::A,
            TILE,
            TILE,
            TILE,
            a.layout,
            &a_stage.slice(a.start + kk * a.step_k, a_stage.len()),
            a.ld as u32,
        );
        #[unroll]
        for j in 0..n_tiles {
            let bt = cmma::Matrix::<F>::from_slice(
                cmma::MatrixIdent::B,
                TILE,
                TILE,
                TILE,
                b.layout,
                &b_stage.slice(b.start + kk * b.step_k + j * b.step_n, b_stage.len()),
                b.ld as u32,
            );
            cmma::execute::<F, F, f32, f32>(&at, &bt, acc.index(j), acc.index(j));
        }
    }
}
