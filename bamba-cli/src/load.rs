//! Loading a checkpoint with a progress bar on stderr (hidden when stderr is not a terminal).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::{BambaModel, Precision};
use indicatif::{ProgressBar, ProgressStyle};

/// Loads `dir` onto `device`, returning the model and the load time.
pub fn load_model<B: BambaOps>(
    dir: &Path,
    device: &B::Device,
    precision: Precision,
) -> Result<(BambaModel<B>, Duration)> {
    let start = Instant::now();
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template(
            "loading {msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec})",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    bar.set_message(format!("{} as {precision}", dir.display()));
    let _reuse = ReuseFreedHostMemory::start();
    let model = BambaModel::<B>::load_with_progress(dir, device, precision, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("loading {}", dir.display()))?;
    bar.finish_and_clear();
    Ok((model, start.elapsed()))
}

/// While alive, glibc keeps freed host memory for reuse instead of returning it to the system.
///
/// CubeCL 0.10 copies every uploaded tensor into a new host `Vec` before the driver copies it to the
/// device. glibc serves each of these large buffers with a fresh mmap and unmaps it when freed, so
/// every tensor faults in new pages: 4.3 GB/s on the H200 machine, and loading ran at 0.50 GB/s. With
/// freed buffers reused it ran at 0.92 GB/s. The defaults come back, and the heap is trimmed, when loading ends.
struct ReuseFreedHostMemory;

impl ReuseFreedHostMemory {
    fn start() -> Self {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: mallopt only changes allocator parameters; any value is valid.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 0);
            libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        }
        ReuseFreedHostMemory
    }
}

impl Drop for ReuseFreedHostMemory {
    fn drop(&mut self) {
        #[cfg(all(target_os = "linux", target_env = "gnu"))]
        // SAFETY: as above; malloc_trim only returns free memory to the system. The values are
        // glibc's documented defaults.
        unsafe {
            libc::mallopt(libc::M_MMAP_MAX, 65536);
            libc::mallopt(libc::M_TRIM_THRESHOLD, 128 * 1024);
            libc::malloc_trim(0);
        }
    }
}
