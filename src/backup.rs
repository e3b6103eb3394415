//! `clerk backup` and `clerk restore`: a consistent copy of a data folder, taken while a server
//! uses it, and brought back into a fresh folder.
//!
//! - The SQLite databases (the shop, the keys) are copied with `VACUUM INTO`, which reads one
//!   transaction's snapshot: a backup holds every write committed before it began and none that
//!   committed after, never half of one.
//! - The knowledge base is a folder of immutable generations: the live one is copied whole, and
//!   if an ingest replaces it mid-copy the copy starts again from the new one.
//! - `manifest.json` lists every file with its size and SHA-256. Restore checks them all before it
//!   writes anything, copies into a temporary folder beside the target and renames it into place,
//!   so a failed restore leaves no half-restored folder.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The databases a data folder may hold, by file name.
const DATABASES: &[&str] = &["shop.sqlite", "keys.sqlite"];
const MANIFEST: &str = "manifest.json";
const FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Sqlite { path: PathBuf, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error("the backup is damaged: {0}")]
    Damaged(String),
}

type Result<T> = std::result::Result<T, BackupError>;

fn io(path: &Path) -> impl Fn(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub created_at: i64,
    pub clerk_version: String,
    /// The knowledge base's generation in the backup, if it has one.
    pub knowledge_generation: Option<u64>,
    /// The id of the data key the shop's personal fields are sealed with. The key itself is
    /// never in a backup: whoever holds the backup alone reads no personal field.
    #[serde(default)]
    pub data_key_id: Option<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Relative to the backup (and to the data folder), `/`-separated.
    pub path: String,
    pub bytes: u64,
    pub sha256: String,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    crate::digest::sha256_file(path).map_err(io(path))
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for entry in fs::read_dir(&abs).map_err(io(&abs))? {
            let entry = entry.map_err(io(&abs))?;
            let kind = entry.file_type().map_err(io(&entry.path()))?;
            let child = rel.join(entry.file_name());
            if kind.is_dir() {
                stack.push(child);
            } else if kind.is_file() {
                out.push(child);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for rel in files_under(from)? {
        let dest = to.join(&rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::copy(from.join(&rel), &dest).map_err(io(&dest))?;
    }
    Ok(())
}

fn sync_file(path: &Path) -> Result<()> {
    fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(io(path))
}

/// Copies `data_dir` into `dest` (which must not exist yet) while a server may be using it.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<Manifest> {
    if !data_dir.is_dir() {
        return Err(BackupError::Invalid(format!(
            "{} is not a data folder",
            data_dir.display()
        )));
    }
    if dest.exists() {
        return Err(BackupError::Invalid(format!(
            "{} already exists; back up into a new folder",
            dest.display()
        )));
    }
    let tmp = with_suffix(dest, ".partial");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let made = write_backup(data_dir, &tmp).and_then(|m| {
        let dest: PathBuf = dest.components().collect();
        fs::rename(&tmp, &dest).map_err(io(&dest))?;
        Ok(m)
    });
    if made.is_err() {
        // A failed backup leaves nothing half-written behind.
        let _ = fs::remove_dir_all(&tmp);
    }
    made
}

fn write_backup(data_dir: &Path, tmp: &Path) -> Result<Manifest> {
    if !data_dir.join("shop.sqlite").exists() {
        return Err(BackupError::Invalid(format!(
            "{} holds no shop database",
            data_dir.display()
        )));
    }
    for db in DATABASES {
        let src = data_dir.join(db);
        if !src.exists() {
            continue;
        }
        let out = tmp.join(db);
        let conn = rusqlite::Connection::open(&src).map_err(|e| BackupError::Sqlite {
            path: src.clone(),
            message: e.to_string(),
        })?;
        conn.busy_timeout(std::time::Duration::from_secs(30))
            .and_then(|_| {
                conn.execute(
                    "VACUUM INTO ?1",
                    [out.to_str()
                        .ok_or_else(|| rusqlite::Error::InvalidPath(out.clone()))?],
                )
            })
            .map_err(|e| BackupError::Sqlite {
                path: src.clone(),
                message: e.to_string(),
            })?;
    }
    let knowledge_generation = copy_knowledge(data_dir, tmp)?;
    let data_key_id = sealed_with(&tmp.join("shop.sqlite"))?;
    let mut files = Vec::new();
    for rel in files_under(tmp)? {
        let abs = tmp.join(&rel);
        sync_file(&abs)?;
        let (bytes, sha256) = sha256_file(&abs)?;
        files.push(FileEntry {
            path: rel.to_string_lossy().replace('\\', "/"),
            bytes,
            sha256,
        });
    }
    let manifest = Manifest {
        format: FORMAT,
        created_at: crate::clock::unix_now(),
        clerk_version: env!("CARGO_PKG_VERSION").to_string(),
        knowledge_generation,
        data_key_id,
        files,
    };
    write_manifest(tmp, &manifest)?;
    Ok(manifest)
}

/// The data key id a shop database is sealed with (none before its first start).
fn sealed_with(db: &Path) -> Result<Option<String>> {
    let sqlite = |e: rusqlite::Error| BackupError::Sqlite {
        path: db.to_path_buf(),
        message: e.to_string(),
    };
    let conn = rusqlite::Connection::open(db).map_err(sqlite)?;
    let has_table: bool = conn
        .query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = 'crypto'",
            [],
            |r| r.get(0),
        )
        .map_err(sqlite)?;
    if !has_table {
        return Ok(None);
    }
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT key_id FROM crypto WHERE id = 1", [], |r| r.get(0))
        .optional()
        .map_err(sqlite)
}

/// Copies the live knowledge generation; starts over if an ingest replaced it meanwhile.
fn copy_knowledge(data_dir: &Path, tmp: &Path) -> Result<Option<u64>> {
    let dir = crate::retrieval::store::knowledge_dir(data_dir);
    let out = tmp.join("knowledge");
    for _ in 0..5 {
        let Some(generation) = crate::retrieval::store::current_generation(&dir)
            .map_err(|e| BackupError::Invalid(e.to_string()))?
        else {
            return Ok(None);
        };
        if out.exists() {
            fs::remove_dir_all(&out).map_err(io(&out))?;
        }
        let name = format!("gen-{generation}");
        let copied = copy_tree(&dir.join(&name), &out.join(&name));
        let still = crate::retrieval::store::current_generation(&dir)
            .map_err(|e| BackupError::Invalid(e.to_string()))?;
        if copied.is_ok() && still == Some(generation) {
            let current = out.join("CURRENT");
            fs::write(&current, name.as_bytes()).map_err(io(&current))?;
            return Ok(Some(generation));
        }
    }
    Err(BackupError::Invalid(
        "the knowledge base kept changing during the backup; try again".into(),
    ))
}

fn write_manifest(dir: &Path, m: &Manifest) -> Result<()> {
    let path = dir.join(MANIFEST);
    let mut f = fs::File::create(&path).map_err(io(&path))?;
    let json = serde_json::to_vec_pretty(m).map_err(|e| BackupError::Invalid(e.to_string()))?;
    f.write_all(&json).map_err(io(&path))?;
    f.sync_all().map_err(io(&path))
}

/// `path` with `suffix` on its last part (`bak/` gives `bak.partial`, not `bak/.partial`).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let clean: PathBuf = path.components().collect();
    let mut s = clean.into_os_string();
    s.push(suffix);
    PathBuf::from(s)
}

