//! Prometheus metrics of `bamba serve`, under `bamba:` names and, where the meaning is the same,
//! vLLM's names too (routers such as the Gateway API Inference Extension scrape those).

use bamba_model::engine::EngineStats;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, Opts, Registry, TextEncoder};
use std::sync::atomic::Ordering;

/// Latency buckets in seconds (vLLM's time-to-first-token buckets, which cover the others too).
const BUCKETS: [f64; 18] =
    [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0];

/// A metric kept under two names.
struct Pair<T> {
    ours: T,
    vllm: T,
}

impl Pair<Histogram> {
    fn observe(&self, v: f64) {
        self.ours.observe(v);
        self.vllm.observe(v);
    }
}

impl Pair<IntCounter> {
    fn add(&self, v: u64) {
        self.ours.inc_by(v);
        self.vllm.inc_by(v);
    }
}

pub struct Metrics {
    registry: Registry,
    queue: Pair<Histogram>,
    ttft: Pair<Histogram>,
    itl: Pair<Histogram>,
    e2e: Pair<Histogram>,
    prompt_tokens: Pair<IntCounter>,
    generation_tokens: Pair<IntCounter>,
    requests: IntCounter,
}

/// Registers `metric` (a cheap handle) and returns it.
fn registered<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry.register(Box::new(metric.clone())).expect("unique metric name");
    metric
}

fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
    registered(registry, Histogram::with_opts(opts).expect("valid histogram"))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    registered(registry, IntCounter::with_opts(Opts::new(name, help)).expect("valid counter"))
}

