//! The OpenAI request bodies `bamba serve` accepts (`presence_penalty` and `frequency_penalty` among
//! them, and vLLM's extensions: `top_k`, `min_p`, `repetition_penalty`, `stop_token_ids`, `ignore_eos`,
//! `return_token_ids`), checked into engine
//! parameters before anything is queued.

use bamba_model::engine::RequestParams;
use bamba_model::SamplingParams;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::error::ApiError;

/// Most choices per request (`n`).
pub const MAX_N: u32 = 16;
/// Most `top_logprobs` / completion `logprobs`.
pub const MAX_LOGPROBS: u32 = 20;
/// Most stop strings per request.
pub const MAX_STOPS: usize = 16;

/// `prompt` in every form OpenAI allows.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptInput {
    Text(String),
    Ids(Vec<u32>),
    Texts(Vec<String>),
    IdLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields shared by completions and chat.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct Sampling {
    pub model: Option<String>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    /// vLLM: -1 or 0 means off.
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopInput>,
    pub stop_token_ids: Option<Vec<u32>>,
    pub ignore_eos: Option<bool>,
    pub n: Option<u32>,
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub return_token_ids: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: PromptInput,
    pub max_tokens: Option<u64>,
    /// Top log-probabilities per token (an integer for completions).
    pub logprobs: Option<u32>,
    pub echo: Option<bool>,
    pub suffix: Option<String>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Vec<serde_json::Value>,
    pub max_tokens: Option<u64>,
    pub max_completion_tokens: Option<u64>,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<u32>,
    pub add_generation_prompt: Option<bool>,
    pub tools: Option<serde_json::Value>,
    #[serde(flatten)]
    pub sampling: Sampling,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TokenizeRequest {
    pub prompt: Option<String>,
    pub messages: Option<Vec<serde_json::Value>>,
    pub add_special_tokens: Option<bool>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DetokenizeRequest {
    pub tokens: Vec<u32>,
    pub model: Option<String>,
}

/// Parses a JSON body into `T`, answering 400 with serde's reason on malformed JSON or wrong types.
pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let what = if e.is_syntax() || e.is_eof() { "malformed JSON" } else { "invalid request" };
        ApiError::bad_request(format!("{what}: {e}"))
    })
}

/// What the engine and the text layer need from a request's sampling fields.
#[derive(Debug, Clone)]
pub struct Checked {
    pub params: RequestParams,
    pub stops: Vec<String>,
    pub n: u32,
    pub stream: bool,
    pub include_usage: bool,
    pub return_token_ids: bool,
}

impl Sampling {
    /// Checks the shared fields; `max_tokens` and `logprobs` come from the endpoint's own fields.
    pub fn check(&self, max_tokens: usize, logprobs: Option<u32>, eos_ids: &[u32]) -> Result<Checked, ApiError> {
        let n = self.n.unwrap_or(1);
        if n == 0 || n > MAX_N {
            return Err(ApiError::bad_request(format!("n must be between 1 and {MAX_N}, got {n}")).param("n"));
        }
        if let Some(k) = logprobs.filter(|&k| k > MAX_LOGPROBS) {
            return Err(
                ApiError::bad_request(format!("logprobs must be at most {MAX_LOGPROBS}, got {k}")).param("logprobs")
            );
        }
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => None,
            Some(k) if k > 0 => Some(k as usize),
            Some(k) => {
                return Err(ApiError::bad_request(format!("top_k must be -1 (off) or >= 1, got {k}")).param("top_k"))
            }
        };
        let sampling = SamplingParams {
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.filter(|&p| p != 1.0),
            min_p: self.min_p.filter(|&p| p != 0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            seed: self.seed.unwrap_or_else(rand::random),
        };
        sampling.validate().map_err(|e| ApiError::bad_request(e.to_string()))?;
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopInput::One(s)) => vec![s.clone()],
            Some(StopInput::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS {
            return Err(ApiError::bad_request(format!("at most {MAX_STOPS} stop strings")).param("stop"));
        }
        if stops.iter().any(String::is_empty) {
            return Err(ApiError::bad_request("stop strings must not be empty").param("stop"));
        }
        let params = RequestParams {
            sampling,
            max_tokens,
            eos_ids: eos_ids.to_vec(),
            ignore_eos: self.ignore_eos.unwrap_or(false),
            stop_token_ids: self.stop_token_ids.clone().unwrap_or_default(),
            logprobs: logprobs.map(|k| k as usize),
            prompt_logprobs: None,
        };
        Ok(Checked {
            params,
            stops,
            n,
            stream: self.stream.unwrap_or(false),
            include_usage: self.stream_options.as_ref().is_some_and(|o| o.include_usage),
            return_token_ids: self.return_token_ids.unwrap_or(false),
        })
    }
}
