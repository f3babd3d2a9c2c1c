//! The engine loop: admit, prefill in chunks, join, decode one step for every running sequence,
//! send tokens, drop finished and cancelled sequences. One step at a time on the engine's thread.
//!
//! A sequence is prefilled from its history (its prompt, then the tokens it generated): a request
//! preempted when the device ran out of memory goes back to the queue and is recomputed from its
//! tokens, then goes on generating where it stopped.

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use bamba_kernels::BambaOps;
use burn::tensor::DType;
use tokio::sync::mpsc::UnboundedSender;

use super::memory::{CacheCosts, SequenceSpan};
use super::prefix_cache::PrefixCache;
use super::request::{token_event, Event, TokenEvent};
use super::stats::EngineStats;
use super::{EngineConfig, EngineConfigError, EngineHandle, Limits, Request, Submission};
use crate::cache::{row_index, HybridCache};
use crate::generate::{device_argmax, FinishReason, GenerateError};
use crate::model::BambaModel;
use crate::padding::LeftPadding;
use crate::readback::{read_f32, DeviceError};
use crate::sampling::Sampler;
use burn::tensor::Tensor;

/// Prompt positions per prefill chunk of a request that asks for its prompt's log-probabilities:
/// their logits come to the host (`chunk × vocab` f32, 128 MB at a 128K vocabulary).
const PROMPT_LOGPROBS_CHUNK: usize = 256;

/// Steps between samples of the device allocator's usage (the `device_memory_*` gauges).
const DEVICE_MEMORY_EVERY: u64 = 16;

/// The fewest tokens per step the engine goes down to after the device ran out of memory: below
/// this, prefill chunks are mostly per-launch overhead.
const MIN_STEP_TOKENS: usize = 64;

/// Good steps at caps lowered after running out of memory before they are doubled back, after the
/// first lowering; twice as many after each further one (at 20 ms a step, 1,024 steps are 20 s).
const RESTORE_AFTER_STEPS: u64 = 1024;

/// Adds to each request's scores (where it asks for them) the log-probabilities of its prompt tokens
/// that `logits` predicts, and returns the last column (what the next token is chosen from). Column `c`
/// of row `r` holds the logits after prompt position `first_positions[r] + c` of `rows[r]`'s request
/// (negative: a pad).
///
/// # Shapes
/// - `logits`: `[rows, len, vocab]` → `[rows, 1, vocab]`
fn score_prompts<B: BambaOps>(
    rows: &mut [(&Request, &mut Vec<TokenEvent>)],
    first_positions: &[i64],
    logits: Tensor<B, 3>,
) -> Result<Tensor<B, 3>, DeviceError> {
    let [_, len, vocab] = logits.dims();
    let flat = read_f32(logits.clone())?;
    let columns = flat.chunks_exact(len * vocab);
    for (((request, scores), &first), row) in rows.iter_mut().zip(first_positions).zip(columns) {
        let Some(top) = request.params.prompt_logprobs else { continue };
        for (c, column) in row.chunks_exact(vocab).enumerate() {
            // the logits after position p predict the prompt's token p + 1
            let Ok(position) = usize::try_from(first + c as i64) else { continue };
            if let Some(&next) = request.prompt.get(position + 1) {
                scores.push(token_event(next, column, Some(top)));
            }
        }
    }
    Ok(logits.narrow(1, len - 1, 1))
}

/// A step's outcome for one sequence.
enum Choice<'a> {
    /// Its greedy token, chosen on the device.
    Id(u32),
    /// Its logits, to sample from on the host.
    Logits(&'a [f32]),
}

/// Sequences prefilled together, with the cache that holds them (row `r` is `seqs[r]`).
struct Prefilled<B: BambaOps> {
    cache: HybridCache<B>,
    seqs: Vec<Sequence<B>>,
}

/// One request inside the engine.
struct Sequence<B: BambaOps> {
    request: Request,
    sampler: Sampler,
    /// Prompt, then every token generated: what a prefill computes (more than the prompt for a
    /// request recomputed after a preemption).
    history: Vec<u32>,
    events: UnboundedSender<Event>,
    /// The prompt's own cache while it is prefilled (`None` once it joined the batch).
    prefill: Option<HybridCache<B>>,
    /// Tokens of its history resumed from the prefix cache.
    cached_tokens: usize,
    /// Log-probabilities of the prompt tokens prefilled so far (after the first), when asked for.
    prompt_events: Vec<TokenEvent>,
    /// When it was submitted.
    submitted: Instant,
    /// How long it waited to be admitted first (`None` until it is).
    queue_time: Option<Duration>,
}

impl<B: BambaOps> Sequence<B> {
    fn generated(&self) -> usize {
        self.history.len() - self.request.prompt.len()
    }

