//! Tensors read back to the host. Device work is queued without waiting, so a failure of the
//! device since the last read (memory it could not allocate, a kernel it could not launch) comes
//! out at the next read: here, as a [`DeviceError`] instead of a panic.

use burn::tensor::backend::{Backend, ExecutionError};
use burn::tensor::{DType, Tensor};

/// The device failed while running the model.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    /// The device could not allocate memory the model needed.
    #[error("the device ran out of memory")]
    OutOfMemory,
    /// Any other failure, in the backend's words (their first line).
    #[error("the device failed: {0}")]
    Failed(String),
}

/// What CubeCL says of an allocation the device refused (`IoError::BufferTooBig`); Burn hands its
/// errors on as text only.
const ALLOCATION_REFUSED: &str = "can't allocate buffer";

impl From<ExecutionError> for DeviceError {
    fn from(error: ExecutionError) -> Self {
        let reason = match error {
            ExecutionError::WithContext { reason } | ExecutionError::Generic { reason, .. } => reason,
        };
        if reason.contains(ALLOCATION_REFUSED) {
            return DeviceError::OutOfMemory;
        }
        // the rest of the text is CubeCL's chain of causes and backtraces
        DeviceError::Failed(reason.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or("no reason given").into())
    }
}

/// The tensor's values as f32, in row-major order.
pub fn read_f32<B: Backend, const D: usize>(tensor: Tensor<B, D>) -> Result<Vec<f32>, DeviceError> {
    let data = tensor.cast(DType::F32).try_into_data()?;
    Ok(data.to_vec::<f32>().expect("f32 after the cast"))
}

/// The tensor's integer values as i64, in row-major order.
pub fn read_i64<B: Backend, const D: usize>(tensor: Tensor<B, D, burn::tensor::Int>) -> Result<Vec<i64>, DeviceError> {
    let data = tensor.try_into_data()?.convert::<i64>();
    Ok(data.to_vec::<i64>().expect("i64 after the conversion"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_allocation_is_out_of_memory_and_other_failures_keep_their_first_line() {
        // the text Burn makes of CubeCL's error after an allocation the device refused
        let refused = ExecutionError::WithContext {
            reason: "The server is in an invalid state\nCaused by:\n  [Io(can't allocate buffer of size: 1024\n)]"
                .into(),
        };
        assert_eq!(DeviceError::from(refused), DeviceError::OutOfMemory);
        let other = ExecutionError::WithContext { reason: "\nA launch error happened\nCaused by: x".into() };
        assert_eq!(DeviceError::from(other), DeviceError::Failed("A launch error happened".into()));
    }
}
