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
    /// The pre-norm of a layer's feed-forward.
    pub feed_forward_norm: &'static str,
    /// How a layer's dense MLP is stored.
    pub mlp: MlpNames,
    /// The norm before the LM head.
    pub final_norm: &'static str,
}

/// The tensors of a layer's dense SwiGLU MLP, under the layer's prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpNames {
    /// `{module}.gate_proj`, `{module}.up_proj`, `{module}.down_proj`.
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

impl TensorNames {
    /// The names `architecture`'s checkpoints use.
    pub fn of(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Bamba => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                feed_forward_norm: "pre_ff_layernorm",
                mlp: MlpNames::Separate { module: "feed_forward" },
                final_norm: "model.final_layernorm.weight",
            },
            Architecture::GraniteMoeHybrid => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                feed_forward_norm: "post_attention_layernorm",
                mlp: MlpNames::Fused { input: "shared_mlp.input_linear", output: "shared_mlp.output_linear" },
                final_norm: "model.norm.weight",
            },
            Architecture::Mamba2 => TensorNames {
                embedding: "backbone.embeddings.weight",
                layers: "backbone.layers",
                input_norm: "norm",
                mamba: "mixer",
                feed_forward_norm: "",
                mlp: MlpNames::None,
                final_norm: "backbone.norm_f.weight",
            },
        }
    }
}
