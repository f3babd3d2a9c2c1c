//! The generation loop: prefill the prompt (optionally in chunks) into a fresh cache, then decode one
//! token at a time from the recurrent state and KV cache, never re-running the prompt.

use std::path::Path;
use std::time::{Duration, Instant};

use bamba_kernels::BambaOps;
use burn::tensor::Tensor;
use thiserror::Error;

use crate::cache::{CacheError, HybridCache};
use crate::config::ConfigError;
use crate::loader::Precision;
use crate::model::{BambaModel, InputError};
use crate::padding::LeftPadding;
use crate::readback::{read_f32, read_i64, DeviceError};
use crate::sampling::{Sampler, SamplingError};

/// Errors during generation.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum GenerateError {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Device(#[from] DeviceError),
    #[error("the prefill chunk must be at least 1 token")]
    PrefillChunk,
    #[error("{prompts} prompts need {prompts} samplers, got {samplers}")]
    Samplers { prompts: usize, samplers: usize },
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
    /// The lower-case name (`eos`, `length`, `stop`).
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Eos => "eos",
            FinishReason::Length => "length",
            FinishReason::Stop => "stop",
        }
    }
}

/// Settings of one generation. `Default` is greedy-friendly: 256 new tokens, no end-of-sequence id
/// (take the checkpoint's with [`GenerateParams::eos_ids`]), automatic prefill chunks, f32 SSM state.
///
/// ```
/// use bamba_model::{GenerateParams, Precision};
///
/// let params = GenerateParams::default().max_new_tokens(32).eos_ids(vec![0]).state_dtype(Precision::Bf16);
/// assert_eq!(params.max_new_tokens, 32);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateParams {
    /// At most this many new tokens.
    pub max_new_tokens: usize,
    /// End-of-sequence ids (from generation_config.json / config.json).
    pub eos_ids: Vec<u32>,
    /// Keep going past EOS (benchmarks).
    pub ignore_eos: bool,
    /// Prefill the prompt in chunks of this many tokens (`None`: chunks sized so that a chunk's
    /// attention scores stay within 1 GiB, see [`BambaModel::auto_prefill_chunk`]).
    pub prefill_chunk: Option<usize>,
    /// Storage precision of the SSM state between steps (the state math is f32 either way).
    pub state_dtype: Precision,
    /// Keep every step's logits in the result (tests, debugging).
    pub keep_logits: bool,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_new_tokens: 256,
            eos_ids: Vec::new(),
            ignore_eos: false,
            prefill_chunk: None,
            state_dtype: Precision::F32,
            keep_logits: false,
        }
    }
}

