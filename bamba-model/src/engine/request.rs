//! What a request asks of the engine and what the engine sends back, one event at a time.

use std::time::Duration;

use crate::generate::FinishReason;
use crate::sampling::SamplingParams;

/// Settings of one request.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestParams {
    /// How tokens are chosen; each request samples with its own RNG seeded from `sampling.seed`.
    pub sampling: SamplingParams,
    /// New tokens at most (at least 1).
    pub max_tokens: usize,
    /// Ids that end the sequence (the checkpoint's EOS); the token is part of the output.
    pub eos_ids: Vec<u32>,
    /// Keep going past EOS.
    pub ignore_eos: bool,
    /// Further ids that end the sequence (finish reason `Stop`); the token is part of the output.
    pub stop_token_ids: Vec<u32>,
    /// Report the log-probability of each chosen token and of the `n` most likely ones.
    pub logprobs: Option<usize>,
    /// Report the log-probability of every prompt token after the first (given those before it) and
    /// the `n` most likely tokens at each of those positions ([`Event::Prompt`]), as scoring harnesses
    /// need. Such a prompt is prefilled alone, never resumed from the prefix cache, and may ask for
    /// no new token at all (`max_tokens` 0).
    pub prompt_logprobs: Option<usize>,
}

impl Default for RequestParams {
    fn default() -> Self {
        RequestParams {
            sampling: SamplingParams::default(),
            max_tokens: 16,
            eos_ids: Vec::new(),
            ignore_eos: false,
            stop_token_ids: Vec::new(),
            logprobs: None,
            prompt_logprobs: None,
        }
    }
}

/// One generated token.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenEvent {
    /// The token.
    pub id: u32,
    /// Log-probability of `id` under the model's distribution (raw logits, before sampling
    /// settings), when asked for.
    pub logprob: Option<f32>,
    /// The most likely tokens and their log-probabilities, most likely first, when asked for.
    pub top_logprobs: Vec<(u32, f32)>,
}

/// What the engine sends a request, in order: its prompt's log-probabilities when asked for, tokens,
/// then one `Finished` (or one `Failed`).
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Prompt tokens `1 ..` with their log-probabilities given the tokens before them (f32 log-softmax
    /// of the full logits row), sent once when the prompt is prefilled.
    Prompt(Vec<TokenEvent>),
    /// A new token.
    Token(TokenEvent),
    /// The request ended; nothing follows.
    Finished {
        /// Why it ended.
        reason: FinishReason,
        /// Tokens in its prompt.
        prompt_tokens: usize,
        /// Tokens it generated.
        completion_tokens: usize,
        /// Prompt tokens taken from the prefix cache instead of prefilled.
        cached_tokens: usize,
        /// How long it waited in the engine's queue (submitted until admitted to prefill).
        queue_time: Duration,
    },
    /// The engine could not run the request (a backend error); nothing more follows.
    Failed(String),
}

/// Log-probabilities of every token from one row of logits (a stable log-softmax).
pub(crate) fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f32 = logits.iter().map(|l| (l - max).exp()).sum();
    let log_sum = max + sum.ln();
    logits.iter().map(|l| l - log_sum).collect()
}

/// The token event for `id` chosen from `logits`, with log-probabilities when `logprobs` is set.
pub(crate) fn token_event(id: u32, logits: &[f32], logprobs: Option<usize>) -> TokenEvent {
    let Some(top) = logprobs else {
        return TokenEvent { id, logprob: None, top_logprobs: Vec::new() };
    };
    let lp = log_softmax(logits);
    let mut order: Vec<usize> = (0..lp.len()).collect();
    let top = top.min(lp.len());
    if top > 0 {
        order.select_nth_unstable_by(top - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
    }
    order.truncate(top);
    order.sort_by(|&a, &b| lp[b].total_cmp(&lp[a]).then(a.cmp(&b)));
    TokenEvent {
        id,
        logprob: Some(lp[id as usize]),
        top_logprobs: order.into_iter().map(|i| (i as u32, lp[i])).collect(),
    }
}
