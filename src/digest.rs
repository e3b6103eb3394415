//! SHA-256 of files, in lowercase hex: what a backup's manifest records and what the hub names a
//! large file by.

use std::path::Path;

use sha2::{Digest, Sha256};

/// The size of the file at `path` and its SHA-256, streamed rather than read whole.
pub fn sha256_file(path: &Path) -> std::io::Result<(u64, String)> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let bytes = std::io::copy(&mut f, &mut h)?;
    Ok((
        bytes,
        h.finalize().iter().map(|b| format!("{b:02x}")).collect(),
    ))
}
