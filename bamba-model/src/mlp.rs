//! The dense feed-forward, with the residual add of its layer: SwiGLU `down(silu(gate(x)) · up(x))`,
//! GeGLU `down(gelu(gate(x)) · up(x))` (Zamba2) or Nemotron-H's relu² `down(relu(up(x))²)`.
//!
//! Bamba stores `feed_forward.{gate,up,down}_proj`; Granite stores `shared_mlp.input_linear` with the
//! gate rows above the up rows, and `shared_mlp.output_linear`; Nemotron-H `mixer.{up,down}_proj`.
//! All load into the same weights (the fused one read in two row ranges), so one forward serves all.

use bamba_kernels::BambaOps;
use burn::tensor::activation::{gelu, relu, silu};
use burn::tensor::Tensor;

use crate::config::{BambaConfig, MlpActivation};
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::names::MlpNames;
use crate::norm::RmsNorm;

#[derive(Debug, Clone)]
/// A gated MLP `down(act(gate(x)) · up(x))`, or without a gate a relu² one `down(relu(up(x))²)`.
pub struct Mlp<B: BambaOps> {
    /// What runs between the projections.
    pub activation: MlpActivation,
    /// `[hidden] → [width]`, through the activation; `None` for relu².
    pub gate_proj: Option<Linear<B>>,
    /// `[hidden] → [width]`.
    pub up_proj: Linear<B>,
    /// Carries the residual multiplier (folded in at load).
    pub down_proj: Linear<B>,
    /// A per-use adapter added to gate and up (one use of a Zamba2 shared block).
    pub adapter: Option<GateUpAdapter<B>>,
}

/// A low-rank adapter of a fused gate|up projection: one `down`, its output split between the gate's
/// rows and the up rows.
#[derive(Debug, Clone)]
pub struct GateUpAdapter<B: BambaOps> {
    /// `[rank, hidden]`, shared by both halves.
    pub down: Linear<B>,
    /// `[width, rank]`, added to the gate.
    pub gate: Linear<B>,
    /// `[width, rank]`, added to up.
    pub up: Linear<B>,
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
                // Falcon-H1's gate multiplier (before SiLU) and down multiplier fold into them.
                let p = format!("{layer}.{module}");
                let gate_proj = match c.mlp_activation {
                    MlpActivation::SwiGlu | MlpActivation::GeGlu => {
                        Some(Linear::load_scaled(w, &format!("{p}.gate_proj"), h, i, bias, c.scales.mlp_gate)?)
                    }
                    MlpActivation::Relu2 => None,
                };
                let down_scale = scale * c.scales.mlp_down;
                Ok(Mlp {
                    activation: c.mlp_activation,
                    gate_proj,
                    up_proj: Linear::load(w, &format!("{p}.up_proj"), h, i, bias)?,
                    down_proj: Linear::load_scaled(w, &format!("{p}.down_proj"), i, h, bias, down_scale)?,
                    adapter: None,
                })
            }
            MlpNames::Fused { input, output } => {
                let fused = format!("{layer}.{input}.weight");
                let down = Linear::load_scaled(w, &format!("{layer}.{output}"), i, h, false, scale)?;
                Ok(Mlp {
                    activation: c.mlp_activation,
                    gate_proj: Some(Linear::load_rows(w, &fused, [2 * i, h], 0, i)?),
                    up_proj: Linear::load_rows(w, &fused, [2 * i, h], i, i)?,
                    down_proj: down,
                    adapter: None,
                })
            }
            MlpNames::None => unreachable!("the config resolves `mlp` false for a family without an MLP"),
        }
    }

    /// `residual + down(silu(gate(h)) · up(h))` (or `down(relu(up(h))²)`) with `h = norm(x)`.
    /// SwiGLU without biases, after a norm that rounds before its weight, runs the norm and the
    /// gate·up half as one [`BambaOps::rms_norm_swiglu`]; relu² runs the norm inside its one
    /// product ([`Linear::forward_normed`]); the down projection adds the residual itself (one
    /// launch each at decode).
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, len, hidden]` → same
    pub fn forward(&self, norm: &RmsNorm<B>, x: Tensor<B, 3>, residual: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let hidden = match &self.gate_proj {
            Some(gate) if self.fuses_norm(norm) => {
                let [batch, len, width] = x.dims();
                let (gate, up) = (gate.weight.clone(), self.up_proj.weight.clone());
                let inner = gate.dims()[0];
                let rows = x.reshape([batch * len, width]);
                B::rms_norm_swiglu(rows, norm.weight.clone(), norm.eps, gate, up).reshape([batch, len, inner])
            }
            Some(_) => return self.forward_on_normed(norm.forward(x), residual),
            None => relu(self.up_proj.forward_normed(norm, x)).square(),
        };
        self.down_proj.forward_maybe_residual(hidden, residual)
    }

    /// Whether [`Mlp::forward`] runs `norm` inside the fused SwiGLU kernel (so a caller that has
    /// the normalized rows anyway gains nothing by passing them).
    pub fn fuses_norm(&self, norm: &RmsNorm<B>) -> bool {
        let biased = self.up_proj.bias.is_some() || self.gate_proj.as_ref().is_some_and(|g| g.bias.is_some());
        self.activation == MlpActivation::SwiGlu && self.adapter.is_none() && !biased && norm.fusable()
    }

    /// [`Mlp::forward`] on rows already normalized: `residual + down(act(h))` (no add without one).
    ///
    /// # Shapes
    /// - `h`, `residual`: `[batch, len, hidden]` → same
    pub fn forward_on_normed(&self, h: Tensor<B, 3>, residual: Option<Tensor<B, 3>>) -> Tensor<B, 3> {
        let Some(gate) = &self.gate_proj else {
            return self.down_proj.forward_maybe_residual(relu(self.up_proj.forward(h)).square(), residual);
        };
        let (mut gate, mut up) = (gate.forward(h.clone()), self.up_proj.forward(h.clone()));
        if let Some(adapter) = &self.adapter {
            let low = adapter.down.forward(h);
            gate = gate + adapter.gate.forward(low.clone());
            up = up + adapter.up.forward(low);
        }
        let hidden = match self.activation {
            MlpActivation::GeGlu => gelu(gate) * up,
            _ => silu(gate) * up,
        };
        self.down_proj.forward_maybe_residual(hidden, residual)
    }
}
