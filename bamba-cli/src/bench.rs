//! `bamba bench`: throughput in the style of llama-bench. Tests are `ppN` (prefill N tokens per
//! sequence into an empty cache, logits of the last position), `tgN` (N decode steps) and `tgN@dD`
//! (N decode steps after a context of D tokens), each at every `--batch`. Runs need no checkpoint:
//! `--preset` or `--config` gets seeded random weights in the chosen dtype; `--model` loads real ones
//! (and reports the load rate), and with none of the three the embedded tiny model runs.
//!
//! Method: `--warmup` untimed runs (autotune happens there), then the median of `--repeats` timed
//! runs, each ending in a device sync. A decode step is timed as an engine runs it: forward one token
//! per sequence, greedy argmax on the device, read the chosen ids back to the host. The context of
//! `tgN@dD` is declared filled without running its prefill ([`HybridCache::assume_filled`]): decode
//! moves the same bytes either way. Each record carries the roofline of its test from the byte/FLOP
//! model in `bamba_model::sizes` (the one `bamba info` uses) and the fraction of it reached.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::presets::preset;
use bamba_model::sizes::{prefill_flops, MemoryModel};
use bamba_model::{BambaConfig, BambaModel, DeviceError, HybridCache, Precision};
use burn::tensor::{Int, Tensor, TensorData};
use serde_json::{json, Value};

use crate::backend::{dispatch, BackendJob, BackendKind};
use crate::cpu_profile::CpuProfile;
use crate::info::human;
use crate::{BenchArgs, ModelArgs};

/// One benchmark test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BenchTest {
    /// Prefill `tokens` per sequence from an empty cache.
    Prefill { tokens: usize },
    /// `steps` decode steps after `context` cached tokens.
    Decode { steps: usize, context: usize },
}

impl fmt::Display for BenchTest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BenchTest::Prefill { tokens } => write!(f, "pp{tokens}"),
            BenchTest::Decode { steps, context: 0 } => write!(f, "tg{steps}"),
            BenchTest::Decode { steps, context } => write!(f, "tg{steps}@d{context}"),
        }
    }
}

impl FromStr for BenchTest {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown test {s:?}: expected ppN, tgN or tgN@dD (e.g. pp512, tg128, tg128@d4096)");
        let count = |t: &str| t.parse::<usize>().ok().filter(|&n| n > 0).ok_or_else(bad);
        let s = s.trim();
        if let Some(n) = s.strip_prefix("pp") {
            return Ok(BenchTest::Prefill { tokens: count(n)? });
        }
        let rest = s.strip_prefix("tg").ok_or_else(bad)?;
        match rest.split_once("@d") {
            Some((steps, context)) => {
                Ok(BenchTest::Decode { steps: count(steps)?, context: context.parse().map_err(|_| bad())? })
            }
            None => Ok(BenchTest::Decode { steps: count(rest)?, context: 0 }),
        }
    }
}

/// The model shape to run, its name in the records, and the checkpoint to load (`None`: random weights):
/// `--preset` or `--config` give a shape with random weights, else `--model` (or the embedded model).
/// Shared by `bench` and `serve`.
pub fn shape(
    common: &ModelArgs,
    preset_name: &Option<String>,
    config: &Option<PathBuf>,
) -> Result<(String, BambaConfig, Option<PathBuf>)> {
    match (preset_name, config) {
        (Some(name), _) => Ok((name.clone(), preset(name)?, None)),
        (None, Some(file)) => {
            let config = BambaConfig::from_path(file).with_context(|| format!("reading {}", file.display()))?;
            Ok((file.display().to_string(), config, None))
        }
        (None, None) => {
            let dir = common.model_dir()?;
            let config = BambaConfig::from_path(&dir).with_context(|| format!("reading {}", dir.display()))?;
            let name = common.model.clone().unwrap_or_else(|| "tiny-bamba".into());
            Ok((name, config, Some(dir)))
        }
    }
}

fn median(mut times: Vec<Duration>) -> Duration {
    times.sort();
    times[times.len() / 2]
}

struct Job<'a> {
    args: &'a BenchArgs,
    name: String,
    config: BambaConfig,
    /// Real weights from here; random ones when `None`.
    checkpoint: Option<PathBuf>,
    backend: BackendKind,
    precision: Precision,
    /// `--memory`, else what the backend's machine has before anything is loaded, and what it is.
    budget: Option<(u64, &'static str)>,
}

