//! The whole pipeline behind one type, for programs that embed the engine: a checkpoint (a directory
//! or a Hugging Face repo id) loaded on a backend chosen at run time, with its tokenizer and
//! end-of-sequence ids; text in, text out (whole, streamed piece by piece, or for a batch), and
//! logits.
//!
//! ```no_run
//! use bamba_model::{HubOptions, TextModel, TextOptions};
//!
//! # fn main() -> Result<(), bamba_model::TextModelError> {
//! let model = TextModel::builder("ibm-ai-platform/Bamba-9B").hub(HubOptions::from_env()).load()?;
//! let options = TextOptions::default().max_new_tokens(64).stop(["\n\n"]);
//! for piece in model.stream("The capital of France is", &options)? {
//!     print!("{}", piece?);
//! }
//! # Ok(())
//! # }
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use bamba_kernels::BambaOps;
use thiserror::Error;

use crate::backend::{dispatch, BackendError, BackendJob, BackendKind};
use crate::config::{BambaConfig, ConfigError};
use crate::generate::{eos_ids, FinishReason, GenerateError, GenerateParams, Generation};
use crate::hub::{resolve, HubError, HubOptions};
use crate::loader::{LoadError, Precision};
use crate::model::{BambaModel, InputError};
use crate::sampling::{Sampler, SamplingError, SamplingParams};
use crate::tokenizer::{StopStrings, StoppingRows, StoppingText, TextTokenizer, TokenizerError};

/// Errors of the text pipeline.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum TextModelError {
    #[error(transparent)]
    Hub(#[from] HubError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("loading {path}: {source}")]
    Load { path: PathBuf, source: LoadError },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{0} has no tokenizer.json, so text cannot be encoded; use the token-id methods")]
    NoTokenizer(PathBuf),
    #[error(transparent)]
    Sampling(#[from] SamplingError),
    #[error(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    Input(#[from] InputError),
}

/// What to generate: length, sampling and stop strings. The checkpoint's end-of-sequence ids always
/// end a generation (unless [`GenerateParams::ignore_eos`]); `generate.eos_ids` adds more.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TextOptions {
    /// Length, prefill chunking, state precision, extra end-of-sequence ids.
    pub generate: GenerateParams,
    /// Temperature, top-k/p, min-p, penalties, seed (default greedy).
    pub sampling: SamplingParams,
    /// Generation ends before the first of these; the text never contains one.
    pub stop: Vec<String>,
}

impl TextOptions {
    /// Sets `generate.max_new_tokens`.
    pub fn max_new_tokens(mut self, n: usize) -> Self {
        self.generate.max_new_tokens = n;
        self
    }
    /// Sets the sampling parameters.
    pub fn sampling(mut self, sampling: SamplingParams) -> Self {
        self.sampling = sampling;
        self
    }
    /// Sets the stop strings.
    pub fn stop<S: Into<String>>(mut self, stops: impl IntoIterator<Item = S>) -> Self {
        self.stop = stops.into_iter().map(Into::into).collect();
        self
    }
}

/// One prompt's result.
#[derive(Debug, Clone, PartialEq)]
pub struct TextGeneration {
    /// The new text, cut before a stop string.
    pub text: String,
    /// The new tokens (an end-of-sequence token included, as transformers does).
    pub ids: Vec<u32>,
    /// Why it ended: `Stop` for a stop string.
    pub finish: FinishReason,
    /// Tokens in the prompt.
    pub prompt_tokens: usize,
    /// Time of the prompt's prefill.
    pub prefill_time: Duration,
    /// Time of the decode steps.
    pub decode_time: Duration,
}

/// Loads a [`TextModel`]: `TextModel::builder(path_or_repo_id)…load()`.
pub struct TextModelBuilder {
    model: String,
    hub: Option<HubOptions>,
    backend: Option<BackendKind>,
    precision: Option<Precision>,
}

