//! The causal language model of every supported config (`BambaForCausalLM`,
//! `GraniteMoeHybridForCausalLM`, `Mamba2ForCausalLM`, `NemotronHForCausalLM`): embedding
//! (× `embedding_multiplier`) → decoder layers → final RMSNorm → LM head (tied or not) →
//! ÷ `logits_scaling`.

use std::path::Path;

use bamba_kernels::BambaOps;
use burn::tensor::{DType, Int, Tensor, TensorData};
use thiserror::Error;

use crate::cache::{CacheError, HybridCache};
use crate::config::BambaConfig;
use crate::generate::GenerateError;
use crate::layer::DecoderLayer;
use crate::linear::Linear;
use crate::loader::{Checkpoint, LoadError, Precision, WeightReader};
use crate::names::TensorNames;
use crate::norm::RmsNorm;
use crate::padding::ChunkMasks;
use crate::readback::read_f32;
use crate::rope::Rope;
use crate::shared::SharedBlock;

/// Bad model input.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error, PartialEq, Eq)]
pub enum InputError {
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {token} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { token: u32, position: usize, vocab: usize },
    #[error("the prompt has {len} tokens, more than the model's context length ({limit})")]
    TooLong { len: usize, limit: usize },
    #[error(
        "the prompt ({prompt} tokens) and {new} new tokens need more positions than the model's context length \
         ({limit}); ask for at most {room} new tokens",
        room = limit.saturating_sub(*prompt)
    )]
    NoRoom { prompt: usize, new: usize, limit: usize },
    #[error("rows of a batch must have equal length (row 0 has {expected}, row {row} has {found}); pad them first")]
    RaggedBatch { row: usize, expected: usize, found: usize },
    #[error("the {what} of {len} positions ({len} × {width} f32) are more than this host can hold")]
    OutputTooLarge { what: &'static str, len: usize, width: usize },
}

/// The causal language model, weights in one compute dtype.
#[derive(Debug, Clone)]
pub struct BambaModel<B: BambaOps> {
    /// The layer plan and sizes.
    pub config: BambaConfig,
    /// `[vocab, hidden]`.
    pub embed_tokens: Tensor<B, 2>,
    /// The decoder layers, in order.
    pub layers: Vec<DecoderLayer<B>>,
    /// The norm before the LM head.
    pub final_layernorm: RmsNorm<B>,
    /// When tied, `embed_tokens` itself (the same device buffer): `[vocab, hidden]` is the head's
    /// `[out, in]` weight.
    pub lm_head: Linear<B>,
    /// `None` without positional encoding.
    pub rope: Option<Rope>,
    /// The compute dtype of weights and activations.
    pub dtype: DType,
    /// Where the weights live.
    pub device: B::Device,
}

/// What [`BambaModel::prompt_outputs`] returns, f32 on the host, row-major.
#[derive(Debug, Clone)]
pub struct PromptOutputs {
    /// `[len, vocab]`.
    pub logits: Vec<f32>,
    /// `[len, vocab]`.
    pub shape: [usize; 2],
    /// Empty unless asked for: the embeddings, then every decoder layer's output, each `[len, hidden]`.
    pub hidden_states: Vec<Vec<f32>>,
}

impl<B: BambaOps> BambaModel<B> {
    /// Loads a Hugging Face checkpoint directory (config.json + safetensors, single or sharded),
    /// converting every weight once to `precision`. Fails on missing, unexpected, mis-shaped or
    /// mistyped tensors.
    pub fn load(dir: impl AsRef<Path>, device: &B::Device, precision: Precision) -> Result<Self, LoadError> {
        Self::load_with_progress(dir, device, precision, &mut |_, _| {})
    }