impl Job<'_> {
    /// The fields every record of this run shares.
    fn base(&self) -> Value {
        json!({
            "model": self.name,
            "backend": self.backend.to_string(),
            "dtype": self.precision.to_string(),
            "state_dtype": self.args.state_dtype.to_string(),
            "weights": if self.checkpoint.is_some() { "checkpoint" } else { "random" },
            "threads": rayon::current_num_threads(),
        })
    }
}

/// Prints records as they come: a table row, or one JSON object per line with `--json`.
struct Report {
    json: bool,
}

impl Report {
    fn header(&self) {
        if !self.json {
            println!(
                "| {:<16} | {:<12} | {:<5} | {:<12} | {:>5} | {:>10} | {:>10} | {:>10} | {:>8} |",
                "model", "backend", "dtype", "test", "batch", "tok/s", "ms/step", "roof tok/s", "of roof"
            );
            let widths = [16, 12, 5, 12, 5, 10, 10, 10, 8];
            println!("|{}|", widths.map(|w| "-".repeat(w + 2)).join("|"));
        }
    }

    fn record(&self, r: &Value) {
        if self.json {
            println!("{r}");
            return;
        }
        if let Some(reason) = r["skipped"].as_str() {
            println!("| {} at batch {}: skipped, {reason} |", r["test"].as_str().unwrap_or(""), r["requested_batch"]);
            return;
        }
        let f = |k: &str| r[k].as_f64().unwrap_or(f64::NAN);
        let model = r["model"].as_str().unwrap_or("");
        let model = model.rsplit('/').find(|s| !s.is_empty()).unwrap_or(model);
        println!(
            "| {:<16} | {:<12} | {:<5} | {:<12} | {:>5} | {:>10.1} | {:>10.3} | {:>10.1} | {:>7.1}% |",
            model,
            r["backend"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            r["test"].as_str().unwrap_or(""),
            r["batch"].as_u64().unwrap_or(0),
            f("tokens_per_s"),
            f("ms_per_step"),
            f("roofline_tokens_per_s"),
            100.0 * f("roofline_fraction"),
        );
    }
}

impl BackendJob for Job<'_> {
    type Output = ();

    fn run<B: BambaOps>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let report = Report { json: args.json };
        let start = Instant::now();
        let model = match &self.checkpoint {
            Some(dir) => crate::load::load_model::<B>(dir, &device, self.precision)?.0,
            None => BambaModel::<B>::random(self.config.clone(), &device, self.precision, args.seed)?,
        };
        B::sync(&device).map_err(DeviceError::from).context("after loading the weights")?;
        let load_s = start.elapsed().as_secs_f64();
        let memory =
            MemoryModel::new(&self.config, self.precision.bytes(), args.state_dtype.bytes(), self.precision.bytes());
        let mut load = self.base();
        load["test"] = json!("load");
        load["seconds"] = json!(load_s);
        load["weight_bytes"] = json!(memory.weight_bytes);
        load["gb_per_s"] = json!(memory.weight_bytes as f64 / load_s / 1e9);
        if args.json {
            println!("{load}");
        } else {
            eprintln!(
                "{} weights ({:.2} GB {}) ready in {load_s:.2} s ({:.2} GB/s)",
                if self.checkpoint.is_some() { "checkpoint" } else { "random" },
                memory.weight_bytes as f64 / 1e9,
                self.precision,
                memory.weight_bytes as f64 / load_s / 1e9
            );
        }
        report.header();
        for &test in &args.tests {
            for &requested in &args.batch {
                let record = match self.batch_that_fits(&memory, test, requested) {
                    Ok(batch) => {
                        let mut record = self.measure(&model, &memory, test, batch)?;
                        record["requested_batch"] = json!(requested);
                        record
                    }
                    Err(reason) => {
                        let mut record = self.base();
                        record["test"] = json!(test.to_string());
                        record["requested_batch"] = json!(requested);
                        record["skipped"] = json!(reason);
                        record
                    }
                };
                report.record(&record);
            }
        }
        Ok(())
    }
}