impl TextModelBuilder {
    /// Resolves repo ids with `options` (without them, only directories load).
    pub fn hub(mut self, options: HubOptions) -> Self {
        self.hub = Some(options);
        self
    }
    /// The backend (default: the fastest compiled in, [`BackendKind::best_compiled`]).
    pub fn backend(mut self, kind: BackendKind) -> Self {
        self.backend = Some(kind);
        self
    }
    /// The compute precision (default: the backend's, [`BackendKind::default_precision`]).
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = Some(precision);
        self
    }

    /// Finds the checkpoint, reads its config, tokenizer and end-of-sequence ids, and loads its
    /// weights onto the backend.
    pub fn load(self) -> Result<TextModel, TextModelError> {
        let dir = match &self.hub {
            Some(options) => resolve(&self.model, options)?,
            None if Path::new(&self.model).exists() => PathBuf::from(&self.model),
            None => return Err(HubError::NotFound(self.model.clone()).into()),
        };
        let backend = match self.backend {
            Some(kind) => kind,
            None => BackendKind::best_compiled()?,
        };
        let precision = self.precision.unwrap_or(backend.default_precision());
        let config = BambaConfig::from_path(&dir)?;
        let tokenizer = TextTokenizer::from_dir(&dir)?;
        let eos_ids = eos_ids(&dir, &config.eos_token_ids)?;
        let pipeline = dispatch(backend, LoadJob { dir: &dir, precision })?
            .map_err(|source| TextModelError::Load { path: dir.clone(), source })?;
        Ok(TextModel { pipeline, tokenizer, eos_ids, dir, backend, precision })
    }
}

/// A loaded model with its tokenizer, on a backend picked at run time. See the [module
/// docs](self) for an example.
pub struct TextModel {
    pipeline: Box<dyn Pipeline + Send + Sync>,
    tokenizer: Option<TextTokenizer>,
    eos_ids: Vec<u32>,
    dir: PathBuf,
    backend: BackendKind,
    precision: Precision,
}

impl TextModel {
    /// A builder for the checkpoint at `model`: a directory, or (with [`TextModelBuilder::hub`]) a
    /// Hugging Face repo id.
    pub fn builder(model: impl Into<String>) -> TextModelBuilder {
        TextModelBuilder { model: model.into(), hub: None, backend: None, precision: None }
    }

