//! The serde mirror of `config.json`: every key any supported `model_type` reads, in both the 4.x and
//! 5.x dialects of transformers. Keys whose default depends on the model type are `Option`s that
//! [`super::resolve`] fills in; unknown keys are ignored.

use serde::de::{self, Deserializer};
use serde::Deserialize;

/// A float that config.json may spell as a number, `{"__float__": "Infinity"}` or a string.
#[derive(Debug, Clone, Copy)]
pub(super) struct LenientFloat(pub f64);

impl<'de> Deserialize<'de> for LenientFloat {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Num(f64),
            Str(String),
            Wrapped {
                #[serde(rename = "__float__")]
                value: String,
            },
        }
        let parse = |s: &str| match s.trim().to_ascii_lowercase().as_str() {
            "infinity" | "inf" | "+infinity" | "+inf" => Ok(f64::INFINITY),
            "-infinity" | "-inf" => Ok(f64::NEG_INFINITY),
            other => other.parse::<f64>().map_err(|_| de::Error::custom(format!("not a float: {s:?}"))),
        };
        match Raw::deserialize(d)? {
            Raw::Num(v) => Ok(LenientFloat(v)),
            Raw::Str(s) | Raw::Wrapped { value: s } => parse(&s).map(LenientFloat),
        }
    }
}

/// `mamba_d_head`: an integer or `"auto"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum DHead {
    Size(usize),
    Text(String),
}

/// `eos_token_id`: one id or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub(super) enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// `rope_parameters` (5.x) or `rope_scaling` (4.x): the kind and every scaling key transformers reads.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct RopeParameters {
    pub rope_type: Option<String>,
    /// The 4.x spelling of `rope_type`.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub rope_theta: Option<f64>,
    pub partial_rotary_factor: Option<f64>,
    pub factor: Option<f64>,
    pub original_max_position_embeddings: Option<usize>,
    pub attention_factor: Option<f64>,
    pub beta_fast: Option<f64>,
    pub beta_slow: Option<f64>,
    pub mscale: Option<f64>,
    pub mscale_all_dim: Option<f64>,
    pub truncate: Option<bool>,
    pub low_freq_factor: Option<f64>,
    pub high_freq_factor: Option<f64>,
    pub short_factor: Option<Vec<f64>>,
    pub long_factor: Option<Vec<f64>>,
}

fn d_hidden() -> usize {
    4096
}
fn d_heads() -> usize {
    32
}
fn d_act() -> String {
    "silu".into()
}
fn d_mamba_heads() -> usize {
    128
}
fn d_one() -> usize {
    1
}
fn d_state() -> usize {
    256
}
fn d_conv() -> usize {
    4
}
fn d_expand() -> usize {
    2
}
fn d_chunk() -> usize {
    256
}
fn d_true() -> bool {
    true
}
fn d_tsl() -> Option<(LenientFloat, LenientFloat)> {
    Some((LenientFloat(0.0), LenientFloat(f64::INFINITY)))
}

/// A key that is present (even as `null`) becomes `Some(value)`; with `#[serde(default)]` an absent
/// one stays `None`.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// Mirror of `config.json`. Serde defaults are the ones `bamba` and `granitemoehybrid` share; `mamba2`
/// keys are moved onto them by `resolve`.
#[derive(Debug, Clone, Deserialize)]
pub(super) struct HfConfig {
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    #[serde(default = "d_hidden")]
    pub hidden_size: usize,
    pub intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    #[serde(default = "d_heads")]
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "d_act")]
    pub hidden_act: String,
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// bamba: which layers are attention.
    #[serde(default)]
    pub attn_layer_indices: Option<Vec<usize>>,
    /// granitemoehybrid: `"mamba"`/`"attention"` (hub) or `"linear_attention"`/`"full_attention"`
    /// (transformers 5.x) per layer.
    #[serde(default)]
    pub layer_types: Option<Vec<String>>,
    #[serde(default = "d_mamba_heads")]
    pub mamba_n_heads: usize,
    #[serde(default)]
    pub mamba_d_head: Option<DHead>,
    #[serde(default = "d_one")]
    pub mamba_n_groups: usize,
    #[serde(default = "d_state")]
    pub mamba_d_state: usize,
    #[serde(default = "d_conv")]
    pub mamba_d_conv: usize,
    #[serde(default = "d_expand")]
    pub mamba_expand: usize,
    #[serde(default = "d_chunk")]
    pub mamba_chunk_size: usize,
    #[serde(default = "d_true")]
    pub mamba_conv_bias: bool,
    #[serde(default)]
    pub mamba_proj_bias: bool,
    #[serde(default = "d_tsl")]
    pub time_step_limit: Option<(LenientFloat, LenientFloat)>,
    #[serde(default)]
    pub rope_parameters: Option<RopeParameters>,
    /// The 4.x dialect's scaling object; wins over `rope_parameters`, as in transformers.
    #[serde(default)]
    pub rope_scaling: Option<RopeParameters>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// Phi-3 style pretraining context beside `rope_scaling`; wins over the object's own.
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
    /// granitemoehybrid: `"rope"` turns full-width RoPE on; anything else (`null`, `"nope"`) is none.
    #[serde(default)]
    pub position_embedding_type: Option<String>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    pub max_position_embeddings: Option<usize>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    // granitemoehybrid multipliers and MoE.
    pub embedding_multiplier: Option<f64>,
    pub residual_multiplier: Option<f64>,
    pub attention_multiplier: Option<f64>,
    pub logits_scaling: Option<f64>,
    pub shared_intermediate_size: Option<usize>,
    pub num_local_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    // mamba2 spells the mixer's keys without the `mamba_` prefix (`head_dim` is the SSM head's).
    pub num_heads: Option<usize>,
    pub state_size: Option<usize>,
    pub n_groups: Option<usize>,
    pub expand: Option<usize>,
    pub conv_kernel: Option<usize>,
    pub chunk_size: Option<usize>,
    pub use_bias: Option<bool>,
    pub use_conv_bias: Option<bool>,
    pub layer_norm_epsilon: Option<f64>,
    pub residual_in_fp32: Option<bool>,
    // falcon_h1: the SSM width, the gated norm, and the µP multipliers.
    /// Absent (`None`) is FalconH1Config's default 1024; `null` (`Some(None)`) is `expand · hidden`.
    #[serde(default, deserialize_with = "present")]
    pub mamba_d_ssm: Option<Option<usize>>,
    pub mamba_rms_norm: Option<bool>,
    pub mamba_norm_before_gate: Option<bool>,
    pub projectors_bias: Option<bool>,
    pub lm_head_multiplier: Option<f64>,
    pub key_multiplier: Option<f64>,
    pub attention_in_multiplier: Option<f64>,
    pub attention_out_multiplier: Option<f64>,
    pub ssm_in_multiplier: Option<f64>,
    pub ssm_out_multiplier: Option<f64>,
    pub mlp_multipliers: Option<Vec<f64>>,
    pub ssm_multipliers: Option<Vec<f64>>,
    /// Keys of mamba_ssm's own config format (state-spaces/mamba2-*), which this engine does not read.
    pub d_model: Option<serde_json::Value>,
    pub ssm_cfg: Option<serde_json::Value>,
}

