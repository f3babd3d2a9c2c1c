//! SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`, with the residual add of its layer.

use bamba_kernels::BambaOps;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;

use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::norm::RmsNorm;

#[derive(Debug, Clone)]
pub struct Mlp<B: BambaOps> {
    pub gate_proj: Linear<B>,
    pub up_proj: Linear<B>,
    pub down_proj: Linear<B>,
}

impl<B: BambaOps> Mlp<B> {
    /// Reads `{prefix}.{gate,up,down}_proj`.
    pub fn load(w: &mut WeightReader<'_, B>, prefix: &str, c: &BambaConfig) -> Result<Self, LoadError> {
        let (h, i, bias) = (c.hidden_size, c.intermediate_size, c.mlp_bias);
        Ok(Mlp {
            gate_proj: Linear::load(w, &format!("{prefix}.gate_proj"), h, i, bias)?,
            up_proj: Linear::load(w, &format!("{prefix}.up_proj"), h, i, bias)?,
            down_proj: Linear::load(w, &format!("{prefix}.down_proj"), i, h, bias)?,
        })
    }

    /// `x + down(silu(gate(h)) · up(h))` with `h = norm(x)`. Without biases the norm and the gate·up half
    /// are one [`BambaOps::rms_norm_swiglu`] and the down projection adds the residual itself (one
    /// launch each at decode).
    ///
    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same
    pub fn forward(&self, norm: &RmsNorm<B>, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let residual = x.clone();
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