impl Job<'_> {
    /// The largest batch up to `requested` whose weights, KV caches and recurrent states fit in the
    /// budget (activations are not counted), or why none does. Without `--memory` the budget is half
    /// the host's available memory on the CPU and 90% of the GPU's free memory on CUDA (the rest for
    /// activations and the system), so that a batch too large is cut to what can exist instead of
    /// aborting on allocation (no bound on wgpu, where that is unknown).
    fn batch_that_fits(&self, memory: &MemoryModel, test: BenchTest, requested: usize) -> Result<usize, String> {
        let Some((budget, what)) = self.budget else { return Ok(requested) };
        let positions = match test {
            BenchTest::Prefill { tokens } => tokens,
            BenchTest::Decode { steps, context } => context + steps,
        } as u64;
        match memory.sequences_that_fit(budget, positions).min(requested as u64) {
            0 => Err(format!(
                "one sequence of {positions} positions needs {} next to {} of weights; {} is {}",
                human(memory.bytes_per_sequence(positions)),
                human(memory.weight_bytes),
                what,
                human(budget)
            )),
            n => Ok(n as usize),
        }
    }
}

impl Job<'_> {
    fn measure<B: BambaOps>(
        &self,
        model: &BambaModel<B>,
        memory: &MemoryModel,
        test: BenchTest,
        batch: usize,
    ) -> Result<Value> {
        let args = self.args;
        let device = &model.device;
        let sync = || Ok(B::sync(device).map_err(DeviceError::from)?);
        let state_dtype = args.state_dtype.dtype();
        let vocab = self.config.vocab_size;
        // Seeded ids spread over the vocabulary (the values do not change the work done).
        let ids = |len: usize| -> Tensor<B, 2, Int> {
            let flat: Vec<i64> =
                (0..batch * len).map(|i| ((i as u64 * 2_654_435_761 + args.seed) % vocab as u64) as i64).collect();
            Tensor::from_data(TensorData::new(flat, [batch, len]), device)
        };
        let label = format!("{test} b{batch}");
        let mut record = self.base();
        record["test"] = json!(test.to_string());
        record["batch"] = json!(batch);
        let bandwidth = args.bandwidth_gbs * 1e9;
        match test {
            BenchTest::Prefill { tokens } => {
                let mut cache = model.new_cache(batch, tokens, state_dtype)?;
                let prompt = ids(tokens);
                let mut run = || -> Result<Duration> {
                    cache.reset();
                    cache.set_prefill_end(tokens);
                    let start = Instant::now();
                    let chunk = args.prefill_chunk.unwrap_or(tokens).max(1);
                    let mut done = 0;
                    while done < tokens {
                        let len = chunk.min(tokens - done);
                        model.forward_cached(prompt.clone().narrow(1, done, len), &mut cache, true)?;
                        done += len;
                    }
                    sync()?;
                    Ok(start.elapsed())
                };
                let time = self.repeat(&label, &mut run)?;
                let flops = prefill_flops(&self.config, batch as u64, tokens as u64);
                let roof_s = (flops / (args.peak_tflops * 1e12)).max(memory.weight_bytes as f64 / bandwidth);
                let secs = time.as_secs_f64();
                record["tokens"] = json!(tokens);
                record["seconds"] = json!(secs);
                record["ms_per_step"] = json!(secs * 1e3);
                record["tokens_per_s"] = json!((batch * tokens) as f64 / secs);
                record["flops"] = json!(flops);
                record["tflop_per_s"] = json!(flops / secs / 1e12);
                record["roofline_tokens_per_s"] = json!((batch * tokens) as f64 / roof_s);
                record["roofline_fraction"] = json!(roof_s / secs);
            }
            BenchTest::Decode { steps, context } => {
                let mut cache = model.new_cache(batch, context + steps, state_dtype)?;
                let first = ids(1);
                let mut run =
                    || -> Result<Duration> { decode_run(model, &mut cache, first.clone(), context, steps, &sync) };
                let time = self.repeat(&label, &mut run)?;
                let secs = time.as_secs_f64();
                let step_s = secs / steps as f64;
                // Bytes of the middle step stand for the average (KV reads grow linearly).
                let bytes = memory.decode_step_bytes(batch as u64, (context + steps / 2) as u64);
                let byte_s = bytes as f64 / bandwidth;
                record["steps"] = json!(steps);
                record["context"] = json!(context);
                record["seconds"] = json!(secs);
                record["ms_per_step"] = json!(step_s * 1e3);
                record["tokens_per_s"] = json!((batch * steps) as f64 / secs);
                record["bytes_per_step"] = json!(bytes);
                record["achieved_gb_per_s"] = json!(bytes as f64 / step_s / 1e9);
                record["byte_time_ms"] = json!(byte_s * 1e3);
                // What a step costs beyond moving its bytes at the roofline bandwidth: launches, host
                // work, the token read-back, and kernels slower than the bandwidth.
                record["overhead_ms"] = json!((step_s - byte_s) * 1e3);
                record["roofline_tokens_per_s"] = json!(batch as f64 / byte_s);
                record["roofline_fraction"] = json!(byte_s / step_s);
            }
        }
        record["repeats"] = json!(args.repeats);
        record["bandwidth_gb_per_s"] = json!(args.bandwidth_gbs);
        record["peak_tflop_per_s"] = json!(args.peak_tflops);
        Ok(record)
    }

    /// `--warmup` untimed runs, then the median of `--repeats` timed ones.
    fn repeat(&self, label: &str, run: &mut dyn FnMut() -> Result<Duration>) -> Result<Duration> {
        let (warmup, repeats) = (usize::from(self.args.warmup), usize::from(self.args.repeats));
        let mut timed = |kind: &str, i: usize, n: usize| -> Result<Duration> {
            let time = run()?;
            if self.args.progress {
                eprintln!("{label}: {kind} {}/{n}: {:.3} s", i + 1, time.as_secs_f64());
            }
            Ok(time)
        };
        for i in 0..warmup {
            timed("warm-up", i, warmup)?;
        }
        let profile = self.args.cpu_profile.as_deref().map(|prefix| CpuProfile::start(prefix, label)).transpose()?;
        let times = (0..repeats).map(|i| timed("run", i, repeats)).collect::<Result<Vec<_>>>()?;
        if let Some(profile) = profile {
            eprintln!("{label}: host profile in {}", profile.finish()?.display());
        }
        Ok(median(times))
    }
}

