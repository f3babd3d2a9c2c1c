//! `bamba generate`: stream new tokens for one or more prompts (token ids today; text prompts need
//! the tokenizer, which is not wired in yet and is refused with a clear error).

use std::io::Write;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::generate::eos_ids;
use bamba_model::{BambaModel, GenerateParams, Sampler, SamplingParams};
use serde_json::json;

use crate::backend::{dispatch, BackendJob};
use crate::GenerateArgs;

/// Parses `1,2,3` into ids.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("invalid token id {t:?}")))
        .collect()
}

/// The prompts to run, as token ids.
fn prompts(args: &GenerateArgs) -> Result<Vec<Vec<u32>>> {
    if args.prompt.is_some() || args.stop.is_some() {
        bail!(
            "text prompts and --stop strings need the tokenizer, which this build does not wire in yet; \
             pass --prompt-ids 1,2,3 or --prompts-file with one comma-separated id list per line"
        );
    }
    match (&args.prompt_ids, &args.prompts_file) {
        (Some(ids), None) => Ok(vec![ids.clone()]),
        (None, Some(file)) => {
            let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let rows: Vec<Vec<u32>> =
                text.lines().filter(|l| !l.trim().is_empty()).map(parse_ids).collect::<Result<_>>()?;
            if rows.is_empty() {
                bail!("{} holds no prompts", file.display());
            }
            Ok(rows)
        }
        (None, None) => bail!("give a prompt: --prompt-ids 1,2,3 or --prompts-file FILE"),
        (Some(_), Some(_)) => bail!("give either --prompt-ids or --prompts-file, not both"),
    }
}

struct GenerateJob<'a> {
    args: &'a GenerateArgs,
    prompts: Vec<Vec<u32>>,
}

impl BackendJob for GenerateJob<'_> {
    type Output = ();
    fn run<B: BambaOps>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let precision = args.common.precision()?;
        let load_start = Instant::now();
        let model = BambaModel::<B>::load(&args.common.model, &device, precision)
            .with_context(|| format!("loading {}", args.common.model.display()))?;
        let load_secs = load_start.elapsed().as_secs_f64();
        let sampling = SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            seed: args.seed,
        };
        let params = GenerateParams {
            max_new_tokens: args.max_new_tokens,
            eos_ids: eos_ids(&args.common.model, &model.config.eos_token_ids),
            ignore_eos: args.ignore_eos,
            prefill_chunk: args.prefill_chunk,
            state_dtype: args.state_dtype.dtype(),
            keep_logits: false,
        };
        let stdout = std::io::stdout();
        for prompt in &self.prompts {
            let mut sampler = Sampler::new(sampling.clone())?;
            let out = model.generate(prompt, &params, &mut sampler, |token| {
                if !args.json {
                    let mut lock = stdout.lock();
                    let _ = write!(lock, "{token} ");
                    let _ = lock.flush();
                }
                true
            })?;
            let prefill = out.prompt_tokens as f64 / out.prefill_time.as_secs_f64().max(1e-9);
            let decode_steps = out.ids.len().saturating_sub(1);
            let decode = decode_steps as f64 / out.decode_time.as_secs_f64().max(1e-9);
            if args.json {
                let record = json!({
                    "prompt_ids": prompt,
                    "generated_ids": out.ids,
                    "finish_reason": out.finish.as_str(),
                    "prompt_tokens": out.prompt_tokens,
                    "prefill_seconds": out.prefill_time.as_secs_f64(),
                    "decode_seconds": out.decode_time.as_secs_f64(),
                    "prefill_tokens_per_second": prefill,
                    "decode_tokens_per_second": decode,
                    "load_seconds": load_secs,
                    "backend": B::name(&device),
                    "dtype": precision.to_string(),
                });
                println!("{record}");
            } else {
                println!();
            }
            eprintln!(
                "[{} tokens prompt, {} new ({}) | prefill {prefill:.1} tok/s | decode {decode:.1} tok/s | load {load_secs:.2} s | {} {precision}]",
                out.prompt_tokens,
                out.ids.len(),
                out.finish.as_str(),
                B::name(&device)
            );
        }
        Ok(())
    }
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    let prompts = prompts(args)?;
    dispatch(args.common.backend()?, GenerateJob { args, prompts })
}
