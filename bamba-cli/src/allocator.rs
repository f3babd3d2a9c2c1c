//! The C allocator's settings for an inference process, which allocates and frees the same
//! activation buffers (hundreds of KiB to MiB each) every step.
//!
//! glibc serves blocks above its mmap threshold with a fresh `mmap` and returns them with `munmap`
//! on free, and gives the top of its heaps back to the system past its trim threshold; either way the
//! next step touches new pages and takes a page fault per 4 KiB. The threshold adapts upwards only
//! after such a block is freed, so whether a process escapes depends on what it allocated before
//! (seeded random weights happened to raise it, weights loaded from a checkpoint did not: 16
//! sequences decoded at 100 against 155 tok/s on the CPU backend, the difference being page faults).
//! Fixing both thresholds keeps freed buffers for the next step.

/// The largest mmap threshold glibc accepts on 64-bit targets (32 MiB); larger blocks — weights,
/// whole-prompt logits — still come from `mmap` and go back to the system when freed.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 32 << 20;

/// Free memory at the top of a heap kept for reuse instead of given back.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const TRIM_THRESHOLD: libc::c_int = 512 << 20;

/// Sets the thresholds above (glibc on Linux; elsewhere nothing). Call before other threads start.
pub fn keep_freed_buffers() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; no other thread allocates yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
        libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
    }
}
