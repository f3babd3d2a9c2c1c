//! `--backend` selection: the library's run-time dispatch, with jobs that return `anyhow` results.

use anyhow::{bail, Result};
use bamba_model::backend::BackendError;
pub use bamba_model::backend::BackendKind;
use bamba_model::bamba_kernels::BambaOps;

/// Work to run on whichever backend is chosen at run time.
pub trait BackendJob {
    type Output;
    fn run<B: BambaOps>(self, device: B::Device) -> Result<Self::Output>;
}

/// The library's job form of a CLI job.
struct Job<J>(J);

impl<J: BackendJob> bamba_model::backend::BackendJob for Job<J> {
    type Output = Result<J::Output>;
    fn run<B: BambaOps>(self, device: B::Device) -> Result<J::Output> {
        self.0.run::<B>(device)
    }
}

/// Runs `job` on `kind`, or explains how to build a binary that has it.
pub fn dispatch<J: BackendJob>(kind: BackendKind, job: J) -> Result<J::Output> {
    match bamba_model::backend::dispatch(kind, Job(job)) {
        Ok(result) => result,
        Err(BackendError::NotCompiled { kind, compiled, feature }) => {
            bail!("backend {kind} is not compiled into this binary (compiled: {compiled}); rebuild with `--features {feature}`")
        }
        Err(e) => Err(e.into()),
    }
}
