//! The HTTP routes: OpenAI completions and chat (one-shot or SSE), models, health, metrics,
//! tokenize/detokenize; API-key and body-size checks in front.

use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bamba_model::engine::{EngineHandle, Request as EngineRequest};
use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};

use super::api::{self, ChatRequest, Checked, CompletionRequest, DetokenizeRequest, PromptInput, TokenizeRequest};
use super::error::ApiError;
use super::generation::{updates, Job, TokenLogprob, Update};
use super::AppState;

pub fn router(state: Arc<AppState>) -> Router {
    let limit = state.options.max_body_bytes;
    let v1 = Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat))
        .route("/v1/models", get(models))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(v1)
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "no such route") })
        .layer(middleware::from_fn_with_state(state.clone(), limit_body))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// 413 from `Content-Length` before the body is read.
async fn limit_body(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let declared =
        request.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    let limit = state.options.max_body_bytes;
    if declared.is_some_and(|n| n > limit as u64) {
        return too_large(limit).into_response();
    }
    next.run(request).await
}

fn too_large(limit: usize) -> ApiError {
    ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, format!("the request body is larger than {limit} bytes"))
}

/// 401 unless `Authorization: Bearer <key>` matches `--api-key` (when set).
async fn require_key(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.options.api_key {
        let given = request.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given.and_then(|v| v.strip_prefix("Bearer ")) != Some(key.as_str()) {
            return ApiError::new(StatusCode::UNAUTHORIZED, "invalid or missing API key").into_response();
        }
    }
    next.run(request).await
}

/// The body, or 413 when a body without `Content-Length` runs past the limit.
fn body(state: &AppState, body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| match e.status() {
        StatusCode::PAYLOAD_TOO_LARGE => too_large(state.options.max_body_bytes),
        status => ApiError::new(status, e.body_text()),
    })
}

fn engine(state: &AppState) -> Result<&EngineHandle, ApiError> {
    state.engine.get().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading"))
}

fn check_model(state: &AppState, model: &Option<String>) -> Result<(), ApiError> {
    match model {
        Some(name) if *name != state.options.served_model_name => {
            Err(ApiError::new(StatusCode::NOT_FOUND, format!("The model `{name}` does not exist.")).param("model"))
        }
        _ => Ok(()),
    }
}

fn now_seconds() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    match state.engine.get() {
        Some(handle) if !handle.stats().draining.load(Ordering::Relaxed) => {
            (StatusCode::OK, Json(json!({}))).into_response()
        }
        Some(_) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down").into_response(),
        None => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the model is still loading").into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let text = state.metrics.render(state.engine.get().map(EngineHandle::stats));
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

async fn models(State(state): State<Arc<AppState>>) -> Json<Value> {
    Json(json!({"object": "list", "data": [{
        "id": state.options.served_model_name,
        "object": "model",
        "created": state.created,
        "owned_by": "bamba",
        "root": state.options.served_model_name,
        "max_model_len": state.options.max_model_len,
    }]}))
}

fn tokenizer(state: &AppState) -> Result<&bamba_model::TextTokenizer, ApiError> {
    state.tokenizer.as_deref().ok_or_else(|| {
        ApiError::bad_request("this model has no tokenizer.json: send prompts as token ids").param("prompt")
    })
}

fn encode(state: &AppState, text: &str, plain: bool) -> Result<Vec<u32>, ApiError> {
    let t = tokenizer(state)?;
    let ids = if plain { t.encode_plain(text) } else { t.encode(text) };
    ids.map_err(|e| ApiError::bad_request(e.to_string()).param("prompt"))
}

/// The text of token ids sent as the request's `param`, each checked against the vocabulary.
fn decode(
    state: &AppState,
    t: &bamba_model::TextTokenizer,
    ids: &[u32],
    param: &'static str,
) -> Result<String, ApiError> {
    let vocab = state.vocab_size;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(
            ApiError::bad_request(format!("token id {bad} is outside the vocabulary (size {vocab})")).param(param)
        );
    }
    t.decode(ids).map_err(|e| ApiError::bad_request(e.to_string()).param(param))
}

