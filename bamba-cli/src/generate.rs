//! `bamba generate`: new tokens for one or more prompts. A single prompt streams its text (or ids,
//! for a checkpoint without tokenizer) to stdout as it is produced; several prompts run in
//! left-padded batches of `--batch-size` and print one text per prompt. `--json` prints one record
//! per prompt instead. A stats line goes to stderr.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context, Result};
use bamba_model::bamba_kernels::BambaOps;
use bamba_model::generate::eos_ids;
use bamba_model::{
    BambaConfig, GenerateParams, Generation, Sampler, SamplingParams, StopStrings, StoppingRows, TextTokenizer,
};
use serde_json::json;

use crate::backend::{dispatch, BackendJob};
use crate::load::load_model;
use crate::GenerateArgs;

/// One prompt: its ids and, when given as text, the text.
struct Prompt {
    ids: Vec<u32>,
    text: Option<String>,
}

/// Parses `1,2,3` into ids.
fn parse_ids(text: &str) -> Result<Vec<u32>> {
    text.split(',')
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .map(|t| t.parse::<u32>().with_context(|| format!("invalid token id {t:?}")))
        .collect()
}

fn is_id_list(line: &str) -> bool {
    line.split(',').all(|t| !t.trim().is_empty() && t.trim().bytes().all(|b| b.is_ascii_digit()))
}

/// The prompts to run, tokenized where they are text.
fn prompts(args: &GenerateArgs, tokenizer: Option<&TextTokenizer>, dir: &Path) -> Result<Vec<Prompt>> {
    let encode = |text: &str| -> Result<Prompt> {
        let tokenizer = tokenizer.with_context(|| {
            format!("{} has no tokenizer.json, so text prompts cannot be encoded; pass --prompt-ids", dir.display())
        })?;
        Ok(Prompt { ids: tokenizer.encode(text)?, text: Some(text.to_string()) })
    };
    match (&args.prompt, &args.prompt_ids, &args.prompts_file) {
        (Some(text), None, None) if text == "-" => {
            let text = std::io::read_to_string(std::io::stdin()).context("reading the prompt from stdin")?;
            // `echo TEXT | bamba generate --prompt -`: the line's end is not part of the prompt.
            let text = text.strip_suffix('\n').map_or(text.as_str(), |t| t.strip_suffix('\r').unwrap_or(t));
            Ok(vec![encode(text)?])
        }
        (Some(text), None, None) => Ok(vec![encode(text)?]),
        (None, Some(ids), None) => Ok(vec![Prompt { ids: ids.clone(), text: None }]),
        (None, None, Some(file)) => {
            let content = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
            let lines: Vec<&str> = content.lines().filter(|l| !l.trim().is_empty()).collect();
            if lines.is_empty() {
                bail!("{} holds no prompts", file.display());
            }
            let as_ids = match args.prompts_format.as_str() {
                "ids" => true,
                "text" => false,
                _ => lines.iter().all(|l| is_id_list(l)),
            };
            lines
                .into_iter()
                .map(|line| if as_ids { Ok(Prompt { ids: parse_ids(line)?, text: None }) } else { encode(line) })
                .collect()
        }
        (None, None, None) => {
            Err(crate::exit::usage("give a prompt: --prompt TEXT, --prompt-ids 1,2,3 or --prompts-file FILE"))
        }
        _ => Err(crate::exit::usage("give only one of --prompt, --prompt-ids and --prompts-file")),
    }
}

struct GenerateJob<'a> {
    args: &'a GenerateArgs,
}

