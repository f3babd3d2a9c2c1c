//! Left padding for a batch of prompts of different lengths: per-row positions and the masks that
//! make each row compute exactly what it would alone.
//!
//! Row `r` starts with `pads[r]` pad tokens. Its real tokens take RoPE positions `0, 1, ...` (as
//! transformers' `generate()` does from the attention mask), attention never reads a pad key, and the
//! Mamba mixer zeroes its xBC input and output at pad positions so that the conv window and the SSM
//! state are exactly zero when the first real token arrives.

use burn::tensor::backend::Backend;
use burn::tensor::{Bool, DType, Tensor, TensorData};

/// How many pad tokens lead each row of a batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LeftPadding {
    /// Leading pad tokens of each row.
    pub pads: Vec<usize>,
}

impl LeftPadding {
    /// Pads every prompt on the left with `pad_id` to the longest length.
    pub fn pad(prompts: &[Vec<u32>], pad_id: u32) -> (Vec<Vec<u32>>, LeftPadding) {
        let width = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pads: Vec<usize> = prompts.iter().map(|p| width - p.len()).collect();
        let rows = prompts
            .iter()
            .zip(&pads)
            .map(|(p, &n)| std::iter::repeat_n(pad_id, n).chain(p.iter().copied()).collect())
            .collect();
        (rows, LeftPadding { pads })
    }

    /// No row is padded.
    pub fn is_none(&self) -> bool {
        self.pads.iter().all(|&p| p == 0)
    }

    /// RoPE position of every slot `start .. start + len` of every row (pad slots get 0; their
    /// values are never read by a real token).
    pub fn positions(&self, start: usize, len: usize) -> Vec<Vec<usize>> {
        self.pads.iter().map(|&pad| (start..start + len).map(|slot| slot.saturating_sub(pad)).collect()).collect()
    }

    /// `true` where attention must not look: future keys and, for real queries, pad keys. A pad query
    /// sees the pads before it (any finite result will do; it is never read).
    ///
    /// # Shapes
    /// - returns `[batch, 1, len, start + len]`
    pub fn attention_mask<B: Backend>(&self, start: usize, len: usize, device: &B::Device) -> Tensor<B, 4, Bool> {
        let keys = start + len;
        let mut masked = Vec::with_capacity(self.pads.len() * len * keys);
        for &pad in &self.pads {
            for query in start..start + len {
                masked.extend((0..keys).map(|key| key > query || (key < pad && query >= pad)));
            }
        }
        Tensor::from_data(TensorData::new(masked, [self.pads.len(), 1, len, keys]), device)
    }

    /// The first cache slot the query at slot `position` of each row may attend to, as f32 for
    /// [`bamba_kernels::BambaOps::decode_attention`]: a real token skips its row's pads; a pad token
    /// (prefill in chunks of one) sees the pads before it, as in [`Self::attention_mask`] (any finite
    /// result will do; with no key at all its softmax would be NaN and reach the real tokens through
    /// the Mamba state). Zeros for an unpadded batch.
    ///
    /// # Shapes
    /// - returns `[batch]`
    pub fn key_starts<B: Backend>(&self, position: usize, batch: usize, device: &B::Device) -> Tensor<B, 1> {
        if self.is_none() {
            return Tensor::zeros([batch], (device, DType::F32));
        }
        let starts: Vec<f32> = self.pads.iter().map(|&pad| if position >= pad { pad as f32 } else { 0.0 }).collect();
        Tensor::from_data(TensorData::new(starts, [batch]), (device, DType::F32))
    }

    /// 1 at real tokens, 0 at pads, for slots `start .. start + len`; `None` when the chunk holds
    /// no pad.
    ///
    /// # Shapes
    /// - returns `[batch, len, 1]`
    pub fn token_mask<B: Backend>(
        &self,
        start: usize,
        len: usize,
        device: &B::Device,
        dtype: DType,
    ) -> Option<Tensor<B, 3>> {
        if self.pads.iter().all(|&pad| pad <= start) {
            return None;
        }
        let mask: Vec<f32> = self
            .pads
            .iter()
            .flat_map(|&pad| (start..start + len).map(move |slot| if slot < pad { 0.0 } else { 1.0 }))
            .collect();
        let t = Tensor::<B, 3>::from_data(TensorData::new(mask, [self.pads.len(), len, 1]), (device, DType::F32));
        Some(t.cast(dtype))
    }
}

/// The padding masks of one chunk, handed to every layer (both `None` for an unpadded batch).
#[derive(Debug, Clone)]
pub struct ChunkMasks<B: Backend> {
    /// `[batch, 1, len, keys]`, `true` = do not attend.
    pub attention: Option<Tensor<B, 4, Bool>>,
    /// `[batch, len, 1]`, 1 at real tokens and 0 at pads.
    pub tokens: Option<Tensor<B, 3>>,
    /// Decode steps only: `[batch]` f32, the first cache slot each row may attend to.
    pub key_start: Option<Tensor<B, 1>>,
}

impl<B: Backend> ChunkMasks<B> {
    /// No padding (masks of nothing).
    pub fn none() -> Self {
        ChunkMasks { attention: None, tokens: None, key_start: None }
    }
}
