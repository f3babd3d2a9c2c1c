//! Grouped-query self-attention with partial RoPE and a causal mask (q/k/v/o biases optional).

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor};

use crate::cache::KvCache;
use crate::config::BambaConfig;
use crate::linear::Linear;
use crate::loader::{LoadError, WeightReader};
use crate::rope::{Rope, RopeTables};

#[derive(Debug, Clone)]
pub struct Attention<B: Backend> {
    pub q_proj: Linear<B>,
    pub k_proj: Linear<B>,
    pub v_proj: Linear<B>,
    pub o_proj: Linear<B>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
}

/// Repeats each kv head `rep` times (head `i` of the queries reads kv head `i / rep`).
///
/// # Shapes
/// - `x`: `[batch, kv_heads, len, head_dim]` → `[batch, kv_heads · rep, len, head_dim]`
fn repeat_kv<B: Backend>(x: Tensor<B, 4>, rep: usize) -> Tensor<B, 4> {
    if rep == 1 {
        return x;
    }
    let [b, kv, len, hd] = x.dims();
    x.unsqueeze_dim::<5>(2).expand([b, kv, rep, len, hd]).reshape([b, kv * rep, len, hd])
}

/// Causal scaled-dot-product attention; softmax in f32. Query `i` sits at absolute position
/// `query_offset + i` and sees keys `0 ..= query_offset + i`, unless an explicit `mask` (which
/// must include causality) says otherwise.
///
/// # Shapes
/// - `q`: `[batch, heads, q_len, head_dim]`, `k`, `v`: `[batch, heads, k_len, head_dim]` → like `q`
/// - `mask`: `[batch, 1, q_len, k_len]`, `true` = masked
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    query_offset: usize,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    let dtype = q.dtype();
    let [_, _, q_len, head_dim] = q.dims();
    let k_len = k.dims()[2];
    let scale = (head_dim as f64).powf(-0.5);
    let scores = q.matmul(k.swap_dims(2, 3)).cast(DType::F32) * scale;
    let masked = match mask {
        Some(mask) => mask,
        None => Tensor::<B, 2, Bool>::tril_mask([q_len, k_len], query_offset as i64, &scores.device()).unsqueeze(),
    };
    let probs = softmax(scores.mask_fill(masked, f32::NEG_INFINITY), 3).cast(dtype);
    probs.matmul(v)
}

impl<B: Backend> Attention<B> {
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
        cache: Option<&mut KvCache<B>>,
    ) -> Tensor<B, 3> {
        let [batch, len, _] = x.dims();
        let heads = |t: Tensor<B, 3>, n: usize| t.reshape([batch, len, n, self.head_dim]).swap_dims(1, 2);
        let q = rope.apply(heads(self.q_proj.forward(x.clone()), self.num_heads), tables);
        let k = rope.apply(heads(self.k_proj.forward(x.clone()), self.num_kv_heads), tables);
        let v = heads(self.v_proj.forward(x), self.num_kv_heads);
        let (k, v, start) = match cache {
            Some(cache) => {
                let start = cache.len();
                let (k, v) = cache.append(k, v);
                (k, v, start)
            }
            None => (k, v, 0),
        };
        let rep = self.num_heads / self.num_kv_heads;
        let out = causal_attention(q, repeat_kv(k, rep), repeat_kv(v, rep), start, mask.cloned());
        let out = out.swap_dims(1, 2).reshape([batch, len, self.num_heads * self.head_dim]);
        self.o_proj.forward(out)
    }
}
