//! Work bamba queues on CUDA outside CubeCL goes on the legacy default stream of the device's primary
//! context, the context CubeCL runs in: pinned weight uploads (cuBLASLt products go on CubeCL's own
//! stream, `cublaslt.rs`; this module gives them the device state and addresses they share).
//!
//! CubeCL 0.10 exposes no handle to its streams; the workspace patches `cubecl-cuda` so that they
//! are blocking streams (third_party/README.md). CUDA orders the legacy stream with every blocking
//! stream of its context: work queued there starts once all work queued before it on CubeCL's
//! streams is done, and CubeCL's later work waits for it. So nothing needs a host sync, and memory
//! CubeCL frees after such work cannot be reused before that work has finished.

use std::sync::Mutex;

use burn_cubecl::tensor::CubeTensor;
use cubecl::cuda::CudaRuntime;
use cudarc::driver::result as driver;
use cudarc::driver::sys::{CUcontext, CUstream};

/// What can go wrong in work outside CubeCL: its callers report it once and fall back.
pub(super) type Failure = Box<dyn std::error::Error>;

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

/// Per-process state of one kind of work outside CubeCL on one device (cuBLASLt's handle and plans,
/// the pinned upload buffers), made on first use.
pub(super) trait DeviceState: Sized {
    /// What it is, for errors ("cuBLASLt state").
    const WHAT: &'static str;
    fn new(device: usize) -> Result<Self, Failure>;
    fn device(&self) -> usize;
    /// The device's primary context, retained by `new`.
    fn context(&self) -> CUcontext;
}

/// Runs `f` on the state in `slot` for `device` (made on first use), under its lock, with the
/// device's context current on this thread. One device per process.
pub(super) fn with_state<S: DeviceState, T>(
    slot: &Mutex<Option<S>>,
    device: usize,
    f: impl FnOnce(&mut S) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let mut guard = slot.lock().map_err(|_| format!("{} poisoned", S::WHAT))?;
    if guard.as_ref().is_some_and(|s| s.device() != device) {
        return Err(format!("{} serves one device per process", S::WHAT).into());
    }
    if guard.is_none() {
        *guard = Some(S::new(device)?);
    }
    let state = guard.as_mut().expect("just set");
    // SAFETY: the context is the device's primary context, retained when the state was made.
    unsafe { driver::ctx::set_current(state.context())? };
    f(state)
}

/// The device address of a CubeCL tensor's buffer (its first element).
pub(super) fn device_address(t: &CubeTensor<CudaRuntime>) -> Result<u64, Failure> {
    let resource = t.client.get_resource(t.handle.clone()).map_err(|e| format!("buffer: {e:?}"))?;
    Ok(resource.resource().ptr)
}
