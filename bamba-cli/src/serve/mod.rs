//! `bamba serve`: the serving engine behind an OpenAI-compatible HTTP API (axum on tokio).
//!
//! The HTTP side starts first (`/health` answers 503 while the model loads); the engine then runs
//! on the thread that loaded the model, and requests reach it through an [`EngineHandle`]. SIGTERM
//! or Ctrl-C drains: no new requests, running ones finish (up to `--drain-timeout`), exit 0.

mod api;
mod chat_template;
mod error;
mod generation;
mod metrics;
mod routes;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::engine::{CacheCosts, Engine, EngineConfig, EngineHandle, PrefixCacheConfig};
use bamba_model::generate::eos_ids;
use bamba_model::sizes::MemoryModel;
use bamba_model::{BambaConfig, BambaModel, Precision, TextTokenizer};
use clap::Args;

use crate::backend::{dispatch, BackendJob};
use crate::load::load_model;
use crate::ModelArgs;
use chat_template::ChatTemplate;

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Serve a named shape (bamba-9b, llama-8b-shape) with seeded random weights on token-id prompts
    /// (for serving benchmarks without a checkpoint).
    #[arg(long, conflicts_with_all = ["model", "config"])]
    pub preset: Option<String>,
    /// Serve the shape of this config.json with seeded random weights, like --preset.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0: any free port, printed at start-up).
    #[arg(allow_negative_numbers = true, long, default_value_t = 8000)]
    pub port: u16,
    /// The model name clients send and `/v1/models` lists (default: the checkpoint directory's name).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Require `Authorization: Bearer KEY` on /v1 routes.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Sequences decoded together at most.
    #[arg(allow_negative_numbers = true, long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    pub max_num_seqs: u32,
    /// Prompt plus new tokens of one request at most (default: the model's context length, at most 32768).
    #[arg(allow_negative_numbers = true, long, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_model_len: Option<u32>,
    /// Tokens one engine step processes at most (decodes plus prefill chunks).
    #[arg(allow_negative_numbers = true, long, default_value_t = 2048, value_parser = clap::value_parser!(u32).range(2..=1_048_576))]
    pub max_num_batched_tokens: u32,
    /// Memory for weights and caches, e.g. 70GB (default: half the host's available memory on the CPU,
    /// 90% of the GPU's free memory on CUDA, no limit beyond --max-num-seqs on wgpu).
    #[arg(allow_hyphen_values = true, long, value_parser = crate::memory_bytes)]
    pub memory: Option<u64>,
    /// Memory for the prefix cache (K/V and state snapshots of earlier sequences), e.g. 4GB
    /// (default: a quarter of what the memory budget leaves after the weights, else 2GB).
    #[arg(allow_hyphen_values = true, long, value_parser = crate::memory_bytes, conflicts_with = "no_prefix_cache")]
    pub prefix_cache_memory: Option<u64>,
    /// Of the prefix cache's memory, what its K/V may take at most, e.g. 1GB (default: all of it,
    /// shared with the snapshots as they come).
    #[arg(allow_hyphen_values = true, long, value_parser = crate::memory_bytes, conflicts_with = "no_prefix_cache")]
    pub prefix_cache_kv_memory: Option<u64>,
    /// Of the prefix cache's memory, what its state snapshots may take at most, e.g. 3GB (default:
    /// all of it, shared with the K/V as they come).
    #[arg(allow_hyphen_values = true, long, value_parser = crate::memory_bytes, conflicts_with = "no_prefix_cache")]
    pub prefix_cache_snapshot_memory: Option<u64>,
    /// Tokens between the prefix cache's state snapshots during a prefill (default: the model's SSD
    /// chunk size). Long prompts are prefilled in chunks ending on this grid; a hit recomputes fewer
    /// tokens than this.
    #[arg(allow_negative_numbers = true, long, value_parser = clap::value_parser!(u32).range(1..), conflicts_with = "no_prefix_cache")]
    pub prefix_snapshot_interval: Option<u32>,
    /// Turn the prefix cache off: every prompt is prefilled from its first token.
    #[arg(long)]
    pub no_prefix_cache: bool,
    /// Requests waiting for admission at most; more get 429.
    #[arg(allow_negative_numbers = true, long, default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_queue: u32,
    /// A Jinja chat template file (overrides the checkpoint's).
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
    /// Storage dtype of the SSM state between steps.
    #[arg(long, default_value = "f32", value_parser = crate::dtype_values())]
    pub state_dtype: Precision,
    /// Largest request body in bytes.
    #[arg(allow_negative_numbers = true, long, default_value_t = 4 << 20)]
    pub max_body_bytes: usize,
    /// Seconds running requests get to finish after SIGTERM.
    #[arg(allow_negative_numbers = true, long, default_value_t = 30)]
    pub drain_timeout: u64,
}

