//! Checkpoint tensor names per architecture: the one place where the model families differ in how
//! they spell the same blocks.

use crate::config::Architecture;

/// Prefixes and names of the tensors every family has; a layer's are under `{layers}.{index}`.
#[derive(Debug, Clone, Copy)]
pub struct TensorNames {
    pub embedding: &'static str,
    pub layers: &'static str,
    /// The pre-norm of a layer's mixer.
    pub input_norm: &'static str,
    /// The Mamba2 mixer's module.
    pub mamba: &'static str,
    /// The pre-norm of a layer's feed-forward.
    pub feed_forward_norm: &'static str,
    pub final_norm: &'static str,
}

impl TensorNames {
    pub fn of(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Bamba => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                feed_forward_norm: "pre_ff_layernorm",
                final_norm: "model.final_layernorm.weight",
            },
            Architecture::GraniteMoeHybrid => TensorNames {
                embedding: "model.embed_tokens.weight",
                layers: "model.layers",
                input_norm: "input_layernorm",
                mamba: "mamba",
                feed_forward_norm: "post_attention_layernorm",
                final_norm: "model.norm.weight",
            },
            Architecture::Mamba2 => TensorNames {
                embedding: "backbone.embeddings.weight",
                layers: "backbone.layers",
                input_norm: "norm",
                mamba: "mixer",
                feed_forward_norm: "",
                final_norm: "backbone.norm_f.weight",
            },
        }
    }
}
