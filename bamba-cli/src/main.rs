//! The `bamba` command line.

mod allocator;
mod backend;
mod bench;
mod bench_serve;
mod cpu_profile;
mod default_model;
mod exit;
mod generate;
mod host;
mod info;
mod load;
mod logits;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use bamba_model::hub::{self, HubOptions};
use bamba_model::Precision;
use clap::{Args, Parser, Subcommand};

use backend::BackendKind;

#[derive(Parser)]
#[command(name = "bamba", version, about = "Inference engine for IBM's Bamba hybrid Mamba2/attention models")]
struct Cli {
    /// Threads of the CPU (ndarray) backend (default: every core).
    #[arg(long, global = true, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// More log detail (-v debug, -vv trace); RUST_LOG, when set, decides instead.
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "quiet")]
    verbose: u8,
    /// Less log detail (-q warnings and errors, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    quiet: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logits of every prompt position (no cache), written as safetensors (`logits`: F32 [len, vocab]).
    Logits(LogitsArgs),
    /// Generate new tokens after a prompt, streamed to stdout (`--json`: one record per prompt).
    Generate(GenerateArgs),
    /// What a config implies: layer plan, parameters, weight/state/KV bytes, sequences that fit.
    Info(InfoArgs),
    /// Throughput in the style of llama-bench: prefill (ppN) and decode (tgN, tgN@dD) at given batch
    /// sizes, with the fraction of the roofline reached; random weights need no checkpoint.
    Bench(BenchArgs),
    /// A serving benchmark against an OpenAI-compatible server (throughput, TTFT, TPOT, ITL, latency).
    BenchServe(bench_serve::BenchServeArgs),
    /// An OpenAI-compatible HTTP server (completions, chat, streaming) with continuous batching.
    Serve(serve::ServeArgs),
}

/// Options shared by commands that run the model.
#[derive(Args)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json + safetensors [+ tokenizer.json]) or repo id
    /// (owner/name: looked up in the Hugging Face cache — HF_HUB_CACHE, HF_HOME/hub or
    /// ~/.cache/huggingface/hub — and downloaded into it unless HF_HUB_OFFLINE=1); default: the tiny
    /// model embedded in this binary.
    #[arg(long)]
    pub model: Option<String>,
    /// The repo id's branch, tag or commit.
    #[arg(long, default_value = "main", requires = "model")]
    pub revision: String,
    /// Backend (default: the fastest compiled in; the `-unfused` forms run without Burn's fusion stream).
    #[arg(long, value_parser = backend_values())]
    pub backend: Option<BackendKind>,
    /// Compute dtype (default: bf16 on cuda, f32 elsewhere).
    #[arg(long, value_parser = dtype_values())]
    pub dtype: Option<Precision>,
}

impl ModelArgs {
    pub fn model_dir(&self) -> Result<PathBuf> {
        match &self.model {
            Some(spec) => Ok(hub::resolve(spec, &HubOptions::from_env().revision(&self.revision))?),
            None => default_model::directory(),
        }
    }

