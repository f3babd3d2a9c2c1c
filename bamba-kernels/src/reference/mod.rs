//! Plain tensor-op references for the hot ops: correct on every backend, the ground truth that
//! kernels are tested against.

pub mod attention;
pub mod conv;
pub mod linear;
pub mod mamba_step;
pub mod moe;
pub mod norm;
pub mod rope;
pub mod ssd;