async fn tokenize(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: TokenizeRequest = api::parse(&body(&state, raw)?)?;
    check_model(&state, &request.model)?;
    let ids = match (&request.prompt, &request.messages) {
        (Some(prompt), None) => encode(&state, prompt, !request.add_special_tokens.unwrap_or(true))?,
        (None, Some(messages)) => encode(&state, &chat_prompt(&state, messages, true, None)?, true)?,
        _ => return Err(ApiError::bad_request("give either `prompt` or `messages`")),
    };
    Ok(Json(json!({"tokens": ids, "count": ids.len(), "max_model_len": state.options.max_model_len})).into_response())
}

async fn detokenize(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: DetokenizeRequest = api::parse(&body(&state, raw)?)?;
    check_model(&state, &request.model)?;
    let text = decode(&state, tokenizer(&state)?, &request.tokens, "tokens")?;
    Ok(Json(json!({"prompt": text})).into_response())
}

fn chat_prompt(
    state: &AppState,
    messages: &[Value],
    add_generation_prompt: bool,
    tools: Option<&Value>,
) -> Result<String, ApiError> {
    let template = state.template.as_ref().ok_or_else(|| {
        ApiError::bad_request(
            "As of transformers v4.44, default chat template is no longer allowed, so you must provide a chat \
             template if the tokenizer does not define one.",
        )
    })?;
    template.render(messages, add_generation_prompt, tools)
}

/// Submits `n` choices of every prompt; the job's streams are in choice-index order.
fn submit(state: &AppState, prompts: &[Vec<u32>], checked: &Checked, id: String) -> Result<Job, ApiError> {
    let handle = engine(state)?;
    let mut requests = Vec::new();
    for prompt in prompts {
        for choice in 0..checked.n {
            let mut params = checked.params.clone();
            params.sampling.seed = params.sampling.seed.wrapping_add(u64::from(choice));
            requests.push(EngineRequest { prompt: prompt.clone(), params });
        }
    }
    // all choices of all prompts in one step of the engine, or none
    let streams = handle.submit_all(requests)?;
    Ok(Job {
        id,
        streams,
        prompt_tokens: prompts.iter().map(Vec::len).sum(),
        choices_per_prompt: checked.n as usize,
        stops: checked.stops.clone(),
        arrival: Instant::now(),
    })
}

fn max_tokens(value: Option<u64>, default: usize) -> usize {
    value.map_or(default, |v| usize::try_from(v).unwrap_or(usize::MAX))
}