    /// The name a server reports: a repo id as given, else the directory's name.
    pub fn model_name(&self) -> Option<String> {
        let spec = self.model.as_ref()?;
        if hub::is_repo_id(spec) && !std::path::Path::new(spec).exists() {
            return Some(spec.clone());
        }
        let name = std::path::Path::new(spec).file_name().map(|n| n.to_string_lossy().into_owned());
        Some(name.unwrap_or_else(|| "bamba".into()))
    }
    pub fn backend(&self) -> Result<BackendKind> {
        match self.backend {
            Some(kind) => Ok(kind),
            None => Ok(BackendKind::best_compiled()?),
        }
    }
    pub fn precision(&self) -> Result<Precision> {
        match self.dtype {
            Some(precision) => Ok(precision),
            None => Ok(self.backend()?.default_precision()),
        }
    }
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',', required = true)]
    pub prompt_ids: Vec<u32>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
    /// Also write the hidden states: `hidden.0` the embeddings, `hidden.N` the output of layer N-1,
    /// each `[len, hidden]` f32 (to find the layer where logits part from a reference).
    #[arg(long)]
    pub hidden_states: bool,
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Prompt text (needs the model's tokenizer.json); `-` reads it from stdin.
    #[arg(long, conflicts_with_all = ["prompt_ids", "prompts_file"])]
    pub prompt: Option<String>,
    /// Prompt as comma-separated token ids, e.g. 1,2,3.
    #[arg(long, allow_negative_numbers = true, value_delimiter = ',', conflicts_with = "prompts_file")]
    pub prompt_ids: Option<Vec<u32>>,
    /// A file with one prompt per line: text, or comma-separated token ids (see --prompts-format).
    #[arg(long)]
    pub prompts_file: Option<PathBuf>,
    /// How to read --prompts-file lines: ids, text, or auto (ids if every line is an id list).
    #[arg(long, default_value = "auto", value_parser = ["auto", "ids", "text"])]
    pub prompts_format: String,
    /// Prompts run together in one left-padded batch (each row equals running it alone).
    #[arg(allow_negative_numbers = true, long, default_value_t = 8)]
    pub batch_size: usize,
    /// Most new tokens per prompt.
    #[arg(allow_negative_numbers = true, long, default_value_t = 64)]
    pub max_new_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub temperature: f32,
    /// Sample only among the K most likely tokens.
    #[arg(allow_negative_numbers = true, long)]
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to P.
    #[arg(allow_negative_numbers = true, long)]
    pub top_p: Option<f32>,
    /// Drop tokens less likely than P times the most likely one.
    #[arg(allow_negative_numbers = true, long)]
    pub min_p: Option<f32>,
    /// Divide positive (multiply negative) logits of tokens already seen by R, as transformers.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub repetition_penalty: f32,
    /// Subtract P from the logits of tokens already generated (OpenAI's presence penalty, -2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Subtract F times the count of each token generated so far from its logit (-2 to 2).
    #[arg(long, default_value_t = 0.0, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Seed of the sampler (same seed, same output).
    #[arg(allow_negative_numbers = true, long, default_value_t = 0)]
    pub seed: u64,
    /// Stop when this text appears in the output, which ends before it (repeatable; needs the tokenizer).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Keep generating past end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Prefill the prompt in chunks of N tokens.
    #[arg(allow_negative_numbers = true, long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub prefill_chunk: Option<usize>,
    /// Storage dtype of the SSM state between steps (f32 or, where the backend has it, bf16).
    #[arg(long, default_value = "f32", value_parser = dtype_values())]
    pub state_dtype: Precision,
    /// One JSON object per prompt on stdout instead of streamed text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint directory, config.json file or Hugging Face repo id.
    #[arg(long, required_unless_present = "preset", conflicts_with = "preset")]
    pub model: Option<PathBuf>,
    /// A named shape instead: bamba-9b or llama-8b-shape.
    #[arg(long)]
    pub preset: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Memory budget for weights + caches, e.g. 141GB or 80GiB.
    #[arg(allow_hyphen_values = true, long, value_parser = memory_bytes)]
    pub memory: Option<u64>,
    /// Context length (tokens per sequence) for the KV and fit numbers.
    #[arg(allow_negative_numbers = true, long, default_value_t = 4096)]
    pub context: u64,
    /// Weight and KV dtype for byte counts.
    #[arg(long, default_value = "bf16", value_parser = dtype_values())]
    pub dtype: Precision,
    /// SSM state dtype for byte counts.
    #[arg(long, default_value = "f32", value_parser = dtype_values())]
    pub state_dtype: Precision,
}

#[derive(Args)]
pub struct BenchArgs {
    /// `--model` loads real weights (and the load rate is reported); without `--model`, `--preset` or
    /// `--config`, the embedded tiny model runs.
    #[command(flatten)]
    pub common: ModelArgs,
    /// A named shape with seeded random weights: bamba-9b or llama-8b-shape.
    #[arg(long, conflicts_with_all = ["model", "config"])]
    pub preset: Option<String>,
    /// The shape of this config.json (a file or a directory holding one), with seeded random weights.
    #[arg(long, conflicts_with = "model")]
    pub config: Option<PathBuf>,
    /// Storage dtype of the SSM state between steps.
    #[arg(long, default_value = "f32", value_parser = dtype_values())]
    pub state_dtype: Precision,
    /// Tests, comma-separated: ppN (prefill N tokens), tgN (N decode steps), tgN@dD (after D tokens of context).
    #[arg(short = 't', long, value_delimiter = ',', default_value = "pp512,tg128")]
    pub tests: Vec<bench::BenchTest>,
    /// Batch sizes (sequences run together, 1 to 65536), comma-separated.
    #[arg(short = 'b', long, allow_negative_numbers = true, value_delimiter = ',', default_value = "1", value_parser = batch_size)]
    pub batch: Vec<usize>,
    /// Timed runs per test, 1 to 1000; the median is reported.
    #[arg(allow_negative_numbers = true, short = 'r', long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub repeats: u16,
    /// Untimed runs before timing, at most 1000 (autotuning happens there).
    #[arg(allow_negative_numbers = true, long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(0..=1000))]
    pub warmup: u16,
    /// Prefill in chunks of N tokens.
    #[arg(allow_negative_numbers = true, long, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub prefill_chunk: Option<usize>,
    /// Memory budget, e.g. 141GB: each batch size becomes the largest (up to it) whose weights, KV
    /// caches and states fit, by the `bamba info` model (activations not counted); none fitting is a
    /// skipped record.
    #[arg(allow_hyphen_values = true, long, value_parser = memory_bytes)]
    pub memory: Option<u64>,
    /// Seed of the random weights and prompt ids.
    #[arg(allow_negative_numbers = true, long, default_value_t = 0)]
    pub seed: u64,
    /// Memory bandwidth of the roofline in GB/s (default: 4300, the H200's measured copy rate).
    #[arg(allow_negative_numbers = true, long, default_value_t = 4300.0)]
    pub bandwidth_gbs: f64,
    /// Matmul peak of the roofline in TFLOP/s (default: 790, cuBLAS bf16 on the H200).
    #[arg(allow_negative_numbers = true, long, default_value_t = 790.0)]
    pub peak_tflops: f64,
    /// One JSON record per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Print the time of every run, warm-up included, to stderr (shows where compilation and
    /// autotuning go).
    #[arg(long)]
    pub progress: bool,
    /// Sample the host's CPU during each test's timed runs and write PREFIX-<test>.svg (flame graph)
    /// and .txt (top functions); needs the `cpu-profile` feature.
    #[arg(long, value_name = "PREFIX")]
    pub cpu_profile: Option<PathBuf>,
}

