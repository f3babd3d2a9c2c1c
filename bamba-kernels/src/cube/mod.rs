//! CubeCL kernels (CUDA and wgpu from one source) and the `BambaOps` impls that call them: directly
//! on `CubeBackend`, and through a registered custom operation on the `Fusion` wrapper that burn's
//! `fusion` feature puts around it (an impl on `CubeBackend` alone would not reach `burn::backend::Cuda`).

mod attention_softmax;
mod conv;
mod cube_backend;
#[cfg(feature = "cuda")]
pub mod cublaslt;
mod decode_attention;
#[cfg(feature = "cuda")]
pub mod device_memory;
mod dispatch;
mod flash_attention;
mod fragments;
mod fusion;
mod gemv;
#[cfg(feature = "cuda")]
mod legacy_stream;
mod mamba_step;
mod math;
pub mod matmul;
mod moe;
mod persistent;
mod rms_norm;
mod rope;
mod ssd_chunked;
mod ssd_scan;
mod ssd_step;
mod swiglu;
#[cfg(feature = "cuda")]
pub mod upload;

use burn::tensor::backend::Backend;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

pub use gemv::MAX_GEMV_ROWS;

/// The GPU backends without Burn's fusion wrapper: every op is its own launch, with no fusion stream
/// in between (fewer host steps per op, more launches). `bamba --backend cuda-unfused` / `wgpu-unfused`.
pub mod unfused {
    /// CUDA, unfused (`burn::backend::Cuda` without `Fusion`).
    #[cfg(feature = "cuda")]
    pub type Cuda = burn_cubecl::CubeBackend<cubecl::cuda::CudaRuntime, f32, i32, u8>;
    /// wgpu, unfused (`burn::backend::Wgpu` without `Fusion`).
    #[cfg(feature = "wgpu")]
    pub type Wgpu = burn_cubecl::CubeBackend<cubecl::wgpu::WgpuRuntime, f32, i32, u32>;
}
pub use flash_attention::{runs as flash_attentions_run, set_enabled as use_flash_attention};
pub use ssd_chunked::scans_run as tensor_core_scans_run;
pub use ssd_scan::MAX_STATE_PER_LANE;
pub use ssd_step::LANES;

pub(super) fn prim<B: Backend, const D: usize>(t: Tensor<B, D>) -> FloatTensor<B> {
    t.into_primitive().tensor()
}

pub(super) fn wrap<B: Backend, const D: usize>(t: FloatTensor<B>) -> Tensor<B, D> {
    Tensor::from_primitive(TensorPrimitive::Float(t))
}

/// The largest `d_state` the scan kernels hold in registers; larger states run the reference.
pub const MAX_KERNEL_D_STATE: usize = MAX_STATE_PER_LANE * LANES;
