//! The engine's prefix cache against transformers: prompts that repeat an earlier sequence's
//! beginning — shorter than one snapshot interval, around a grid point, past several, the whole
//! previous turn with its answer — are resumed from a snapshot and still get transformers' greedy
//! tokens and log-probabilities (tests/fixtures: `generate_*` and `prompt_0.logits` references).
//! Under eviction pressure, concurrent requests sharing prefixes get what they get alone.

mod common;

use std::sync::atomic::Ordering;

use bamba::model::engine::{
    EngineConfig, EngineConfigError, Event, PrefixCacheConfig, Request, RequestParams, RequestStream,
};
use bamba::model::generate::eos_ids;
use common::engine::*;
use common::*;

/// An engine of up to 8 sequences of 256 positions with the prefix cache on: `budget` bytes,
/// snapshots every `interval` tokens.
fn prefix_config(budget: u64, interval: usize, max_num_batched_tokens: usize) -> EngineConfig {
    EngineConfig {
        max_num_seqs: 8,
        max_num_batched_tokens,
        max_model_len: 256,
        prefix_cache: Some(PrefixCacheConfig::new(budget, interval)),
        ..Default::default()
    }
}

/// Tokens, their log-probabilities (where asked for) and the prompt tokens the engine took from the
/// cache.
fn run(stream: &mut RequestStream) -> (Vec<u32>, Vec<f32>, usize) {
    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
    loop {
        match stream.next_blocking().expect("a stream ends with Finished") {
            Event::Token(t) => {
                ids.push(t.id);
                logprobs.extend(t.logprob);
            }
            Event::Finished { cached_tokens, .. } => return (ids, logprobs, cached_tokens),
            Event::Failed(e) => panic!("request failed: {e}"),
            Event::Prompt(_) => panic!("prompt log-probabilities were not asked for"),
        }
    }
}

fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    logits.iter().map(|&l| l - max - sum.ln() as f32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).unwrap().0 as u32
}

/// Log-probabilities of f32 runs differ from transformers' f64 ones by the parity noise: logits of
/// these fixtures are within 1.5e-5 of f64 (tests/parity.rs), and a log-softmax moves by at most
/// twice the largest logit error.
const LOGPROB_TOLERANCE: f32 = 1e-4;

#[test]
fn prefix_hits_get_transformers_tokens_and_logprobs() {
    let mut hits_checked = 0;
    for name in fixture_names() {
        let refs = generate_references(&name);
        if refs.is_empty() {
            continue;
        }
        let model = load(&name);
        let eos = eos_ids(&fixtures_dir().join(&name), &model.config.eos_token_ids).unwrap();
        let chunk = model.config.mamba_chunk_size;
        let max_model_len = model.config.context_length().min(256);
        if let Some(rope) = model.config.rope.clone().filter(|r| r.depends_on_length()) {
            // a cached prefix's keys were rotated for another length: refused, not inexact
            let config = EngineConfig { max_model_len, ..prefix_config(1 << 30, chunk, 64) };
            let err = bamba::model::engine::Engine::new(model, config, burn::tensor::DType::F32).err().unwrap();
            assert_eq!(err, EngineConfigError::PrefixCacheRope { rope_type: rope.scaling.rope_type() });
            continue;
        }
        let (prompt, answer) = (&refs[0].prompt, &refs[0].ids);
        let prompt_logits = &references(&name)[0];
        // the model's own grid, and a grid of 3 tokens so that every fixture has several points
        for interval in [chunk, 3] {
            let config = EngineConfig { max_num_seqs: 4, max_model_len, ..prefix_config(1 << 30, interval, 64) };
            let (handle, thread) = start(model.clone(), config);
            let ask = |prompt: Vec<u32>, max_tokens: usize| {
                let params = RequestParams { logprobs: Some(0), ..greedy(max_tokens, &eos) };
                handle.submit(Request { prompt, params }).unwrap()
            };
            let mut worst = 0f32;
            let mut check = |what: String, got: &[f32], want: &[Vec<f32>], ids: &[u32]| {
                for ((lp, row), &id) in got.iter().zip(want).zip(ids) {
                    let diff = (lp - log_softmax(row)[id as usize]).abs();
                    worst = worst.max(diff);
                    assert!(diff <= LOGPROB_TOLERANCE, "{what}: logprob off by {diff}");
                }
            };
            // turn 1: the prompt and the first 4 tokens of transformers' answer
            let (ids, lps, cached) = run(&mut ask(prompt.clone(), 4));
            assert_eq!((ids.as_slice(), cached), (&answer[..4], 0), "{name}: cold turn");
            check(format!("{name} cold"), &lps, &refs[0].step_logits, &ids);
            // prompts that are the turn extended by j of the answer's tokens: resumed from the snapshot at
            // the end of turn 1 or an earlier grid point; transformers' continuation from there
            for j in 0..answer.len() {
                let mut longer = prompt.clone();
                longer.extend(&answer[..j]);
                let (ids, lps, cached) = run(&mut ask(longer, answer.len() - j));
                let want = &answer[j..];
                assert_eq!(ids[..want.len().min(ids.len())], want[..want.len().min(ids.len())], "{name} j {j}");
                check(format!("{name} turn + {j}"), &lps, &refs[0].step_logits[j..], &ids);
                hits_checked += usize::from(cached > 0);
            }
            // prompts shorter than the cached sequences: transformers' logits at the prompt's last position
            for len in 2..prompt.len() {
                let (ids, lps, _) = run(&mut ask(prompt[..len].to_vec(), 1));
                let row = &prompt_logits.logits[(len - 1) * prompt_logits.vocab..len * prompt_logits.vocab];
                assert_eq!(ids, [argmax(row)], "{name} prefix of {len}");
                check(format!("{name} prefix of {len}"), &lps, &[row.to_vec()], &ids);
            }
            settle(&handle);
            let stats = handle.stats();
            let hits = stats.prefix_hits.load(Ordering::Relaxed);
            let recomputed = stats.prefix_recomputed_tokens.load(Ordering::Relaxed);
            assert!(hits > 0, "{name}: no prefix hit");
            assert!(recomputed < hits * interval as u64, "{name}: {recomputed} tokens recomputed in {hits} hits");
            assert_eq!(stats.cache_bytes.load(Ordering::Relaxed), 0);
            eprintln!("{name} interval {interval}: {hits} hits, worst logprob difference {worst:.2e}");
            drop(handle);
            thread.join().unwrap();
        }
    }
    assert!(hits_checked >= 40, "only {hits_checked} hits checked");
}

