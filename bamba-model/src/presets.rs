//! Named model shapes for runs that need no checkpoint (`bamba bench --preset`, `bamba info
//! --preset`): the real Bamba-9B config and a Llama-3.1-8B-shaped transformer built by the same
//! graph builder, so a comparison of the two isolates the architecture.

use crate::config::{BambaConfig, ConfigError};

/// Bamba-9B as published (4.x config.json keys), with `max_position_embeddings` raised to 128K so that
/// long-context decode can be measured (the shape, not the trained context length).
const BAMBA_9B: &str = r#"{
  "model_type": "bamba", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
  "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
  "attn_layer_indices": [9, 18, 27],
  "mamba_n_heads": 128, "mamba_d_head": 64, "mamba_n_groups": 1, "mamba_d_state": 128,
  "mamba_d_conv": 4, "mamba_expand": 2, "mamba_chunk_size": 256,
  "mamba_conv_bias": true, "mamba_proj_bias": false, "rms_norm_eps": 1e-5,
  "tie_word_embeddings": false, "max_position_embeddings": 131072,
  "pad_token_id": 0, "bos_token_id": 128000, "eos_token_id": 128001
}"#;

/// Llama-3.1-8B's shape (hidden 4096, MLP 14336, vocab 128256, 32 query / 8 KV heads of 128, full RoPE
/// with theta 500000) with every one of its 32 layers attention.
fn llama_8b_shape() -> String {
    let all: Vec<String> = (0..32).map(|i| i.to_string()).collect();
    BAMBA_9B
        .replace("[9, 18, 27]", &format!("[{}]", all.join(", ")))
        .replace(
            r#""rms_norm_eps""#,
            r#""rope_parameters": {"rope_type": "default", "rope_theta": 500000.0, "partial_rotary_factor": 1.0}, "rms_norm_eps""#,
        )
}

/// Names [`preset`] knows.
pub const PRESETS: [&str; 2] = ["bamba-9b", "llama-8b-shape"];

/// The config of a named shape; an unknown name is [`ConfigError::UnknownPreset`].
pub fn preset(name: &str) -> Result<BambaConfig, ConfigError> {
    match name {
        "bamba-9b" => BambaConfig::from_json(BAMBA_9B),
        "llama-8b-shape" => BambaConfig::from_json(&llama_8b_shape()),
        _ => Err(ConfigError::UnknownPreset { name: name.to_string(), known: PRESETS.join(", ") }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LayerKind;
    use crate::sizes::ParameterCounts;

    #[test]
    fn bamba_9b_has_the_published_parameter_count() {
        let c = preset("bamba-9b").unwrap();
        // architecture.md: 9,780,235,392 parameters; attention at 9, 18, 27.
        assert_eq!(ParameterCounts::new(&c).total, 9_780_235_392);
        assert_eq!(c.count(LayerKind::Attention), 3);
        assert_eq!(c.rotary_dim(), 64);
    }

    #[test]
    fn llama_shape_is_all_attention_with_full_rope() {
        let c = preset("llama-8b-shape").unwrap();
        assert_eq!(c.count(LayerKind::Attention), 32);
        assert_eq!(c.rotary_dim(), 128);
        assert_eq!(c.rope.as_ref().unwrap().theta, 500000.0);
        // Llama-3.1-8B has 8,030,261,248 parameters; the same shape here.
        assert_eq!(ParameterCounts::new(&c).total, 8_030_261_248);
        assert!(matches!(preset("gpt-5"), Err(ConfigError::UnknownPreset { .. })));
    }
}