async fn completions(
    State(state): State<Arc<AppState>>,
    raw: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let request: CompletionRequest = api::parse(&body(&state, raw)?)?;
    check_model(&state, &request.sampling.model)?;
    if request.suffix.is_some() {
        return Err(ApiError::bad_request("suffix is not supported").param("suffix"));
    }
    let prompts: Vec<Vec<u32>> = match &request.prompt {
        PromptInput::Text(text) => vec![encode(&state, text, false)?],
        PromptInput::Texts(texts) => texts.iter().map(|t| encode(&state, t, false)).collect::<Result<_, _>>()?,
        PromptInput::Ids(ids) => vec![ids.clone()],
        PromptInput::IdLists(lists) => lists.clone(),
    };
    if prompts.is_empty() {
        return Err(ApiError::bad_request("the prompt list is empty").param("prompt"));
    }
    let echo = request.echo == Some(true);
    let prompt_texts: Vec<String> = match &request.prompt {
        PromptInput::Text(text) if echo => vec![text.clone()],
        PromptInput::Texts(texts) if echo => texts.clone(),
        // without a tokenizer there is no text to echo
        _ if echo => match state.tokenizer.as_deref() {
            Some(t) => prompts.iter().map(|ids| decode(&state, t, ids, "prompt")).collect::<Result<_, _>>()?,
            None => vec![String::new(); prompts.len()],
        },
        _ => Vec::new(),
    };
    let mut checked = request.sampling.check(max_tokens(request.max_tokens, 16), request.logprobs, &state.eos_ids)?;
    if echo {
        // the prompt's log-probabilities come with its echo, before the first new token (also
        // with max_tokens 0, where they are all there is)
        checked.params.prompt_logprobs = Some(checked.params.logprobs.unwrap_or(0));
    }
    let id = format!("cmpl-{}", state.next_request_id());
    let job = submit(&state, &prompts, &checked, id.clone())?;
    let choices_per_prompt = checked.n as usize;
    let total_choices = prompts.len() * choices_per_prompt;
    let return_ids = checked.return_token_ids || state.tokenizer.is_none();
    let prompt_ids = move |index: usize| prompts[index / choices_per_prompt].clone();
    let stream = updates(state.clone(), job);
    let head = json!({"id": id, "object": "text_completion", "created": now_seconds(), "model": state.options.served_model_name});
    let want_logprobs = checked.params.logprobs.is_some();
    let tokenizer = state.tokenizer.clone();
    let first_token_name = move |id: u32| super::generation::token_text(tokenizer.as_deref(), id);
    if checked.stream {
        let include_usage = checked.include_usage;
        let mut sent_prompt = vec![false; total_choices];
        let events = stream.map(move |update| {
            let data = match update {
                Update::Prompt { index, logprobs } => {
                    let ids = prompt_ids(index);
                    let lp = if want_logprobs { echo_logprobs(&first_token_name(ids[0]), &logprobs, &[]) } else { Value::Null };
                    let mut choice = json!({"index": index, "text": prompt_texts[index / choices_per_prompt], "logprobs": lp, "finish_reason": null});
                    if return_ids {
                        choice["token_ids"] = json!([]);
                        choice["prompt_token_ids"] = json!(ids);
                        sent_prompt[index] = true;
                    }
                    with(&head, json!([choice]))
                }
                Update::Delta { index, text, token_ids, logprobs } => {
                    let mut choice = json!({"index": index, "text": text, "logprobs": completion_logprobs(&logprobs), "finish_reason": null});
                    if return_ids {
                        choice["token_ids"] = json!(token_ids);
                        if !sent_prompt.get(index).copied().unwrap_or(true) {
                            choice["prompt_token_ids"] = json!(prompt_ids(index));
                            sent_prompt[index] = true;
                        }
                    }
                    with(&head, json!([choice]))
                }
                Update::Finish { index, reason } => {
                    with(&head, json!([{"index": index, "text": "", "logprobs": null, "finish_reason": reason}]))
                }
                Update::Usage { prompt_tokens, completion_tokens, cached_tokens } if include_usage => {
                    let mut chunk = with(&head, json!([]));
                    chunk["usage"] = usage(prompt_tokens, completion_tokens, cached_tokens);
                    chunk
                }
                Update::Usage { .. } => return None,
                Update::Failed(message) => ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).body(),
            };
            Some(data)
        });
        return Ok(sse(events));
    }
    let (outputs, usage_value) = collect(stream, total_choices).await?;
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let logprobs = match (&o.prompt_logprobs, want_logprobs) {
                (_, false) => Value::Null,
                (Some(prompt), true) => echo_logprobs(&first_token_name(prompt_ids(i)[0]), prompt, &o.logprobs),
                (None, true) => completion_logprobs(&o.logprobs),
            };
            let text = match echo {
                true => format!("{}{}", prompt_texts[i / choices_per_prompt], o.text),
                false => o.text.clone(),
            };
            let mut c = json!({"index": i, "text": text, "logprobs": logprobs, "finish_reason": o.finish_reason});
            if return_ids {
                c["prompt_token_ids"] = json!(prompt_ids(i));
                c["token_ids"] = json!(o.token_ids);
            }
            c
        })
        .collect();
    let mut out = with(&head, json!(choices));
    out["usage"] = usage_value;
    Ok(Json(out).into_response())
}

/// Everything one choice produced, for a one-shot response.
struct ChoiceOutput {
    text: String,
    token_ids: Vec<u32>,
    logprobs: Vec<TokenLogprob>,
    /// The prompt's tokens after the first with their log-probabilities, where asked for (echo).
    prompt_logprobs: Option<Vec<TokenLogprob>>,
    finish_reason: &'static str,
}

