//! config.json dialects, derived sizes and validation errors.

mod common;

use bamba::model::config::{
    Architecture, BambaConfig, ConfigError, GatedNorm, LayerKind, MlpActivation, MoeConfig, RopeConfig, RopeScaling,
    Router, SharedBlocks,
};
use bamba::model::presets::preset;
use bamba::model::sizes::{parse_memory, prefill_flops, MemoryModel, ParameterCounts};
use common::*;

fn bamba_9b() -> BambaConfig {
    BambaConfig::from_path(fixtures_dir().join("../configs/bamba-9b.json")).unwrap()
}

#[test]
fn real_bamba_9b_config_4x_dialect() {
    let c = bamba_9b();
    assert_eq!((c.d_inner(), c.conv_dim(), c.in_proj_dim(), c.rotary_dim()), (8192, 8448, 16768, 64));
    assert_eq!((c.head_dim, c.mamba_d_head), (128, 64));
    assert_eq!(c.rope, Some(RopeConfig { theta: 10000.0, partial_rotary_factor: 0.5, scaling: RopeScaling::None }));
    assert_eq!(c.context_length(), c.max_position_embeddings);
    assert_eq!(c.time_step_limit, Some((0.0, f64::INFINITY)));
    assert_eq!(c.dt_limit(), None, "(0, inf) is a no-op clamp");
    let attention: Vec<usize> = (0..32).filter(|&i| c.layer_kinds[i] == LayerKind::Attention).collect();
    assert_eq!(attention, vec![9, 18, 27]);
    assert_eq!(c.eos_token_ids, vec![128001]);
}

#[test]
fn parameter_counts_match_transformers() {
    // The manifest's counts come from transformers' own model classes (on the meta device for the
    // full-size configs under tests/configs: Bamba-9B and the Granite 4.0 family).
    let m = manifest();
    assert_eq!(m["configs"]["bamba-9b.json"]["parameters"].as_u64(), Some(9_780_235_392));
    let configs = m["configs"].as_object().unwrap();
    assert!(configs.len() >= 5, "{configs:?}");
    for (file, record) in configs {
        let c = BambaConfig::from_path(fixtures_dir().join("../configs").join(file)).unwrap();
        assert_eq!(ParameterCounts::new(&c).total, record["parameters"].as_u64().unwrap(), "{file}");
    }
    for name in fixture_names() {
        let c = BambaConfig::from_path(fixtures_dir().join(&name)).unwrap();
        let expected = m["fixtures"][&name]["parameters"].as_u64().unwrap();
        assert_eq!(ParameterCounts::new(&c).total, expected, "{name}");
    }
}

fn granite(file: &str) -> BambaConfig {
    BambaConfig::from_path(fixtures_dir().join("../configs").join(file)).unwrap()
}

#[test]
fn granite_configs_resolve_to_their_layer_plans() {
    let tiny = granite("granite-4.0-h-tiny.json");
    assert_eq!(tiny.architecture, Architecture::GraniteMoeHybrid);
    assert_eq!(
        tiny.moe,
        Some(MoeConfig { experts: 64, top_k: 6, width: 512, shared_width: 1024, router: Router::TopKSoftmax })
    );
    assert_eq!(tiny.intermediate_size, 1024, "the dense MLP is shared_intermediate_size wide");
    let attention: Vec<usize> = (0..40).filter(|&i| tiny.layer_kinds[i] == LayerKind::Attention).collect();
    assert_eq!(attention, vec![5, 15, 25, 35]);
    assert_eq!((tiny.rotary_dim(), tiny.rope.clone()), (0, None), "position_embedding_type nope");
    assert_eq!(
        (tiny.embedding_multiplier, tiny.residual_multiplier, tiny.attention_multiplier, tiny.logits_scaling),
        (12.0, 0.22, Some(1.0 / 128.0), 6.0)
    );
    // One token reads 6 of 64 experts (each 3 x 512 x 1536) in each of 40 layers: 1.47B of the 6.94B
    // parameters (IBM: "7B total, 1B active", counting without the embedding).
    let counts = ParameterCounts::new(&tiny);
    assert_eq!(counts.active, counts.total - 40 * 58 * 3 * 512 * 1536);
    let micro = granite("granite-4.0-micro.json");
    assert_eq!((micro.count(LayerKind::Attention), micro.moe, micro.rotary_dim()), (40, None, 64));
    assert_eq!(micro.rope.as_ref().unwrap().theta, 1e7);
    let dense = granite("granite-4.0-h-1b.json");
    assert_eq!((dense.moe, dense.intermediate_size), (None, 4096));
    let counts = ParameterCounts::new(&dense);
    assert_eq!(counts.active, counts.total);
}

