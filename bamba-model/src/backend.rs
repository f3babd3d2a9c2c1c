//! Choosing a backend at run time among those compiled in (cargo features `ndarray`, `wgpu`, `cuda`).
//!
//! The model is generic over [`BambaOps`]; [`dispatch`] turns a [`BackendKind`] picked at run time
//! (a flag, a config file) into a call of a generic function on that backend.

use std::fmt;
use std::str::FromStr;

#[cfg(any(feature = "cuda", feature = "wgpu"))]
use bamba_kernels::cube::unfused;
use bamba_kernels::BambaOps;
use thiserror::Error;

use crate::loader::Precision;

/// The backends this engine knows; which are usable depends on cargo features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The CPU, through Burn's ndarray backend (f32 only).
    Ndarray,
    /// Vulkan, Metal or DX12 GPUs through wgpu.
    Wgpu,
    /// NVIDIA GPUs through CUDA.
    Cuda,
    /// wgpu without Burn's fusion stream (each op its own launch).
    WgpuUnfused,
    /// CUDA without Burn's fusion stream (each op its own launch).
    CudaUnfused,
}

/// Errors choosing a backend.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BackendError {
    #[error("unknown backend {0:?} (known: ndarray, wgpu, cuda, wgpu-unfused, cuda-unfused)")]
    Unknown(String),
    #[error(
        "backend {kind} is not compiled into this build (compiled: {compiled}); it needs the cargo feature `{feature}`"
    )]
    NotCompiled { kind: BackendKind, compiled: String, feature: &'static str },
    #[error("no backend is compiled into this build; it needs one of the cargo features ndarray, wgpu, cuda")]
    NoneCompiled,
}

impl BackendKind {
    /// Every kind, fastest first.
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Cuda,
        BackendKind::Wgpu,
        BackendKind::Ndarray,
        BackendKind::CudaUnfused,
        BackendKind::WgpuUnfused,
    ];

    /// Whether this build has the backend.
    pub fn is_compiled(self) -> bool {
        match self {
            BackendKind::Ndarray => cfg!(feature = "ndarray"),
            BackendKind::Wgpu | BackendKind::WgpuUnfused => cfg!(feature = "wgpu"),
            BackendKind::Cuda | BackendKind::CudaUnfused => cfg!(feature = "cuda"),
        }
    }

    /// The cargo feature that compiles this backend in.
    pub fn feature(self) -> &'static str {
        match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu | BackendKind::WgpuUnfused => "wgpu",
            BackendKind::Cuda | BackendKind::CudaUnfused => "cuda",
        }
    }

    /// The fastest compiled backend: cuda, then wgpu, then ndarray.
    pub fn best_compiled() -> Result<Self, BackendError> {
        Self::ALL.into_iter().find(|b| b.is_compiled()).ok_or(BackendError::NoneCompiled)
    }

    /// Free memory of the device [`dispatch`] runs this backend on, where it can be asked: CUDA's
    /// device 0. `None` for the CPU (its memory is the host's) and wgpu (no portable query).
    pub fn free_device_memory(self) -> Option<u64> {
        match self {
            #[cfg(feature = "cuda")]
            BackendKind::Cuda | BackendKind::CudaUnfused => {
                bamba_kernels::cube::device_memory::cuda_memory(0).map(|(free, _)| free)
            }
            _ => None,
        }
    }

    /// f32 on CPU and wgpu (no bf16 there), bf16 on CUDA.
    pub fn default_precision(self) -> Precision {
        match self {
            BackendKind::Cuda | BackendKind::CudaUnfused => Precision::Bf16,
            _ => Precision::F32,
        }
    }
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BackendKind::Ndarray => "ndarray",
            BackendKind::Wgpu => "wgpu",
            BackendKind::Cuda => "cuda",
            BackendKind::WgpuUnfused => "wgpu-unfused",
            BackendKind::CudaUnfused => "cuda-unfused",
        })
    }
}

impl FromStr for BackendKind {
    type Err = BackendError;
    /// The names [`fmt::Display`] writes, and `cpu` / `vulkan` for ndarray / wgpu.
    fn from_str(s: &str) -> Result<Self, BackendError> {
        match s.to_ascii_lowercase().as_str() {
            "ndarray" | "cpu" => Ok(BackendKind::Ndarray),
            "wgpu" | "vulkan" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            "wgpu-unfused" => Ok(BackendKind::WgpuUnfused),
            "cuda-unfused" => Ok(BackendKind::CudaUnfused),
            _ => Err(BackendError::Unknown(s.to_string())),
        }
    }
}

/// Work to run on whichever backend is chosen at run time: [`dispatch`] calls `run` with the
/// backend's type and its default device.
pub trait BackendJob {
    /// What the work returns.
    type Output;
    /// Does the work on backend `B`.
    fn run<B: BambaOps>(self, device: B::Device) -> Self::Output;
}

/// Runs `job` on `kind`, or says which cargo feature would compile it in.
// In a build without any backend feature only the unreachable arm is left.
#[allow(unused_variables, unreachable_code)]
pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output, BackendError> {
    if !kind.is_compiled() {
        let compiled: Vec<String> =
            BackendKind::ALL.iter().filter(|b| b.is_compiled()).map(|b| b.to_string()).collect();
        return Err(BackendError::NotCompiled { kind, compiled: compiled.join(", "), feature: kind.feature() });
    }
    Ok(match kind {
        #[cfg(feature = "ndarray")]
        BackendKind::Ndarray => job.run::<burn::backend::NdArray<f32>>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::Wgpu => job.run::<burn::backend::Wgpu<f32, i32>>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::Cuda => job.run::<burn::backend::Cuda<f32, i32>>(Default::default()),
        #[cfg(feature = "wgpu")]
        BackendKind::WgpuUnfused => job.run::<unfused::Wgpu>(Default::default()),
        #[cfg(feature = "cuda")]
        BackendKind::CudaUnfused => job.run::<unfused::Cuda>(Default::default()),
        #[allow(unreachable_patterns)]
        _ => unreachable!("checked by is_compiled"),
    })
}