/// What routes need to know of the options.
pub struct ServeOptions {
    pub served_model_name: String,
    pub api_key: Option<String>,
    pub max_model_len: usize,
    pub max_body_bytes: usize,
}

/// Shared by every request.
pub struct AppState {
    pub options: ServeOptions,
    /// Set once the model is loaded.
    pub engine: OnceLock<EngineHandle>,
    pub tokenizer: Option<Arc<TextTokenizer>>,
    pub template: Option<ChatTemplate>,
    pub eos_ids: Vec<u32>,
    pub vocab_size: usize,
    pub metrics: metrics::Metrics,
    pub created: u64,
    request_ids: AtomicU64,
}

impl AppState {
    pub fn next_request_id(&self) -> u64 {
        self.request_ids.fetch_add(1, Ordering::Relaxed)
    }
}

/// The prefix cache's memory when neither --prefix-cache-memory nor --memory is given.
const DEFAULT_PREFIX_CACHE_BYTES: u64 = 2 << 30;

/// The embedded tiny model's chat template (it was trained on plain text; this only frames turns).
const TINY_CHAT_TEMPLATE: &str = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}\
{% if add_generation_prompt %}assistant:{% endif %}";

pub fn run(args: &ServeArgs) -> Result<()> {
    let (_, config, dir) = crate::bench::shape(&args.common, &args.preset, &args.config)?;
    let tokenizer = match &dir {
        Some(dir) => TextTokenizer::from_dir(dir)?.map(Arc::new),
        None => None,
    };
    let template = match &dir {
        Some(dir) => match ChatTemplate::load(dir, args.chat_template.as_deref())? {
            Some(t) => Some(t),
            None if args.common.model.is_none() => {
                Some(ChatTemplate::new(TINY_CHAT_TEMPLATE.into(), String::new(), String::new())?)
            }
            None => None,
        },
        None => None,
    };
    let limit = config.context_length();
    let max_model_len = match args.max_model_len {
        Some(len) if len as usize > limit => {
            return Err(crate::exit::usage(format!(
                "--max-model-len {len} is more than the model's context length ({limit})"
            )))
        }
        Some(len) => len as usize,
        None => limit.min(32768),
    };
    if args.max_num_batched_tokens <= args.max_num_seqs {
        return Err(crate::exit::usage(format!(
            "--max-num-batched-tokens ({}) must exceed --max-num-seqs ({}): each step decodes one token per sequence",
            args.max_num_batched_tokens, args.max_num_seqs
        )));
    }
    let precision = args.common.precision()?;
    let served_model_name = args.served_model_name.clone().unwrap_or_else(|| {
        match (args.common.model_name(), &args.preset, &args.config) {
            (Some(name), _, _) => name,
            (None, Some(name), _) => name.clone(),
            (None, None, Some(file)) => file.file_stem().map_or("bamba".into(), |n| n.to_string_lossy().into_owned()),
            (None, None, None) => "bamba-tiny".into(),
        }
    });
    let costs = CacheCosts::new(&config, precision.dtype(), args.state_dtype.dtype());
    let weights = MemoryModel::new(&config, precision.dtype().size() as u64, 0, 0).weight_bytes;
    // Without --memory, requests may use what the backend's machine has (half the host's available
    // memory on the CPU, 90% of a CUDA GPU's free memory), so that a burst of long prompts waits
    // instead of running it out of memory. wgpu has no such query: pass --memory there.
    let backend = args.common.backend()?;
    let gpu_free = backend.free_device_memory();
    let default_budget = match args.memory {
        None => crate::host::default_budget(backend, gpu_free),
        Some(_) => None,
    };
    // What the budget leaves of a GPU's free memory is for activations; the engine gives the
    // allocator's leftovers back when they take more than half of it (at least 1 GiB).
    let allocator_slack = gpu_free.and_then(|free| {
        let budget = args.memory.or(default_budget.map(|(bytes, _)| bytes))?;
        Some((free.saturating_sub(budget) / 2).max(1 << 30))
    });
    let cache_budget = match (args.memory, default_budget.map(|(bytes, _)| bytes)) {
        (Some(memory), _) if memory <= weights => {
            return Err(crate::exit::usage(format!(
                "--memory {memory} bytes does not even hold the weights ({weights} bytes)"
            )))
        }
        (None, Some(budget)) if budget <= weights => {
            let what = default_budget.map_or("", |(_, what)| what);
            return Err(crate::exit::usage(format!(
                "the weights ({weights} bytes) take more than {what} ({budget} bytes); set the budget with --memory"
            )));
        }
        (Some(memory), _) | (None, Some(memory)) => Some(memory - weights),
        (None, None) => None,
    };
    // The prefix cache comes out of what the memory budget leaves for caches.
    let exact_prefixes = !config.rope.as_ref().is_some_and(|r| r.depends_on_length());
    let prefix_flag = [
        ("--prefix-cache-memory", args.prefix_cache_memory),
        ("--prefix-cache-kv-memory", args.prefix_cache_kv_memory),
        ("--prefix-cache-snapshot-memory", args.prefix_cache_snapshot_memory),
    ]
    .into_iter()
    .find_map(|(flag, bytes)| bytes.map(|_| flag));
    if let (false, Some(flag)) = (exact_prefixes, prefix_flag) {
        return Err(crate::exit::usage(format!(
            "{flag}: {}",
            bamba_model::engine::EngineConfigError::PrefixCacheRope {
                rope_type: config.rope.as_ref().map_or("default", |r| r.scaling.rope_type())
            }
        )));
    }
    let prefix_budget = match (args.no_prefix_cache || !exact_prefixes, args.prefix_cache_memory, cache_budget) {
        (true, _, _) => None,
        (false, Some(bytes), _) => Some(bytes),
        (false, None, Some(caches)) => Some(caches / 4),
        (false, None, None) => Some(DEFAULT_PREFIX_CACHE_BYTES),
    };
    let cache_budget = match (cache_budget, prefix_budget) {
        (Some(caches), Some(prefix)) if prefix >= caches => {
            return Err(crate::exit::usage(format!(
                "--prefix-cache-memory ({prefix} bytes) leaves nothing of the memory budget for running requests ({caches} \
                 bytes after the weights)"
            )))
        }
        (Some(caches), prefix) => Some(caches - prefix.unwrap_or(0)),
        (None, _) => None,
    };
    print_memory_plan(weights, costs, cache_budget, args.max_num_seqs as u64, max_model_len as u64);
    if let Some((_, what)) = default_budget {
        eprintln!("  (the budget is {what}; --memory sets it)");
    }
    let snapshot_interval = args.prefix_snapshot_interval.map_or(config.mamba_chunk_size, |n| n as usize);
    let caps: String = [("K/V", args.prefix_cache_kv_memory), ("snapshots", args.prefix_cache_snapshot_memory)]
        .into_iter()
        .filter_map(|(what, bytes)| bytes.map(|b| format!(", {what} at most {}", gb(b))))
        .collect();
    match prefix_budget {
        Some(bytes) => eprintln!(
            "  prefix cache       {} (snapshots every {snapshot_interval} tokens, {} each{caps})",
            gb(bytes),
            gb(costs.state)
        ),
        None if !exact_prefixes => eprintln!("  prefix cache       off (RoPE that depends on the sequence's length)"),
        None => eprintln!("  prefix cache       off"),
    }
    let engine_config = EngineConfig {
        max_num_seqs: args.max_num_seqs as usize,
        max_num_batched_tokens: args.max_num_batched_tokens as usize,
        max_model_len,
        max_queue: args.max_queue as usize,
        cache_budget,
        prefix_cache: prefix_budget.map(|budget| PrefixCacheConfig {
            budget,
            kv_budget: args.prefix_cache_kv_memory,
            snapshot_budget: args.prefix_cache_snapshot_memory,
            snapshot_interval,
        }),
        allocator_slack,
    };
    // checked before the weights load, which can take minutes
    engine_config.validate(&config, &costs).map_err(|e| crate::exit::usage(format!("the engine's settings: {e}")))?;
    let state = Arc::new(AppState {
        options: ServeOptions {
            served_model_name,
            api_key: args.api_key.clone(),
            max_model_len,
            max_body_bytes: args.max_body_bytes,
        },
        engine: OnceLock::new(),
        tokenizer,
        template,
        eos_ids: match &dir {
            Some(dir) => eos_ids(dir, &config.eos_token_ids)?,
            None => config.eos_token_ids.clone(),
        },
        vocab_size: config.vocab_size,
        metrics: metrics::Metrics::new(),
        created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
        request_ids: AtomicU64::new(0),
    });
    let address: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .or_else(|_| {
            use std::net::ToSocketAddrs;
            (args.host.as_str(), args.port).to_socket_addrs().map(|mut a| a.next()).ok().flatten().ok_or(())
        })
        .map_err(|_| anyhow::anyhow!("cannot resolve --host {:?}", args.host))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let listener =
        runtime.block_on(tokio::net::TcpListener::bind(address)).with_context(|| format!("listening on {address}"))?;
    let bound = listener.local_addr()?;
    eprintln!("listening on http://{bound}");
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    let server_state = state.clone();
    let server = std::thread::spawn(move || -> Result<()> {
        runtime.block_on(serve_until_drained(listener, server_state, drain_timeout))
    });
    let weights = match dir {
        Some(dir) => Weights::Checkpoint(dir),
        None => Weights::Random(Box::new(config)),
    };
    let job = ServeJob { weights, precision, state_dtype: args.state_dtype, config: engine_config, state };
    let engine_result = dispatch(backend, job);
    let server_result = server.join().map_err(|_| anyhow::anyhow!("the HTTP thread panicked"))?;
    engine_result?;
    server_result
}