/// `--backend`'s values, listed in `--help` (`cpu` and `vulkan` are accepted as aliases).
fn backend_values() -> impl clap::builder::TypedValueParser<Value = BackendKind> {
    use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
    let names = BackendKind::ALL.map(|kind| match kind {
        BackendKind::Ndarray => PossibleValue::new("ndarray").alias("cpu"),
        BackendKind::Wgpu => PossibleValue::new("wgpu").alias("vulkan"),
        BackendKind::Cuda => PossibleValue::new("cuda"),
        BackendKind::WgpuUnfused => PossibleValue::new("wgpu-unfused"),
        BackendKind::CudaUnfused => PossibleValue::new("cuda-unfused"),
    });
    PossibleValuesParser::new(names).map(|name| name.parse::<BackendKind>().expect("a listed backend"))
}

/// `--dtype`'s and `--state-dtype`'s values, listed in `--help`.
fn dtype_values() -> impl clap::builder::TypedValueParser<Value = Precision> {
    use clap::builder::{PossibleValuesParser, TypedValueParser};
    PossibleValuesParser::new(["f32", "bf16", "f16"]).map(|name| name.parse::<Precision>().expect("a listed dtype"))
}

/// `--memory`: a size such as 141GB or 80GiB, in bytes.
fn memory_bytes(text: &str) -> Result<u64, String> {
    bamba_model::sizes::parse_memory(text).ok_or_else(|| format!("cannot parse {text:?} (try 141GB or 80GiB)"))
}

/// A bench batch size: 1 to 65536 sequences (as many as `serve --max-num-seqs` takes).
fn batch_size(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(n @ 1..=65536) => Ok(n),
        _ => Err(format!("a batch size is at least 1 and at most 65536 sequences, got {text:?}")),
    }
}

fn main() -> ExitCode {
    // Writing to a closed pipe (`bamba generate … | head`) ends the process quietly, as for any Unix tool,
    // instead of failing every later write.
    #[cfg(unix)]
    // SAFETY: restoring the default disposition of SIGPIPE before any thread starts.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    allocator::keep_freed_buffers();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line: the error and its causes, no backtrace.
            eprintln!("error: {error:#}");
            ExitCode::from(exit::code(&error))
        }
    }
}

/// Logs through `tracing` to stderr, at the level `-v`/`-q` ask for (info by default) unless RUST_LOG says.
fn init_logging(verbose: u8, quiet: u8) {
    let level = match (verbose, quiet) {
        (0, 0) => "info",
        (1, _) => "debug",
        (v, _) if v >= 2 => "trace",
        (_, 1) => "warn",
        _ => "error",
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| level.into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn run(cli: Cli) -> Result<()> {
    init_logging(cli.verbose, cli.quiet);
    // The CPU backend's threads (this one and rayon's) flush subnormals to zero (see the function).
    #[cfg(feature = "ndarray")]
    bamba_model::bamba_kernels::cpu::flush_subnormals_on_this_thread();
    let pool = rayon::ThreadPoolBuilder::new().num_threads(cli.threads.map_or(0, usize::from));
    #[cfg(feature = "ndarray")]
    let pool = pool.start_handler(|_| bamba_model::bamba_kernels::cpu::flush_subnormals_on_this_thread());
    pool.build_global()?;
    match cli.command {
        Command::Logits(args) => logits::run(&args),
        Command::Info(args) => info::run(&args),
        Command::Generate(args) => generate::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Serve(args) => serve::run(&args),
        Command::BenchServe(args) => bench_serve::run(args),
    }
}
