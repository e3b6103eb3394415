//! Personal fields sealed at rest: AES-256-GCM under a key the operator holds, so the database
//! file alone (a stolen disk, a copied backup) reveals no email, phone, address, payment detail
//! or anything a shopper wrote.
//!
//! - A sealed value reads `ck1.<key id>.<base64 of nonce and ciphertext>`. The column's name is
//!   the associated data, so a value moved into another column no longer opens.
//! - Lookups by email go through a blind index: an HMAC of the lowercased address under a key
//!   derived from the data key, since a sealed column can't be searched.
//! - The key id is an HMAC of the key too: it names the key in errors and manifests without
//!   revealing anything about it.
//! - The key is 32 random bytes, written as base64 in a file (`clerk data-key new FILE`) or given
//!   in `CLERK_DATA_KEY`. Without either, clerk keeps one in `DATA_DIR/data.key`, made on first
//!   start; operators who want the key off the data disk move it and pass `--data-key-file`.

use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hmac;

use super::error::{Result, ShopError};

const PREFIX: &str = "ck1.";
/// The file name clerk keeps its own key under when the operator gives none.
pub const AUTO_KEY_FILE: &str = "data.key";

/// Where the data key comes from.
#[derive(Clone, Default, PartialEq, Eq)]
pub enum KeySource {
    /// `DATA_DIR/data.key`, made on first start if the database holds nothing sealed yet.
    #[default]
    Auto,
    /// A file the operator keeps (base64 of 32 bytes); it must exist.
    File(PathBuf),
    /// The key itself, base64 (from the environment).
    Value(String),
}

impl std::fmt::Debug for KeySource {
    // Never the key itself: configs get logged.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Auto => write!(f, "Auto"),
            KeySource::File(p) => write!(f, "File({})", p.display()),
            KeySource::Value(_) => write!(f, "Value(<redacted>)"),
        }
    }
}

/// The data key with the two keys derived from it.
pub struct Sealer {
    id: String,
    seal: LessSafeKey,
    blind: hmac::Key,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sealer({})", self.id)
    }
}

fn derive(key: &[u8; 32], label: &str) -> [u8; 32] {
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), label.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

