//! Helpers shared by the integration tests.

use std::path::PathBuf;

fn models_dir() -> PathBuf {
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
