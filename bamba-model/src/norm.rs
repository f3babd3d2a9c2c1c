//! RMSNorm and the grouped, gated RMSNorm of the Mamba2 mixer. Both do their math in f32, as
//! transformers does, and return the input's dtype.

use burn::tensor::activation::silu;
use burn::tensor::backend::Backend;
use burn::tensor::{DType, Tensor};

use crate::loader::{LoadError, WeightReader};

/// `weight · (x / sqrt(mean(x²) + eps))`, statistics in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: Backend> {
    /// `[hidden]`.
    pub weight: Tensor<B, 1>,
    pub eps: f64,
}

/// Normalises the last dim of an f32 tensor: `x · rsqrt(mean(x²) + eps)`.
fn normalize_f32<B: Backend>(x: Tensor<B, 3>, eps: f64) -> Tensor<B, 3> {
    let variance = x.clone().square().mean_dim(2);
    x * (variance + eps).sqrt().recip()
}

impl<B: Backend> RmsNorm<B> {
    pub fn load(w: &mut WeightReader<'_, B>, name: &str, size: usize, eps: f64) -> Result<Self, LoadError> {
        Ok(RmsNorm { weight: w.tensor(name, [size])?, eps })
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same, same dtype
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = x.dtype();
        let y = normalize_f32(x.cast(DType::F32), self.eps).cast(dtype);
        y * self.weight.clone().unsqueeze::<3>()
    }
}

/// Mamba2's gated RMSNorm: `weight · rmsnorm_per_group(y · silu(z))`, with statistics over each group of
/// `d_inner / n_groups` channels (transformers 5.x; 4.48 normalised the full width, a bug for G > 1).
#[derive(Debug, Clone)]
pub struct GatedRmsNorm<B: Backend> {
    /// `[d_inner]`.
    pub weight: Tensor<B, 1>,
    pub groups: usize,
    pub eps: f64,
}

impl<B: Backend> GatedRmsNorm<B> {
    pub fn load(
        w: &mut WeightReader<'_, B>,
        name: &str,
        size: usize,
        groups: usize,
        eps: f64,
    ) -> Result<Self, LoadError> {
        Ok(GatedRmsNorm { weight: w.tensor(name, [size])?, groups, eps })
    }

    /// # Shapes
    /// - `y`: `[batch, len, d_inner]` (the scan output, f32), `gate`: `[batch, len, d_inner]`
    /// - returns `[batch, len, d_inner]` in `gate`'s dtype (the model dtype)
    pub fn forward(&self, y: Tensor<B, 3>, gate: Tensor<B, 3>) -> Tensor<B, 3> {
        let dtype = gate.dtype();
        let [batch, len, width] = y.dims();
        let gated = y.cast(DType::F32) * silu(gate.cast(DType::F32));
        let grouped = gated.reshape([batch * len, self.groups, width / self.groups]);
        let normed = normalize_f32(grouped, self.eps).reshape([batch, len, width]);
        (normed * self.weight.clone().cast(DType::F32).unsqueeze::<3>()).cast(dtype)
    }
}
