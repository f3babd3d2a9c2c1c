//! Grouped-query self-attention with partial, full or no RoPE and a causal mask (q/k/v/o biases
//! optional).

use bamba_kernels::BambaOps;
use burn::tensor::{DType, Tensor};

use crate::cache::KvCache;
use crate::config::BambaConfig;
use crate::linear::{Linear, Lora};
use crate::loader::{LoadError, WeightReader};
use crate::padding::ChunkMasks;
use crate::rope::RopeTables;

#[derive(Debug, Clone)]
/// Grouped-query self-attention with optional partial RoPE, reading and writing a KV cache.
pub struct Attention<B: BambaOps> {
    /// Queries, `[hidden] → [heads · head_dim]` (Granite: attention multiplier folded in).
    pub q_proj: Linear<B>,
    /// Keys, `[hidden] → [kv_heads · head_dim]`.
    pub k_proj: Linear<B>,
    /// Values, `[hidden] → [kv_heads · head_dim]`.
    pub v_proj: Linear<B>,
    /// Output, `[heads · head_dim] → [hidden]`.
    pub o_proj: Linear<B>,
    /// Query heads.
    pub num_heads: usize,
    /// Key/value heads (each serves `num_heads / num_kv_heads` query heads).
    pub num_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Low-rank adapters added to q, k and v (one use of a Zamba2 shared block).
    pub adapters: Option<QkvAdapters<B>>,
}

/// Per-use adapters of a shared attention's q, k and v projections.
#[derive(Debug, Clone)]
pub struct QkvAdapters<B: BambaOps> {
    /// Added to the queries (with the queries' scale folded in).
    pub q: Lora<B>,
    /// Added to the keys.
    pub k: Lora<B>,
    /// Added to the values.
    pub v: Lora<B>,
}

/// What the queries are multiplied by at load so that the kernels' `1/√head_dim` gives the config's
/// softmax scale (Granite's `attention_multiplier`, Zamba2's `(head_dim / 2)^-½`).
pub fn query_scale(c: &BambaConfig) -> f64 {
    c.attention_multiplier.map_or(1.0, |s| s * (c.head_dim as f64).sqrt())
}

impl<B: BambaOps> Attention<B> {
    /// Reads `{prefix}.{q,k,v,o}_proj`. The attention kernels scale scores by `1/√head_dim`; another
    /// softmax scale (`attention_multiplier`) is folded into `q_proj` (RoPE is linear, so scaling q
    /// before it is the same), and the residual multiplier into `o_proj`.
    pub fn load(w: &mut WeightReader<'_, B>, prefix: &str, c: &BambaConfig) -> Result<Self, LoadError> {
        // Zamba2's shared attention reads concat(h, embeddings); its output is hidden-wide.
        let (h, bias) = (c.attention_input(), c.attention_bias);
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        // Granite's softmax scale rides on the queries; Falcon-H1's input multiplier on the q/k/v
        // weights, its key multiplier on the keys (RoPE is linear), its output multiplier on o_proj.
        let q_scale = query_scale(c);
        let (input, key) = (c.scales.attention_in, c.scales.key);
        let out_scale = c.residual_multiplier * c.scales.attention_out;
        let load = |w: &mut WeightReader<'_, B>, name: &str, shape, scale: f64, bias_scale: f64| {
            Linear::load_scaled_apart(w, &format!("{prefix}.{name}"), shape, bias, scale, bias_scale)
        };
        Ok(Attention {
            q_proj: load(w, "q_proj", [h, q], input * q_scale, q_scale)?,
            k_proj: load(w, "k_proj", [h, kv], input * key, key)?,
            v_proj: load(w, "v_proj", [h, kv], input, 1.0)?,
            o_proj: load(w, "o_proj", [q, c.hidden_size], out_scale, out_scale)?,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
            adapters: None,
        })
    }

    /// Attention for positions `start .. start + len` (`tables`, absent without RoPE, must cover them). With a cache, the new
    /// keys/values are appended and the queries attend over everything cached; without one,
    /// `start` must be 0 and the sequence attends over itself. `masks.attention` (left padding)
    /// replaces the plain causal mask; a decode step (`len == 1` with a cache) reads
    /// `masks.key_start` instead and runs [`BambaOps::decode_attention`] over the whole cache.
    ///
    /// Returns `residual` + the output (the add fused into `o_proj` at decode), or the output alone
    /// without a residual (Zamba2's shared blocks).
    ///
    /// # Shapes
    /// - `x`, `residual`: `[batch, len, hidden]` → same
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        tables: Option<&RopeTables<B>>,
        masks: &ChunkMasks<B>,
        cache: Option<&mut KvCache<B>>,
        residual: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, self.head_dim]).swap_dims(1, 2);
        let rotate = |t: Tensor<B, 4>| match tables {
            Some(tables) => tables.apply(t),
            None => t,
        };
        let (q, k, v) = match &self.adapters {
            None => (self.q_proj.forward(x.clone()), self.k_proj.forward(x.clone()), self.v_proj.forward(x)),
            Some(a) => (
                self.q_proj.forward(x.clone()) + a.q.forward(x.clone()),
                self.k_proj.forward(x.clone()) + a.k.forward(x.clone()),
                self.v_proj.forward(x.clone()) + a.v.forward(x),
            ),
        };
        let q = rotate(heads(q, self.num_heads));
        let k = rotate(heads(k, self.num_kv_heads));
        let v = heads(v, self.num_kv_heads);
        let out = match (len, cache) {
            (1, Some(cache)) => {
                let (k, v, filled) = cache.append_whole(k, v);
                let key_start = match &masks.key_start {
                    Some(start) => start.clone(),
                    None => Tensor::zeros([batch], (&q.device(), DType::F32)),
                };
                B::decode_attention(q, k, v, key_start, filled)
            }
            (_, Some(cache)) => {
                let start = cache.len();
                let (k, v) = cache.append(k, v);
                B::causal_attention(q, k, v, start, masks.attention.clone())
            }
            (_, None) => B::causal_attention(q, k, v, 0, masks.attention.clone()),
        };
        // [batch, heads, len, head_dim] → [batch, len, heads · head_dim]; one position is already in
        // that order (no transpose, so no copy launch).
        let out = if len == 1 {
            out.reshape([batch, 1, self.num_heads * self.head_dim])
        } else {
            out.swap_dims(1, 2).reshape([batch, len, self.num_heads * self.head_dim])
        };
        self.o_proj.forward_maybe_residual(out, residual)
    }
}
