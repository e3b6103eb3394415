//! API keys made with `clerk keys`: kept in `DATA_DIR/keys.sqlite` as SHA-256 hashes, so the
//! file alone gives no key away, each with a scope, a name and an optional rate limit. The key
//! itself is shown once, when it is made. A running server reads the file on every request it
//! authenticates, so a key made or revoked while it serves counts at once.
//!
//! Keys are 32 random bytes, so one round of SHA-256 is enough: there is no password to guess.

use std::path::Path;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Row};
use serde::Serialize;

use super::auth::Scope;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("invalid {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
    #[error("no key `{0}`")]
    NotFound(String),
    #[error("key storage: {0}")]
    Storage(String),
}

impl From<rusqlite::Error> for KeyError {
    fn from(e: rusqlite::Error) -> Self {
        KeyError::Storage(e.to_string())
    }
}

type Result<T> = std::result::Result<T, KeyError>;

/// A stored key, without its secret.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredKey {
    pub id: String,
    pub name: String,
    pub scope: Scope,
    /// The first characters of the key, so an operator can tell keys apart.
    pub prefix: String,
    /// Requests per minute this key may make; none means the server's default.
    pub rate_per_minute: Option<u32>,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

pub struct KeyStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS api_keys (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    scope           TEXT NOT NULL,
    hash            TEXT NOT NULL UNIQUE,
    prefix          TEXT NOT NULL,
    rate_per_minute INTEGER,
    created_at      INTEGER NOT NULL,
    revoked_at      INTEGER
)";

const COLS: &str = "id, name, scope, prefix, rate_per_minute, created_at, revoked_at";

use crate::shop::actions::token_hash as hash;

fn from_row(row: &Row) -> rusqlite::Result<StoredKey> {
    let scope: String = row.get(2)?;
    Ok(StoredKey {
        id: row.get(0)?,
        name: row.get(1)?,
        scope: Scope::parse(&scope).unwrap_or(Scope::Widget),
        prefix: row.get(3)?,
        rate_per_minute: row.get(4)?,
        created_at: row.get(5)?,
        revoked_at: row.get(6)?,
    })
}

/// Per-key token buckets: a key may spend its whole minute at once, then one request per
/// `60 / limit` seconds. Only keys that have been used take memory, and keys are few.
#[derive(Default)]
pub struct RateLimiter {
    buckets: Mutex<std::collections::HashMap<String, (f64, std::time::Instant)>>,
}

impl RateLimiter {
    /// Takes one request from `key`'s bucket, or says in how many seconds one will be there.
    pub fn take(&self, key: &str, per_minute: u32) -> std::result::Result<(), u64> {
        let now = std::time::Instant::now();
        let capacity = f64::from(per_minute.max(1));
        let per_second = capacity / 60.0;
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = buckets.entry(key.to_string()).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * per_second).min(capacity);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / per_second).ceil().max(1.0) as u64)
        }
    }
}

