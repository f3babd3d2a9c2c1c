//! Row surgery on a [`HybridCache`] for continuous batching: sequences of different lengths share one
//! cache as a left-padded batch, right-aligned at the shared write slot `position`.
//!
//! Row `r` keeps its `len_r` cached tokens in KV slots `position - len_r .. position` (a left padding
//! of `position - len_r`), so a decode step over the rows is exactly the left-padded batched step of
//! [`crate::BambaModel::generate_batch`]: per-row RoPE positions, attention from each row's first real
//! slot. Rows join from a prefilled cache and leave by selection; [`HybridCache::realign`] moves every
//! row to a new write slot and capacity.

use burn::tensor::{Int, Tensor, TensorData};

use super::HybridCache;
use burn::tensor::backend::Backend;

impl<B: Backend> HybridCache<B> {
    /// Cached tokens of each row (`position` minus its left padding).
    pub fn row_lens(&self) -> Vec<usize> {
        self.padding.pads.iter().map(|&pad| self.position - pad).collect()
    }

    /// Moves every row so that its tokens end at slot `position` in buffers of `capacity` slots.
    /// Needs `position >= ` the longest row and `capacity >= position`. Mamba states do not move.
    pub(crate) fn realign(&mut self, position: usize, capacity: usize) {
        let lens = self.row_lens();
        let longest = lens.iter().copied().max().unwrap_or(0);
        assert!(position >= longest && capacity >= position, "realign to {position}/{capacity}, longest {longest}");
        let (old_start, new_start) = (self.position - longest, position - longest);
        for layer in &mut self.layers {
            if let Some(kv) = &mut layer.kv {
                let [batch, heads, _, dim] = kv.k.dims();
                let (dtype, device) = (kv.k.dtype(), kv.k.device());
                let moved = |old: Tensor<B, 4>| {
                    let kept = old.narrow(2, old_start, longest);
                    Tensor::zeros([batch, heads, capacity, dim], (&device, dtype))
                        .slice_assign([0..batch, 0..heads, new_start..position, 0..dim], kept)
                };
                kv.k = moved(kv.k.clone());
                kv.v = moved(kv.v.clone());
                kv.len = position;
            }
        }
        self.padding.pads = lens.iter().map(|&len| position - len).collect();
        self.position = position;
        self.capacity = capacity;
        self.rope_tables = None;
    }

    /// Keeps rows `keep` (in that order) and drops the others. `keep` must not be empty.
    pub(crate) fn select_rows(&mut self, keep: &[usize]) {
        assert!(!keep.is_empty(), "a cache keeps at least one row");
        let index = row_index::<B>(keep, &self.zero_state.device);
        for layer in &mut self.layers {
            if let Some(kv) = &mut layer.kv {
                kv.k = kv.k.clone().select(0, index.clone());
                kv.v = kv.v.clone().select(0, index.clone());
            }
            if let Some(Some(state)) = &mut layer.mamba {
                state.conv_window = state.conv_window.clone().select(0, index.clone());
                state.ssm = state.ssm.clone().select(0, index.clone());
            }
        }
        self.padding.pads = keep.iter().map(|&r| self.padding.pads[r]).collect();
        self.set_batch(keep.len());
    }

    /// Appends the rows of `other` after this cache's rows. Both must have the same write slot and
    /// capacity (see [`Self::realign`]) and every Mamba layer a state (both prefilled).
    pub(crate) fn append_rows(&mut self, other: HybridCache<B>) {
        assert_eq!((self.position, self.capacity), (other.position, other.capacity), "rows must be aligned");
        for (mine, theirs) in self.layers.iter_mut().zip(other.layers) {
            match (&mut mine.kv, theirs.kv) {
                (Some(a), Some(b)) => {
                    a.k = Tensor::cat(vec![a.k.clone(), b.k], 0);
                    a.v = Tensor::cat(vec![a.v.clone(), b.v], 0);
                }
                (None, None) => {}
                _ => panic!("appending rows needs two caches of one model"),
            }
            match (&mut mine.mamba, theirs.mamba) {
                (Some(Some(a)), Some(Some(b))) => {
                    a.conv_window = Tensor::cat(vec![a.conv_window.clone(), b.conv_window], 0);
                    a.ssm = Tensor::cat(vec![a.ssm.clone(), b.ssm], 0);
                }
                (None, None) => {}
                _ => panic!("appending rows needs two prefilled caches of one model"),
            }
        }
        self.padding.pads.extend(other.padding.pads);
        let batch = self.padding.pads.len();
        self.set_batch(batch);
    }

    fn set_batch(&mut self, batch: usize) {
        self.batch = batch;
        self.zero_state.window[0] = batch;
        self.zero_state.ssm[0] = batch;
    }
}

/// Row numbers as an index tensor for `select` along the batch dim.
pub(crate) fn row_index<B: Backend>(rows: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let values = rows.iter().map(|&r| r as i64).collect::<Vec<_>>();
    Tensor::from_data(TensorData::new(values, [rows.len()]), device)
}
