//! Burn's matmul, with the choice between its autotuned and its default kernel made here.
//!
//! Burn 0.21 autotunes every matmul per shape bucket (m, n, k anchored to powers of two). On CUDA
//! each candidate is a cubek kernel that NVRTC compiles in 1–3 s, and a bucket tries about six: the
//! first generation on the tiny embedded model spent 130 of its 137 s there (H200, 2026-12-01, 9
//! buckets, 55 kernels compiled). Tuning pays where the products are large and repeat: the Bamba-9B
//! shape's 64-row decode step takes 34 ms tuned and 80 ms with the default kernel, pp4096 7,177 vs
//! 3,588 tok/s (H200, `benches/results/h200-2026-12-01-s6`). So products of fewer than
//! [`autotune_min_macs`] multiply-adds run Burn's default kernel (tensor cores, no tuning: one compile
//! per kernel configuration), and attention's products are never tuned (see [`launch`]).
//!
//! Autotuning is also not always right: on lavapipe it picks `matmul_double_unit_max_tile_size`
//! for 1024×40×24 in f32 and f16, whose output is off by 45% (`tests/kernels.rs`, `gemv` cases), and
//! on CUDA it broke the fixtures' k = 48 products (backends.md). Every product with an inner or
//! output width that is not a multiple of [`TUNED_ALIGNMENT`] runs the default kernel.
//!
//! On CUDA, products of at least `cublaslt::min_rows()` rows and `cublaslt::min_macs()`
//! multiply-adds run cuBLASLt instead (`cube/cublaslt.rs`; measured against these kernels in
//! `benches/results`).

use std::sync::OnceLock;

use burn::tensor::DType;
use burn_cubecl::kernel::matmul::{matmul, MatmulStrategy};
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;

/// Multiply-adds (per batch matrix) from which a product is tuned: 2^26. A 9-row product of the
/// Bamba-9B shape has 151 M (tuned: decode batches run the same shape for every step); the tiny
/// embedded model's largest at a 16-token prompt has 2 M, which takes microseconds either way and
/// could never repay the ~10 s a tuning costs.
const DEFAULT_AUTOTUNE_MIN_MACS: usize = 1 << 26;
/// The widths (k and n) a product must be a multiple of to be autotuned. Measured right on lavapipe
/// with autotuning: 1030×64×64, 1030×4096×256, 4096×256×512; wrong: 1024×40×24 (45%).
pub const TUNED_ALIGNMENT: usize = 64;

/// Multiply-adds from which a product is autotuned: `BAMBA_AUTOTUNE_MIN_MACS` if set to a number
/// (0 tunes every aligned product, as Burn does; a huge number never tunes), else 2^26.
pub fn autotune_min_macs() -> usize {
    static MACS: OnceLock<usize> = OnceLock::new();
    *MACS.get_or_init(|| env_number("BAMBA_AUTOTUNE_MIN_MACS", DEFAULT_AUTOTUNE_MIN_MACS))
}

/// The number in environment variable `name`, or `default` when it is unset or not a number.
pub(super) fn env_number(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// The comma-separated numbers in environment variable `name`, position by position: `None` where a
/// value is left out or is not a number; empty when the variable is unset (for `*_TUNE` variables).
pub(super) fn env_numbers(name: &str) -> Vec<Option<usize>> {
    std::env::var(name).unwrap_or_default().split(',').map(|s| s.trim().parse().ok()).collect()
}

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
    let large = rows * inner * cols >= autotune_min_macs();
    if !(may_tune && aligned && large) {
        // The default kernel can refuse a problem (a layout or size it has no tiling for); the
        // autotuner always has a fallback, so such a product is tuned after all.
        if let Ok(out) = matmul(lhs.clone(), rhs.clone(), None, MatmulStrategy::Cube, dtype) {
            return out;
        }
    }
    matmul(lhs, rhs, None, MatmulStrategy::Autotune, dtype).expect("Burn's autotuned matmul has a fallback kernel")
}
