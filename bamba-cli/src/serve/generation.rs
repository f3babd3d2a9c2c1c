//! From engine events to what a client sees: incremental text, stop strings, log-probabilities,
//! finish reasons and usage, for the `n` choices of every prompt of one request, merged in arrival
//! order. Shared by the streaming and the one-shot responses of both endpoints.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::Instant;

use bamba_model::engine::{Event, RequestStream, TokenEvent};
use bamba_model::{FinishReason, StopStrings, TextTokenizer};
use futures_util::Stream;

use super::AppState;

/// A token with its log-probability and the most likely alternatives.
#[derive(Debug, Clone)]
pub struct TokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub top: Vec<(String, f32)>,
}

/// One thing that happened to a request.
#[derive(Debug, Clone)]
pub enum Update {
    /// The prompt of choice `index` was prefilled: its tokens after the first with their
    /// log-probabilities (only where asked for; before any `Delta` of that choice).
    Prompt {
        index: usize,
        logprobs: Vec<TokenLogprob>,
    },
    /// New output of choice `index` (text may be empty while a stop string or a character is pending).
    Delta {
        index: usize,
        text: String,
        token_ids: Vec<u32>,
        logprobs: Vec<TokenLogprob>,
    },
    Finish {
        index: usize,
        reason: &'static str,
    },
    /// Every choice is done.
    Usage {
        prompt_tokens: usize,
        completion_tokens: usize,
        /// Prompt tokens taken from the prefix cache.
        cached_tokens: usize,
    },
    Failed(String),
}

/// The engine streams of one request: `streams[i]` is choice `i`.
pub struct Job {
    pub id: String,
    pub streams: Vec<RequestStream>,
    pub prompt_tokens: usize,
    /// Streams per prompt (`n`): the streams of prompt `p` are `p * n .. (p + 1) * n`.
    pub choices_per_prompt: usize,
    pub stops: Vec<String>,
    pub arrival: Instant,
}

fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop => "stop",
    }
}

/// The text of one token as the log-probability objects name it (`token_id:N` without a tokenizer).
pub fn token_text(tokenizer: Option<&TextTokenizer>, id: u32) -> String {
    tokenizer.map_or_else(|| format!("token_id:{id}"), |t| t.token_text(id))
}

fn logprobs(tokenizer: Option<&TextTokenizer>, t: &TokenEvent) -> Vec<TokenLogprob> {
    match t.logprob {
        None => Vec::new(),
        Some(logprob) => vec![TokenLogprob {
            token: token_text(tokenizer, t.id),
            logprob,
            top: t.top_logprobs.iter().map(|&(id, lp)| (token_text(tokenizer, id), lp)).collect(),
        }],
    }
}

/// Logs a request that ends without its usage: the client went away (the stream was dropped), or
/// the engine failed it. A request that completes is logged with its timings instead.
struct UnfinishedLog {
    id: String,
    arrival: Instant,
    prompt_tokens: usize,
    completion_tokens: usize,
    /// `None` once the request completed.
    outcome: Option<&'static str>,
}

impl Drop for UnfinishedLog {
    fn drop(&mut self) {
        if let Some(outcome) = self.outcome {
            tracing::info!(
                id = %self.id,
                prompt_tokens = self.prompt_tokens,
                completion_tokens = self.completion_tokens,
                total_ms = self.arrival.elapsed().as_secs_f64() * 1e3,
                "request {outcome}"
            );
        }
    }
}

