//! SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`, with the residual add of its layer.
//!
//! Bamba stores `feed_forward.{gate,up,down}_proj`; Granite stores `shared_mlp.input_linear` with the
//! gate rows above the up rows, and `shared_mlp.output_linear`. Both load into the same three
//! weights (the fused one read in two row ranges), so one forward serves both.

use bamba_kernels::BambaOps;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;

use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::names::MlpNames;
use crate::norm::RmsNorm;

#[derive(Debug, Clone)]
/// A SwiGLU MLP: `down(silu(gate(x)) · up(x))`.
pub struct Mlp<B: BambaOps> {
    /// `[hidden] → [width]`, through SiLU.
    pub gate_proj: Linear<B>,
    /// `[hidden] → [width]`.
    pub up_proj: Linear<B>,
    /// Carries the residual multiplier (folded in at load).
    pub down_proj: Linear<B>,
}

impl<B: BambaOps> Mlp<B> {
    /// Reads layer `layer`'s MLP (`layer` is the `model.layers.N` prefix), stored as `names` says.
    pub fn load(w: &mut WeightReader<'_, B>, layer: &str, names: MlpNames, c: &BambaConfig) -> Result<Self, LoadError> {
        let (h, i, bias, scale) = (c.hidden_size, c.intermediate_size, c.mlp_bias, c.residual_multiplier);
        match names {
            MlpNames::Separate { module } => {
                let p = format!("{layer}.{module}");
                Ok(Mlp {
                    gate_proj: Linear::load(w, &format!("{p}.gate_proj"), h, i, bias)?,
                    up_proj: Linear::load(w, &format!("{p}.up_proj"), h, i, bias)?,
                    down_proj: Linear::load_scaled(w, &format!("{p}.down_proj"), i, h, bias, scale)?,
                })
            }
            MlpNames::Fused { input, output } => {
                let fused = format!("{layer}.{input}.weight");
                let half = |w: &mut WeightReader<'_, B>, first| -> Result<Linear<B>, LoadError> {
                    Ok(Linear { weight: w.tensor_rows(&fused, &[2 * i, h], first, [i, h])?, bias: None })
                };
                let down = Linear::load_scaled(w, &format!("{layer}.{output}"), i, h, false, scale)?;
                Ok(Mlp { gate_proj: half(w, 0)?, up_proj: half(w, i)?, down_proj: down })
            }
            MlpNames::None => unreachable!("the config resolves `mlp` false for a family without an MLP"),
        }
    }

    /// `residual + down(silu(gate(h)) · up(h))` with `h = norm(x)`. Without biases the norm and the
    /// gate·up half are one [`BambaOps::rms_norm_swiglu`] and the down projection adds the residual
    /// itself (one launch each at decode).
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, len, hidden]` → same
    pub fn forward(&self, norm: &RmsNorm<B>, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = if self.gate_proj.bias.is_none() && self.up_proj.bias.is_none() {
            let [batch, len, width] = x.dims();
            let (gate, up) = (self.gate_proj.weight.clone(), self.up_proj.weight.clone());
            let inner = gate.dims()[0];
            let rows = x.reshape([batch * len, width]);
            B::rms_norm_swiglu(rows, norm.weight.clone(), norm.eps, gate, up).reshape([batch, len, inner])
        } else {
            let h = norm.forward(x);
            silu(self.gate_proj.forward(h.clone())) * self.up_proj.forward(h)
        };
        self.down_proj.forward_residual(hidden, residual)
    }
}
