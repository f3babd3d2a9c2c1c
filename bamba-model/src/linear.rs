//! A bias-optional linear layer that keeps the checkpoint's PyTorch `[out, in]` layout.
//!
//! Multiplying by the transposed view (no copy) is also the faster matmul layout on CUDA in Burn 0.21
//! (decode GEMV measured 3× faster than an `[in, out]` buffer; `shared/docs/performance.md`).

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use crate::loader::{LoadError, WeightReader};

/// `y = x · Wᵀ + b`, with `W` stored `[out, in]`.
#[derive(Debug, Clone)]
pub struct Linear<B: Backend> {
    /// `[out, in]`.
    pub weight: Tensor<B, 2>,
    /// `[out]`.
    pub bias: Option<Tensor<B, 1>>,
}

impl<B: Backend> Linear<B> {
    /// Reads `{prefix}.weight` `[outputs, inputs]` and, when `bias`, `{prefix}.bias` `[outputs]`.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        prefix: &str,
        inputs: usize,
        outputs: usize,
        bias: bool,
    ) -> Result<Self, LoadError> {
        Ok(Linear {
            weight: w.tensor(&format!("{prefix}.weight"), [outputs, inputs])?,
            bias: if bias { Some(w.tensor(&format!("{prefix}.bias"), [outputs])?) } else { None },
        })
    }

    /// # Shapes
    /// - `x`: `[..., in]` → `[..., out]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let y = x.matmul(self.weight.clone().transpose().unsqueeze::<D>());
        match &self.bias {
            Some(b) => y + b.clone().unsqueeze::<D>(),
            None => y,
        }
    }
}