impl KeyStore {
    /// Opens (creating if needed) `data_dir/keys.sqlite`.
    pub fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| KeyError::Storage(e.to_string()))?;
        let conn = Connection::open(data_dir.join("keys.sqlite"))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a key; the secret in the answer is not stored and can't be shown again.
    pub fn create(
        &self,
        name: &str,
        scope: Scope,
        rate_per_minute: Option<u32>,
    ) -> Result<(StoredKey, String)> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(KeyError::Invalid {
                field: "name",
                message: "must be 1 to 100 characters".into(),
            });
        }
        if rate_per_minute == Some(0) {
            return Err(KeyError::Invalid {
                field: "rate-limit",
                message: "must be at least 1 request per minute".into(),
            });
        }
        let token = crate::shop::actions::random_token();
        let secret = format!("clerk-{}-{token}", scope.as_str());
        let key = StoredKey {
            id: format!("key_{}", &crate::shop::actions::random_token()[..12]),
            name: name.to_string(),
            scope,
            prefix: secret[..secret.len().min(scope.as_str().len() + 10)].to_string(),
            rate_per_minute,
            created_at: crate::clock::unix_now(),
            revoked_at: None,
        };
        self.conn().execute(
            "INSERT INTO api_keys (id, name, scope, hash, prefix, rate_per_minute, created_at) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                key.id,
                key.name,
                key.scope.as_str(),
                hash(&secret),
                key.prefix,
                key.rate_per_minute,
                key.created_at
            ],
        )?;
        Ok((key, secret))
    }

    /// Every key, revoked ones too, oldest first.
    pub fn list(&self) -> Result<Vec<StoredKey>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLS} FROM api_keys ORDER BY created_at, id"
        ))?;
        let rows = stmt
            .query_map([], from_row)?
            .collect::<rusqlite::Result<_>>()?;
        Ok(rows)
    }

    /// Revokes a key at once; a revoked key stays listed with its time of revocation.
    pub fn revoke(&self, id: &str) -> Result<StoredKey> {
        let conn = self.conn();
        let n = conn.execute(
            "UPDATE api_keys SET revoked_at = ?1 WHERE id = ?2 AND revoked_at IS NULL",
            params![crate::clock::unix_now(), id],
        )?;
        let key = conn
            .query_row(
                &format!("SELECT {COLS} FROM api_keys WHERE id = ?1"),
                [id],
                from_row,
            )
            .optional()?
            .ok_or_else(|| KeyError::NotFound(id.to_string()))?;
        if n == 0 {
            return Err(KeyError::Invalid {
                field: "id",
                message: format!("key {id} was already revoked"),
            });
        }
        Ok(key)
    }

    /// The live key whose secret this is. Looked up by hash, so comparing takes the same time
    /// however much of a guess was right.
    pub fn lookup(&self, secret: &str) -> Result<Option<StoredKey>> {
        Ok(self
            .conn()
            .query_row(
                &format!("SELECT {COLS} FROM api_keys WHERE hash = ?1 AND revoked_at IS NULL"),
                [hash(secret)],
                from_row,
            )
            .optional()?)
    }

    /// Whether any key was ever made, revoked ones included. Once one was, the server asks every
    /// caller for a key for good: revoking the last key must close the door, not open it.
    pub fn any(&self) -> Result<bool> {
        Ok(self
            .conn()
            .query_row("SELECT EXISTS (SELECT 1 FROM api_keys)", [], |r| r.get(0))?)
    }

    /// Whether any key is live.
    pub fn any_live(&self) -> Result<bool> {
        Ok(self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM api_keys WHERE revoked_at IS NULL)",
            [],
            |r| r.get(0),
        )?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stored_hashed_found_by_secret_and_revoked() {
        let dir = std::env::temp_dir().join(format!("clerk-keys-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = KeyStore::open(&dir).unwrap();
        assert!(!store.any_live().unwrap());
        let (key, secret) = store.create("Alex", Scope::Staff, Some(30)).unwrap();
        assert!(secret.starts_with("clerk-staff-") && secret.len() > 50);
        assert!(store.any_live().unwrap());
        assert_eq!(store.lookup(&secret).unwrap().as_ref(), Some(&key));
        assert_eq!(store.lookup("clerk-staff-nope").unwrap(), None);
        // The file holds the hash, never the secret.
        drop(store);
        let bytes = std::fs::read(dir.join("keys.sqlite")).unwrap();
        let wal = std::fs::read(dir.join("keys.sqlite-wal")).unwrap_or_default();
        let all = [bytes, wal].concat();
        assert!(!all.windows(secret.len()).any(|w| w == secret.as_bytes()));
        let hashed = hash(&secret);
        assert!(all.windows(hashed.len()).any(|w| w == hashed.as_bytes()));
        let store = KeyStore::open(&dir).unwrap();
        let revoked = store.revoke(&key.id).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(store.lookup(&secret).unwrap(), None);
        assert!(store.revoke(&key.id).is_err());
        assert!(matches!(
            store.revoke("key_nope"),
            Err(KeyError::NotFound(_))
        ));
        assert!(store.create(" ", Scope::Admin, None).is_err());
        assert!(store.create("x", Scope::Admin, Some(0)).is_err());
        assert_eq!(store.list().unwrap().len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
