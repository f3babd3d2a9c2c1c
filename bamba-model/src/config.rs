//! Bamba configuration: a serde mirror of Hugging Face `config.json` (4.x and 5.x dialects),
//! resolved and validated into [`BambaConfig`] with derived sizes.
//!
//! Resolution follows transformers 5.x `BambaConfig`: `mamba_d_head: "auto"` is
//! `expand · hidden / n_heads`; RoPE reads `rope_parameters` (5.x) or a top-level `rope_theta` (4.x),
//! and `partial_rotary_factor` is 0.5 unless `rope_parameters` names another; `time_step_limit`
//! may hold `{"__float__": "Infinity"}`, a string, or a bare `Infinity` (not JSON, accepted).

use std::path::Path;

use serde::de::{self, Deserializer};
use serde::Deserialize;
use thiserror::Error;

/// Errors reading or validating a config.
#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown preset {name:?} (known: {known})")]
    UnknownPreset { name: String, known: String },
    #[error("cannot read config {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("malformed generation config {path}: {message}")]
    GenerationConfig { path: String, message: String },
    #[error("malformed config.json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("unsupported model_type {0:?}: this engine runs \"bamba\"")]
    ModelType(String),
    #[error("config field `{0}` must be positive")]
    Zero(&'static str),
    #[error("config field `{field}` is {value}, more than this engine accepts ({limit})")]
    TooLarge { field: &'static str, value: usize, limit: usize },
    #[error("mamba_d_conv must be at least 2 (got {0}): the conv carries a window of d_conv - 1 inputs")]
    ConvKernel(usize),
    #[error("config field `{field}` must be a positive finite number, got {value}")]
    NotPositive { field: &'static str, value: f64 },
    #[error("mamba_d_head ({d_head}) * mamba_n_heads ({n_heads}) must equal mamba_expand * hidden_size ({d_inner})")]
    MambaHeads { d_head: usize, n_heads: usize, d_inner: usize },
    #[error(
        "mamba_n_heads ({n_heads}) must divide mamba_expand * hidden_size ({d_inner}) when mamba_d_head is \"auto\""
    )]
    MambaAuto { n_heads: usize, d_inner: usize },
    #[error("mamba_n_heads ({n_heads}) must be a multiple of mamba_n_groups ({groups})")]
    MambaGroups { n_heads: usize, groups: usize },
    #[error("num_attention_heads ({heads}) must be a multiple of num_key_value_heads ({kv_heads})")]
    KvHeads { heads: usize, kv_heads: usize },
    #[error("hidden_size ({hidden}) must be divisible by num_attention_heads ({heads}) when head_dim is absent")]
    HeadDim { hidden: usize, heads: usize },
    #[error("attn_layer_indices holds {index}, but num_hidden_layers is {layers}")]
    AttentionIndex { index: usize, layers: usize },
    #[error("unsupported activation {0:?} (only \"silu\" is supported)")]
    Activation(String),
    #[error("unsupported rope_type {0:?} (only \"default\" is supported)")]
    RopeType(String),
    #[error("rotary dimension {rotary} (head_dim {head_dim} x partial_rotary_factor {factor}) must be even and at most head_dim")]
    RotaryDim { rotary: usize, head_dim: usize, factor: f64 },
    #[error("time_step_limit [{0}, {1}] is not an interval")]
    TimeStepLimit(f64, f64),
    #[error("mamba_d_head: expected an integer or \"auto\", got {0}")]
    DHead(String),
}

/// What one decoder layer mixes with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    Mamba,
    Attention,
}

impl LayerKind {
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Mamba => "mamba",
            LayerKind::Attention => "attention",
        }
    }
}

/// A float that config.json may spell as a number, `{"__float__": "Infinity"}` or a string.
#[derive(Debug, Clone, Copy)]
struct LenientFloat(f64);

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
enum DHead {
    Size(usize),
    Text(String),
}

/// `eos_token_id`: one id or several.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Debug, Clone, Default, Deserialize)]
struct RopeParameters {
    rope_type: Option<String>,
    rope_theta: Option<f64>,
    partial_rotary_factor: Option<f64>,
}

