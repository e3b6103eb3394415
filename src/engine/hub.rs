//! Files from a Hugging Face hub repository, through `hf-hub`, in the hub's own cache layout (the
//! one the Python tools share). Only called when the operator names a hub model: a file already in
//! the cache is used without touching the network, so a fetched model keeps working offline.
//!
//! The environment is the hub tools' own: `HF_HUB_CACHE` or `HF_HOME` (else `$XDG_CACHE_HOME` or
//! `~/.cache`, then `huggingface`), `HF_ENDPOINT` (a mirror), `HF_TOKEN` (gated repositories; else
//! the token file `huggingface-cli login` wrote) and `HF_HUB_OFFLINE=1` (never download).

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError};
use hf_hub::{Cache, Repo, RepoType};

/// Why a hub file could not be had; the caller words it as a missing model.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(
        "no folder for the hub cache: set HF_HOME or HF_HUB_CACHE (there is no home directory)"
    )]
    NoCacheDir,
    #[error("{file} is not in the hub cache ({cache}) and HF_HUB_OFFLINE is set")]
    Offline { file: String, cache: PathBuf },
    #[error("download of {file} failed: {message}")]
    Download { file: String, message: String },
    #[error("download of {file} is corrupt (sha256 {got}, the hub names it {want}); {fate}")]
    Corrupt {
        file: String,
        got: String,
        want: String,
        fate: String,
    },
    #[error("the hub cache: {0}")]
    Io(#[from] std::io::Error),
}

/// Where the hub's files go: the Python tools' rules, so that both find the same files.
struct Places {
    cache: PathBuf,
    token_file: PathBuf,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn places() -> Result<Places, HubError> {
    // hf-hub's own `Cache::default()` panics without a home directory; a service may have none.
    let home = match env("HF_HOME") {
        Some(h) => Some(PathBuf::from(h)),
        None => env("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::home_dir().map(|h| h.join(".cache")))
            .map(|c| c.join("huggingface")),
    };
    let cache = match (env("HF_HUB_CACHE"), &home) {
        (Some(c), _) => PathBuf::from(c),
        (None, Some(h)) => h.join("hub"),
        (None, None) => return Err(HubError::NoCacheDir),
    };
    let token_file = env("HF_TOKEN_PATH")
        .map(PathBuf::from)
        .or_else(|| home.map(|h| h.join("token")))
        .unwrap_or_default();
    Ok(Places { cache, token_file })
}

/// The hub tools' reading of a boolean variable.
fn offline() -> bool {
    env("HF_HUB_OFFLINE").is_some_and(|v| {
        matches!(
            v.trim().to_ascii_lowercase().as_str(),
            "1" | "on" | "yes" | "true"
        )
    })
}

fn token(places: &Places) -> Option<String> {
    env("HF_TOKEN").or_else(|| {
        std::fs::read_to_string(&places.token_file)
            .ok()
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
    })
}

/// The local path of `file` in model repository `repo` (`owner/name`) at `revision` (a branch,
/// tag or commit), downloading it first when the cache lacks it.
pub fn get(repo: &str, revision: Option<&str>, file: &str) -> Result<PathBuf, HubError> {
    let places = places()?;
    let cache = Cache::new(places.cache.clone());
    let repo = Repo::with_revision(
        repo.to_string(),
        RepoType::Model,
        revision.unwrap_or("main").to_string(),
    );
    if let Some(path) = cache.repo(repo.clone()).get(file) {
        // Checked once: a clerk stopped between the download and its check, or a file another
        // tool fetched, is checked on its first use here.
        verify(&path, file)?;
        return Ok(path);
    }
    if offline() {
        return Err(HubError::Offline {
            file: file.to_string(),
            cache: places.cache,
        });
    }
    let failed = |message: String| HubError::Download {
        file: file.to_string(),
        message,
    };
    let mut builder = ApiBuilder::from_cache(cache)
        .with_token(token(&places))
        .with_retries(2);
    // hf-hub joins the endpoint and the path with a slash of its own.
    if let Some(endpoint) = env("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint.trim_end_matches('/').to_string());
    }
    let api = builder.build().map_err(|e| failed(e.to_string()))?;
    let path = api.repo(repo).download(file).map_err(|e| {
        let mut message = e.to_string();
        if let Some(hint) = hint(&e) {
            message.push_str(hint);
        }
        failed(message)
    })?;
    verify(&path, file)?;
    Ok(path)
}

/// What the operator can do about a failed download, where its cause is a known one.
fn hint(e: &ApiError) -> Option<&'static str> {
    fn status(e: &ApiError) -> Option<u16> {
        match e {
            ApiError::RequestError(e) => match &**e {
                ureq::Error::Status(code, _) => Some(*code),
                ureq::Error::Transport(_) => None,
            },
            ApiError::TooManyRetries(e) => status(e),
            _ => None,
        }
    }
    match (status(e), e) {
        // The hub answers 401 for a repository that doesn't exist as well as for a gated one.
        (Some(401 | 403), _) => Some(
            " (no such repository, or a gated or private one: check the name, or set HF_TOKEN)",
        ),
        (Some(404), _) => Some(" (no such file or revision in the repository)"),
        (_, ApiError::LockAcquisition(_)) => {
            Some(" (another process is downloading it; try again when it is done)")
        }
        _ => None,
    }
}

/// The marker beside a blob that says its bytes were checked against its name.
fn checked_marker(blob: &Path) -> PathBuf {
    let mut name = blob.file_name().unwrap_or_default().to_os_string();
    name.push(".clerk-checked");
    blob.with_file_name(name)
}

/// hf-hub trusts whatever bytes arrived, and makes them visible in the cache before returning. A
/// large (LFS) file's blob is named by its sha256, so a download cut short or damaged on the way
/// is caught here, and removed rather than left in the cache to fail every later start. A checked
/// blob gets a marker beside it (as the hub tools keep their partial downloads beside it), so a
/// multi-gigabyte file is hashed once, not at every start.
fn verify(pointer: &Path, file: &str) -> Result<(), HubError> {
    let blob = std::fs::canonicalize(pointer)?;
    let want = blob
        .file_name()
        .map(|n| n.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    // Small files kept in git are named by their git blob hash (40 hex digits) instead.
    if want.len() != 64 || !want.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(());
    }
    let marker = checked_marker(&blob);
    if marker.is_file() {
        return Ok(());
    }
    let (_, got) = crate::digest::sha256_file(&blob)?;
    if got == want {
        // Without the marker the file is only hashed again next time.
        let _ = std::fs::write(&marker, b"");
        return Ok(());
    }
    let removed = std::fs::remove_file(pointer)
        .and_then(|()| std::fs::remove_file(&blob))
        .is_ok();
    let fate = if removed {
        "it was removed, so running again downloads it afresh".to_string()
    } else {
        format!(
            "remove {} and {} to fetch it again",
            pointer.display(),
            blob.display()
        )
    };
    Err(HubError::Corrupt {
        file: file.to_string(),
        got,
        want,
        fate,
    })
}