/// The updates of `job`, ending with `Usage` (or `Failed`). Dropping the stream cancels every
/// choice; a choice that meets a stop string is cancelled at once.
pub fn updates(state: Arc<AppState>, mut job: Job) -> impl Stream<Item = Update> {
    async_stream::stream! {
        let tokenizer = state.tokenizer.clone();
        let tokenizer = tokenizer.as_deref();
        let choices = job.streams.len();
        let mut texts: Vec<_> = (0..choices).map(|_| tokenizer.map(TextTokenizer::stream)).collect();
        let mut stops: Vec<StopStrings> =
            (0..choices).map(|_| StopStrings::new(job.stops.clone()).expect("checked non-empty")).collect();
        let mut done = vec![false; choices];
        let mut generated = vec![0usize; choices];
        let mut cached = vec![0usize; choices];
        let mut queue_time = std::time::Duration::ZERO;
        let mut log = UnfinishedLog {
            id: job.id.clone(),
            arrival: job.arrival,
            prompt_tokens: job.prompt_tokens,
            completion_tokens: 0,
            outcome: Some("cancelled"),
        };
        let mut last_token: Vec<Option<Instant>> = vec![None; choices];
        let mut first_token: Option<Instant> = None;
        let mut finish = "stop";
        while done.contains(&false) {
            let (i, event) = poll_fn(|cx| {
                for (i, s) in job.streams.iter_mut().enumerate() {
                    if !done[i] {
                        if let Poll::Ready(e) = s.poll_next(cx) {
                            return Poll::Ready((i, e));
                        }
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Some(Event::Prompt(events)) => {
                    let logprobs = events.iter().flat_map(|t| logprobs(tokenizer, t)).collect();
                    yield Update::Prompt { index: i, logprobs };
                }
                Some(Event::Token(t)) => {
                    let now = Instant::now();
                    if first_token.is_none() {
                        first_token = Some(now);
                        state.metrics.first_token(now.duration_since(job.arrival).as_secs_f64());
                    }
                    if let Some(previous) = last_token[i] {
                        state.metrics.inter_token(now.duration_since(previous).as_secs_f64());
                    }
                    last_token[i] = Some(now);
                    generated[i] += 1;
                    log.completion_tokens += 1;
                    let piece = match texts[i].as_mut().map(|s| s.push(t.id)) {
                        Some(Ok(Some(piece))) => piece,
                        Some(Err(e)) => {
                            log.outcome = Some("failed");
                            yield Update::Failed(e.to_string());
                            return;
                        }
                        _ => String::new(),
                    };
                    let (text, hit) = stops[i].push(&piece);
                    yield Update::Delta { index: i, text, token_ids: vec![t.id], logprobs: logprobs(tokenizer, &t) };
                    if hit {
                        done[i] = true;
                        job.streams[i].cancel();
                        yield Update::Finish { index: i, reason: "stop" };
                    }
                }
                Some(Event::Finished { reason, cached_tokens, queue_time: queued, .. }) => {
                    done[i] = true;
                    cached[i] = cached_tokens;
                    state.metrics.queued(queued.as_secs_f64());
                    queue_time = queue_time.max(queued);
                    let tail = stops[i].finish();
                    if !tail.is_empty() {
                        yield Update::Delta { index: i, text: tail, token_ids: Vec::new(), logprobs: Vec::new() };
                    }
                    finish = finish_reason(reason);
                    yield Update::Finish { index: i, reason: finish };
                }
                Some(Event::Failed(message)) => {
                    log.outcome = Some("failed");
                    yield Update::Failed(message);
                    return;
                }
                None => {
                    log.outcome = Some("failed");
                    yield Update::Failed("the engine stopped before the request finished".into());
                    return;
                }
            }
        }
        let completion_tokens: usize = generated.iter().sum();
        // a prompt counts its cached tokens once, however many choices it has: those its first choice
        // found (the other choices fork from that one's prefill)
        let cached_tokens: usize =
            cached.chunks(job.choices_per_prompt.max(1)).map(|c| c.iter().copied().min().unwrap_or(0)).sum();
        let elapsed = job.arrival.elapsed();
        state.metrics.finished(elapsed.as_secs_f64(), job.prompt_tokens, completion_tokens);
        log.outcome = None;
        tracing::info!(
            id = %job.id,
            prompt_tokens = job.prompt_tokens,
            completion_tokens,
            cached_tokens,
            choices,
            finish,
            queue_ms = queue_time.as_secs_f64() * 1e3,
            ttft_ms = first_token.map_or(0.0, |t| t.duration_since(job.arrival).as_secs_f64() * 1e3),
            total_ms = elapsed.as_secs_f64() * 1e3,
            "request done"
        );
        yield Update::Usage { prompt_tokens: job.prompt_tokens, completion_tokens, cached_tokens };
    }
}
