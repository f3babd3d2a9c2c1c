//! From the serde mirror to a validated [`BambaConfig`], per `model_type`.
//!
//! - `bamba` follows transformers 5.x `BambaConfig`: attention at `attn_layer_indices`; RoPE always,
//!   from `rope_parameters` (5.x) or a top-level `rope_theta` and `rope_scaling` (4.x), with
//!   `partial_rotary_factor` 0.5 unless `rope_parameters` names another (scaling: `rope.rs`); no
//!   multipliers.
//! - `granitemoehybrid` follows `GraniteMoeHybridConfig`: attention where `layer_types` says so
//!   (hub names `mamba`/`attention` or 5.x names `linear_attention`/`full_attention`; all Mamba when
//!   absent); full-width RoPE only when `position_embedding_type` is `"rope"`; the dense MLP is
//!   `shared_intermediate_size` wide and `num_local_experts > 0` adds experts of `intermediate_size`.
//!
//! - `mamba2` follows `Mamba2Config`: its mixer keys (`num_heads`, `head_dim`, `state_size`,
//!   `n_groups`, `expand`, `conv_kernel`, `chunk_size`, `use_bias`, `use_conv_bias`,
//!   `layer_norm_epsilon`) are moved onto the `mamba_*` ones; every layer is Mamba with no
//!   feed-forward, and `residual_in_fp32` (default true) keeps the residual stream in f32.
//!
//! - `nemotron_h` follows `NemotronHConfig`: the layer plan from `layers_block_type` (`mamba`/
//!   `linear_attention`, `attention`/`full_attention`, `mlp`, `moe`) or the legacy
//!   `hybrid_override_pattern` (`M`, `*`, `-`, `E`), its length the layer count; `d_inner` is
//!   `mamba_num_heads · mamba_head_dim` (no `expand`); the legacy `mamba_n_groups`, `mamba_d_conv`,
//!   `mamba_chunk_size`, `mamba_conv_bias`, `mamba_dt_limit` win over `n_groups`, `conv_kernel`,
//!   `chunk_size`, `use_conv_bias`, `time_step_limit`; `attention_head_dim` stands in for an absent
//!   `head_dim`; NoPE attention without biases, relu² MLPs, norms that weigh in f32, never a tied
//!   head; MoE layers route with DeepSeek-V3's grouped sigmoid router.
//!
//! - `falcon_h1` follows `FalconH1Config`: every layer runs Mamba2 and attention in parallel, then
//!   the SwiGLU MLP; the SSM width is `mamba_d_ssm` (1024 when absent, `expand · hidden` when
//!   `null`); `mamba_rms_norm` and `mamba_norm_before_gate` pick the [`GatedNorm`]; `in_proj` has
//!   `mamba_proj_bias`, `out_proj` `projectors_bias`; full RoPE; the µP multipliers (`ssm_in`,
//!   `ssm_multipliers`, `ssm_out`, `attention_in`, `key`, `attention_out`, `mlp_multipliers`) become
//!   [`ProjectionScales`], `embedding_multiplier` stays, `lm_head_multiplier` is the inverse of
//!   `logits_scaling`; 8 KV heads and pad/bos/eos 0/1/2 when absent.
//!
//! - `zamba2` follows `Zamba2Config`: the plan from `layers_block_type` (`mamba`/`linear_attention`
//!   or `hybrid`, the default plan of Zamba2-2.7B when absent), its length the layer count; the
//!   mixer from `n_mamba_heads`, `mamba_ngroups`, `chunk_size`, a conv bias always, dt floored at
//!   `time_step_min`, the gated norm's epsilon fixed at 1e-5; `num_mem_blocks` shared blocks of
//!   attention (heads of `2 · hidden / num_attention_heads`, scale `(head_dim / 2)^-½`, RoPE only with
//!   `use_mem_rope`) and a GeGLU or SwiGLU MLP (`hidden_act`) of `intermediate_size` (4 · hidden when
//!   absent), LoRA adapters of `adapter_rank`; tied head unless said; `use_long_context` sets the
//!   context to 16384. Biases (`add_bias_linear`) are refused.
//!
//! All: `mamba_d_head: "auto"` is `expand · hidden / n_heads`; `time_step_limit` may hold
//! `{"__float__": "Infinity"}`, a string, or a bare `Infinity`.