impl GenerateParams {
    /// Sets [`GenerateParams::max_new_tokens`].
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.max_new_tokens = n;
        self
    }
    /// Sets [`GenerateParams::eos_ids`].
    pub fn eos_ids(mut self, ids: Vec<u32>) -> Self {
        self.eos_ids = ids;
        self
    }
    /// Sets [`GenerateParams::ignore_eos`].
    pub fn ignore_eos(mut self, ignore: bool) -> Self {
        self.ignore_eos = ignore;
        self
    }
    /// Sets [`GenerateParams::prefill_chunk`].
    pub fn prefill_chunk(mut self, tokens: Option<usize>) -> Self {
        self.prefill_chunk = tokens;
        self
    }
    /// Sets [`GenerateParams::state_dtype`].
    pub fn state_dtype(mut self, precision: Precision) -> Self {
        self.state_dtype = precision;
        self
    }
    /// Sets [`GenerateParams::keep_logits`].
    pub fn keep_logits(mut self, keep: bool) -> Self {
        self.keep_logits = keep;
        self
    }
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
    /// Why it ended.
    pub finish: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// The prompt's prefill (shared by a batch's rows).
    pub prefill_time: Duration,
    /// The decode steps (shared by a batch's rows).
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
pub fn device_argmax<B: BambaOps>(logits: Tensor<B, 3>) -> Result<Vec<u32>, DeviceError> {
    let rows = logits.dims()[0];
    Ok(read_i64(logits.argmax(2).reshape([rows]))?.into_iter().map(|i| i as u32).collect())
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
            return Ok(Choices::Ids(device_argmax(logits)?));
        }
        let flat = read_f32(logits)?;
        Ok(Choices::Logits(flat.chunks_exact(self.config.vocab_size).map(<[f32]>::to_vec).collect()))
    }

    /// Generates up to `params.max_new_tokens` tokens after `prompt`. `on_token` sees each new token
    /// as soon as it is chosen and returns `false` to stop. [`BambaModel::stream`] gives the same
    /// tokens as an iterator.
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
        if samplers.len() != prompts.len() {
            return Err(GenerateError::Samplers { prompts: prompts.len(), samplers: samplers.len() });
        }
        let on_device = samplers.iter().all(Sampler::is_plain_greedy);
        let mut decoding = BatchDecoding::new(self, prompts, params.clone(), on_device)?;
        while decoding.step(samplers, &mut on_token)? {}
        Ok(decoding.finish())
    }

    /// The new tokens after `prompt` as an iterator: the prompt is prefilled here (its errors are
    /// this call's), then each `next()` runs one decode step. Dropping the iterator stops early.
    ///
    /// ```no_run
    /// # fn run<B: bamba_model::bamba_kernels::BambaOps>(model: &bamba_model::BambaModel<B>)
    /// # -> Result<(), bamba_model::GenerateError> {
    /// use bamba_model::{GenerateParams, Sampler, SamplingParams};
    ///
    /// let sampler = Sampler::new(SamplingParams::default())?;
    /// let params = GenerateParams::default().max_new_tokens(16);
    /// for token in model.stream(&[1, 2, 3], &params, sampler)? {
    ///     println!("{}", token?);
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub fn stream(
        &self,
        prompt: &[u32],
        params: &GenerateParams,
        sampler: Sampler,
    ) -> Result<TokenStream<'_, B>, GenerateError> {
        let decoding = BatchDecoding::new(self, &[prompt.to_vec()], params.clone(), sampler.is_plain_greedy())?;
        Ok(TokenStream { decoding, sampler })
    }
}

/// A generation in progress over a left-padded batch: prefilled when made, one token per active row
/// per [`BatchDecoding::step`].
struct BatchDecoding<'m, B: BambaOps> {
    model: &'m BambaModel<B>,
    params: GenerateParams,
    /// `None` when nothing is to be generated (`max_new_tokens` = 0).
    cache: Option<HybridCache<B>>,
    on_device: bool,
    /// What the last forward chose; `None` once it has been used.
    choices: Option<Choices>,
    /// Each row's prompt and the tokens generated so far.
    histories: Vec<Vec<u32>>,
    active: Vec<bool>,
    out: Vec<Generation>,
    decode_start: Option<Instant>,
}

impl<'m, B: BambaOps> BatchDecoding<'m, B> {
    /// Validates the prompts and prefills them (in chunks of `params.prefill_chunk`). `greedy`: every
    /// row samples greedily, so the argmax can be taken on the device.
    fn new(
        model: &'m BambaModel<B>,
        prompts: &[Vec<u32>],
        params: GenerateParams,
        greedy: bool,
    ) -> Result<Self, GenerateError> {
        if prompts.is_empty() {
            return Err(InputError::EmptyPrompt.into());
        }
        for prompt in prompts {
            model.validate_ids(prompt)?;
        }
        let (rows, padding) = LeftPadding::pad(prompts, model.config.pad_token_id.unwrap_or(0));
        let width = rows[0].len();
        let capacity = width.saturating_add(params.max_new_tokens);
        let limit = model.config.context_length();
        if capacity > limit {
            return Err(InputError::NoRoom { prompt: width, new: params.max_new_tokens, limit }.into());
        }
        let chunk = params.prefill_chunk.unwrap_or_else(|| model.auto_prefill_chunk(rows.len(), capacity));
        if chunk == 0 {
            return Err(GenerateError::PrefillChunk);
        }
        let out: Vec<Generation> = prompts
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
        let mut decoding = BatchDecoding {
            model,
            on_device: false,
            cache: None,
            choices: None,
            histories: prompts.to_vec(),
            active: vec![params.max_new_tokens > 0; rows.len()],
            out,
            decode_start: None,
            params,
        };
        if decoding.params.max_new_tokens == 0 {
            return Ok(decoding);
        }
        let mut cache = model.new_cache(rows.len(), capacity, decoding.params.state_dtype.dtype())?;
        cache.set_padding(padding)?;
        cache.set_prefill_end(width);
        decoding.on_device = greedy && !decoding.params.keep_logits;
        let start = Instant::now();
        for begin in (0..width).step_by(chunk) {
            let end = (begin + chunk).min(width);
            let part: Vec<Vec<u32>> = rows.iter().map(|r| r[begin..end].to_vec()).collect();
            decoding.choices = Some(model.next_choices(&part, &mut cache, decoding.on_device)?);
        }
        let prefill_time = start.elapsed();
        for gen in &mut decoding.out {
            gen.prefill_time = prefill_time;
        }
        decoding.cache = Some(cache);
        Ok(decoding)
    }

