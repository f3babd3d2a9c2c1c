//! The engine's byte model: what a set of sequences costs in the cache layout it really uses, so
//! that a request is admitted only when everything it can grow to fits.
//!
//! The decode batch is one left-padded cache (see `cache/rows.rs`): every row has
//! `capacity = longest cached row + most steps any row has left` KV slots, plus its recurrent
//! state. A request being prefilled holds its own cache of its prompt's length.

use crate::config::BambaConfig;
use crate::sizes::MemoryModel;
use burn::tensor::DType;

/// Sizes of one sequence's cache parts in the engine's dtypes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCosts {
    /// KV bytes of one slot (all attention layers).
    pub kv_per_slot: u64,
    /// Conv windows and SSM states of all Mamba layers.
    pub state: u64,
}

/// What one sequence occupies when planning: cached tokens now and decode steps it may still take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SequenceSpan {
    /// Positions it holds now.
    pub cached: usize,
    /// Decode steps it may still take.
    pub steps_left: usize,
}

impl CacheCosts {
    /// The costs of `config` with K/V in `dtype` and SSM states in `state_dtype`.
    pub fn new(config: &BambaConfig, dtype: DType, state_dtype: DType) -> Self {
        let m = MemoryModel::new(config, elem(dtype), elem(state_dtype), elem(dtype));
        CacheCosts { kv_per_slot: m.kv_bytes_per_token, state: m.state_bytes_per_sequence }
    }

    /// Bytes of a decode batch of `rows` at its worst: every row `capacity` slots long. Saturates.
    pub fn batch_bytes(&self, rows: &[SequenceSpan]) -> u64 {
        let longest = rows.iter().map(|r| r.cached).max().unwrap_or(0) as u64;
        let steps = rows.iter().map(|r| r.steps_left).max().unwrap_or(0) as u64;
        let per_row = longest.saturating_add(steps).saturating_mul(self.kv_per_slot).saturating_add(self.state);
        per_row.saturating_mul(rows.len() as u64)
    }

    /// Bytes of one sequence's cache of `len` KV slots and its state (a prefill cache holds its prompt's).
    pub fn sequence_bytes(&self, len: usize) -> u64 {
        (len as u64).saturating_mul(self.kv_per_slot).saturating_add(self.state)
    }
}

/// Bytes per element of a float dtype.
pub fn elem(dtype: DType) -> u64 {
    dtype.size() as u64
}
