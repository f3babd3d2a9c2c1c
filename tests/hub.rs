//! Repo ids resolved in a Hugging Face cache laid out as `huggingface_hub` writes it (built here in a
//! temporary directory: blobs, snapshot symlinks, refs), offline and with an unreachable hub.

mod common;

use std::path::{Path, PathBuf};

use bamba::model::hub::{is_repo_id, resolve};
use bamba::model::{BackendKind, HubError, HubOptions, TextModel, TextOptions};
use common::*;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";
const OTHER_COMMIT: &str = "89abcdef0123456789abcdef0123456789abcdef";

/// `models--<owner>--<name>` with the files of `source` at `commit` (content-addressed blobs, the
/// snapshot holding symlinks to them, as huggingface_hub does on Unix) and `refs/<branch>`.
fn cache_repo(cache: &Path, repo: &str, source: &Path, commit: &str, branch: &str) -> PathBuf {
    let folder = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snapshot = folder.join("snapshots").join(commit);
    std::fs::create_dir_all(&snapshot).unwrap();
    std::fs::create_dir_all(folder.join("blobs")).unwrap();
    for entry in std::fs::read_dir(source).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        if name == "reference.safetensors" {
            continue;
        }
        let blob = folder.join("blobs").join(format!("{commit}-{name}"));
        std::fs::copy(entry.path(), &blob).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(Path::new("../../blobs").join(blob.file_name().unwrap()), snapshot.join(&name))
            .unwrap();
        #[cfg(not(unix))]
        std::fs::copy(&blob, snapshot.join(&name)).unwrap();
    }
    let refs = folder.join("refs");
    std::fs::create_dir_all(&refs).unwrap();
    std::fs::write(refs.join(branch), commit).unwrap();
    snapshot
}

fn offline(cache: &Path) -> HubOptions {
    HubOptions::new(cache).offline(true)
}

#[test]
fn a_cached_repo_loads_by_id_branch_and_commit_and_generates_transformers_text() {
    let cache = tempfile::tempdir().unwrap();
    let main = cache_repo(cache.path(), "test-org/tiny-bamba", &tiny_dir(), COMMIT, "main");
    let v1 = cache_repo(cache.path(), "test-org/tiny-bamba", &tiny_dir(), OTHER_COMMIT, "v1");
    assert_eq!(resolve("test-org/tiny-bamba", &offline(cache.path())).unwrap(), main);
    assert_eq!(resolve("test-org/tiny-bamba", &offline(cache.path()).revision("v1")).unwrap(), v1);
    assert_eq!(resolve("test-org/tiny-bamba", &offline(cache.path()).revision(OTHER_COMMIT)).unwrap(), v1);
    // a directory wins over the hub, whatever its name
    let dir = tiny_dir();
    assert_eq!(resolve(dir.to_str().unwrap(), &offline(cache.path())).unwrap(), dir);

    let model = TextModel::builder("test-org/tiny-bamba")
        .hub(offline(cache.path()))
        .backend(BackendKind::Ndarray)
        .load()
        .unwrap();
    let g = &tiny_reference()["generations"][0];
    let mut options = TextOptions::default().max_new_tokens(json_ids(&g["generated_ids"]).len());
    options.generate.ignore_eos = true;
    assert_eq!(model.generate(g["prompt"].as_str().unwrap(), &options).unwrap().text, g["text"].as_str().unwrap());
}

#[test]
fn what_the_cache_lacks_is_named_offline() {
    let cache = tempfile::tempdir().unwrap();
    let err = resolve("test-org/absent", &offline(cache.path())).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err}");
    assert!(err.to_string().contains("test-org/absent") && err.to_string().contains("offline"), "{err}");
    cache_repo(cache.path(), "test-org/tiny-bamba", &tiny_dir(), COMMIT, "main");
    let err = resolve("test-org/tiny-bamba", &offline(cache.path()).revision("v2")).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err}");

    // a snapshot without weights, and a sharded one missing a shard
    let snapshot = cache_repo(cache.path(), "test-org/no-weights", &tiny_dir(), COMMIT, "main");
    std::fs::remove_file(snapshot.join("model.safetensors")).unwrap();
    let err = resolve("test-org/no-weights", &offline(cache.path())).unwrap_err();
    assert!(matches!(&err, HubError::Incomplete { file, .. } if file == "model.safetensors"), "{err}");
    let sharded = fixtures_dir().join("bf16_sharded");
    let snapshot = cache_repo(cache.path(), "test-org/sharded", &sharded, COMMIT, "main");
    assert_eq!(resolve("test-org/sharded", &offline(cache.path())).unwrap(), snapshot);
    std::fs::remove_file(snapshot.join("model-00003-of-00004.safetensors")).unwrap();
    let err = resolve("test-org/sharded", &offline(cache.path())).unwrap_err();
    assert!(matches!(&err, HubError::Incomplete { file, .. } if file == "model-00003-of-00004.safetensors"), "{err}");
}

#[test]
fn an_unreachable_hub_is_a_download_error_not_a_hang() {
    let cache = tempfile::tempdir().unwrap();
    // nothing listens on port 1: the connection is refused at once
    let options = HubOptions::new(cache.path()).endpoint("http://127.0.0.1:1");
    let start = std::time::Instant::now();
    let err = resolve("test-org/tiny-bamba", &options).unwrap_err();
    assert!(matches!(&err, HubError::Download { file, .. } if file == "config.json"), "{err}");
    assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
    assert!(start.elapsed().as_secs() < 30);
}

#[test]
fn only_owner_slash_name_is_a_repo_id() {
    for id in ["ibm-ai-platform/Bamba-9B", "state-spaces/mamba2-130m", "a/b.c_d-e"] {
        assert!(is_repo_id(id), "{id}");
    }
    for not_id in ["", "bamba", "/abs/path", "./x", "../x", "a/b/c", "a/..", "../..", "a/", "/b", "a b/c", "-a/b"] {
        assert!(!is_repo_id(not_id), "{not_id}");
    }
    let cache = tempfile::tempdir().unwrap();
    for spec in ["../x", "no-such-dir"] {
        assert!(matches!(resolve(spec, &offline(cache.path())), Err(HubError::NotFound(_))), "{spec}");
    }
    // a revision cannot lead out of the repo's folder
    cache_repo(cache.path(), "test-org/tiny-bamba", &tiny_dir(), COMMIT, "main");
    let err = resolve("test-org/tiny-bamba", &offline(cache.path()).revision("../../x")).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "{err}");
}