/// Reads a request's updates to the end: each of its `choices` outputs, and the usage object.
async fn collect(stream: impl Stream<Item = Update>, choices: usize) -> Result<(Vec<ChoiceOutput>, Value), ApiError> {
    let mut outputs: Vec<ChoiceOutput> = (0..choices)
        .map(|_| ChoiceOutput {
            text: String::new(),
            token_ids: Vec::new(),
            logprobs: Vec::new(),
            prompt_logprobs: None,
            finish_reason: "stop",
        })
        .collect();
    let mut usage_value = Value::Null;
    let mut stream = std::pin::pin!(stream);
    while let Some(update) = stream.next().await {
        match update {
            Update::Delta { index, text, token_ids, logprobs } => {
                let o = &mut outputs[index];
                o.text.push_str(&text);
                o.token_ids.extend(token_ids);
                o.logprobs.extend(logprobs);
            }
            Update::Prompt { index, logprobs } => outputs[index].prompt_logprobs = Some(logprobs),
            Update::Finish { index, reason } => outputs[index].finish_reason = reason,
            Update::Usage { prompt_tokens, completion_tokens, cached_tokens } => {
                usage_value = usage(prompt_tokens, completion_tokens, cached_tokens)
            }
            Update::Failed(message) => return Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)),
        }
    }
    Ok((outputs, usage_value))
}

async fn chat(State(state): State<Arc<AppState>>, raw: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let request: ChatRequest = api::parse(&body(&state, raw)?)?;
    check_model(&state, &request.sampling.model)?;
    if request.messages.is_empty() {
        return Err(ApiError::bad_request("messages must not be empty").param("messages"));
    }
    let text =
        chat_prompt(&state, &request.messages, request.add_generation_prompt.unwrap_or(true), request.tools.as_ref())?;
    let prompt = encode(&state, &text, true)?;
    let remaining = state.options.max_model_len.saturating_sub(prompt.len()).max(1);
    let top = match (request.logprobs, request.top_logprobs) {
        (Some(true), top) => Some(top.unwrap_or(0)),
        (_, Some(_)) => return Err(ApiError::bad_request("top_logprobs needs logprobs: true").param("top_logprobs")),
        _ => None,
    };
    let limit = max_tokens(request.max_completion_tokens.or(request.max_tokens), remaining);
    let checked = request.sampling.check(limit, top, &state.eos_ids)?;
    let id = format!("chatcmpl-{}", state.next_request_id());
    let prompts = vec![prompt];
    let job = submit(&state, &prompts, &checked, id.clone())?;
    let return_ids = checked.return_token_ids;
    let stream = updates(state.clone(), job);
    let head = json!({"id": id, "object": "chat.completion.chunk", "created": now_seconds(), "model": state.options.served_model_name});
    if checked.stream {
        let include_usage = checked.include_usage;
        let n = checked.n as usize;
        let mut started = vec![false; n];
        let want_logprobs = checked.params.logprobs.is_some();
        let events = stream.flat_map(move |update| {
            let mut out = Vec::new();
            match update {
                Update::Delta { index, text, token_ids, logprobs } => {
                    let mut delta = json!({"content": text});
                    if !started[index] {
                        started[index] = true;
                        delta["role"] = json!("assistant");
                    }
                    let lp = if want_logprobs { json!({"content": chat_logprobs(&logprobs)}) } else { Value::Null };
                    let mut choice = json!({"index": index, "delta": delta, "logprobs": lp, "finish_reason": null});
                    if return_ids {
                        choice["token_ids"] = json!(token_ids);
                    }
                    out.push(Some(with(&head, json!([choice]))));
                }
                Update::Finish { index, reason } => {
                    out.push(Some(with(
                        &head,
                        json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}]),
                    )));
                }
                Update::Usage { prompt_tokens, completion_tokens, cached_tokens } if include_usage => {
                    let mut chunk = with(&head, json!([]));
                    chunk["usage"] = usage(prompt_tokens, completion_tokens, cached_tokens);
                    out.push(Some(chunk));
                }
                Update::Usage { .. } | Update::Prompt { .. } => {}
                Update::Failed(message) => {
                    out.push(Some(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message).body()))
                }
            }
            futures_util::stream::iter(out)
        });
        return Ok(sse(events));
    }
    let (outputs, usage_value) = collect(stream, checked.n as usize).await?;
    let choices: Vec<Value> = outputs
        .iter()
        .enumerate()
        .map(|(i, o)| {
            let logprobs = if checked.params.logprobs.is_some() {
                json!({"content": chat_logprobs(&o.logprobs)})
            } else {
                Value::Null
            };
            let mut c = json!({
                "index": i,
                "message": {"role": "assistant", "content": o.text},
                "logprobs": logprobs,
                "finish_reason": o.finish_reason,
            });
            if return_ids {
                c["prompt_token_ids"] = json!(prompts[0]);
                c["token_ids"] = json!(o.token_ids);
            }
            c
        })
        .collect();
    let mut out = with(&head, json!(choices));
    out["object"] = json!("chat.completion");
    out["usage"] = usage_value;
    Ok(Json(out).into_response())
}

