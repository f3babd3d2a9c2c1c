//! The serving engine: continuous batching of concurrent requests over one model, with no HTTP in
//! it (the `bamba serve` command puts it behind an OpenAI-compatible API; a Rust program can embed it).
//!
//! An [`Engine`] owns the model and runs on its own thread, one step at a time: requests join the
//! decode batch at the next step and leave it the step they finish. Prompts are prefilled in chunks
//! under a per-step token budget beside the running decodes, so a long prompt does not freeze the
//! other streams. A request is admitted only when the cache it can grow to fits the memory budget;
//! until then it waits in a bounded queue. Each request samples with its own RNG, and its tokens
//! are those it would get alone (the batch is a left-padded batch, see `cache/rows.rs`).
//!
//! [`EngineHandle`] is the thread-safe side: it validates and submits requests and reads
//! [`EngineStats`]. Dropping a request's [`RequestStream`] cancels it within one step.

mod memory;
mod prefix_cache;
pub mod prefix_tree;
mod request;
mod scheduler;
mod stats;

use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Instant;

use thiserror::Error;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

pub use memory::{CacheCosts, SequenceSpan};
pub use prefix_cache::PrefixCacheConfig;
pub use request::{Event, RequestParams, TokenEvent};
pub use scheduler::Engine;
pub use stats::EngineStats;

use crate::config::BambaConfig;
use crate::sampling::SamplingError;

/// Limits of an engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    /// Sequences decoded together at most (prefilling ones included).
    pub max_num_seqs: usize,
    /// Tokens one step processes at most: one per running sequence plus prefill chunks.
    pub max_num_batched_tokens: usize,
    /// Prompt plus new tokens of one request at most.
    pub max_model_len: usize,
    /// Requests waiting for admission at most; more are refused.
    pub max_queue: usize,
    /// Bytes of KV cache and recurrent state the engine may hold (`None`: unbounded).
    pub cache_budget: Option<u64>,
    /// Reuse the cache of earlier sequences' prefixes (`None`: off). Its memory is apart from `cache_budget`.
    pub prefix_cache: Option<PrefixCacheConfig>,
    /// Free bytes (reserved beyond live buffers) the device allocator may gain for the engine, past
    /// the fewest it held since the last time, before the engine hands its free buffers back to the
    /// device; checked every few steps (`None`: never).
    /// Buffers of shapes that are gone (a decode batch of another size, a finished prompt's chunk)
    /// otherwise stay reserved, and under serving's ever-changing shapes crowd out the caches.
    pub allocator_slack: Option<u64>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            max_num_seqs: 64,
            max_num_batched_tokens: 2048,
            max_model_len: 4096,
            max_queue: 1024,
            cache_budget: None,
            prefix_cache: None,
            allocator_slack: None,
        }
    }
}

impl EngineConfig {
    /// Whether an engine can run `model` with these settings, its caches costing `costs`
    /// ([`Engine::new`] checks it; a caller may check before it loads the weights).
    pub fn validate(&self, model: &BambaConfig, costs: &CacheCosts) -> Result<(), EngineConfigError> {
        if self.max_num_seqs == 0 {
            return Err(EngineConfigError::NoSequences);
        }
        if self.max_num_batched_tokens <= self.max_num_seqs {
            return Err(EngineConfigError::TokenBudget {
                tokens: self.max_num_batched_tokens,
                seqs: self.max_num_seqs,
            });
        }
        if self.max_model_len < 2 {
            return Err(EngineConfigError::ModelLen);
        }
        let limit = model.context_length();
        if self.max_model_len > limit {
            return Err(EngineConfigError::ModelLenOverLimit { len: self.max_model_len, limit });
        }
        if let Some(budget) = self.cache_budget {
            let one = [SequenceSpan { cached: self.max_model_len - 1, steps_left: 1 }];
            let needed = costs.batch_bytes(&one).saturating_add(costs.sequence_bytes(self.max_model_len - 1));
            if needed > budget {
                return Err(EngineConfigError::Budget { budget, needed });
            }
        }
        let Some(prefix) = &self.prefix_cache else { return Ok(()) };
        if prefix.snapshot_interval == 0 {
            return Err(EngineConfigError::SnapshotInterval);
        }
        if let Some(rope) = model.rope.as_ref().filter(|r| r.depends_on_length()) {
            return Err(EngineConfigError::PrefixCacheRope { rope_type: rope.scaling.rope_type() });
        }
        if let Some(cap) = prefix.snapshot_budget.filter(|&cap| cap < costs.state) {
            return Err(EngineConfigError::SnapshotCap { cap, snapshot: costs.state });
        }
        Ok(())
    }
}

