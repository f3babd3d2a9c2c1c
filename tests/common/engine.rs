//! Helpers for tests of the serving engine: a fixture model, an engine thread, reading streams.

use std::thread;

use bamba::model::engine::{Engine, EngineConfig, EngineHandle, Event, RequestParams, RequestStream};
use bamba::model::{BambaModel, FinishReason, Precision};
use burn::tensor::DType;

use super::{fixtures_dir, TestBackend};

pub type Model = BambaModel<TestBackend>;

/// A fixture in f32.
pub fn load(name: &str) -> Model {
    BambaModel::load(fixtures_dir().join(name), &Default::default(), Precision::F32).unwrap()
}

/// Starts an engine thread; it ends when the returned handle (and its clones) are dropped.
pub fn start(model: Model, config: EngineConfig) -> (EngineHandle, thread::JoinHandle<()>) {
    let (engine, handle) = Engine::new(model, config, DType::F32).unwrap();
    let thread = thread::spawn(move || engine.run().unwrap());
    (handle, thread)
}

/// Every token of a stream and how it ended.
pub fn collect(stream: &mut RequestStream) -> (Vec<u32>, FinishReason, usize) {
    collect_after(stream, Vec::new())
}

/// [`collect`] for a stream whose first tokens, `ids`, were read already.
pub fn collect_after(stream: &mut RequestStream, mut ids: Vec<u32>) -> (Vec<u32>, FinishReason, usize) {
    loop {
        match stream.next_blocking().expect("the engine ends every stream with Finished") {
            Event::Token(t) => ids.push(t.id),
            Event::Finished { reason, completion_tokens, .. } => {
                assert_eq!(completion_tokens, ids.len());
                return (ids, reason, completion_tokens);
            }
            Event::Failed(e) => panic!("request failed: {e}"),
            Event::Prompt(_) => panic!("prompt log-probabilities were not asked for"),
        }
    }
}

/// Waits (at most 10 s) for the engine to publish that nothing is running or waiting: gauges are
/// set at the end of a step, just after the step's last events were sent.
pub fn settle(handle: &EngineHandle) {
    for _ in 0..1000 {
        if handle.stats().in_flight() == 0 {
            return;
        }
        thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("requests still in flight after 10 s");
}

pub fn greedy(max_tokens: usize, eos: &[u32]) -> RequestParams {
    RequestParams { max_tokens, eos_ids: eos.to_vec(), ..Default::default() }
}
