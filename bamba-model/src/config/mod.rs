//! Model configuration: Hugging Face `config.json` of any supported `model_type`, resolved and
//! validated into one [`BambaConfig`] — the layer plan the graph builder runs.
//!
//! Supported `model_type`s ([`Architecture`]): `bamba` (transformers 4.x and 5.x dialects),
//! `granitemoehybrid` (IBM Granite 4.0: the hybrid H models, dense or MoE, and the all-attention
//! dense ones), `mamba2`, `nemotron_h` (NVIDIA Nemotron-H, Nemotron Nano 2, Nemotron 3) and
//! `falcon_h1` (TII Falcon-H1). All share Bamba's Mamba2 mixer, attention and norms; Granite adds
//! multipliers, NoPE or full RoPE, a fused gate|up MLP and an optional top-k MoE beside it; Mamba2
//! layers are the mixer alone; Nemotron-H layers are one sub-block each (Mamba2, NoPE attention,
//! relu² MLP or a sigmoid-routed relu² MoE); Falcon-H1 runs Mamba2 and attention side by side on the
//! same normalized input in every layer, with µP multipliers folded into the weights; `zamba2` (Zyphra
//! Zamba2) is Mamba2 layers, some of which first run one of a few shared attention + MLP blocks on
//! `concat(h, embeddings)` (with per-use LoRA adapters) and add its output to the Mamba input.
//! Resolution rules per type are in `resolve.rs`.

mod json;
mod resolve;
mod rope;

use std::path::Path;

use thiserror::Error;

use json::{quote_nonfinite_literals, HfConfig, NemotronHKeys, Zamba2Keys};
pub use rope::{RopeConfig, RopeScaling};

/// Errors reading or validating a config.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
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
    #[error("unsupported model_type {0:?}: this engine runs {supported}", supported = Architecture::SUPPORTED)]
    ModelType(String),
    #[error(
        "config.json is in mamba_ssm's format (d_model, ssm_cfg, no model_type); this engine reads the \
         transformers format (model_type \"mamba2\"): use a checkpoint converted to it"
    )]
    MambaSsmFormat,
    #[error("config field `{0}` must be positive")]
    Zero(&'static str),
    #[error("config field `{field}` is {value}, more than this engine accepts ({limit})")]
    TooLarge { field: &'static str, value: usize, limit: usize },
    #[error("mamba_d_conv must be at least 2 (got {0}): the conv carries a window of d_conv - 1 inputs")]
    ConvKernel(usize),
    #[error("config field `{field}` must be a positive finite number, got {value}")]
    NotPositive { field: &'static str, value: f64 },
    #[error(
        "mamba_d_head ({d_head}) * mamba_n_heads ({n_heads}) must equal the mixer width ({d_inner}: mamba_expand * \
         hidden_size, or Falcon-H1's mamba_d_ssm)"
    )]
    MambaHeads { d_head: usize, n_heads: usize, d_inner: usize },
    #[error(
        "mamba_n_heads ({n_heads}) must divide the mixer width ({d_inner}: mamba_expand * hidden_size, or \
         Falcon-H1's mamba_d_ssm) when mamba_d_head is \"auto\""
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
    #[error("layer_types has {found} entries, but num_hidden_layers is {layers}")]
    LayerTypesLength { found: usize, layers: usize },
    #[error("layer_types[{index}] is {name:?}; expected \"mamba\", \"attention\", \"linear_attention\" or \"full_attention\"")]
    LayerType { index: usize, name: String },
    #[error("num_experts_per_tok ({top_k}) must be between 1 and num_local_experts ({experts})")]
    TopK { top_k: usize, experts: usize },
    #[error("unsupported {key} {name:?} (supported: {supported})")]
    Activation { key: &'static str, name: String, supported: &'static str },
    #[error("layers_block_type[{index}] is {name:?}; expected \"mamba\", \"attention\", \"mlp\", \"moe\" (or their 5.x names)")]
    BlockType { index: usize, name: String },
    #[error(
        "hybrid_override_pattern has {found:?} at {index}; expected one of M (Mamba2), * (attention), - (MLP), E (MoE)"
    )]
    Pattern { index: usize, found: char },
    #[error("{0}: this engine does not support it yet")]
    Unsupported(&'static str),
    #[error(
        "n_routed_experts ({experts}) must split into n_group ({groups}) groups of at least 2, and topk_group \
         ({top_groups}) groups must hold num_experts_per_tok ({top_k}) experts"
    )]
    ExpertGroups { experts: usize, groups: usize, top_groups: usize, top_k: usize },
    #[error(
        "unsupported rope_type {0:?} (supported: \"default\", \"linear\", \"dynamic\", \"yarn\", \"llama3\", \"longrope\")"
    )]
    RopeType(String),
    #[error("rope_type {rope_type:?}: {problem}")]
    RopeParameter { rope_type: String, problem: String },
    #[error("rotary dimension {rotary} (head_dim {head_dim} x partial_rotary_factor {factor}) must be even and at most head_dim")]
    RotaryDim { rotary: usize, head_dim: usize, factor: f64 },
    #[error("time_step_limit [{0}, {1}] is not an interval")]
    TimeStepLimit(f64, f64),
    #[error("mamba_d_head: expected an integer or \"auto\", got {0}")]
    DHead(String),
    #[error(
        "Zamba2's shared attention reads 2 * hidden_size ({width}) channels, which num_attention_heads ({heads}) \
         must divide"
    )]
    SharedHeads { width: usize, heads: usize },
    #[error("{key} must hold {expected} numbers, got {found}")]
    MultiplierCount { key: &'static str, expected: usize, found: usize },
}

