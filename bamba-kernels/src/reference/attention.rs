//! Attention references: causal grouped-query attention over a whole chunk, and the decode form over
//! a preallocated KV cache.

use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Int, Tensor};

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
/// - `mask`: `[batch or 1, 1, q_len, k_len]`, `true` = masked
pub fn causal_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    query_offset: usize,
    mask: Option<Tensor<B, 4, Bool>>,
) -> Tensor<B, 4> {
    causal_attention_with(q, k, v, query_offset, mask, Tensor::matmul, masked_softmax)
}

/// How [`causal_attention`] lays out its scores: the `rep` query heads of a KV group folded into the
/// rows, so that row `r` of a group holds query `r % q_len`, at absolute position `query_offset + r % q_len`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreRows {
    /// Queries per head.
    pub q_len: usize,
    /// Query heads per KV head.
    pub rep: usize,
    /// Absolute position of the first query.
    pub query_offset: usize,
    /// `1 / √head_dim`, applied to the raw scores.
    pub scale: f64,
}

/// [`causal_attention`] with its two batched products made by `matmul` (`[.., m, k] · [.., k, n]`)
/// and the softmax between them by `softmax` (as [`masked_softmax`] computes it), so that a backend
/// can choose how they run.
pub fn causal_attention_with<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    query_offset: usize,
    mask: Option<Tensor<B, 4, Bool>>,
    matmul: impl Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
    softmax: impl FnOnce(Tensor<B, 4>, Option<Tensor<B, 4, Bool>>, &ScoreRows) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let kv_heads = k.dims()[1];
    let rep = heads / kv_heads;
    let layout = ScoreRows { q_len, rep, query_offset, scale: (head_dim as f64).powf(-0.5) };
    // Row r·q_len + i of a group is query i of the group's head r.
    let q = q.reshape([batch, kv_heads, rep * q_len, head_dim]);
    let probs = softmax(matmul(q, k.swap_dims(2, 3)), mask, &layout);
    matmul(probs, v).reshape([batch, heads, q_len, head_dim])
}

/// [`causal_attention_with`] for blocks of `block` queries in turn, each against only the keys its
/// last query sees (the first `query_offset + end` of them): the scores of a causal prefill are a
/// triangle, and one product over all keys computes, stores, normalizes and reads the masked half too.
/// With `n` blocks the score traffic is `(n + 1) / 2n` of the one-block pass. `block == 0` or a
/// prompt of at most one block runs one pass.
///
/// # Shapes
/// - as [`causal_attention`]
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_in_query_blocks<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    query_offset: usize,
    mask: Option<Tensor<B, 4, Bool>>,
    block: usize,
    matmul: impl Fn(Tensor<B, 4>, Tensor<B, 4>) -> Tensor<B, 4>,
    softmax: impl Fn(Tensor<B, 4>, Option<Tensor<B, 4, Bool>>, &ScoreRows) -> Tensor<B, 4>,
) -> Tensor<B, 4> {
    let [batch, heads, q_len, head_dim] = q.dims();
    let [_, kv_heads, k_len, _] = k.dims();
    if block == 0 || q_len <= block {
        return causal_attention_with(q, k, v, query_offset, mask, matmul, softmax);
    }
    let parts = (0..q_len)
        .step_by(block)
        .map(|start| {
            let rows = start..(start + block).min(q_len);
            let keys = (query_offset + rows.end).min(k_len);
            let mask = mask.clone().map(|m| {
                let [mask_batch, one, _, _] = m.dims();
                m.slice([0..mask_batch, 0..one, rows.clone(), 0..keys])
            });
            causal_attention_with(
                q.clone().slice([0..batch, 0..heads, rows.clone(), 0..head_dim]),
                k.clone().slice([0..batch, 0..kv_heads, 0..keys, 0..head_dim]),
                v.clone().slice([0..batch, 0..kv_heads, 0..keys, 0..head_dim]),
                query_offset + rows.start,
                mask,
                &matmul,
                &softmax,
            )
        })
        .collect();
    Tensor::cat(parts, 2)
}

/// The softmax of [`causal_attention`]: raw scores (in the operands' dtype) scaled and masked in f32
/// (by `mask`, else causally), normalized over the keys, returned in the scores' dtype.
///
/// # Shapes
/// - `scores`: `[batch, kv_heads, rep·q_len, k_len]` → the same; `mask`: as in [`causal_attention`]
pub fn masked_softmax<B: Backend>(
    scores: Tensor<B, 4>,
    mask: Option<Tensor<B, 4, Bool>>,
    layout: &ScoreRows,
) -> Tensor<B, 4> {
    let dtype = scores.dtype();
    let k_len = scores.dims()[3];
    let ScoreRows { q_len, rep, query_offset, scale } = *layout;
    let scores = scores.cast(DType::F32) * scale;
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
    softmax(scores, 3).cast(dtype)
}

/// One new query per sequence against the first `keys` slots of a preallocated KV cache; row `b`
/// attends to slots `key_start[b] .. keys` (its left padding excluded). The whole cache takes part,
/// the rest masked, so that every decode step has the same shapes (Burn tunes and compiles its
/// matmul per shape).
///
/// # Shapes
/// - `q`: `[batch, heads, 1, head_dim]`, `k`, `v`: `[batch, kv_heads, capacity, head_dim]` → like `q`
/// - `key_start`: `[batch]`, whole numbers (any float dtype)
pub fn decode_attention<B: Backend>(
    q: Tensor<B, 4>,
    k: Tensor<B, 4>,
    v: Tensor<B, 4>,
    key_start: Tensor<B, 1>,
    keys: usize,
) -> Tensor<B, 4> {
    let [batch, _, capacity, _] = k.dims();
    let slot = Tensor::<B, 1, Int>::arange(0..capacity as i64, &q.device()).float().cast(DType::F32);
    let slot = slot.reshape([1, capacity]);
    let before = slot.clone().lower(key_start.cast(DType::F32).reshape([batch, 1]));
    let after = slot.greater_equal_elem(keys as f32);
    let mask = before.bool_or(after).reshape([batch, 1, 1, capacity]);
    causal_attention(q, k, v, capacity - 1, Some(mask))
}