    /// The model's configuration (layer plan, sizes).
    pub fn config(&self) -> &BambaConfig {
        self.pipeline.config()
    }
    /// The checkpoint directory it was loaded from.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The backend it runs on.
    pub fn backend(&self) -> BackendKind {
        self.backend
    }
    /// The precision it computes in.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The tokenizer, when the checkpoint has one.
    pub fn tokenizer(&self) -> Option<&TextTokenizer> {
        self.tokenizer.as_ref()
    }
    /// The checkpoint's end-of-sequence ids (generation_config.json, else config.json).
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// `text` as token ids (with the tokenizer's special tokens, as transformers encodes prompts).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TextModelError> {
        Ok(self.text_tokenizer()?.encode(text)?)
    }

    /// Token ids as text.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TextModelError> {
        Ok(self.text_tokenizer()?.decode(ids)?)
    }

    /// Generates after `prompt` and returns the whole text.
    ///
    /// ```
    /// use bamba_model::{BackendKind, TextModel, TextOptions};
    ///
    /// # fn main() -> Result<(), bamba_model::TextModelError> {
    /// # if !BackendKind::Ndarray.is_compiled() { return Ok(()) }
    /// let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../bamba-cli/assets/tiny-bamba");
    /// let model = TextModel::builder(dir).backend(BackendKind::Ndarray).load()?;
    /// let out = model.generate("Phileas Fogg", &TextOptions::default().max_new_tokens(8))?;
    /// assert_eq!(out.ids.len(), 8);
    /// assert_eq!(out.text, model.decode(&out.ids)?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn generate(&self, prompt: &str, options: &TextOptions) -> Result<TextGeneration, TextModelError> {
        Ok(self.generate_batch(&[prompt], options)?.pop().expect("one prompt, one result"))
    }

    /// Generates after each prompt, all in one left-padded batch (each row equals running it alone;
    /// each row samples with its own sampler from `options.sampling`).
    pub fn generate_batch(
        &self,
        prompts: &[&str],
        options: &TextOptions,
    ) -> Result<Vec<TextGeneration>, TextModelError> {
        let tokenizer = self.text_tokenizer()?;
        let mut rows = StoppingRows::new(tokenizer, prompts.len(), &options.stop)?;
        let mut samplers: Vec<Sampler> =
            prompts.iter().map(|_| Sampler::new(options.sampling.clone())).collect::<Result<_, _>>()?;
        let ids: Vec<Vec<u32>> = prompts.iter().map(|p| tokenizer.encode(p)).collect::<Result<_, _>>()?;
        let params = self.params(&options.generate);
        let outs = self.pipeline.generate_batch(&ids, &params, &mut samplers, &mut |r, token| rows.push(r, token).1)?;
        let texts = rows.texts(outs.iter().map(|out| &out.ids[..]))?;
        Ok(outs
            .into_iter()
            .zip(texts)
            .map(|(out, text)| TextGeneration {
                text,
                ids: out.ids,
                finish: out.finish,
                prompt_tokens: out.prompt_tokens,
                prefill_time: out.prefill_time,
                decode_time: out.decode_time,
            })
            .collect())
    }

    /// The new text after `prompt`, piece by piece as tokens are chosen (never a piece inside a
    /// character, never a part of a stop string). The prompt is prefilled here; each `next()`
    /// runs decode steps until a piece is ready. Dropping the iterator stops early.
    pub fn stream(&self, prompt: &str, options: &TextOptions) -> Result<TextPieces<'_>, TextModelError> {
        let tokenizer = self.text_tokenizer()?;
        let text = StoppingText::new(tokenizer, StopStrings::new(options.stop.clone())?);
        let ids = tokenizer.encode(prompt)?;
        let tokens = self.stream_ids(&ids, options)?;
        Ok(TextPieces { tokens, text, tokenizer, stop: options.stop.clone(), ids: Vec::new(), done: false })
    }

    /// The new token ids after `prompt` (ids), one decode step per `next()`.
    pub fn stream_ids<'a>(
        &'a self,
        prompt: &[u32],
        options: &TextOptions,
    ) -> Result<Box<dyn Iterator<Item = Result<u32, GenerateError>> + 'a>, TextModelError> {
        let sampler = Sampler::new(options.sampling.clone())?;
        Ok(self.pipeline.stream(prompt, &self.params(&options.generate), sampler)?)
    }

    /// The logits of every position of `ids` (one forward, no cache), as f32.
    pub fn logits(&self, ids: &[u32]) -> Result<Logits, TextModelError> {
        self.pipeline.logits(ids).map_err(|e| match e {
            GenerateError::Input(e) => TextModelError::Input(e),
            e => TextModelError::Generate(e),
        })
    }

    fn text_tokenizer(&self) -> Result<&TextTokenizer, TextModelError> {
        self.tokenizer.as_ref().ok_or_else(|| TextModelError::NoTokenizer(self.dir.clone()))
    }

    /// `params` with the checkpoint's end-of-sequence ids added.
    fn params(&self, params: &GenerateParams) -> GenerateParams {
        let mut params = params.clone();
        params
            .eos_ids
            .extend(self.eos_ids.iter().filter(|id| !params.eos_ids.contains(id)).copied().collect::<Vec<_>>());
        params
    }
}

/// Text pieces of one generation, made by [`TextModel::stream`].
pub struct TextPieces<'a> {
    tokens: Box<dyn Iterator<Item = Result<u32, GenerateError>> + 'a>,
    text: StoppingText<'a>,
    tokenizer: &'a TextTokenizer,
    stop: Vec<String>,
    /// The new tokens so far.
    ids: Vec<u32>,
    done: bool,
}

impl TextPieces<'_> {
    /// The new tokens so far.
    pub fn ids(&self) -> &[u32] {
        &self.ids
    }
}