    /// Decode steps it may still take: each step feeds its last token and yields one new token.
    fn steps_left(&self) -> usize {
        self.request.params.max_tokens - self.generated()
    }

    fn cancelled(&self) -> bool {
        self.events.is_closed()
    }

    /// Whether its next token can be chosen on the device (greedy, no penalty, no log-probabilities).
    fn device_greedy(&self) -> bool {
        self.sampler.is_plain_greedy() && self.request.params.logprobs.is_none()
    }

    /// Takes the token chosen on the device, or samples one from this row's logits; sends it.
    /// `Some(reason)` when the sequence ends.
    fn take_token(&mut self, choice: Choice<'_>) -> Option<FinishReason> {
        let params = &self.request.params;
        let (id, event) = match choice {
            Choice::Id(id) => (id, TokenEvent { id, logprob: None, top_logprobs: Vec::new() }),
            Choice::Logits(logits) => {
                let id = self.sampler.sample(logits, &self.history, self.generated());
                (id, token_event(id, logits, params.logprobs))
            }
        };
        self.history.push(id);
        let reason = if !params.ignore_eos && params.eos_ids.contains(&id) {
            Some(FinishReason::Eos)
        } else if params.stop_token_ids.contains(&id) {
            Some(FinishReason::Stop)
        } else if self.generated() >= params.max_tokens {
            Some(FinishReason::Length)
        } else {
            None
        };
        let _ = self.events.send(Event::Token(event));
        reason
    }

    fn finish(&self, reason: FinishReason) {
        let _ = self.events.send(Event::Finished {
            reason,
            prompt_tokens: self.request.prompt.len(),
            completion_tokens: self.generated(),
            // a recompute may resume past the prompt, into its own generated tokens
            cached_tokens: self.cached_tokens.min(self.request.prompt.len()),
            queue_time: self.queue_time.unwrap_or_default(),
        });
    }

    /// Makes it wait to be prefilled again from its history, nothing of its cache kept.
    fn reset(&mut self) {
        self.prefill = None;
        // what it scored of its prompt is scored again (sent prompt scores are not asked for again)
        self.prompt_events.clear();
    }
}

/// Runs requests on one model; see the module docs. Built with its [`EngineHandle`] by
/// [`Engine::new`], then [`Engine::run`] on a thread of its own.
pub struct Engine<B: BambaOps> {
    model: BambaModel<B>,
    config: Arc<EngineConfig>,
    state_dtype: DType,
    costs: CacheCosts,
    submissions: mpsc::Receiver<Submission>,
    stats: Arc<EngineStats>,
    /// Submitted, not admitted, in arrival order.
    queued: VecDeque<Sequence<B>>,
    /// Admitted, prompt being prefilled, in admission order.
    prefilling: VecDeque<Sequence<B>>,
    /// The decode batch: `running[r]` is row `r` of `batch`.
    running: Vec<Sequence<B>>,
    batch: Option<HybridCache<B>>,
    prefix: Option<PrefixCache<B>>,
    /// Submissions taken from the channel.
    accepted: u64,
    /// Steps run.
    steps: u64,
    /// The fewest free bytes the device allocator held at a sample since its last cleanup.
    free_low: u64,
    /// Requests admitted at once at most: `max_num_seqs`, halved at each time the device ran out
    /// of memory.
    seq_cap: usize,
    /// Tokens per step at most: `max_num_batched_tokens`, lowered with `seq_cap`.
    token_cap: usize,
    /// Steps run since the caps were last lowered or raised.
    steps_at_cap: u64,
    /// Times the caps were lowered.
    lowerings: u32,
}

impl<B: BambaOps> Engine<B> {
    /// An engine for `model`, SSM states kept in `state_dtype`, and the handle that feeds it.
    pub fn new(
        model: BambaModel<B>,
        config: EngineConfig,
        state_dtype: DType,
    ) -> Result<(Self, EngineHandle), EngineConfigError> {
        let costs = CacheCosts::new(&model.config, model.dtype, state_dtype);
        config.validate(&model.config, &costs)?;
        let stats = Arc::new(EngineStats::default());
        stats.cache_budget.store(config.cache_budget.unwrap_or(u64::MAX), std::sync::atomic::Ordering::Relaxed);
        EngineStats::set(&stats.max_num_seqs, config.max_num_seqs);
        let config = Arc::new(config);
        let (sender, submissions) = mpsc::channel();
        let handle = EngineHandle {
            submissions: sender,
            stats: stats.clone(),
            config: config.clone(),
            limits: Limits { vocab: model.config.vocab_size, costs },
            next_id: Arc::new(AtomicU64::new(0)),
        };
        let prefix = config.prefix_cache.map(PrefixCache::new);
        let (seq_cap, token_cap) = (config.max_num_seqs, config.max_num_batched_tokens);
        let engine = Engine {
            seq_cap,
            token_cap,
            steps_at_cap: 0,
            lowerings: 0,
            prefix,
            model,
            config,
            state_dtype,
            costs,
            submissions,
            stats,
            queued: VecDeque::new(),
            prefilling: VecDeque::new(),
            running: Vec::new(),
            batch: None,
            accepted: 0,
            steps: 0,
            free_low: u64::MAX,
        };
        Ok((engine, handle))
    }