/// The `model_type` a config came from: it fixes tensor names and the defaults of absent keys.
/// Everything numeric the forward needs is in [`BambaConfig`]'s fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    /// `bamba`: `feed_forward.{gate,up,down}_proj`, `pre_ff_layernorm`, `final_layernorm`.
    Bamba,
    /// `granitemoehybrid`: `shared_mlp.{input,output}_linear`, `block_sparse_moe`,
    /// `post_attention_layernorm`, `norm`.
    GraniteMoeHybrid,
    /// `mamba2`: `backbone.*`, one norm and the mixer per layer, `norm_f`.
    Mamba2,
    /// `nemotron_h`: `backbone.*`, one norm and one `mixer` (Mamba2, attention, MLP or MoE) per
    /// layer, `norm_f`.
    NemotronH,
    /// `falcon_h1`: Bamba's names, with `mamba` and `self_attn` in every layer.
    FalconH1,
    /// `zamba2`: Bamba's names; a shared-block layer holds `mamba_decoder.*`, `linear` and (its
    /// block's first use only) `shared_transformer.*`.
    Zamba2,
}

impl Architecture {
    /// The `model_type`s [`BambaConfig`] reads, for error messages.
    pub const SUPPORTED: &'static str =
        "\"bamba\", \"granitemoehybrid\", \"mamba2\", \"nemotron_h\", \"falcon_h1\" and \"zamba2\"";

    /// config.json's `model_type` for this architecture.
    pub fn model_type(self) -> &'static str {
        match self {
            Architecture::Bamba => "bamba",
            Architecture::GraniteMoeHybrid => "granitemoehybrid",
            Architecture::Mamba2 => "mamba2",
            Architecture::NemotronH => "nemotron_h",
            Architecture::FalconH1 => "falcon_h1",
            Architecture::Zamba2 => "zamba2",
        }
    }

    fn from_model_type(name: Option<&str>) -> Result<Self, ConfigError> {
        match name {
            None | Some("bamba") => Ok(Architecture::Bamba),
            Some("granitemoehybrid") => Ok(Architecture::GraniteMoeHybrid),
            Some("mamba2") => Ok(Architecture::Mamba2),
            Some("nemotron_h") => Ok(Architecture::NemotronH),
            Some("falcon_h1") => Ok(Architecture::FalconH1),
            Some("zamba2") => Ok(Architecture::Zamba2),
            Some(other) => Err(ConfigError::ModelType(other.to_string())),
        }
    }
}