impl Iterator for TextPieces<'_> {
    type Item = Result<String, TextModelError>;

    fn next(&mut self) -> Option<Self::Item> {
        while !self.done {
            match self.tokens.next() {
                Some(Ok(token)) => {
                    self.ids.push(token);
                    match self.text.push(token) {
                        Ok((piece, stopped)) => {
                            self.done = stopped;
                            if !piece.is_empty() {
                                return Some(Ok(piece));
                            }
                        }
                        Err(e) => {
                            self.done = true;
                            return Some(Err(e.into()));
                        }
                    }
                }
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(e.into()));
                }
                None => {
                    // the end: what was held back as a possible stop string's beginning
                    self.done = true;
                    let rest = match self.tokenizer.decode_until_stop(&self.ids, &self.stop) {
                        Ok(text) => text.strip_prefix(self.text.shown()).unwrap_or("").to_string(),
                        Err(e) => return Some(Err(e.into())),
                    };
                    if !rest.is_empty() {
                        return Some(Ok(rest));
                    }
                }
            }
        }
        None
    }
}

/// The model on one backend, behind a type that does not name the backend.
trait Pipeline {
    fn config(&self) -> &BambaConfig;
    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        samplers: &mut [Sampler],
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generation>, GenerateError>;
    fn stream<'a>(
        &'a self,
        prompt: &[u32],
        params: &GenerateParams,
        sampler: Sampler,
    ) -> Result<Box<dyn Iterator<Item = Result<u32, GenerateError>> + 'a>, GenerateError>;
    fn logits(&self, ids: &[u32]) -> Result<Logits, GenerateError>;
}

impl<B: BambaOps> Pipeline for BambaModel<B> {
    fn config(&self) -> &BambaConfig {
        &self.config
    }
    fn generate_batch(
        &self,
        prompts: &[Vec<u32>],
        params: &GenerateParams,
        samplers: &mut [Sampler],
        on_token: &mut dyn FnMut(usize, u32) -> bool,
    ) -> Result<Vec<Generation>, GenerateError> {
        BambaModel::generate_batch(self, prompts, params, samplers, on_token)
    }
    fn stream<'a>(
        &'a self,
        prompt: &[u32],
        params: &GenerateParams,
        sampler: Sampler,
    ) -> Result<Box<dyn Iterator<Item = Result<u32, GenerateError>> + 'a>, GenerateError> {
        Ok(Box::new(BambaModel::stream(self, prompt, params, sampler)?))
    }
    fn logits(&self, ids: &[u32]) -> Result<Logits, GenerateError> {
        let (values, [_, vocab]) = self.prompt_logits(ids)?;
        Ok(Logits { values, vocab })
    }
}

/// The logits of every position of a prompt in one host buffer, as the backend returned them.
#[derive(Debug, Clone, PartialEq)]
pub struct Logits {
    /// `[positions, vocab]`, row-major.
    pub values: Vec<f32>,
    /// The length of a row.
    pub vocab: usize,
}

impl Logits {
    /// Positions (rows).
    pub fn len(&self) -> usize {
        self.values.len().checked_div(self.vocab).unwrap_or(0)
    }

    /// Whether there are no positions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Position `i`'s row, `vocab` long; `None` past the last.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.values.get(i * self.vocab..(i + 1) * self.vocab)
    }

    /// The rows in order.
    pub fn rows(&self) -> impl Iterator<Item = &[f32]> {
        self.values.chunks_exact(self.vocab.max(1))
    }

    /// The last position's row (what the next token is drawn from).
    pub fn last(&self) -> Option<&[f32]> {
        self.len().checked_sub(1).and_then(|i| self.row(i))
    }
}

/// Loads the weights on the backend [`dispatch`] picks.
struct LoadJob<'a> {
    dir: &'a Path,
    precision: Precision,
}

impl BackendJob for LoadJob<'_> {
    type Output = Result<Box<dyn Pipeline + Send + Sync>, LoadError>;
    fn run<B: BambaOps>(self, device: B::Device) -> Self::Output {
        Ok(Box::new(BambaModel::<B>::load(self.dir, &device, self.precision)?))
    }
}
