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

/// The first prompt of a fixture's reference file (i64 ids).
fn reference_prompt(reference: &SafeTensors) -> Vec<u32> {
    let ids = reference.tensor("prompt_0.ids").unwrap();
    ids.data().chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u32).collect()
}

#[test]
fn logits_command_writes_transformers_logits() {
    let reference = std::fs::read(repo().join("tests/fixtures/groups2_tied/reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<String> = reference_prompt(&reference).iter().map(u32::to_string).collect();
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

/// A prompt far longer than one prefill chunk runs in chunks under a 2 GB address-space limit (one pass
/// needs 3.1 GB of attention scores and aborted there), and its first positions still get
/// transformers' logits: they are the reference prompt's, followed by 14,000 more tokens.
#[cfg(unix)]
#[test]
fn a_long_prompt_gets_its_logits_within_bounded_memory() {
    let reference = std::fs::read(repo().join("tests/fixtures/base/reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ids: Vec<String> = reference_prompt(&reference)
        .into_iter()
        .chain((0..14_000).map(|i| 1 + i % 90))
        .map(|i| i.to_string())
        .collect();
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("logits.safetensors");
    let command = format!(
        "ulimit -v 2000000 && exec \"$0\" logits --model tests/fixtures/base --backend ndarray --prompt-ids {} --out {}",
        ids.join(","),
        file.display()
    );
    let run =
        Command::new("sh").args(["-c", &command, env!("CARGO_BIN_EXE_bamba")]).current_dir(repo()).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let written = std::fs::read(&file).unwrap();
    let logits = SafeTensors::deserialize(&written).unwrap().tensor("logits").unwrap().data().to_vec();
    let expected = reference.tensor("prompt_0.logits").unwrap();
    let head = &f32s(&logits)[..expected.shape().iter().product()];
    let diff = head.iter().zip(f32s(expected.data())).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    // base's f32 noise floor is 2.7e-6 (tests/fixtures/manifest.json); 10× it, as tests/parity.rs allows
    assert!(diff < 2.7e-5, "max |diff| {diff}");
}

/// `--hidden-states` writes the embeddings (the checkpoint's rows for the prompt, exactly, in f32) and one
/// state per decoder layer, each `[len, hidden]`, beside the same logits as a run without it (the one
/// pass that gives both runs the same ops; the logits themselves are checked against transformers in
/// tests/parity.rs).
#[test]
fn logits_command_writes_hidden_states() {
    let out = tempfile::tempdir().unwrap();
    let file = out.path().join("hidden.safetensors");
    let ids = [5usize, 0, 17, 5];
    let ids_arg: Vec<String> = ids.iter().map(|i| i.to_string()).collect();
    let model = "tests/fixtures/groups2_tied";
    let plain_file = out.path().join("plain.safetensors");
    let ids_arg = ids_arg.join(",");
    let logits_run = |file: &std::path::Path, extra: &[&str]| {
        let mut args = vec![
            "logits",
            "--model",
            model,
            "--prompt-ids",
            &ids_arg,
            "--out",
            file.to_str().unwrap(),
            "--backend",
            "ndarray",
        ];
        args.extend_from_slice(extra);
        let run = bamba(&args);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        std::fs::read(file).unwrap()
    };
    let written = logits_run(&file, &["--hidden-states"]);
    let written = SafeTensors::deserialize(&written).unwrap();
    let plain = logits_run(&plain_file, &[]);
    let plain = SafeTensors::deserialize(&plain).unwrap();
    assert_eq!(written.tensor("logits").unwrap().data(), plain.tensor("logits").unwrap().data());
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(repo().join(model).join("config.json")).unwrap()).unwrap();
    let (layers, hidden) =
        (config["num_hidden_layers"].as_u64().unwrap() as usize, config["hidden_size"].as_u64().unwrap() as usize);
    assert_eq!(written.len(), layers + 2, "logits and {} hidden states: {:?}", layers + 1, written.names());
    for i in 0..=layers {
        assert_eq!(written.tensor(&format!("hidden.{i}")).unwrap().shape(), [ids.len(), hidden]);
    }
    let checkpoint = std::fs::read(repo().join(model).join("model.safetensors")).unwrap();
    let checkpoint = SafeTensors::deserialize(&checkpoint).unwrap();
    let table = f32s(checkpoint.tensor("model.embed_tokens.weight").unwrap().data());
    let expected: Vec<f32> = ids.iter().flat_map(|&i| table[i * hidden..(i + 1) * hidden].to_vec()).collect();
    assert_eq!(f32s(written.tensor("hidden.0").unwrap().data()), expected);
    let last = f32s(written.tensor(&format!("hidden.{layers}")).unwrap().data());
    assert!(last.iter().all(|v| v.is_finite()) && last != expected);
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

#[test]
fn info_json_reports_the_nemotron_3_plan_and_router() {
    let run = bamba(&["info", "--model", "tests/configs/nemotron-3-nano-30b-a3b.json", "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    // transformers' count on the meta device (scripts/make_fixtures.py writes it into the manifest).
    let manifest = manifest();
    assert_eq!(v["parameters"], manifest["configs"]["nemotron-3-nano-30b-a3b.json"]["parameters"]);
    assert_eq!(v["plan"], "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME");
    assert_eq!(
        (v["mamba_layers"].as_u64(), v["moe_layers"].as_u64(), v["attention_layers"].as_u64()),
        (Some(23), Some(23), Some(6))
    );
    assert_eq!(v["experts"]["router"]["kind"], "sigmoid_grouped");
    assert_eq!(v["experts"]["router"]["scale"], 2.5);
    assert_eq!(v["kv_bytes_per_token"], 6 * 2 * 2 * 128 * 2, "6 attention layers, 2 KV heads of 128, bf16");
}

#[test]
fn info_json_counts_both_caches_of_falcon_h1_parallel_layers() {
    let run = bamba(&["info", "--model", "tests/configs/falcon-h1-7b-base.json", "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let manifest = manifest();
    assert_eq!(v["parameters"], manifest["configs"]["falcon-h1-7b-base.json"]["parameters"]);
    assert_eq!(v["plan"], "P".repeat(44));
    assert_eq!((v["parallel_layers"].as_u64(), v["mamba_layers"].as_u64()), (Some(44), Some(0)));
    // Every layer keeps keys and values (2 KV heads of 128, bf16) and a Mamba state: 24 heads of
    // 128 x 256 in f32, and a conv window of 3 columns of 3072 + 2 x 256 channels in bf16.
    assert_eq!(v["kv_bytes_per_token"], 44 * 2 * 2 * 128 * 2);
    assert_eq!(v["recurrent_state_bytes_per_sequence"], 44 * (24 * 128 * 256 * 4 + 3 * 3584 * 2));
}

#[test]
fn info_json_counts_zamba2_shared_blocks_once() {
    let run = bamba(&["info", "--model", "tests/configs/zamba2-7b.json", "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    let manifest = manifest();
    // transformers counts the shared blocks once, however many layers use them.
    assert_eq!(v["parameters"], manifest["configs"]["zamba2-7b.json"]["parameters"]);
    assert_eq!((v["shared_block_layers"].as_u64(), v["mamba_layers"].as_u64()), (Some(13), Some(68)));
    // Each of the 13 uses keeps its own keys and values: 32 heads of 224, bf16.
    assert_eq!(v["kv_bytes_per_token"], 13 * 2 * 32 * 224 * 2);
}

/// The fixtures' manifest, where scripts/make_fixtures.py records transformers' counts of the configs.
fn manifest() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/manifest.json")).unwrap()).unwrap()
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
    fails_with(&with(&["--prompt-ids", "1,2", "--backend", "tpu"]), "invalid value 'tpu' for '--backend");
    fails_with(&with(&["--prompt-ids", "1,2", "--dtype", "f8"]), "invalid value 'f8' for '--dtype");
    fails_with(&with(&["--prompt-ids", "1,96,2"]), "outside the vocabulary");
    fails_with(&with(&["--prompt-ids", "1,x"]), "invalid");
    fails_with(&["logits", "--model", "/nonexistent", "--prompt-ids", "1", "--out", "/tmp/x"], "/nonexistent");
    fails_with(&["info", "--model", "tests/configs/bamba-9b.json", "--memory", "lots"], "--memory");
    if !cfg!(feature = "cuda") {
        fails_with(&with(&["--prompt-ids", "1,2", "--backend", "cuda"]), "not compiled");
        // The unfused variant names the feature that builds it.
        fails_with(&with(&["--prompt-ids", "1,2", "--backend", "cuda-unfused"]), "--features cuda`");
    }
    if !cfg!(feature = "ndarray") {
        fails_with(&with(&["--prompt-ids", "1,2", "--backend", "ndarray"]), "not compiled");
    }
}

#[test]
fn generate_json_greedy_equals_transformers_generate() {
    let reference = std::fs::read(repo().join("tests/fixtures/rope_full_bare_inf/reference.safetensors")).unwrap();
    let reference = SafeTensors::deserialize(&reference).unwrap();
    let ints = |name: &str| -> Vec<u64> {
        reference
            .tensor(name)
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as u64)
            .collect()
    };
    let prompt: Vec<String> = ints("prompt_0.ids").iter().map(u64::to_string).collect();
    let expected = ints("generate_0.ids");
    let max = expected.len().to_string();
    let run = bamba(&[
        "generate",
        "--model",
        "tests/fixtures/rope_full_bare_inf",
        "--prompt-ids",
        &prompt.join(","),
        "--max-new-tokens",
        &max,
        "--temperature",
        "0",
        "--json",
        "--prefill-chunk",
        "5",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8(run.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "stdout carries only the JSON record: {stdout}");
    let record: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    let got: Vec<u64> = record["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    assert_eq!(got, expected);
    assert_eq!(record["finish_reason"], "length");
    assert!(String::from_utf8_lossy(&run.stderr).contains("decode"), "stats line on stderr");
}

#[test]
fn generate_prompts_file_gives_one_record_per_prompt() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    std::fs::write(&file, "1,2,3\n\n7,8\n").unwrap();
    let run = bamba(&[
        "generate",
        "--model",
        "tests/fixtures/base",
        "--prompts-file",
        file.to_str().unwrap(),
        "--max-new-tokens",
        "3",
        "--json",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let records: Vec<serde_json::Value> =
        String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), 2);
    assert_eq!(records[1]["prompt_ids"], serde_json::json!([7, 8]));
}

#[test]
fn generate_bad_input_is_a_clear_error() {
    let g = ["generate", "--model", "tests/fixtures/base"];
    let with = |extra: &[&'static str]| -> Vec<&str> { g.iter().copied().chain(extra.iter().copied()).collect() };
    fails_with(&with(&[]), "give a prompt");
    fails_with(&with(&["--prompt", "hello"]), "no tokenizer.json");
    fails_with(&with(&["--prompt-ids", "1,2", "--stop", "x"]), "tokenizer");
    fails_with(&with(&["--prompt-ids", "1,200"]), "outside the vocabulary");
    fails_with(&with(&["--prompt-ids", "1,2", "--top-p", "1.5"]), "top-p");
    fails_with(&with(&["--prompt-ids", "1,2", "--temperature", "-1"]), "temperature");
    fails_with(&with(&["--prompt-ids", "1,2", "--max-new-tokens", "300000"]), "context length");
    fails_with(&with(&["--prompt-ids", "1,2", "--prefill-chunk", "0"]), "prefill-chunk");
    fails_with(&with(&["--prompt-ids", "1,2", "--state-dtype", "bf16"]), "bf16");
    fails_with(&with(&["--prompts-file", "/nonexistent.txt"]), "/nonexistent.txt");
    fails_with(&with(&["--prompt-ids", "1,2", "--batch-size", "0"]), "batch-size");
    // the embedded default has a tokenizer; these are about stop strings and malformed tokenizers
    fails_with(&["generate", "--prompt", "Fogg", "--stop", ""], "stop strings must not be empty");
    let broken = tempfile::tempdir().unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(repo().join("tests/fixtures/base").join(f), broken.path().join(f)).unwrap();
    }
    std::fs::write(broken.path().join("tokenizer.json"), "{ not json").unwrap();
    fails_with(&["generate", "--model", broken.path().to_str().unwrap(), "--prompt", "hi"], "malformed tokenizer");
}

/// `--max-new-tokens 0` runs nothing: no tokens, and rates of 0 rather than tokens over no time.
#[test]
fn zero_new_tokens_reports_no_made_up_rates() {
    let run = bamba(&[
        "generate",
        "--model",
        "tests/fixtures/base",
        "--prompt-ids",
        "1,2,3",
        "--max-new-tokens",
        "0",
        "--json",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let record: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(record["generated_ids"], serde_json::json!([]));
    assert_eq!(record["finish_reason"], "length");
    assert_eq!(record["prefill_tokens_per_second"], 0.0);
    assert_eq!(record["decode_tokens_per_second"], 0.0);
    assert!(
        String::from_utf8_lossy(&run.stderr).contains("prefill 0.0 tok/s"),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
}

fn tiny_reference() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(repo().join("tests/fixtures/tiny_reference.json")).unwrap()).unwrap()
}

#[test]
fn default_model_generates_transformers_text_from_a_text_prompt() {
    let reference = tiny_reference();
    let g = &reference["generations"][0];
    let n = g["generated_ids"].as_array().unwrap().len().to_string();
    let prompt = g["prompt"].as_str().unwrap();
    // no --model: the embedded tiny model; --json for the record
    let run = bamba(&["generate", "--prompt", prompt, "--max-new-tokens", &n, "--temperature", "0", "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let record: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!(record["prompt_ids"], g["prompt_ids"]);
    assert_eq!(record["generated_ids"], g["generated_ids"]);
    assert_eq!(record["text"], g["text"]);
    // streamed text mode prints the same text
    let run = bamba(&["generate", "--prompt", prompt, "--max-new-tokens", &n]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8(run.stdout).unwrap(), format!("{}\n", g["text"].as_str().unwrap()));
}

/// `--model owner/name` reads the Hugging Face cache named by `HF_HUB_CACHE` (a layout built here);
/// offline, a repo or revision it lacks is an input error naming the repo.
#[test]
fn a_repo_id_runs_from_the_hugging_face_cache() {
    let cache = tempfile::tempdir().unwrap();
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let folder = cache.path().join("models--test-org--tiny-bamba");
    let snapshot = folder.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    for entry in std::fs::read_dir(repo().join("bamba-cli/assets/tiny-bamba")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), snapshot.join(entry.file_name())).unwrap();
    }
    std::fs::create_dir_all(folder.join("refs")).unwrap();
    std::fs::write(folder.join("refs/main"), commit).unwrap();
    let g = &tiny_reference()["generations"][1];
    let n = g["generated_ids"].as_array().unwrap().len().to_string();
    let run_with = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_bamba"))
            .args(args)
            .env("HF_HUB_CACHE", cache.path())
            .env("HF_HUB_OFFLINE", "1")
            .output()
            .unwrap()
    };
    let prompt = g["prompt"].as_str().unwrap();
    let run = run_with(&["generate", "--model", "test-org/tiny-bamba", "--prompt", prompt, "--max-new-tokens", &n]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(String::from_utf8(run.stdout).unwrap(), format!("{}\n", g["text"].as_str().unwrap()));
    for (model, revision) in [("test-org/absent", "main"), ("test-org/tiny-bamba", "v2")] {
        let run = run_with(&["generate", "--model", model, "--revision", revision, "--prompt", "x"]);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(3), "{stderr}");
        assert!(stderr.contains(model) && stderr.contains("offline"), "{stderr}");
    }
}

#[test]
fn text_prompts_file_runs_as_one_batch_and_equals_transformers() {
    let reference = tiny_reference();
    let generations = reference["generations"].as_array().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("prompts.txt");
    let lines: Vec<&str> = generations.iter().map(|g| g["prompt"].as_str().unwrap()).collect();
    std::fs::write(&file, lines.join("\n")).unwrap();
    let n = generations[0]["generated_ids"].as_array().unwrap().len().to_string();
    let run = bamba(&["generate", "--prompts-file", file.to_str().unwrap(), "--max-new-tokens", &n, "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("3 prompts"), "one batch of three");
    let records: Vec<serde_json::Value> =
        String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(records.len(), generations.len());
    for (record, g) in records.iter().zip(generations) {
        assert_eq!(record["generated_ids"], g["generated_ids"], "{}", g["prompt"]);
        assert_eq!(record["text"], g["text"]);
    }
}

#[test]
fn stop_string_ends_the_text_before_it() {
    let g = &tiny_reference()["generations"][1];
    let text = g["text"].as_str().unwrap();
    // stop at the third word of transformers' continuation
    let stop = text.split_whitespace().nth(2).unwrap();
    let cut = &text[..text.find(stop).unwrap()];
    let prompt = g["prompt"].as_str().unwrap();
    let run = bamba(&["generate", "--prompt", prompt, "--max-new-tokens", "24", "--stop", stop, "--json"]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let record: serde_json::Value = serde_json::from_slice(&run.stdout).unwrap();
    assert_eq!((record["text"].as_str().unwrap(), record["finish_reason"].as_str().unwrap()), (cut, "stop"));
    let run = bamba(&["generate", "--prompt", prompt, "--max-new-tokens", "24", "--stop", stop]);
    assert_eq!(String::from_utf8(run.stdout).unwrap(), format!("{cut}\n"));
}

#[test]
fn bench_reports_every_test_and_batch_with_a_roofline() {
    let run = bamba(&[
        "bench",
        "--config",
        "bamba-cli/assets/tiny-bamba",
        "-t",
        "pp16,tg4,tg4@d20",
        "-b",
        "1,2",
        "-r",
        "1",
        "--json",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let records: Vec<serde_json::Value> =
        String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let names: Vec<(String, u64)> =
        records[1..].iter().map(|r| (r["test"].as_str().unwrap().to_string(), r["batch"].as_u64().unwrap())).collect();
    let expected: Vec<(String, u64)> =
        ["pp16", "tg4", "tg4@d20"].iter().flat_map(|t| [1, 2].map(|b| (t.to_string(), b))).collect();
    assert_eq!(records[0]["test"], "load");
    assert_eq!(names, expected);
    for r in &records[1..] {
        let (tok_s, fraction) = (r["tokens_per_s"].as_f64().unwrap(), r["roofline_fraction"].as_f64().unwrap());
        assert!(tok_s > 0.0 && fraction > 0.0 && fraction < 1.0, "{r}");
        assert_eq!(r["weights"], "random");
    }
    // Decode at context 20 reads 20 more KV positions per sequence than at context 0.
    let bytes = |i: usize| records[i]["bytes_per_step"].as_u64().unwrap();
    assert!(bytes(5) > bytes(3));
}

#[test]
fn bench_progress_times_every_run_on_stderr() {
    let args = ["bench", "-t", "tg2", "-r", "2", "--warmup", "1", "--json", "--progress"];
    let run = bamba(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    for line in ["tg2 b1: warm-up 1/1: ", "tg2 b1: run 1/2: ", "tg2 b1: run 2/2: "] {
        assert!(stderr.contains(line), "stderr lacks {line:?}:\n{stderr}");
    }
    // stdout stays records only
    for line in String::from_utf8(run.stdout).unwrap().lines() {
        serde_json::from_str::<serde_json::Value>(line).unwrap();
    }
}

#[test]
fn bench_memory_budget_shrinks_the_batch_to_what_fits() {
    // Budgets from `bamba info`'s own byte counts for the embedded model (f32, 1000 positions per sequence).
    let records = |memory: &str| -> Vec<serde_json::Value> {
        let run =
            bamba(&["bench", "-t", "tg2@d998", "-b", "8", "-r", "1", "--warmup", "0", "--json", "--memory", memory]);
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        String::from_utf8(run.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    let info =
        bamba(&["info", "--json", "--context", "1000", "--dtype", "f32", "--model", "bamba-cli/assets/tiny-bamba"]);
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    let (weights, per_sequence) =
        (info["weight_bytes"]["f32"].as_u64().unwrap(), info["bytes_per_sequence_at_context"].as_u64().unwrap());
    // Room for exactly three sequences.
    let three = format!("{}", weights + 3 * per_sequence + per_sequence / 2);
    let fitted = &records(&three)[1];
    assert_eq!((fitted["batch"].as_u64(), fitted["requested_batch"].as_u64()), (Some(3), Some(8)), "{fitted}");
    let none = &records(&format!("{}", weights + per_sequence / 2))[1];
    assert!(none["skipped"].as_str().unwrap().contains("--memory"), "{none}");
    fails_with(&["bench", "--memory", "lots"], "--memory");
}

#[test]
fn bench_bad_arguments_are_clear_errors() {
    fails_with(&["bench", "--preset", "gpt-5"], "unknown preset");
    fails_with(&["bench", "--preset", "bamba-9b", "-t", "pp0"], "unknown test");
    fails_with(&["bench", "--preset", "bamba-9b", "-t", "tg8@x"], "unknown test");
    fails_with(&["bench", "--preset", "bamba-9b", "-b", "0"], "at least 1");
    fails_with(&["bench", "--preset", "bamba-9b", "--model", "tests/fixtures/base"], "cannot be used with");
    fails_with(&["bench", "--preset", "bamba-9b", "--backend", "tpu"], "invalid value 'tpu' for '--backend");
}

/// An error is one line on stderr (the error and its causes), without a backtrace even when
/// `RUST_BACKTRACE` asks for one, and the exit status is a failure.
#[test]
fn errors_are_one_line_without_backtrace() {
    let run = Command::new(env!("CARGO_BIN_EXE_bamba"))
        .args(["info", "--model", "tests/no-such-directory"])
        .env("RUST_BACKTRACE", "1")
        .current_dir(repo())
        .output()
        .expect("run bamba");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!stderr.contains("backtrace") && !stderr.contains("Caused by"), "{stderr}");
}

/// `bamba generate … | head -c 1`: the reader goes away after one byte; bamba ends quietly (killed by
/// SIGPIPE as Unix tools are, or successfully), never with a panic.
#[cfg(unix)]
#[test]
fn a_closed_stdout_ends_generation_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_bamba"))
        .args(["generate", "--prompt", "Phileas Fogg", "--max-new-tokens", "200", "--ignore-eos"])
        .current_dir(repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bamba");
    let mut byte = [0u8; 1];
    child.stdout.take().unwrap().read_exact(&mut byte).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{:?}: {stderr}", out.status);
}

/// Sampling options are checked before the weights load: a checkpoint directory without weights
/// still reports the bad temperature, not the missing safetensors.
#[test]
fn sampling_options_are_checked_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(repo().join("tests/fixtures/base/config.json"), dir.path().join("config.json")).unwrap();
    let model = dir.path().to_str().unwrap();
    fails_with(&["generate", "--model", model, "--prompt-ids", "1", "--temperature", "-1"], "temperature must be");
    fails_with(&["generate", "--model", model, "--prompt-ids", "1", "--top-p", "0"], "top-p must be");
}

/// `--prompt -` reads the prompt from stdin (without the line's end): the same tokens as the
/// prompt given inline.
#[test]
fn prompt_from_stdin_equals_the_inline_prompt() {
    use std::io::Write;
    use std::process::Stdio;
    let args = ["generate", "--max-new-tokens", "6", "--json", "--prompt"];
    let inline = bamba(&[&args[..], &["Phileas Fogg"]].concat());
    assert!(inline.status.success(), "{}", String::from_utf8_lossy(&inline.stderr));
    let mut child = Command::new(env!("CARGO_BIN_EXE_bamba"))
        .args([&args[..], &["-"]].concat())
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run bamba");
    child.stdin.take().unwrap().write_all(b"Phileas Fogg\n").unwrap();
    let piped = child.wait_with_output().unwrap();
    assert!(piped.status.success(), "{}", String::from_utf8_lossy(&piped.stderr));
    let field = |out: &[u8], name: &str| serde_json::from_slice::<serde_json::Value>(out).unwrap()[name].clone();
    for name in ["prompt_ids", "generated_ids"] {
        assert_eq!(field(&piped.stdout, name), field(&inline.stdout, name), "{name}");
    }
    assert!(field(&piped.stdout, "generated_ids").as_array().is_some_and(|a| !a.is_empty()));
}

/// A copy of a fixture checkpoint in a temp dir, to break one file of.
fn fixture_copy(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(repo().join("tests/fixtures").join(name)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
    }
    dir
}

/// Runs bamba with a deadline: a hang is a failure, not a stuck test.
fn bamba_within(args: &[&str], seconds: u64) -> Output {
    use std::io::Read as _;
    // A scratch working directory: a command line may name an output file (`--out 1e400GB`), and that
    // file must not land in the repository.
    let scratch = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_bamba"))
        .args(args)
        .current_dir(scratch.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Drained on their own threads so a chatty child cannot fill a pipe and stall until the deadline.
    let drain = |mut pipe: Box<dyn std::io::Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            pipe.read_to_end(&mut bytes).unwrap();
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed().as_secs() >= seconds {
            child.kill().unwrap();
            panic!("bamba {args:?} still running after {seconds} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    Output { status, stdout: stdout.join().unwrap(), stderr: stderr.join().unwrap() }
}

#[cfg(unix)]
#[test]
fn special_files_and_malformed_generation_config_are_clear_errors() {
    let expect = |dir: &Path, needle: &str| {
        let d = dir.to_str().unwrap();
        let out = bamba_within(&["generate", "--model", d, "--prompt-ids", "1,2", "--max-new-tokens", "1"], 60);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(needle), "{needle:?} not in {stderr}");
    };
    // a FIFO in place of the weights would block the open forever
    let dir = fixture_copy("base");
    let weights = dir.path().join("model.safetensors");
    std::fs::remove_file(&weights).unwrap();
    let c = std::ffi::CString::new(weights.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    expect(dir.path(), "a FIFO, not a regular file");
    // /dev/zero behind config.json would be read until memory runs out
    let dir = fixture_copy("base");
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", dir.path().join("config.json")).unwrap();
    expect(dir.path(), "a device, not a regular file");
    // a generation_config.json that does not parse is reported, not ignored
    let dir = fixture_copy("base");
    std::fs::write(dir.path().join("generation_config.json"), "{\"eos_token_id\": \"two\"").unwrap();
    expect(dir.path(), "malformed generation config");
}

#[test]
fn exit_codes_tell_usage_from_input_from_success() {
    let code = |args: &[&str]| bamba(args).status.code();
    let fixture = "tests/fixtures/base";
    assert_eq!(code(&["generate", "--model", fixture, "--prompt-ids", "1,2", "--max-new-tokens", "1"]), Some(0));
    // usage: clap's parse errors, bad option values found after parsing, bad sampling settings
    assert_eq!(code(&["generate", "--no-such-flag"]), Some(2));
    assert_eq!(code(&["generate", "--model", fixture, "--prompt-ids", "1,2", "--batch-size", "0"]), Some(2));
    assert_eq!(code(&["generate", "--model", fixture, "--prompt-ids", "1,2", "--temperature", "-1"]), Some(2));
    assert_eq!(code(&["bench", "--model", fixture, "-b", "0"]), Some(2));
    assert_eq!(code(&["bench", "--model", fixture, "-t", "tg1@d100000000000"]), Some(2));
    // input: a checkpoint that is not there, a token outside the vocabulary
    assert_eq!(code(&["info", "--model", "tests/no-such/directory"]), Some(3));
    assert_eq!(code(&["generate", "--model", fixture, "--prompt-ids", "1,999999", "--max-new-tokens", "1"]), Some(3));
}

/// Random command lines: a command, flags from its vocabulary and others', hostile values. Each run
/// ends within 30 s with exit 0 (it worked), 1 (runtime), 2 (usage) or 3 (input), an `error:` line on
/// failure, and never a panic (101), an abort or another signal.
#[test]
fn random_command_lines_end_cleanly() {
    use proptest::prelude::*;
    use proptest::test_runner::{Config, TestRunner};
    // each command's own flags (so that most lines get past clap), and values of every kind
    let vocabulary = |command: &str| -> Vec<&'static str> {
        let common = ["--threads", "--dtype", "--state-dtype", "-v", "-q"];
        let own: &[&'static str] = match command {
            "info" => &["--json", "--memory", "--context"],
            "generate" => &[
                "--prompt",
                "--prompt-ids",
                "--max-new-tokens",
                "--temperature",
                "--top-k",
                "--top-p",
                "--min-p",
                "--repetition-penalty",
                "--presence-penalty",
                "--frequency-penalty",
                "--seed",
                "--stop",
                "--batch-size",
                "--prefill-chunk",
                "--json",
                "--backend",
                "--ignore-eos",
            ],
            "bench" => &["-t", "-b", "-r", "--warmup", "--prefill-chunk", "--memory", "--json", "--backend"],
            _ => &["--prompt-ids", "--out", "--backend"],
        };
        common.iter().chain(own).copied().collect()
    };
    let values = [
        "",
        "0",
        "1",
        "-1",
        "2",
        "64",
        "4294967295",
        "18446744073709551616",
        "1e308",
        "nan",
        "inf",
        "-0",
        "0.5",
        "bf16",
        "f64",
        "cuda",
        "ndarray",
        "/dev/zero",
        "/nonexistent",
        "tg1",
        "pp1,tg1@d1e11",
        "tg4294967295",
        "pp2,tg2@d8",
        "1,2,3",
        "Fogg",
        "9999999",
        "70GB",
        "1e400GB",
        "-5GB",
        "\u{1F600}",
    ];
    let line = prop::sample::select(vec!["info", "generate", "logits", "bench"]).prop_flat_map(move |command| {
        let flags = vocabulary(command);
        (
            Just(command),
            prop::collection::vec((prop::sample::select(flags), prop::sample::select(values.to_vec())), 0..4),
        )
    });
    let mut runner = TestRunner::new(Config { cases: 128, failure_persistence: None, ..Config::default() });
    runner
        .run(&line, |(command, args)| {
            let model = repo().join("tests/fixtures/base").to_str().unwrap().to_string();
            let mut argv = vec![command.to_string(), "--model".into(), model];
            for (flag, value) in &args {
                argv.push(flag.to_string());
                if !matches!(*flag, "--json" | "-v" | "-q" | "--ignore-eos") {
                    argv.push(value.to_string());
                }
            }
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let run = bamba_within(&argv, 30);
            let (status, stderr) = (run.status, String::from_utf8_lossy(&run.stderr));
            prop_assert!(matches!(status.code(), Some(0..=3)), "bamba {}: {status}\n{stderr}", argv.join(" "));
            prop_assert!(
                status.success() || stderr.contains("error:"),
                "bamba {}: no error line\n{stderr}",
                argv.join(" ")
            );
            Ok(())
        })
        .unwrap();
}

/// Found by `random_command_lines_end_cleanly`: `bench -b 4294967295` aborted allocating the cache of
/// four billion sequences; the batch is now a usage error past 65536.
#[test]
fn a_huge_bench_batch_is_a_usage_error() {
    let run = bamba(&["bench", "--model", "tests/fixtures/base", "-b", "4294967295", "-t", "tg1"]);
    assert_eq!(run.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&run.stderr).contains("a batch size is at least 1 and at most 65536"));
}

/// Negative numbers are values to check, not flags: each gets the option's own error (they were read
/// as unknown arguments); too many new tokens are named as such, not as a long prompt.
#[test]
fn negative_numbers_and_too_many_new_tokens_get_their_own_errors() {
    let generate = |extra: &[&str]| {
        let mut args = vec!["generate", "--prompt", "hi"];
        args.extend_from_slice(extra);
        let run = bamba(&args);
        (run.status.code(), String::from_utf8_lossy(&run.stderr).into_owned())
    };
    for (flag, value, needle) in [
        ("--min-p", "-0.5", "min-p must be in [0, 1]"),
        ("--temperature", "-1", "temperature must be finite and >= 0"),
        ("--max-new-tokens", "-1", "for '--max-new-tokens"),
        ("--prompt-ids", "1,-2", "for '--prompt-ids"),
    ] {
        let (code, stderr) = generate(&[flag, value]);
        assert_eq!(code, Some(2), "{flag} {value}: {stderr}");
        assert!(stderr.contains(needle) && !stderr.contains("unexpected argument"), "{flag} {value}: {stderr}");
    }
    let run = bamba(&["serve", "--memory", "-5GB"]);
    assert!(String::from_utf8_lossy(&run.stderr).contains("cannot parse \"-5GB\""));
    // refused before the model loads or the port is bound
    let run = bamba(&["serve", "--prefix-cache-snapshot-memory", "1"]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("snapshot cap of 1 bytes holds no snapshot"), "{stderr}");
    let (code, stderr) = generate(&["--max-new-tokens", "1000000"]);
    assert_eq!(code, Some(3), "{stderr}");
    assert!(stderr.contains("1000000 new tokens") && stderr.contains("at most 2045 new tokens"), "{stderr}");
}
