//! Choosing the next token from logits: repetition penalty, then greedy (temperature 0) or
//! temperature → top-k → top-p → min-p → a draw from a seeded RNG (same seed, same tokens).
//! The order follows transformers' logits processors and warpers.

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use thiserror::Error;

/// Invalid sampling settings.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq)]
pub enum SamplingError {
    #[error("temperature must be finite and >= 0, got {0}")]
    Temperature(f32),
    #[error("top-k must be at least 1")]
    TopK,
    #[error("top-p must be in (0, 1], got {0}")]
    TopP(f32),
    #[error("min-p must be in [0, 1], got {0}")]
    MinP(f32),
    #[error("repetition penalty must be finite and > 0, got {0}")]
    RepetitionPenalty(f32),
    #[error("{name} must be in [-2, 2], got {value}")]
    Penalty { name: &'static str, value: f32 },
}

/// Sampling settings; the default is greedy.
#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 = greedy (argmax).
    pub temperature: f32,
    /// Keep only the k likeliest tokens.
    pub top_k: Option<usize>,
    /// Keep the smallest set of likeliest tokens whose probability reaches p.
    pub top_p: Option<f32>,
    /// Drop tokens less likely than min_p times the likeliest.
    pub min_p: Option<f32>,
    /// 1 = off; >1 discourages tokens already in the prompt or output (CTRL-style, as transformers).
    pub repetition_penalty: f32,
    /// 0 = off; subtracted from the logit of every token already generated (OpenAI's, in [-2, 2]).
    pub presence_penalty: f32,
    /// 0 = off; times the count of each token generated so far, subtracted from its logit (OpenAI's).
    pub frequency_penalty: f32,
    /// Seed of the random generator (same seed, same draws).
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            min_p: None,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            seed: 0,
        }
    }
}

impl SamplingParams {
    /// Checks every value is in its range.
    pub fn validate(&self) -> Result<(), SamplingError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SamplingError::Temperature(self.temperature));
        }
        if self.top_k == Some(0) {
            return Err(SamplingError::TopK);
        }
        if let Some(p) = self.top_p.filter(|p| !(*p > 0.0 && *p <= 1.0)) {
            return Err(SamplingError::TopP(p));
        }
        if let Some(p) = self.min_p.filter(|p| !(*p >= 0.0 && *p <= 1.0)) {
            return Err(SamplingError::MinP(p));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(SamplingError::RepetitionPenalty(self.repetition_penalty));
        }
        for (name, value) in
            [("presence_penalty", self.presence_penalty), ("frequency_penalty", self.frequency_penalty)]
        {
            if !(-2.0..=2.0).contains(&value) {
                return Err(SamplingError::Penalty { name, value });
            }
        }
        Ok(())
    }
}

/// Draws tokens according to [`SamplingParams`] with its own seeded RNG.
#[derive(Debug, Clone)]
pub struct Sampler {
    params: SamplingParams,
    rng: StdRng,
}

/// Index of the largest value (the first one on ties, like torch.argmax).
pub fn argmax(values: &[f32]) -> usize {
    values.iter().enumerate().fold(0, |best, (i, &v)| if v > values[best] { i } else { best })
}

/// Applies the repetition penalty in place to every token id seen in `history`.
pub fn apply_repetition_penalty(logits: &mut [f32], history: &[u32], penalty: f32) {
    if penalty == 1.0 {
        return;
    }
    let mut seen = vec![false; logits.len()];
    for &t in history {
        if let Some(s) = seen.get_mut(t as usize) {
            if !*s {
                *s = true;
                let l = &mut logits[t as usize];
                *l = if *l > 0.0 { *l / penalty } else { *l * penalty };
            }
        }
    }
}

