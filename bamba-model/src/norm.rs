//! RMSNorm and the grouped, gated RMSNorm of the Mamba2 mixer (three modes). Both do their math in f32, as
//! transformers does, and return the model dtype; the computation is [`BambaOps::rms_norm`].

use bamba_kernels::BambaOps;
use burn::tensor::activation::silu;
use burn::tensor::{DType, Tensor};

use crate::config::GatedNorm;
use crate::loader::{LoadError, WeightReader};

/// `weight · (x / sqrt(mean(x²) + eps))`, statistics in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm<B: BambaOps> {
    /// `[hidden]`, in the model dtype.
    pub weight: Tensor<B, 1>,
    /// Added to the mean square.
    pub eps: f64,
    /// The weight in f32 when the product with it is taken in f32 before the one rounding to the
    /// model dtype (Nemotron-H); `None` when the normalized rows are rounded first (Llama's order).
    pub weight_f32: Option<Tensor<B, 1>>,
}

impl<B: BambaOps> RmsNorm<B> {
    /// Reads the `[size]` weight tensor `name`; `weight_in_f32` picks Nemotron-H's order.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        name: &str,
        size: usize,
        eps: f64,
        weight_in_f32: bool,
    ) -> Result<Self, LoadError> {
        let weight: Tensor<B, 1> = w.tensor(name, [size])?;
        // An f32 model rounds nowhere, so both orders are one.
        let weight_f32 = (weight_in_f32 && weight.dtype() != DType::F32).then(|| weight.clone().cast(DType::F32));
        Ok(RmsNorm { weight, eps, weight_f32 })
    }

    /// Whether fused kernels, which take Llama's order, may apply this norm.
    pub fn fusable(&self) -> bool {
        self.weight_f32.is_none()
    }

    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same, in the weight's (model) dtype
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, len, hidden] = x.dims();
        let rows = x.reshape([batch * len, hidden]);
        let out = match &self.weight_f32 {
            None => B::rms_norm(rows, None, self.weight.clone(), 1, self.eps),
            Some(weight) => {
                B::rms_norm(rows.cast(DType::F32), None, weight.clone(), 1, self.eps).cast(self.weight.dtype())
            }
        };
        out.reshape([batch, len, hidden])
    }
}

/// Mamba2's gated RMSNorm, in one of three [`GatedNorm`] modes: `weight · rmsnorm_per_group(y · silu(z))`
/// (statistics over each group of `d_inner / n_groups` channels; transformers 5.x, 4.48 normalised
/// the full width, a bug for G > 1), `weight · rmsnorm_per_group(y) · silu(z)`, or `y · silu(z)`.
#[derive(Debug, Clone)]
pub struct GatedRmsNorm<B: BambaOps> {
    /// `[d_inner]`; `None` in [`GatedNorm::GateOnly`].
    pub weight: Option<Tensor<B, 1>>,
    /// Groups normalized separately.
    pub groups: usize,
    /// Added to the mean square.
    pub eps: f64,
    /// Where the gate goes.
    pub mode: GatedNorm,
    /// The weight in f32 when the products with the weight and the gate are taken in f32 and rounded
    /// once after (Falcon-H1); `None` when the normalized rows are rounded before the weight (Bamba's
    /// order, the fused kernels'), or the model is f32 (no rounding: both orders are one).
    pub weight_f32: Option<Tensor<B, 1>>,
}

impl<B: BambaOps> GatedRmsNorm<B> {
    /// Reads the `[size]` weight tensor `name` (none in [`GatedNorm::GateOnly`]); normalizes in
    /// `groups` groups.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        name: &str,
        size: usize,
        groups: usize,
        eps: f64,
        mode: GatedNorm,
        weight_in_f32: bool,
    ) -> Result<Self, LoadError> {
        let weight: Option<Tensor<B, 1>> = match mode {
            GatedNorm::GateOnly => None,
            GatedNorm::GateThenNorm | GatedNorm::NormThenGate => Some(w.tensor(name, [size])?),
        };
        let weight_f32 =
            weight.as_ref().filter(|w| weight_in_f32 && w.dtype() != DType::F32).map(|w| w.clone().cast(DType::F32));
        Ok(GatedRmsNorm { weight, groups, eps, mode, weight_f32 })
    }

    /// The weight of a norm that fused kernels (gate, then norm, rounding before the weight) may
    /// apply: `None` when they may not.
    pub fn fusable_weight(&self) -> Option<&Tensor<B, 1>> {
        let weight = self.weight.as_ref()?;
        (self.mode == GatedNorm::GateThenNorm && self.weight_f32.is_none()).then_some(weight)
    }

    /// # Shapes
    /// - `y`: `[batch, len, d_inner]` (the scan output, f32), `gate`: `[batch, len, d_inner]`
    /// - returns `[batch, len, d_inner]` in the gate's (model) dtype
    pub fn forward(&self, y: Tensor<B, 3>, gate: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, len, width] = y.dims();
        let dtype = gate.dtype();
        let rows = |t: Tensor<B, 3>| t.reshape([batch * len, width]);
        let f32_rows = |t: Tensor<B, 3>| rows(t).cast(DType::F32);
        let weight = self.weight_f32.as_ref().or(self.weight.as_ref()).cloned();
        let out = match (weight, self.mode) {
            (Some(weight), GatedNorm::GateThenNorm) => {
                B::rms_norm(rows(y), Some(rows(gate)), weight, self.groups, self.eps).cast(dtype)
            }
            (Some(weight), GatedNorm::NormThenGate) => {
                let normed = B::rms_norm(rows(y), None, weight, self.groups, self.eps).cast(DType::F32);
                (normed * silu(f32_rows(gate))).cast(dtype)
            }
            _ => (f32_rows(y) * silu(f32_rows(gate))).cast(dtype),
        };
        out.reshape([batch, len, width])
    }
}
