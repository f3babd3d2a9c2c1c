//! Property-based fuzzing of what a user hands the loader: config.json (every dialect: Bamba, Granite
//! 4.0, Mamba2), generation_config.json, the safetensors header, the sharded index and tokenizer.json. Mutations of
//! real files (hostile numbers, wrong types, missing keys, flipped and cut bytes) must give an error
//! or a model, never a panic, an abort on allocation or a hang. Bounded: a fixed number of cases each.

mod common;

use std::path::Path;

use bamba::model::config::BambaConfig;
use bamba::model::generate::eos_ids;
use bamba::model::loader::Checkpoint;
use bamba::model::sizes::{MemoryModel, ParameterCounts};
use bamba::model::{BambaModel, Precision, TextTokenizer};
use common::*;
use proptest::prelude::*;
use serde_json::Value;

/// Values that break sizes: zero, negatives, powers of two at type limits, huge floats, wrong types.
fn hostile() -> impl Strategy<Value = Value> {
    prop_oneof![
        prop::sample::select(vec![
            0i64,
            1,
            -1,
            3,
            255,
            65_536,
            i32::MAX as i64,
            1 << 32,
            (1 << 32) + 1,
            1 << 53,
            i64::MAX,
        ])
        .prop_map(Value::from),
        Just(Value::from(u64::MAX)),
        Just(Value::from(1e300)),
        Just(Value::from(-0.5)),
        Just(Value::from(0.5)),
        Just(Value::Null),
        Just(Value::from("8")),
        Just(Value::from(vec![1, 2, 3])),
        Just(serde_json::json!({"a": 1})),
        Just(Value::from(true)),
    ]
}

/// Seed configs: every fixture's and every shipped shape's.
fn seeds() -> Vec<Value> {
    let mut dirs: Vec<_> = fixture_names().iter().map(|n| fixtures_dir().join(n).join("config.json")).collect();
    for entry in std::fs::read_dir(repo_dir().join("tests/configs")).unwrap() {
        dirs.push(entry.unwrap().path());
    }
    // (configs with Infinity, which Python writes and the loader reads, are not JSON values: skipped here)
    dirs.iter().filter_map(|p| serde_json::from_str(&std::fs::read_to_string(p).unwrap()).ok()).collect()
}

/// A seed with `edits` applied: (key index, value) sets a key (a new one past the end), `None` removes it.
fn mutate(seed: &Value, edits: &[(usize, Option<Value>)]) -> String {
    let mut config = seed.as_object().unwrap().clone();
    for (index, value) in edits {
        let keys: Vec<String> = config.keys().cloned().collect();
        let key = keys.get(index % (keys.len() + 1)).cloned().unwrap_or_else(|| "extra_key".into());
        match value {
            Some(v) => config.insert(key, v.clone()),
            None => config.remove(&key),
        };
    }
    Value::Object(config).to_string()
}

/// Everything `bamba info` computes from a config.
fn sizes_of(config: &BambaConfig) {
    let counts = ParameterCounts::new(config);
    let memory = MemoryModel::new(config, 2, 4, 2);
    let _ = (counts.total, memory.bytes_per_sequence(u64::MAX), memory.sequences_that_fit(u64::MAX, 1 << 20));
    let _ = memory.decode_step_bytes(u64::MAX, u64::MAX);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_configs_parse_or_are_refused(
        seed in 0usize..64,
        edits in prop::collection::vec((0usize..80, prop::option::weighted(0.9, hostile())), 1..6),
    ) {
        let seeds = seeds();
        let text = mutate(&seeds[seed % seeds.len()], &edits);
        if let Ok(config) = BambaConfig::from_json(&text) {
            sizes_of(&config);
        }
    }

    #[test]
    fn config_bytes_cut_or_flipped_are_refused_or_parse(seed in 0usize..64, cut in 0usize..4096, flip in any::<u8>()) {
        let seeds = seeds();
        let mut bytes = seeds[seed % seeds.len()].to_string().into_bytes();
        let at = cut % bytes.len();
        bytes[at] ^= flip;
        bytes.truncate(at + 1 + (cut % 3));
        if let Ok(text) = std::str::from_utf8(&bytes) {
            if let Ok(config) = BambaConfig::from_json(text) {
                sizes_of(&config);
            }
        }
    }

    #[test]
    fn hostile_generation_configs_are_read_or_refused(value in hostile(), key in prop::sample::select(vec!["eos_token_id", "bos_token_id", "pad_token_id"])) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("generation_config.json"), serde_json::json!({ key: value }).to_string()).unwrap();
        let _ = eos_ids(dir.path(), &[0]);
    }
}