/// The keys only `nemotron_h` reads, and the legacy `mamba_*` spellings that win over its own keys
/// when present (`NemotronHConfig.__post_init__`); read in a second pass over the same text because
/// [`HfConfig`] gives some of those names Bamba's defaults.
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct NemotronHKeys {
    pub layers_block_type: Option<Vec<String>>,
    pub hybrid_override_pattern: Option<String>,
    pub mamba_num_heads: Option<usize>,
    pub mamba_head_dim: Option<usize>,
    pub ssm_state_size: Option<usize>,
    pub n_groups: Option<usize>,
    pub mamba_n_groups: Option<usize>,
    pub conv_kernel: Option<usize>,
    pub mamba_d_conv: Option<usize>,
    pub chunk_size: Option<usize>,
    pub mamba_chunk_size: Option<usize>,
    pub use_conv_bias: Option<bool>,
    pub mamba_conv_bias: Option<bool>,
    pub time_step_limit: Option<(LenientFloat, LenientFloat)>,
    pub mamba_dt_limit: Option<(LenientFloat, LenientFloat)>,
    pub use_bias: Option<bool>,
    pub mamba_hidden_act: Option<String>,
    pub mlp_hidden_act: Option<String>,
    pub attention_head_dim: Option<usize>,
    pub n_routed_experts: Option<usize>,
    pub num_local_experts: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
    pub moe_shared_expert_intermediate_size: Option<usize>,
    pub moe_latent_size: Option<usize>,
    pub n_group: Option<usize>,
    pub topk_group: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub routed_scaling_factor: Option<f64>,
}

/// The keys only `zamba2` reads, in a second pass like [`NemotronHKeys`].
#[derive(Debug, Clone, Default, Deserialize)]
pub(super) struct Zamba2Keys {
    pub layers_block_type: Option<Vec<String>>,
    // Keys whose Zamba2 default differs from the one `HfConfig` gives them.
    pub hidden_size: Option<usize>,
    pub mamba_d_state: Option<usize>,
    pub hidden_act: Option<String>,
    pub tie_word_embeddings: Option<bool>,
    pub n_mamba_heads: Option<usize>,
    pub mamba_ngroups: Option<usize>,
    pub time_step_min: Option<f64>,
    pub add_bias_linear: Option<bool>,
    pub num_mem_blocks: Option<usize>,
    pub use_shared_attention_adapter: Option<bool>,
    pub adapter_rank: Option<usize>,
    pub use_mem_rope: Option<bool>,
    pub use_long_context: Option<bool>,
}

/// Replaces bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) with quoted strings, so
/// that writers which emit them (Python's `json.dumps`) produce loadable files.
pub(super) fn quote_nonfinite_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = text;
    while let Some(ch) = rest.chars().next() {
        if in_string {
            out.push(ch);
            if escaped {
                escaped = false;
            } else if ch == '\\' {
                escaped = true;
            } else if ch == '"' {
                in_string = false;
            }
            rest = &rest[ch.len_utf8()..];
            continue;
        }
        if ch == '"' {
            in_string = true;
        } else if let Some(tok) = ["-Infinity", "Infinity", "NaN"].iter().find(|t| rest.starts_with(**t)) {
            out.push('"');
            out.push_str(tok);
            out.push('"');
            rest = &rest[tok.len()..];
            continue;
        }
        out.push(ch);
        rest = &rest[ch.len_utf8()..];
    }
    out
}
