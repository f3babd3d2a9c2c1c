//! Live counters of the engine, written by its thread and read by anyone (the server's `/metrics`).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

/// Gauges and counters of one engine. Gauges are set after every step.
#[derive(Debug, Default)]
pub struct EngineStats {
    /// Sequences in the decode batch.
    pub running: AtomicU64,
    /// Requests queued or being prefilled.
    pub waiting: AtomicU64,
    /// Requests submitted through handles (the engine may not have taken them yet).
    pub submitted: AtomicU64,
    /// Sequences the engine runs together at most: `max_num_seqs`, halved at each time the device
    /// ran out of memory.
    pub max_num_seqs: AtomicU64,
    /// Bytes of KV cache and recurrent state held now (the layout's real size).
    pub cache_bytes: AtomicU64,
    /// Cache bytes the engine may hold (`u64::MAX`: unbounded).
    pub cache_budget: AtomicU64,
    /// Prompt tokens prefilled.
    pub prompt_tokens: AtomicU64,
    /// Tokens generated.
    pub generation_tokens: AtomicU64,
    /// Requests finished (any reason, cancellations included).
    pub finished: AtomicU64,
    /// Requests cancelled because their receiver went away.
    pub cancelled: AtomicU64,
    /// Requests refused at submission.
    pub rejected: AtomicU64,
    /// Prompts looked up in the prefix cache.
    pub prefix_queries: AtomicU64,
    /// Prompt tokens of those prompts.
    pub prefix_query_tokens: AtomicU64,
    /// Prompts resumed from a prefix cache snapshot.
    pub prefix_hits: AtomicU64,
    /// Prompt tokens not prefilled thanks to the prefix cache.
    pub prefix_hit_tokens: AtomicU64,
    /// Prompt tokens the prefix cache held but that were prefilled again (between the snapshot
    /// resumed from and the end of the match).
    pub prefix_recomputed_tokens: AtomicU64,
    /// Recurrent-state snapshots held by the prefix cache.
    pub prefix_snapshots: AtomicU64,
    /// Bytes of those snapshots.
    pub prefix_snapshot_bytes: AtomicU64,
    /// Bytes of attention K/V held by the prefix cache.
    pub prefix_kv_bytes: AtomicU64,
    /// Prefix cache nodes evicted to stay within its budget.
    pub prefix_evictions: AtomicU64,
    /// Bytes of device memory the engine thread's allocations take (zero where the backend does
    /// not tell), sampled every few steps.
    pub device_memory_in_use: AtomicU64,
    /// Bytes the device allocator's pools hold for the engine thread, free slices included.
    pub device_memory_reserved: AtomicU64,
    /// Times the engine handed the allocator's free buffers back to the device (`allocator_slack`).
    pub allocator_cleanups: AtomicU64,
    /// Steps in which the device failed (memory it could not allocate, most likely): the prefix
    /// cache was dropped, the requests in flight were preempted or failed.
    pub device_failures: AtomicU64,
    /// Requests sent back to the queue, to be recomputed from their tokens, because the device ran
    /// out of memory.
    pub preemptions: AtomicU64,
    /// No new requests are accepted.
    pub draining: AtomicBool,
}

impl EngineStats {
    pub(crate) fn set(gauge: &AtomicU64, value: usize) {
        gauge.store(value as u64, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, value: usize) {
        counter.fetch_add(value as u64, Ordering::Relaxed);
    }

    /// Takes back what [`Self::add`] added, never below zero (the engine may have set a gauge
    /// in between).
    pub(crate) fn sub(counter: &AtomicU64, value: usize) {
        let _ = counter.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| Some(v.saturating_sub(value as u64)));
    }

    /// Requests running or waiting.
    pub fn in_flight(&self) -> u64 {
        self.running.load(Ordering::Relaxed) + self.waiting.load(Ordering::Relaxed)
    }

    /// Share of the cache in use, 0 to 1: the larger of the share of sequence slots taken and the
    /// share of the cache byte budget held (slots alone when unbounded).
    pub fn cache_usage(&self) -> f64 {
        let seqs = self.max_num_seqs.load(Ordering::Relaxed).max(1) as f64;
        let slots = self.running.load(Ordering::Relaxed) as f64 / seqs;
        let budget = self.cache_budget.load(Ordering::Relaxed);
        let bytes = if budget == u64::MAX || budget == 0 {
            0.0
        } else {
            self.cache_bytes.load(Ordering::Relaxed) as f64 / budget as f64
        };
        slots.max(bytes).min(1.0)
    }
}