fn pair<T>(make: impl Fn(&str) -> T, ours: &str, vllm: &str) -> Pair<T> {
    Pair { ours: make(ours), vllm: make(vllm) }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        Metrics {
            queue: pair(
                |n| histogram(r, n, "Time a request waited in the engine's queue before its prefill, seconds"),
                "bamba:request_queue_time_seconds",
                "vllm:request_queue_time_seconds",
            ),
            ttft: pair(
                |n| histogram(r, n, "Time from request arrival to its first token, seconds"),
                "bamba:time_to_first_token_seconds",
                "vllm:time_to_first_token_seconds",
            ),
            itl: pair(
                |n| histogram(r, n, "Time between two tokens of one request, seconds"),
                "bamba:inter_token_latency_seconds",
                "vllm:inter_token_latency_seconds",
            ),
            e2e: pair(
                |n| histogram(r, n, "Time from request arrival to its last token, seconds"),
                "bamba:e2e_request_latency_seconds",
                "vllm:e2e_request_latency_seconds",
            ),
            prompt_tokens: pair(
                |n| counter(r, n, "Prompt tokens of finished requests"),
                "bamba:prompt_tokens_total",
                "vllm:prompt_tokens_total",
            ),
            generation_tokens: pair(
                |n| counter(r, n, "Tokens generated for finished requests"),
                "bamba:generation_tokens_total",
                "vllm:generation_tokens_total",
            ),
            requests: counter(r, "bamba:requests_total", "Requests finished, cancelled ones included"),
            registry,
        }
    }

    /// One engine request's wait in the queue (each choice of `n` is one).
    pub fn queued(&self, seconds: f64) {
        self.queue.observe(seconds);
    }

    pub fn first_token(&self, seconds: f64) {
        self.ttft.observe(seconds);
    }

    pub fn inter_token(&self, seconds: f64) {
        self.itl.observe(seconds);
    }

    pub fn finished(&self, seconds: f64, prompt_tokens: usize, generated: usize) {
        self.e2e.observe(seconds);
        self.prompt_tokens.add(prompt_tokens as u64);
        self.generation_tokens.add(generated as u64);
        self.requests.inc();
    }

    /// The text exposition: the histograms and counters above, then the engine's gauges.
    pub fn render(&self, stats: Option<&EngineStats>) -> String {
        let mut out = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut out).expect("text encoding");
        let mut text = String::from_utf8(out).expect("utf-8 exposition");
        let load = |g: &std::sync::atomic::AtomicU64| g.load(Ordering::Relaxed);
        let s = stats;
        let count = |c: fn(&EngineStats) -> &std::sync::atomic::AtomicU64| s.map_or(0, |s| load(c(s))) as f64;
        let gauges: [(&str, &str, f64); 25] = [
            ("bamba:num_requests_running", "Sequences in the decode batch", s.map_or(0, |s| load(&s.running)) as f64),
            ("vllm:num_requests_running", "Sequences in the decode batch", s.map_or(0, |s| load(&s.running)) as f64),
            ("bamba:num_requests_waiting", "Requests queued or prefilling", s.map_or(0, |s| load(&s.waiting)) as f64),
            ("vllm:num_requests_waiting", "Requests queued or prefilling", s.map_or(0, |s| load(&s.waiting)) as f64),
            (
                "bamba:cache_bytes",
                "Bytes of KV cache and recurrent state held",
                s.map_or(0, |s| load(&s.cache_bytes)) as f64,
            ),
            (
                "bamba:kv_cache_usage_perc",
                "Share of sequence slots or cache bytes in use (the larger), 0 to 1",
                s.map_or(0.0, EngineStats::cache_usage),
            ),
            (
                "vllm:kv_cache_usage_perc",
                "Share of sequence slots or cache bytes in use (the larger), 0 to 1",
                s.map_or(0.0, EngineStats::cache_usage),
            ),
            (
                "bamba:requests_rejected_total",
                "Requests refused at submission",
                s.map_or(0, |s| load(&s.rejected)) as f64,
            ),
            (
                "bamba:device_memory_in_use_bytes",
                "Device memory the engine's live buffers take (0 where the backend does not tell)",
                count(|s| &s.device_memory_in_use),
            ),
            (
                "bamba:device_memory_reserved_bytes",
                "Device memory the allocator's pools hold for the engine, free slices included",
                count(|s| &s.device_memory_reserved),
            ),
            (
                "bamba:allocator_cleanups_total",
                "Times the allocator's free buffers went back to the device (past the allocator slack)",
                count(|s| &s.allocator_cleanups),
            ),
            (
                "bamba:device_failures_total",
                "Engine steps in which the device failed (out of memory): their running requests were preempted or failed",
                count(|s| &s.device_failures),
            ),
            (
                "bamba:max_num_seqs",
                "Requests the engine runs at once at most (--max-num-seqs, halved at each time the device ran out of memory)",
                count(|s| &s.max_num_seqs),
            ),
            (
                "bamba:num_preemptions_total",
                "Requests sent back to the queue to be recomputed because the device ran out of memory",
                count(|s| &s.preemptions),
            ),
            ("bamba:prefix_cache_queries_total", "Prompts looked up in the prefix cache", count(|s| &s.prefix_queries)),
            ("bamba:prefix_cache_hits_total", "Prompts resumed from the prefix cache", count(|s| &s.prefix_hits)),
            (
                "bamba:prefix_cache_hit_tokens_total",
                "Prompt tokens taken from the prefix cache instead of prefilled",
                count(|s| &s.prefix_hit_tokens),
            ),
            (
                "bamba:prefix_cache_recomputed_tokens_total",
                "Prompt tokens held by the prefix cache but prefilled again (after the snapshot resumed from)",
                count(|s| &s.prefix_recomputed_tokens),
            ),
            ("bamba:prefix_cache_snapshots", "Recurrent-state snapshots held", count(|s| &s.prefix_snapshots)),
            ("bamba:prefix_cache_snapshot_bytes", "Bytes of those snapshots", count(|s| &s.prefix_snapshot_bytes)),
            (
                "bamba:prefix_cache_kv_bytes",
                "Bytes of attention K/V held by the prefix cache",
                count(|s| &s.prefix_kv_bytes),
            ),
            (
                "bamba:prefix_cache_evictions_total",
                "Prefix cache nodes evicted to stay within its budget",
                count(|s| &s.prefix_evictions),
            ),
            (
                "vllm:prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache",
                count(|s| &s.prefix_query_tokens),
            ),
            (
                "vllm:prefix_cache_hits_total",
                "Prompt tokens taken from the prefix cache",
                count(|s| &s.prefix_hit_tokens),
            ),
            (
                "vllm:prefix_cache_recomputed_tokens_total",
                "Prompt tokens held by the prefix cache but prefilled again",
                count(|s| &s.prefix_recomputed_tokens),
            ),
        ];
        for (name, help, value) in gauges {
            let kind = if name.ends_with("_total") { "counter" } else { "gauge" };
            text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
        }
        text
    }
}
