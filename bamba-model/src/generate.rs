//! The generation loop: prefill the prompt (optionally in chunks) into a fresh cache, then decode one
//! token at a time from the recurrent state and KV cache, never re-running the prompt.

use std::path::Path;
use std::time::{Duration, Instant};

use bamba_kernels::BambaOps;
use burn::tensor::{DType, Tensor};
use thiserror::Error;

use crate::cache::{CacheError, HybridCache};
use crate::config::ConfigError;
use crate::model::{BambaModel, InputError};
use crate::padding::LeftPadding;
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
    /// Prefill the prompt in chunks of this many tokens (`None`: chunks sized so that a chunk's
    /// attention scores stay within 1 GiB, see [`BambaModel::auto_prefill_chunk`]).
    pub prefill_chunk: Option<usize>,
    /// Storage dtype of the SSM state between steps.
    pub state_dtype: DType,
    /// Keep every step's logits in the result (tests, debugging).
    pub keep_logits: bool,
}

/// What a step hands the sampling loop.
enum Choices {
    /// Each row's greedy token, chosen on the device.
    Ids(Vec<u32>),
    /// Each row's logits, for the host to sample from.
    Logits(Vec<Vec<f32>>),
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

/// End-of-sequence ids: generation_config.json's `eos_token_id` if present, else config.json's. A
/// generation_config.json that exists but cannot be read or parsed is an error, not ignored.
pub fn eos_ids(dir: &Path, config_eos: &[u32]) -> Result<Vec<u32>, ConfigError> {
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
    let path = dir.join("generation_config.json");
    if !path.exists() {
        return Ok(config_eos.to_vec());
    }
    let bad = |message: String| ConfigError::GenerationConfig { path: path.display().to_string(), message };
    let text = crate::files::read_text(&path, crate::files::TEXT_LIMIT).map_err(|e| bad(e.to_string()))?;
    let parsed: GenerationConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    Ok(match parsed.eos_token_id {
        Some(Ids::One(id)) => vec![id],
        Some(Ids::Many(ids)) => ids,
        None => config_eos.to_vec(),
    })
}

/// Each row's argmax over the last axis, taken on the device: only the ids come back, not the
/// `[rows, vocab]` logits (32 MB per step for 64 rows of a 128K vocabulary). Greedy decoding takes this
/// path in both [`BambaModel::generate_batch`] and the serving engine, so that the two agree even where
/// a row holds two equal maxima.
///
/// # Shapes
/// - `logits`: `[rows, 1, vocab]` → `rows` ids
pub fn device_argmax<B: BambaOps>(logits: Tensor<B, 3>) -> Vec<u32> {
    let rows = logits.dims()[0];
    let ids = logits.argmax(2).reshape([rows]).into_data().convert::<i64>();
    ids.to_vec::<i64>().expect("i64 after convert").into_iter().map(|i| i as u32).collect()
}

impl<B: BambaOps> BambaModel<B> {
    /// Feeds one column of tokens per row through the cache; returns each row's argmax taken on the
    /// device (`on_device`) or each row's last logits on the host.
    fn next_choices(
        &self,
        rows: &[Vec<u32>],
        cache: &mut HybridCache<B>,
        on_device: bool,
    ) -> Result<Choices, GenerateError> {
        let logits = self.forward_cached(self.ids_tensor(rows)?, cache, true)?;
        if on_device {
            return Ok(Choices::Ids(device_argmax(logits)));
        }
        let flat = logits.cast(DType::F32).into_data().to_vec::<f32>().expect("f32 after cast");
        Ok(Choices::Logits(flat.chunks_exact(self.config.vocab_size).map(<[f32]>::to_vec).collect()))
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
        let mut out =
            self.generate_batch(&[prompt.to_vec()], params, std::slice::from_mut(sampler), |_, t| on_token(t))?;
        Ok(out.pop().expect("one row in, one row out"))
    }

    /// Generates for several prompts at once: they are left-padded into one batch (see
    /// [`crate::padding`]) so that each row equals running it alone. Row `r` samples with
    /// `samplers[r]`; `on_token(r, token)` returns `false` to stop row `r`. Finished rows keep
    /// their slot (fed their last token, outputs ignored) until every row is done.
    pub fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        samplers: &mut [Sampler],
        mut on_token: impl FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generation>, GenerateError> {
        if prompts.is_empty() {
            return Err(InputError::EmptyPrompt.into());
        }
        assert_eq!(samplers.len(), prompts.len(), "one sampler per prompt");
        for prompt in prompts {
            self.validate_ids(prompt)?;
        }
        let (rows, padding) = LeftPadding::pad(prompts, self.config.pad_token_id.unwrap_or(0));
        let width = rows[0].len();
        let capacity = width + params.max_new_tokens;
        let limit = self.config.max_position_embeddings;
        if capacity > limit {
            return Err(InputError::TooLong { len: capacity, limit }.into());
        }
        let chunk = params.prefill_chunk.unwrap_or_else(|| self.auto_prefill_chunk(rows.len(), capacity));
        if chunk == 0 {
            return Err(GenerateError::PrefillChunk);
        }
        let mut out: Vec<Generation> = prompts
            .iter()
            .map(|p| Generation {
                ids: Vec::new(),
                finish: FinishReason::Length,
                prompt_tokens: p.len(),
                prefill_time: Duration::ZERO,
                decode_time: Duration::ZERO,
                step_logits: Vec::new(),
            })
            .collect();
        if params.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut cache = self.new_cache(rows.len(), capacity, params.state_dtype)?;
        cache.set_padding(padding)?;

        let on_device = !params.keep_logits && samplers.iter().all(Sampler::is_plain_greedy);
        let start = Instant::now();
        let mut choices = Choices::Ids(Vec::new());
        for begin in (0..width).step_by(chunk) {
            let end = (begin + chunk).min(width);
            let part: Vec<Vec<u32>> = rows.iter().map(|r| r[begin..end].to_vec()).collect();
            choices = self.next_choices(&part, &mut cache, on_device)?;
        }
        let prefill_time = start.elapsed();

        let start = Instant::now();
        let mut histories: Vec<Vec<u32>> = prompts.to_vec();
        let mut active = vec![true; rows.len()];
        loop {
            for r in 0..rows.len() {
                if !active[r] {
                    continue;
                }
                let gen = &mut out[r];
                let token = match &mut choices {
                    Choices::Ids(ids) => ids[r],
                    Choices::Logits(logits) => {
                        let token = samplers[r].sample(&logits[r], &histories[r], gen.ids.len());
                        if params.keep_logits {
                            gen.step_logits.push(std::mem::take(&mut logits[r]));
                        }
                        token
                    }
                };
                gen.ids.push(token);
                histories[r].push(token);
                let keep_going = on_token(r, token);
                if !params.ignore_eos && params.eos_ids.contains(&token) {
                    gen.finish = FinishReason::Eos;
                } else if !keep_going {
                    gen.finish = FinishReason::Stop;
                } else if gen.ids.len() < params.max_new_tokens {
                    continue;
                }
                active[r] = false;
            }
            if !active.contains(&true) {
                break;
            }
            let column: Vec<Vec<u32>> = histories.iter().map(|h| vec![*h.last().expect("non-empty")]).collect();
            choices = self.next_choices(&column, &mut cache, on_device)?;
        }
        let decode_time = start.elapsed();
        for gen in &mut out {
            gen.prefill_time = prefill_time;
            gen.decode_time = decode_time;
        }
        Ok(out)
    }
}
