//! Persistent allocations (see [`crate::BambaOps::with_persistent_allocations`]): CubeCL's allocation
//! mode switched for the calling thread's stream while `work` runs.
//!
//! CubeCL's default pools hand out slices of shared pages; each allocation merges the free slices
//! of every page of its pool and scans them for a fit. A Bamba-9B decode step makes hundreds of
//! allocations into pages that also held the small weights (norms, conv, A_log...), and that work
//! was 80% of CubeCL's server thread and the bound of batch-1 decode (H200 host profile). In the persistent mode a buffer has exactly its size and is found again by size, which suits
//! weights (never freed) and decode steps (the same sizes every step).

use std::cell::Cell;

use burn_cubecl::CubeRuntime;
use cubecl::client::ComputeClient;
use cubecl::MemoryAllocationMode;

thread_local! {
    /// Nesting depth of persistent sections on this thread.
    static DEPTH: Cell<u32> = const { Cell::new(0) };
}

/// Restores the default mode when the outermost section ends, also on unwinding.
struct Section<R: CubeRuntime> {
    client: ComputeClient<R>,
}

impl<R: CubeRuntime> Drop for Section<R> {
    fn drop(&mut self) {
        let depth = DEPTH.with(|d| {
            d.set(d.get() - 1);
            d.get()
        });
        if depth == 0 {
            // SAFETY: as in `allocations`.
            unsafe { self.client.allocation_mode(MemoryAllocationMode::Auto) };
        }
    }
}

/// Runs `work` with `client`'s allocations on this thread's stream in the persistent mode.
pub fn allocations<R: CubeRuntime, T>(client: ComputeClient<R>, work: impl FnOnce() -> T) -> T {
    let depth = DEPTH.with(|d| {
        d.set(d.get() + 1);
        d.get()
    });
    if depth == 1 {
        // SAFETY: CubeCL calls this unsafe because a mode set from one thread applies to allocations
        // made by any thread on the same stream. The mode is set for this thread's own stream (CubeCL
        // gives each thread its stream) and restored by `Section` before this function returns.
        unsafe { client.allocation_mode(MemoryAllocationMode::Persistent) };
    }
    let _section = Section { client };
    work()
}
