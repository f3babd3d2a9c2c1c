//! Burn's matmul, with the choice between its autotuned and its default kernel made here.
//!
//! Burn 0.21 autotunes every matmul per shape bucket (m, n, k anchored to powers of two). On CUDA
//! each candidate is a cubek kernel that NVRTC compiles in 1–3 s, and a bucket tries about six: the
//! first generation on the tiny embedded model spent 130 of its 137 s there (H200, 2026-12-01, 9
//! buckets, 55 kernels compiled). Tuning pays where the products are large and repeat: the Bamba-9B
//! shape's 64-row decode step takes 34 ms tuned and 80 ms with the default kernel, pp4096 7,177 vs
//! 3,588 tok/s on the H200. So products of fewer than
//! [`AUTOTUNE_MIN_MACS`] multiply-adds run Burn's default kernel (tensor cores, no tuning: one compile
//! per kernel configuration), and attention's products are never tuned (see [`launch`]).
//!
//! Autotuning is also not always right: on lavapipe it picks `matmul_double_unit_max_tile_size`
//! for 1024×40×24 in f32 and f16, whose output is off by 45% (`tests/kernels.rs`, `gemv` cases), and
//! on CUDA it broke the fixtures' k = 48 products (backends.md). Every product with an inner or
//! output width that is not a multiple of [`TUNED_ALIGNMENT`] runs the default kernel.
//!
//! On CUDA, products of at least `cublaslt::MIN_MACS` multiply-adds run cuBLASLt instead
//! (`cube/cublaslt.rs`).

use burn::tensor::DType;
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// Multiply-adds (per batch matrix) from which a product is tuned: 2^26. A 9-row product of the
/// Bamba-9B shape has 151 M (tuned: decode batches run the same shape for every step); the tiny
/// embedded model's largest at a 16-token prompt has 2 M, which takes microseconds either way and
/// could never repay the ~10 s a tuning costs.
pub const AUTOTUNE_MIN_MACS: usize = 1 << 26;
/// The widths (k and n) a product must be a multiple of to be autotuned. Measured right on lavapipe
/// with autotuning: 1030×64×64, 1030×4096×256, 4096×256×512; wrong: 1024×40×24 (45%).
pub const TUNED_ALIGNMENT: usize = 64;

/// `lhs · rhs` over the last two dims (batch dims broadcast as in Burn), in `lhs`'s dtype. With
/// `may_tune` false the default kernel runs whatever the size: attention's products change shape
/// with every prompt length and context (a tuning each: 2 shapes, ~20 s on the H200 at pp512) and
/// are a small share of a prefill.
///
/// # Shapes
/// - `lhs`: `[..., m, k]`, `rhs`: `[..., k, n]` → `[..., m, n]`
pub fn launch<R: CubeRuntime>(lhs: CubeTensor<R>, rhs: CubeTensor<R>, may_tune: bool) -> CubeTensor<R> {
    #[cfg(feature = "cuda")]
    if let Some(out) = super::cublaslt::try_launch(&lhs, &rhs, None) {
        return out;
    }
    let dtype: DType = lhs.dtype;
    let (lhs_dims, rhs_dims) = (lhs.meta.shape().clone(), rhs.meta.shape().clone());
    let rank = lhs_dims.len();
    let (rows, inner, cols) = (lhs_dims[rank - 2], lhs_dims[rank - 1], rhs_dims[rank - 1]);
    let aligned = inner.is_multiple_of(TUNED_ALIGNMENT) && cols.is_multiple_of(TUNED_ALIGNMENT);
    let large = rows * inner * cols >= AUTOTUNE_MIN_MACS;
    if !(may_tune && aligned && large) {
        // The default kernel can refuse a problem (a layout or size it has no tiling for); the
        // autotuner always has a fallback, so such a product is tuned after all.
        if let Ok(out) = matmul(lhs.clone(), rhs.clone(), None, MatmulStrategy::Cube, dtype) {
            return out;
        }
    }
    matmul(lhs, rhs, None, MatmulStrategy::Autotune, dtype).expect("Burn's autotuned matmul has a fallback kernel")
}