    /// Serves until every handle is dropped and no request is left. A backend error fails the
    /// requests in flight and is returned.
    pub fn run(mut self) -> Result<(), GenerateError> {
        loop {
            if self.idle() {
                match self.submissions.recv() {
                    Ok(s) => self.accept(s),
                    Err(_) => return Ok(()),
                }
            }
            while let Ok(s) = self.submissions.try_recv() {
                self.accept(s);
            }
            match self.step() {
                Ok(()) => {}
                Err(GenerateError::Device(e)) => self.recover(&e),
                Err(e) => {
                    let all: Vec<_> =
                        self.queued.drain(..).chain(self.prefilling.drain(..)).chain(self.running.drain(..)).collect();
                    tracing::error!(error = %e, requests = all.len(), "the engine stops");
                    self.fail(all, &e.to_string());
                    return Err(e);
                }
            }
        }
    }

    /// After the device failed: the step's results and whatever it wrote may be garbage, so the
    /// decode batch and the prefix cache are dropped and the allocator gives its free pages back.
    /// Out of memory, the admitted requests (a failed step puts back whatever it had taken out of
    /// the queues) are preempted: back to the front of the queue, in arrival order, to be recomputed
    /// from their tokens, while the engine admits half as many requests and tokens per step (until
    /// [`Self::restore_caps`] raises them again). Where it cannot go lower (one request, the fewest tokens per step), or for any other
    /// failure, they fail with the error. Queued requests, untouched, go on.
    fn recover(&mut self, error: &DeviceError) {
        let mut admitted: Vec<_> = self.prefilling.drain(..).chain(self.running.drain(..)).collect();
        EngineStats::add(&self.stats.device_failures, 1);
        self.batch = None;
        if let Some(prefix) = &mut self.prefix {
            prefix.clear(&self.stats);
        }
        self.clean_allocator();
        let seq_cap = (admitted.len().min(self.seq_cap) / 2).max(1);
        // never above what it was (a configured budget may be below MIN_STEP_TOKENS)
        let token_cap = (self.token_cap / 2).max(MIN_STEP_TOKENS).max(seq_cap + 1).min(self.token_cap);
        let lower = seq_cap < self.seq_cap || token_cap < self.token_cap;
        if matches!(error, DeviceError::OutOfMemory) && lower && !admitted.is_empty() {
            tracing::warn!(
                %error,
                preempted = admitted.len(),
                max_num_seqs = seq_cap,
                max_num_batched_tokens = token_cap,
                "device out of memory: the admitted requests go back to the queue to be recomputed, and the \
                 engine takes fewer at once from now on (a lower memory budget avoids this)"
            );
            EngineStats::add(&self.stats.preemptions, admitted.len());
            EngineStats::set(&self.stats.max_num_seqs, seq_cap);
            (self.seq_cap, self.token_cap) = (seq_cap, token_cap);
            self.steps_at_cap = 0;
            self.lowerings += 1;
            admitted.sort_by_key(|s| s.submitted);
            for mut seq in admitted.into_iter().rev() {
                seq.reset();
                self.queued.push_front(seq);
            }
        } else {
            tracing::error!(%error, requests = admitted.len(), "device failure: the admitted requests fail");
            self.fail(admitted, &error.to_string());
        }
        self.publish();
    }

    /// Ends `seqs` with `error` and counts them finished.
    fn fail(&self, seqs: Vec<Sequence<B>>, error: &str) {
        EngineStats::add(&self.stats.finished, seqs.len());
        for seq in seqs {
            let _ = seq.events.send(Event::Failed(error.to_owned()));
        }
    }

    /// Puts sequences a failing step had taken out of the queues back at the front of the prefill
    /// queue, in order, where [`Self::recover`] finds them.
    fn put_back(&mut self, seqs: Vec<Sequence<B>>) {
        for seq in seqs.into_iter().rev() {
            self.prefilling.push_front(seq);
        }
    }

    fn idle(&self) -> bool {
        self.queued.is_empty() && self.prefilling.is_empty() && self.running.is_empty()
    }

