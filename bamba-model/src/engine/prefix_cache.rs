//! The engine's prefix cache: a [`PrefixTree`] of K/V spans and recurrent-state snapshots, shared by
//! every request of an engine, so that a prompt that repeats an earlier sequence's beginning is
//! prefilled from where that sequence's state was saved instead of from the start.
//!
//! Snapshots are taken where the engine has a row's state anyway: after every prefill chunk (a
//! prompt prefilled alone ends its chunks on the snapshot grid; a group of fresh prompts prefilled
//! together ends them on multiples of the interval in columns, so a padded row's snapshots fall
//! between its grid points, as far apart), at the end of each prompt, and at the end of each
//! request (prompt and generated tokens: where the next turn of a chat starts). A hit resumes from
//! the deepest snapshot at or before the matched prefix; the tokens after it are prefilled as usual,
//! at most one interval of them already cached.
//!
//! The pieces are persistent allocations ([`BambaOps::with_persistent_allocations`]): buffers of
//! their own size, not slices of the pages that activations share, which a piece held for minutes
//! would pin; an evicted piece's buffer is taken again by the next piece of its size. The resumed cache is the one
//! a cold prefill of those tokens would have left (within the scan's rounding), so the request's
//! tokens are the same. With the cache on, the engine also forks identical prompts that wait together
//! from one prefill (`Engine::fork_identical`).

use std::sync::atomic::Ordering;

use bamba_kernels::BambaOps;
use burn::tensor::backend::Backend;
use burn::tensor::DType;

use super::prefix_tree::{PrefixTree, Segment, TreeBudget};
use super::stats::EngineStats;
use crate::cache::{CacheError, HybridCache, KvSpan, RowState};
use crate::model::BambaModel;

/// Settings of an engine's prefix cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrefixCacheConfig {
    /// Bytes of cached K/V and snapshots at most, together; the least recently used snapshots
    /// (with K/V only they need) are evicted past it.
    pub budget: u64,
    /// Bytes of cached K/V at most, if less than `budget`: past it, the least recently used
    /// sequences' snapshots and the K/V only they need go.
    pub kv_budget: Option<u64>,
    /// Bytes of snapshots at most, if less than `budget`: past it, the least recently used
    /// snapshots go.
    pub snapshot_budget: Option<u64>,
    /// Prefill chunks end on multiples of this many tokens, and a snapshot is taken at each
    /// (default: the model's SSD chunk size). A hit recomputes fewer tokens than this.
    pub snapshot_interval: usize,
}

impl PrefixCacheConfig {
    /// `budget` bytes shared by K/V and snapshots as they come, snapshots every
    /// `snapshot_interval` tokens.
    pub fn new(budget: u64, snapshot_interval: usize) -> Self {
        PrefixCacheConfig { budget, kv_budget: None, snapshot_budget: None, snapshot_interval }
    }
}

impl<B: Backend> Segment for KvSpan<B> {
    fn split(&self, at: usize) -> (Self, Self) {
        KvSpan::split(self, at)
    }

    fn bytes(&self) -> u64 {
        KvSpan::bytes(self)
    }
}

/// A prompt's cache rebuilt from the prefix cache.
pub(crate) struct Resumed<B: Backend> {
    /// Holds the prompt's first `tokens` tokens; capacity for the whole prompt.
    pub cache: HybridCache<B>,
    pub tokens: usize,
}

pub(crate) struct PrefixCache<B: Backend> {
    tree: PrefixTree<KvSpan<B>, RowState<B>>,
    pub interval: usize,
}

impl<B: BambaOps> PrefixCache<B> {
    pub fn new(config: PrefixCacheConfig) -> Self {
        let budget = TreeBudget {
            total: config.budget,
            segments: config.kv_budget.unwrap_or(config.budget),
            snapshots: config.snapshot_budget.unwrap_or(config.budget),
        };
        PrefixCache { tree: PrefixTree::new(budget), interval: config.snapshot_interval.max(1) }
    }

    /// The cache of the longest snapshotted prefix of `prompt` that leaves at least one token to
    /// prefill (its logits choose the first new token), in a cache of the prompt's length.
    pub fn resume(
        &mut self,
        prompt: &[u32],
        model: &BambaModel<B>,
        state_dtype: DType,
        stats: &EngineStats,
    ) -> Result<Option<Resumed<B>>, CacheError> {
        EngineStats::add(&stats.prefix_queries, 1);
        EngineStats::add(&stats.prefix_query_tokens, prompt.len());
        let Some(hit) = self.tree.lookup(&prompt[..prompt.len() - 1]) else { return Ok(None) };
        let mut cache = model.new_cache(1, prompt.len(), state_dtype)?;
        cache.load_row_pieces(&hit.segments, &hit.snapshot)?;
        EngineStats::add(&stats.prefix_hits, 1);
        EngineStats::add(&stats.prefix_hit_tokens, hit.resume_at);
        EngineStats::add(&stats.prefix_recomputed_tokens, hit.matched - hit.resume_at);
        Ok(Some(Resumed { cache, tokens: hit.resume_at }))
    }

    /// Bytes of K/V and snapshots held.
    pub fn bytes(&self) -> u64 {
        self.tree.bytes()
    }

    /// Drops every cached prefix.
    pub fn clear(&mut self, stats: &EngineStats) {
        self.tree.clear();
        self.publish(stats);
    }

    /// Saves row `row` of `cache`, which holds exactly `tokens`, and its state after them.
    pub fn record(&mut self, tokens: &[u32], cache: &HybridCache<B>, row: usize, stats: &EngineStats) {
        debug_assert_eq!(cache.row_lens()[row], tokens.len(), "a row is saved with the tokens it holds");
        B::with_persistent_allocations(cache.device(), || {
            self.tree.insert(
                tokens,
                |from| cache.row_kv(row, from, tokens.len()),
                || {
                    let state = cache.row_state(row);
                    let bytes = state.bytes();
                    (state, bytes)
                },
            )
        });
        self.publish(stats);
    }

    fn publish(&self, stats: &EngineStats) {
        let tree = self.tree.stats();
        EngineStats::set(&stats.prefix_snapshots, tree.snapshots);
        stats.prefix_snapshot_bytes.store(tree.snapshot_bytes, Ordering::Relaxed);
        stats.prefix_kv_bytes.store(tree.segment_bytes, Ordering::Relaxed);
        stats.prefix_evictions.store(tree.evicted_nodes, Ordering::Relaxed);
    }

    /// Where a prefill chunk from `done` that may run to `end` (of a `len`-token prompt) should stop:
    /// at the last grid point after `done` (before `len`: the prompt's end is snapshotted anyway), so
    /// that the state there is saved.
    pub fn align(&self, done: usize, end: usize, len: usize) -> usize {
        let last = if end < len { end } else { end - 1 };
        let grid = last / self.interval * self.interval;
        if grid > done {
            grid
        } else {
            end
        }
    }

    /// Whether a prefill that reached `end` of a `len`-token prompt stands on the grid, short of the end.
    pub fn on_grid(&self, end: usize, len: usize) -> bool {
        end < len && end % self.interval == 0
    }
}