fn bad_key(message: String) -> ShopError {
    ShopError::Key(message)
}

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Self {
        let seal = derive(key, "clerk seal v1");
        let blind = derive(key, "clerk blind index v1");
        let id = derive(key, "clerk key id v1");
        Self {
            id: id[..8].iter().map(|b| format!("{b:02x}")).collect(),
            seal: LessSafeKey::new(
                UnboundKey::new(&AES_256_GCM, &seal).expect("a 32-byte key fits AES-256"),
            ),
            blind: hmac::Key::new(hmac::HMAC_SHA256, &blind),
        }
    }

    /// A new random key, as the base64 text a key file holds.
    pub fn generate() -> String {
        let mut key = [0u8; 32];
        getrandom::fill(&mut key).expect("the operating system's random generator failed");
        base64::engine::general_purpose::STANDARD.encode(key)
    }

    /// Parses a key file's or variable's text: base64 of exactly 32 bytes.
    pub fn from_text(text: &str, origin: &str) -> Result<Self> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| bad_key(format!("{origin}: the data key is not base64")))?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            bad_key(format!(
                "{origin}: the data key must be 32 bytes, this one is {}; make one with \
                 `clerk data-key new FILE`",
                b.len()
            ))
        })?;
        Ok(Self::new(&key))
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            bad_key(format!(
                "{}: {e}; the data key file is needed to read the shop's personal fields",
                path.display()
            ))
        })?;
        Self::from_text(&text, &path.display().to_string())
    }

    /// The key's public name: 16 hex digits.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Seals `value` for the column `field`. Empty text stays empty: there is nothing to hide.
    pub fn seal(&self, field: &str, value: &str) -> String {
        if value.is_empty() {
            return String::new();
        }
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random generator failed");
        let mut buf = value.as_bytes().to_vec();
        self.seal
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field.as_bytes()),
                &mut buf,
            )
            .expect("AES-GCM seals any length clerk stores");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        format!("{PREFIX}{}.{}", self.id, B64.encode(out))
    }

    pub fn seal_opt(&self, field: &str, value: Option<&str>) -> Option<String> {
        value.map(|v| self.seal(field, v))
    }

    /// Opens a value of the column `field`. Text that was never sealed (an erasure's
    /// `[erased]`, an empty field) comes back as it is.
    pub fn open(&self, field: &str, stored: &str) -> Result<String> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (id, body) = rest
            .split_once('.')
            .ok_or_else(|| ShopError::Storage(format!("a sealed {field} is malformed")))?;
        if id != self.id {
            return Err(bad_key(format!(
                "a {field} is sealed with data key {id}, not with the key given ({}); start \
                 clerk with the key the database was sealed or last rotated with",
                self.id
            )));
        }
        let mut bytes = B64
            .decode(body)
            .map_err(|_| ShopError::Storage(format!("a sealed {field} is malformed")))?;
        if bytes.len() < NONCE_LEN {
            return Err(ShopError::Storage(format!("a sealed {field} is malformed")));
        }
        let mut ciphertext = bytes.split_off(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = bytes.try_into().expect("split at the nonce length");
        let plain = self
            .seal
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(field.as_bytes()),
                &mut ciphertext,
            )
            .map_err(|_| {
                ShopError::Storage(format!(
                    "a sealed {field} failed its integrity check (altered, or moved from \
                     another field)"
                ))
            })?;
        String::from_utf8(plain.to_vec())
            .map_err(|_| ShopError::Storage(format!("a sealed {field} is not text")))
    }

    pub fn open_opt(&self, field: &str, stored: Option<String>) -> Result<Option<String>> {
        stored.map(|s| self.open(field, &s)).transpose()
    }

    /// The blind index of an email address (already lowercased by `Email`).
    pub fn blind(&self, email: &str) -> String {
        let tag = hmac::sign(&self.blind, email.as_bytes());
        tag.as_ref().iter().map(|b| format!("{b:02x}")).collect()
    }

    /// Finds the key for `dir` as `source` says; `sealed` is whether the database already holds
    /// sealed values (then an automatic key is never made anew).
    pub fn resolve(dir: &Path, source: &KeySource, sealed_with: Option<&str>) -> Result<Self> {
        match source {
            KeySource::File(path) => Self::from_file(path),
            KeySource::Value(text) => Self::from_text(text, "CLERK_DATA_KEY"),
            KeySource::Auto => {
                let path = dir.join(AUTO_KEY_FILE);
                if path.exists() {
                    return Self::from_file(&path);
                }
                if let Some(id) = sealed_with {
                    return Err(bad_key(format!(
                        "the shop's personal fields are sealed with data key {id}, and no key was \
                         given: pass --data-key-file FILE or set CLERK_DATA_KEY"
                    )));
                }
                match write_key_file(&path, &Self::generate()) {
                    Ok(()) => tracing::warn!(
                        path = %path.display(),
                        "made a new data key for the shop's personal fields; keep a copy of it \
                         off this disk (backups do not include it) and pass it with \
                         --data-key-file"
                    ),
                    // Another process starting on the same folder made it first: use theirs.
                    Err(_) if path.exists() => {}
                    Err(e) => return Err(e),
                }
                // Read back from the file, so what seals the data is what is on disk.
                Self::from_file(&path)
            }
        }
    }
}