fn d_vocab() -> usize {
    128000
}
fn d_hidden() -> usize {
    4096
}
fn d_inter() -> usize {
    14336
}
fn d_layers() -> usize {
    32
}
fn d_heads() -> usize {
    32
}
fn d_act() -> String {
    "silu".into()
}
fn d_eps() -> f64 {
    1e-5
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
fn d_max_pos() -> usize {
    262144
}
fn d_tsl() -> Option<(LenientFloat, LenientFloat)> {
    Some((LenientFloat(0.0), LenientFloat(f64::INFINITY)))
}

/// Mirror of `config.json` (both dialects); unknown keys are ignored.
#[derive(Debug, Clone, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    #[serde(default = "d_vocab")]
    vocab_size: usize,
    #[serde(default = "d_hidden")]
    hidden_size: usize,
    #[serde(default = "d_inter")]
    intermediate_size: usize,
    #[serde(default = "d_layers")]
    num_hidden_layers: usize,
    #[serde(default = "d_heads")]
    num_attention_heads: usize,
    #[serde(default)]
    num_key_value_heads: Option<usize>,
    #[serde(default)]
    head_dim: Option<usize>,
    #[serde(default = "d_act")]
    hidden_act: String,
    #[serde(default = "d_eps")]
    rms_norm_eps: f64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    attn_layer_indices: Option<Vec<usize>>,
    #[serde(default = "d_mamba_heads")]
    mamba_n_heads: usize,
    #[serde(default)]
    mamba_d_head: Option<DHead>,
    #[serde(default = "d_one")]
    mamba_n_groups: usize,
    #[serde(default = "d_state")]
    mamba_d_state: usize,
    #[serde(default = "d_conv")]
    mamba_d_conv: usize,
    #[serde(default = "d_expand")]
    mamba_expand: usize,
    #[serde(default = "d_chunk")]
    mamba_chunk_size: usize,
    #[serde(default = "d_true")]
    mamba_conv_bias: bool,
    #[serde(default)]
    mamba_proj_bias: bool,
    #[serde(default = "d_tsl")]
    time_step_limit: Option<(LenientFloat, LenientFloat)>,
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default = "d_max_pos")]
    max_position_embeddings: usize,
    #[serde(default)]
    pad_token_id: Option<u32>,
    #[serde(default)]
    bos_token_id: Option<u32>,
    #[serde(default)]
    eos_token_id: Option<TokenIds>,
}

/// A validated Bamba configuration with derived sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct BambaConfig {
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// MLP width.
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub tie_word_embeddings: bool,
    pub attention_bias: bool,
    pub mlp_bias: bool,
    /// One entry per layer, from `attn_layer_indices`.
    pub layer_kinds: Vec<LayerKind>,
    pub mamba_n_heads: usize,
    pub mamba_d_head: usize,
    pub mamba_n_groups: usize,
    pub mamba_d_state: usize,
    pub mamba_d_conv: usize,
    pub mamba_expand: usize,
    pub mamba_chunk_size: usize,
    pub mamba_conv_bias: bool,
    pub mamba_proj_bias: bool,
    /// dt clamp after softplus; `None` when config.json says `null`.
    pub time_step_limit: Option<(f64, f64)>,
    pub rope_theta: f64,
    pub partial_rotary_factor: f64,
    pub max_position_embeddings: usize,
    pub pad_token_id: Option<u32>,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
}