/// What one decoder layer is: a sequence mixer (followed by a feed-forward where
/// [`BambaConfig::mlp`] says so), or a feed-forward alone (Nemotron-H's MLP and MoE layers).
/// A Falcon-H1 layer's mixer is Mamba2 and attention side by side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// A Mamba2 mixer: holds a conv window and an SSM state in the cache.
    Mamba,
    /// Self-attention: holds keys and values in the cache.
    Attention,
    /// A dense MLP alone: no cache.
    Mlp,
    /// Routed experts and a shared MLP alone: no cache.
    Moe,
    /// Mamba2 and attention in parallel on one normalized input, their outputs summed (Falcon-H1):
    /// holds both a Mamba state and keys and values.
    Parallel,
    /// One of the shared attention + MLP blocks on `concat(h, embeddings)`, whose output (through the
    /// layer's own linear) is added to the Mamba2 mixer's input (Zamba2's `hybrid` layers): holds a
    /// Mamba state and the shared attention's keys and values of this use.
    Shared,
}

impl LayerKind {
    /// Every kind, in the order `bamba info` lists them.
    pub const ALL: [LayerKind; 6] = [
        LayerKind::Mamba,
        LayerKind::Attention,
        LayerKind::Parallel,
        LayerKind::Shared,
        LayerKind::Mlp,
        LayerKind::Moe,
    ];

    /// The name `bamba info` prints (`mamba` / `attention` / `mlp` / `moe`).
    pub fn name(self) -> &'static str {
        match self {
            LayerKind::Mamba => "mamba",
            LayerKind::Attention => "attention",
            LayerKind::Mlp => "mlp",
            LayerKind::Moe => "moe",
            LayerKind::Parallel => "parallel",
            LayerKind::Shared => "shared",
        }
    }

    /// Its letter in a layer plan (Nemotron-H's `hybrid_override_pattern` letters).
    pub fn letter(self) -> char {
        match self {
            LayerKind::Mamba => 'M',
            LayerKind::Attention => '*',
            LayerKind::Mlp => '-',
            LayerKind::Moe => 'E',
            LayerKind::Parallel => 'P',
            LayerKind::Shared => 'S',
        }
    }

    /// Whether the layer mixes along the sequence (and so holds state in the cache).
    pub fn is_mixer(self) -> bool {
        self.has_mamba() || self.has_attention()
    }

    /// Whether the layer runs a Mamba2 mixer (and holds its conv window and SSM state).
    pub fn has_mamba(self) -> bool {
        matches!(self, LayerKind::Mamba | LayerKind::Parallel | LayerKind::Shared)
    }

    /// Whether the layer runs attention (and holds keys and values).
    pub fn has_attention(self) -> bool {
        matches!(self, LayerKind::Attention | LayerKind::Parallel | LayerKind::Shared)
    }
}

/// How the Mamba2 mixer combines the scan output `y` with its gate `z` before `out_proj`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GatedNorm {
    /// `rmsnorm(y · silu(z))` per group (Mamba2, Bamba, Granite, Nemotron-H; Falcon-H1's
    /// `mamba_rms_norm` with `mamba_norm_before_gate` false).
    GateThenNorm,
    /// `rmsnorm(y) · silu(z)` per group (Falcon-H1's `mamba_norm_before_gate` true).
    NormThenGate,
    /// `y · silu(z)`, no norm and no norm weight (Falcon-H1 without `mamba_rms_norm`).
    GateOnly,
}

