//! Shared helpers for the workspace tests: the test backend, fixture discovery and references.
#![allow(dead_code)]

pub mod engine;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use safetensors::SafeTensors;

/// Tests run on the CPU reference backend.
pub type TestBackend = burn::backend::NdArray<f32>;

/// This checkout, or `$BAMBA_REPO` (a test binary copied to another machine).
pub fn repo_dir() -> PathBuf {
    std::env::var_os("BAMBA_REPO").map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf(), PathBuf::from)
}

pub fn fixtures_dir() -> PathBuf {
    repo_dir().join("tests/fixtures")
}

/// The embedded default model (`scripts/train_tiny.py`).
pub fn tiny_dir() -> PathBuf {
    repo_dir().join("bamba-cli/assets/tiny-bamba")
}

/// What transformers' tokenizer and `generate()` do with the tiny model.
pub fn tiny_reference() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("tiny_reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A JSON list of token ids.
pub fn json_ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Deterministic pseudo-random values in `[lo, hi)` (an LCG; one stream per seed).
pub fn uniform(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            lo + (hi - lo) * ((s >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// Greedy generation of up to `max_new_tokens`, whole-prompt prefill, f32 state, step logits kept.
pub fn greedy_params(max_new_tokens: usize, eos_ids: Vec<u32>) -> bamba::model::GenerateParams {
    bamba::model::GenerateParams::default().max_new_tokens(max_new_tokens).eos_ids(eos_ids).keep_logits(true)
}

pub fn manifest() -> serde_json::Value {
    let text = std::fs::read_to_string(fixtures_dir().join("manifest.json")).expect("tests/fixtures/manifest.json");
    serde_json::from_str(&text).expect("valid manifest")
}

/// Names of all fixtures in the manifest.
pub fn fixture_names() -> Vec<String> {
    manifest()["fixtures"].as_object().expect("fixtures map").keys().cloned().collect()
}

/// One prompt of a fixture and transformers' float64 logits for it.
pub struct Reference {
    pub ids: Vec<u32>,
    /// `[len, vocab]`, row-major.
    pub logits: Vec<f32>,
    pub vocab: usize,
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

pub fn references(fixture: &str) -> Vec<Reference> {
    let bytes = std::fs::read(fixtures_dir().join(fixture).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out = HashMap::new();
    for i in 0.. {
        let Ok(ids) = st.tensor(&format!("prompt_{i}.ids")) else {
            break;
        };
        let logits = st.tensor(&format!("prompt_{i}.logits")).unwrap();
        let ids: Vec<u32> =
            ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect();
        out.insert(i, Reference { ids, logits: f32s(logits.data()), vocab: logits.shape()[1] });
    }
    let mut v: Vec<_> = out.into_iter().collect();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Copies a fixture into a fresh temporary directory (for tests that break it).
pub fn copy_fixture(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(fixtures_dir().join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// transformers' greedy `generate()` record for a prompt: new ids and each step's logits.
pub struct GenerateReference {
    pub prompt: Vec<u32>,
    pub ids: Vec<u32>,
    /// One `[vocab]` row per new token.
    pub step_logits: Vec<Vec<f32>>,
}

pub fn generate_references(fixture: &str) -> Vec<GenerateReference> {
    let bytes = std::fs::read(fixtures_dir().join(fixture).join("reference.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let ints = |name: &str| -> Vec<u32> {
        st.tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32)
            .collect()
    };
    let mut out = Vec::new();
    for i in 0.. {
        let Ok(logits) = st.tensor(&format!("generate_{i}.logits")) else { break };
        let vocab = logits.shape()[1];
        out.push(GenerateReference {
            prompt: ints(&format!("prompt_{i}.ids")),
            ids: ints(&format!("generate_{i}.ids")),
            step_logits: f32s(logits.data()).chunks(vocab).map(<[f32]>::to_vec).collect(),
        });
    }
    out
}

/// Each row's `k` largest values, largest first, the lower column first among equal values, and the
/// softmax of those values (f64, rounded).
pub fn sorted_top_k(values: &[f32], columns: usize, k: usize) -> (Vec<f32>, Vec<i64>, Vec<f32>) {
    let (mut picked, mut ids, mut soft) = (Vec::new(), Vec::new(), Vec::new());
    for row in values.chunks(columns) {
        let mut order: Vec<usize> = (0..columns).collect();
        order.sort_by(|&a, &b| row[b].total_cmp(&row[a])); // stable: equal values keep column order
        let top: Vec<f32> = order[..k].iter().map(|&c| row[c]).collect();
        let total: f64 = top.iter().map(|&v| (v as f64 - top[0] as f64).exp()).sum();
        soft.extend(top.iter().map(|&v| ((v as f64 - top[0] as f64).exp() / total) as f32));
        picked.extend(top);
        ids.extend(order[..k].iter().map(|&c| c as i64));
    }
    (picked, ids, soft)
}
