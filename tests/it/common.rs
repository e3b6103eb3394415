//! Helpers shared by the integration tests.

use std::path::PathBuf;

/// Path to a bundled model's weights. Tests that need real weights fail (not skip) when they are
/// missing, because the test command fetches them first; the message says how.
#[allow(dead_code)]
pub fn model_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("CLERK_MODELS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models"));
    let path = dir.join(format!("{name}.gguf"));
    assert!(
        path.exists(),
        "{} is missing: run `scripts/fetch-models.sh {name}` first",
        path.display()
    );
    path
}