#[test]
fn concurrent_requests_sharing_prefixes_under_eviction_get_their_solo_tokens() {
    let model = load("base");
    let vocab = model.config.vocab_size as u32;
    let costs =
        bamba::model::engine::CacheCosts::new(&model.config, burn::tensor::DType::F32, burn::tensor::DType::F32);
    // room for about twelve snapshots and their tokens: most of what 64 requests cache gets evicted
    let budget = 12 * (costs.state + 30 * costs.kv_per_slot);
    let token = |seed: u64, i: usize| (uniform(1, seed * 1000 + i as u64, 0.0, 1.0)[0] * vocab as f32) as u32 % vocab;
    // 4 shared beginnings of 20 tokens, each request adding 0–14 tokens of its own (some identical)
    let prompts: Vec<Vec<u32>> = (0..32)
        .map(|r: usize| {
            let mut p: Vec<u32> = (0..20).map(|i| token(r as u64 % 4, i)).collect();
            p.extend((0..r % 15).map(|i| token(100 + r as u64 % 11, i)));
            p
        })
        .collect();
    let solo: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| {
            let mut sampler = bamba::model::Sampler::new(Default::default()).unwrap();
            model.generate(p, &greedy_params(6, vec![]), &mut sampler, |_| true).unwrap().ids
        })
        .collect();
    // one budget shared as it comes, then the same with K/V and snapshots capped apart (the K/V of
    // about two of the 4 shared beginnings, eight snapshots)
    let shared = prefix_config(budget, 8, 40);
    let caps = PrefixCacheConfig {
        kv_budget: Some(50 * costs.kv_per_slot),
        snapshot_budget: Some(8 * costs.state),
        ..shared.prefix_cache.unwrap()
    };
    for config in [shared.clone(), EngineConfig { prefix_cache: Some(caps), ..shared }] {
        let prefix = config.prefix_cache.unwrap();
        let (handle, thread) = start(model.clone(), config);
        // two waves of all 32: the second finds what the first left (as much as the budget kept)
        for wave in 0..2 {
            let mut streams: Vec<_> = prompts
                .iter()
                .map(|p| handle.submit(Request { prompt: p.clone(), params: greedy(6, &[]) }).unwrap())
                .collect();
            for (r, (s, want)) in streams.iter_mut().zip(&solo).enumerate() {
                assert_eq!(&collect(s).0, want, "{prefix:?}: wave {wave} request {r}");
            }
        }
        settle(&handle);
        let stats = handle.stats();
        let load = |c: &std::sync::atomic::AtomicU64| c.load(Ordering::Relaxed);
        let (snapshots, kv) = (load(&stats.prefix_snapshot_bytes), load(&stats.prefix_kv_bytes));
        assert!(load(&stats.prefix_hits) > 0, "{prefix:?}: no prefix hit");
        assert!(load(&stats.prefix_evictions) > 0, "{prefix:?}: the budget forced no eviction");
        assert!(snapshots + kv <= budget, "{prefix:?}");
        assert!(kv <= prefix.kv_budget.unwrap_or(budget) && snapshots <= prefix.snapshot_budget.unwrap_or(budget));
        assert_eq!(load(&stats.cache_bytes), 0, "every request's cache is freed");
        drop(handle);
        thread.join().unwrap();
    }
}

