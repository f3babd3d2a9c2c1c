//! The `bamba` command line.

mod backend;
mod info;
mod logits;

use std::path::PathBuf;

use anyhow::Result;
use bamba_model::Precision;
use clap::{Args, Parser, Subcommand};

use backend::BackendKind;

#[derive(Parser)]
#[command(name = "bamba", version, about = "Inference engine for IBM's Bamba hybrid Mamba2/attention models")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Logits of every prompt position (no cache), written as safetensors (`logits`: F32 [len, vocab]).
    Logits(LogitsArgs),
    /// What a config implies: layer plan, parameters, weight/state/KV bytes, sequences that fit.
    Info(InfoArgs),
}

/// Options shared by commands that run the model.
#[derive(Args)]
pub struct ModelArgs {
    /// Hugging Face checkpoint directory (config.json + safetensors).
    #[arg(long)]
    pub model: PathBuf,
    /// ndarray, wgpu or cuda (default: the fastest compiled in).
    #[arg(long)]
    pub backend: Option<String>,
    /// Compute dtype: f32, bf16 or f16 (default: bf16 on cuda, f32 elsewhere).
    #[arg(long)]
    pub dtype: Option<String>,
}

impl ModelArgs {
    pub fn backend(&self) -> Result<BackendKind> {
        match &self.backend {
            Some(name) => name.parse().map_err(anyhow::Error::msg),
            None => BackendKind::best_compiled(),
        }
    }
    pub fn precision(&self) -> Result<Precision> {
        match &self.dtype {
            Some(name) => name.parse().map_err(anyhow::Error::msg),
            None => Ok(self.backend()?.default_precision()),
        }
    }
}

#[derive(Args)]
pub struct LogitsArgs {
    #[command(flatten)]
    pub common: ModelArgs,
    /// Comma-separated token ids, e.g. 1,2,3.
    #[arg(long, value_delimiter = ',', required = true)]
    pub prompt_ids: Vec<u32>,
    /// Output safetensors file.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(Args)]
pub struct InfoArgs {
    /// Checkpoint directory or config.json file.
    #[arg(long)]
    pub model: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Memory budget for weights + caches, e.g. 141GB or 80GiB.
    #[arg(long)]
    pub memory: Option<String>,
    /// Context length (tokens per sequence) for the KV and fit numbers.
    #[arg(long, default_value_t = 4096)]
    pub context: u64,
    /// Weight and KV dtype for byte counts.
    #[arg(long, default_value = "bf16")]
    pub dtype: Precision,
    /// SSM state dtype for byte counts.
    #[arg(long, default_value = "f32")]
    pub state_dtype: Precision,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Logits(args) => logits::run(&args),
        Command::Info(args) => info::run(&args),
    }
}
