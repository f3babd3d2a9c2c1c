//! The serving engine against transformers: requests of mixed lengths that join and leave the decode
//! batch mid-flight, with prompts prefilled in small chunks, each get transformers' greedy tokens
//! (tests/fixtures, generate references); seeded sampling equals the same request run alone;
//! cancellation frees everything; bad requests are refused before queueing.

mod common;

use bamba::model::engine::{EngineConfig, Event, Request, RequestParams, SubmitError};
use bamba::model::generate::eos_ids;
use bamba::model::{FinishReason, Sampler, SamplingParams};
use burn::tensor::DType;
use common::engine::*;
use common::*;

#[test]
fn joining_and_leaving_requests_get_transformers_tokens() {
    let mut checked = 0;
    // the rope_* fixtures: frequencies chosen per row by its own length while rows of other lengths
    // share the step, and for the whole prompt while it is prefilled in chunks
    for name in
        ["base", "attn_last_4x", "biases_head_dim", "groups2_tied", "rope_dynamic_4x", "rope_longrope", "rope_yarn"]
    {
        let dir = fixtures_dir().join(name);
        let model = load(name);
        let eos = eos_ids(&dir, &model.config.eos_token_ids).unwrap();
        let refs = generate_references(name);
        // 3 rows at most and 5 tokens per step: prompts are prefilled alone in chunks beside running
        // decodes, and rows of different lengths join while others run and leave. With 4 rows and 64
        // tokens, fresh prompts are prefilled together as one left-padded batch.
        for (seqs, tokens) in [(3, 5), (4, 64)] {
            let config = EngineConfig {
                max_num_seqs: seqs,
                max_num_batched_tokens: tokens,
                max_model_len: model.config.context_length().min(256),
                ..Default::default()
            };
            let (handle, thread) = start(model.clone(), config);
            let mut jobs = Vec::new();
            for (i, r) in refs.iter().enumerate() {
                for max_tokens in [r.ids.len(), 1 + i % 3, 2] {
                    jobs.push((i, max_tokens));
                }
            }
            let submit = |&(i, max_tokens): &(usize, usize)| {
                handle.submit(Request { prompt: refs[i].prompt.clone(), params: greedy(max_tokens, &eos) }).unwrap()
            };
            let mut first = submit(&jobs[0]);
            // wait until the first request is decoding, then submit the rest
            let Some(Event::Token(t0)) = first.next_blocking() else { panic!("no first token") };
            let mut streams: Vec<_> = jobs[1..].iter().map(submit).collect();
            let (ids, _, _) = collect_after(&mut first, vec![t0.id]);
            assert_eq!(ids, refs[0].ids[..jobs[0].1], "{name} request 0");
            for (s, &(i, max_tokens)) in streams.iter_mut().zip(&jobs[1..]) {
                let (ids, reason, _) = collect(s);
                let want = &refs[i].ids[..max_tokens.min(refs[i].ids.len())];
                assert_eq!(ids, want, "{name} prompt {i} max_tokens {max_tokens}");
                let expected = if eos.contains(ids.last().unwrap()) { FinishReason::Eos } else { FinishReason::Length };
                assert_eq!(reason, expected);
                checked += 1;
            }
            settle(&handle);
            drop(handle);
            thread.join().unwrap();
        }
    }
    assert!(checked >= 40, "only {checked} requests checked");
}

