//! Text ↔ token ids with the checkpoint's `tokenizer.json` (Hugging Face `tokenizers`), BOS handling
//! as the checkpoint says, incremental detokenization for streaming, and stop strings.
//!
//! BOS: the tokenizer's post-processor adds it (Llama-3-style tokenizers, Bamba-9B's among them, put
//! `<|begin_of_text|>` there). That is all transformers 5.24 does for a `PreTrainedTokenizerFast`:
//! checked, an `add_bos_token` in `tokenizer_config.json` changes nothing, so it is not read here.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Errors loading or using a tokenizer.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum TokenizerError {
    #[error("{dir} has no tokenizer.json; text prompts and stop strings need one (or pass token ids)")]
    Missing { dir: PathBuf },
    #[error("malformed tokenizer file {path}: {reason}")]
    Malformed { path: PathBuf, reason: String },
    #[error("could not encode the prompt: {0}")]
    Encode(String),
    #[error("could not decode token ids: {0}")]
    Decode(String),
    #[error("stop strings must not be empty")]
    EmptyStop,
}

/// A loaded tokenizer.
pub struct TextTokenizer {
    inner: tokenizers::Tokenizer,
}

impl TextTokenizer {
    /// The tokenizer of a checkpoint directory, `Ok(None)` when it has no tokenizer.json.
    pub fn from_dir(dir: &Path) -> Result<Option<Self>, TokenizerError> {
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Ok(None);
        }
        let malformed = |reason: String| TokenizerError::Malformed { path: path.clone(), reason };
        let text = crate::files::read_text(&path, crate::files::TEXT_LIMIT).map_err(|e| malformed(e.to_string()))?;
        // The tokenizers crate panics on some files that are not JSON (a cut one, in its decoder's
        // deserializer): check the syntax first, and keep any other panic of its parser an error.
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| malformed(e.to_string()))?;
        let parsed = std::panic::catch_unwind(|| text.parse::<tokenizers::Tokenizer>())
            .map_err(|_| malformed("the tokenizers crate could not read it (it panicked)".into()))?;
        let inner = parsed.map_err(|e| malformed(e.to_string()))?;
        Ok(Some(TextTokenizer { inner }))
    }

    /// Like [`TextTokenizer::from_dir`], but a missing tokenizer.json is an error.
    pub fn require(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_dir(dir)?.ok_or_else(|| TokenizerError::Missing { dir: dir.into() })
    }

    /// Token ids of a prompt, special tokens (BOS) added by the post-processor.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, true).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of text that already holds its special tokens (a rendered chat template): the
    /// post-processor adds nothing, as transformers' `apply_chat_template` tokenizes.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        let encoding = self.inner.encode(text, false).map_err(|e| TokenizerError::Encode(e.to_string()))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of one token, special tokens included (for log-probability listings).
    pub fn token_text(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_default()
    }

    /// Text of token ids, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        self.inner.decode(ids, true).map_err(|e| TokenizerError::Decode(e.to_string()))
    }

    /// An incremental decoder for a stream of new tokens.
    pub fn stream(&self) -> TextStream<'_> {
        TextStream { tokenizer: self, ids: Vec::new(), prefix: 0, read: 0 }
    }
}

/// Turns a stream of token ids into text pieces that are never cut inside a character: a byte-level
/// token may carry half of a UTF-8 sequence, so text is only emitted once it decodes cleanly.
/// Decoding a short window (not a single token) keeps word-boundary spaces right.
pub struct TextStream<'a> {
    tokenizer: &'a TextTokenizer,
    ids: Vec<u32>,
    /// Start of the decode window.
    prefix: usize,
    /// End of the text already emitted.
    read: usize,
}

impl TextStream<'_> {
    /// Adds a token; returns the new text it completes, if any.
    pub fn push(&mut self, id: u32) -> Result<Option<String>, TokenizerError> {
        self.ids.push(id);
        let before = self.tokenizer.decode(&self.ids[self.prefix..self.read])?;
        let now = self.tokenizer.decode(&self.ids[self.prefix..])?;
        if now.len() <= before.len() || now.ends_with('\u{FFFD}') || !now.is_char_boundary(before.len()) {
            return Ok(None);
        }
        let piece = now[before.len()..].to_string();
        self.prefix = self.read;
        self.read = self.ids.len();
        Ok(Some(piece))
    }
}

/// Watches streamed text for stop strings. Text that could still become a stop string is held back,
/// so what was emitted never contains (a part of) one.
pub struct StopStrings {
    stops: Vec<String>,
    /// Text seen so far.
    text: String,
    /// Bytes of `text` already emitted.
    emitted: usize,
}

impl StopStrings {
    /// Watches for `stops`; an empty stop string is an error.
    pub fn new(stops: Vec<String>) -> Result<Self, TokenizerError> {
        if stops.iter().any(String::is_empty) {
            return Err(TokenizerError::EmptyStop);
        }
        Ok(StopStrings { stops, text: String::new(), emitted: 0 })
    }