impl BackendJob for GenerateJob<'_> {
    type Output = ();
    fn run<B: BambaOps>(self, device: B::Device) -> Result<()> {
        let args = self.args;
        let dir = args.common.model_dir()?;
        let tokenizer = TextTokenizer::from_dir(&dir)?;
        if !args.stop.is_empty() && tokenizer.is_none() {
            bail!("{} has no tokenizer.json, so --stop strings cannot be matched", dir.display());
        }
        StopStrings::new(args.stop.clone())?; // rejects empty stop strings before loading anything
        if args.batch_size == 0 {
            return Err(crate::exit::usage("--batch-size must be at least 1"));
        }
        let sampling = SamplingParams {
            temperature: args.temperature,
            top_k: args.top_k,
            top_p: args.top_p,
            min_p: args.min_p,
            repetition_penalty: args.repetition_penalty,
            presence_penalty: args.presence_penalty,
            frequency_penalty: args.frequency_penalty,
            seed: args.seed,
        };
        sampling.validate()?; // before the weights load, which can take minutes
        let prompts = prompts(args, tokenizer.as_ref(), &dir)?;
        let config = BambaConfig::from_path(&dir).with_context(|| format!("reading {}", dir.display()))?;
        let eos = eos_ids(&dir, &config.eos_token_ids)?;
        let precision = args.common.precision()?;
        let (model, load_time) = load_model::<B>(&dir, &device, precision)?;
        let load_secs = load_time.as_secs_f64();
        let params = GenerateParams {
            max_new_tokens: args.max_new_tokens,
            eos_ids: eos,
            ignore_eos: args.ignore_eos,
            prefill_chunk: args.prefill_chunk,
            state_dtype: args.state_dtype,
            keep_logits: false,
        };
        for batch in prompts.chunks(args.batch_size) {
            let streaming = batch.len() == 1 && !args.json;
            let ids: Vec<Vec<u32>> = batch.iter().map(|p| p.ids.clone()).collect();
            let mut samplers: Vec<Sampler> =
                batch.iter().map(|_| Sampler::new(sampling.clone())).collect::<Result<_, _>>()?;
            // Without a tokenizer the tokens are shown as ids.
            let mut rows = tokenizer.as_ref().map(|tok| StoppingRows::new(tok, batch.len(), &args.stop)).transpose()?;
            let stdout = std::io::stdout();
            let outs = model.generate_batch(&ids, &params, &mut samplers, |r, token| {
                let (shown, goes_on) = match rows.as_mut() {
                    Some(rows) => rows.push(r, token),
                    None => (format!("{token} "), true),
                };
                if streaming {
                    let mut lock = stdout.lock();
                    let _ = lock.write_all(shown.as_bytes());
                    let _ = lock.flush();
                }
                goes_on
            })?;
            let texts = match rows.as_mut() {
                Some(rows) => rows.texts(outs.iter().map(|out| &out.ids[..]))?.into_iter().map(Some).collect(),
                None => vec![None; outs.len()],
            };
            for (r, ((prompt, out), text)) in batch.iter().zip(&outs).zip(texts).enumerate() {
                if args.json {
                    println!(
                        "{}",
                        record::<B>(prompt, out, text.as_deref(), load_secs, &device, &precision.to_string())
                    );
                } else if streaming {
                    // the stream holds back text that might still turn into a stop string; show the rest
                    let shown = rows.as_ref().map_or("", |rows| rows.shown(r));
                    let rest = text.as_deref().and_then(|t| t.strip_prefix(shown)).unwrap_or("");
                    println!("{rest}");
                } else {
                    let ids_text = || out.ids.iter().map(u32::to_string).collect::<Vec<_>>().join(" ");
                    println!("{}", text.unwrap_or_else(ids_text));
                }
            }
            stats::<B>(batch, &outs, load_secs, &device, &precision.to_string());
        }
        Ok(())
    }
}

/// The `--json` record of one prompt.
fn record<B: BambaOps>(
    prompt: &Prompt,
    out: &Generation,
    text: Option<&str>,
    load_secs: f64,
    device: &B::Device,
    dtype: &str,
) -> serde_json::Value {
    let (prefill, decode) = rates(out, out.prompt_tokens);
    let mut record = json!({
        "prompt_ids": prompt.ids,
        "generated_ids": out.ids,
        "finish_reason": out.finish.as_str(),
        "prompt_tokens": out.prompt_tokens,
        "generated_tokens": out.ids.len(),
        "prefill_seconds": out.prefill_time.as_secs_f64(),
        "decode_seconds": out.decode_time.as_secs_f64(),
        "prefill_tokens_per_second": prefill,
        "decode_tokens_per_second": decode,
        "load_seconds": load_secs,
        "backend": B::name(device),
        "dtype": dtype,
    });
    if let Some(p) = &prompt.text {
        record["prompt"] = json!(p);
    }
    if let Some(t) = text {
        record["text"] = json!(t);
    }
    record
}

/// Prefill and decode tokens per second of a run whose batch prefilled `prompt_tokens` in all.
fn rates(out: &Generation, prompt_tokens: usize) -> (f64, f64) {
    let decode_steps = out.ids.len().saturating_sub(1);
    (per_second(prompt_tokens, out.prefill_time), per_second(decode_steps, out.decode_time))
}

/// `count` per second of `time`; 0 for a phase that did not run (`--max-new-tokens 0` skips the
/// prefill: its time is zero, and a rate of tokens over no time would be a made-up number).
fn per_second(count: usize, time: std::time::Duration) -> f64 {
    if time.is_zero() {
        0.0
    } else {
        count as f64 / time.as_secs_f64()
    }
}

/// The stats line of a batch on stderr.
fn stats<B: BambaOps>(batch: &[Prompt], outs: &[Generation], load_secs: f64, device: &B::Device, dtype: &str) {
    let prompt_tokens: usize = batch.iter().map(|p| p.ids.len()).sum();
    let new_tokens: usize = outs.iter().map(|o| o.ids.len()).sum();
    let longest = outs.iter().max_by_key(|o| o.ids.len()).expect("a batch has rows");
    let prefill = per_second(prompt_tokens, longest.prefill_time);
    let decode_steps: usize = outs.iter().map(|o| o.ids.len().saturating_sub(1)).sum();
    let decode = per_second(decode_steps, longest.decode_time);
    let finish: Vec<&str> = outs.iter().map(|o| o.finish.as_str()).collect();
    eprintln!(
        "[{} prompt{}, {prompt_tokens} prompt tokens, {new_tokens} new ({}) | prefill {prefill:.1} tok/s | decode {decode:.1} tok/s | load {load_secs:.2} s | {} {dtype}]",
        batch.len(),
        if batch.len() == 1 { "" } else { "s" },
        finish.join(","),
        B::name(device)
    );
}

pub fn run(args: &GenerateArgs) -> Result<()> {
    dispatch(args.common.backend()?, GenerateJob { args })
}
