//! Where a model lives, as the Hugging Face ecosystem spells it: a checkpoint directory, or a repo id
//! (`ibm-ai-platform/Bamba-9B`) at a revision, found in the local Hugging Face cache (the layout
//! `huggingface_hub` writes: `models--owner--name/refs/<branch>` holding a commit hash, files under
//! `snapshots/<commit>/`) and downloaded into it when it is not there and a network is.
//!
//! Nothing here reads the environment unless the caller asks for it with [`HubOptions::from_env`].

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Repo, RepoType};
use thiserror::Error;

/// How repo ids are resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubOptions {
    /// The hub cache directory (`…/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Branch, tag or commit hash.
    pub revision: String,
    /// Never touch the network: a repo not in the cache is an error.
    pub offline: bool,
    /// The hub's address (`https://huggingface.co`, or a mirror).
    pub endpoint: String,
    /// Access token for gated or private repos.
    pub token: Option<String>,
}

impl HubOptions {
    /// Options for the cache at `cache_dir`: revision `main`, online, the public hub, no token.
    pub fn new(cache_dir: impl Into<PathBuf>) -> Self {
        HubOptions {
            cache_dir: cache_dir.into(),
            revision: "main".into(),
            offline: false,
            endpoint: "https://huggingface.co".into(),
            token: None,
        }
    }

    /// The options `huggingface_hub` takes from the environment: the cache from `HF_HUB_CACHE`,
    /// else `$HF_HOME/hub`, else `~/.cache/huggingface/hub`; `HF_HUB_OFFLINE=1` for offline mode;
    /// `HF_ENDPOINT`; the token from `HF_TOKEN`. Revision `main`.
    pub fn from_env() -> Self {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let cache_dir = var("HF_HUB_CACHE").map(PathBuf::from).unwrap_or_else(|| {
            let home = var("HF_HOME").map(PathBuf::from).unwrap_or_else(|| {
                let user_home = var("HOME").or_else(|| var("USERPROFILE")).unwrap_or_else(|| ".".into());
                Path::new(&user_home).join(".cache").join("huggingface")
            });
            home.join("hub")
        });
        let mut options = HubOptions::new(cache_dir);
        options.offline = var("HF_HUB_OFFLINE").is_some_and(|v| matches!(v.as_str(), "1" | "true" | "TRUE" | "yes"));
        if let Some(endpoint) = var("HF_ENDPOINT") {
            options.endpoint = endpoint;
        }
        options.token = var("HF_TOKEN");
        options
    }

    /// Sets [`HubOptions::revision`].
    pub fn revision(mut self, revision: impl Into<String>) -> Self {
        self.revision = revision.into();
        self
    }

    /// Sets [`HubOptions::offline`].
    pub fn offline(mut self, offline: bool) -> Self {
        self.offline = offline;
        self
    }

    /// Sets [`HubOptions::endpoint`].
    pub fn endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }
}

/// Errors finding a model.
// Each variant's `#[error]` message documents it and names its fields.
#[allow(missing_docs)]
#[derive(Debug, Error)]
pub enum HubError {
    #[error("no model directory {0:?}, and it is not a Hugging Face repo id (owner/name)")]
    NotFound(String),
    #[error(
        "{repo} (revision {revision}) is not in the Hugging Face cache at {cache} and offline mode is on; \
         download it there (huggingface-cli download {repo}) or give a checkpoint directory"
    )]
    NotCached { repo: String, revision: String, cache: PathBuf },
    #[error("{repo} (revision {revision}) in the Hugging Face cache at {cache} lacks {file}, and offline mode is on")]
    Incomplete { repo: String, revision: String, cache: PathBuf, file: String },
    #[error(
        "{repo} is no directory here, and downloading {file} of it as a Hugging Face repo (revision {revision}) \
         from {endpoint} failed: {message}"
    )]
    Download { repo: String, revision: String, endpoint: String, file: String, message: String },
    #[error("cannot read {path}: {message}")]
    Read { path: PathBuf, message: String },
}

/// Files a checkpoint may have besides its weights; the first is required.
const CHECKPOINT_FILES: [&str; 5] =
    ["config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"];

/// Whether `spec` has the shape of a repo id: `owner/name`, each part letters, digits, `-`, `_`, `.`,
/// not starting with `.` or `-` (so never a path like `../x` or `./x`).
pub fn is_repo_id(spec: &str) -> bool {
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 96
            && !p.starts_with(['.', '-'])
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    matches!(spec.split_once('/'), Some((owner, name)) if part_ok(owner) && part_ok(name))
}

