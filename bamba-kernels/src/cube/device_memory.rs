//! A CUDA device's memory as the driver reports it, for budgets the user did not give.

/// Free and total bytes of CUDA device `ordinal`, asked through its primary context (the one CubeCL
/// runs on), or `None` when the driver does not answer.
pub fn cuda_memory(ordinal: usize) -> Option<(u64, u64)> {
    let context = cudarc::driver::CudaContext::new(ordinal).ok()?;
    let (free, total) = context.mem_get_info().ok()?;
    Some((free as u64, total as u64))
}