/// Constant multipliers around the projections (Falcon-H1's µP multipliers; all 1 in the other
/// families), folded into the weights at load in f32 before the one rounding to the compute dtype.
/// An input multiplier scales a projection's weight but not its bias; an output multiplier both.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ProjectionScales {
    /// The Mamba mixer's input (`ssm_in_multiplier`).
    pub mamba_in: f64,
    /// `in_proj`'s output segments z, x, B, C, dt (`ssm_multipliers`).
    pub mamba_segments: [f64; 5],
    /// The Mamba mixer's output (`ssm_out_multiplier`).
    pub mamba_out: f64,
    /// The attention's input (`attention_in_multiplier`).
    pub attention_in: f64,
    /// The keys, before RoPE (`key_multiplier`).
    pub key: f64,
    /// The attention's output (`attention_out_multiplier`).
    pub attention_out: f64,
    /// The MLP's gate projection, before SiLU (`mlp_multipliers[0]`).
    pub mlp_gate: f64,
    /// The MLP's down projection (`mlp_multipliers[1]`).
    pub mlp_down: f64,
}

impl ProjectionScales {
    /// No multipliers.
    pub const ONE: ProjectionScales = ProjectionScales {
        mamba_in: 1.0,
        mamba_segments: [1.0; 5],
        mamba_out: 1.0,
        attention_in: 1.0,
        key: 1.0,
        attention_out: 1.0,
        mlp_gate: 1.0,
        mlp_down: 1.0,
    };
}

/// The activation of the dense MLPs and of the experts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MlpActivation {
    /// `down(silu(gate(x)) · up(x))` (Bamba, Granite).
    SwiGlu,
    /// `down(relu(up(x))²)` (Nemotron-H's `relu2`).
    Relu2,
    /// `down(gelu(gate(x)) · up(x))`, GELU with erf (Zamba2's `gelu`).
    GeGlu,
}

/// Zamba2's shared attention + MLP blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBlocks {
    /// Distinct blocks (`num_mem_blocks`); the `u`-th shared-block layer runs block `u % count`.
    pub count: usize,
    /// Rank of the per-use LoRA adapters (`adapter_rank`).
    pub adapter_rank: usize,
    /// Whether q, k and v have per-use adapters too (`use_shared_attention_adapter`); the MLP's
    /// gate|up always has one.
    pub attention_adapters: bool,
}

/// How a MoE router turns its logits into the picked experts and their weights.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Router {
    /// The `top_k` largest logits, softmax over those alone (Granite 4.0-H).
    TopKSoftmax,
    /// DeepSeek-V3's (Nemotron 3): `s = sigmoid(logits)` in f32; experts are picked by `s + bias`
    /// among the `top_groups` groups whose two best experts score highest; their weights are `s`,
    /// divided by their sum when `normalize`, times `scale`.
    SigmoidGrouped {
        /// Groups the experts split into (`n_group`).
        groups: usize,
        /// Groups a token may pick from (`topk_group`).
        top_groups: usize,
        /// Divide the picked weights by their sum (`norm_topk_prob`).
        normalize: bool,
        /// `routed_scaling_factor`.
        scale: f64,
    },
}

/// A routed mixture of experts: beside the dense MLP of every layer (Granite 4.0-H MoE) or in the
/// MoE layers beside a shared MLP (Nemotron 3).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MoeConfig {
    /// Routed experts per layer.
    pub experts: usize,
    /// Experts each token is routed to.
    pub top_k: usize,
    /// Each expert's width.
    pub width: usize,
    /// Width of the always-on MLP beside the experts.
    pub shared_width: usize,
    /// How tokens are routed.
    pub router: Router,
}

/// The feed-forward sub-block of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FeedForwardPlan {
    /// Width of its dense MLP.
    pub width: usize,
    /// Routed experts beside the MLP.
    pub experts: Option<MoeConfig>,
}

