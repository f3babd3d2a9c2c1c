//! Repo ids resolved in a Hugging Face cache laid out as `huggingface_hub` writes it (built here in a
//! temporary directory: blobs, snapshot symlinks, refs), offline, with an unreachable hub, and
//! downloaded from a hub on loopback that answers as huggingface.co does.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// Loads the embedded model's copy `repo` from the cache at `cache`, offline, and checks that it
/// generates what transformers' `generate()` did.
fn loads_offline_and_generates_transformers_text(cache: &Path, repo: &str) {
    let model = TextModel::builder(repo).hub(offline(cache)).backend(BackendKind::Ndarray).load().unwrap();
    let g = &tiny_reference()["generations"][0];
    let mut options = TextOptions::default().max_new_tokens(json_ids(&g["generated_ids"]).len());
    options.generate.ignore_eos = true;
    assert_eq!(model.generate(g["prompt"].as_str().unwrap(), &options).unwrap().text, g["text"].as_str().unwrap());
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

    loads_offline_and_generates_transformers_text(cache.path(), "test-org/tiny-bamba");
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

/// How the loopback hub sends a file's bytes.
#[derive(Clone, Copy, PartialEq)]
enum Body {
    Whole,
    /// `model.safetensors` is cut off halfway through every body, after a `Content-Length` of all of it.
    CutWeights,
}

/// A Hugging Face hub on 127.0.0.1 serving one repo at one revision from a directory, as
/// huggingface.co answers `GET /<owner>/<name>/resolve/<revision>/<file>`: a `Range` request gets
/// 206 with `Content-Range`, the commit in `X-Repo-Commit` and the blob's hash in `ETag`; a file or
/// repo it lacks gets 404. One request per connection, `max_requests` at most.
struct LoopbackHub {
    endpoint: String,
    /// Every request's path, in order.
    paths: Arc<Mutex<Vec<String>>>,
}

impl LoopbackHub {
    fn serve(repo: &str, revision: &str, files: &Path, body: Body, max_requests: usize) -> LoopbackHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let paths = Arc::new(Mutex::new(Vec::new()));
        let (prefix, files, seen) = (format!("/{repo}/resolve/{revision}/"), files.to_path_buf(), paths.clone());
        std::thread::spawn(move || {
            for _ in 0..max_requests {
                let Ok((stream, _)) = listener.accept() else { return };
                answer(stream, &prefix, &files, body, &seen);
            }
        });
        LoopbackHub { endpoint, paths }
    }

    fn paths(&self) -> Vec<String> {
        self.paths.lock().unwrap().clone()
    }
}

/// Answers one request on `stream` (see [`LoopbackHub`]).
fn answer(mut stream: TcpStream, prefix: &str, files: &Path, body: Body, seen: &Mutex<Vec<String>>) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 16 << 10 {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
    seen.lock().unwrap().push(path.clone());
    let range = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        let (start, end) = value.trim().strip_prefix("bytes=")?.split_once('-')?;
        name.eq_ignore_ascii_case("range").then(|| (start.parse::<usize>().ok(), end.parse::<usize>().ok()))
    });
    let file = path.strip_prefix(prefix).filter(|f| !f.contains('/')).map(|f| files.join(f));
    let Some(bytes) = file.as_ref().filter(|f| f.is_file()).map(|f| std::fs::read(f).unwrap()) else {
        let _ = stream.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        return;
    };
    let etag = {
        use std::hash::{Hash, Hasher};
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        bytes.hash(&mut hasher);
        format!("{:016x}", hasher.finish())
    };
    let (start, end) = match range {
        Some((start, end)) => (start.unwrap_or(0), end.unwrap_or(bytes.len() - 1).min(bytes.len() - 1)),
        None => (0, bytes.len() - 1),
    };
    let part = &bytes[start.min(bytes.len())..=end];
    let status = if range.is_some() { "206 Partial Content" } else { "200 OK" };
    let total = bytes.len();
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{total}\r\n\
         ETag: \"{etag}\"\r\nX-Repo-Commit: {COMMIT}\r\nConnection: close\r\n\r\n",
        part.len()
    );
    let cut = body == Body::CutWeights && path.ends_with("/model.safetensors") && part.len() > 1;
    let sent = if cut { &part[..part.len() / 2] } else { part };
    let _ = stream.write_all(head.as_bytes()).and_then(|_| stream.write_all(sent));
}

