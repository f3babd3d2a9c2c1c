//! Sizes derived from a config alone: exact parameter counts, weight bytes, recurrent-state bytes,
//! KV-cache bytes and how many sequences fit in a memory budget. `bamba info` prints these; the
//! benchmark's roofline uses the same numbers.

use crate::config::{BambaConfig, FeedForwardPlan, GatedNorm, LayerKind, MlpActivation, MoeConfig};

/// Parameter counts by part of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParameterCounts {
    /// `embed_tokens` (vocab × hidden).
    pub embedding: u64,
    /// `lm_head` (0 when tied to the embedding).
    pub lm_head: u64,
    /// One Mamba decoder layer: mixer, its norm, and the feed-forward after it if any (MLP, experts,
    /// norm).
    pub mamba_layer: u64,
    /// One attention decoder layer, counted as `mamba_layer`.
    pub attention_layer: u64,
    /// One parallel layer (Falcon-H1): Mamba mixer, attention, their one norm, the feed-forward.
    pub parallel_layer: u64,
    /// One shared-block layer (Zamba2) without its block: Mamba mixer and norm, the use's adapters
    /// and linear.
    pub shared_layer: u64,
    /// Every distinct shared block (Zamba2; counted once however many layers use it).
    pub shared_blocks: u64,
    /// One shared block (0 without them).
    pub shared_block: u64,
    /// One MLP layer (Nemotron-H): the MLP and its norm.
    pub mlp_layer: u64,
    /// One MoE layer (Nemotron-H): router, experts, shared MLP, norm.
    pub moe_layer: u64,
    /// The router and all experts of one layer that has experts (0 without MoE; part of the above).
    pub experts_per_layer: u64,
    /// What one token reads: everything but the experts its router did not pick (= `total`
    /// without MoE).
    pub active: u64,
    /// The final RMSNorm.
    pub final_norm: u64,
    /// Everything.
    pub total: u64,
}

fn linear(inputs: usize, outputs: usize, bias: bool) -> u64 {
    (inputs * outputs + if bias { outputs } else { 0 }) as u64
}

impl ParameterCounts {
    /// Counts `c`'s parameters.
    pub fn new(c: &BambaConfig) -> Self {
        let h = c.hidden_size;
        let projections_in = match c.mlp_activation {
            MlpActivation::SwiGlu | MlpActivation::GeGlu => 2,
            MlpActivation::Relu2 => 1,
        };
        let mlp = |width: usize| projections_in * linear(h, width, c.mlp_bias) + linear(width, h, c.mlp_bias);
        let expert = |m: &MoeConfig| (projections_in as usize + 1) as u64 * (m.width * h) as u64;
        // The sigmoid router's `e_score_correction_bias` (one value per expert) is a buffer in
        // transformers, not a parameter, and is not counted, so that the totals are transformers'.
        let router = |m: &MoeConfig| (m.experts * h) as u64;
        let experts_per_layer = c.moe.map_or(0, |m| router(&m) + m.experts as u64 * expert(&m));
        let idle = |plan: Option<FeedForwardPlan>| {
            plan.and_then(|p| p.experts).map_or(0, |m| (m.experts - m.top_k) as u64 * expert(&m))
        };
        let feed_forward = |kind| {
            c.feed_forward(kind).map_or(0, |p| {
                mlp(p.width) + p.experts.map_or(0, |m| router(&m) + m.experts as u64 * expert(&m)) + h as u64
            })
        };
        let heads = c.mamba_n_heads;
        let mixer = linear(h, c.in_proj_dim(), c.mamba_proj_bias)
            + linear(c.mamba_d_conv, c.conv_dim(), c.mamba_conv_bias) // depthwise: [conv_dim, 1, K]
            + 3 * heads as u64 // dt_bias, A_log, D
            + if c.mamba_gated_norm == GatedNorm::GateOnly { 0 } else { c.d_inner() as u64 }
            + linear(c.d_inner(), h, c.mamba_out_bias);
        let (q, kv, a_in) = (c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.attention_input());
        let attention =
            linear(a_in, q, c.attention_bias) + 2 * linear(a_in, kv, c.attention_bias) + linear(q, h, c.attention_bias);
        let embedding = (c.vocab_size * h) as u64;
        let lm_head = if c.tie_word_embeddings { 0 } else { embedding };
        let mamba_layer = mixer + h as u64 + feed_forward(LayerKind::Mamba);
        let attention_layer = attention + h as u64 + feed_forward(LayerKind::Attention);
        let parallel_layer = mixer + attention + h as u64 + feed_forward(LayerKind::Parallel);
        // Zamba2: each use has a gate|up adapter (and q/k/v ones) and a linear; each block a
        // 2·hidden norm, the attention, a norm and the MLP.
        let (shared_layer, shared_block, blocks) = match c.shared_blocks {
            Some(s) => {
                let r = s.adapter_rank;
                let adapters = linear(h, r, false)
                    + linear(r, 2 * c.intermediate_size, false)
                    + if s.attention_adapters { 3 * (linear(a_in, r, false) + linear(r, a_in, false)) } else { 0 };
                let uses = c.count(LayerKind::Shared);
                let block = (a_in + h) as u64 + attention + mlp(c.intermediate_size);
                (mixer + h as u64 + adapters + linear(h, h, false), block, s.count.min(uses) as u64)
            }
            None => (0, 0, 0),
        };
        let (mlp_layer, moe_layer) = (feed_forward(LayerKind::Mlp), feed_forward(LayerKind::Moe));
        let final_norm = h as u64;
        // In `LayerKind::ALL`'s order.
        let per_kind = [mamba_layer, attention_layer, parallel_layer, shared_layer, mlp_layer, moe_layer];
        let layers: u64 = LayerKind::ALL.iter().zip(per_kind).map(|(&k, n)| c.count(k) as u64 * n).sum();
        let shared_blocks = blocks * shared_block;
        let total = embedding + lm_head + final_norm + layers + shared_blocks;
        let idle: u64 = c.layer_kinds.iter().map(|&k| idle(c.feed_forward(k))).sum();
        ParameterCounts {
            embedding,
            lm_head,
            mamba_layer,
            attention_layer,
            parallel_layer,
            shared_layer,
            shared_blocks,
            shared_block,
            mlp_layer,
            moe_layer,
            experts_per_layer,
            active: total - idle,
            final_norm,
            total,
        }
    }
}