/// Writes a key file readable by its owner alone, durably, without ever leaving a partial one
/// or replacing one that exists (it may be the only copy of a key in use).
pub fn write_key_file(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    let io = |e: std::io::Error| ShopError::Key(format!("{}: {e}", path.display()));
    if path.exists() {
        return Err(io(std::io::ErrorKind::AlreadyExists.into()));
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // A name of its own, so two processes making a key at once never share a temporary file.
    let mut tag = [0u8; 8];
    getrandom::fill(&mut tag).expect("the operating system's random generator failed");
    let tag: String = tag.iter().map(|b| format!("{b:02x}")).collect();
    let tmp = path.with_extension(format!("key.{tag}.tmp"));
    let written = (|| {
        let mut f = options.open(&tmp)?;
        f.write_all(format!("{text}\n").as_bytes())?;
        f.sync_all()?;
        drop(f);
        // Linking fails if the name exists: the first writer wins, atomically.
        std::fs::hard_link(&tmp, path)?;
        // The new name must survive a power cut as surely as the data sealed under it.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_file(&tmp);
    written.map_err(io)
}

/// The columns that hold personal data, by table: what sealing and rotation walk.
pub const SEALED: &[(&str, &[&str])] = &[
    (
        "customers",
        &[
            "email", "phone", "address1", "address2", "city", "state", "country", "zip",
        ],
    ),
    (
        "addresses",
        &["address1", "address2", "city", "state", "country", "zip"],
    ),
    (
        "orders",
        &["address1", "address2", "city", "state", "country", "zip"],
    ),
    ("payment_methods", &["brand", "last_four"]),
    ("messages", &["content"]),
    ("feedback", &["text"]),
    ("complaints", &["text"]),
    ("handoffs", &["summary"]),
    ("answer_ratings", &["question", "answer", "correction"]),
    ("tokens", &["payload"]),
    ("audit", &["detail"]),
    // Approved from a shopper's own question.
    ("curated_answers", &["question", "answer"]),
];

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer() -> Sealer {
        Sealer::from_text(&Sealer::generate(), "test").unwrap()
    }

    #[test]
    fn sealed_text_opens_only_with_its_key_and_field() {
        let s = sealer();
        let sealed = s.seal("email", "ana.garcia0@example.com");
        assert!(sealed.starts_with("ck1."), "{sealed}");
        assert!(!sealed.contains("example"), "{sealed}");
        // Random nonces: the same value seals differently each time.
        assert_ne!(sealed, s.seal("email", "ana.garcia0@example.com"));
        assert_eq!(s.open("email", &sealed).unwrap(), "ana.garcia0@example.com");
        assert!(s.open("phone", &sealed).is_err(), "moved to another field");
        let other = sealer();
        let err = other.open("email", &sealed).unwrap_err().to_string();
        assert!(err.contains(s.id()), "{err}");
        // One flipped character fails the integrity check instead of reading as garbage.
        let mut tampered = sealed.clone().into_bytes();
        let last = tampered.len() - 2;
        tampered[last] = if tampered[last] == b'A' { b'B' } else { b'A' };
        assert!(s
            .open("email", &String::from_utf8(tampered).unwrap())
            .is_err());
        assert_eq!(s.seal("zip", ""), "");
        assert_eq!(s.open("content", "[erased]").unwrap(), "[erased]");
        let multibyte = "王小明 · calle Ñandú 5 🏠";
        assert_eq!(
            s.open("address1", &s.seal("address1", multibyte)).unwrap(),
            multibyte
        );
    }

    #[test]
    fn keys_are_checked_and_the_blind_index_is_stable_per_key() {
        assert!(Sealer::from_text("not base64!", "t").is_err());
        assert!(Sealer::from_text("AAAA", "t")
            .unwrap_err()
            .to_string()
            .contains("32 bytes"));
        let text = Sealer::generate();
        let (a, b) = (
            Sealer::from_text(&text, "a").unwrap(),
            Sealer::from_text(&text, "b").unwrap(),
        );
        assert_eq!(a.id(), b.id());
        assert_eq!(a.blind("x@example.com"), b.blind("x@example.com"));
        assert_ne!(a.blind("x@example.com"), a.blind("y@example.com"));
        assert_ne!(a.blind("x@example.com"), sealer().blind("x@example.com"));
    }

    #[test]
    fn an_automatic_key_is_made_once_and_never_replaced() {
        let dir = std::env::temp_dir().join(format!("clerk-key-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let first = Sealer::resolve(&dir, &KeySource::Auto, None).unwrap();
        let again = Sealer::resolve(&dir, &KeySource::Auto, Some(first.id())).unwrap();
        assert_eq!(first.id(), again.id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.join(AUTO_KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert!(write_key_file(&dir.join(AUTO_KEY_FILE), "x").is_err());
        std::fs::remove_file(dir.join(AUTO_KEY_FILE)).unwrap();
        let err = Sealer::resolve(&dir, &KeySource::Auto, Some(first.id()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(first.id()) && err.contains("--data-key-file"),
            "{err}"
        );
        // Processes starting together on a fresh folder all end up with the one key on disk.
        let ids: Vec<String> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|_| s.spawn(|| Sealer::resolve(&dir, &KeySource::Auto, None).unwrap()))
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap().id().to_string())
                .collect()
        });
        let on_disk = Sealer::from_file(&dir.join(AUTO_KEY_FILE)).unwrap();
        assert!(ids.iter().all(|id| id == on_disk.id()), "{ids:?}");
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "temporary key files were left behind");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