/// A validated configuration with derived sizes: the layer plan of one model.
#[derive(Debug, Clone, PartialEq)]
pub struct BambaConfig {
    /// The `model_type` it was read as.
    pub architecture: Architecture,
    /// Token ids are below this.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Whether every mixer layer has a feed-forward sub-block after its mixer (false: Mamba2,
    /// Nemotron-H).
    pub mlp: bool,
    /// Width of the dense MLPs (Granite: `shared_intermediate_size`).
    pub intermediate_size: usize,
    /// The MLPs' and experts' activation.
    pub mlp_activation: MlpActivation,
    /// Routed experts: beside every mixer layer's MLP (Granite), or in the MoE layers (Nemotron-H).
    pub moe: Option<MoeConfig>,
    /// Decoder layers.
    pub num_layers: usize,
    /// Attention query heads.
    pub num_heads: usize,
    /// Attention key/value heads.
    pub num_kv_heads: usize,
    /// Width of one attention head.
    pub head_dim: usize,
    /// Epsilon of every RMSNorm.
    pub rms_norm_eps: f64,
    /// The layer and final RMSNorms multiply by their weight in f32 and round once after
    /// (Nemotron-H); otherwise the normalized rows are rounded to the compute dtype first.
    pub norm_weight_f32: bool,
    /// The LM head is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Attention projections have biases.
    pub attention_bias: bool,
    /// MLP projections have biases.
    pub mlp_bias: bool,
    /// One entry per layer, from `attn_layer_indices` or `layer_types`.
    pub layer_kinds: Vec<LayerKind>,
    /// Mamba2 heads.
    pub mamba_n_heads: usize,
    /// Width of one Mamba2 head.
    pub mamba_d_head: usize,
    /// Groups sharing B and C.
    pub mamba_n_groups: usize,
    /// SSM state size per head channel.
    pub mamba_d_state: usize,
    /// Width of the causal conv.
    pub mamba_d_conv: usize,
    /// `d_inner = mamba_expand · hidden_size`.
    pub mamba_expand: usize,
    /// Chunk length of the SSD scan.
    pub mamba_chunk_size: usize,
    /// The conv has a bias.
    pub mamba_conv_bias: bool,
    /// in_proj has a bias (and out_proj, but in Falcon-H1).
    pub mamba_proj_bias: bool,
    /// out_proj has a bias (Falcon-H1's `projectors_bias`; `mamba_proj_bias` elsewhere).
    pub mamba_out_bias: bool,
    /// How the scan output meets the gate.
    pub mamba_gated_norm: GatedNorm,
    /// The gated norm multiplies by its weight in f32 and rounds once after (Falcon-H1); otherwise
    /// it rounds the normalized rows first.
    pub mamba_norm_weight_f32: bool,
    /// Epsilon of the gated norm (`rms_norm_eps`, but Zamba2's fixed 1e-5).
    pub mamba_norm_eps: f64,
    /// Zamba2's shared blocks (the attention reads `2 · hidden_size` channels).
    pub shared_blocks: Option<SharedBlocks>,
    /// dt clamp after softplus; `None` when config.json says `null`.
    pub time_step_limit: Option<(f64, f64)>,
    /// `None`: no positional encoding (Granite 4.0-H's NoPE attention).
    pub rope: Option<RopeConfig>,
    /// The embeddings are multiplied by this (Granite; 1 for Bamba).
    pub embedding_multiplier: f64,
    /// Each sub-block's output is multiplied by this before the residual add (Granite; 1 for Bamba).
    pub residual_multiplier: f64,
    /// The attention softmax scale; `None` is `1/√head_dim` (Granite's `attention_multiplier`).
    pub attention_multiplier: Option<f64>,
    /// The logits are divided by this (Granite's `logits_scaling`, Falcon-H1's
    /// `1 / lm_head_multiplier`; 1 for Bamba).
    pub logits_scaling: f64,
    /// Multipliers around the projections, folded into the weights.
    pub scales: ProjectionScales,
    /// The residual stream between layers is f32 whatever the compute dtype (Mamba2's
    /// `residual_in_fp32`); each sub-block still computes in the compute dtype.
    pub residual_f32: bool,
    /// config.json's `max_position_embeddings` (see [`BambaConfig::context_length`] for the longest
    /// sequence accepted).
    pub max_position_embeddings: usize,
    /// Id used for left padding (0 when absent).
    pub pad_token_id: Option<u32>,
    /// Beginning-of-sequence id.
    pub bos_token_id: Option<u32>,
    /// config.json's end-of-sequence ids.
    pub eos_token_ids: Vec<u32>,
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