    fn accept(&mut self, submission: Submission) {
        for (request, events) in submission.requests {
            // Validated by the handle; a sampler cannot fail after that.
            let Ok(sampler) = Sampler::new(request.params.sampling.clone()) else {
                let _ = events.send(Event::Failed("invalid sampling settings".into()));
                continue;
            };
            self.accepted += 1;
            let history = request.prompt.clone();
            self.queued.push_back(Sequence {
                request,
                sampler,
                history,
                events,
                prefill: None,
                cached_tokens: 0,
                prompt_events: Vec::new(),
                submitted: submission.sent_at,
                queue_time: None,
            });
        }
    }

    /// One engine step.
    fn step(&mut self) -> Result<(), GenerateError> {
        self.drop_cancelled();
        self.admit()?;
        let joining = self.prefill_chunks()?;
        self.join(joining);
        self.decode()?;
        self.publish();
        self.tend_allocator();
        self.steps += 1;
        self.restore_caps();
        Ok(())
    }

    /// After enough good steps at caps lowered by [`Self::recover`], doubles them back toward the
    /// configured ones: what ran out of memory may have been one long prompt or a fragmented
    /// allocator, not the load itself. A load that runs out again is retried ever more rarely:
    /// [`RESTORE_AFTER_STEPS`] after the first lowering, twice as many after each further one.
    fn restore_caps(&mut self) {
        let (seqs, tokens) = (self.config.max_num_seqs, self.config.max_num_batched_tokens);
        if self.seq_cap >= seqs && self.token_cap >= tokens {
            return;
        }
        self.steps_at_cap += 1;
        let wait = RESTORE_AFTER_STEPS << self.lowerings.saturating_sub(1).min(20);
        if self.steps_at_cap < wait {
            return;
        }
        self.steps_at_cap = 0;
        // tokens > seqs holds for the configured pair and for every pair `recover` sets; doubling
        // both, each capped at its configured value, keeps it
        self.seq_cap = self.seq_cap.saturating_mul(2).min(seqs);
        self.token_cap = self.token_cap.saturating_mul(2).min(tokens);
        EngineStats::set(&self.stats.max_num_seqs, self.seq_cap);
        tracing::info!(
            max_num_seqs = self.seq_cap,
            max_num_batched_tokens = self.token_cap,
            "no device failure for {wait} steps: the engine takes more requests and tokens per step again"
        );
    }

    /// Forgets requests whose receiver is gone, wherever they are.
    fn drop_cancelled(&mut self) {
        let before = self.queued.len() + self.prefilling.len();
        self.queued.retain(|s| !s.cancelled());
        self.prefilling.retain(|s| !s.cancelled());
        let mut gone = before - self.queued.len() - self.prefilling.len();
        let keep: Vec<usize> = (0..self.running.len()).filter(|&r| !self.running[r].cancelled()).collect();
        gone += self.running.len() - keep.len();
        self.keep_rows(&keep);
        EngineStats::add(&self.stats.cancelled, gone);
        EngineStats::add(&self.stats.finished, gone);
    }

    /// What the sequences admitted so far occupy, as spans of a decode batch, plus prefill caches.
    fn spans(&self) -> (Vec<SequenceSpan>, u64) {
        let lens = self.batch.as_ref().map(HybridCache::row_lens).unwrap_or_default();
        let mut spans: Vec<SequenceSpan> = self
            .running
            .iter()
            .zip(lens)
            .map(|(s, cached)| SequenceSpan { cached, steps_left: s.steps_left() })
            .collect();
        let mut prefill = 0u64;
        for s in &self.prefilling {
            spans.push(SequenceSpan { cached: s.history.len(), steps_left: s.steps_left() });
            prefill = prefill.saturating_add(self.costs.sequence_bytes(s.history.len()));
        }
        (spans, prefill)
    }

    /// Moves queued requests to prefill, first come first served, while they fit; a prompt with a
    /// cached prefix starts from it.
    fn admit(&mut self) -> Result<(), GenerateError> {
        // What is admitted so far, extended as requests are admitted (computed once per step).
        let (mut spans, mut prefill) = self.spans();
        while let Some(next) = self.queued.front() {
            if self.running.len() + self.prefilling.len() >= self.seq_cap {
                return Ok(());
            }
            let len = next.history.len();
            spans.push(SequenceSpan { cached: len, steps_left: next.steps_left() });
            prefill = prefill.saturating_add(self.costs.sequence_bytes(len));
            if self
                .config
                .cache_budget
                .is_some_and(|budget| self.costs.batch_bytes(&spans).saturating_add(prefill) > budget)
            {
                return Ok(());
            }
            let mut seq = self.queued.pop_front().expect("front exists");
            seq.queue_time.get_or_insert_with(|| seq.submitted.elapsed());
            // the prompt's log-probabilities need every prompt position computed
            if let (Some(prefix), None) = (&mut self.prefix, seq.request.params.prompt_logprobs) {
                match prefix.resume(&seq.history, &self.model, self.state_dtype, &self.stats) {
                    Ok(Some(resumed)) => {
                        seq.prefill = Some(resumed.cache);
                        seq.cached_tokens = resumed.tokens;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.prefilling.push_back(seq);
                        return Err(e.into());
                    }
                }
            }
            self.prefilling.push_back(seq);
        }
        Ok(())
    }