#[test]
fn mamba2_config_resolves_to_mixer_only_layers() {
    let c = granite("mamba-codestral-7b.json");
    assert_eq!(c.architecture, Architecture::Mamba2);
    assert_eq!((c.count(LayerKind::Mamba), c.mlp, c.residual_f32, c.rope.clone()), (64, false, true, None));
    assert_eq!((c.mamba_n_heads, c.mamba_d_head, c.mamba_n_groups, c.mamba_d_state), (128, 64, 8, 128));
    assert_eq!((c.d_inner(), c.conv_dim()), (8192, 8192 + 2 * 8 * 128));
    let heads = r#"{"model_type": "mamba2", "hidden_size": 64, "num_heads": 8, "head_dim": 8}"#;
    let e = BambaConfig::from_json(heads).unwrap_err();
    assert!(matches!(e, ConfigError::MambaHeads { d_head: 8, n_heads: 8, d_inner: 128 }), "{e}");
    // state-spaces/mamba2-130m's config.json (mamba_ssm's format) is refused by name, not read as Bamba.
    let ssm = r#"{"d_model": 768, "n_layer": 24, "vocab_size": 50277, "ssm_cfg": {"layer": "Mamba2"}}"#;
    assert!(matches!(BambaConfig::from_json(ssm).unwrap_err(), ConfigError::MambaSsmFormat));
}

#[test]
fn nemotron_h_configs_resolve_to_their_layer_plans() {
    // Nemotron-H-8B-Base-8K: the legacy spelling (hybrid_override_pattern, attention_head_dim).
    let h8 = granite("nemotron-h-8b-base-8k.json");
    assert_eq!(h8.architecture, Architecture::NemotronH);
    assert_eq!(h8.plan(), "M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M*-M-M-M-M-M-");
    assert_eq!((h8.count(LayerKind::Mamba), h8.count(LayerKind::Attention), h8.count(LayerKind::Mlp)), (24, 4, 24));
    assert_eq!((h8.d_inner(), h8.conv_dim(), h8.mamba_n_groups, h8.mamba_chunk_size), (8192, 10240, 8, 256));
    assert_eq!(
        (h8.head_dim, h8.num_kv_heads, h8.intermediate_size, h8.mlp_activation),
        (128, 8, 21504, MlpActivation::Relu2)
    );
    assert_eq!(
        (h8.mlp, h8.moe, h8.rope.clone(), h8.tie_word_embeddings, h8.norm_weight_f32),
        (false, None, None, false, true)
    );
    // Nemotron-3-Nano-30B-A3B: d_inner is heads x head_dim (4096), not expand x hidden (5376).
    let nano = granite("nemotron-3-nano-30b-a3b.json");
    assert_eq!(
        (nano.count(LayerKind::Mamba), nano.count(LayerKind::Moe), nano.count(LayerKind::Attention)),
        (23, 23, 6)
    );
    assert_eq!((nano.d_inner(), nano.mamba_d_state, nano.num_kv_heads), (4096, 128, 2));
    let router = Router::SigmoidGrouped { groups: 1, top_groups: 1, normalize: true, scale: 2.5 };
    assert_eq!(nano.moe, Some(MoeConfig { experts: 128, top_k: 6, width: 1856, shared_width: 3712, router }));
    // One token reads 6 of 128 relu² experts (2 x 1856 x 2688 each) in each of 23 MoE layers.
    let counts = ParameterCounts::new(&nano);
    assert_eq!(counts.active, counts.total - 23 * 122 * 2 * 1856 * 2688);
}

