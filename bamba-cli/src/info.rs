//! `bamba info`: what a config implies, from config.json alone (no weights needed).

use anyhow::{Context, Result};
use bamba_model::presets::preset;
use bamba_model::sizes::{MemoryModel, ParameterCounts};
use bamba_model::{BambaConfig, LayerKind, Precision, Router};
use serde_json::json;

use crate::InfoArgs;

pub(crate) fn human(bytes: u64) -> String {
    let b = bytes as f64;
    match b {
        b if b >= 1e9 => format!("{:.2} GB", b / 1e9),
        b if b >= 1e6 => format!("{:.2} MB", b / 1e6),
        b if b >= 1e3 => format!("{:.2} KB", b / 1e3),
        _ => format!("{bytes} B"),
    }
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let config = match (&args.model, &args.preset) {
        (Some(model), _) => {
            let spec = model.to_string_lossy();
            let model = match model.exists() || !bamba_model::hub::is_repo_id(&spec) {
                true => model.clone(),
                false => bamba_model::hub::resolve(&spec, &bamba_model::HubOptions::from_env())?,
            };
            BambaConfig::from_path(&model).with_context(|| format!("reading the config in {}", model.display()))?
        }
        (None, Some(name)) => preset(name)?,
        (None, None) => return Err(crate::exit::usage("give --model DIR or --preset NAME")),
    };
    let counts = ParameterCounts::new(&config);
    let mem = MemoryModel::new(&config, args.dtype.bytes(), args.state_dtype.bytes(), args.dtype.bytes());
    let memory = args.memory;
    let layers: Vec<&str> = config.layer_kinds.iter().map(|k| k.name()).collect();
    let weight_bytes = |p| counts.total * Precision::bytes(p);
    let conv_bytes = mem.state_bytes_per_sequence - mem.ssm_state_bytes_per_sequence;
    let fit = memory.map(|m| (m, mem.bytes_per_sequence(args.context), mem.sequences_that_fit(m, args.context)));

    if args.json {
        let mut out = json!({
            "model_type": config.architecture.model_type(),
            "parameters": counts.total,
            "active_parameters_per_token": counts.active,
            "experts": config.moe.map(|m| json!({
                "count": m.experts, "top_k": m.top_k, "width": m.width, "shared_width": m.shared_width,
                "router": match m.router {
                    Router::TopKSoftmax => json!({"kind": "top_k_softmax"}),
                    Router::SigmoidGrouped { groups, top_groups, normalize, scale } => json!({
                        "kind": "sigmoid_grouped", "groups": groups, "top_groups": top_groups,
                        "normalize": normalize, "scale": scale,
                    }),
                },
                "parameters_per_layer": counts.experts_per_layer,
            })),
            "parameters_breakdown": {
                "embedding": counts.embedding, "lm_head": counts.lm_head, "final_norm": counts.final_norm,
                "per_mamba_layer": counts.mamba_layer, "per_attention_layer": counts.attention_layer,
                "per_parallel_layer": counts.parallel_layer, "per_shared_layer": counts.shared_layer,
                "shared_blocks": counts.shared_blocks, "per_mlp_layer": counts.mlp_layer, "per_moe_layer": counts.moe_layer,
            },
            "layers": layers,
            "mamba_layers": config.count(LayerKind::Mamba),
            "attention_layers": config.count(LayerKind::Attention),
            "parallel_layers": config.count(LayerKind::Parallel),
            "shared_block_layers": config.count(LayerKind::Shared),
            "mlp_layers": config.count(LayerKind::Mlp),
            "moe_layers": config.count(LayerKind::Moe),
            "plan": config.plan(),
            "weight_bytes": { "f32": weight_bytes(Precision::F32), "bf16": weight_bytes(Precision::Bf16), "f16": weight_bytes(Precision::F16) },
            "dtype": args.dtype.to_string(),
            "state_dtype": args.state_dtype.to_string(),
            "streamed_weight_bytes_per_decode_step": mem.streamed_weight_bytes,
            "recurrent_state_bytes_per_sequence": mem.state_bytes_per_sequence,
            "ssm_state_bytes_per_sequence": mem.ssm_state_bytes_per_sequence,
            "conv_state_bytes_per_sequence": conv_bytes,
            "kv_bytes_per_token": mem.kv_bytes_per_token,
            "context_length": config.context_length(),
            "rope": config.rope.as_ref().map(|r| json!({
                "rope_type": r.scaling.rope_type(), "theta": r.theta, "rotary_dim": config.rotary_dim(),
            })),
            "context": args.context,
            "bytes_per_sequence_at_context": mem.bytes_per_sequence(args.context),
            // What each sequence adds to a decode step's bytes (the roofline of `bamba bench`).
            "decode_step_bytes_per_sequence": mem.decode_step_bytes(1, args.context) - mem.streamed_weight_bytes,
        });
        if let Some((m, _, n)) = fit {
            out["memory_bytes"] = json!(m);
            out["sequences_that_fit"] = json!(n);
        }
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }

    let kinds: Vec<String> = LayerKind::ALL
        .iter()
        .filter(|&&k| config.count(k) > 0)
        .map(|&k| format!("{} {}", config.count(k), k.name()))
        .collect();
    println!("layers            {} ({})  {}", config.num_layers, kinds.join(", "), config.plan());
    println!("model_type        {}", config.architecture.model_type());
    let rope = match &config.rope {
        Some(r) => format!(
            "RoPE {} (theta {}, {} of {} dims)",
            r.scaling.rope_type(),
            r.theta,
            config.rotary_dim(),
            config.head_dim
        ),
        None => "no position embedding".to_string(),
    };
    println!(
        "context           {} positions (max_position_embeddings {}), {rope}",
        config.context_length(),
        config.max_position_embeddings
    );
    println!("parameters        {}", counts.total);
    if let Some(m) = config.moe {
        println!(
            "  experts             {} of width {}, top {} per token ({} per layer)",
            m.experts, m.width, m.top_k, counts.experts_per_layer
        );
        println!("  active per token    {}", counts.active);
    }
    for (kind, count) in [
        (LayerKind::Mamba, counts.mamba_layer),
        (LayerKind::Attention, counts.attention_layer),
        (LayerKind::Parallel, counts.parallel_layer),
        (LayerKind::Shared, counts.shared_layer),
        (LayerKind::Mlp, counts.mlp_layer),
        (LayerKind::Moe, counts.moe_layer),
    ] {
        if config.count(kind) > 0 {
            println!("  per {:<15} {count}", format!("{} layer", kind.name()));
        }
    }
    if counts.shared_blocks > 0 {
        println!("  shared blocks       {}", counts.shared_blocks);
    }
    println!("  embedding + head    {}", counts.embedding + counts.lm_head);
    println!(
        "weights           f32 {}  bf16 {}  f16 {}",
        human(weight_bytes(Precision::F32)),
        human(weight_bytes(Precision::Bf16)),
        human(weight_bytes(Precision::F16))
    );
    println!(
        "recurrent state   {} per sequence (ssm {} in {}, conv {})",
        human(mem.state_bytes_per_sequence),
        human(mem.ssm_state_bytes_per_sequence),
        args.state_dtype,
        human(conv_bytes)
    );
    println!("kv cache          {} per token ({})", human(mem.kv_bytes_per_token), args.dtype);
    println!("per sequence      {} at context {}", human(mem.bytes_per_sequence(args.context)), args.context);
    if let Some((m, _, n)) = fit {
        println!(
            "fits              {n} sequences of {} tokens in {} next to {} of {} weights",
            args.context,
            human(m),
            human(mem.weight_bytes),
            args.dtype
        );
    }
    Ok(())
}