/// Replaces bare `Infinity`, `-Infinity` and `NaN` tokens (outside strings) with quoted strings, so
/// that writers which emit them (Python's `json.dumps`) produce loadable files.
fn quote_nonfinite_literals(text: &str) -> String {
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

impl BambaConfig {
    /// Reads and validates `config.json` (a file, or a directory holding one).
    pub fn from_path(path: impl AsRef<Path>) -> Result<Self, ConfigError> {
        let path = path.as_ref();
        let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
        let text = crate::files::read_text(&file, crate::files::TEXT_LIMIT)
            .map_err(|source| ConfigError::Io { path: file.display().to_string(), source })?;
        Self::from_json(&text)
    }

    /// Parses and validates config.json text (either dialect).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let raw: HfConfig = serde_json::from_str(&quote_nonfinite_literals(text))?;
        Self::resolve(raw)
    }

    fn resolve(raw: HfConfig) -> Result<Self, ConfigError> {
        if let Some(mt) = &raw.model_type {
            if mt != "bamba" {
                return Err(ConfigError::ModelType(mt.clone()));
            }
        }
        for (name, v) in [
            ("vocab_size", raw.vocab_size),
            ("hidden_size", raw.hidden_size),
            ("intermediate_size", raw.intermediate_size),
            ("num_hidden_layers", raw.num_hidden_layers),
            ("num_attention_heads", raw.num_attention_heads),
            ("mamba_n_heads", raw.mamba_n_heads),
            ("mamba_n_groups", raw.mamba_n_groups),
            ("mamba_d_state", raw.mamba_d_state),
            ("mamba_d_conv", raw.mamba_d_conv),
            ("mamba_expand", raw.mamba_expand),
            ("mamba_chunk_size", raw.mamba_chunk_size),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        // Upper bounds far above any released model, so that every product of sizes below fits in
        // u64/usize and nothing is allocated from a size a file made up.
        for (name, value, limit) in [
            ("vocab_size", raw.vocab_size, 1 << 24),
            ("hidden_size", raw.hidden_size, 1 << 17),
            ("intermediate_size", raw.intermediate_size, 1 << 19),
            ("num_hidden_layers", raw.num_hidden_layers, 1 << 12),
            ("num_attention_heads", raw.num_attention_heads, 1 << 12),
            ("num_key_value_heads", raw.num_key_value_heads.unwrap_or(1), 1 << 12),
            ("head_dim", raw.head_dim.unwrap_or(1), 1 << 12),
            ("mamba_n_heads", raw.mamba_n_heads, 1 << 14),
            (
                "mamba_d_head",
                match raw.mamba_d_head {
                    Some(DHead::Size(v)) => v,
                    _ => 1,
                },
                1 << 12,
            ),
            ("mamba_n_groups", raw.mamba_n_groups, 1 << 14),
            ("mamba_d_state", raw.mamba_d_state, 1 << 12),
            ("mamba_d_conv", raw.mamba_d_conv, 1 << 6),
            ("mamba_expand", raw.mamba_expand, 1 << 6),
            ("mamba_chunk_size", raw.mamba_chunk_size, 1 << 16),
            ("max_position_embeddings", raw.max_position_embeddings, 1 << 24),
        ] {
            if value > limit {
                return Err(ConfigError::TooLarge { field: name, value, limit });
            }
        }
        if raw.mamba_d_conv < 2 {
            return Err(ConfigError::ConvKernel(raw.mamba_d_conv));
        }
        if !(raw.rms_norm_eps.is_finite() && raw.rms_norm_eps > 0.0) {
            return Err(ConfigError::NotPositive { field: "rms_norm_eps", value: raw.rms_norm_eps });
        }
        if raw.hidden_act != "silu" && raw.hidden_act != "swish" {
            return Err(ConfigError::Activation(raw.hidden_act));
        }

        let d_inner = raw.mamba_expand * raw.hidden_size;
        let mamba_d_head = match raw.mamba_d_head {
            Some(DHead::Size(v)) => v,
            Some(DHead::Text(s)) if s != "auto" => return Err(ConfigError::DHead(format!("{s:?}"))),
            _ => {
                if d_inner % raw.mamba_n_heads != 0 {
                    return Err(ConfigError::MambaAuto { n_heads: raw.mamba_n_heads, d_inner });
                }
                d_inner / raw.mamba_n_heads
            }
        };
        if mamba_d_head == 0 {
            return Err(ConfigError::Zero("mamba_d_head"));
        }
        if mamba_d_head * raw.mamba_n_heads != d_inner {
            return Err(ConfigError::MambaHeads { d_head: mamba_d_head, n_heads: raw.mamba_n_heads, d_inner });
        }
        if raw.mamba_n_heads % raw.mamba_n_groups != 0 {
            return Err(ConfigError::MambaGroups { n_heads: raw.mamba_n_heads, groups: raw.mamba_n_groups });
        }

        let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
        if num_kv_heads == 0 {
            return Err(ConfigError::Zero("num_key_value_heads"));
        }
        if raw.num_attention_heads % num_kv_heads != 0 {
            return Err(ConfigError::KvHeads { heads: raw.num_attention_heads, kv_heads: num_kv_heads });
        }
        let head_dim = match raw.head_dim {
            Some(0) => return Err(ConfigError::Zero("head_dim")),
            Some(v) => v,
            None => {
                if raw.hidden_size % raw.num_attention_heads != 0 {
                    return Err(ConfigError::HeadDim { hidden: raw.hidden_size, heads: raw.num_attention_heads });
                }
                raw.hidden_size / raw.num_attention_heads
            }
        };

        let mut layer_kinds = vec![LayerKind::Mamba; raw.num_hidden_layers];
        for &index in raw.attn_layer_indices.iter().flatten() {
            if index >= raw.num_hidden_layers {
                return Err(ConfigError::AttentionIndex { index, layers: raw.num_hidden_layers });
            }
            layer_kinds[index] = LayerKind::Attention;
        }

        let rope = raw.rope_parameters.clone().unwrap_or_default();
        if let Some(kind) = &rope.rope_type {
            if kind != "default" {
                return Err(ConfigError::RopeType(kind.clone()));
            }
        }
        let rope_theta = rope.rope_theta.or(raw.rope_theta).unwrap_or(10000.0);
        if !(rope_theta.is_finite() && rope_theta > 0.0) {
            return Err(ConfigError::NotPositive { field: "rope_theta", value: rope_theta });
        }
        // BambaConfig forces 0.5 unless rope_parameters carries its own factor.
        let partial_rotary_factor = rope.partial_rotary_factor.unwrap_or(0.5);
        let rotary = (head_dim as f64 * partial_rotary_factor) as usize;
        if !(partial_rotary_factor > 0.0) || rotary % 2 != 0 || rotary > head_dim || rotary == 0 {
            return Err(ConfigError::RotaryDim { rotary, head_dim, factor: partial_rotary_factor });
        }

        let time_step_limit = raw.time_step_limit.map(|(lo, hi)| (lo.0, hi.0));
        if let Some((lo, hi)) = time_step_limit {
            if lo.is_nan() || hi.is_nan() || lo > hi {
                return Err(ConfigError::TimeStepLimit(lo, hi));
            }
        }

        Ok(BambaConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_layers: raw.num_hidden_layers,
            num_heads: raw.num_attention_heads,
            num_kv_heads,
            head_dim,
            rms_norm_eps: raw.rms_norm_eps,
            tie_word_embeddings: raw.tie_word_embeddings,
            attention_bias: raw.attention_bias,
            mlp_bias: raw.mlp_bias,
            layer_kinds,
            mamba_n_heads: raw.mamba_n_heads,
            mamba_d_head,
            mamba_n_groups: raw.mamba_n_groups,
            mamba_d_state: raw.mamba_d_state,
            mamba_d_conv: raw.mamba_d_conv,
            mamba_expand: raw.mamba_expand,
            mamba_chunk_size: raw.mamba_chunk_size,
            mamba_conv_bias: raw.mamba_conv_bias,
            mamba_proj_bias: raw.mamba_proj_bias,
            time_step_limit,
            rope_theta,
            partial_rotary_factor,
            max_position_embeddings: raw.max_position_embeddings,
            pad_token_id: raw.pad_token_id,
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                Some(TokenIds::One(id)) => vec![id],
                Some(TokenIds::Many(ids)) => ids,
                None => vec![],
            },
        })
    }

    /// Mamba inner width `expand · hidden` (= heads · d_head).
    pub fn d_inner(&self) -> usize {
        self.mamba_n_heads * self.mamba_d_head
    }
    /// Channels through the causal conv: x, B and C (`d_inner + 2·G·N`).
    pub fn conv_dim(&self) -> usize {
        self.d_inner() + 2 * self.mamba_n_groups * self.mamba_d_state
    }
    /// Output width of `in_proj`: z, xBC, dt.
    pub fn in_proj_dim(&self) -> usize {
        self.d_inner() + self.conv_dim() + self.mamba_n_heads
    }
    /// Dimensions of each q/k head that RoPE rotates.
    pub fn rotary_dim(&self) -> usize {
        (self.head_dim as f64 * self.partial_rotary_factor) as usize
    }
    /// Number of layers of a kind.
    pub fn count(&self, kind: LayerKind) -> usize {
        self.layer_kinds.iter().filter(|&&k| k == kind).count()
    }
    /// dt clamp as f32 for the scan, dropped when it is the no-op `(0, inf)`.
    pub fn dt_limit(&self) -> Option<(f32, f32)> {
        self.time_step_limit
            .filter(|&(lo, hi)| !(lo <= 0.0 && hi == f64::INFINITY))
            .map(|(lo, hi)| (lo as f32, hi as f32))
    }
}