#[test]
fn falcon_h1_configs_resolve_to_their_layer_plans() {
    // Falcon-H1-0.5B-Base: every layer Mamba2 ‖ attention, no gated norm, µP multipliers.
    let c = granite("falcon-h1-0.5b-base.json");
    assert_eq!(c.architecture, Architecture::FalconH1);
    assert_eq!(c.plan(), "P".repeat(36));
    assert_eq!((c.mamba_layers(), c.attention_layers(), c.count(LayerKind::Mamba)), (36, 36, 0));
    assert_eq!((c.d_inner(), c.mamba_d_head, c.conv_dim(), c.head_dim, c.num_kv_heads), (1536, 64, 1792, 64, 2));
    assert_eq!((c.mamba_gated_norm, c.mlp, c.intermediate_size, c.rotary_dim()), (GatedNorm::GateOnly, true, 2048, 64));
    assert_eq!(c.rope.as_ref().map(|r| r.theta), Some(1e11));
    assert_eq!((c.embedding_multiplier, c.logits_scaling), (5.656854249492381, 1.0 / 0.0390625));
    assert_eq!((c.scales.key, c.scales.attention_out, c.scales.mamba_in), (0.39062499999999994, 0.9375, 1.25));
    assert_eq!(c.scales.mamba_segments[3], 0.5);
    assert_eq!((c.scales.mlp_gate, c.scales.mlp_down), (0.8838834764831844, 0.5859375));
    // What FalconH1Config gives keys a file leaves out: mamba_d_ssm 1024 (mamba_d_head "auto": 1024 /
    // 128 heads), 8 KV heads, no gated norm, pad/bos/eos 0/1/2; `null` mamba_d_ssm is expand x hidden.
    let bare = BambaConfig::from_json(r#"{"model_type": "falcon_h1"}"#).unwrap();
    assert_eq!((bare.d_inner(), bare.mamba_d_head, bare.num_kv_heads, bare.num_layers), (1024, 8, 8, 32));
    assert_eq!((bare.vocab_size, bare.intermediate_size, bare.max_position_embeddings), (128000, 14336, 8192));
    assert_eq!((bare.pad_token_id, bare.bos_token_id, bare.eos_token_ids.clone()), (Some(0), Some(1), vec![2]));
    assert_eq!(bare.mamba_gated_norm, GatedNorm::GateOnly);
    let null = BambaConfig::from_json(r#"{"model_type": "falcon_h1", "mamba_d_ssm": null}"#).unwrap();
    assert_eq!((null.d_inner(), null.mamba_d_head), (8192, 64));
    let norm = |before: &str| {
        let text = format!(r#"{{"model_type": "falcon_h1", "mamba_rms_norm": true{before}}}"#);
        BambaConfig::from_json(&text).unwrap().mamba_gated_norm
    };
    assert_eq!(norm(""), GatedNorm::NormThenGate);
    assert_eq!(norm(r#", "mamba_norm_before_gate": false"#), GatedNorm::GateThenNorm);
}

#[test]
fn falcon_h1_configs_with_bad_multipliers_are_typed_errors() {
    let with = |extra: &str| BambaConfig::from_json(&format!(r#"{{"model_type": "falcon_h1", {extra}}}"#)).unwrap_err();
    let e = with(r#""ssm_multipliers": [1.0, 1.0, 1.0, 1.0]"#);
    assert!(matches!(e, ConfigError::MultiplierCount { key: "ssm_multipliers", expected: 5, found: 4 }), "{e}");
    let e = with(r#""mlp_multipliers": [1.0, 0.0]"#);
    assert!(matches!(e, ConfigError::NotPositive { field: "mlp_multipliers", .. }), "{e}");
    let e = with(r#""key_multiplier": -2.0"#);
    assert!(matches!(e, ConfigError::NotPositive { field: "key_multiplier", .. }), "{e}");
    let e = with(r#""lm_head_multiplier": "NaN""#);
    assert!(matches!(e, ConfigError::Json(_)), "{e}");
    // 1000 channels do not split into 128 heads; 64 heads of 8 are 512, not 1000.
    let e = with(r#""mamba_d_ssm": 1000"#);
    assert!(matches!(e, ConfigError::MambaAuto { n_heads: 128, d_inner: 1000 }), "{e}");
    let e = with(r#""mamba_d_ssm": 1000, "mamba_n_heads": 64, "mamba_d_head": 8"#);
    assert!(matches!(e, ConfigError::MambaHeads { d_head: 8, n_heads: 64, d_inner: 1000 }), "{e}");
    let e = with(r#""mamba_d_ssm": 0"#);
    assert!(matches!(e, ConfigError::Zero("mamba_d_ssm")), "{e}");
}

#[test]
fn zamba2_configs_resolve_to_their_layer_plans() {
    // Zamba2-7B: 13 of 81 layers run one of 2 shared blocks first; its attention reads concat(h, x)
    // (2 x 3584 channels) in 32 heads of 224, scores scaled by (224 / 2)^-1/2.
    let c = granite("zamba2-7b.json");
    assert_eq!(c.architecture, Architecture::Zamba2);
    assert_eq!(
        (c.count(LayerKind::Mamba), c.count(LayerKind::Shared), c.mamba_layers(), c.attention_layers()),
        (68, 13, 81, 13)
    );
    assert_eq!(&c.plan()[..12], "MMMMMMSMMMMS");
    assert_eq!(c.shared_blocks, Some(SharedBlocks { count: 2, adapter_rank: 128, attention_adapters: false }));
    assert_eq!((c.attention_input(), c.head_dim, c.num_kv_heads, c.rotary_dim()), (7168, 224, 32, 224));
    assert_eq!(c.attention_multiplier, Some(1.0 / 112f64.sqrt()));
    assert_eq!((c.d_inner(), c.mamba_d_head, c.mamba_n_groups, c.mamba_d_state), (7168, 64, 2, 64));
    assert_eq!(
        (c.mlp, c.intermediate_size, c.mlp_activation, c.tie_word_embeddings),
        (false, 14336, MlpActivation::GeGlu, true)
    );
    // dt floored at time_step_min (0.001 when absent); the gated norm's epsilon is 1e-5 whatever
    // rms_norm_eps says.
    assert_eq!((c.time_step_limit, c.mamba_norm_eps, c.mamba_conv_bias), (Some((0.001, f64::INFINITY)), 1e-5, true));
    // What Zamba2Config gives keys a file leaves out: 54 layers in Zamba2-2.7B's plan, 8 Mamba heads,
    // hidden 2560, MLP 4 x hidden, no RoPE, tied head.
    let bare = BambaConfig::from_json(r#"{"model_type": "zamba2"}"#).unwrap();
    assert_eq!((bare.num_layers, bare.count(LayerKind::Shared), bare.hidden_size), (54, 9, 2560));
    assert_eq!((bare.mamba_n_heads, bare.mamba_d_head, bare.head_dim, bare.intermediate_size), (8, 640, 160, 10240));
    assert_eq!((bare.rope.clone(), bare.tie_word_embeddings, bare.max_position_embeddings), (None, true, 4096));
    let long = BambaConfig::from_json(r#"{"model_type": "zamba2", "use_long_context": true}"#).unwrap();
    assert_eq!(long.max_position_embeddings, 16384);
}

#[test]
fn zamba2_configs_with_bad_plans_are_typed_errors() {
    let with = |extra: &str| BambaConfig::from_json(&format!(r#"{{"model_type": "zamba2", {extra}}}"#)).unwrap_err();
    let e = with(r#""layers_block_type": ["mamba", "hybrid"]"#);
    assert!(matches!(e, ConfigError::LayerTypesLength { found: 2, layers: 54 }), "{e}");
    let e = with(r#""layers_block_type": ["mamba", "attention"], "num_hidden_layers": 2"#);
    assert!(matches!(e, ConfigError::BlockType { index: 1, .. }), "{e}");
    let e = with(r#""num_attention_heads": 3"#);
    assert!(matches!(e, ConfigError::SharedHeads { width: 5120, heads: 3 }), "{e}");
    let e = with(r#""use_shared_attention_adapter": true, "num_key_value_heads": 8"#);
    assert!(matches!(e, ConfigError::Unsupported(_)), "{e}");
    let e = with(r#""add_bias_linear": true"#);
    assert!(e.to_string().contains("add_bias_linear"), "{e}");
    let e = with(r#""hidden_act": "relu""#);
    assert!(matches!(e, ConfigError::Activation { key: "hidden_act", .. }), "{e}");
    let e = with(r#""num_mem_blocks": 0"#);
    assert!(matches!(e, ConfigError::Zero("num_mem_blocks")), "{e}");
}

#[test]
fn nemotron_h_configs_with_bad_plans_are_typed_errors() {
    let text = std::fs::read_to_string(fixtures_dir().join("nemotron_h_moe/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        BambaConfig::from_json(&c.to_string()).unwrap_err()
    };
    let e = with("layers_block_type", serde_json::json!(["mamba", "conv"]));
    assert!(matches!(e, ConfigError::BlockType { index: 1, .. }), "{e}");
    let mut pattern = base.clone();
    pattern.as_object_mut().unwrap().remove("layers_block_type");
    pattern["hybrid_override_pattern"] = serde_json::json!("M*X");
    let e = BambaConfig::from_json(&pattern.to_string()).unwrap_err();
    assert!(matches!(e, ConfigError::Pattern { index: 2, found: 'X' }), "{e}");
    let e = with("mlp_hidden_act", serde_json::json!("gelu"));
    assert!(matches!(e, ConfigError::Activation { key: "mlp_hidden_act", .. }), "{e}");
    let e = with("moe_latent_size", serde_json::json!(16));
    assert!(matches!(e, ConfigError::Unsupported(_)), "{e}");
    assert!(e.to_string().contains("moe_latent_size"), "{e}");
    // 8 experts do not split into 3 groups; 1 kept group of 4 cannot hold 5 picks.
    let e = with("n_group", serde_json::json!(3));
    assert!(matches!(e, ConfigError::ExpertGroups { groups: 3, .. }), "{e}");
    let e = with("num_experts_per_tok", serde_json::json!(5));
    assert!(matches!(e, ConfigError::ExpertGroups { top_k: 5, .. }), "{e}");
    let e = with("routed_scaling_factor", serde_json::json!(0.0));
    assert!(matches!(e, ConfigError::NotPositive { field: "routed_scaling_factor", .. }), "{e}");
}

#[test]
fn granite_configs_with_bad_plans_are_typed_errors() {
    let text = std::fs::read_to_string(fixtures_dir().join("granite_moe/config.json")).unwrap();
    let base: serde_json::Value = serde_json::from_str(&text).unwrap();
    let with = |key: &str, value: serde_json::Value| {
        let mut c = base.clone();
        c[key] = value;
        BambaConfig::from_json(&c.to_string()).unwrap_err()
    };
    let e = with("layer_types", serde_json::json!(["mamba", "attention"]));
    assert!(matches!(e, ConfigError::LayerTypesLength { found: 2, layers: 4 }), "{e}");
    let e = with("layer_types", serde_json::json!(["mamba", "conv", "mamba", "mamba"]));
    assert!(matches!(e, ConfigError::LayerType { index: 1, .. }), "{e}");
    let e = with("num_experts_per_tok", serde_json::json!(5));
    assert!(matches!(e, ConfigError::TopK { top_k: 5, experts: 4 }), "{e}");
    let e = with("residual_multiplier", serde_json::json!(-0.5));
    assert!(matches!(e, ConfigError::NotPositive { field: "residual_multiplier", .. }), "{e}");
    let e = with("model_type", serde_json::json!("jamba"));
    assert!(e.to_string().contains("granitemoehybrid"), "the error names what is supported: {e}");
}

#[test]
fn memory_model_of_bamba_9b() {
    // Numbers from shared/docs/performance.md: SSM state 30.4 M elements, conv 29 x 8448 x 3,
    // KV 3 layers x 2 x 8 x 128 per token.
    let c = bamba_9b();
    let bf16 = MemoryModel::new(&c, 2, 2, 2);
    assert_eq!(bf16.ssm_state_bytes_per_sequence, 29 * 128 * 64 * 128 * 2);
    assert_eq!(bf16.state_bytes_per_sequence - bf16.ssm_state_bytes_per_sequence, 29 * 8448 * 3 * 2);
    assert_eq!(bf16.kv_bytes_per_token, 3 * 2 * 8 * 128 * 2);
    assert_eq!(bf16.weight_bytes, 9_780_235_392 * 2);
    assert_eq!(parse_memory("141GB"), Some(141_000_000_000));
    assert_eq!(parse_memory("1GiB"), Some(1 << 30));
    assert_eq!(parse_memory("12 parsecs"), None);
    // 64 sequences at 32K fit in 141 GB next to the bf16 weights (f32 state).
    let f32_state = MemoryModel::new(&c, 2, 4, 2);
    assert!(f32_state.sequences_that_fit(141_000_000_000, 32768) >= 64);
}

#[test]
fn bamba_9b_preset_is_the_real_config_with_a_longer_context() {
    let mut from_preset = preset("bamba-9b").unwrap();
    assert_eq!(from_preset.max_position_embeddings, 131072);
    from_preset.max_position_embeddings = bamba_9b().max_position_embeddings;
    assert_eq!(format!("{from_preset:?}"), format!("{:?}", bamba_9b()));
}

#[test]
fn decode_rooflines_match_performance_md() {
    // shared/docs/performance.md, "Decode roofline", bf16 state and KV, 4.3 TB/s: tokens/s by context and batch.
    let tok_s = |name: &str, context: u64, batch: u64| {
        let m = MemoryModel::new(&preset(name).unwrap(), 2, 2, 2);
        batch as f64 / (m.decode_step_bytes(batch, context) as f64 / 4.3e12)
    };
    let table = [
        (1024, 1, 231.0, 284.0),
        (1024, 64, 10_085.0, 11_661.0),
        (8192, 16, 3_111.0, 2_137.0),
        (8192, 64, 8_358.0, 3_287.0),
        (32768, 16, 2_553.0, 822.0),
    ];
    for (context, batch, bamba, llama) in table {
        let (b, l) = (tok_s("bamba-9b", context, batch), tok_s("llama-8b-shape", context, batch));
        // The document rounds KV/state sizes slightly differently: 1.5% covers it.
        assert!((b / bamba - 1.0).abs() < 0.015, "bamba {context}/{batch}: {b} vs {bamba}");
        assert!((l / llama - 1.0).abs() < 0.015, "llama {context}/{batch}: {l} vs {llama}");
    }
    // Prefill: ~2 x 9.25 GFLOP per token in linear layers (performance.md), plus causal attention.
    let c = preset("bamba-9b").unwrap();
    let per_token = prefill_flops(&c, 1, 1);
    assert!((per_token / 18.5e9 - 1.0).abs() < 0.03, "{per_token}");
}

const FIVE_X: &str = r#"{
  "model_type": "bamba", "vocab_size": 100, "hidden_size": 32, "intermediate_size": 48,
  "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
  "attn_layer_indices": [1], "mamba_n_heads": 8, "mamba_d_head": "auto", "mamba_d_state": 16,
  "rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},
  "time_step_limit": [0.0, {"__float__": "Infinity"}], "dtype": "bfloat16",
  "attention_bias": false, "mlp_bias": false, "z_loss_coefficient": 0.0
}"#;

#[test]
fn five_x_dialect_with_rope_parameters_and_wrapped_infinity() {
    let c = BambaConfig::from_json(FIVE_X).unwrap();
    assert_eq!((c.mamba_d_head, c.rope.as_ref().unwrap().theta, c.rotary_dim()), (8, 500.0, 8));
    assert_eq!(c.time_step_limit, Some((0.0, f64::INFINITY)));
    assert_eq!(c.layer_kinds, vec![LayerKind::Mamba, LayerKind::Attention, LayerKind::Mamba]);
}

#[test]
fn bare_infinity_and_null_limits_are_accepted() {
    let bare = FIVE_X.replace(r#"{"__float__": "Infinity"}"#, "Infinity");
    assert_eq!(BambaConfig::from_json(&bare).unwrap().time_step_limit, Some((0.0, f64::INFINITY)));
    let finite = FIVE_X.replace(r#"[0.0, {"__float__": "Infinity"}]"#, "[0.001, 0.1]");
    assert_eq!(BambaConfig::from_json(&finite).unwrap().dt_limit(), Some((0.001, 0.1)));
    let null = FIVE_X.replace(r#"[0.0, {"__float__": "Infinity"}]"#, "null");
    assert_eq!(BambaConfig::from_json(&null).unwrap().time_step_limit, None);
    // "Infinity" inside a string value is left alone.
    let in_string = FIVE_X.replace(r#""dtype": "bfloat16""#, r#""note": "Infinity and NaN""#);
    assert!(BambaConfig::from_json(&in_string).is_ok());
}

#[test]
fn partial_rotary_defaults_to_half_without_rope_parameters() {
    let no_rope = FIVE_X.replace(
        r#""rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},"#,
        r#""rope_theta": 123.0,"#,
    );
    let c = BambaConfig::from_json(&no_rope).unwrap();
    let expected = RopeConfig { theta: 123.0, partial_rotary_factor: 0.5, scaling: RopeScaling::None };
    assert_eq!((c.rotary_dim(), c.rope), (4, Some(expected)));
}

fn err(text: &str) -> ConfigError {
    BambaConfig::from_json(text).unwrap_err()
}

#[test]
fn inconsistent_configs_are_typed_errors() {
    let e = err(&FIVE_X.replace(r#""mamba_d_head": "auto""#, r#""mamba_d_head": 7"#));
    assert!(matches!(e, ConfigError::MambaHeads { d_head: 7, n_heads: 8, d_inner: 64 }), "{e}");
    let e = err(&FIVE_X.replace("[1]", "[1, 3]"));
    assert!(matches!(e, ConfigError::AttentionIndex { index: 3, layers: 3 }), "{e}");
    let e = err(&FIVE_X.replace(r#""num_key_value_heads": 2"#, r#""num_key_value_heads": 3"#));
    assert!(matches!(e, ConfigError::KvHeads { .. }), "{e}");
    let e = err(&FIVE_X.replace(r#""mamba_n_heads": 8"#, r#""mamba_n_heads": 8, "mamba_n_groups": 3"#));
    assert!(matches!(e, ConfigError::MambaGroups { .. }), "{e}");
    let e = err(&FIVE_X.replace(r#""mamba_n_heads": 8"#, r#""mamba_n_heads": 6"#));
    assert!(matches!(e, ConfigError::MambaAuto { .. }), "{e}");
    let e = err(&FIVE_X.replace(r#""mamba_d_head": "auto""#, r#""mamba_d_head": "big""#));
    assert!(matches!(e, ConfigError::DHead(_)), "{e}");
    let e = err(&FIVE_X.replace(r#""rope_type": "default""#, r#""rope_type": "su""#));
    assert!(matches!(e, ConfigError::RopeType(_)), "{e}");
    let e = err(&FIVE_X.replace(r#""hidden_size": 32"#, r#""hidden_size": 0"#));
    assert!(matches!(e, ConfigError::Zero("hidden_size")), "{e}");
    let e = err(&FIVE_X.replace(r#""mamba_d_state": 16"#, r#""mamba_d_state": 16, "mamba_d_conv": 1"#));
    assert!(matches!(e, ConfigError::ConvKernel(1)), "{e}");
    let e = err(&FIVE_X.replace(r#""model_type": "bamba""#, r#""model_type": "llama""#));
    assert!(matches!(e, ConfigError::ModelType(_)), "{e}");
    let e = err(&FIVE_X.replace(r#"[0.0, {"__float__": "Infinity"}]"#, "[1.0, 0.5]"));
    assert!(matches!(e, ConfigError::TimeStepLimit(..)), "{e}");
    let e = err(&FIVE_X.replace(r#""mamba_d_state": 16"#, r#""mamba_d_state": "sixteen""#));
    assert!(matches!(e, ConfigError::Json(_)), "{e}");
    assert!(matches!(err("{\"vocab_size\": 10,"), ConfigError::Json(_)));
    let e = BambaConfig::from_path("/nonexistent/dir").unwrap_err();
    assert!(matches!(e, ConfigError::Io { .. }), "{e}");
}

/// Sizes past the engine's bounds are refused before anything is counted or allocated (a made-up
/// config could otherwise overflow parameter counts or ask for terabytes).
#[test]
fn absurd_sizes_are_refused() {
    let base: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(common::fixtures_dir().join("base/config.json")).unwrap())
            .unwrap();
    for (field, value) in [
        ("num_hidden_layers", serde_json::json!(u64::MAX)),
        ("num_hidden_layers", serde_json::json!(1_000_000_000u64)),
        ("vocab_size", serde_json::json!(1u64 << 62)),
        ("mamba_chunk_size", serde_json::json!(1_000_000_000_000u64)),
        ("hidden_size", serde_json::json!(1u64 << 62)),
        ("max_position_embeddings", serde_json::json!(u64::MAX)),
    ] {
        let mut config = base.clone();
        config[field] = value.clone();
        let err = BambaConfig::from_json(&config.to_string()).unwrap_err();
        assert!(matches!(err, ConfigError::TooLarge { field: f, .. } if f == field), "{field} = {value}: {err}");
    }
}

/// FIVE_X with its `rope_parameters` replaced by `rope` (a JSON object's inside).
fn with_rope(rope: &str) -> String {
    FIVE_X.replace(
        r#""rope_parameters": {"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 1.0},"#,
        &format!(r#""max_position_embeddings": 64, "rope_parameters": {{{rope}}},"#),
    )
}

#[test]
fn rope_scaling_in_both_dialects() {
    // 5.x: everything in rope_parameters; partial factor from BambaConfig's 0.5
    let c = BambaConfig::from_json(&with_rope(r#""rope_type": "linear", "rope_theta": 100.0, "factor": 4.0"#)).unwrap();
    let rope = c.rope.clone().unwrap();
    assert_eq!(
        (rope.theta, rope.partial_rotary_factor, rope.scaling),
        (100.0, 0.5, RopeScaling::Linear { factor: 4.0 })
    );
    assert_eq!(c.context_length(), 256, "linear extends max_position_embeddings by its factor");
    // 4.x: rope_scaling with the old `type` key, theta on top; rope_scaling wins over rope_parameters
    let four_x = with_rope(r#""rope_type": "default""#).replace(
        r#""max_position_embeddings": 64,"#,
        r#""max_position_embeddings": 64, "rope_theta": 50.0, "rope_scaling": {"type": "dynamic", "factor": 2.0},"#,
    );
    let c = BambaConfig::from_json(&four_x).unwrap();
    let rope = c.rope.clone().unwrap();
    assert_eq!(
        (rope.theta, rope.scaling.clone()),
        (50.0, RopeScaling::Dynamic { factor: 2.0, max_position_embeddings: 64 })
    );
    assert!(rope.depends_on_length());
    // yarn: factor and original default to max / original and max; a top-level original wins
    let yarn = with_rope(r#""rope_type": "yarn", "original_max_position_embeddings": 16"#);
    let c = BambaConfig::from_json(&yarn).unwrap();
    match c.rope.unwrap().scaling {
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            attention_factor,
            beta_fast,
            beta_slow,
            truncate,
        } => {
            assert_eq!(
                (factor, original_max_position_embeddings, beta_fast, beta_slow, truncate),
                (4.0, 16, 32.0, 1.0, true)
            );
            assert!((attention_factor - (0.1 * 4f64.ln() + 1.0)).abs() < 1e-12);
        }
        other => panic!("{other:?}"),
    }
    let phi3 = yarn.replace(
        r#""max_position_embeddings": 64,"#,
        r#""max_position_embeddings": 64, "original_max_position_embeddings": 8,"#,
    );
    match BambaConfig::from_json(&phi3).unwrap().rope.unwrap().scaling {
        RopeScaling::Yarn { original_max_position_embeddings: 8, factor, .. } => assert_eq!(factor, 8.0),
        other => panic!("{other:?}"),
    }
    // longrope: factors per rotated frequency (rotary 4 of head_dim 8 here: 2 each)
    let long = with_rope(
        r#""rope_type": "longrope", "short_factor": [1.0, 1.5], "long_factor": [2.0, 3.0], "original_max_position_embeddings": 16"#,
    );
    let c = BambaConfig::from_json(&long).unwrap();
    assert_eq!(c.context_length(), 64);
    match c.rope.unwrap().scaling {
        RopeScaling::LongRope { attention_factor, .. } => {
            assert!((attention_factor - (1.0 + 4f64.ln() / 16f64.ln()).sqrt()).abs() < 1e-12)
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_rope_parameters_are_named() {
    for (rope, says) in [
        (r#""rope_type": "linear""#, "factor is required"),
        (r#""rope_type": "linear", "factor": -2.0"#, "factor must be a positive finite number, got -2"),
        (r#""rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0"#, "high_freq_factor is required"),
        (r#""rope_type": "llama3", "factor": 8.0, "low_freq_factor": 2.0, "high_freq_factor": 2.0"#, "must differ"),
        (r#""rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0, 2.0]"#, "short_factor has 1 entries"),
        (
            r#""rope_type": "longrope", "short_factor": [1.0, 0.0], "long_factor": [1.0, 2.0]"#,
            "short_factor must be a positive",
        ),
        (
            r#""rope_type": "yarn", "original_max_position_embeddings": 0"#,
            "original_max_position_embeddings must be positive",
        ),
    ] {
        let e = err(&with_rope(rope));
        assert!(matches!(e, ConfigError::RopeParameter { .. }), "{rope}: {e}");
        assert!(e.to_string().contains(says), "{rope}: {e}");
    }
}
