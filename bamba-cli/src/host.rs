//! Memory budgets the user did not give: what the machine running a backend has.

use bamba_model::BackendKind;

/// Half the memory this machine has available now, in bytes (Linux: `MemAvailable` of
/// /proc/meminfo), if known.
pub fn half_available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = info.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?;
    let kib = field.trim().strip_suffix("kB")?.trim().parse::<u64>().ok()?;
    Some(kib.saturating_mul(1024) / 2)
}

/// The budget for weights and caches on `backend` when `--memory` is not given, and what it is:
/// half the host's available memory on the CPU, 90% of the GPU's free memory on CUDA (the rest for
/// activations and workspaces), unknown on wgpu. `gpu_free` is the GPU's free memory in bytes
/// ([`BackendKind::free_device_memory`]), asked once by the caller.
pub fn default_budget(backend: BackendKind, gpu_free: Option<u64>) -> Option<(u64, &'static str)> {
    match backend {
        BackendKind::Ndarray => half_available_memory().map(|bytes| (bytes, "half the host's available memory")),
        BackendKind::Cuda | BackendKind::CudaUnfused => {
            gpu_free.map(|free| (free / 10 * 9, "90% of the GPU's free memory"))
        }
        BackendKind::Wgpu | BackendKind::WgpuUnfused => None,
    }
}