    /// Prefills prompts under the step's token budget, oldest first: fresh prompts that fit whole go
    /// together as one left-padded batch ([`Self::prefill_group`]); a prompt longer than that is
    /// prefilled alone, in chunks over several steps. Returns the prefilled groups whose first token
    /// did not end them.
    fn prefill_chunks(&mut self) -> Result<Vec<Prefilled<B>>, GenerateError> {
        let mut ready = Vec::new();
        match self.prefill_into(&mut ready) {
            Ok(()) => Ok(ready),
            Err(e) => {
                self.put_back(ready.into_iter().flat_map(|g| g.seqs).collect());
                Err(e)
            }
        }
    }

    /// [`Self::prefill_chunks`], adding the prefilled groups to `ready` as they come.
    fn prefill_into(&mut self, ready: &mut Vec<Prefilled<B>>) -> Result<(), GenerateError> {
        let mut budget = self.token_cap.saturating_sub(self.running.len());
        while budget > 0 && !self.prefilling.is_empty() {
            let group = self.fresh_group(budget);
            if group >= 2 {
                let mut seqs: Vec<Sequence<B>> = self.prefilling.drain(..group).collect();
                self.defer_repeats(&mut seqs);
                let (prefilled, tokens) = self.prefill_group(seqs)?;
                budget -= tokens;
                ready.extend(prefilled);
                continue;
            }
            let seq = self.prefilling.front_mut().expect("not empty");
            let len = seq.history.len();
            if seq.prefill.is_none() {
                let mut cache = self.model.new_cache(1, len, self.state_dtype)?;
                cache.set_prefill_end(len);
                seq.prefill = Some(cache);
            }
            let cache = seq.prefill.as_mut().expect("made above");
            let done = cache.position;
            let mut chunk = self.model.auto_prefill_chunk(1, len);
            if seq.request.params.prompt_logprobs.is_some() {
                chunk = chunk.min(PROMPT_LOGPROBS_CHUNK);
            }
            let mut end = done + budget.min(len - done).min(chunk);
            if let Some(prefix) = &self.prefix {
                end = prefix.align(done, end, len);
            }
            let prompt = &seq.history;
            let ids = self.model.ids_tensor(&[prompt[done..end].to_vec()])?;
            let scoring = seq.request.params.prompt_logprobs.is_some();
            let mut logits = self.model.forward_cached(ids, cache, !scoring)?;
            if scoring {
                logits = score_prompts(&mut [(&seq.request, &mut seq.prompt_events)], &[done as i64], logits)?;
            }
            budget -= end - done;
            EngineStats::add(&self.stats.prompt_tokens, end - done);
            if let Some(prefix) = &mut self.prefix {
                if end == len || prefix.on_grid(end, len) {
                    prefix.record(&prompt[..end], cache, 0, &self.stats);
                }
            }
            if end < len {
                continue;
            }
            let mut seq = self.prefilling.pop_front().expect("not empty");
            let cache = seq.prefill.take().expect("prefilled");
            ready.extend(self.first_tokens(vec![seq], cache, logits)?);
        }
        Ok(())
    }

    /// Prefills fresh prompts together as one left-padded batch; with the prefix cache on, in chunks
    /// that end on multiples of its interval (in columns: a padded row's snapshots fall between its
    /// own grid points), each row recorded after every chunk. Returns what [`Self::first_tokens`] keeps
    /// and the batch's tokens, pads included.
    fn prefill_group(&mut self, mut seqs: Vec<Sequence<B>>) -> Result<(Option<Prefilled<B>>, usize), GenerateError> {
        match self.prefill_rows(&mut seqs) {
            Ok((cache, logits, tokens)) => Ok((self.first_tokens(seqs, cache, logits)?, tokens)),
            Err(e) => {
                self.put_back(seqs);
                Err(e)
            }
        }
    }

