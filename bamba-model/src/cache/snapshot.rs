//! One row of a [`HybridCache`] taken apart for the prefix cache, and put back together: the
//! attention K/V of a span of the row's tokens, the row's recurrent state, and a one-row cache
//! rebuilt from K/V spans and a state.
//!
//! Pieces are copies, not views: a view would keep the whole batch's buffers alive for as long as
//! the prefix cache holds the piece, and the bytes it accounts would not be the bytes it holds.

use burn::tensor::backend::Backend;
use burn::tensor::Tensor;

use super::{CacheError, HybridCache};
use crate::mamba2::MambaState;

/// K and V of some consecutive tokens of one sequence, per attention layer (`[1, kv_heads, tokens,
/// head_dim]` each, in layer order).
#[derive(Debug, Clone)]
pub struct KvSpan<B: Backend> {
    /// Each attention layer's keys and values, `[1, kv_heads, tokens, head_dim]`.
    pub layers: Vec<(Tensor<B, 4>, Tensor<B, 4>)>,
    /// Positions the span covers.
    pub tokens: usize,
}

impl<B: Backend> KvSpan<B> {
    /// Its first `at` tokens and the rest.
    pub fn split(&self, at: usize) -> (Self, Self) {
        let cut = |t: &Tensor<B, 4>, from: usize, len: usize| copy(t.clone().narrow(2, from, len));
        let rest = self.tokens - at;
        let head = self.layers.iter().map(|(k, v)| (cut(k, 0, at), cut(v, 0, at))).collect();
        let tail = self.layers.iter().map(|(k, v)| (cut(k, at, rest), cut(v, at, rest))).collect();
        (KvSpan { layers: head, tokens: at }, KvSpan { layers: tail, tokens: rest })
    }

    /// Bytes of device memory the tensors take.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|(k, v)| bytes(k) + bytes(v)).sum()
    }
}

/// Conv windows and SSM states of every Mamba layer of one sequence (`[1, …]` each, in layer order).
#[derive(Debug, Clone)]
pub struct RowState<B: Backend> {
    /// Each Mamba layer's conv window and SSM state, one row.
    pub layers: Vec<MambaState<B>>,
}

impl<B: Backend> RowState<B> {
    /// Bytes of device memory the tensors take.
    pub fn bytes(&self) -> u64 {
        self.layers.iter().map(|s| bytes(&s.conv_window) + bytes(&s.ssm)).sum()
    }
}

fn bytes<B: Backend, const D: usize>(t: &Tensor<B, D>) -> u64 {
    t.shape().num_elements() as u64 * t.dtype().size() as u64
}

/// A copy of `t` in a buffer of its own.
fn copy<B: Backend, const D: usize>(t: Tensor<B, D>) -> Tensor<B, D> {
    let ranges: [std::ops::Range<usize>; D] = std::array::from_fn(|i| 0..t.dims()[i]);
    Tensor::zeros(t.shape(), (&t.device(), t.dtype())).slice_assign(ranges, t)
}

impl<B: Backend> HybridCache<B> {
    /// K/V of tokens `from..to` of row `row` (token 0 is the row's first real token).
    pub fn row_kv(&self, row: usize, from: usize, to: usize) -> KvSpan<B> {
        let start = self.padding.pads[row];
        let layers = self
            .layers
            .iter()
            .filter_map(|layer| layer.kv.as_ref())
            .map(|kv| {
                let cut = |t: &Tensor<B, 4>| copy(t.clone().narrow(0, row, 1).narrow(2, start + from, to - from));
                (cut(&kv.k), cut(&kv.v))
            })
            .collect();
        KvSpan { layers, tokens: to - from }
    }

    /// The recurrent state of row `row` after its last token. Every Mamba layer must have run.
    pub fn row_state(&self, row: usize) -> RowState<B> {
        let layers = self
            .layers
            .iter()
            .filter_map(|layer| layer.mamba.as_ref())
            .map(|slot| {
                let s = slot.as_ref().expect("a row state is taken after a forward");
                MambaState {
                    conv_window: copy(s.conv_window.clone().narrow(0, row, 1)),
                    ssm: copy(s.ssm.clone().narrow(0, row, 1)),
                }
            })
            .collect();
        RowState { layers }
    }

    /// Fills an empty one-row cache with the concatenation of `spans` (root first) and `state`, so
    /// that it takes the next token after them.
    pub fn load_row_pieces(&mut self, spans: &[KvSpan<B>], state: &RowState<B>) -> Result<(), CacheError> {
        assert!(self.batch == 1 && self.position == 0, "row pieces go into an empty one-row cache");
        let position: usize = spans.iter().map(|s| s.tokens).sum();
        self.check(1, position)?;
        let (mut attention, mut mamba) = (0, 0);
        for layer in &mut self.layers {
            if let Some(kv) = &mut layer.kv {
                if position > 0 {
                    let k = Tensor::cat(spans.iter().map(|s| s.layers[attention].0.clone()).collect(), 2);
                    let v = Tensor::cat(spans.iter().map(|s| s.layers[attention].1.clone()).collect(), 2);
                    kv.append(k, v);
                }
                attention += 1;
            }
            if let Some(slot) = &mut layer.mamba {
                *slot = Some(state.layers[mamba].clone());
                mamba += 1;
            }
        }
        self.position = position;
        Ok(())
    }
}
