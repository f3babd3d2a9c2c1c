//! `bamba serve` end to end: a real process on 127.0.0.1 with an ephemeral port and a real HTTP
//! client. Concurrent streamed requests get transformers' greedy tokens (fixture references) however
//! they are batched; chat, stop strings, logprobs; every error status; cancellation on disconnect;
//! overload; drain on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::blocking::Client;
use reqwest::StatusCode;
use safetensors::SafeTensors;
use serde_json::{json, Value};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// An HTTP client whose requests end within 30 s: a server that stops answering fails the test
/// instead of hanging it.
fn client() -> Client {
    Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// A `bamba serve` process, killed on drop.
struct Server {
    child: Child,
    url: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bamba"))
            .args(["serve", "--port", "0", "--backend", "ndarray"])
            .args(args)
            .current_dir(repo())
            .env_remove("RUST_LOG")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bamba serve");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let log = Arc::new(Mutex::new(String::new()));
        let mut url = None;
        for line in lines.by_ref() {
            let line = line.unwrap();
            log.lock().unwrap().push_str(&format!("{line}\n"));
            if let Some(address) = line.strip_prefix("listening on ") {
                url = Some(address.to_string());
                break;
            }
        }
        let url = url.unwrap_or_else(|| panic!("no address printed: {}", log.lock().unwrap()));
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                sink.lock().unwrap().push_str(&format!("{line}\n"));
            }
        });
        let server = Server { child, url, log };
        server.wait_for(|s| s.get("/health").status() == StatusCode::OK, "healthy");
        server
    }

    fn wait_for(&self, ready: impl Fn(&Server) -> bool, what: &str) {
        let start = Instant::now();
        while !ready(self) {
            assert!(start.elapsed() < Duration::from_secs(60), "not {what} after 60 s: {}", self.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn get(&self, path: &str) -> reqwest::blocking::Response {
        client().get(format!("{}{path}", self.url)).send().unwrap()
    }

    fn post(&self, path: &str, body: &Value) -> reqwest::blocking::Response {
        client().post(format!("{}{path}", self.url)).json(body).send().unwrap()
    }

    /// A gauge or counter from `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").text().unwrap();
        let line = text.lines().find(|l| l.split(' ').next() == Some(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    fn idle(&self) -> bool {
        self.metric("vllm:num_requests_running") == 0.0
            && self.metric("vllm:num_requests_waiting") == 0.0
            && self.metric("bamba:cache_bytes") == 0.0
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `data:` payloads of an SSE body, `[DONE]` last.
fn sse_events(body: impl Read) -> Vec<String> {
    BufReader::new(body)
        .lines()
        .map_while(Result::ok)
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

/// Prompts and transformers' greedy continuations of a fixture (generate_i in reference.safetensors).
fn generate_references(fixture: &str) -> Vec<(Vec<u32>, Vec<u32>)> {
    let bytes = std::fs::read(repo().join("tests/fixtures").join(fixture).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    (0..)
        .map_while(|i| st.tensor(&format!("generate_{i}.ids")).ok().map(|_| i))
        .map(|i| (ints(&format!("prompt_{i}.ids")), ints(&format!("generate_{i}.ids"))))
        .collect()
}

#[test]
fn concurrent_streams_get_transformers_tokens() {
    let server =
        Server::start(&["--model", "tests/fixtures/base", "--max-num-seqs", "6", "--max-num-batched-tokens", "12"]);
    let refs = generate_references("base");
    let jobs: Vec<(usize, usize)> =
        (0..32).map(|i| (i % refs.len(), 1 + (i * 7) % refs[i % refs.len()].1.len())).collect();
    let threads: Vec<_> = jobs
        .iter()
        .map(|&(r, max_tokens)| {
            let (url, prompt) = (server.url.clone(), refs[r].0.clone());
            std::thread::spawn(move || {
                let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": true, "ignore_eos": true});
                let response = client().post(format!("{url}/v1/completions")).json(&body).send().unwrap();
                assert_eq!(response.status(), StatusCode::OK);
                let events = sse_events(response);
                assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
                let mut ids = Vec::new();
                for e in &events[..events.len() - 1] {
                    let v: Value = serde_json::from_str(e).unwrap();
                    for id in v["choices"][0]["token_ids"].as_array().into_iter().flatten() {
                        ids.push(id.as_u64().unwrap() as u32);
                    }
                }
                ids
            })
        })
        .collect();
    for ((r, max_tokens), thread) in jobs.into_iter().zip(threads) {
        assert_eq!(thread.join().unwrap(), refs[r].1[..max_tokens], "prompt {r}, max_tokens {max_tokens}");
    }
    server.wait_for(Server::idle, "idle");
    assert_eq!(
        server.metric("vllm:generation_tokens_total") as usize,
        (0..32).map(|i| 1 + (i * 7) % refs[i % refs.len()].1.len()).sum::<usize>()
    );
}

/// Prompts of a fixture and transformers' logits for each of their positions (`[len][vocab]`).
fn prompt_references(fixture: &str) -> Vec<(Vec<u32>, Vec<Vec<f32>>)> {
    let bytes = std::fs::read(repo().join("tests/fixtures").join(fixture).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    (0..)
        .map_while(|i| st.tensor(&format!("prompt_{i}.ids")).ok().map(|_| i))
        .map(|i| {
            let ids: Vec<u32> = st
                .tensor(&format!("prompt_{i}.ids"))
                .unwrap()
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
                .collect();
            let logits = st.tensor(&format!("prompt_{i}.logits")).unwrap();
            let vocab = logits.shape()[1];
            let flat: Vec<f32> =
                logits.data().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
            (ids, flat.chunks_exact(vocab).map(<[f32]>::to_vec).collect())
        })
        .collect()
}

fn log_softmax(row: &[f32]) -> Vec<f64> {
    let max = row.iter().copied().fold(f32::MIN, f32::max) as f64;
    let sum: f64 = row.iter().map(|&l| (l as f64 - max).exp()).sum();
    row.iter().map(|&l| l as f64 - max - sum.ln()).collect()
}

/// What lm-evaluation-harness's `local-completions` sends to score a continuation: token-id prompts
/// with `echo`, `logprobs` and no or one new token. Each prompt token's log-probability and the top
/// alternatives are transformers' log-softmax of the position before it. Tolerance 1e-4: the f32 logits
/// are within 4.3e-6 of transformers' (tests/parity.rs), so their log-softmax is within 1e-5.
#[test]
fn echo_with_logprobs_scores_prompts_as_transformers() {
    // a token budget of 6 per step: the 13-token prompt is scored over several prefill chunks
    let server =
        Server::start(&["--model", "tests/fixtures/base", "--max-num-seqs", "2", "--max-num-batched-tokens", "6"]);
    let refs = prompt_references("base");
    let prompts: Vec<&Vec<u32>> = refs.iter().map(|(ids, _)| ids).collect();
    let check = |choice: &Value, (ids, logits): &(Vec<u32>, Vec<Vec<f32>>), new_tokens: usize| {
        let lps = &choice["logprobs"];
        let token_logprobs = lps["token_logprobs"].as_array().unwrap();
        let top_logprobs = lps["top_logprobs"].as_array().unwrap();
        assert_eq!(token_logprobs.len(), ids.len() + new_tokens);
        assert_eq!((&token_logprobs[0], &top_logprobs[0]), (&Value::Null, &Value::Null), "the first token has none");
        for (t, id) in ids.iter().enumerate() {
            assert_eq!(lps["tokens"][t], format!("token_id:{id}"), "no tokenizer: tokens are named by id");
        }
        for t in 1..ids.len() {
            let want = log_softmax(&logits[t - 1]);
            let got = token_logprobs[t].as_f64().unwrap();
            assert!((got - want[ids[t] as usize]).abs() < 1e-4, "token {t}: {got} vs {}", want[ids[t] as usize]);
            let mut best: Vec<f64> = want.clone();
            best.sort_by(|a, b| b.total_cmp(a));
            let mut top: Vec<f64> =
                top_logprobs[t].as_object().unwrap().values().map(|v| v.as_f64().unwrap()).collect();
            top.sort_by(|a, b| b.total_cmp(a));
            assert_eq!(top.len(), 3, "token {t}");
            for (g, w) in top.iter().zip(&best) {
                assert!((g - w).abs() < 1e-4, "token {t} top: {g} vs {w}");
            }
        }
    };
    // a batch of prompts scored without new tokens
    let body = json!({"prompt": prompts, "max_tokens": 0, "logprobs": 3, "echo": true, "temperature": 0});
    let out: Value = server.post("/v1/completions", &body).json().unwrap();
    let choices = out["choices"].as_array().unwrap_or_else(|| panic!("{out}"));
    assert_eq!(choices.len(), refs.len());
    for (choice, r) in choices.iter().zip(&refs) {
        check(choice, r, 0);
        assert_eq!(choice["finish_reason"], "length");
    }
    assert_eq!(out["usage"]["completion_tokens"], 0);
    assert_eq!(out["usage"]["prompt_tokens"], refs.iter().map(|(ids, _)| ids.len()).sum::<usize>());
    // lm-eval's own request: one new token, whose log-probability follows the prompt's
    let body = json!({"prompt": prompts[0], "max_tokens": 1, "logprobs": 3, "echo": true, "temperature": 0});
    let out: Value = server.post("/v1/completions", &body).json().unwrap();
    check(&out["choices"][0], &refs[0], 1);
    // streamed: the prompt's scores come first, in the same numbers
    let mut streamed = body.clone();
    streamed["stream"] = json!(true);
    let events = sse_events(server.post("/v1/completions", &streamed));
    let first: Value = serde_json::from_str(&events[0]).unwrap();
    let scored = &first["choices"][0]["logprobs"]["token_logprobs"];
    assert_eq!(
        scored.as_array().unwrap()[..],
        out["choices"][0]["logprobs"]["token_logprobs"].as_array().unwrap()[..refs[0].0.len()]
    );
    // without echo, max_tokens 0 has nothing to return
    let refused = server.post("/v1/completions", &json!({"prompt": prompts[0], "max_tokens": 0}));
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    server.wait_for(Server::idle, "idle");
    drop(server);
    // with room in the step and no prefix cache, the prompts are scored together as one left-padded
    // batch, each mixed with a request that generates
    let server = Server::start(&["--model", "tests/fixtures/base", "--no-prefix-cache"]);
    let mut body = json!({"prompt": prompts, "max_tokens": 2, "logprobs": 3, "echo": true, "temperature": 0});
    let out: Value = server.post("/v1/completions", &body).json().unwrap();
    for (choice, r) in out["choices"].as_array().unwrap_or_else(|| panic!("{out}")).iter().zip(&refs) {
        check(choice, r, 2);
    }
    body["max_tokens"] = json!(0);
    let out: Value = server.post("/v1/completions", &body).json().unwrap();
    for (choice, r) in out["choices"].as_array().unwrap_or_else(|| panic!("{out}")).iter().zip(&refs) {
        check(choice, r, 0);
    }
    server.wait_for(Server::idle, "idle");
}

#[test]
fn text_completion_chat_stop_strings_and_logprobs() {
    let server = Server::start(&["--served-model-name", "tiny"]);
    let models = server.get("/v1/models").json::<Value>().unwrap();
    assert_eq!(models["data"][0]["id"], "tiny");
    let body = json!({"model": "tiny", "prompt": "Phileas Fogg", "max_tokens": 12, "temperature": 0, "logprobs": 3, "return_token_ids": true});
    let out: Value = server.post("/v1/completions", &body).json().unwrap();
    let choice = &out["choices"][0];
    let text = choice["text"].as_str().unwrap();
    assert_eq!(out["usage"]["completion_tokens"], 12);
    assert_eq!(choice["token_ids"].as_array().unwrap().len(), 12);
    let lps = &choice["logprobs"];
    assert_eq!(lps["token_logprobs"].as_array().unwrap().len(), 12);
    // greedy: the chosen token is the most likely one, and its log-probability is the top one
    for (lp, top) in lps["token_logprobs"].as_array().unwrap().iter().zip(lps["top_logprobs"].as_array().unwrap()) {
        let best = top.as_object().unwrap().values().map(|v| v.as_f64().unwrap()).fold(f64::MIN, f64::max);
        assert!((lp.as_f64().unwrap() - best).abs() < 1e-6 && best <= 0.0);
    }
    // the same request through /tokenize + token ids gives the same tokens
    let ids = server.post("/tokenize", &json!({"prompt": "Phileas Fogg"})).json::<Value>().unwrap()["tokens"].clone();
    let by_ids: Value = server
        .post("/v1/completions", &json!({"prompt": ids, "max_tokens": 12, "temperature": 0, "return_token_ids": true}))
        .json()
        .unwrap();
    assert_eq!(by_ids["choices"][0]["token_ids"], choice["token_ids"]);
    let detok = server.post("/detokenize", &json!({"tokens": choice["token_ids"]})).json::<Value>().unwrap();
    assert_eq!(detok["prompt"], text);
    // a stop string taken from the greedy text ends the output just before it
    let stop: String = text.chars().skip(4).take(3).collect();
    let cut = text.find(&stop).unwrap();
    let stopped: Value = server
        .post("/v1/completions", &json!({"prompt": "Phileas Fogg", "max_tokens": 12, "temperature": 0, "stop": [stop]}))
        .json()
        .unwrap();
    assert_eq!(stopped["choices"][0]["text"], &text[..cut]);
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop");
    // chat, one-shot and streamed, n = 2 with a seed
    let chat =
        json!({"messages": [{"role": "user", "content": "Who is Passepartout?"}], "max_tokens": 8, "n": 2, "seed": 7});
    let one: Value = server.post("/v1/chat/completions", &chat).json().unwrap();
    assert_eq!(one["object"], "chat.completion");
    assert_eq!(one["choices"].as_array().unwrap().len(), 2);
    assert_eq!(one["choices"][1]["message"]["role"], "assistant");
    let mut streamed = chat.clone();
    streamed["stream"] = json!(true);
    streamed["stream_options"] = json!({"include_usage": true});
    let events = sse_events(server.post("/v1/chat/completions", &streamed));
    let mut texts = [String::new(), String::new()];
    let mut usage = Value::Null;
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v["choices"].as_array().and_then(|c| c.first()) {
            texts[c["index"].as_u64().unwrap() as usize].push_str(c["delta"]["content"].as_str().unwrap_or(""));
        } else {
            usage = v["usage"].clone();
        }
    }
    for i in 0..2 {
        assert_eq!(
            texts[i],
            one["choices"][i]["message"]["content"].as_str().unwrap(),
            "choice {i}: same seed, same text"
        );
    }
    assert_eq!(usage["completion_tokens"], one["usage"]["completion_tokens"]);
}

#[test]
fn bad_requests_get_openai_errors() {
    let server = Server::start(&["--api-key", "sesame", "--max-model-len", "64", "--max-body-bytes", "2000"]);
    let client = client();
    let post = |path: &str, body: String, key: Option<&str>| {
        let mut r = client.post(format!("{}{path}", server.url)).header("content-type", "application/json").body(body);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send().unwrap()
    };
    let ok = json!({"prompt": "Fogg", "max_tokens": 2}).to_string();
    let check = |response: reqwest::blocking::Response, status: StatusCode, needle: &str| {
        assert_eq!(response.status(), status, "{needle}");
        let v: Value = response.json().unwrap();
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{message:?} lacks {needle:?}");
        assert_eq!(v["error"]["code"], status.as_u16());
    };
    check(post("/v1/completions", ok.clone(), None), StatusCode::UNAUTHORIZED, "API key");
    check(post("/v1/completions", ok.clone(), Some("wrong")), StatusCode::UNAUTHORIZED, "API key");
    assert_eq!(post("/v1/completions", ok.clone(), Some("sesame")).status(), StatusCode::OK);
    let key = Some("sesame");
    check(post("/v1/completions", "{\"prompt\": ".into(), key), StatusCode::BAD_REQUEST, "malformed JSON");
    check(
        post("/v1/completions", json!({"prompt": "x", "max_tokens": "many"}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "invalid",
    );
    check(post("/v1/completions", json!({"prompt": {"a": 1}}).to_string(), key), StatusCode::BAD_REQUEST, "invalid");
    check(
        post("/v1/completions", json!({"prompt": "x", "max_tokens": 100}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "This model's maximum context length is 64 tokens",
    );
    check(
        post("/v1/completions", json!({"prompt": [1, 999999]}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "outside the vocabulary",
    );
    check(
        post("/v1/completions", json!({"prompt": "x", "temperature": -1}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "temperature",
    );
    check(
        post("/v1/completions", json!({"prompt": "x", "top_p": 0}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "top-p",
    );
    check(post("/v1/completions", json!({"prompt": "x", "n": 0}).to_string(), key), StatusCode::BAD_REQUEST, "n must");
    check(
        post("/v1/completions", json!({"prompt": "x", "stop": [""]}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "stop",
    );
    check(post("/v1/completions", json!({"prompt": []}).to_string(), key), StatusCode::BAD_REQUEST, "empty");
    check(
        post("/v1/completions", json!({"prompt": "x", "model": "gpt-4"}).to_string(), key),
        StatusCode::NOT_FOUND,
        "does not exist",
    );
    check(post("/v1/chat/completions", json!({"messages": []}).to_string(), key), StatusCode::BAD_REQUEST, "messages");
    check(
        post("/v1/chat/completions", json!({"messages": [{"content": "no role"}]}).to_string(), key),
        StatusCode::BAD_REQUEST,
        "role",
    );
    check(post("/v1/completions", "x".repeat(5000), key), StatusCode::PAYLOAD_TOO_LARGE, "larger than 2000 bytes");
    // a body without Content-Length that runs past the limit
    let chunks = chunked_body(5000);
    let response =
        client.post(format!("{}/v1/completions", server.url)).bearer_auth("sesame").body(chunks).send().unwrap();
    assert_eq!(response.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(server.metric("bamba:num_requests_running"), 0.0);
}

/// A streamed (chunked, no Content-Length) body of `len` bytes.
fn chunked_body(len: usize) -> reqwest::blocking::Body {
    reqwest::blocking::Body::new(std::io::Cursor::new(vec![b' '; len]))
}

#[test]
fn a_checkpoint_without_chat_template_refuses_chat() {
    let server = Server::start(&["--model", "tests/fixtures/base"]);
    let r = server.post("/v1/chat/completions", &json!({"messages": [{"role": "user", "content": "hi"}]}));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let r = server.post("/v1/completions", &json!({"prompt": "text needs a tokenizer"}));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().unwrap().contains("no tokenizer.json"));
}

#[test]
fn a_disconnected_stream_is_cancelled_and_overload_gets_429() {
    let server = Server::start(&["--max-num-seqs", "1", "--max-num-batched-tokens", "64", "--max-queue", "1"]);
    let long = json!({"prompt": "Fogg", "max_tokens": 2000, "ignore_eos": true, "stream": true});
    let mut running = server.post("/v1/completions", &long);
    let mut first = [0u8; 64];
    running.read_exact(&mut first).unwrap();
    drop(running);
    server.wait_for(Server::idle, "idle after the client left");
    assert!(server.metric("vllm:generation_tokens_total") < 2000.0, "the cancelled request ran on");
    server.wait_for(|s| s.log.lock().unwrap().contains("request cancelled"), "the cancellation logged");
    // one sequence runs and one request may wait: of 8 at once while one runs, 7 are refused with 429
    let url = server.url.clone();
    let first = std::thread::spawn(move || {
        let body = json!({"prompt": "Fogg", "max_tokens": 1000, "ignore_eos": true});
        let start = Instant::now();
        let r = client().post(format!("{url}/v1/completions")).json(&body).send().unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        start.elapsed().as_secs_f64()
    });
    server.wait_for(|s| s.metric("vllm:num_requests_running") == 1.0, "running");
    let url = server.url.clone();
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                let body = json!({"prompt": "Fogg", "max_tokens": 300, "ignore_eos": true});
                let r = client().post(format!("{url}/v1/completions")).json(&body).send().unwrap();
                let retry = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_string());
                (r.status(), retry)
            })
        })
        .collect();
    let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    let refused = results.iter().filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS).count();
    assert_eq!(refused, 7, "{results:?}");
    for (status, retry) in &results {
        match *status {
            StatusCode::OK => {}
            StatusCode::TOO_MANY_REQUESTS => assert_eq!(retry.as_deref(), Some("1")),
            other => panic!("unexpected {other}"),
        }
    }
    assert!(server.metric("bamba:requests_rejected_total") >= refused as f64);
    server.wait_for(Server::idle, "idle");
    // Each finished request's wait in the queue is observed once; the one accepted from the burst
    // waited for most of the first one's 1000 tokens (it arrived once the first was running).
    let first = first.join().unwrap();
    assert_eq!(server.metric("vllm:request_queue_time_seconds_count"), 2.0);
    let waited = server.metric("vllm:request_queue_time_seconds_sum");
    assert!(waited > 0.5 * first, "queued {waited} s behind a request of {first} s");
}

#[cfg(unix)]
#[test]
fn sigterm_drains_running_requests_and_exits_zero() {
    let mut server = Server::start(&[]);
    let url = server.url.clone();
    let request = std::thread::spawn(move || {
        let body = json!({"prompt": "Fogg", "max_tokens": 400, "ignore_eos": true, "temperature": 0});
        client().post(format!("{url}/v1/completions")).json(&body).send().unwrap().json::<Value>().unwrap()
    });
    server.wait_for(|s| s.metric("vllm:num_requests_running") == 1.0, "running");
    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(server.child.id() as i32, libc::SIGTERM) };
    let done = request.join().unwrap();
    assert_eq!(done["usage"]["completion_tokens"], 400, "the running request finished");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status}");
}

/// The next turn of a conversation (the previous prompt, its answer, a few more tokens) is resumed
/// from the prefix cache: `usage.prompt_tokens_details.cached_tokens` and `/metrics` say so, and the
/// tokens are transformers'. With `--no-prefix-cache` nothing is cached.
#[test]
fn a_next_turn_is_served_from_the_prefix_cache() {
    let refs = generate_references("base");
    let (prompt, answer) = &refs[0];
    for (flags, cached) in [(&[][..], true), (&["--no-prefix-cache"][..], false)] {
        let server = Server::start(&[&["--model", "tests/fixtures/base"][..], flags].concat());
        let complete = |prompt: &[u32], max_tokens: usize| -> Value {
            let body = json!({"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": true,
                              "return_token_ids": true});
            server.post("/v1/completions", &body).json().unwrap()
        };
        let first = complete(prompt, 5);
        assert_eq!(first["usage"]["prompt_tokens_details"]["cached_tokens"], 0);
        let next: Vec<u32> = [prompt.as_slice(), &answer[..7]].concat();
        let second = complete(&next, 3);
        let ids: Vec<u32> =
            second["choices"][0]["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        assert_eq!(ids, answer[7..10], "{flags:?}");
        // the first turn's end (prompt + 4 of its 5 tokens) is a snapshot
        let want = if cached { prompt.len() + 4 } else { 0 };
        assert_eq!(second["usage"]["prompt_tokens_details"]["cached_tokens"], want, "{flags:?}");
        assert_eq!(server.metric("bamba:prefix_cache_hits_total"), f64::from(u8::from(cached)));
        assert_eq!(server.metric("vllm:prefix_cache_hits_total"), want as f64);
        assert_eq!(server.metric("bamba:prefix_cache_snapshots") > 0.0, cached);
        // n = 3 of a new prompt: prefilled once, the other two choices fork from it (with the cache on)
        let (prompt, answer) = &refs[1];
        let body = json!({"prompt": prompt, "max_tokens": 4, "temperature": 0, "n": 3, "ignore_eos": true,
                          "return_token_ids": true});
        let three: Value = server.post("/v1/completions", &body).json().unwrap();
        for choice in three["choices"].as_array().unwrap() {
            let ids: Vec<u64> = choice["token_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(ids, answer[..4].iter().map(|&i| u64::from(i)).collect::<Vec<_>>(), "{flags:?}");
        }
        assert_eq!(three["usage"]["prompt_tokens_details"]["cached_tokens"], 0, "the first choice prefilled it");
        let forks = if cached { 2.0 } else { 0.0 };
        assert_eq!(server.metric("bamba:prefix_cache_hits_total"), f64::from(u8::from(cached)) + forks);
    }
}

/// Hostile values for request fields: type confusion, limits of every integer type, huge strings.
fn hostile_value() -> impl proptest::strategy::Strategy<Value = Value> {
    use proptest::prelude::*;
    prop_oneof![
        prop::sample::select(vec![0i64, 1, -1, 2, 63, 64, 65, 4096, i32::MAX as i64, 1 << 32, i64::MAX, i64::MIN])
            .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(json!(1e308)),
        Just(json!(-0.0)),
        Just(json!(0.5)),
        Just(json!(2.5)),
        Just(Value::Null),
        Just(json!(true)),
        Just(json!("")),
        Just(json!("Fogg")),
        Just(Value::from("é".repeat(3000))),
        Just(json!([])),
        Just(json!([1, 2, 3])),
        Just(json!([[1, 2], [3]])),
        Just(json!([-1])),
        Just(json!([4294967295u64])),
        Just(json!(["a", "b", "c", "d", "e"])),
        Just(json!({"a": 1})),
        Just(json!({"include_usage": true})),
        Just(json!([{"role": "user", "content": "hi"}])),
        Just(json!([{"role": "user"}])),
        Just(json!([{"role": 5, "content": [1]}])),
        Just(json!({"5": 100, "7": -100})),
    ]
}

/// Random requests built from valid ones with fields set to hostile values: every answer is a 200
/// or an OpenAI-shaped 4xx, within a few seconds (no 5xx, no hang), and the server stays healthy and
/// ends idle.
#[test]
fn hostile_request_fields_get_200_or_a_client_error() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    let server = Server::start(&["--model", "tests/fixtures/base", "--max-model-len", "64", "--max-num-seqs", "4"]);
    let fields = [
        "prompt",
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "top_k",
        "min_p",
        "n",
        "seed",
        "stop",
        "stop_token_ids",
        "logprobs",
        "top_logprobs",
        "stream",
        "stream_options",
        "ignore_eos",
        "return_token_ids",
        "repetition_penalty",
        "presence_penalty",
        "frequency_penalty",
        "logit_bias",
        "model",
        "echo",
    ];
    let client = client();
    let edits = prop::collection::vec((prop::sample::select(fields.to_vec()), hostile_value()), 1..3);
    let mut runner = TestRunner::new(Config { cases: 160, failure_persistence: None, ..Config::default() });
    runner
        .run(&(any::<bool>(), edits), |(chat, edits)| {
            let (path, mut body) = if chat {
                ("/v1/chat/completions", json!({"messages": [{"role": "user", "content": "Fogg"}], "max_tokens": 3}))
            } else {
                ("/v1/completions", json!({"prompt": [1, 2, 3], "max_tokens": 3}))
            };
            for (field, value) in &edits {
                body[*field] = value.clone();
            }
            let response = client.post(format!("{}{path}", server.url)).json(&body).send().unwrap();
            let status = response.status();
            let text = response.text().unwrap();
            prop_assert!(status == StatusCode::OK || status.is_client_error(), "{status} for {body}: {text}");
            if status.is_client_error() {
                let v: Value = serde_json::from_str(&text).unwrap();
                prop_assert!(v["error"]["message"].is_string(), "{text}");
            }
            Ok(())
        })
        .unwrap();
    assert_eq!(server.get("/health").status(), StatusCode::OK);
    server.wait_for(Server::idle, "idle");
}

/// The per-request log line is there at the default level and gone with `-q`.
#[test]
fn quiet_hides_the_request_log() {
    for (flags, logged) in [(&[][..], true), (&["-q"][..], false)] {
        let server = Server::start(flags);
        let response = server.post("/v1/completions", &json!({"prompt": [1, 2, 3], "max_tokens": 2}));
        assert_eq!(response.status(), StatusCode::OK);
        server.wait_for(Server::idle, "idle");
        // the line is written as the response ends; give the reader thread a moment
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(server.log.lock().unwrap().contains("request done"), logged, "{flags:?}");
    }
}

/// On the CPU without --memory the cache budget is half the host's available memory, not unbounded;
/// --memory replaces it.
#[test]
fn the_cpu_cache_budget_defaults_to_host_memory() {
    let server = Server::start(&[]);
    let log = server.log.lock().unwrap().clone();
    assert!(log.contains("half the host's available memory") && !log.contains("unbounded"), "{log}");
    drop(log);
    let server = Server::start(&["--memory", "1GB"]);
    let log = server.log.lock().unwrap().clone();
    assert!(!log.contains("half the host's available memory") && log.contains("cache budget"), "{log}");
}

/// `bamba bench-serve` against the server: requests the server refuses count as failed (and the
/// first error is shown), not as successes and not as an aborted run; the others are measured.
#[test]
fn bench_serve_counts_failed_requests_apart() {
    let server = Server::start(&["--max-model-len", "32"]);
    let bench = |input_len: &str| {
        let run = Command::new(env!("CARGO_BIN_EXE_bamba"))
            .args(["bench-serve", "--url", &server.url, "--num-prompts", "4", "--concurrency", "2", "--input-len"])
            .args([input_len, "--output-len", "4", "--max-token-id", "90", "--warmup", "0", "--json"])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
        assert!(run.status.success(), "{stderr}");
        let record: Value = serde_json::from_slice(&run.stdout).unwrap();
        (record["completed"].as_u64(), record["failed"].as_u64(), record["output_throughput"].as_f64(), stderr)
    };
    let (completed, failed, throughput, stderr) = bench("40");
    assert_eq!((completed, failed, throughput), (Some(0), Some(4), Some(0.0)), "{stderr}");
    assert!(stderr.contains("maximum context length is 32 tokens"), "{stderr}");
    let (completed, failed, throughput, stderr) = bench("8");
    assert_eq!((completed, failed), (Some(4), Some(0)), "{stderr}");
    assert!(throughput.unwrap() > 0.0);
}