    /// [`Self::prefill_group`]'s forward passes: the group's cache, the last column's logits and
    /// the batch's tokens.
    fn prefill_rows(
        &mut self,
        seqs: &mut [Sequence<B>],
    ) -> Result<(HybridCache<B>, Tensor<B, 3>, usize), GenerateError> {
        let prompts: Vec<Vec<u32>> = seqs.iter().map(|s| s.history.clone()).collect();
        let (rows, padding) = LeftPadding::pad(&prompts, self.model.config.pad_token_id.unwrap_or(0));
        let (group, width) = (rows.len(), rows[0].len());
        let pads = padding.pads.clone();
        let mut cache = self.model.new_cache(group, width, self.state_dtype)?;
        cache.set_padding(padding)?;
        cache.set_prefill_end(width);
        let chunk = match &self.prefix {
            Some(prefix) => prefix.interval.min(self.model.auto_prefill_chunk(group, width)),
            None => width,
        };
        let scoring = seqs.iter().any(|s| s.request.params.prompt_logprobs.is_some());
        let mut logits = None;
        for begin in (0..width).step_by(chunk) {
            let end = (begin + chunk).min(width);
            let part: Vec<Vec<u32>> = rows.iter().map(|r| r[begin..end].to_vec()).collect();
            let mut out = self.model.forward_cached(self.model.ids_tensor(&part)?, &mut cache, !scoring)?;
            if scoring {
                // column c of row r is the prompt's position begin + c - pads[r] (a pad where negative)
                let first_positions: Vec<i64> = pads.iter().map(|&pad| begin as i64 - pad as i64).collect();
                let mut rows: Vec<_> = seqs.iter_mut().map(|s| (&s.request, &mut s.prompt_events)).collect();
                out = score_prompts(&mut rows, &first_positions, out)?;
            }
            if let Some(prefix) = &mut self.prefix {
                for (row, prompt) in prompts.iter().enumerate() {
                    let held = end.saturating_sub(pads[row]);
                    if held > 0 {
                        prefix.record(&prompt[..held], &cache, row, &self.stats);
                    }
                }
            }
            logits = Some(out);
        }
        EngineStats::add(&self.stats.prompt_tokens, prompts.iter().map(Vec::len).sum());
        Ok((cache, logits.expect("a prompt has a token"), group * width))
    }

