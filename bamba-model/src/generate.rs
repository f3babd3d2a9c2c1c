//! The generation loop: prefill the prompt (optionally in chunks) into a fresh cache, then decode one
//! token at a time from the recurrent state and KV cache, never re-running the prompt.

use std::path::Path;
use std::time::{Duration, Instant};

use bamba_kernels::BambaOps;
use burn::tensor::DType;
use thiserror::Error;

use crate::cache::{CacheError, HybridCache};
use crate::model::{BambaModel, InputError};
use crate::sampling::{Sampler, SamplingError};

/// Errors during generation.
#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error("--prefill-chunk must be at least 1")]
    PrefillChunk,
}

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// An end-of-sequence token was produced (it is included in the output, as transformers does).
    Eos,
    /// `max_new_tokens` reached.
    Length,
    /// The caller's callback asked to stop (e.g. a stop string appeared).
    Stop,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// Settings of one generation.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    pub max_new_tokens: usize,
    /// End-of-sequence ids (from generation_config.json / config.json).
    pub eos_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
    /// Prefill the prompt in chunks of this many tokens (`None`: at once).
    pub prefill_chunk: Option<usize>,
    /// Storage dtype of the SSM state between steps.
    pub state_dtype: DType,
    /// Keep every step's logits in the result (tests, debugging).
    pub keep_logits: bool,
}

/// The outcome of one generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// New tokens only.
    pub ids: Vec<u32>,
    pub finish: FinishReason,
    pub prompt_tokens: usize,
    pub prefill_time: Duration,
    pub decode_time: Duration,
    /// Logits that chose each new token (when `keep_logits`).
    pub step_logits: Vec<Vec<f32>>,
}

/// End-of-sequence ids: generation_config.json's `eos_token_id` if present, else config.json's.
pub fn eos_ids(dir: &Path, config_eos: &[u32]) -> Vec<u32> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Ids {
        One(u32),
        Many(Vec<u32>),
    }
    #[derive(serde::Deserialize)]
    struct GenerationConfig {
        eos_token_id: Option<Ids>,
    }
    let parsed = std::fs::read_to_string(dir.join("generation_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<GenerationConfig>(&t).ok())
        .and_then(|g| g.eos_token_id);
    match parsed {
        Some(Ids::One(id)) => vec![id],
        Some(Ids::Many(ids)) => ids,
        None => config_eos.to_vec(),
    }
}

impl<B: BambaOps> BambaModel<B> {
    /// Feeds `ids` (one sequence) through the cache and reads back the last position's logits.
    fn next_logits(&self, ids: &[u32], cache: &mut HybridCache<B>) -> Result<Vec<f32>, GenerateError> {
        let logits = self.forward_cached(self.ids_tensor(&[ids.to_vec()])?, cache, true)?;
        Ok(logits.cast(DType::F32).into_data().to_vec::<f32>().expect("f32 after cast"))
    }

    /// Generates up to `params.max_new_tokens` tokens after `prompt`. `on_token` sees each new token
    /// as soon as it is chosen and returns `false` to stop.
    pub fn generate(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        sampler: &mut Sampler,
        mut on_token: impl FnMut(u32) -> bool,
    ) -> Result<Generation, GenerateError> {
        self.validate_ids(prompt)?;
        let capacity = prompt.len() + params.max_new_tokens;
        let limit = self.config.max_position_embeddings;
        if capacity > limit {
            return Err(InputError::TooLong { len: capacity, limit }.into());
        }
        let chunk = params.prefill_chunk.unwrap_or(prompt.len());
        if chunk == 0 {
            return Err(GenerateError::PrefillChunk);
        }
        let mut cache = self.new_cache(1, capacity, params.state_dtype)?;
        let mut history = prompt.to_vec();
        let mut out = Generation {
            ids: Vec::new(),
            finish: FinishReason::Length,
            prompt_tokens: prompt.len(),
            prefill_time: Duration::ZERO,
            decode_time: Duration::ZERO,
            step_logits: Vec::new(),
        };
        if params.max_new_tokens == 0 {
            return Ok(out);
        }

        let start = Instant::now();
        let mut logits = Vec::new();
        for part in prompt.chunks(chunk) {
            logits = self.next_logits(part, &mut cache)?;
        }
        out.prefill_time = start.elapsed();

        let start = Instant::now();
        loop {
            let token = sampler.sample(&logits, &history);
            if params.keep_logits {
                out.step_logits.push(std::mem::take(&mut logits));
            }
            out.ids.push(token);
            history.push(token);
            let keep_going = on_token(token);
            if !params.ignore_eos && params.eos_ids.contains(&token) {
                out.finish = FinishReason::Eos;
                break;
            }
            if !keep_going {
                out.finish = FinishReason::Stop;
                break;
            }
            if out.ids.len() == params.max_new_tokens {
                break;
            }
            logits = self.next_logits(&[token], &mut cache)?;
        }
        out.decode_time = start.elapsed();
        Ok(out)
    }
}
