//! Helpers shared by the integration tests.

use std::path::PathBuf;

pub fn models_dir() -> PathBuf {
    std::env::var_os("CLERK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"))
}

/// Tests that need real weights fail (not skip) when they are missing, because the test command
/// fetches them first; the message says how.
fn present(path: PathBuf, name: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-models.sh {name}` first",
        path.display()
    );
    path
}

/// Path to a bundled chat model's GGUF file.
#[allow(dead_code)]
pub fn model_path(name: &str) -> PathBuf {
    present(models_dir().join(format!("{name}.gguf")), name)
}

/// Path to a bundled embedder's folder.
#[allow(dead_code)]
pub fn embedder_dir(name: &str) -> PathBuf {
    present(models_dir().join(name), name)
}

/// The default embedder, loaded once for the whole test binary.
#[allow(dead_code)]
pub fn shared_embedder() -> std::sync::Arc<clerk::engine::Embedder> {
    static EMBEDDER: std::sync::OnceLock<std::sync::Arc<clerk::engine::Embedder>> =
        std::sync::OnceLock::new();
    EMBEDDER
        .get_or_init(|| {
            let name = clerk::engine::registry::DEFAULT_EMBEDDER;
            std::sync::Arc::new(
                clerk::engine::Embedder::load(&embedder_dir(name), name)
                    .expect("load the embedder"),
            )
        })
        .clone()
}

/// Where [`scratch_dir`] puts the folder called `name`, without touching it.
#[allow(dead_code)]
pub fn scratch_dir_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()))
}

/// A fresh folder under the target directory for one test (removed first if a run left it).
#[allow(dead_code)]
pub fn scratch_dir(name: &str) -> PathBuf {
    let dir = scratch_dir_path(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch dir");
    dir
}

/// A bundled dataset's folder (fetched by `scripts/fetch-models.sh`).
#[allow(dead_code)]
pub fn dataset_dir(name: &str) -> PathBuf {
    present(models_dir().join(name), name)
}
