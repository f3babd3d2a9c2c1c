//! `bamba bench-serve`: a serving benchmark against any OpenAI-compatible `/v1/completions` endpoint
//! (bamba serve, llama-server, vLLM), in the manner of `vllm bench serve`: a bounded, seeded workload
//! of random token-id prompts of a given length, each asking for a fixed number of new tokens
//! (`ignore_eos`), sent at a fixed concurrency or with Poisson arrivals; reports request and token
//! throughput and TTFT, TPOT, ITL and end-to-end latency (mean, p50, p90, p99).
//!
//! Two workloads exercise a prefix cache: conversations (`--turns`), where each turn after the first
//! resends the whole history (prompts and answers) plus `--turn-len` new tokens, and a shared
//! beginning of every prompt (`--shared-prefix-len`, a system prompt). The report then adds the
//! prompt tokens the server says it served from its cache (`usage.prompt_tokens_details.cached_tokens`)
//! and the TTFT of later turns apart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use futures_util::StreamExt;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

#[derive(Args)]
pub struct BenchServeArgs {
    /// Base URL of the server, e.g. http://127.0.0.1:8000.
    #[arg(long)]
    pub url: String,
    /// Model name to send (default: the first one `/v1/models` lists).
    #[arg(long)]
    pub model: Option<String>,
    /// Requests in the run.
    #[arg(allow_negative_numbers = true, long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub num_prompts: u32,
    /// Requests in flight at most.
    #[arg(allow_negative_numbers = true, long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Poisson arrivals at this many requests per second (default: all at once, up to --concurrency).
    #[arg(allow_negative_numbers = true, long)]
    pub request_rate: Option<f64>,
    /// Prompt tokens per request.
    #[arg(allow_negative_numbers = true, long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub input_len: u32,
    /// Turns per conversation: with more than 1, `--num-prompts` conversations, each turn sent after
    /// the previous one finished, with the whole history (prompts and answers) and `--turn-len` new tokens.
    #[arg(allow_negative_numbers = true, long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub turns: u32,
    /// New prompt tokens of each turn after the first.
    #[arg(allow_negative_numbers = true, long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub turn_len: u32,
    /// Tokens every first prompt starts with (the same for all: a system prompt), before its own `--input-len`.
    #[arg(allow_negative_numbers = true, long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub shared_prefix_len: u32,
    /// New tokens per request (EOS ignored).
    #[arg(allow_negative_numbers = true, long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub output_len: u32,
    /// Prompt token ids are drawn from 1 .. this (keep it within the model's vocabulary).
    #[arg(allow_negative_numbers = true, long, default_value_t = 500, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_token_id: u32,
    /// Seed of the prompts and arrivals.
    #[arg(allow_negative_numbers = true, long, default_value_t = 0)]
    pub seed: u64,
    /// Bearer key for servers started with one.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Untimed requests before the run (compilation, allocation).
    #[arg(allow_negative_numbers = true, long, default_value_t = 2)]
    pub warmup: u32,
    /// A label for the JSON record (e.g. the server's name).
    #[arg(long, default_value = "")]
    pub label: String,
    /// Print one JSON record instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// What one request measured.
#[derive(Debug, Clone, Default)]
struct RequestTiming {
    ttft: f64,
    e2e: f64,
    output_tokens: usize,
    /// Gaps between streamed chunks after the first.
    itls: Vec<f64>,
    prompt_tokens: usize,
    /// Prompt tokens the server served from its prefix cache (0 when it does not say).
    cached_tokens: usize,
    /// The answer's token ids, when the server returns them (`return_token_ids`).
    token_ids: Vec<u32>,
    /// Turn of its conversation, from 0.
    turn: u32,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (p / 100.0 * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Mean, p50, p90, p99 in milliseconds (nulls when there are no values).
fn summary(mut values: Vec<f64>) -> Value {
    if values.is_empty() {
        return json!({"mean_ms": null, "p50_ms": null, "p90_ms": null, "p99_ms": null});
    }
    values.sort_by(f64::total_cmp);
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let ms = |s: f64| (s * 1e5).round() / 1e2;
    json!({"mean_ms": ms(mean), "p50_ms": ms(percentile(&values, 50.0)), "p90_ms": ms(percentile(&values, 90.0)), "p99_ms": ms(percentile(&values, 99.0))})
}

async fn one_request(
    client: &reqwest::Client,
    args: &BenchServeArgs,
    model: &str,
    prompt: Vec<u32>,
) -> Result<RequestTiming> {
    let body = json!({
        "model": model, "prompt": prompt, "max_tokens": args.output_len, "temperature": 0,
        "ignore_eos": true, "stream": true, "stream_options": {"include_usage": true}, "return_token_ids": true,
    });
    let prompt_tokens = prompt.len();
    let start = Instant::now();
    let mut request = client.post(format!("{}/v1/completions", args.url)).json(&body);
    if let Some(key) = &args.api_key {
        request = request.bearer_auth(key);
    }
    let response = request.send().await.context("sending a request")?;
    if !response.status().is_success() {
        let status = response.status();
        bail!("the server answered {status}: {}", response.text().await.unwrap_or_default());
    }
    let mut timing = RequestTiming { prompt_tokens, ..Default::default() };
    let mut last: Option<Instant> = None;
    let mut chunks = 0;
    let mut buffer = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(bytes) = stream.next().await {
        buffer.extend_from_slice(&bytes.context("reading the stream")?);
        while let Some(end) = buffer.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buffer.drain(..end + 2).collect();
            let text = String::from_utf8_lossy(&event);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else { continue };
            if data == "[DONE]" {
                continue;
            }
            let v: Value = serde_json::from_str(data).context("parsing a stream event")?;
            // a request the server fails after its stream started ends with an error event
            if let Some(message) = v["error"]["message"].as_str() {
                bail!("the server failed the request: {message}");
            }
            if let Some(n) = v["usage"]["completion_tokens"].as_u64() {
                timing.output_tokens = n as usize;
            }
            if let Some(n) = v["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64() {
                timing.cached_tokens = n as usize;
            }
            for id in v["choices"][0]["token_ids"].as_array().into_iter().flatten() {
                timing.token_ids.extend(id.as_u64().map(|id| id as u32));
            }
            if v["choices"].as_array().is_some_and(|c| !c.is_empty()) {
                let now = Instant::now();
                match last {
                    None => timing.ttft = now.duration_since(start).as_secs_f64(),
                    Some(previous) => timing.itls.push(now.duration_since(previous).as_secs_f64()),
                }
                last = Some(now);
                chunks += 1;
            }
        }
    }
    timing.e2e = start.elapsed().as_secs_f64();
    if timing.output_tokens == 0 {
        timing.output_tokens = chunks;
    }
    Ok(timing)
}

/// What one conversation got: the timings of its turns that succeeded, and the error of the turn
/// that failed (the turns after it are not sent: their history would lack its answer).
struct ConversationOutcome {
    timings: Vec<RequestTiming>,
    failure: Option<anyhow::Error>,
}

/// The turns of one conversation, in order: each sends the history so far (earlier prompts and the
/// answers' token ids) and the turn's new tokens.
async fn conversation(
    client: &reqwest::Client,
    args: &BenchServeArgs,
    model: &str,
    first: Vec<u32>,
    later: Vec<Vec<u32>>,
) -> ConversationOutcome {
    let mut history = first;
    let mut timings = Vec::new();
    for (turn, new_tokens) in std::iter::once(Vec::new()).chain(later).enumerate() {
        history.extend(new_tokens);
        let mut timing = match one_request(client, args, model, history.clone()).await {
            Ok(timing) => timing,
            Err(e) => return ConversationOutcome { timings, failure: Some(e) },
        };
        history.extend(std::mem::take(&mut timing.token_ids));
        timing.turn = turn as u32;
        timings.push(timing);
    }
    ConversationOutcome { timings, failure: None }
}

pub fn run(args: BenchServeArgs) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(run_async(Arc::new(args)))
}

async fn run_async(args: Arc<BenchServeArgs>) -> Result<()> {
    // A fresh connection per request: servers close idle keep-alive connections on their own schedule,
    // and a request sent on one that is closing fails for no fault of the server under test.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(3600)).pool_max_idle_per_host(0).build()?;
    let model = match &args.model {
        Some(m) => m.clone(),
        None => {
            let mut request = client.get(format!("{}/v1/models", args.url));
            if let Some(key) = &args.api_key {
                request = request.bearer_auth(key);
            }
            let models: Value = request.send().await.context("GET /v1/models")?.json().await?;
            models["data"][0]["id"].as_str().context("/v1/models lists no model")?.to_string()
        }
    };
    let mut rng = StdRng::seed_from_u64(args.seed);
    let mut random = |n: u32| -> Vec<u32> { (0..n).map(|_| rng.random_range(1..args.max_token_id)).collect() };
    let shared = random(args.shared_prefix_len);
    // warm-up prompts share nothing with the run's
    for _ in 0..args.warmup {
        one_request(&client, &args, &model, random(args.input_len)).await?;
    }
    // every conversation's first prompt, then the new tokens of each later turn
    let prompts: Vec<(Vec<u32>, Vec<Vec<u32>>)> = (0..args.num_prompts)
        .map(|_| {
            let first = [shared.as_slice(), &random(args.input_len)].concat();
            (first, (1..args.turns).map(|_| random(args.turn_len)).collect())
        })
        .collect();
    let mut rng = StdRng::seed_from_u64(args.seed.wrapping_add(1));
    let gaps: Vec<f64> = match args.request_rate {
        Some(rate) if rate > 0.0 => (0..args.num_prompts).map(|_| -(1.0 - rng.random::<f64>()).ln() / rate).collect(),
        _ => vec![0.0; args.num_prompts as usize],
    };
    let slots = Arc::new(Semaphore::new(args.concurrency as usize));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for ((first, later), gap) in prompts.into_iter().zip(gaps) {
        tokio::time::sleep(Duration::from_secs_f64(gap)).await;
        let permit = slots.clone().acquire_owned().await?;
        let (client, args, model) = (client.clone(), args.clone(), model.clone());
        tasks.push(tokio::spawn(async move {
            let outcome = conversation(&client, &args, &model, first, later).await;
            drop(permit);
            outcome
        }));
    }
    // A failed request counts as failed, never as a shorter success; the first failure is shown.
    let (mut timings, mut failed) = (Vec::new(), 0usize);
    for task in tasks {
        let outcome = task.await?;
        timings.extend(outcome.timings);
        if let Some(e) = outcome.failure {
            if failed == 0 {
                eprintln!("bench-serve: a request failed: {e:#}");
            }
            failed += 1;
        }
    }
    let duration = start.elapsed().as_secs_f64();
    let output: usize = timings.iter().map(|t| t.output_tokens).sum();
    let prompt_tokens: usize = timings.iter().map(|t| t.prompt_tokens).sum();
    let cached_tokens: usize = timings.iter().map(|t| t.cached_tokens).sum();
    let tpots: Vec<f64> = timings
        .iter()
        .filter(|t| t.output_tokens > 1)
        .map(|t| (t.e2e - t.ttft) / (t.output_tokens - 1) as f64)
        .collect();
    let record = json!({
        "label": args.label,
        "url": args.url,
        "model": model,
        "num_prompts": args.num_prompts,
        "concurrency": args.concurrency,
        "request_rate": args.request_rate,
        "input_len": args.input_len,
        "output_len": args.output_len,
        "turns": args.turns,
        "turn_len": args.turn_len,
        "shared_prefix_len": args.shared_prefix_len,
        "completed": timings.len(),
        "failed": failed,
        "prompt_tokens": prompt_tokens,
        "cached_tokens": cached_tokens,
        "cache_hit_rate": cached_tokens as f64 / prompt_tokens.max(1) as f64,
        "duration_s": (duration * 1e3).round() / 1e3,
        "request_throughput": timings.len() as f64 / duration,
        "output_throughput": output as f64 / duration,
        "total_token_throughput": (output + prompt_tokens) as f64 / duration,
        "ttft": summary(timings.iter().map(|t| t.ttft).collect()),
        "ttft_first_turns": summary(timings.iter().filter(|t| t.turn == 0).map(|t| t.ttft).collect()),
        "ttft_later_turns": summary(timings.iter().filter(|t| t.turn > 0).map(|t| t.ttft).collect()),
        "tpot": summary(tpots),
        "itl": summary(timings.iter().flat_map(|t| t.itls.iter().copied()).collect()),
        "e2e": summary(timings.iter().map(|t| t.e2e).collect()),
    });
    if args.json {
        println!("{record}");
        return Ok(());
    }
    println!(
        "serving benchmark: {} requests of {}+{} tokens, concurrency {}, {}",
        args.num_prompts,
        args.shared_prefix_len + args.input_len,
        args.output_len,
        args.concurrency,
        args.request_rate.map_or("all at once".into(), |r| format!("{r} req/s"))
    );
    if args.turns > 1 {
        println!("  conversations of {} turns, each later turn +{} tokens", args.turns, args.turn_len);
    }
    println!(
        "  prompt tokens       {:>10} ({} from the server's prefix cache, {:.1}%)",
        prompt_tokens,
        cached_tokens,
        100.0 * record["cache_hit_rate"].as_f64().unwrap_or(0.0)
    );
    if failed > 0 {
        println!("  failed requests     {failed:>10} (not in the numbers below)");
    }
    println!("  duration            {:>10.2} s", duration);
    println!("  request throughput  {:>10.2} req/s", record["request_throughput"].as_f64().unwrap_or(0.0));
    println!("  output throughput   {:>10.2} tok/s", record["output_throughput"].as_f64().unwrap_or(0.0));
    println!("  {:<16} {:>10} {:>10} {:>10} {:>10}", "ms", "mean", "p50", "p90", "p99");
    let names: &[&str] = if args.turns > 1 {
        &["ttft_first_turns", "ttft_later_turns", "tpot", "itl", "e2e"]
    } else {
        &["ttft", "tpot", "itl", "e2e"]
    };
    for &name in names {
        let s = &record[name];
        let v = |k: &str| s[k].as_f64().unwrap_or(f64::NAN);
        println!(
            "  {:<16} {:>10.2} {:>10.2} {:>10.2} {:>10.2}",
            name,
            v("mean_ms"),
            v("p50_ms"),
            v("p90_ms"),
            v("p99_ms")
        );
    }
    Ok(())
}