    /// Chooses the next token of every active row (running the forward that makes it, except
    /// after the prefill), hands each to `on_token(row, token)` (`false` stops that row), and says
    /// whether any row is still active.
    fn step(
        &mut self,
        samplers: &mut [Sampler],
        on_token: &mut impl FnMut(usize, u32) -> bool,
    ) -> Result<bool, GenerateError> {
        if !self.active.contains(&true) {
            return Ok(false);
        }
        let start = *self.decode_start.get_or_insert_with(Instant::now);
        let cache = self.cache.as_mut().expect("a cache while rows are active");
        let mut choices = match self.choices.take() {
            Some(choices) => choices,
            None => {
                let column: Vec<Vec<u32>> =
                    self.histories.iter().map(|h| vec![*h.last().expect("non-empty")]).collect();
                self.model.next_choices(&column, cache, self.on_device)?
            }
        };
        for r in 0..self.histories.len() {
            if !self.active[r] {
                continue;
            }
            let gen = &mut self.out[r];
            let token = match &mut choices {
                Choices::Ids(ids) => ids[r],
                Choices::Logits(logits) => {
                    let token = samplers[r].sample(&logits[r], &self.histories[r], gen.ids.len());
                    if self.params.keep_logits {
                        gen.step_logits.push(std::mem::take(&mut logits[r]));
                    }
                    token
                }
            };
            gen.ids.push(token);
            self.histories[r].push(token);
            let keep_going = on_token(r, token);
            if !self.params.ignore_eos && self.params.eos_ids.contains(&token) {
                gen.finish = FinishReason::Eos;
            } else if !keep_going {
                gen.finish = FinishReason::Stop;
            } else if gen.ids.len() < self.params.max_new_tokens {
                continue;
            }
            self.active[r] = false;
        }
        let decode_time = start.elapsed();
        for gen in &mut self.out {
            gen.decode_time = decode_time;
        }
        Ok(self.active.contains(&true))
    }

    fn finish(self) -> Vec<Generation> {
        self.out
    }
}

/// New tokens of one prompt, one decode step per `next()`; made by [`BambaModel::stream`]. After
/// the last token, [`TokenStream::generation`] tells why it ended and how long it took.
pub struct TokenStream<'m, B: BambaOps> {
    decoding: BatchDecoding<'m, B>,
    sampler: Sampler,
}

impl<B: BambaOps> TokenStream<'_, B> {
    /// The tokens so far, why generation ended (while it runs: [`FinishReason::Length`]), and its
    /// timings.
    pub fn generation(&self) -> &Generation {
        &self.decoding.out[0]
    }
}

impl<B: BambaOps> Iterator for TokenStream<'_, B> {
    type Item = Result<u32, GenerateError>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut token = None;
        match self.decoding.step(std::slice::from_mut(&mut self.sampler), &mut |_, t| {
            token = Some(t);
            true
        }) {
            Ok(_) => token.map(Ok),
            Err(e) => {
                // a failed step ends the stream
                self.decoding.active.fill(false);
                Some(Err(e))
            }
        }
    }
}