/// Why an engine cannot be built with a config.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EngineConfigError {
    #[error("max_num_seqs must be at least 1")]
    NoSequences,
    #[error(
        "max_num_batched_tokens ({tokens}) must exceed max_num_seqs ({seqs}): every step decodes one token per \
         sequence and needs room for prefill"
    )]
    TokenBudget { tokens: usize, seqs: usize },
    #[error("max_model_len must be at least 2 (a prompt token and a new one)")]
    ModelLen,
    #[error("max_model_len {len} is more than the model's context length ({limit})")]
    ModelLenOverLimit { len: usize, limit: usize },
    #[error("the cache budget of {budget} bytes does not hold one sequence of max_model_len ({needed} bytes)")]
    Budget { budget: u64, needed: u64 },
    #[error(
        "the prefix cache cannot be exact with rope_type {rope_type:?}: its frequencies depend on the whole \
         sequence's length, so a cached prefix's keys differ from those of a longer prompt; turn the prefix cache off"
    )]
    PrefixCacheRope { rope_type: &'static str },
    #[error(
        "the prefix cache's snapshot cap of {cap} bytes holds no snapshot of the recurrent state ({snapshot} bytes)"
    )]
    SnapshotCap { cap: u64, snapshot: u64 },
    #[error("the prefix cache's snapshot interval must be at least 1 token")]
    SnapshotInterval,
}

/// Why a request was refused before it was queued.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq)]
pub enum SubmitError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { token: u32, position: usize, vocab: usize },
    #[error("max_tokens must be at least 1 (0 only where the prompt's log-probabilities are asked for)")]
    NoNewTokens,
    #[error(
        "This model's maximum context length is {limit} tokens. However, you requested {max_tokens} output tokens \
         and your prompt contains at least {prompt} input tokens, for a total of at least {total} tokens. Please \
         reduce the length of the input prompt or the number of requested output tokens."
    )]
    ContextLength { limit: usize, max_tokens: usize, prompt: usize, total: usize },
    #[error("the request needs {needed} bytes of cache, more than the engine's whole budget ({budget} bytes)")]
    TooLarge { needed: u64, budget: u64 },
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("the queue is full ({0} requests waiting); retry later")]
    QueueFull(usize),
    #[error("the engine is shutting down and accepts no new requests")]
    Draining,
}

/// A request for [`EngineHandle::submit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Prompt token ids.
    pub prompt: Vec<u32>,
    /// Length, sampling and stopping.
    pub params: RequestParams,
}

/// The events of one submitted request; dropping it cancels the request.
#[derive(Debug)]
pub struct RequestStream {
    /// The id events of this request carry.
    pub id: u64,
    events: UnboundedReceiver<Event>,
}