/// Serves until SIGTERM or Ctrl-C, then drains: new requests get 503, running ones finish (at most
/// `drain_timeout`).
async fn serve_until_drained(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    drain_timeout: Duration,
) -> Result<()> {
    let app = routes::router(state.clone());
    let signalled = Arc::new(tokio::sync::Notify::new());
    let shutdown = {
        let signalled = signalled.clone();
        async move {
            shutdown_signal().await;
            tracing::info!("draining: no new requests");
            if let Some(handle) = state.engine.get() {
                handle.drain();
            }
            signalled.notify_one();
        }
    };
    let served = axum::serve(listener, app).with_graceful_shutdown(shutdown);
    // Connections get `drain_timeout` after the signal to finish; then they are closed, which cancels
    // their requests. Once this returns, the last engine handle goes with the state and the engine
    // thread ends.
    let result = tokio::select! {
        result = served => result.map_err(anyhow::Error::from),
        _ = async {
            signalled.notified().await;
            tokio::time::sleep(drain_timeout).await;
        } => {
            tracing::warn!("drain timeout: closing the remaining connections");
            Ok(())
        }
    };
    tracing::info!("stopped");
    result
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

fn gb(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.2} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.2} MB", b as f64 / 1e6),
        b => format!("{:.1} KB", b as f64 / 1e3),
    }
}