/// A copy of the base fixture whose model.safetensors has its header replaced by `header` (the
/// 8-byte length prefix says `claimed` bytes) followed by the original data.
fn with_header(header: &[u8], claimed: u64) -> tempfile::TempDir {
    let dir = copy_fixture("base");
    let path = dir.path().join("model.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut out = claimed.to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend_from_slice(&bytes[8 + len..]);
    std::fs::write(&path, out).unwrap();
    dir
}

fn base_header() -> Value {
    let bytes = std::fs::read(fixtures_dir().join("base/model.safetensors")).unwrap();
    let len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    serde_json::from_slice(&bytes[8..8 + len]).unwrap()
}

/// Opens and loads `dir`; any error is fine.
fn load_or_refuse(dir: &Path) {
    if Checkpoint::open(dir).is_ok() {
        let _ = BambaModel::<TestBackend>::load(dir, &Default::default(), Precision::F32);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_safetensors_headers_are_refused_or_load(
        tensor in 0usize..64,
        field in prop::sample::select(vec!["dtype", "shape", "data_offsets"]),
        value in prop_oneof![
            hostile(),
            Just(Value::from("BF16")), Just(Value::from("F64")), Just(Value::from("I8")), Just(Value::from("XX")),
            Just(serde_json::json!([0, 0])), Just(serde_json::json!([u64::MAX, 1])), Just(serde_json::json!([1, 0])),
            Just(serde_json::json!([0, u64::MAX])), Just(serde_json::json!([4, 4, 4])), Just(serde_json::json!([])),
            Just(serde_json::json!([1u64 << 40, 1u64 << 40])),
        ],
        claimed_delta in prop_oneof![Just(0i64), -16i64..16, Just(i64::MAX / 2)],
    ) {
        let mut header = base_header();
        let names: Vec<String> = header.as_object().unwrap().keys().filter(|k| *k != "__metadata__").cloned().collect();
        let name = &names[tensor % names.len()];
        header[name.as_str()][field] = value;
        let text = header.to_string();
        let claimed = (text.len() as i64).saturating_add(claimed_delta).max(0) as u64;
        let dir = with_header(text.as_bytes(), claimed);
        load_or_refuse(dir.path());
    }

    #[test]
    fn mutated_shard_indexes_are_refused_or_load(
        edit in prop_oneof![
            Just(serde_json::json!({"weight_map": {}})),
            Just(serde_json::json!({"weight_map": {"model.embed_tokens.weight": "../../etc/passwd"}})),
            Just(serde_json::json!({"weight_map": {"model.embed_tokens.weight": "missing.safetensors"}})),
            Just(serde_json::json!({"weight_map": {"model.embed_tokens.weight": "/dev/zero"}})),
            Just(serde_json::json!({"weight_map": []})),
            Just(serde_json::json!({"weight_map": {"model.embed_tokens.weight": 5}})),
            Just(serde_json::json!([])),
            Just(Value::from("not an index")),
        ],
    ) {
        let dir = copy_fixture("base");
        std::fs::write(dir.path().join("model.safetensors.index.json"), edit.to_string()).unwrap();
        load_or_refuse(dir.path());
    }
}

/// The embedded model's tokenizer.json with `edits` at random places of its JSON tree (a value replaced,
/// or the bytes cut), loaded, then used on text and on ids it does not have.
fn tokenizer_with(edit: impl FnOnce(&mut Value) -> Option<Vec<u8>>) {
    let dir = tempfile::tempdir().unwrap();
    let mut json: Value =
        serde_json::from_str(&std::fs::read_to_string(tiny_dir().join("tokenizer.json")).unwrap()).unwrap();
    let bytes = edit(&mut json).unwrap_or_else(|| json.to_string().into_bytes());
    std::fs::write(dir.path().join("tokenizer.json"), bytes).unwrap();
    if let Ok(Some(tokenizer)) = TextTokenizer::from_dir(dir.path()) {
        let _ = tokenizer.encode("Phileas Fogg \u{1F600} \0 ");
        let _ = tokenizer.decode(&[0, 1, 5, u32::MAX, 1 << 20]);
        let _ = tokenizer.token_text(u32::MAX);
        let mut stream = tokenizer.stream();
        for id in [3, u32::MAX, 7, 1 << 30] {
            let _ = stream.push(id);
        }
    }
}

/// Every path (object keys and array indices) of a JSON tree down to `depth`.
fn paths(v: &Value, depth: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    out.push(prefix.clone());
    if depth == 0 {
        return;
    }
    match v {
        Value::Object(m) => {
            m.iter().for_each(|(k, c)| paths(c, depth - 1, [prefix.clone(), vec![k.clone()]].concat(), out))
        }
        // a few elements of long arrays (the vocabulary, the merges)
        Value::Array(a) => a
            .iter()
            .enumerate()
            .take(3)
            .for_each(|(i, c)| paths(c, depth - 1, [prefix.clone(), vec![i.to_string()]].concat(), out)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_tokenizers_are_refused_or_work(path in 0usize..10_000, value in hostile()) {
        tokenizer_with(|json| {
            let mut all = Vec::new();
            paths(json, 4, Vec::new(), &mut all);
            let target = &all[1 + path % (all.len() - 1)];
            let mut node = &mut *json;
            for key in target {
                node = match node {
                    Value::Object(m) => m.get_mut(key).unwrap(),
                    Value::Array(a) => &mut a[key.parse::<usize>().unwrap()],
                    _ => unreachable!("paths go through objects and arrays"),
                };
            }
            *node = value;
            None
        });
    }

    #[test]
    fn cut_tokenizers_are_refused(cut in 0usize..1_000_000) {
        tokenizer_with(|json| {
            let mut bytes = json.to_string().into_bytes();
            bytes.truncate(cut % bytes.len());
            Some(bytes)
        });
    }
}

/// Found by `cut_tokenizers_are_refused`: a tokenizer.json cut inside its decoder made the tokenizers
/// crate panic ("Helper"); it is now an error naming the file.
#[test]
fn a_tokenizer_cut_inside_its_decoder_is_an_error() {
    let text = std::fs::read_to_string(tiny_dir().join("tokenizer.json")).unwrap();
    let at = text.find("\"decoder\"").expect("the tiny tokenizer has a decoder") + 20;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokenizer.json"), &text[..at]).unwrap();
    let err = TextTokenizer::from_dir(dir.path()).err().expect("a cut file is refused");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
