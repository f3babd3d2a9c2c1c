//! Granite 4.0-H's mixture of experts: a linear router picks each token's `top_k` experts by logit
//! (on the device, [`top_k`]), a softmax over the picked logits weighs them, and the experts' SwiGLU
//! outputs are summed ([`BambaOps::moe_experts`]). It runs beside the layer's dense (shared) MLP.

use bamba_kernels::BambaOps;
use burn::tensor::activation::softmax;
use burn::tensor::{DType, Int, Tensor};

use crate::config::{BambaConfig, MoeConfig};
use crate::loader::{LoadError, WeightReader};

#[derive(Debug, Clone)]
/// Top-k routed SwiGLU experts (Granite MoE): router, softmax over the picked logits, weighted sum.
pub struct Moe<B: BambaOps> {
    /// `[experts, hidden]`.
    pub router: Tensor<B, 2>,
    /// `[experts, 2·width, hidden]`, rows `[gate | up]`.
    pub gate_up: Tensor<B, 3>,
    /// `[experts, hidden, width]`, with the residual multiplier folded in.
    pub down: Tensor<B, 3>,
    /// Experts per token.
    pub top_k: usize,
}

impl<B: BambaOps> Moe<B> {
    /// Reads `{prefix}.{router.layer, input_linear, output_linear}.weight` (hub names).
    pub fn load(w: &mut WeightReader<'_, B>, prefix: &str, c: &BambaConfig, m: MoeConfig) -> Result<Self, LoadError> {
        let (h, e, i) = (c.hidden_size, m.experts, m.width);
        Ok(Moe {
            router: w.tensor(&format!("{prefix}.router.layer.weight"), [e, h])?,
            gate_up: w.tensor(&format!("{prefix}.input_linear.weight"), [e, 2 * i, h])?,
            down: w.tensor_scaled(&format!("{prefix}.output_linear.weight"), [e, h, i], c.residual_multiplier)?,
            top_k: m.top_k,
        })
    }

    /// The routed experts' output for normalized hidden states (no residual). Router logits are
    /// computed in the model dtype and routed in f32; the weights return to the model dtype
    /// (transformers' `GraniteMoeHybridTopKRouter`).
    ///
    /// # Shapes
    /// - `h`: `[batch, len, hidden]` → same
    pub fn forward(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, len, hidden] = h.dims();
        let dtype = h.dtype();
        let rows = h.reshape([batch * len, hidden]);
        let logits = B::linear_no_bias(rows.clone(), self.router.clone()).cast(DType::F32);
        let (picked, experts) = top_k(logits, self.top_k);
        let weights = softmax(picked, 1).cast(dtype);
        B::moe_experts(rows, weights, experts, self.gate_up.clone(), self.down.clone()).reshape([batch, len, hidden])
    }
}

/// The `k` largest logits of each row, largest first, and their columns, by `k` rounds of argmax
/// and masking: all device ops. Burn 0.21's `topk` sorts, and its GPU backends sort by reading the
/// tensor back to the host, a round trip per MoE layer; `k` is at most a few tens here.
///
/// # Shapes
/// - `logits`: `[rows, experts]` f32 → `[rows, k]` f32 and `[rows, k]` column ids
pub fn top_k<B: BambaOps>(logits: Tensor<B, 2>, k: usize) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
    let [rows, experts] = logits.dims();
    let columns =
        Tensor::<B, 1, Int>::arange(0..experts as i64, &logits.device()).reshape([1, experts]).expand([rows, experts]);
    let mut rest = logits;
    let (mut values, mut ids) = (Vec::with_capacity(k), Vec::with_capacity(k));
    for _ in 0..k {
        let id = rest.clone().argmax(1); // [rows, 1], the first of equal maxima
        values.push(rest.clone().gather(1, id.clone()));
        rest = rest.mask_fill(columns.clone().equal(id.clone().expand([rows, experts])), f32::NEG_INFINITY);
        ids.push(id);
    }
    (Tensor::cat(values, 1), Tensor::cat(ids, 1))
}