/// Subtracts, from the logit of every token in `generated`, `frequency` times its count plus
/// `presence` once (OpenAI's presence and frequency penalties; the prompt does not count).
pub fn apply_output_penalties(logits: &mut [f32], generated: &[u32], presence: f32, frequency: f32) {
    if presence == 0.0 && frequency == 0.0 {
        return;
    }
    let mut counts = std::collections::HashMap::<u32, u32>::new();
    for &t in generated {
        *counts.entry(t).or_default() += 1;
    }
    for (t, count) in counts {
        if let Some(l) = logits.get_mut(t as usize) {
            *l -= frequency * count as f32 + presence;
        }
    }
}

/// Probabilities after temperature, top-k, top-p and min-p; tokens filtered out have probability 0.
pub fn filtered_probabilities(logits: &[f32], params: &SamplingParams) -> Vec<f32> {
    let scaled: Vec<f32> = logits.iter().map(|l| l / params.temperature).collect();
    let mut keep = vec![true; scaled.len()];
    let mut order: Vec<usize> = (0..scaled.len()).collect();
    order.sort_by(|&a, &b| scaled[b].total_cmp(&scaled[a]));
    if let Some(k) = params.top_k {
        if k < scaled.len() {
            let threshold = scaled[order[k - 1]];
            for (i, &v) in scaled.iter().enumerate() {
                keep[i] &= v >= threshold;
            }
        }
    }
    let softmax = |keep: &[bool]| -> Vec<f32> {
        let max = scaled.iter().zip(keep).filter(|(_, &k)| k).map(|(v, _)| *v).fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f32> = scaled.iter().zip(keep).map(|(v, &k)| if k { (v - max).exp() } else { 0.0 }).collect();
        let sum: f32 = e.iter().sum();
        e.into_iter().map(|v| v / sum).collect()
    };
    if let Some(p) = params.top_p {
        // Keep the smallest prefix (by probability) whose mass reaches p; always the top token.
        let probs = softmax(&keep);
        let mut mass = 0.0;
        for (rank, &i) in order.iter().enumerate() {
            if rank > 0 && mass >= p {
                keep[i] = false;
            }
            mass += probs[i];
        }
    }
    if let Some(min_p) = params.min_p {
        let probs = softmax(&keep);
        let top = probs.iter().cloned().fold(0.0, f32::max);
        for (i, &pr) in probs.iter().enumerate() {
            keep[i] &= pr >= min_p * top;
        }
    }
    softmax(&keep)
}

impl Sampler {
    /// A sampler with `params` (validated), its generator seeded with `params.seed`.
    pub fn new(params: SamplingParams) -> Result<Self, SamplingError> {
        params.validate()?;
        let rng = StdRng::seed_from_u64(params.seed);
        Ok(Sampler { params, rng })
    }

    /// The parameters it samples with.
    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Greedy with no penalty: the token is the argmax of the raw logits, which the device can take
    /// without the logits coming back to the host.
    pub fn is_plain_greedy(&self) -> bool {
        let p = &self.params;
        p.temperature == 0.0 && p.repetition_penalty == 1.0 && p.presence_penalty == 0.0 && p.frequency_penalty == 0.0
    }

    /// The next token for one row of logits; `history` is the prompt plus tokens generated so far, the
    /// last `generated` of them generated. Penalties apply in vLLM's order: repetition (prompt and
    /// output), then frequency and presence (output only).
    pub fn sample(&mut self, logits: &[f32], history: &[u32], generated: usize) -> u32 {
        let mut logits = logits.to_vec();
        let p = &self.params;
        apply_repetition_penalty(&mut logits, history, p.repetition_penalty);
        let output = &history[history.len() - generated.min(history.len())..];
        apply_output_penalties(&mut logits, output, p.presence_penalty, p.frequency_penalty);
        if self.params.temperature == 0.0 {
            return argmax(&logits) as u32;
        }
        let probs = filtered_probabilities(&logits, &self.params);
        let draw: f32 = self.rng.random();
        let mut mass = 0.0;
        let mut last = 0;
        for (i, p) in probs.iter().enumerate() {
            if *p > 0.0 {
                last = i;
                mass += p;
                if draw < mass {
                    return i as u32;
                }
            }
        }
        last as u32 // rounding left the draw above the total mass
    }
}