fn with(head: &Value, choices: Value) -> Value {
    let mut v = head.clone();
    v["choices"] = choices;
    v
}

/// OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts prompt tokens served from the prefix cache.
fn usage(prompt_tokens: usize, completion_tokens: usize, cached_tokens: usize) -> Value {
    json!({
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    })
}

/// The legacy completions `logprobs` object.
fn completion_logprobs(lps: &[TokenLogprob]) -> Value {
    if lps.is_empty() {
        return Value::Null;
    }
    let mut offset = 0;
    let mut offsets = Vec::new();
    for t in lps {
        offsets.push(offset);
        offset += t.token.len();
    }
    json!({
        "tokens": lps.iter().map(|t| &t.token).collect::<Vec<_>>(),
        "token_logprobs": lps.iter().map(|t| t.logprob).collect::<Vec<_>>(),
        "top_logprobs": lps.iter().map(|t| t.top.iter().map(|(s, lp)| (s.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()).collect::<Vec<_>>(),
        "text_offset": offsets,
    })
}

/// The legacy completions `logprobs` object of an echoed prompt and what followed it: the first
/// prompt token has no log-probability (`null`, as in OpenAI's API and vLLM), every later token its own.
fn echo_logprobs(first: &str, prompt: &[TokenLogprob], completion: &[TokenLogprob]) -> Value {
    let rest: Vec<&TokenLogprob> = prompt.iter().chain(completion).collect();
    let mut offsets = vec![0];
    let mut offset = first.len();
    for t in &rest {
        offsets.push(offset);
        offset += t.token.len();
    }
    let mut tokens = vec![json!(first)];
    let mut token_logprobs = vec![Value::Null];
    let mut top_logprobs = vec![Value::Null];
    for t in rest {
        tokens.push(json!(t.token));
        token_logprobs.push(json!(t.logprob));
        top_logprobs.push(json!(t.top.iter().map(|(s, lp)| (s.clone(), json!(lp))).collect::<serde_json::Map<_, _>>()));
    }
    json!({"tokens": tokens, "token_logprobs": token_logprobs, "top_logprobs": top_logprobs, "text_offset": offsets})
}

/// Chat's `logprobs.content` entries.
fn chat_logprobs(lps: &[TokenLogprob]) -> Value {
    json!(lps
        .iter()
        .map(|t| json!({
            "token": t.token,
            "logprob": t.logprob,
            "bytes": t.token.as_bytes(),
            "top_logprobs": t.top.iter().map(|(s, lp)| json!({"token": s, "logprob": lp, "bytes": s.as_bytes()})).collect::<Vec<_>>(),
        }))
        .collect::<Vec<_>>())
}

/// Server-sent events: each JSON as a `data:` line, then `data: [DONE]`.
fn sse(events: impl Stream<Item = Option<Value>> + Send + 'static) -> Response {
    let body = events
        .filter_map(|v| async move { v })
        .map(|v| Ok::<_, Infallible>(SseEvent::default().data(v.to_string())))
        .chain(futures_util::stream::once(async { Ok(SseEvent::default().data("[DONE]")) }));
    Sse::new(body).keep_alive(KeepAlive::default()).into_response()
}