/// The snapshot directory `resolve` should give for a repo downloaded at [`COMMIT`].
fn snapshot_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--"))).join("snapshots").join(COMMIT)
}

#[test]
fn a_repo_id_is_downloaded_from_the_hub_once_and_then_loads_offline() {
    let cache = tempfile::tempdir().unwrap();
    let source = tiny_dir();
    let hub = LoopbackHub::serve("test-org/tiny-bamba", "main", &source, Body::Whole, 64);
    let options = HubOptions::new(cache.path()).endpoint(&hub.endpoint);
    let dir = resolve("test-org/tiny-bamba", &options).unwrap();
    assert_eq!(dir, snapshot_dir(cache.path(), "test-org/tiny-bamba"));
    // every checkpoint file the repo has arrived whole; files it lacks (404) are skipped
    for name in
        ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"]
    {
        let (have, want) = (dir.join(name), source.join(name));
        assert_eq!(have.is_file(), want.is_file(), "{name}");
        if want.is_file() {
            assert!(std::fs::read(&have).unwrap() == std::fs::read(&want).unwrap(), "{name} differs");
        }
    }
    let asked = hub.paths();
    assert!(asked.iter().all(|p| p.starts_with("/test-org/tiny-bamba/resolve/main/")), "{asked:?}");
    assert!(asked.iter().any(|p| p.ends_with("/model.safetensors")), "{asked:?}");

    // the next resolve finds the whole checkpoint in the cache and asks the hub nothing
    assert_eq!(resolve("test-org/tiny-bamba", &options).unwrap(), dir);
    assert_eq!(hub.paths().len(), asked.len());
    loads_offline_and_generates_transformers_text(cache.path(), "test-org/tiny-bamba");
}

#[test]
fn a_sharded_repo_is_downloaded_at_a_branch_with_every_shard_its_index_names() {
    let cache = tempfile::tempdir().unwrap();
    let source = fixtures_dir().join("bf16_sharded");
    let hub = LoopbackHub::serve("test-org/sharded", "v1", &source, Body::Whole, 64);
    let options = HubOptions::new(cache.path()).endpoint(&hub.endpoint).revision("v1");
    let dir = resolve("test-org/sharded", &options).unwrap();
    assert_eq!(dir, snapshot_dir(cache.path(), "test-org/sharded"));
    for shard in 1..=4 {
        let name = format!("model-0000{shard}-of-00004.safetensors");
        assert!(std::fs::read(dir.join(&name)).unwrap() == std::fs::read(source.join(&name)).unwrap(), "{name}");
    }
    // the branch now points at the commit, as huggingface_hub records it: offline finds it by name
    assert_eq!(resolve("test-org/sharded", &offline(cache.path()).revision("v1")).unwrap(), dir);
    let err = resolve("test-org/sharded", &offline(cache.path())).unwrap_err();
    assert!(matches!(err, HubError::NotCached { .. }), "main was never downloaded: {err}");
}

#[test]
fn a_repo_the_hub_lacks_and_a_cut_off_download_are_errors_that_leave_nothing_loadable() {
    let cache = tempfile::tempdir().unwrap();
    let hub = LoopbackHub::serve("test-org/other", "main", &tiny_dir(), Body::Whole, 8);
    let err = resolve("test-org/tiny-bamba", &HubOptions::new(cache.path()).endpoint(&hub.endpoint)).unwrap_err();
    assert!(matches!(&err, HubError::Download { file, .. } if file == "config.json"), "{err}");
    assert!(err.to_string().contains("404"), "{err}");

    // the weights' connection closes halfway through, on the first try and on the retry
    let hub = LoopbackHub::serve("test-org/tiny-bamba", "main", &tiny_dir(), Body::CutWeights, 64);
    let err = resolve("test-org/tiny-bamba", &HubOptions::new(cache.path()).endpoint(&hub.endpoint)).unwrap_err();
    assert!(matches!(&err, HubError::Download { file, .. } if file == "model.safetensors"), "{err}");
    let err = resolve("test-org/tiny-bamba", &offline(cache.path())).unwrap_err();
    assert!(matches!(&err, HubError::Incomplete { file, .. } if file == "model.safetensors"), "{err}");
}
