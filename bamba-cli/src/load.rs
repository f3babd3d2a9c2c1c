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
    let model = BambaModel::<B>::load_with_progress(dir, device, precision, &mut |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .with_context(|| format!("loading {}", dir.display()))?;
    bar.finish_and_clear();
    Ok((model, start.elapsed()))
}