    /// Adds a piece of text. Returns the text now safe to emit and whether a stop string appeared
    /// (then the text up to it is emitted and the stop string itself is not).
    pub fn push(&mut self, piece: &str) -> (String, bool) {
        let search_from = self.emitted;
        self.text.push_str(piece);
        let hit = self.stops.iter().filter_map(|s| self.text[search_from..].find(s.as_str())).min();
        if let Some(at) = hit {
            let end = search_from + at;
            let out = self.text[self.emitted..end].to_string();
            self.text.truncate(end);
            self.emitted = end;
            return (out, true);
        }
        // hold back the longest tail that is a proper prefix of some stop string
        let held = self
            .stops
            .iter()
            .flat_map(|s| (1..s.len()).filter(|&n| s.is_char_boundary(n)).map(move |n| &s[..n]))
            .filter(|prefix| self.text[self.emitted..].ends_with(prefix))
            .map(str::len)
            .max()
            .unwrap_or(0);
        let end = self.text.len() - held;
        let out = self.text[self.emitted..end].to_string();
        self.emitted = end;
        (out, false)
    }

    /// The text held back at the end of generation.
    pub fn finish(&mut self) -> String {
        let out = self.text[self.emitted..].to_string();
        self.emitted = self.text.len();
        out
    }

    /// All text kept (up to, not including, a stop string).
    pub fn text(&self) -> &str {
        &self.text
    }
}

/// The text side of one generation: incremental decoding and stop strings together. Each token gives
/// the text that is safe to show now; [`TextTokenizer::decode_until_stop`] gives the final text.
pub struct StoppingText<'t> {
    stream: TextStream<'t>,
    stops: StopStrings,
    /// What has been handed out.
    shown: String,
}

impl<'t> StoppingText<'t> {
    /// Decodes tokens of `tokenizer`, stopping before any of `stops`.
    pub fn new(tokenizer: &'t TextTokenizer, stops: StopStrings) -> Self {
        StoppingText { stream: tokenizer.stream(), stops, shown: String::new() }
    }

    /// Adds a token; returns the text to show now and whether a stop string appeared.
    pub fn push(&mut self, token: u32) -> Result<(String, bool), TokenizerError> {
        let Some(piece) = self.stream.push(token)? else { return Ok((String::new(), false)) };
        let (out, stopped) = self.stops.push(&piece);
        self.shown.push_str(&out);
        Ok((out, stopped))
    }

    /// Everything handed out so far.
    pub fn shown(&self) -> &str {
        &self.shown
    }
}

/// The text side of a batch of generations: a [`StoppingText`] per row, and the first decoding error, which
/// stops the whole batch (a token callback cannot return it; [`StoppingRows::texts`] does).
pub struct StoppingRows<'t> {
    tokenizer: &'t TextTokenizer,
    stops: Vec<String>,
    rows: Vec<StoppingText<'t>>,
    failure: Option<TokenizerError>,
}

impl<'t> StoppingRows<'t> {
    /// `rows` generations decoded by `tokenizer`, each stopping before any of `stops` (refused if one is empty).
    pub fn new(tokenizer: &'t TextTokenizer, rows: usize, stops: &[String]) -> Result<Self, TokenizerError> {
        let rows = (0..rows)
            .map(|_| Ok(StoppingText::new(tokenizer, StopStrings::new(stops.to_vec())?)))
            .collect::<Result<_, TokenizerError>>()?;
        Ok(StoppingRows { tokenizer, stops: stops.to_vec(), rows, failure: None })
    }

    /// Adds row `row`'s next token: the text to show now, and whether the row goes on (not after a stop
    /// string; no row goes on after a decoding error).
    pub fn push(&mut self, row: usize, token: u32) -> (String, bool) {
        if self.failure.is_some() {
            return (String::new(), false);
        }
        match self.rows[row].push(token) {
            Ok((text, stopped)) => (text, !stopped),
            Err(e) => {
                self.failure = Some(e);
                (String::new(), false)
            }
        }
    }

    /// Everything row `row` has shown so far.
    pub fn shown(&self, row: usize) -> &str {
        self.rows[row].shown()
    }

    /// Each row's final text from its generated `ids` (decoded at once, cut before the first stop
    /// string), or the decoding error that stopped the batch.
    pub fn texts<'a>(&mut self, ids: impl IntoIterator<Item = &'a [u32]>) -> Result<Vec<String>, TokenizerError> {
        if let Some(e) = self.failure.take() {
            return Err(e);
        }
        ids.into_iter().map(|ids| self.tokenizer.decode_until_stop(ids, &self.stops)).collect()
    }
}

impl TextTokenizer {
    /// The text of `ids` decoded at once, cut before the first of `stops`: a generation's final text,
    /// of which what [`StoppingText`] showed is a prefix.
    pub fn decode_until_stop(&self, ids: &[u32], stops: &[String]) -> Result<String, TokenizerError> {
        let mut text = self.decode(ids)?;
        if let Some(at) = stops.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(at);
        }
        Ok(text)
    }
}
