//! SwiGLU feed-forward: `down(silu(gate(x)) · up(x))`.

use bamba_kernels::BambaOps;
use burn::tensor::activation::silu;
use burn::tensor::Tensor;

use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};

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

    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same
    pub fn forward(&self, x: Tensor<B, 3>) -> Tensor<B, 3> {
        let gate = silu(self.gate_proj.forward(x.clone()));
        self.down_proj.forward(gate * self.up_proj.forward(x))
    }
}
