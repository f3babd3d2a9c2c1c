//! `--backend` selection among the backends compiled into this binary.

use std::fmt;
use std::str::FromStr;

use anyhow::{bail, Result};
#[cfg(any(feature = "cuda", feature = "wgpu"))]
use bamba_model::bamba_kernels::cube::unfused;
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::Precision;

/// The backends this engine knows; which are usable depends on cargo features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Ndarray,
    Wgpu,
    Cuda,
    /// The same kernels without Burn's fusion stream (each op its own launch).
    WgpuUnfused,
    CudaUnfused,
}

impl BackendKind {
    pub const ALL: [BackendKind; 5] = [
        BackendKind::Cuda,
        BackendKind::Wgpu,
        BackendKind::Ndarray,
        BackendKind::CudaUnfused,
        BackendKind::WgpuUnfused,
    ];

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
    pub fn best_compiled() -> Result<Self> {
        match Self::ALL.into_iter().find(|b| b.is_compiled()) {
            Some(b) => Ok(b),
            None => bail!("this binary was built without any backend; rebuild with --features ndarray, wgpu or cuda"),
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ndarray" | "cpu" => Ok(BackendKind::Ndarray),
            "wgpu" | "vulkan" => Ok(BackendKind::Wgpu),
            "cuda" => Ok(BackendKind::Cuda),
            "wgpu-unfused" => Ok(BackendKind::WgpuUnfused),
            "cuda-unfused" => Ok(BackendKind::CudaUnfused),
            _ => Err(format!("unknown backend {s:?} (known: ndarray, wgpu, cuda, wgpu-unfused, cuda-unfused)")),
        }
    }
}

/// Work to run on whichever backend is chosen at run time.
pub trait BackendJob {
    type Output;
    fn run<B: BambaOps>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs `job` on `kind`, or explains how to build a binary that has it.
pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    if !kind.is_compiled() {
        let compiled: Vec<String> =
            BackendKind::ALL.iter().filter(|b| b.is_compiled()).map(|b| b.to_string()).collect();
        bail!(
            "backend {kind} is not compiled into this binary (compiled: {}); rebuild with `--features {}`",
            compiled.join(", "),
            kind.feature()
        );
    }
    match kind {
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
    }
}
