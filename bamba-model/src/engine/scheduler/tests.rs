//! Preemption after the device ran out of memory, driven step by step on the CPU: the engine is
//! told the device failed at a chosen step (the CPU backend cannot run out of memory), and the
//! preempted requests, recomputed from their tokens, end with transformers' greedy tokens
//! (tests/fixtures/base, generate references) and each prompt's scores sent once; the lowered caps
//! come back after good steps. Also the prefix-cache settings an engine refuses.

use std::path::PathBuf;

use super::*;
use crate::engine::{PrefixCacheConfig, RequestParams, RequestStream};
use crate::generate::eos_ids;
use crate::Precision;

type Cpu = burn::backend::NdArray<f32>;

fn fixture() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/base")
}

/// transformers' greedy generation for each prompt of the fixture: (prompt, new ids).
fn references() -> Vec<(Vec<u32>, Vec<u32>)> {
    let bytes = std::fs::read(fixture().join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        let data = st.tensor(name).unwrap().data().to_vec();
        data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
    };
    (0..)
        .map_while(|i| st.tensor(&format!("generate_{i}.ids")).ok().map(|_| i))
        .map(|i| (ints(&format!("prompt_{i}.ids")), ints(&format!("generate_{i}.ids"))))
        .collect()
}

/// An engine over the fixture, driven by the test rather than by [`Engine::run`].
fn engine(
    max_num_seqs: usize,
    max_num_batched_tokens: usize,
    prefix_cache: Option<PrefixCacheConfig>,
) -> (Engine<Cpu>, EngineHandle, Vec<u32>) {
    let model = BambaModel::<Cpu>::load(fixture(), &Default::default(), Precision::F32).unwrap();
    let eos = eos_ids(&fixture(), &model.config.eos_token_ids).unwrap();
    let config =
        EngineConfig { max_num_seqs, max_num_batched_tokens, max_model_len: 256, prefix_cache, ..Default::default() };
    let (engine, handle) = Engine::new(model, config, DType::F32).unwrap();
    (engine, handle, eos)
}

impl<B: BambaOps> Engine<B> {
    /// Takes what was submitted and runs one step.
    fn step_now(&mut self) {
        while let Ok(s) = self.submissions.try_recv() {
            self.accept(s);
        }
        self.step().unwrap();
    }
}

fn count(counter: &std::sync::atomic::AtomicU64) -> u64 {
    counter.load(std::sync::atomic::Ordering::Relaxed)
}

/// Every event of a finished stream: tokens, prompt score events, and how it ended.
fn drain(stream: &mut RequestStream) -> (Vec<u32>, usize, Option<FinishReason>, Option<String>) {
    let (mut ids, mut prompts) = (Vec::new(), 0);
    loop {
        match stream.next_blocking() {
            Some(Event::Token(t)) => ids.push(t.id),
            Some(Event::Prompt(_)) => prompts += 1,
            Some(Event::Finished { reason, completion_tokens, .. }) => {
                assert_eq!(completion_tokens, ids.len());
                return (ids, prompts, Some(reason), None);
            }
            Some(Event::Failed(e)) => return (ids, prompts, None, Some(e)),
            None => panic!("a stream ended without Finished or Failed"),
        }
    }
}

#[test]
fn preempted_requests_are_recomputed_and_get_transformers_tokens() {
    // the prefix cache is dropped at the failure, and records the recomputed histories
    for prefix_cache in [None, Some(PrefixCacheConfig::new(1 << 30, 4))] {
        preempt_and_compare(prefix_cache);
    }
}

fn preempt_and_compare(prefix_cache: Option<PrefixCacheConfig>) {
    let refs = references();
    assert!(refs.len() >= 2, "the fixture has {} generate references", refs.len());
    // 3 rows and 7 tokens per step: at the failure some requests decode and one is part way
    // through its chunked prefill
    let (mut engine, handle, eos) = engine(3, 7, prefix_cache);
    let mut jobs = Vec::new();
    for (i, (_, ids)) in refs.iter().enumerate() {
        jobs.push((i, ids.len(), None));
        jobs.push((i, ids.len(), Some(2)));
    }
    let mut streams: Vec<RequestStream> = jobs
        .iter()
        .map(|&(i, max_tokens, prompt_logprobs)| {
            let params = RequestParams { max_tokens, eos_ids: eos.clone(), prompt_logprobs, ..Default::default() };
            handle.submit(Request { prompt: refs[i].0.clone(), params }).unwrap()
        })
        .collect();
    let mut preempted = 0;
    while !engine.idle() || preempted == 0 {
        engine.step_now();
        let decoding = engine.running.iter().filter(|s| s.generated() >= 2).count();
        if preempted == 0 && decoding >= 2 && !engine.prefilling.is_empty() {
            preempted = engine.running.len() + engine.prefilling.len();
            engine.recover(&DeviceError::OutOfMemory);
            assert!(engine.running.is_empty() && engine.prefilling.is_empty() && engine.batch.is_none());
            // 3 rows at most before, half of what was admitted after
            assert_eq!(engine.seq_cap, 1);
            assert_eq!(count(&engine.stats.preemptions), preempted as u64);
            assert_eq!(count(&engine.stats.max_num_seqs), 1);
        }
        assert!(engine.steps < 10_000, "the engine does not finish");
    }
    for (stream, &(i, max_tokens, prompt_logprobs)) in streams.iter_mut().zip(&jobs) {
        let (ids, prompts, reason, failed) = drain(stream);
        assert_eq!(failed, None, "request for prompt {i}");
        assert_eq!(ids, refs[i].1[..max_tokens], "prompt {i} (prompt_logprobs {prompt_logprobs:?})");
        assert_eq!(prompts, usize::from(prompt_logprobs.is_some()), "prompt {i}: prompt scores sent once");
        assert!(reason.is_some());
    }
    assert_eq!(count(&engine.stats.device_failures), 1);
    assert_eq!(count(&engine.stats.finished), jobs.len() as u64);
}