    /// Parses and validates config.json text (any supported model type and dialect).
    pub fn from_json(text: &str) -> Result<Self, ConfigError> {
        let text = quote_nonfinite_literals(text);
        let raw: HfConfig = serde_json::from_str(&text)?;
        let nemotron_h = match raw.model_type.as_deref() {
            Some("nemotron_h") => Some(serde_json::from_str::<NemotronHKeys>(&text)?),
            _ => None,
        };
        let zamba2 = match raw.model_type.as_deref() {
            Some("zamba2") => Some(serde_json::from_str::<Zamba2Keys>(&text)?),
            _ => None,
        };
        resolve::resolve(raw, nemotron_h, zamba2)
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
    /// Width the attention reads: the residual stream, or `concat(h, embeddings)` in Zamba2's shared
    /// blocks.
    pub fn attention_input(&self) -> usize {
        if self.shared_blocks.is_some() {
            2 * self.hidden_size
        } else {
            self.hidden_size
        }
    }
    /// Dimensions of each q/k head that RoPE rotates (0 without RoPE).
    pub fn rotary_dim(&self) -> usize {
        self.rope.as_ref().map_or(0, |r| rotary_dim(self.head_dim, r.partial_rotary_factor))
    }
    /// The longest sequence (prompt + new tokens) accepted: `max_position_embeddings`, or the context
    /// a RoPE scaling extends it to (see [`RopeConfig::context_length`]).
    pub fn context_length(&self) -> usize {
        self.rope.as_ref().map_or(self.max_position_embeddings, |r| r.context_length(self.max_position_embeddings))
    }
    /// Number of layers of a kind.
    pub fn count(&self, kind: LayerKind) -> usize {
        self.layer_kinds.iter().filter(|&&k| k == kind).count()
    }
    /// Layers holding a Mamba state (Mamba and parallel layers).
    pub fn mamba_layers(&self) -> usize {
        self.layer_kinds.iter().filter(|k| k.has_mamba()).count()
    }
    /// Layers holding keys and values (attention and parallel layers).
    pub fn attention_layers(&self) -> usize {
        self.layer_kinds.iter().filter(|k| k.has_attention()).count()
    }
    /// The feed-forward sub-block of a layer of `kind`, if it has one.
    pub fn feed_forward(&self, kind: LayerKind) -> Option<FeedForwardPlan> {
        match kind {
            LayerKind::Mamba | LayerKind::Attention | LayerKind::Parallel | LayerKind::Shared => {
                self.mlp.then_some(FeedForwardPlan { width: self.intermediate_size, experts: self.moe })
            }
            LayerKind::Mlp => Some(FeedForwardPlan { width: self.intermediate_size, experts: None }),
            LayerKind::Moe => self.moe.map(|m| FeedForwardPlan { width: m.shared_width, experts: Some(m) }),
        }
    }
    /// The layer plan in letters (`M` Mamba2, `*` attention, `P` both in parallel, `S` a shared block
    /// then Mamba2, `-` MLP, `E` MoE).
    pub fn plan(&self) -> String {
        self.layer_kinds.iter().map(|k| k.letter()).collect()
    }
    /// dt clamp as f32 for the scan, dropped when it is the no-op `(0, inf)`.
    pub fn dt_limit(&self) -> Option<(f32, f32)> {
        self.time_step_limit
            .filter(|&(lo, hi)| !(lo <= 0.0 && hi == f64::INFINITY))
            .map(|(lo, hi)| (lo as f32, hi as f32))
    }
}

/// RoPE's rotated dims of a head, as transformers rounds them: `int(head_dim · factor)`.
fn rotary_dim(head_dim: usize, partial_rotary_factor: f64) -> usize {
    (head_dim as f64 * partial_rotary_factor) as usize
}