fn print_memory_plan(weights: u64, costs: CacheCosts, budget: Option<u64>, max_num_seqs: u64, max_model_len: u64) {
    eprintln!("memory plan:");
    eprintln!("  weights            {}", gb(weights));
    eprintln!("  state per sequence {}", gb(costs.state));
    eprintln!("  KV per token       {} bytes", costs.kv_per_slot);
    match budget {
        Some(b) => eprintln!("  cache budget       {}", gb(b)),
        None => eprintln!("  cache budget       unbounded (--memory not given); {max_num_seqs} sequences at most"),
    }
    for context in [4096u64, 32768] {
        if context > max_model_len {
            continue;
        }
        let per = costs.sequence_bytes(context as usize);
        let fit = budget.map_or(max_num_seqs, |b| (b / per.max(1)).min(max_num_seqs));
        eprintln!("  sequences at {context:>5} tokens: {fit} ({} each)", gb(per));
    }
}

/// Where the weights come from.
enum Weights {
    Checkpoint(PathBuf),
    /// Seeded random weights of this shape (their outputs mean nothing).
    Random(Box<BambaConfig>),
}

struct ServeJob {
    weights: Weights,
    precision: Precision,
    state_dtype: Precision,
    config: EngineConfig,
    state: Arc<AppState>,
}

impl BackendJob for ServeJob {
    type Output = ();
    fn run<B: BambaOps>(self, device: B::Device) -> Result<()> {
        let model = match self.weights {
            Weights::Checkpoint(dir) => {
                let (model, took) = load_model::<B>(&dir, &device, self.precision)?;
                tracing::info!(seconds = took.as_secs_f64(), "model loaded");
                model
            }
            Weights::Random(config) => {
                let model = BambaModel::<B>::random(*config, &device, self.precision, 0)?;
                tracing::info!("random weights made");
                model
            }
        };
        let (engine, handle) = Engine::new(model, self.config, self.state_dtype.dtype())?;
        if self.state.engine.set(handle).is_err() {
            bail!("the engine was started twice");
        }
        drop(self.state);
        tracing::info!("ready");
        engine.run()?;
        // A SIGTERM while the weights were still being made ends the engine at once, with their
        // kernels still queued; exiting then tore the CUDA context down under them (a segfault in 2 of
        // 6 tries on an H100). Wait for the device first.
        B::sync(&device).map_err(bamba_model::DeviceError::from)?;
        Ok(())
    }
}