    /// The first tokens of sequences just prefilled (rows of `cache` and `logits`), and of those that
    /// fork from them; the ones still running, with their rows, to join the decode batch.
    fn first_tokens(
        &mut self,
        mut seqs: Vec<Sequence<B>>,
        mut cache: HybridCache<B>,
        logits: Tensor<B, 3>,
    ) -> Result<Option<Prefilled<B>>, DeviceError> {
        let mut logits = self.fork_identical(&mut seqs, &mut cache, logits);
        for seq in seqs.iter_mut().filter(|s| s.request.params.prompt_logprobs.is_some()) {
            let _ = seq.events.send(Event::Prompt(std::mem::take(&mut seq.prompt_events)));
            // sent: a recompute after a preemption does not score the prompt again
            seq.request.params.prompt_logprobs = None;
        }
        // a request that only scores its prompt ends here
        if seqs.iter().any(|s| s.request.params.max_tokens == 0) {
            let live: Vec<usize> = (0..seqs.len()).filter(|&r| seqs[r].request.params.max_tokens > 0).collect();
            for seq in seqs.iter().filter(|s| s.request.params.max_tokens == 0) {
                seq.finish(FinishReason::Length);
            }
            EngineStats::add(&self.stats.finished, seqs.len() - live.len());
            if live.is_empty() {
                return Ok(None);
            }
            cache.select_rows(&live);
            logits = logits.select(0, row_index::<B>(&live, &self.model.device));
            seqs.retain(|s| s.request.params.max_tokens > 0);
        }
        let keep = match self.take_tokens(&mut seqs, logits) {
            Ok(keep) => keep,
            Err(e) => {
                self.put_back(seqs);
                return Err(e);
            }
        };
        if keep.is_empty() {
            return Ok(None);
        }
        if keep.len() < seqs.len() {
            cache.select_rows(&keep);
        }
        let kept = seqs.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).map(|(_, s)| s).collect();
        Ok(Some(Prefilled { cache, seqs: kept }))
    }

    /// With the prefix cache on, moves repeats of a prompt in a fresh group back to the front of the
    /// prefill queue, in order: they fork from the first one's row ([`Self::fork_identical`]) instead
    /// of being prefilled again.
    fn defer_repeats(&mut self, seqs: &mut Vec<Sequence<B>>) {
        if self.prefix.is_none() {
            return;
        }
        let mut repeats = Vec::new();
        let mut i = 0;
        while i < seqs.len() {
            if seqs[..i].iter().any(|s| s.history == seqs[i].history) {
                repeats.push(seqs.remove(i));
            } else {
                i += 1;
            }
        }
        for repeat in repeats.into_iter().rev() {
            self.prefilling.push_front(repeat);
        }
    }

    /// With the prefix cache on, sequences waiting to be prefilled whose prompt equals one of `seqs`
    /// (just prefilled: rows of `cache` and `logits`) fork from it instead (`n > 1`, identical
    /// concurrent prompts): each is appended to `seqs` with a copy of that row's cache and logits, and
    /// samples on its own. Returns the logits of the rows of the grown `seqs`.
    fn fork_identical(
        &mut self,
        seqs: &mut Vec<Sequence<B>>,
        cache: &mut HybridCache<B>,
        logits: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        if self.prefix.is_none() {
            return logits;
        }
        let leaders = seqs.len();
        let mut rows: Vec<usize> = (0..leaders).collect();
        let mut i = 0;
        while i < self.prefilling.len() {
            let waiting = &self.prefilling[i];
            // only the front of the queue can be part way through its prefill
            let untouched = waiting.prefill.as_ref().is_none_or(|c| c.position == waiting.cached_tokens)
                && waiting.request.params.prompt_logprobs.is_none();
            match seqs[..leaders].iter().position(|s| s.history == waiting.history) {
                Some(row) if untouched => {
                    let mut follower = self.prefilling.remove(i).expect("in range");
                    let len = follower.history.len();
                    EngineStats::add(&self.stats.prefix_hits, usize::from(follower.cached_tokens == 0));
                    EngineStats::add(&self.stats.prefix_hit_tokens, len - follower.cached_tokens);
                    follower.prefill = None;
                    follower.cached_tokens = len;
                    rows.push(row);
                    seqs.push(follower);
                }
                _ => i += 1,
            }
        }
        if rows.len() == leaders {
            return logits;
        }
        cache.select_rows(&rows);
        logits.select(0, row_index::<B>(&rows, &self.model.device))
    }

    /// How many fresh prompts at the front of the prefill queue fit whole, padded to the longest of
    /// them, in `budget` tokens and in the attention-score bound of one chunk.
    fn fresh_group(&self, budget: usize) -> usize {
        let mut longest = 0;
        let mut count = 0;
        let mut scoring = false;
        // with the prefix cache, a group runs in chunks of its snapshot interval
        let chunk = self.prefix.as_ref().map_or(usize::MAX, |p| p.interval);
        for seq in &self.prefilling {
            if seq.prefill.is_some() {
                break;
            }
            let width = longest.max(seq.history.len());
            let rows = count + 1;
            // a group that scores a prompt brings every position's logits to the host: as many as
            // one chunk of a prompt scored alone
            let scores = scoring || seq.request.params.prompt_logprobs.is_some();
            if rows * width > budget
                || self.model.auto_prefill_chunk(rows, width) < width.min(chunk)
                || (scores && rows * width > PROMPT_LOGPROBS_CHUNK)
            {
                break;
            }
            (longest, count, scoring) = (width, rows, scores);
        }
        count
    }

    /// Chooses each sequence's next token from its row of `logits` (`[rows, 1, vocab]`), on the device
    /// when every row is plain greedy, and sends it; finished sequences get their last event. Returns
    /// the rows still running. Where the device failed, `seqs` are as they were.
    fn take_tokens(&self, seqs: &mut [Sequence<B>], logits: Tensor<B, 3>) -> Result<Vec<usize>, DeviceError> {
        // Logits come back only when some row samples or reports log-probabilities.
        let read = if seqs.iter().all(Sequence::device_greedy) {
            device_argmax(logits).map(|ids| (ids, Vec::new()))
        } else {
            read_f32(logits).map(|flat| (Vec::new(), flat))
        };
        let (ids, flat) = read?;
        let vocab = self.model.config.vocab_size;
        let mut keep = Vec::with_capacity(seqs.len());
        for (r, seq) in seqs.iter_mut().enumerate() {
            let choice =
                if ids.is_empty() { Choice::Logits(&flat[r * vocab..(r + 1) * vocab]) } else { Choice::Id(ids[r]) };
            match seq.take_token(choice) {
                Some(reason) => {
                    seq.finish(reason);
                    EngineStats::add(&self.stats.finished, 1);
                }
                None => keep.push(r),
            }
        }
        EngineStats::add(&self.stats.generation_tokens, seqs.len());
        Ok(keep)
    }

    /// Adds prefilled groups to the decode batch, realigning every row to the longest one.
    fn join(&mut self, joining: Vec<Prefilled<B>>) {
        if joining.is_empty() {
            return;
        }
        let mut lens = self.batch.as_ref().map(HybridCache::row_lens).unwrap_or_default();
        lens.extend(joining.iter().flat_map(|g| g.cache.row_lens()));
        let position = lens.iter().copied().max().expect("rows joining");
        let joining_steps = joining.iter().flat_map(|g| &g.seqs).map(Sequence::steps_left);
        let steps = self.running.iter().map(Sequence::steps_left).chain(joining_steps).max().unwrap_or(0);
        let capacity = position + steps;
        for Prefilled { mut cache, seqs } in joining {
            cache.realign(position, capacity);
            match &mut self.batch {
                Some(batch) => {
                    if (batch.position, batch.capacity) != (position, capacity) {
                        batch.realign(position, capacity);
                    }
                    batch.append_rows(cache);
                }
                None => self.batch = Some(cache),
            }
            self.running.extend(seqs);
        }
    }

    /// One decode step for every running sequence.
    fn decode(&mut self) -> Result<(), GenerateError> {
        let Some(batch) = self.batch.as_mut() else { return Ok(()) };
        let column: Vec<Vec<u32>> = self.running.iter().map(|s| vec![*s.history.last().expect("a token")]).collect();
        let ids = self.model.ids_tensor(&column)?;
        let logits = self.model.forward_cached(ids, batch, true)?;
        let mut running = std::mem::take(&mut self.running);
        let chosen = self.take_tokens(&mut running, logits);
        self.running = running;
        let keep = chosen?;
        if let (Some(prefix), Some(batch)) = (&mut self.prefix, &self.batch) {
            // a finished row holds its prompt and every generated token but the last: the next
            // turn of a conversation starts there
            for (row, seq) in self.running.iter().enumerate().filter(|(row, _)| !keep.contains(row)) {
                prefix.record(&seq.history[..seq.history.len() - 1], batch, row, &self.stats);
            }
        }
        self.keep_rows(&keep);
        Ok(())
    }

    /// Keeps running rows `keep` (ascending) in the batch and drops the others.
    fn keep_rows(&mut self, keep: &[usize]) {
        if keep.len() == self.running.len() {
            return;
        }
        let mut index = 0;
        self.running.retain(|_| {
            index += 1;
            keep.contains(&(index - 1))
        });
        if keep.is_empty() {
            self.batch = None;
        } else if let Some(batch) = self.batch.as_mut() {
            batch.select_rows(keep);
        }
    }

    /// Sets the gauges of requests and cache bytes.
    fn publish(&self) {
        let s = &self.stats;
        EngineStats::set(&s.running, self.running.len());
        let prefill: u64 = self.prefilling.iter().map(|q| self.costs.sequence_bytes(q.history.len())).sum();
        let batch = self
            .batch
            .as_ref()
            .map_or(0, |b| (b.batch as u64) * (b.capacity as u64 * self.costs.kv_per_slot + self.costs.state));
        s.cache_bytes.store(batch + prefill, std::sync::atomic::Ordering::Relaxed);
        // submissions still in the channel count as waiting too
        let pending = s.submitted.load(std::sync::atomic::Ordering::Relaxed).saturating_sub(self.accepted) as usize;
        EngineStats::set(&s.waiting, self.queued.len() + self.prefilling.len() + pending);
    }

    /// Samples the device allocator's usage into the gauges and hands its leftovers back past the
    /// slack. Asking the allocator walks its pools: every few steps is enough for a gauge and for
    /// leftovers of shapes that are gone.
    fn tend_allocator(&mut self) {
        if self.steps % DEVICE_MEMORY_EVERY != 0 {
            return;
        }
        let Some(memory) = B::device_memory(&self.model.device) else { return };
        let s = &self.stats;
        s.device_memory_in_use.store(memory.in_use, std::sync::atomic::Ordering::Relaxed);
        s.device_memory_reserved.store(memory.reserved, std::sync::atomic::Ordering::Relaxed);
        tracing::debug!(
            step = self.steps,
            in_use = memory.in_use,
            reserved = memory.reserved,
            running = self.running.len(),
            cache_bytes = s.cache_bytes.load(std::sync::atomic::Ordering::Relaxed),
            prefix_bytes = self.prefix.as_ref().map_or(0, PrefixCache::bytes),
            "device memory"
        );
        // Free slices of pages still in use cannot be given back: what counts is how far the free
        // bytes grew past their lowest since the last cleanup.
        let free = memory.reserved.saturating_sub(memory.in_use);
        self.free_low = self.free_low.min(free);
        if self.config.allocator_slack.is_some_and(|slack| free > self.free_low.saturating_add(slack)) {
            self.clean_allocator();
        }
    }

    /// Hands the device allocator's free pages back to the device.
    fn clean_allocator(&mut self) {
        B::memory_cleanup(&self.model.device);
        EngineStats::add(&self.stats.allocator_cleanups, 1);
        self.free_low = u64::MAX;
    }
}

#[cfg(all(test, feature = "ndarray"))]
mod tests;