use super::json::{DHead, HfConfig, LenientFloat, NemotronHKeys, TokenIds, Zamba2Keys};
use super::rope::{self, RopeContext};
use super::{
    Architecture, BambaConfig, ConfigError, GatedNorm, LayerKind, MlpActivation, MoeConfig, ProjectionScales,
    RopeConfig, Router, SharedBlocks,
};

/// Defaults of keys absent from config.json, per model type (transformers' config classes).
struct Defaults {
    vocab_size: usize,
    num_hidden_layers: usize,
    intermediate_size: usize,
    rms_norm_eps: f64,
    max_position_embeddings: usize,
}

impl Defaults {
    fn of(architecture: Architecture) -> Self {
        match architecture {
            Architecture::Bamba => Defaults {
                vocab_size: 128000,
                num_hidden_layers: 32,
                intermediate_size: 14336,
                rms_norm_eps: 1e-5,
                max_position_embeddings: 262144,
            },
            Architecture::GraniteMoeHybrid => Defaults {
                vocab_size: 32000,
                num_hidden_layers: 32,
                intermediate_size: 11008,
                rms_norm_eps: 1e-6,
                max_position_embeddings: 2048,
            },
            // No position embeddings, so no trained limit: the engine's own bound on sizes.
            Architecture::Mamba2 => Defaults {
                vocab_size: 32768,
                num_hidden_layers: 64,
                intermediate_size: 1,
                rms_norm_eps: 1e-5,
                max_position_embeddings: 1 << 20,
            },
            // The layer count is the plan's length.
            Architecture::NemotronH => Defaults {
                vocab_size: 131072,
                num_hidden_layers: 4,
                intermediate_size: 21504,
                rms_norm_eps: 1e-5,
                max_position_embeddings: 4096,
            },
            Architecture::Zamba2 => Defaults {
                vocab_size: 32000,
                num_hidden_layers: 54,
                intermediate_size: 0,
                rms_norm_eps: 1e-5,
                max_position_embeddings: 4096,
            },
            Architecture::FalconH1 => Defaults {
                vocab_size: 128000,
                num_hidden_layers: 32,
                intermediate_size: 14336,
                rms_norm_eps: 1e-5,
                max_position_embeddings: 8192,
            },
        }
    }
}

/// Moves `Mamba2Config`'s keys onto the `mamba_*` keys Bamba and Granite use (with Mamba2's defaults)
/// and gives the unused attention keys values that pass validation.
fn mamba2_keys(mut raw: HfConfig) -> HfConfig {
    raw.mamba_n_heads = raw.num_heads.unwrap_or(128);
    raw.mamba_d_head = Some(DHead::Size(raw.head_dim.take().unwrap_or(64)));
    raw.mamba_d_state = raw.state_size.unwrap_or(128);
    raw.mamba_n_groups = raw.n_groups.unwrap_or(8);
    raw.mamba_expand = raw.expand.unwrap_or(2);
    raw.mamba_d_conv = raw.conv_kernel.unwrap_or(4);
    raw.mamba_chunk_size = raw.chunk_size.unwrap_or(256);
    raw.mamba_conv_bias = raw.use_conv_bias.unwrap_or(true);
    raw.mamba_proj_bias = raw.use_bias.unwrap_or(false);
    raw.rms_norm_eps = raw.layer_norm_epsilon.or(raw.rms_norm_eps);
    raw.num_attention_heads = 1;
    raw.num_key_value_heads = Some(1);
    raw
}

