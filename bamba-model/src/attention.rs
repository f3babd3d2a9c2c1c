//! Grouped-query self-attention with partial RoPE and a causal mask (q/k/v/o biases optional).

use bamba_kernels::BambaOps;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};

use crate::cache::KvCache;
use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::rope::{Rope, RopeTables};

#[derive(Debug, Clone)]
pub struct Attention<B: BambaOps> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Causal scaled-dot-product attention with grouped KV heads; softmax in f32. Query `i` sits at
/// absolute position `query_offset + i` and sees keys `0 ..= query_offset + i`, unless an explicit
/// `mask` (which must include causality) says otherwise. Query head `h` reads KV head `h / rep`.
///
/// The `rep` query heads of a group are folded into the query rows, so one matmul per KV head serves
/// the whole group and K, V are never copied `rep` times (a copy of the whole KV cache per layer
/// and step otherwise).
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`, `k`, `v`: `[batch, kv_heads, k_len, head_dim]` → like `q`
/// - `mask`: `[batch, 1, q_len, k_len]`, `true` = masked
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    query_offset: usize,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    let rep = heads / kv_heads;
    let scale = (head_dim as f64).powf(-0.5);
    // Row r·q_len + i of a group is query i of the group's head r.
    let q = q.reshape([batch, kv_heads, rep * q_len, head_dim]);
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) * scale;
    let mask = match mask {
        Some(mask) => Some(mask),
        // One query at the end of the keys sees them all: nothing to mask.
        None if q_len == 1 && query_offset + 1 == k_len => None,
        None => {
            Some(Tensor::<B, 2, Bool>::tril_mask([q_len, k_len], query_offset as i64, &scores.device()).unsqueeze())
        }
    };
    let scores = match mask {
        Some(mask) => {
            let mask_batch = mask.dims()[0];
            let rows = mask.unsqueeze_dim::<5>(2).expand([mask_batch, 1, rep, q_len, k_len]);
            scores.mask_fill(rows.reshape([mask_batch, 1, rep * q_len, k_len]), f32::NEG_INFINITY)
        }
        None => scores,
    };
    let probs = softmax(scores, 3).cast(dtype);
    probs.matmul(v).reshape([batch, heads, q_len, head_dim])
}

/// One new position per sequence against the whole preallocated KV cache, its unfilled tail masked:
/// every decode step then multiplies the same shapes, so Burn's matmul autotune and kernel compilation
/// run once instead of at every new key length (on CUDA that was seconds per step). The masked
/// positions cost their reads: the cache capacity (prompt + new tokens) bounds the waste.
///
/// # Shapes
/// - `q`: `[batch, heads, 1, head_dim]`, `k`, `v`: `[batch, kv_heads, 1, head_dim]` → like `q`
/// - `padding`: `[batch, 1, 1, filled keys]`, `true` = masked
fn decode_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    padding: Option<&Tensor<B, 4, Bool>>,
    cache: &mut KvCache<B>,
) -> Tensor<B, 4> {
    let device = q.device();
    let (k, v, filled) = cache.append_whole(k, v);
    let capacity = k.dims()[2];
    let unfilled = Tensor::<B, 1, Int>::arange(0..capacity as i64, &device).greater_equal_elem(filled as i64);
    let mask = match padding {
        Some(pad) if filled < capacity => {
            let rows = pad.dims()[0];
            let tail = Tensor::<B, 4, Int>::ones([rows, 1, 1, capacity - filled], &device).bool();
            Tensor::cat(vec![pad.clone(), tail], 3)
        }
        Some(pad) => pad.clone(),
        None => unfilled.reshape([1, 1, 1, capacity]),
    };
    causal_attention(q, k, v, capacity - 1, Some(mask))
}

impl<B: BambaOps> Attention<B> {
    /// Reads `{prefix}.{q,k,v,o}_proj`.
    pub fn load(w: &mut WeightReader<'_, B>, prefix: &str, c: &BambaConfig) -> Result<Self, LoadError> {
        let (h, bias) = (c.hidden_size, c.attention_bias);
        let q = c.num_heads * c.head_dim;
        let kv = c.num_kv_heads * c.head_dim;
        Ok(Attention {
            q_proj: Linear::load(w, &format!("{prefix}.q_proj"), h, q, bias)?,
            k_proj: Linear::load(w, &format!("{prefix}.k_proj"), h, kv, bias)?,
            v_proj: Linear::load(w, &format!("{prefix}.v_proj"), h, kv, bias)?,
            o_proj: Linear::load(w, &format!("{prefix}.o_proj"), q, h, bias)?,
            num_heads: c.num_heads,
            num_kv_heads: c.num_kv_heads,
            head_dim: c.head_dim,
        })
    }

    /// Attention for positions `start .. start + len` (`tables` must cover them). With a cache, the new
    /// keys/values are appended and the queries attend over everything cached; without one,
    /// `start` must be 0 and the sequence attends over itself. `mask` (left padding) replaces the
    /// plain causal mask.
    ///
    /// # Shapes
    /// - `x`: `[batch, len, hidden]` → same
    /// - `mask`: `[batch, 1, len, keys]`, `true` = masked
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        rope: &Rope,
        tables: &RopeTables<B>,
        mask: Option<&Tensor<B, 4, Bool>>,
        mut cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), self.num_heads), tables);
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads), tables);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        if let (1, Some(cache)) = (len, cache.as_deref_mut()) {
            let out = decode_attention(q, k, v, mask, cache);
            return self.o_proj.forward(out.swap_dims(1, 2).reshape([batch, len, self.num_heads * self.head_dim]));
        }
        let (k, v, start) = match cache {
            Some(cache) => {
                let start = cache.len();
                let (k, v) = cache.append(k, v);
                (k, v, start)
            }
            None => (k, v, 0),
        };
        let out = causal_attention(q, k, v, start, mask.cloned());
        let out = out.swap_dims(1, 2).reshape([batch, len, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}