/// Caps lowered after running out of memory double back toward the configured ones after 1,024
/// good steps, 2,048 after a second lowering, and stop at the configuration.
#[test]
fn lowered_caps_are_raised_again_after_good_steps() {
    let (mut engine, _handle, _) = engine(4, 100, None);
    let raise_after = |engine: &mut Engine<Cpu>, steps: u64| {
        let before = (engine.seq_cap, engine.token_cap);
        for _ in 1..steps {
            engine.restore_caps();
        }
        assert_eq!((engine.seq_cap, engine.token_cap), before, "raised before {steps} steps");
        engine.restore_caps();
        assert_ne!((engine.seq_cap, engine.token_cap), before, "not raised after {steps} steps");
    };
    (engine.seq_cap, engine.token_cap, engine.lowerings) = (1, 64, 1);
    raise_after(&mut engine, 1024);
    assert_eq!((engine.seq_cap, engine.token_cap), (2, 100));
    assert_eq!(count(&engine.stats.max_num_seqs), 2);
    raise_after(&mut engine, 1024);
    assert_eq!((engine.seq_cap, engine.token_cap), (4, 100));
    for _ in 0..5000 {
        engine.restore_caps();
    }
    assert_eq!((engine.seq_cap, engine.token_cap), (4, 100), "never above the configuration");
    (engine.seq_cap, engine.token_cap, engine.lowerings) = (2, 64, 2);
    raise_after(&mut engine, 2048);
    assert_eq!((engine.seq_cap, engine.token_cap), (4, 100));
}

#[test]
fn a_failure_the_engine_cannot_shrink_below_fails_its_requests_and_the_queue_goes_on() {
    let (prompt, want) = references().swap_remove(0);
    // one row and fewer tokens per step than MIN_STEP_TOKENS: nothing left to lower
    let (mut engine, handle, eos) = engine(1, 8, None);
    let params = RequestParams { max_tokens: want.len(), eos_ids: eos, ..Default::default() };
    let mut first = handle.submit(Request { prompt: prompt.clone(), params: params.clone() }).unwrap();
    let mut second = handle.submit(Request { prompt: prompt.clone(), params: params.clone() }).unwrap();
    while engine.running.is_empty() {
        engine.step_now();
    }
    engine.recover(&DeviceError::OutOfMemory);
    // any other failure is not retried either
    let mut third = handle.submit(Request { prompt: prompt.clone(), params }).unwrap();
    while engine.running.is_empty() {
        engine.step_now();
    }
    assert_eq!(engine.queued.len(), 1, "the third request waits for the one row");
    engine.recover(&DeviceError::Failed("an illegal address".into()));
    while !engine.idle() {
        engine.step_now();
    }
    let (_, _, _, failed) = drain(&mut first);
    assert_eq!(failed.as_deref(), Some("the device ran out of memory"));
    let (_, _, _, failed) = drain(&mut second);
    assert_eq!(failed.as_deref(), Some("the device failed: an illegal address"));
    let (ids, _, _, failed) = drain(&mut third);
    assert_eq!((ids, failed), (want, None), "the queued request goes on");
    assert_eq!(count(&engine.stats.preemptions), 0);
    assert_eq!(count(&engine.stats.finished), 3);
    assert_eq!(count(&engine.stats.device_failures), 2);
}

#[test]
fn prefix_cache_settings_that_cannot_work_are_refused() {
    let model = BambaModel::<Cpu>::load(fixture(), &Default::default(), Precision::F32).unwrap();
    let costs = CacheCosts::new(&model.config, model.dtype, DType::F32);
    let with = |prefix: PrefixCacheConfig| EngineConfig { prefix_cache: Some(prefix), ..Default::default() };
    let config = with(PrefixCacheConfig::new(1 << 30, 0));
    assert_eq!(config.validate(&model.config, &costs), Err(EngineConfigError::SnapshotInterval));
    let config =
        with(PrefixCacheConfig { snapshot_budget: Some(costs.state - 1), ..PrefixCacheConfig::new(1 << 30, 4) });
    assert_eq!(
        Engine::new(model, config, DType::F32).err(),
        Some(EngineConfigError::SnapshotCap { cap: costs.state - 1, snapshot: costs.state })
    );
}