    /// [`BambaModel::load`], calling `progress(bytes_read, total_bytes)` after each tensor.
    pub fn load_with_progress(
        dir: impl AsRef<Path>,
        device: &B::Device,
        precision: Precision,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Self, LoadError> {
        let dir = dir.as_ref();
        let config = BambaConfig::from_path(dir)?;
        let checkpoint = Checkpoint::open(dir)?;
        let total = checkpoint.total_bytes();
        let mut read = 0;
        let mut on_read = |bytes: u64| {
            read += bytes;
            progress(read, total);
        };
        Self::from_checkpoint(config, &checkpoint, device, precision, Some(&mut on_read))
    }

    /// Builds the model from an opened checkpoint, reporting each tensor's bytes to `on_read`.
    pub fn from_checkpoint(
        config: BambaConfig,
        checkpoint: &Checkpoint,
        device: &B::Device,
        precision: Precision,
        on_read: Option<&mut dyn FnMut(u64)>,
    ) -> Result<Self, LoadError> {
        let dtype = precision.dtype();
        if !B::supports_dtype(device, dtype) {
            return Err(LoadError::UnsupportedPrecision { precision, backend: B::name(device) });
        }
        let mut w = WeightReader::<B>::new(checkpoint, device.clone(), dtype);
        if let Some(on_read) = on_read {
            w = w.with_progress(on_read);
        }
        Self::from_reader(config, w, device, dtype)
    }

    /// A model of `config`'s shapes with seeded random weights generated on the device (see
    /// [`WeightReader::random`]): for benchmarks that need no checkpoint. Its outputs mean nothing.
    pub fn random(config: BambaConfig, device: &B::Device, precision: Precision, seed: u64) -> Result<Self, LoadError> {
        let dtype = precision.dtype();
        if !B::supports_dtype(device, dtype) {
            return Err(LoadError::UnsupportedPrecision { precision, backend: B::name(device) });
        }
        Self::from_reader(config, WeightReader::random(device.clone(), dtype, seed), device, dtype)
    }

    /// The weights are persistent allocations ([`BambaOps::with_persistent_allocations`]): exact-size
    /// buffers outside the pages that activations share; then what loading left free is released.
    fn from_reader(
        config: BambaConfig,
        w: WeightReader<'_, B>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, LoadError> {
        let model = B::with_persistent_allocations(device, || Self::read_weights(config, w, device, dtype));
        B::memory_cleanup(device);
        model
    }

    fn read_weights(
        config: BambaConfig,
        mut w: WeightReader<'_, B>,
        device: &B::Device,
        dtype: DType,
    ) -> Result<Self, LoadError> {
        let (vocab, h) = (config.vocab_size, config.hidden_size);
        let names = TensorNames::of(config.architecture);
        let embed_tokens = w.tensor(names.embedding, [vocab, h])?;
        let blocks = SharedBlock::load_all(&mut w, &config)?;
        let layers = (0..config.num_layers)
            .map(|i| DecoderLayer::load(&mut w, i, &config, &blocks))
            .collect::<Result<Vec<_>, _>>()?;
        let final_layernorm = RmsNorm::load(&mut w, names.final_norm, h, config.rms_norm_eps, config.norm_weight_f32)?;
        let lm_head = if config.tie_word_embeddings {
            // transformers ties and ignores a stored copy; so do we.
            w.skip("lm_head.weight");
            Linear { weight: embed_tokens.clone(), bias: None }
        } else {
            Linear::load(&mut w, "lm_head", h, vocab, false)?
        };
        for prefix in names.ignored {
            w.skip_prefix(prefix);
        }
        w.finish()?;
        let rope = config.rope.as_ref().map(|r| Rope::scaled(config.rotary_dim(), r.theta, r.scaling.clone()));
        Ok(BambaModel { config, embed_tokens, layers, final_layernorm, lm_head, rope, dtype, device: device.clone() })
    }

    /// Checks a prompt against the vocabulary and the position limit.
    pub fn validate_ids(&self, ids: &[u32]) -> Result<(), InputError> {
        if ids.is_empty() {
            return Err(InputError::EmptyPrompt);
        }
        let vocab = self.config.vocab_size;
        if let Some((position, &token)) = ids.iter().enumerate().find(|(_, &t)| t as usize >= vocab) {
            return Err(InputError::TokenOutOfRange { token, position, vocab });
        }
        let limit = self.config.context_length();
        if ids.len() > limit {
            return Err(InputError::TooLong { len: ids.len(), limit });
        }
        Ok(())
    }

    /// Token ids of equal-length rows as a device tensor, after validation.
    pub fn ids_tensor(&self, rows: &[Vec<u32>]) -> Result<Tensor<B, 2, Int>, InputError> {
        let len = rows.first().map_or(0, Vec::len);
        for (row, ids) in rows.iter().enumerate() {
            self.validate_ids(ids)?;
            if ids.len() != len {
                return Err(InputError::RaggedBatch { row, expected: len, found: ids.len() });
            }
        }
        if rows.is_empty() {
            return Err(InputError::EmptyPrompt);
        }
        let flat: Vec<i64> = rows.iter().flatten().map(|&t| t as i64).collect();
        Ok(Tensor::from_data(TensorData::new(flat, [rows.len(), len]), &self.device))
    }

    /// Embedding rows for token ids, times `embedding_multiplier` (the pad row is not zeroed, as in
    /// transformers); in f32 when the residual stream is.
    ///
    /// # Shapes
    /// - `ids`: `[batch, len]` → `[batch, len, hidden]`
    fn embed(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        let [batch, len] = ids.dims();
        let rows = self.embed_tokens.clone().select(0, ids.reshape([batch * len]));
        let x = rows.reshape([batch, len, self.config.hidden_size]);
        let x = match self.config.embedding_multiplier {
            1.0 => x,
            m => x.mul_scalar(m),
        };
        if self.config.residual_f32 {
            x.cast(DType::F32)
        } else {
            x
        }
    }

    /// Logits for every position of every row, without a cache.
    ///
    /// # Shapes
    /// - `ids`: `[batch, len]` → `[batch, len, vocab]` in the model dtype
    pub fn forward(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 3> {
        self.forward_observed(ids, |_| {})
    }

    /// [`Self::forward`], handing `observe` the embeddings and then every decoder layer's output.
    fn forward_observed(&self, ids: Tensor<B, 2, Int>, mut observe: impl FnMut(&Tensor<B, 3>)) -> Tensor<B, 3> {
        let len = ids.dims()[1];
        let mut x = self.embed(ids);
        observe(&x);
        let embeddings = x.clone();
        let tables = self.rope.as_ref().map(|rope| rope.tables::<B>(0, len, &self.device, self.dtype));
        for layer in &self.layers {
            x = layer.forward(x, &embeddings, tables.as_ref(), &ChunkMasks::none(), None);
            observe(&x);
        }
        self.logits(self.final_layernorm.forward(x))
    }

    /// Runs a chunk of tokens that continues the sequences in `cache` (prefill, chunked prefill or a
    /// decode step when `len == 1`), updating the cache. Returns the logits of every position of
    /// the chunk, or of the last one only when `last_only`. A left-padded batch (see
    /// [`HybridCache::set_padding`]) gets per-row positions and padding masks.
    ///
    /// # Shapes
    /// - `ids`: `[batch, len]` → `[batch, len or 1, vocab]`
    pub fn forward_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut HybridCache<B>,
        last_only: bool,
    ) -> Result<Tensor<B, 3>, CacheError> {
        if ids.dims()[1] == 1 {
            // A decode step allocates the same sizes every step: exact-size buffers, found again by size.
            return B::with_persistent_allocations(&self.device, || self.run_cached(ids, cache, last_only, None));
        }
        self.run_cached(ids, cache, last_only, None)
    }

    /// [`Self::forward_cached`]'s work; `observe` sees the embeddings, then every layer's output.
    fn run_cached(
        &self,
        ids: Tensor<B, 2, Int>,
        cache: &mut HybridCache<B>,
        last_only: bool,
        mut observe: Option<&mut dyn FnMut(&Tensor<B, 3>)>,
    ) -> Result<Tensor<B, 3>, CacheError> {
        let [batch, len] = ids.dims();
        cache.check(batch, len)?;
        let mut x = self.embed(ids);
        if let Some(observe) = observe.as_mut() {
            observe(&x);
        }
        let embeddings = x.clone();
        let (start, padding) = (cache.position, &cache.padding);
        let tables = self.rope.as_ref().map(|rope| match (&cache.rope_tables, padding.is_none()) {
            (Some(all), true) => all.positions(start, len),
            _ => {
                // each row's sequence ends at the chunk's end, or at the end of the prefill it is part of
                let end = (start + len).max(cache.prefill_end);
                let lengths: Vec<usize> = padding.positions(end - 1, 1).iter().map(|p| p[0] + 1).collect();
                rope.tables_at::<B>(&padding.positions(start, len), &lengths, &self.device, self.dtype)
            }
        });
        let tokens = padding.token_mask(start, len, &self.device, self.dtype);
        let masks = if len == 1 {
            // Decode attention reads slots `key_start .. position + 1` of each row: built once per step.
            ChunkMasks { attention: None, tokens, key_start: Some(padding.key_starts(start, batch, &self.device)) }
        } else if padding.is_none() {
            ChunkMasks::none()
        } else {
            ChunkMasks { attention: Some(padding.attention_mask(start, len, &self.device)), tokens, key_start: None }
        };
        for (layer, layer_cache) in self.layers.iter().zip(cache.layers.iter_mut()) {
            x = layer.forward(x, &embeddings, tables.as_ref(), &masks, Some(layer_cache));
            if let Some(Some(state)) = &mut layer_cache.mamba {
                state.ssm = state.ssm.clone().cast(cache.state_dtype);
            }
            if let Some(observe) = observe.as_mut() {
                observe(&x);
            }
        }
        cache.position += len;
        if last_only && len > 1 {
            x = x.narrow(1, len - 1, 1);
        }
        Ok(self.logits(self.final_layernorm.forward(x)))
    }

    /// The prefill chunk that keeps a chunk's attention scores (`batch × heads × chunk × keys` f32, the
    /// largest activation of a long prompt) within 1 GiB at `keys` cached positions: long prompts then
    /// just run, in more chunks, instead of failing to allocate. At most 2048, at least 16.
    pub fn auto_prefill_chunk(&self, batch: usize, keys: usize) -> usize {
        const SCORE_BYTES: usize = 1 << 30;
        let per_query =
            batch.max(1).saturating_mul(self.config.num_heads).saturating_mul(keys.max(1)).saturating_mul(4);
        (SCORE_BYTES / per_query).clamp(16, 2048)
    }

    /// A fresh cache for this model: `batch` sequences of up to `capacity` positions.
    pub fn new_cache(&self, batch: usize, capacity: usize, state_dtype: DType) -> Result<HybridCache<B>, CacheError> {
        let mut cache = HybridCache::new(&self.config, batch, capacity, &self.device, self.dtype, state_dtype)?;
        if let (Some(rope), true) = (&self.rope, capacity > 0) {
            if !rope.depends_on_length() {
                cache.rope_tables = Some(rope.tables::<B>(0, capacity, &self.device, self.dtype));
            }
        }
        Ok(cache)
    }

    /// LM head over final hidden states, divided by `logits_scaling` (in the model dtype, as
    /// transformers does).
    ///
    /// # Shapes
    /// - `h`: `[batch, len, hidden]` → `[batch, len, vocab]`
    pub fn logits(&self, h: Tensor<B, 3>) -> Tensor<B, 3> {
        let logits = self.lm_head.forward(h);
        match self.config.logits_scaling {
            1.0 => logits,
            s => logits.div_scalar(s),
        }
    }

    /// The hidden states of one prompt as f32 on the host, each `[len, hidden]` row-major: the
    /// embeddings, then the output of every decoder layer (what transformers' `output_hidden_states`
    /// holds before the final norm). For finding the layer where a mismatch with a reference starts.
    pub fn prompt_hidden_states(&self, ids: &[u32]) -> Result<Vec<Vec<f32>>, GenerateError> {
        Ok(self.prompt_outputs(ids, true)?.hidden_states)
    }

    /// Validates one prompt and returns its logits `[len, vocab]` as f32 on the host (row-major).
    pub fn prompt_logits(&self, ids: &[u32]) -> Result<(Vec<f32>, [usize; 2]), GenerateError> {
        let out = self.prompt_outputs(ids, false)?;
        Ok((out.logits, out.shape))
    }

    /// Validates one prompt and runs it: its logits and, with `hidden_states`, every hidden state as
    /// [`Self::prompt_hidden_states`] gives them. The prompt goes through a cache in chunks of
    /// [`Self::auto_prefill_chunk`], so the attention scores stay within their bound at any length;
    /// the host buffers are reserved first, and a size the host cannot give is an error, not an abort.
    pub fn prompt_outputs(&self, ids: &[u32], hidden_states: bool) -> Result<PromptOutputs, GenerateError> {
        self.validate_ids(ids)?;
        let (len, vocab, hidden) = (ids.len(), self.config.vocab_size, self.config.hidden_size);
        let reserve = |what: &'static str, width: usize| -> Result<Vec<f32>, InputError> {
            let too_large = || InputError::OutputTooLarge { what, len, width };
            let elements = len.checked_mul(width).ok_or_else(too_large)?;
            let mut buffer = Vec::new();
            buffer.try_reserve_exact(elements).map_err(|_| too_large())?;
            Ok(buffer)
        };
        let mut logits = reserve("logits", vocab)?;
        let observed = if hidden_states { self.layers.len() + 1 } else { 0 };
        let mut states: Vec<Vec<f32>> =
            (0..observed).map(|_| reserve("hidden states", hidden)).collect::<Result<_, _>>()?;
        let mut cache = self.new_cache(1, len, DType::F32).expect("an f32 state is supported by every backend");
        cache.set_prefill_end(len);
        let chunk = self.auto_prefill_chunk(1, len);
        for begin in (0..len).step_by(chunk) {
            let part = self.ids_tensor(&[ids[begin..(begin + chunk).min(len)].to_vec()])?;
            let mut next_state = states.iter_mut();
            let mut failure = None;
            let mut observe = |x: &Tensor<B, 3>| {
                if let Some(state) = next_state.next() {
                    match read_f32(x.clone()) {
                        Ok(values) => state.extend(values),
                        Err(e) => failure = Some(e),
                    }
                }
            };
            let out = self.run_cached(part, &mut cache, false, Some(&mut observe)).expect("the cache holds the prompt");
            if let Some(e) = failure {
                return Err(e.into());
            }
            logits.extend(read_f32(out)?);
        }
        Ok(PromptOutputs { logits, shape: [len, vocab], hidden_states: states })
    }
}
