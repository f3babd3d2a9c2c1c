//! The dense feed-forward, with the residual add of its layer: SwiGLU `down(silu(gate(x)) · up(x))`
//! or Nemotron-H's relu² `down(relu(up(x))²)`.
//!
//! Bamba stores `feed_forward.{gate,up,down}_proj`; Granite stores `shared_mlp.input_linear` with the
//! gate rows above the up rows, and `shared_mlp.output_linear`; Nemotron-H `mixer.{up,down}_proj`.
//! All load into the same weights (the fused one read in two row ranges), so one forward serves all.

use bamba_kernels::BambaOps;
use burn::tensor::activation::{relu, silu};
use burn::tensor::Tensor;

use crate::config::{BambaConfig, MlpActivation};
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::names::MlpNames;
use crate::norm::RmsNorm;

#[derive(Debug, Clone)]
/// A SwiGLU MLP `down(silu(gate(x)) · up(x))`, or without a gate a relu² one `down(relu(up(x))²)`.
pub struct Mlp<B: BambaOps> {
    /// `[hidden] → [width]`, through SiLU; `None` for relu².
    pub gate_proj: Option<Linear<B>>,
    /// `[hidden] → [width]`.
    pub up_proj: Linear<B>,
    /// Carries the residual multiplier (folded in at load).
    pub down_proj: Linear<B>,
}

impl<B: BambaOps> Mlp<B> {
    /// Reads layer `layer`'s MLP of width `i` (`layer` is the `model.layers.N` prefix), stored as
    /// `names` says.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        layer: &str,
        names: MlpNames,
        i: usize,
        c: &BambaConfig,
    ) -> Result<Self, LoadError> {
        let (h, bias, scale) = (c.hidden_size, c.mlp_bias, c.residual_multiplier);
        match names {
            MlpNames::Separate { module } => {
                let p = format!("{layer}.{module}");
                let gate_proj = match c.mlp_activation {
                    MlpActivation::SwiGlu => Some(Linear::load(w, &format!("{p}.gate_proj"), h, i, bias)?),
                    MlpActivation::Relu2 => None,
                };
                Ok(Mlp {
                    gate_proj,
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
                Ok(Mlp { gate_proj: Some(half(w, 0)?), up_proj: half(w, i)?, down_proj: down })
            }
            MlpNames::None => unreachable!("the config resolves `mlp` false for a family without an MLP"),
        }
    }

    /// `residual + down(silu(gate(h)) · up(h))` (or `down(relu(up(h))²)`) with `h = norm(x)`.
    /// SwiGLU without biases, after a norm that rounds before its weight, runs the norm and the
    /// gate·up half as one [`BambaOps::rms_norm_swiglu`]; the down projection adds the residual
    /// itself (one launch each at decode).
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, len, hidden]` → same
    pub fn forward(&self, norm: &RmsNorm<B>, x: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = match &self.gate_proj {
            Some(gate) if gate.bias.is_none() && self.up_proj.bias.is_none() && norm.fusable() => {
                let [batch, len, width] = x.dims();
                let (gate, up) = (gate.weight.clone(), self.up_proj.weight.clone());
                let inner = gate.dims()[0];
                let rows = x.reshape([batch * len, width]);
                B::rms_norm_swiglu(rows, norm.weight.clone(), norm.eps, gate, up).reshape([batch, len, inner])
            }
            Some(gate) => {
                let h = norm.forward(x);
                silu(gate.forward(h.clone())) * self.up_proj.forward(h)
            }
            None => relu(self.up_proj.forward_normed(norm, x)).square(),
        };
        self.down_proj.forward_residual(hidden, residual)
    }
}