/// Checks a backup against its manifest: every listed file there with its size and hash, and no
/// path that could point outside the folder.
pub fn verify(backup_dir: &Path) -> Result<Manifest> {
    let path = backup_dir.join(MANIFEST);
    let bytes = fs::read(&path).map_err(io(&path))?;
    let m: Manifest = serde_json::from_slice(&bytes)
        .map_err(|e| BackupError::Damaged(format!("{MANIFEST}: {e}")))?;
    if m.format != FORMAT {
        return Err(BackupError::Damaged(format!(
            "format {} (this clerk reads {FORMAT})",
            m.format
        )));
    }
    // Every backup holds the shop; a manifest without it was cut or written by hand.
    if !m.files.iter().any(|f| f.path == "shop.sqlite") {
        return Err(BackupError::Damaged(format!(
            "{MANIFEST} lists no shop.sqlite"
        )));
    }
    for f in &m.files {
        let rel = Path::new(&f.path);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
        {
            return Err(BackupError::Damaged(format!("unsafe path `{}`", f.path)));
        }
        let (bytes, sha) = sha256_file(&backup_dir.join(rel))?;
        if bytes != f.bytes || sha != f.sha256 {
            return Err(BackupError::Damaged(format!(
                "{} does not match its checksum",
                f.path
            )));
        }
    }
    Ok(m)
}

/// Restores a verified backup into `data_dir`, which must not exist or be empty.
pub fn restore(backup_dir: &Path, data_dir: &Path) -> Result<Manifest> {
    let m = verify(backup_dir)?;
    if data_dir.exists() {
        let empty = fs::read_dir(data_dir)
            .map_err(io(data_dir))?
            .next()
            .is_none();
        if !empty {
            return Err(BackupError::Invalid(format!(
                "{} is not empty; restore into a new folder",
                data_dir.display()
            )));
        }
    }
    let tmp = with_suffix(data_dir, ".restoring");
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    for f in &m.files {
        let dest = tmp.join(&f.path);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        fs::copy(backup_dir.join(&f.path), &dest).map_err(io(&dest))?;
        sync_file(&dest)?;
    }
    for db in DATABASES {
        let path = tmp.join(db);
        if !path.exists() {
            continue;
        }
        let ok: String = rusqlite::Connection::open(&path)
            .and_then(|c| c.query_row("PRAGMA integrity_check", [], |r| r.get(0)))
            .map_err(|e| BackupError::Sqlite {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if ok != "ok" {
            return Err(BackupError::Damaged(format!("{db}: {ok}")));
        }
    }
    if data_dir.exists() {
        fs::remove_dir(data_dir).map_err(io(data_dir))?;
    }
    fs::rename(&tmp, data_dir).map_err(io(data_dir))?;
    Ok(m)
}