impl RequestStream {
    /// The next event (async); `None` once the engine has sent everything.
    pub async fn next(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Polls for the next event (for merging several streams by hand).
    pub fn poll_next(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<Event>> {
        self.events.poll_recv(cx)
    }

    /// Cancels the request: the engine frees it within one step; events already sent stay readable.
    pub fn cancel(&mut self) {
        self.events.close();
    }

    /// The next event, blocking the thread (not inside an async runtime).
    pub fn next_blocking(&mut self) -> Option<Event> {
        self.events.blocking_recv()
    }
}

/// Requests sent together: the engine takes them in the same step.
pub(crate) struct Submission {
    requests: Vec<(Request, UnboundedSender<Event>)>,
    /// When the handle sent them, from which their queue time counts.
    sent_at: Instant,
}

/// The shape facts [`EngineHandle::submit`] validates against.
#[derive(Debug, Clone, Copy)]
struct Limits {
    vocab: usize,
    costs: CacheCosts,
}

/// Submits requests to an [`Engine`] from any thread; cheap to clone.
#[derive(Clone)]
pub struct EngineHandle {
    submissions: mpsc::Sender<Submission>,
    stats: Arc<EngineStats>,
    config: Arc<EngineConfig>,
    limits: Limits,
    next_id: Arc<std::sync::atomic::AtomicU64>,
}

impl EngineHandle {
    /// Validates `request` and queues it. Errors are the caller's to report (bad request, overload).
    pub fn submit(&self, request: Request) -> Result<RequestStream, SubmitError> {
        Ok(self.submit_all(vec![request])?.pop().expect("one stream per request"))
    }

    /// Validates every request and queues them all or none; the engine takes them in the same step,
    /// so that identical prompts among them (the choices of `n > 1`) fork from one prefill when the
    /// prefix cache is on. Streams are in request order.
    pub fn submit_all(&self, requests: Vec<Request>) -> Result<Vec<RequestStream>, SubmitError> {
        let checked = requests.iter().try_for_each(|r| self.check(r, requests.len()));
        if checked.is_err() {
            EngineStats::add(&self.stats.rejected, requests.len());
        }
        checked?;
        let count = requests.len();
        let mut streams = Vec::with_capacity(count);
        let mut sent = Vec::with_capacity(count);
        for request in requests {
            let (events, receiver) = unbounded_channel();
            streams.push(RequestStream { id: self.next_id.fetch_add(1, Ordering::Relaxed), events: receiver });
            sent.push((request, events));
        }
        // Counted as waiting at once, so that a burst of submissions sees its own queue, and before
        // they are sent: counted after, a request the engine ran to its end in the meantime stayed
        // counted as waiting (the engine had published its gauges and gone idle).
        EngineStats::add(&self.stats.submitted, count);
        EngineStats::add(&self.stats.waiting, count);
        if self.submissions.send(Submission { requests: sent, sent_at: Instant::now() }).is_err() {
            EngineStats::sub(&self.stats.submitted, count);
            EngineStats::sub(&self.stats.waiting, count);
            return Err(SubmitError::Draining);
        }
        Ok(streams)
    }

    /// Checks one of `count` requests sent together.
    fn check(&self, request: &Request, count: usize) -> Result<(), SubmitError> {
        if self.stats.draining.load(Ordering::Relaxed) {
            return Err(SubmitError::Draining);
        }
        let (prompt, params) = (&request.prompt, &request.params);
        if prompt.is_empty() {
            return Err(SubmitError::EmptyPrompt);
        }
        let vocab = self.limits.vocab;
        if let Some((position, &token)) = prompt.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(SubmitError::TokenOutOfRange { token, position, vocab });
        }
        if params.max_tokens == 0 && params.prompt_logprobs.is_none() {
            return Err(SubmitError::NoNewTokens);
        }
        let total = prompt.len().saturating_add(params.max_tokens);
        let limit = self.config.max_model_len;
        if total > limit {
            return Err(SubmitError::ContextLength {
                limit,
                max_tokens: params.max_tokens,
                prompt: prompt.len(),
                total,
            });
        }
        params.sampling.validate()?;
        if let Some(budget) = self.config.cache_budget {
            let alone = [SequenceSpan { cached: prompt.len(), steps_left: params.max_tokens }];
            let needed =
                self.limits.costs.batch_bytes(&alone).saturating_add(self.limits.costs.sequence_bytes(prompt.len()));
            if needed > budget {
                return Err(SubmitError::TooLarge { needed, budget });
            }
        }
        let waiting = self.stats.waiting.load(Ordering::Relaxed) as usize;
        if waiting + count > self.config.max_queue {
            return Err(SubmitError::QueueFull(waiting));
        }
        Ok(())
    }

    /// Counters and gauges the engine updates (for metrics).
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// The configuration the engine runs with.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Refuses new requests from now on; running and queued ones finish.
    pub fn drain(&self) {
        self.stats.draining.store(true, Ordering::Relaxed);
    }
}