/// Memory model of a config at given element sizes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryModel {
    /// Bytes of all weights.
    pub weight_bytes: u64,
    /// Bytes of weights read per decode step of one sequence (all but the embedding, which is
    /// gathered, and the experts the router did not pick; a tied embedding is read whole as the LM
    /// head). Larger batches route to more experts: this is the batch-1 roofline's count. A shared
    /// block is read once per use.
    pub streamed_weight_bytes: u64,
    /// Recurrent state of one sequence: SSM state and conv window of every Mamba layer.
    pub state_bytes_per_sequence: u64,
    /// SSM state alone (part of `state_bytes_per_sequence`).
    pub ssm_state_bytes_per_sequence: u64,
    /// KV cache bytes per token of context (attention layers only).
    pub kv_bytes_per_token: u64,
}

impl MemoryModel {
    /// `weight_elem`, `state_elem` and `kv_elem` are element sizes in bytes (2 for bf16, 4 for f32).
    pub fn new(c: &BambaConfig, weight_elem: u64, state_elem: u64, kv_elem: u64) -> Self {
        let p = ParameterCounts::new(c);
        let mamba = c.mamba_layers() as u64;
        let ssm = mamba * (c.mamba_n_heads * c.mamba_d_head * c.mamba_d_state) as u64 * state_elem;
        // Engines keep K−1 conv columns; the conv window has the weights' dtype.
        let conv = mamba * (c.conv_dim() * (c.mamba_d_conv - 1)) as u64 * weight_elem;
        let kv = c.attention_layers() as u64 * 2 * (c.num_kv_heads * c.head_dim) as u64 * kv_elem;
        let streamed = if c.tie_word_embeddings { p.active } else { p.active - p.embedding };
        let reuses = (c.count(LayerKind::Shared) as u64).saturating_sub(c.shared_blocks.map_or(0, |s| s.count as u64));
        let streamed = streamed + reuses * p.shared_block;
        MemoryModel {
            weight_bytes: p.total * weight_elem,
            streamed_weight_bytes: streamed * weight_elem,
            state_bytes_per_sequence: ssm + conv,
            ssm_state_bytes_per_sequence: ssm,
            kv_bytes_per_token: kv,
        }
    }

    /// Bytes one sequence of `context` tokens needs besides the weights.
    pub fn bytes_per_sequence(&self, context: u64) -> u64 {
        self.state_bytes_per_sequence.saturating_add(context.saturating_mul(self.kv_bytes_per_token))
    }

    /// How many sequences of `context` tokens fit in `memory` bytes next to the weights.
    pub fn sequences_that_fit(&self, memory: u64, context: u64) -> u64 {
        let per = self.bytes_per_sequence(context).max(1);
        memory.saturating_sub(self.weight_bytes) / per
    }

    /// Bytes one decode step of `batch` sequences at `context` cached tokens must move at least:
    /// the streamed weights once, each sequence's recurrent state read and written, its KV read.
    pub fn decode_step_bytes(&self, batch: u64, context: u64) -> u64 {
        let per_sequence =
            (2 * self.state_bytes_per_sequence).saturating_add(context.saturating_mul(self.kv_bytes_per_token));
        self.streamed_weight_bytes.saturating_add(batch.saturating_mul(per_sequence))
    }
}

/// Parses a memory size such as `141GB`, `80GiB`, `512MB` or a plain byte count.
pub fn parse_memory(text: &str) -> Option<u64> {
    let t = text.trim();
    let split = t.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num.trim().parse().ok()?;
    let scale: f64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1.0,
        "kb" | "k" => 1e3,
        "mb" | "m" => 1e6,
        "gb" | "g" => 1e9,
        "tb" | "t" => 1e12,
        "kib" => 1024.0,
        "mib" => 1024.0f64.powi(2),
        "gib" => 1024.0f64.powi(3),
        "tib" => 1024.0f64.powi(4),
        _ => return None,
    };
    (value.is_finite() && value >= 0.0).then(|| (value * scale) as u64)
}

/// Matmul FLOPs of prefilling `tokens` tokens in each of `batch` sequences with logits of the last
/// position only: every linear layer on every token (the picked experts only), causal attention (half of QKᵀ and of PV), the
/// LM head once per sequence. The SSD scan (~1.3% at chunk 256) is left out.
pub fn prefill_flops(c: &BambaConfig, batch: u64, tokens: u64) -> f64 {
    let p = ParameterCounts::new(c);
    let head = (c.vocab_size * c.hidden_size) as f64;
    let per_token = (p.active - p.embedding - p.lm_head) as f64;
    let linear = 2.0 * per_token * (batch * tokens) as f64 + 2.0 * head * batch as f64;
    let width = (c.num_heads * c.head_dim) as f64;
    let attention = c.attention_layers() as f64 * 2.0 * width * (tokens * tokens) as f64 * batch as f64;
    linear + attention
}
