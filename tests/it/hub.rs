//! `--model owner/repo:file.gguf`: clerk fetches through hf-hub from a hub that this test serves on
//! loopback (`HF_ENDPOINT`), with the hub's own protocol (a one-byte range request for the
//! metadata, then the file), into the hub cache under `HF_HOME`.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

use crate::common::scratch_dir;

const REPO: &str = "clerk-test/tiny";
const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A file on the test's hub: the bytes it serves, the etag it claims, and the token it needs.
struct HubFile {
    bytes: Vec<u8>,
    etag: String,
    token: Option<&'static str>,
}

fn file(bytes: &[u8], etag: &str, token: Option<&'static str>) -> HubFile {
    HubFile {
        bytes: bytes.to_vec(),
        etag: etag.to_string(),
        token,
    }
}

/// A hub with the files of one repository, at every revision.
struct FakeHub {
    url: String,
    requests: Arc<Mutex<Vec<String>>>,
}

impl FakeHub {
    fn start(repo: &'static str, files: HashMap<String, HubFile>) -> FakeHub {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(vec![]));
        let log = requests.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                answer(stream, repo, &files, &log);
            }
        });
        FakeHub { url, requests }
    }

    fn request_count(&self) -> usize {
        self.requests.lock().unwrap().len()
    }

    /// Fails the test unless the hub was sent this request line (method and path).
    fn assert_asked(&self, request: &str) {
        let log = self.requests.lock().unwrap();
        assert!(
            log.iter().any(|l| l.starts_with(&format!("{request} "))),
            "{request}: {log:?}"
        );
    }
}

fn answer(
    stream: TcpStream,
    repo: &str,
    files: &HashMap<String, HubFile>,
    log: &Mutex<Vec<String>>,
) {
    let Ok(read) = stream.try_clone() else { return };
    let mut reader = BufReader::new(read);
    let mut first = String::new();
    if reader.read_line(&mut first).is_err() {
        return;
    }
    let (mut range, mut auth) = (None, None);
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            if k.eq_ignore_ascii_case("range") {
                range = v.trim().strip_prefix("bytes=").map(str::to_string);
            } else if k.eq_ignore_ascii_case("authorization") {
                auth = Some(v.trim().to_string());
            }
        }
    }
    // Logged before the answer, so a client that has its answer has been counted.
    log.lock().unwrap().push(first.trim().to_string());
    let path = first.split_whitespace().nth(1).unwrap_or_default();
    let found = path
        .strip_prefix(&format!("/{repo}/resolve/"))
        .and_then(|rest| rest.split_once('/'))
        .and_then(|(_revision, name)| files.get(name));
    let mut out = stream;
    let refuse = |out: &mut TcpStream, status: &str, code: &str| {
        let _ = write!(
            out,
            "HTTP/1.1 {status}\r\nx-error-code: {code}\r\ncontent-length: 0\r\n\
             connection: close\r\n\r\n"
        );
    };
    let Some(f) = found else {
        return refuse(&mut out, "404 Not Found", "EntryNotFound");
    };
    if let Some(token) = f.token {
        if auth.as_deref() != Some(&format!("Bearer {token}")) {
            return refuse(&mut out, "401 Unauthorized", "GatedRepo");
        }
    }
    let n = f.bytes.len();
    let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
        Some((s, e)) => (
            s.parse().unwrap_or(0),
            e.parse::<usize>().map_or(n - 1, |e| e.min(n - 1)),
        ),
        None => (0, n - 1),
    };
    let body = &f.bytes[start..=end];
    let etag = &f.etag;
    let _ = write!(
        out,
        "HTTP/1.1 206 Partial Content\r\nx-repo-commit: {COMMIT}\r\nx-linked-etag: \"{etag}\"\r\n\
         etag: \"{etag}\"\r\ncontent-range: bytes {start}-{end}/{n}\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n",
        body.len()
    );
    let _ = out.write_all(body);
}

