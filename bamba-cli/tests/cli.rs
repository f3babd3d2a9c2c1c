//! The `bamba` binary end to end: logits against transformers, info against transformers' parameter
//! counts, and clear errors for bad arguments.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use safetensors::SafeTensors;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bamba(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_bamba")).args(args).current_dir(repo()).output().expect("run bamba")
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    bytes.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()
}

#[test]
fn logits_command_writes_transformers_logits() {
    let reference = std::fs::read(repo().join("tests/fixtures/groups2_tied/reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<String> = reference
        .tensor("prompt_0.ids")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()).to_string())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("logits.safetensors");
    let run = bamba(&[
        "logits",
        "--model",
        "tests/fixtures/groups2_tied",
        "--prompt-ids",
        &ids.join(","),
        "--out",
        file.to_str().unwrap(),
        "--backend",
        "ndarray",
        "--dtype",
        "f32",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let written = std::fs::read(&file).unwrap();
    let written = SafeTensors::deserialize(&written).unwrap();
    assert_eq!(written.names(), vec!["logits"]);
    let logits = written.tensor("logits").unwrap();
    let expected = reference.tensor("prompt_0.logits").unwrap();
    assert_eq!(logits.dtype(), safetensors::Dtype::F32);
    assert_eq!(logits.shape(), expected.shape());
    let diff = f32s(logits.data()).iter().zip(f32s(expected.data())).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    // groups2_tied's f32 noise floor is 2.1e-5 (tests/fixtures/manifest.json); see tests/parity.rs.
    assert!(diff < 2.1e-4, "max |diff| {diff}");
}

#[test]
fn info_json_reports_bamba_9b() {
    let run =
        bamba(&["info", "--model", "tests/configs/bamba-9b.json", "--json", "--memory", "141GB", "--context", "32768"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(v["parameters"], 9_780_235_392u64);
    let layers: Vec<&str> = v["layers"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert_eq!(layers.len(), 32);
    assert_eq!(layers.iter().filter(|l| **l == "attention").count(), 3);
    assert_eq!((layers[9], layers[18], layers[27], layers[0]), ("attention", "attention", "attention", "mamba"));
    assert_eq!(v["weight_bytes"]["bf16"], 2 * 9_780_235_392u64);
    assert_eq!(v["kv_bytes_per_token"], 3 * 2 * 8 * 128 * 2);
    assert!(v["sequences_that_fit"].as_u64().unwrap() >= 64);
    // The table form works from a checkpoint directory too.
    let run = bamba(&["info", "--model", "tests/fixtures/base"]);
    assert!(run.status.success());
    assert!(String::from_utf8_lossy(&run.stdout).contains("parameters"));
}

fn fails_with(args: &[&str], needle: &str) {
    let run = bamba(args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success(), "{args:?} should fail");
    assert!(stderr.contains(needle), "{args:?}: stderr lacks {needle:?}:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{args:?} panicked:\n{stderr}");
}

#[test]
fn bad_arguments_are_clear_errors() {
    let base = ["logits", "--model", "tests/fixtures/base", "--out", "/tmp/bamba-never-written.safetensors"];
    let with = |extra: &[&'static str]| -> Vec<&str> { base.iter().copied().chain(extra.iter().copied()).collect() };
    fails_with(&with(&["--prompt-ids", "1,2", "--backend", "tpu"]), "unknown backend");
    fails_with(&with(&["--prompt-ids", "1,2", "--dtype", "f8"]), "unknown dtype");
    fails_with(&with(&["--prompt-ids", "1,96,2"]), "outside the vocabulary");
    fails_with(&with(&["--prompt-ids", "1,x"]), "invalid");
    fails_with(&["logits", "--model", "/nonexistent", "--prompt-ids", "1", "--out", "/tmp/x"], "/nonexistent");
    fails_with(&["info", "--model", "tests/configs/bamba-9b.json", "--memory", "lots"], "--memory");
    if !cfg!(feature = "cuda") {
        fails_with(&with(&["--prompt-ids", "1,2", "--backend", "cuda"]), "not compiled");
    }
    if !cfg!(feature = "ndarray") {
        fails_with(&with(&["--prompt-ids", "1,2", "--backend", "ndarray"]), "not compiled");
    }
}