/// `steps` greedy decode steps after `context` declared-filled positions; each step reads the chosen
/// ids back to the host, as an engine must to stream and stop.
fn decode_run<B: BambaOps>(
    model: &BambaModel<B>,
    cache: &mut HybridCache<B>,
    first: Tensor<B, 2, Int>,
    context: usize,
    steps: usize,
    sync: &dyn Fn() -> Result<()>,
) -> Result<Duration> {
    cache.reset();
    cache.assume_filled(context)?;
    sync()?;
    let batch = cache.batch();
    let start = Instant::now();
    let mut ids = first;
    for _ in 0..steps {
        let logits = model.forward_cached(ids.clone(), cache, true)?;
        ids = logits.argmax(2).reshape([batch, 1]);
        let chosen = ids.clone().try_into_data().map_err(DeviceError::from)?;
        if chosen.num_elements() != batch {
            bail!("decode step returned {} ids for a batch of {batch}", chosen.num_elements());
        }
    }
    Ok(start.elapsed())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    if args.tests.is_empty() || args.batch.is_empty() {
        return Err(crate::exit::usage("give at least one test (-t pp512,tg128) and one batch size (-b 1)"));
    }
    let (name, config, checkpoint) = shape(&args.common, &args.preset, &args.config)?;
    let limit = config.context_length();
    for test in &args.tests {
        let positions = match *test {
            BenchTest::Prefill { tokens } => Some(tokens),
            BenchTest::Decode { steps, context } => context.checked_add(steps),
        };
        if positions.is_none_or(|p| p > limit) {
            return Err(crate::exit::usage(format!(
                "test {test} needs more positions than the model's context length ({limit})"
            )));
        }
    }
    let (backend, precision) = (args.common.backend()?, args.common.precision()?);
    // Asked before the weights load: a GPU's free memory then still has room for them.
    let budget = match args.memory {
        Some(bytes) => Some((bytes, "--memory")),
        None => crate::host::default_budget(backend, backend.free_device_memory()),
    };
    dispatch(backend, Job { args, name, config, checkpoint, backend, precision, budget })
}