#[test]
fn seeded_sampling_per_request_equals_running_alone() {
    let model = load("base");
    let refs = generate_references("base");
    let params = |seed| SamplingParams { temperature: 1.3, top_k: Some(40), seed, ..Default::default() };
    let solo: Vec<Vec<u32>> = (0..6u64)
        .map(|seed| {
            let r = &refs[seed as usize % refs.len()];
            let mut sampler = Sampler::new(params(seed)).unwrap();
            model.generate(&r.prompt, &greedy_params(7, vec![]), &mut sampler, |_| true).unwrap().ids
        })
        .collect();
    let config = EngineConfig { max_num_seqs: 4, max_num_batched_tokens: 9, max_model_len: 256, ..Default::default() };
    let (handle, thread) = start(model, config);
    let mut streams: Vec<_> = (0..6u64)
        .map(|seed| {
            let prompt = refs[seed as usize % refs.len()].prompt.clone();
            let params = RequestParams { sampling: params(seed), max_tokens: 7, ..Default::default() };
            handle.submit(Request { prompt, params }).unwrap()
        })
        .collect();
    for (seed, (s, want)) in streams.iter_mut().zip(&solo).enumerate() {
        assert_eq!(&collect(s).0, want, "seed {seed}");
    }
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn a_dropped_stream_is_cancelled_and_frees_its_row() {
    let model = load("base");
    let prompt = generate_references("base")[0].prompt.clone();
    let config =
        EngineConfig { max_num_seqs: 2, max_num_batched_tokens: 64, max_model_len: 4096, ..Default::default() };
    let (handle, thread) = start(model, config);
    let long = RequestParams { max_tokens: 3000, ignore_eos: true, ..Default::default() };
    let mut a = handle.submit(Request { prompt: prompt.clone(), params: long.clone() }).unwrap();
    let b = handle.submit(Request { prompt: prompt.clone(), params: long.clone() }).unwrap();
    assert!(matches!(a.next_blocking(), Some(Event::Token(_))));
    drop(a);
    drop(b);
    // a third request gets a slot although both earlier ones asked for 3000 tokens
    let mut c = handle.submit(Request { prompt, params: greedy(3, &[]) }).unwrap();
    assert_eq!(collect(&mut c).0.len(), 3);
    settle(&handle);
    let stats = handle.stats();
    assert_eq!(stats.cancelled.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(stats.cache_bytes.load(std::sync::atomic::Ordering::Relaxed), 0);
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn bad_requests_are_refused_before_queueing() {
    let model = load("base");
    let vocab = model.config.vocab_size as u32;
    let config = EngineConfig { max_num_seqs: 2, max_num_batched_tokens: 64, max_model_len: 100, ..Default::default() };
    let (handle, thread) = start(model, config);
    let submit = |prompt: Vec<u32>, params: RequestParams| handle.submit(Request { prompt, params }).map(|_| ());
    assert_eq!(submit(vec![], greedy(1, &[])), Err(SubmitError::EmptyPrompt));
    assert!(matches!(submit(vec![1, vocab], greedy(1, &[])), Err(SubmitError::TokenOutOfRange { position: 1, .. })));
    assert_eq!(submit(vec![1], greedy(0, &[])), Err(SubmitError::NoNewTokens));
    let err = submit(vec![1; 60], greedy(50, &[])).unwrap_err();
    assert!(err.to_string().starts_with("This model's maximum context length is 100 tokens."), "{err}");
    assert!(matches!(err, SubmitError::ContextLength { limit: 100, max_tokens: 50, prompt: 60, total: 110 }));
    let bad = RequestParams { sampling: SamplingParams { temperature: -1.0, ..Default::default() }, ..greedy(1, &[]) };
    assert!(matches!(submit(vec![1], bad), Err(SubmitError::Sampling(_))));
    assert_eq!(handle.stats().rejected.load(std::sync::atomic::Ordering::Relaxed), 5);
    handle.drain();
    assert_eq!(submit(vec![1], greedy(1, &[])), Err(SubmitError::Draining));
    drop(handle);
    thread.join().unwrap();
}

#[test]
fn the_memory_budget_admits_what_fits_and_refuses_what_never_can() {
    let model = load("base");
    let prompt = generate_references("base")[0].prompt.clone();
    let costs = bamba::model::engine::CacheCosts::new(&model.config, DType::F32, DType::F32);
    // room for one sequence of 40 tokens (prefill cache and batch row), not for two
    let one = costs.batch_bytes(&[bamba::model::engine::SequenceSpan { cached: 39, steps_left: 1 }])
        + costs.sequence_bytes(39);
    let config = EngineConfig {
        max_num_seqs: 4,
        max_num_batched_tokens: 64,
        max_model_len: 40,
        cache_budget: Some(one + one / 4),
        ..Default::default()
    };
    let (handle, thread) = start(model, config);
    let params = greedy(40 - prompt.len(), &[]);
    let mut streams: Vec<_> =
        (0..3).map(|_| handle.submit(Request { prompt: prompt.clone(), params: params.clone() }).unwrap()).collect();
    let mut most_running = 0;
    for s in &mut streams {
        collect(s);
        most_running = most_running.max(handle.stats().running.load(std::sync::atomic::Ordering::Relaxed));
    }
    assert!(most_running <= 1, "two sequences ran at once within a one-sequence budget");
    drop(handle);
    thread.join().unwrap();
}