/// `clerk generate` with the model `clerk-test/tiny{model}` from the test's hub.
fn generate(hub: &FakeHub, home: &Path, model: &str, env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerk"));
    cmd.args(["generate", "--model", &format!("{REPO}{model}")])
        .args(["--prompt", "ab", "--max-tokens", "3", "--temperature", "0"])
        .args(["--threads", "1"])
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", home);
    isolate(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd.output().expect("clerk runs")
}

/// The hub variables of whoever runs the tests stay out, and so does a proxy from the
/// environment, which would take even loopback requests away from the test's hub.
fn isolate(cmd: &mut Command) {
    for v in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
        "HF_TOKEN",
        "HF_TOKEN_PATH",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "CLERK_MODEL",
    ] {
        cmd.env_remove(v);
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The error output of a run that must have failed.
fn failure(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stderr(o));
    stderr(o)
}

fn blob(repo_cache: &Path, sha: &str) -> std::path::PathBuf {
    repo_cache.join("blobs").join(sha)
}

#[test]
fn a_hub_model_is_fetched_checked_cached_and_used_offline() {
    let dir = scratch_dir("hub");
    let gguf = std::fs::read(crate::arch::tiny_llama(&dir)).unwrap();
    let sha = sha256_hex(&gguf);
    let mut damaged = gguf.clone();
    let mid = damaged.len() / 2;
    damaged[mid] ^= 0x55;
    let damaged_sha = sha256_hex(&damaged);
    // The hub names a large file's blob by its sha256: this one claims another digest (as a
    // download damaged on the way would), so clerk must notice that the bytes differ.
    let claimed = sha256_hex(b"what damaged.gguf should have been");
    let hub = FakeHub::start(
        REPO,
        HashMap::from([
            ("tiny.gguf".into(), file(&gguf, &sha, None)),
            ("damaged.gguf".into(), file(&damaged, &claimed, None)),
            // The same bytes as `damaged.gguf`, honestly named: a gated file, behind a token.
            (
                "gated/tiny.gguf".into(),
                file(&damaged, &damaged_sha, Some("sekrit")),
            ),
        ]),
    );
    let home = dir.join("hf-home");
    let repo_cache = home.join("hub").join("models--clerk-test--tiny");

    let first = generate(&hub, &home, ":tiny.gguf", &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    hub.assert_asked(&format!("GET /{REPO}/resolve/main/tiny.gguf"));
    let cached = repo_cache.join("snapshots").join(COMMIT).join("tiny.gguf");
    assert_eq!(std::fs::read(&cached).unwrap(), gguf, "the cached copy");
    assert!(blob(&repo_cache, &sha).is_file());
    let marker = repo_cache
        .join("blobs")
        .join(format!("{sha}.clerk-checked"));
    assert!(marker.is_file(), "a checked blob is marked");

    // The next start finds the file in the cache and asks the network nothing, so a fetched
    // model keeps working offline.
    let before = hub.request_count();
    let again = generate(&hub, &home, ":tiny.gguf", &[("HF_HUB_OFFLINE", "1")]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        first.stdout, again.stdout,
        "greedy output from the same file"
    );
    let again = generate(&hub, &home, ":tiny.gguf", &[]);
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(
        hub.request_count(),
        before,
        "a cached file is not fetched again"
    );

    // Offline, a file not in the cache is an error that says so, without a request.
    let err = failure(&generate(
        &hub,
        &home,
        ":other.gguf",
        &[("HF_HUB_OFFLINE", "yes")],
    ));
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("clerk-test/tiny:other.gguf"),
        "{err}"
    );
    assert_eq!(hub.request_count(), before);

    // A file the hub doesn't have names the model, the hub's answer and what it means.
    let err = failure(&generate(&hub, &home, ":missing.gguf", &[]));
    assert!(
        err.contains("clerk-test/tiny:missing.gguf")
            && err.contains("status code 404")
            && err.contains("no such file or revision"),
        "{err}"
    );

    // Damaged bytes are refused, and nothing of them stays in the cache to fail the next start.
    let err = failure(&generate(&hub, &home, ":damaged.gguf", &[]));
    assert!(err.contains("corrupt") && err.contains(&claimed), "{err}");
    assert!(err.contains("it was removed"), "{err}");
    assert!(!blob(&repo_cache, &claimed).exists());
    let snapshot = repo_cache.join("snapshots").join(COMMIT);
    assert!(!snapshot.join("damaged.gguf").exists());

    // A gated file needs the token (HF_TOKEN, as the hub's tools read it); a file in a folder of
    // the repository, a pinned revision and an endpoint written with a trailing slash all work.
    let err = failure(&generate(&hub, &home, ":gated/tiny.gguf", &[]));
    assert!(
        err.contains("status code 401") && err.contains("HF_TOKEN"),
        "{err}"
    );
    let endpoint = format!("{}/", hub.url);
    let with_token = generate(
        &hub,
        &home,
        "@v1.0:gated/tiny.gguf",
        &[("HF_TOKEN", "sekrit"), ("HF_ENDPOINT", &endpoint)],
    );
    assert!(with_token.status.success(), "{}", stderr(&with_token));
    hub.assert_asked(&format!("GET /{REPO}/resolve/v1.0/gated/tiny.gguf"));
    assert_eq!(
        std::fs::read(snapshot.join("gated").join("tiny.gguf")).unwrap(),
        damaged
    );

    // A blob damaged after its download (or by a clerk stopped before its check) is caught on
    // its next use when it carries no marker, and removed; the next start fetches it afresh.
    std::fs::remove_file(&marker).unwrap();
    let mut bytes = std::fs::read(blob(&repo_cache, &sha)).unwrap();
    bytes[mid] ^= 0x55;
    std::fs::write(blob(&repo_cache, &sha), &bytes).unwrap();
    let err = failure(&generate(
        &hub,
        &home,
        ":tiny.gguf",
        &[("HF_HUB_OFFLINE", "1")],
    ));
    assert!(err.contains("corrupt"), "{err}");
    assert!(!blob(&repo_cache, &sha).exists());
    let fresh = generate(&hub, &home, ":tiny.gguf", &[]);
    assert!(fresh.status.success(), "{}", stderr(&fresh));
    assert_eq!(fresh.stdout, first.stdout);
    assert_eq!(std::fs::read(blob(&repo_cache, &sha)).unwrap(), gguf);
}

#[test]
fn a_hub_embedder_is_fetched_into_one_snapshot() {
    const EMBEDDER: &str = "clerk-test/minilm";
    let dir = scratch_dir("hub-embedder");
    let local = crate::common::embedder_dir("all-minilm-l6-v2");
    let mut files = HashMap::new();
    for (i, name) in ["config.json", "tokenizer.json", "model.safetensors"]
        .into_iter()
        .enumerate()
    {
        let bytes = std::fs::read(local.join(name)).unwrap();
        // Only the weights are large enough for the hub to keep outside git (and name by their
        // sha256); the JSON files get git's 40-digit names, which clerk does not check.
        let etag = if name.ends_with(".safetensors") {
            sha256_hex(&bytes)
        } else {
            format!("{i:0>40}")
        };
        files.insert(name.to_string(), file(&bytes, &etag, None));
    }
    let hub = FakeHub::start(EMBEDDER, files);
    let faq = dir.join("faq.md");
    std::fs::write(
        &faq,
        "# Shipping\n\n## How long does delivery take?\n\nThree to five working days.\n",
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_clerk"));
    cmd.args(["ingest", "--embedder", EMBEDDER])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg(&faq)
        .env("HF_ENDPOINT", &hub.url)
        .env("HF_HOME", dir.join("hf-home"));
    isolate(&mut cmd);
    cmd.env_remove("CLERK_EMBEDDER");
    let out = cmd.output().expect("clerk runs");
    assert!(out.status.success(), "{}", stderr(&out));
    for name in ["config.json", "tokenizer.json", "model.safetensors"] {
        hub.assert_asked(&format!("GET /{EMBEDDER}/resolve/main/{name}"));
    }
    let snapshot = dir
        .join("hf-home/hub/models--clerk-test--minilm/snapshots")
        .join(COMMIT);
    assert_eq!(
        std::fs::read(snapshot.join("model.safetensors")).unwrap(),
        std::fs::read(local.join("model.safetensors")).unwrap()
    );
}
