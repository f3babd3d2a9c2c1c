//! Routed experts: a router picks each token's `top_k` experts and weighs them, the experts' outputs
//! are summed ([`BambaOps::moe_experts`]). Two routers: Granite 4.0-H's top-k of the logits with a
//! softmax over the picked ones (SwiGLU experts beside the layer's dense MLP), and Nemotron 3's
//! DeepSeek-V3 router (sigmoid scores, a bias that only steers the choice, group-limited picks;
//! relu² experts beside a shared MLP). Picking runs on the device ([`BambaOps::top_k`]).

use bamba_kernels::{BambaOps, ExpertActivation};
use burn::tensor::activation::sigmoid;
use burn::tensor::{DType, Int, Tensor};

use crate::config::{BambaConfig, MlpActivation, MoeConfig, Router};
use crate::loader::{LoadError, WeightReader};
use crate::names::MoeNames;

#[derive(Debug, Clone)]
/// Top-k routed experts: router, weights of the picked experts, weighted sum of their outputs.
pub struct Moe<B: BambaOps> {
    /// `[experts, hidden]`: in the model dtype for Granite, f32 for the sigmoid router.
    pub router: Tensor<B, 2>,
    /// `[experts]` f32, added to the sigmoid scores to pick experts (`e_score_correction_bias`).
    pub score_bias: Option<Tensor<B, 1>>,
    /// `[experts, 2·width, hidden]` with rows `[gate | up]` (SwiGLU), or `[experts, width, hidden]`.
    pub gate_up: Tensor<B, 3>,
    /// `[experts, hidden, width]`, with the residual multiplier folded in.
    pub down: Tensor<B, 3>,
    /// Sizes and router.
    pub config: MoeConfig,
    /// What each expert computes between its products.
    pub activation: ExpertActivation,
}

impl<B: BambaOps> Moe<B> {
    /// Reads the experts of layer prefix `layer` as `names` says.
    pub fn load(
        w: &mut WeightReader<'_, B>,
        layer: &str,
        names: MoeNames,
        c: &BambaConfig,
        m: MoeConfig,
    ) -> Result<Self, LoadError> {
        let (h, e, i) = (c.hidden_size, m.experts, m.width);
        let activation = match c.mlp_activation {
            MlpActivation::SwiGlu => ExpertActivation::SwiGlu,
            MlpActivation::Relu2 => ExpertActivation::Relu2,
            MlpActivation::GeGlu => unreachable!("no config with GeGLU (Zamba2) has routed experts"),
        };
        let projected = if activation == ExpertActivation::SwiGlu { 2 * i } else { i };
        let scale = c.residual_multiplier;
        let (router, score_bias, gate_up, down) = match names {
            MoeNames::Stacked { module } => {
                let p = format!("{layer}.{module}");
                (
                    w.tensor(&format!("{p}.router.layer.weight"), [e, h])?,
                    None,
                    w.tensor(&format!("{p}.input_linear.weight"), [e, projected, h])?,
                    w.tensor_scaled(&format!("{p}.output_linear.weight"), [e, h, i], scale)?,
                )
            }
            MoeNames::PerExpert { module } => {
                let p = format!("{layer}.{module}");
                let expert_names = |projection: &str| -> Vec<String> {
                    (0..e).map(|expert| format!("{p}.experts.{expert}.{projection}.weight")).collect()
                };
                (
                    // transformers keeps the router in f32 whatever the model dtype.
                    w.tensor_f32(&format!("{p}.gate.weight"), [e, h])?,
                    Some(w.tensor_f32(&format!("{p}.gate.e_score_correction_bias"), [e])?),
                    w.tensor_stacked(&expert_names("up_proj"), [e, projected, h], 1.0)?,
                    w.tensor_stacked(&expert_names("down_proj"), [e, h, i], scale)?,
                )
            }
            MoeNames::None => unreachable!("the config has no experts for a family without them"),
        };
        Ok(Moe { router, score_bias, gate_up, down, config: m, activation })
    }

    /// The routed experts' output for normalized hidden states (no residual).
    ///
    /// # Shapes
    /// - `h`: `[batch, len, hidden]` → same
    pub fn forward(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let [batch, len, hidden] = h.dims();
        let rows = h.reshape([batch * len, hidden]);
        let (weights, experts) = self.route(rows.clone());
        B::moe_experts(rows, weights, experts, self.gate_up.clone(), self.down.clone(), self.activation)
            .reshape([batch, len, hidden])
    }

    /// Each row's picked experts and their weights (f32).
    ///
    /// # Shapes
    /// - `rows`: `[rows, hidden]` → `[rows, top_k]` f32 weights and `[rows, top_k]` expert ids
    fn route(&self, rows: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2, Int>) {
        let k = self.config.top_k;
        match self.config.router {
            // GraniteMoeHybridTopKRouter: logits in the model dtype, routed in f32.
            Router::TopKSoftmax => B::top_k(B::linear_no_bias(rows, self.router.clone()), k, true),
            // DeepseekV3TopkRouter, all in f32.
            Router::SigmoidGrouped { groups, top_groups, normalize, scale } => {
                let scores = sigmoid(B::linear_no_bias(rows.cast(DType::F32), self.router.clone()));
                let [n, experts] = scores.dims();
                let mut choice = scores.clone();
                if let Some(bias) = &self.score_bias {
                    choice = choice + bias.clone().unsqueeze::<2>();
                }
                if top_groups < groups {
                    let per = experts / groups;
                    // A group scores the sum of its two best experts; the best `top_groups` stay.
                    let (best, _) = B::top_k(choice.clone().reshape([n * groups, per]), 2, false);
                    let (_, kept) = B::top_k(best.sum_dim(1).reshape([n, groups]), top_groups, false);
                    let columns = Tensor::<B, 1, Int>::arange(0..groups as i64, &choice.device())
                        .reshape([1, groups])
                        .expand([n, groups]);
                    let mut keep = Tensor::<B, 2>::zeros([n, groups], (&choice.device(), DType::F32));
                    for j in 0..top_groups {
                        let id = kept.clone().narrow(1, j, 1).expand([n, groups]);
                        keep = keep + columns.clone().equal(id).float().cast(DType::F32);
                    }
                    let dropped =
                        keep.reshape([n, groups, 1]).expand([n, groups, per]).reshape([n, experts]).lower_elem(0.5);
                    choice = choice.mask_fill(dropped, f32::NEG_INFINITY);
                }
                let (_, picked) = B::top_k(choice, k, false);
                let mut weights = scores.gather(1, picked.clone());
                if normalize {
                    let sum = weights.clone().sum_dim(1).add_scalar(1e-20);
                    weights = weights / sum.expand([n, k]);
                }
                (weights.mul_scalar(scale), picked)
            }
        }
    }
}