/// The checkpoint directory for `spec`: `spec` itself when it exists, else the cached snapshot of
/// repo `spec` at `options.revision`, downloaded first when it is missing or incomplete and
/// `options.offline` is off.
pub fn resolve(spec: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if !is_repo_id(spec) {
        return Err(HubError::NotFound(spec.into()));
    }
    match cached_snapshot(spec, options) {
        Some(dir) => match missing_file(&dir)? {
            None => Ok(dir),
            Some(file) if options.offline => Err(HubError::Incomplete {
                repo: spec.into(),
                revision: options.revision.clone(),
                cache: options.cache_dir.clone(),
                file,
            }),
            Some(_) => download(spec, options),
        },
        None if options.offline => Err(HubError::NotCached {
            repo: spec.into(),
            revision: options.revision.clone(),
            cache: options.cache_dir.clone(),
        }),
        None => download(spec, options),
    }
}

/// The repo's folder in the cache (`models--owner--name`).
fn repo_folder(repo: &str, cache_dir: &Path) -> PathBuf {
    cache_dir.join(format!("models--{}", repo.replace('/', "--")))
}

/// `snapshots/<commit>` for the revision: a branch or tag through `refs/`, or a commit hash itself.
fn cached_snapshot(repo: &str, options: &HubOptions) -> Option<PathBuf> {
    let folder = repo_folder(repo, &options.cache_dir);
    let revision = &options.revision;
    if revision.is_empty() || revision.split('/').any(|p| p.is_empty() || p == "." || p == "..") {
        return None;
    }
    let commit = match std::fs::read_to_string(folder.join("refs").join(revision)) {
        Ok(text) => text.trim().to_string(),
        Err(_) => revision.clone(),
    };
    let hex = commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit());
    let dir = folder.join("snapshots").join(&commit);
    (hex && dir.is_dir()).then_some(dir)
}

/// The first file a complete checkpoint needs that `dir` lacks: config.json, and the weights (one
/// file, or an index and every shard it names).
fn missing_file(dir: &Path) -> Result<Option<String>, HubError> {
    if !dir.join("config.json").is_file() {
        return Ok(Some("config.json".into()));
    }
    if dir.join("model.safetensors").is_file() {
        return Ok(None);
    }
    let index = dir.join("model.safetensors.index.json");
    if !index.is_file() {
        return Ok(Some("model.safetensors".into()));
    }
    Ok(shards(&index)?.into_iter().find(|shard| !dir.join(shard).is_file()))
}

/// The shard files an index names, each once, in order.
fn shards(index: &Path) -> Result<Vec<String>, HubError> {
    let bad = |message: String| HubError::Read { path: index.to_path_buf(), message };
    let text = crate::files::read_text(index, crate::files::TEXT_LIMIT).map_err(|e| bad(e.to_string()))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = value.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no weight_map".into()))?;
    let mut names: Vec<String> = Vec::new();
    for file in map.values() {
        let file = file.as_str().ok_or_else(|| bad("a weight_map value is not a file name".into()))?;
        // shard names come from the network: plain file names only, never a path out of the snapshot
        if file.is_empty() || file.contains(['/', '\\']) || file == "." || file == ".." {
            return Err(bad(format!("shard {file:?} is not a plain file name")));
        }
        if !names.iter().any(|n| n == file) {
            names.push(file.to_string());
        }
    }
    Ok(names)
}

/// Downloads the checkpoint's files into the cache and returns its snapshot directory.
fn download(repo: &str, options: &HubOptions) -> Result<PathBuf, HubError> {
    let failed = |file: &str, message: String| HubError::Download {
        repo: repo.into(),
        revision: options.revision.clone(),
        endpoint: options.endpoint.clone(),
        file: file.into(),
        message,
    };
    let api = ApiBuilder::new()
        .with_cache_dir(options.cache_dir.clone())
        .with_endpoint(options.endpoint.clone())
        .with_token(options.token.clone())
        .with_progress(false)
        .with_retries(1)
        .build()
        .map_err(|e| failed("config.json", e.to_string()))?;
    let api = api.repo(Repo::with_revision(repo.into(), RepoType::Model, options.revision.clone()));
    let is_missing =
        |e: &ApiError| matches!(e, ApiError::RequestError(r) if matches!(**r, ureq::Error::Status(404, _)));
    let config = api.get(CHECKPOINT_FILES[0]).map_err(|e| failed(CHECKPOINT_FILES[0], e.to_string()))?;
    let dir = config.parent().expect("a file in a snapshot").to_path_buf();
    for file in &CHECKPOINT_FILES[1..] {
        match api.get(file) {
            Ok(_) => {}
            Err(e) if is_missing(&e) => {}
            Err(e) => return Err(failed(file, e.to_string())),
        }
    }
    match api.get("model.safetensors.index.json") {
        Ok(index) => {
            for shard in shards(&index)? {
                api.get(&shard).map_err(|e| failed(&shard, e.to_string()))?;
            }
        }
        Err(e) if is_missing(&e) => {
            api.get("model.safetensors").map_err(|e| failed("model.safetensors", e.to_string()))?;
        }
        Err(e) => return Err(failed("model.safetensors.index.json", e.to_string())),
    }
    Ok(dir)
}