/// Identical prompts submitted together (as `n > 1` does) are prefilled once: the others fork from
/// it, greedy ones getting transformers' tokens and sampled ones what they get alone.
#[test]
fn identical_concurrent_prompts_are_prefilled_once() {
    let model = load("base");
    let refs = generate_references("base");
    let (prompt, answer) = (&refs[0].prompt, &refs[0].ids);
    let sampled = |seed| bamba::model::SamplingParams { temperature: 1.3, seed, ..Default::default() };
    let solo: Vec<Vec<u32>> = (0..2u64)
        .map(|seed| {
            let mut sampler = bamba::model::Sampler::new(sampled(seed)).unwrap();
            model.generate(prompt, &greedy_params(6, vec![]), &mut sampler, |_| true).unwrap().ids
        })
        .collect();
    let config = prefix_config(1 << 30, 8, 64);
    let (engine, handle) = bamba::model::engine::Engine::new(model, config, burn::tensor::DType::F32).unwrap();
    // all six are queued before the engine's first step
    let mut greedy_streams: Vec<_> = (0..4)
        .map(|_| handle.submit(Request { prompt: prompt.clone(), params: greedy(answer.len(), &[]) }).unwrap())
        .collect();
    let mut sampled_streams: Vec<_> = (0..2u64)
        .map(|seed| {
            let params = RequestParams { sampling: sampled(seed), max_tokens: 6, ..Default::default() };
            handle.submit(Request { prompt: prompt.clone(), params }).unwrap()
        })
        .collect();
    let thread = std::thread::spawn(move || engine.run().unwrap());
    for s in &mut greedy_streams {
        assert_eq!(&collect(s).0, answer);
    }
    for (s, want) in sampled_streams.iter_mut().zip(&solo) {
        assert_eq!(&collect(s).0, want);
    }
    settle(&handle);
    let stats = handle.stats();
    assert_eq!(stats.prompt_tokens.load(Ordering::Relaxed), prompt.len() as u64, "one prefill");
    assert_eq!(stats.prefix_hits.load(Ordering::Relaxed), 5);
    drop(handle);
    thread.join().unwrap();
}

/// Fresh prompts prefilled together as one left-padded group are snapshotted after every chunk of
/// the interval in columns: the padded row's snapshots fall between its own grid points, and a
/// repeat resumes from there with transformers' tokens.
#[test]
fn a_group_prefill_snapshots_padded_rows_between_grid_points() {
    let model = load("base");
    let refs = generate_references("base");
    // 13 and 5 tokens: the short one is padded by 8, so the chunks of 3 columns (ending at columns
    // 3, 6, 9, 12, 13) leave its snapshots after 1, 4 and 5 tokens, where a prompt prefilled alone
    // would have them after 3 and 5
    let (long, short) = (&refs[0], &refs[1]);
    assert_eq!((long.prompt.len(), short.prompt.len()), (13, 5), "the fixture's prompts");
    let config = prefix_config(1 << 30, 3, 64);
    let (engine, handle) = bamba::model::engine::Engine::new(model, config, burn::tensor::DType::F32).unwrap();
    // both are queued before the engine's first step: they are prefilled as one group
    let mut first: Vec<_> = [long, short]
        .iter()
        .map(|r| handle.submit(Request { prompt: r.prompt.clone(), params: greedy(r.ids.len(), &[]) }).unwrap())
        .collect();
    let thread = std::thread::spawn(move || engine.run().unwrap());
    for (s, r) in first.iter_mut().zip([long, short]) {
        assert_eq!(collect(s).0, r.ids);
    }
    for (r, resumed_at) in [(short, 4), (long, 12)] {
        let mut repeat = handle.submit(Request { prompt: r.prompt.clone(), params: greedy(r.ids.len(), &[]) }).unwrap();
        let (ids, _, cached) = run(&mut repeat);
        assert_eq!(ids, r.ids, "a repeat of the {}-token prompt", r.prompt.len());
        assert_eq!(cached, resumed_at, "where the {}-token prompt resumed", r.prompt.len());
    }
    drop(handle);
    thread.join().unwrap();
}
