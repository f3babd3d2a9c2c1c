//! Weight uploads on CUDA through pinned staging buffers, overlapped with filling them.
//!
//! CubeCL 0.10's `create_tensor` copies every tensor into a fresh pageable `Vec` and copies that
//! with `cuMemcpyHtoDAsync` from pageable memory: Bamba-9B's 19.6 GB loaded at 0.5–0.9 GB/s on the
//! H200 (fresh pages fault at 4.3 GB/s there, pageable copies run at 7.5 GB/s, pinned ones at 55).
//! Here a tensor is allocated by CubeCL, and its bytes go
//! piece by piece into one of `BUFFERS` pinned buffers (the caller's `fill` writes them straight
//! from the checkpoint's mapping) and from there to the device on the legacy stream
//! (`legacy_stream.rs`: ordered with CubeCL's kernels, no host sync). A buffer is refilled once the
//! event recorded after its last copy has completed, so filling one overlaps copying the others.
//!
//! Any failure (an allocation or copy error) is reported once on stderr and the tensor goes through
//! Burn's `from_data` instead.

use core::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use burn::tensor::{DType, Shape};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::CubeRuntime;
use cubecl::cuda::{CudaDevice, CudaRuntime};
use cudarc::driver::result as driver;
use cudarc::driver::sys::{CUcontext, CUevent, CUevent_flags};

use super::legacy_stream::{device_address, make_current, with_state, DeviceState, Failure, LEGACY_STREAM};

/// Bytes per pinned buffer: 32 MiB, large enough that a copy runs at full PCIe speed, small
/// enough that the pieces of one large tensor keep several copies in flight.
const PIECE_BYTES: usize = 32 << 20;
/// Pinned buffers (128 MiB in all, kept for the life of the process once a weight was uploaded).
const BUFFERS: usize = 4;

static UPLOADED: AtomicU64 = AtomicU64::new(0);
static STAGING: Mutex<Option<Staging>> = Mutex::new(None);

/// Tensors uploaded through pinned buffers in this process (tests check the path was taken).
pub fn tensors_uploaded() -> u64 {
    UPLOADED.load(Ordering::Relaxed)
}

/// One pinned buffer and the event recorded after the last copy that reads it.
struct Buffer {
    host: *mut u8,
    copied: CUevent,
}

struct Staging {
    device: usize,
    context: CUcontext,
    buffers: Vec<Buffer>,
    next: usize,
}

// SAFETY: the raw handles are used only under the `STAGING` mutex, with the context made current on
// the calling thread first.
unsafe impl Send for Staging {}

impl DeviceState for Staging {
    const WHAT: &'static str = "pinned upload buffers";

    fn device(&self) -> usize {
        self.device
    }

    fn context(&self) -> CUcontext {
        self.context
    }

    fn new(device: usize) -> Result<Self, Failure> {
        let context = make_current(device)?;
        let mut buffers = Vec::with_capacity(BUFFERS);
        for _ in 0..BUFFERS {
            // SAFETY: a plain pinned host allocation in the current context, never freed (process
            // lifetime, like CubeCL's own pinned pool).
            let host = unsafe { driver::malloc_host(PIECE_BYTES, 0)? } as *mut u8;
            let copied = driver::event::create(CUevent_flags::CU_EVENT_DISABLE_TIMING)?;
            buffers.push(Buffer { host, copied });
        }
        Ok(Self { device, context, buffers, next: 0 })
    }
}

/// A contiguous tensor of `shape` and `dtype` filled by `fill` (see `BambaOps::upload_weight`)
/// through pinned buffers when `R` is CUDA, else `None`.
///
/// # Shapes
/// - `shape` → a contiguous tensor of `shape`
pub fn try_upload<R: CubeRuntime>(
    shape: Shape,
    dtype: DType,
    fill: &mut dyn FnMut(usize, &mut [u8]),
    device: &R::Device,
) -> Option<CubeTensor<R>> {
    let index = (device as &dyn Any).downcast_ref::<CudaDevice>()?.index;
    let out = empty_device_contiguous_dtype(R::client(device), device.clone(), shape, dtype);
    let out_cuda = (&out as &dyn Any).downcast_ref::<CubeTensor<CudaRuntime>>()?;
    match copy_in(out_cuda, index, fill) {
        Ok(()) => {
            UPLOADED.fetch_add(1, Ordering::Relaxed);
            Some(out)
        }
        Err(e) => {
            static WARNED: OnceLock<()> = OnceLock::new();
            WARNED.get_or_init(|| eprintln!("bamba: pinned upload failed ({e}); weights go through from_data"));
            None
        }
    }
}

fn copy_in(
    out: &CubeTensor<CudaRuntime>,
    device: usize,
    fill: &mut dyn FnMut(usize, &mut [u8]),
) -> Result<(), Failure> {
    let bytes = out.meta.shape().num_elements() * out.dtype.size();
    let address = device_address(out)?;
    with_state(&STAGING, device, |staging: &mut Staging| {
        for offset in (0..bytes).step_by(PIECE_BYTES) {
            let len = PIECE_BYTES.min(bytes - offset);
            let buffer = &staging.buffers[staging.next];
            staging.next = (staging.next + 1) % BUFFERS;
            // SAFETY: `copied` is a valid event (an event never recorded completes at once). Once it
            // has completed no copy reads the buffer, so it may be written; `len` ≤ its size.
            let host = unsafe {
                driver::event::synchronize(buffer.copied)?;
                std::slice::from_raw_parts_mut(buffer.host, len)
            };
            fill(offset, host);
            // SAFETY: `address + offset .. + len` lies in the tensor's buffer, which CubeCL keeps while
            // `out` lives and cannot reuse before this copy is done (the legacy stream is ordered with
            // its streams); the pinned buffer is not written again before `copied` completes.
            unsafe {
                driver::memcpy_htod_async(address + offset as u64, host, LEGACY_STREAM)?;
                driver::event::record(buffer.copied, LEGACY_STREAM)?;
            }
        }
        Ok(())
    })
}
