//! Work bamba queues on CUDA outside CubeCL (cuBLASLt products, pinned weight uploads) goes on the
//! legacy default stream of the device's primary context, the context CubeCL runs in.
//!
//! CubeCL 0.10 exposes no handle to its streams; the workspace patches `cubecl-cuda` so that they
//! are blocking streams (third_party/README.md). CUDA orders the legacy stream with every blocking
//! stream of its context: work queued there starts once all work queued before it on CubeCL's
//! streams is done, and CubeCL's later work waits for it. So nothing needs a host sync, and memory
//! CubeCL frees after such work cannot be reused before that work has finished.

use cudarc::driver::result as driver;
use cudarc::driver::sys::{CUcontext, CUstream};

/// The legacy default stream (`CU_STREAM_LEGACY`), named explicitly so that a per-thread default
/// stream setting cannot change what `0` means.
pub(super) const LEGACY_STREAM: CUstream = 0x1 as CUstream;

/// Makes device `device`'s primary context (the one CubeCL retained) current on this thread and
/// returns it.
pub(super) fn make_current(device: usize) -> Result<CUcontext, driver::DriverError> {
    driver::init()?;
    let dev = driver::device::get(device as i32)?;
    // SAFETY: `dev` is a valid device; retaining its primary context only adds a reference, which
    // is kept for the life of the process like CubeCL's own.
    let context = unsafe { driver::primary_ctx::retain(dev)? };
    // SAFETY: `context` was just retained and is valid.
    unsafe { driver::ctx::set_current(context)? };
    Ok(context)
}