/// Moves `NemotronHConfig`'s keys (and the legacy spellings that win over them) onto the `mamba_*`
/// keys, with its defaults, and returns its layer plan.
fn nemotron_keys(mut raw: HfConfig, k: &NemotronHKeys) -> Result<(HfConfig, Vec<LayerKind>), ConfigError> {
    raw.mamba_n_heads = k.mamba_num_heads.unwrap_or(128);
    raw.mamba_d_head = Some(DHead::Size(k.mamba_head_dim.unwrap_or(64)));
    raw.mamba_d_state = k.ssm_state_size.unwrap_or(128);
    raw.mamba_n_groups = k.mamba_n_groups.or(k.n_groups).unwrap_or(8);
    raw.mamba_d_conv = k.mamba_d_conv.or(k.conv_kernel).unwrap_or(4);
    raw.mamba_chunk_size = k.mamba_chunk_size.or(k.chunk_size).unwrap_or(128);
    raw.mamba_conv_bias = k.mamba_conv_bias.or(k.use_conv_bias).unwrap_or(true);
    raw.mamba_proj_bias = k.use_bias.unwrap_or(false);
    if let Some(limit) = k.mamba_dt_limit.or(k.time_step_limit) {
        raw.time_step_limit = Some(limit);
    }
    // NemotronHConfig reads layer_norm_epsilon alone (released files also carry rms_norm_eps).
    raw.rms_norm_eps = Some(raw.layer_norm_epsilon.unwrap_or(1e-5));
    raw.head_dim = raw.head_dim.or(k.attention_head_dim).or(Some(128));
    raw.num_key_value_heads = raw.num_key_value_heads.or(Some(8));
    // NemotronHAttention's projections are built without biases whatever the config says.
    raw.attention_bias = false;
    for (key, value, want) in
        [("mamba_hidden_act", &k.mamba_hidden_act, "silu"), ("mlp_hidden_act", &k.mlp_hidden_act, "relu2")]
    {
        if let Some(name) = value.as_ref().filter(|name| name.as_str() != want) {
            return Err(ConfigError::Activation { key, name: name.clone(), supported: want });
        }
    }
    let kinds = match (&k.layers_block_type, &k.hybrid_override_pattern) {
        (Some(types), _) => types
            .iter()
            .enumerate()
            .map(|(index, name)| match name.as_str() {
                "mamba" | "linear_attention" => Ok(LayerKind::Mamba),
                "attention" | "full_attention" => Ok(LayerKind::Attention),
                "mlp" => Ok(LayerKind::Mlp),
                "moe" => Ok(LayerKind::Moe),
                _ => Err(ConfigError::BlockType { index, name: name.clone() }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, Some(pattern)) => pattern
            .chars()
            .enumerate()
            .map(|(index, found)| match found {
                'M' => Ok(LayerKind::Mamba),
                '*' => Ok(LayerKind::Attention),
                '-' => Ok(LayerKind::Mlp),
                'E' => Ok(LayerKind::Moe),
                _ => Err(ConfigError::Pattern { index, found }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        (None, None) => vec![LayerKind::Mamba, LayerKind::Moe, LayerKind::Attention, LayerKind::Mlp],
    };
    raw.num_hidden_layers = Some(kinds.len());
    Ok((raw, kinds))
}

/// FalconH1Config's defaults of keys it gives other values than Bamba's.
fn falcon_keys(mut raw: HfConfig) -> HfConfig {
    raw.num_key_value_heads = raw.num_key_value_heads.or(Some(8));
    special_token_defaults(raw)
}

/// The pad, BOS and EOS ids (0, 1, 2) that FalconH1Config and Zamba2Config give absent keys.
fn special_token_defaults(mut raw: HfConfig) -> HfConfig {
    raw.pad_token_id = raw.pad_token_id.or(Some(0));
    raw.bos_token_id = raw.bos_token_id.or(Some(1));
    raw.eos_token_id = raw.eos_token_id.or(Some(TokenIds::One(2)));
    raw
}

/// A multiplier: 1 when absent, else finite and positive.
fn positive(field: &'static str, value: Option<f64>) -> Result<f64, ConfigError> {
    match value {
        None => Ok(1.0),
        Some(v) if v.is_finite() && v > 0.0 => Ok(v),
        Some(v) => Err(ConfigError::NotPositive { field, value: v }),
    }
}

/// Moves `Zamba2Config`'s keys onto the `mamba_*` ones, with its defaults, and returns its layer
/// plan, shared blocks and MLP activation.
fn zamba2_keys(
    mut raw: HfConfig,
    k: &Zamba2Keys,
) -> Result<(HfConfig, Vec<LayerKind>, SharedBlocks, MlpActivation), ConfigError> {
    raw.hidden_size = k.hidden_size.unwrap_or(2560);
    raw.mamba_n_heads = k.n_mamba_heads.unwrap_or(8);
    raw.mamba_n_groups = k.mamba_ngroups.unwrap_or(1);
    raw.mamba_d_state = k.mamba_d_state.unwrap_or(64);
    raw.mamba_d_head = None;
    raw.mamba_chunk_size = raw.chunk_size.unwrap_or(256);
    // Zamba2MambaMixer's conv always has a bias, whatever use_conv_bias says.
    raw.mamba_conv_bias = true;
    if k.add_bias_linear == Some(true) {
        return Err(ConfigError::Unsupported("add_bias_linear (biases in Zamba2's projections)"));
    }
    raw.mamba_proj_bias = false;
    raw.attention_bias = false;
    raw.mlp_bias = false;
    raw.time_step_limit = Some((LenientFloat(k.time_step_min.unwrap_or(0.001)), LenientFloat(f64::INFINITY)));
    raw.tie_word_embeddings = k.tie_word_embeddings.unwrap_or(true);
    raw.intermediate_size = raw.intermediate_size.or(Some(4 * raw.hidden_size));
    let mut raw = special_token_defaults(raw);
    if k.use_long_context == Some(true) {
        raw.max_position_embeddings = Some(16384);
    }
    // The attention reads concat(h, embeddings): heads of 2·hidden / heads, whatever head_dim says.
    let width = 2 * raw.hidden_size;
    if raw.num_attention_heads == 0 || !width.is_multiple_of(raw.num_attention_heads) {
        return Err(ConfigError::SharedHeads { width, heads: raw.num_attention_heads });
    }
    raw.head_dim = Some(width / raw.num_attention_heads);
    let activation = match k.hidden_act.as_deref().unwrap_or("gelu") {
        "gelu" => MlpActivation::GeGlu,
        "silu" | "swish" => MlpActivation::SwiGlu,
        other => {
            return Err(ConfigError::Activation { key: "hidden_act", name: other.into(), supported: "gelu, silu" })
        }
    };
    raw.hidden_act = "silu".into();
    let kinds = match &k.layers_block_type {
        Some(types) => types
            .iter()
            .enumerate()
            .map(|(index, name)| match name.as_str() {
                "mamba" | "linear_attention" => Ok(LayerKind::Mamba),
                "hybrid" => Ok(LayerKind::Shared),
                _ => Err(ConfigError::BlockType { index, name: name.clone() }),
            })
            .collect::<Result<Vec<_>, _>>()?,
        None => {
            // Zamba2Config's default plan (Zamba2-2.7B's).
            let (m, s) = (LayerKind::Mamba, LayerKind::Shared);
            let mut plan = vec![m];
            for _ in 0..7 {
                plan.extend([m, m, m, m, m, s]);
            }
            plan.extend([m, m, m, m, s, m, m, m, s, m, m]);
            plan
        }
    };
    // Zamba2Config checks that the plan has num_hidden_layers entries (54 when absent).
    let layers = raw.num_hidden_layers.unwrap_or(54);
    if layers != kinds.len() {
        return Err(ConfigError::LayerTypesLength { found: kinds.len(), layers });
    }
    let shared = SharedBlocks {
        count: k.num_mem_blocks.unwrap_or(1),
        adapter_rank: k.adapter_rank.unwrap_or(128),
        attention_adapters: k.use_shared_attention_adapter.unwrap_or(false),
    };
    for (name, value) in [("num_mem_blocks", shared.count), ("adapter_rank", shared.adapter_rank)] {
        if value == 0 {
            return Err(ConfigError::Zero(name));
        }
        if value > 1 << 14 {
            return Err(ConfigError::TooLarge { field: name, value, limit: 1 << 14 });
        }
    }
    let kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
    if shared.attention_adapters && kv_heads != raw.num_attention_heads {
        // The k and v adapters give 2·hidden channels, which k and v have only without GQA
        // (transformers fails on it too).
        return Err(ConfigError::Unsupported(
            "use_shared_attention_adapter with num_key_value_heads below num_attention_heads",
        ));
    }
    Ok((raw, kinds, shared, activation))
}

/// Falcon-H1's multipliers, checked (finite and positive, lists of the right length).
fn falcon_scales(raw: &HfConfig) -> Result<(ProjectionScales, f64), ConfigError> {
    let list = |key: &'static str, values: &Option<Vec<f64>>, expected: usize| -> Result<Vec<f64>, ConfigError> {
        match values {
            None => Ok(vec![1.0; expected]),
            Some(v) if v.len() != expected => Err(ConfigError::MultiplierCount { key, expected, found: v.len() }),
            Some(v) => v.iter().map(|&x| positive(key, Some(x))).collect(),
        }
    };
    let segments = list("ssm_multipliers", &raw.ssm_multipliers, 5)?;
    let mlp = list("mlp_multipliers", &raw.mlp_multipliers, 2)?;
    let scales = ProjectionScales {
        mamba_in: positive("ssm_in_multiplier", raw.ssm_in_multiplier)?,
        mamba_segments: [segments[0], segments[1], segments[2], segments[3], segments[4]],
        mamba_out: positive("ssm_out_multiplier", raw.ssm_out_multiplier)?,
        attention_in: positive("attention_in_multiplier", raw.attention_in_multiplier)?,
        key: positive("key_multiplier", raw.key_multiplier)?,
        attention_out: positive("attention_out_multiplier", raw.attention_out_multiplier)?,
        mlp_gate: mlp[0],
        mlp_down: mlp[1],
    };
    Ok((scales, positive("lm_head_multiplier", raw.lm_head_multiplier)?))
}

/// Nemotron-H's experts and router, when its plan has MoE layers.
fn nemotron_moe(k: &NemotronHKeys, top_k: usize) -> Result<MoeConfig, ConfigError> {
    if k.moe_latent_size.is_some() {
        return Err(ConfigError::Unsupported("moe_latent_size (experts in a latent space)"));
    }
    let experts = k.n_routed_experts.or(k.num_local_experts).unwrap_or(8);
    let (groups, top_groups) = (k.n_group.unwrap_or(1), k.topk_group.unwrap_or(1));
    // Each group's score is the sum of its two best experts.
    let fits = groups > 0
        && experts.is_multiple_of(groups)
        && experts / groups >= 2
        && (1..=groups).contains(&top_groups)
        && (1..=top_groups * (experts / groups)).contains(&top_k);
    if !fits {
        return Err(ConfigError::ExpertGroups { experts, groups, top_groups, top_k });
    }
    let scale = k.routed_scaling_factor.unwrap_or(1.0);
    if !(scale.is_finite() && scale > 0.0) {
        return Err(ConfigError::NotPositive { field: "routed_scaling_factor", value: scale });
    }
    Ok(MoeConfig {
        experts,
        top_k,
        width: k.moe_intermediate_size.unwrap_or(7688),
        shared_width: k.moe_shared_expert_intermediate_size.unwrap_or(7688),
        router: Router::SigmoidGrouped { groups, top_groups, normalize: k.norm_topk_prob.unwrap_or(true), scale },
    })
}

pub(super) fn resolve(
    raw: HfConfig,
    nemotron_h: Option<NemotronHKeys>,
    zamba2: Option<Zamba2Keys>,
) -> Result<BambaConfig, ConfigError> {
    if raw.model_type.is_none() && (raw.d_model.is_some() || raw.ssm_cfg.is_some()) {
        return Err(ConfigError::MambaSsmFormat);
    }
    let architecture = Architecture::from_model_type(raw.model_type.as_deref())?;
    let granite = architecture == Architecture::GraniteMoeHybrid;
    let mamba2 = architecture == Architecture::Mamba2;
    let nemotron = architecture == Architecture::NemotronH;
    let falcon = architecture == Architecture::FalconH1;
    let zamba = architecture == Architecture::Zamba2;
    let mut zamba_plan = None;
    let nemotron_keys_read = nemotron_h.unwrap_or_default();
    let (raw, nemotron_plan) = match architecture {
        Architecture::Mamba2 => (mamba2_keys(raw), None),
        Architecture::NemotronH => {
            let (raw, plan) = nemotron_keys(raw, &nemotron_keys_read)?;
            (raw, Some(plan))
        }
        Architecture::FalconH1 => (falcon_keys(raw), None),
        Architecture::Zamba2 => {
            let (raw, plan, shared, activation) = zamba2_keys(raw, &zamba2.clone().unwrap_or_default())?;
            zamba_plan = Some((plan, shared, activation));
            (raw, None)
        }
        _ => (raw, None),
    };
    let defaults = Defaults::of(architecture);
    let num_hidden_layers = raw.num_hidden_layers.unwrap_or(defaults.num_hidden_layers);
    let vocab_size = raw.vocab_size.unwrap_or(defaults.vocab_size);
    let expert_width = raw.intermediate_size.unwrap_or(defaults.intermediate_size);
    let intermediate_size = match architecture {
        Architecture::Bamba | Architecture::NemotronH | Architecture::FalconH1 | Architecture::Zamba2 => expert_width,
        Architecture::GraniteMoeHybrid => raw.shared_intermediate_size.unwrap_or(1024),
        Architecture::Mamba2 => 0,
    };
    let rms_norm_eps = raw.rms_norm_eps.unwrap_or(defaults.rms_norm_eps);
    let max_position_embeddings = raw.max_position_embeddings.unwrap_or(defaults.max_position_embeddings);
    let experts = if granite { raw.num_local_experts.unwrap_or(8) } else { 0 };
    let top_k = raw.num_experts_per_tok.unwrap_or(2);
    let nemotron_moe = match &nemotron_plan {
        Some(plan) if plan.contains(&LayerKind::Moe) => Some(nemotron_moe(&nemotron_keys_read, top_k)?),
        _ => None,
    };

    for (name, v) in [
        ("vocab_size", vocab_size),
        ("hidden_size", raw.hidden_size),
        ("intermediate_size", if mamba2 || nemotron { 1 } else { intermediate_size }),
        ("num_hidden_layers", num_hidden_layers),
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
        ("vocab_size", vocab_size, 1 << 24),
        ("hidden_size", raw.hidden_size, 1 << 17),
        ("intermediate_size", intermediate_size, 1 << 19),
        ("intermediate_size", if experts > 0 { expert_width } else { 0 }, 1 << 19),
        ("num_local_experts", experts, 1 << 12),
        ("n_routed_experts", nemotron_moe.map_or(0, |m| m.experts), 1 << 12),
        ("moe_intermediate_size", nemotron_moe.map_or(0, |m| m.width), 1 << 19),
        ("moe_shared_expert_intermediate_size", nemotron_moe.map_or(0, |m| m.shared_width), 1 << 19),
        ("num_hidden_layers", num_hidden_layers, 1 << 12),
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
        ("max_position_embeddings", max_position_embeddings, 1 << 24),
    ] {
        if value > limit {
            return Err(ConfigError::TooLarge { field: name, value, limit });
        }
    }
    if raw.mamba_d_conv < 2 {
        return Err(ConfigError::ConvKernel(raw.mamba_d_conv));
    }
    if !(rms_norm_eps.is_finite() && rms_norm_eps > 0.0) {
        return Err(ConfigError::NotPositive { field: "rms_norm_eps", value: rms_norm_eps });
    }
    if raw.hidden_act != "silu" && raw.hidden_act != "swish" {
        return Err(ConfigError::Activation { key: "hidden_act", name: raw.hidden_act, supported: "silu" });
    }
    if nemotron {
        let plan = nemotron_plan.as_deref().unwrap_or_default();
        for (name, width, used) in [
            ("intermediate_size", intermediate_size, plan.contains(&LayerKind::Mlp)),
            ("moe_intermediate_size", nemotron_moe.map_or(1, |m| m.width), true),
            ("moe_shared_expert_intermediate_size", nemotron_moe.map_or(1, |m| m.shared_width), true),
        ] {
            if used && width == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
    }

    let d_inner = match (falcon, raw.mamba_d_ssm) {
        (true, None) => 1024,
        (true, Some(Some(d_ssm))) => d_ssm,
        _ => raw.mamba_expand * raw.hidden_size,
    };
    if d_inner == 0 {
        return Err(ConfigError::Zero("mamba_d_ssm"));
    }
    if d_inner > 1 << 20 {
        return Err(ConfigError::TooLarge { field: "mamba_d_ssm", value: d_inner, limit: 1 << 20 });
    }
    let mamba_d_head = match raw.mamba_d_head {
        Some(DHead::Size(v)) => v,
        Some(DHead::Text(s)) if s != "auto" => return Err(ConfigError::DHead(format!("{s:?}"))),
        _ => {
            if !d_inner.is_multiple_of(raw.mamba_n_heads) {
                return Err(ConfigError::MambaAuto { n_heads: raw.mamba_n_heads, d_inner });
            }
            d_inner / raw.mamba_n_heads
        }
    };
    if mamba_d_head == 0 {
        return Err(ConfigError::Zero("mamba_d_head"));
    }
    // Nemotron-H sizes the mixer by heads · head_dim alone.
    if !nemotron && mamba_d_head * raw.mamba_n_heads != d_inner {
        return Err(ConfigError::MambaHeads { d_head: mamba_d_head, n_heads: raw.mamba_n_heads, d_inner });
    }
    if !raw.mamba_n_heads.is_multiple_of(raw.mamba_n_groups) {
        return Err(ConfigError::MambaGroups { n_heads: raw.mamba_n_heads, groups: raw.mamba_n_groups });
    }

    let num_kv_heads = raw.num_key_value_heads.unwrap_or(raw.num_attention_heads);
    if num_kv_heads == 0 {
        return Err(ConfigError::Zero("num_key_value_heads"));
    }
    if !raw.num_attention_heads.is_multiple_of(num_kv_heads) {
        return Err(ConfigError::KvHeads { heads: raw.num_attention_heads, kv_heads: num_kv_heads });
    }
    let head_dim = match raw.head_dim {
        Some(0) => return Err(ConfigError::Zero("head_dim")),
        Some(v) => v,
        None => {
            if !raw.hidden_size.is_multiple_of(raw.num_attention_heads) {
                return Err(ConfigError::HeadDim { hidden: raw.hidden_size, heads: raw.num_attention_heads });
            }
            raw.hidden_size / raw.num_attention_heads
        }
    };

    let layer_kinds = match architecture {
        Architecture::Bamba => bamba_layer_kinds(raw.attn_layer_indices.as_deref(), num_hidden_layers)?,
        Architecture::GraniteMoeHybrid => granite_layer_kinds(raw.layer_types.as_deref(), num_hidden_layers)?,
        Architecture::Mamba2 => vec![LayerKind::Mamba; num_hidden_layers],
        Architecture::NemotronH => nemotron_plan.unwrap_or_default(),
        Architecture::FalconH1 => vec![LayerKind::Parallel; num_hidden_layers],
        Architecture::Zamba2 => zamba_plan.as_ref().map(|(plan, _, _)| plan.clone()).unwrap_or_default(),
    };

    // transformers: `rope_scaling or rope_parameters`; the object's own theta wins over the top level.
    let rope_parameters = raw.rope_scaling.clone().or_else(|| raw.rope_parameters.clone()).unwrap_or_default();
    let theta = rope_parameters.rope_theta.or(raw.rope_theta).unwrap_or(10000.0);
    if !(theta.is_finite() && theta > 0.0) {
        return Err(ConfigError::NotPositive { field: "rope_theta", value: theta });
    }
    let partial_rotary_factor = match architecture {
        // BambaConfig forces 0.5 unless rope_parameters carries its own factor.
        Architecture::Bamba => rope_parameters.partial_rotary_factor.unwrap_or(0.5),
        // Gemma2's rotary (Granite), Llama's (Falcon-H1): every dim of the head, whatever
        // partial_rotary_factor says.
        _ => 1.0,
    };
    let uses_rope = match architecture {
        Architecture::Bamba | Architecture::FalconH1 => true,
        Architecture::Zamba2 => zamba2.as_ref().and_then(|k| k.use_mem_rope) == Some(true),
        Architecture::GraniteMoeHybrid => raw.position_embedding_type.as_deref() == Some("rope"),
        Architecture::Mamba2 | Architecture::NemotronH => false,
    };
    let rope = if uses_rope {
        let rotary = super::rotary_dim(head_dim, partial_rotary_factor);
        if !(partial_rotary_factor > 0.0) || !rotary.is_multiple_of(2) || rotary > head_dim || rotary == 0 {
            return Err(ConfigError::RotaryDim { rotary, head_dim, factor: partial_rotary_factor });
        }
        let context = RopeContext {
            max_position_embeddings,
            original_max_position_embeddings: raw.original_max_position_embeddings,
            rotary_dim: rotary,
        };
        Some(RopeConfig { theta, partial_rotary_factor, scaling: rope::scaling(&rope_parameters, &context)? })
    } else {
        None
    };

    let time_step_limit = raw.time_step_limit.map(|(LenientFloat(lo), LenientFloat(hi))| (lo, hi));
    if let Some((lo, hi)) = time_step_limit {
        if lo.is_nan() || hi.is_nan() || lo > hi {
            return Err(ConfigError::TimeStepLimit(lo, hi));
        }
    }

    let moe = if experts > 0 {
        if top_k == 0 || top_k > experts {
            return Err(ConfigError::TopK { top_k, experts });
        }
        if expert_width == 0 {
            return Err(ConfigError::Zero("intermediate_size"));
        }
        Some(MoeConfig {
            experts,
            top_k,
            width: expert_width,
            shared_width: intermediate_size,
            router: Router::TopKSoftmax,
        })
    } else {
        nemotron_moe
    };
    // Bamba has none of these keys; a Bamba config that carries them is read as transformers reads
    // it, i.e. they are ignored.
    let (residual_multiplier, attention_multiplier, logits_scaling) = if granite {
        (
            positive("residual_multiplier", raw.residual_multiplier)?,
            Some(positive("attention_multiplier", raw.attention_multiplier)?),
            positive("logits_scaling", raw.logits_scaling)?,
        )
    } else {
        (1.0, None, 1.0)
    };
    let embedding_multiplier =
        if granite || falcon { positive("embedding_multiplier", raw.embedding_multiplier)? } else { 1.0 };
    // Zamba2's attention scales its scores by (head_dim / 2)^-½.
    let attention_multiplier = if zamba { Some((head_dim as f64 / 2.0).sqrt().recip()) } else { attention_multiplier };
    let (scales, logits_scaling) = if falcon {
        let (scales, lm_head_multiplier) = falcon_scales(&raw)?;
        (scales, 1.0 / lm_head_multiplier)
    } else {
        (ProjectionScales::ONE, logits_scaling)
    };
    let mamba_gated_norm = match (falcon, raw.mamba_rms_norm, raw.mamba_norm_before_gate) {
        (false, _, _) => GatedNorm::GateThenNorm,
        (true, Some(true), Some(true) | None) => GatedNorm::NormThenGate,
        (true, Some(true), Some(false)) => GatedNorm::GateThenNorm,
        (true, Some(false) | None, _) => GatedNorm::GateOnly,
    };

    Ok(BambaConfig {
        architecture,
        vocab_size,
        hidden_size: raw.hidden_size,
        mlp: !mamba2 && !nemotron && !zamba,
        intermediate_size,
        mlp_activation: match (&zamba_plan, nemotron) {
            (Some((_, _, activation)), _) => *activation,
            (None, true) => MlpActivation::Relu2,
            (None, false) => MlpActivation::SwiGlu,
        },
        moe,
        num_layers: num_hidden_layers,
        num_heads: raw.num_attention_heads,
        num_kv_heads,
        head_dim,
        rms_norm_eps,
        norm_weight_f32: nemotron,
        // NemotronHForCausalLM ties nothing (`_tied_weights_keys = {}`).
        tie_word_embeddings: raw.tie_word_embeddings && !nemotron,
        attention_bias: raw.attention_bias,
        // Granite's MLPs have no bias key and no biases.
        mlp_bias: raw.mlp_bias && !granite,
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
        mamba_out_bias: if falcon { raw.projectors_bias.unwrap_or(false) } else { raw.mamba_proj_bias },
        mamba_gated_norm,
        mamba_norm_weight_f32: falcon,
        // Zamba2MambaMixer builds its gated norm with eps 1e-5 whatever rms_norm_eps says.
        mamba_norm_eps: if zamba { 1e-5 } else { rms_norm_eps },
        shared_blocks: zamba_plan.as_ref().map(|(_, shared, _)| *shared),
        time_step_limit,
        rope,
        embedding_multiplier,
        residual_multiplier,
        attention_multiplier,
        logits_scaling,
        scales,
        residual_f32: mamba2 && raw.residual_in_fp32.unwrap_or(true),
        max_position_embeddings,
        pad_token_id: raw.pad_token_id,
        bos_token_id: raw.bos_token_id,
        eos_token_ids: match raw.eos_token_id {
            Some(TokenIds::One(id)) => vec![id],
            Some(TokenIds::Many(ids)) => ids,
            None => vec![],
        },
    })
}

fn bamba_layer_kinds(attention: Option<&[usize]>, layers: usize) -> Result<Vec<LayerKind>, ConfigError> {
    let mut kinds = vec![LayerKind::Mamba; layers];
    for &index in attention.unwrap_or_default() {
        if index >= layers {
            return Err(ConfigError::AttentionIndex { index, layers });
        }
        kinds[index] = LayerKind::Attention;
    }
    Ok(kinds)
}

fn granite_layer_kinds(types: Option<&[String]>, layers: usize) -> Result<Vec<LayerKind>, ConfigError> {
    let Some(types) = types else { return Ok(vec![LayerKind::Mamba; layers]) };
    if types.len() != layers {
        return Err(ConfigError::LayerTypesLength { found: types.len(), layers });
    }
    types
        .iter()
        .enumerate()
        .map(|(index, name)| match name.as_str() {
            "mamba" | "linear_attention" => Ok(LayerKind::Mamba),
            "attention" | "full_attention" => Ok(LayerKind::Attention),
            _ => Err(ConfigError::LayerType { index, name: name.clone() }),
        })
        .collect()
}
