//! Checkpoint tensor names per architecture: the one place where the model families differ in how
//! they spell the same blocks.

use crate::config::Architecture;

/// Prefixes and names of the tensors every family has; a layer's are under `{layers}.{index}`.
#[derive(Debug, Clone, Copy)]
pub struct TensorNames {
    /// The token embedding.
    pub embedding: &'static str,
    /// The prefix of decoder layers.
    pub layers: &'static str,
    /// The pre-norm of a layer's mixer.
    pub input_norm: &'static str,
    /// The Mamba2 mixer's module.
    pub mamba: &'static str,
    /// The attention's module.
    pub attention: &'static str,
    /// The pre-norm of a mixer layer's feed-forward (a feed-forward layer has `input_norm` alone).
    pub feed_forward_norm: &'static str,
    /// How a layer's dense MLP is stored.
    pub mlp: MlpNames,
    /// How a layer's routed experts are stored.
    pub moe: MoeNames,
    /// How the MLP beside the routed experts is stored.
    pub moe_shared_mlp: MlpNames,
    /// The norm before the LM head.
    pub final_norm: &'static str,
    /// Prefixes of checkpoint tensors the model does not run and transformers ignores too
    /// (Nemotron's multi-token-prediction head).
    pub ignored: &'static [&'static str],
}

/// The tensors of a layer's dense MLP, under the layer's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpNames {
    /// `{module}.gate_proj` (SwiGLU only), `{module}.up_proj`, `{module}.down_proj`.
    Separate {
        /// The MLP's module under the layer prefix.
        module: &'static str,
    },
    /// `input` holds the gate rows above the up rows; `output` is the down projection (no biases).
    Fused {
        /// The fused gate|up projection.
        input: &'static str,
        /// The down projection.
        output: &'static str,
    },
    /// The family has no MLP.
    None,
}

/// The tensors of a layer's routed experts, under the layer's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MoeNames {
    /// `{module}.router.layer` `[E, H]`, `{module}.input_linear` `[E, 2I, H]` (rows `[gate | up]`),
    /// `{module}.output_linear` `[E, H, I]` (Granite).
    Stacked {
        /// The experts' module.
        module: &'static str,
    },
    /// `{module}.gate.weight` `[E, H]` and `{module}.gate.e_score_correction_bias` `[E]` (both f32),
    /// `{module}.experts.{e}.up_proj.weight` `[I, H]` and `.down_proj.weight` `[H, I]` per expert
    /// (Nemotron-H).
    PerExpert {
        /// The experts' module.
        module: &'static str,
    },
    /// The family has no experts.
    None,
}

impl TensorNames {
    /// The names `architecture`'s checkpoints use.
    pub fn of(architecture: Architecture) -> Self {
        match architecture {
            // Falcon-H1's layers hold `mamba` and `self_attn` side by side under Bamba's names.
            Architecture::Bamba | Architecture::FalconH1 => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                attention: "self_attn",
                feed_forward_norm: "pre_ff_layernorm",
                mlp: MlpNames::Separate { module: "feed_forward" },
                moe: MoeNames::None,
                moe_shared_mlp: MlpNames::None,
                final_norm: "model.final_layernorm.weight",
                ignored: &[],
            },
            Architecture::GraniteMoeHybrid => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                attention: "self_attn",
                feed_forward_norm: "post_attention_layernorm",
                mlp: MlpNames::Fused { input: "shared_mlp.input_linear", output: "shared_mlp.output_linear" },
                moe: MoeNames::Stacked { module: "block_sparse_moe" },
                moe_shared_mlp: MlpNames::Fused {
                    input: "shared_mlp.input_linear",
                    output: "shared_mlp.output_linear",
                },
                final_norm: "model.norm.weight",
                ignored: &[],
            },
            Architecture::Mamba2 => TensorNames {
                embedding: "backbone.embeddings.weight",
                layers: "backbone.layers",
                input_norm: "norm",
                mamba: "mixer",
                attention: "",
                feed_forward_norm: "",
                mlp: MlpNames::None,
                moe: MoeNames::None,
                moe_shared_mlp: MlpNames::None,
                final_norm: "backbone.norm_f.weight",
                ignored: &[],
            },
            // The shared blocks' MLP, under `shared_transformer` (see `shared.rs` for the rest).
            Architecture::Zamba2 => TensorNames {
                mlp: MlpNames::Fused { input: "feed_forward.gate_up_proj", output: "feed_forward.down_proj" },
                ..TensorNames::of(Architecture::Bamba)
            },
            Architecture::NemotronH => TensorNames {
                embedding: "backbone.embeddings.weight",
                layers: "backbone.layers",
                input_norm: "norm",
                mamba: "mixer",
                attention: "mixer",
                feed_forward_norm: "",
                mlp: MlpNames::Separate { module: "mixer" },
                moe: MoeNames::PerExpert { module: "mixer" },
                moe_shared_mlp: MlpNames::Separate { module: "mixer.shared_experts" },
                final_norm: "backbone.norm_f.weight",
                ignored: &["mtp."],
            },
        }
    }
}
