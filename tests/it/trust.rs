//! Keys made with `clerk keys`: stored hashed, scoped, rate-limited per key, and revoked at once
//! on a running server.

use std::process::Command;
use std::sync::Arc;

use clerk::server::keys::KeyStore;
use clerk::server::{app, AppState, ServerConfig};

use crate::assistant::demo_shop;
use crate::common::scratch_dir;

fn clerk(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_clerk"))
        .args(args)
        .output()
        .expect("clerk runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status(url: &str, key: Option<&str>) -> (u16, Option<String>) {
    let mut req = reqwest::Client::new().get(url);
    if let Some(k) = key {
        req = req.bearer_auth(k);
    }
    let res = req.send().await.unwrap();
    let retry = res
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_string());
    (res.status().as_u16(), retry)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_made_with_the_cli_are_hashed_scoped_rate_limited_and_revocable() {
    let dir = scratch_dir("trust-keys");
    let data = dir.to_str().unwrap();
    let (state, stop) = AppState::new(ServerConfig::default(), false);
    std::mem::forget(stop);
    state.set_shop(demo_shop("trust-keys-shop"));
    state.set_key_store(Arc::new(KeyStore::open(&dir).unwrap()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    let staff_route = format!("{base}/v1/shop/handoffs");

    // No key anywhere: a loopback development server, open.
    assert_eq!(status(&staff_route, None).await.0, 200);

    // A staff key made while the server runs counts from the next request.
    let (ok, staff, err) = clerk(&[
        "keys",
        "create",
        "--data-dir",
        data,
        "--name",
        "Alex",
        "--scope",
        "staff",
        "--rate-limit",
        "3",
    ]);
    assert!(ok, "{err}");
    let staff = staff.trim().to_string();
    assert!(staff.starts_with("clerk-staff-"), "{staff}");
    assert_eq!(status(&staff_route, None).await.0, 401);
    assert_eq!(status(&staff_route, Some("clerk-staff-guess")).await.0, 401);
    // Its own limit: three a minute, then 429 with the wait.
    for _ in 0..3 {
        assert_eq!(status(&staff_route, Some(&staff)).await.0, 200);
    }
    let (code, retry) = status(&staff_route, Some(&staff)).await;
    assert_eq!(code, 429);
    let retry: u64 = retry.expect("Retry-After").parse().unwrap();
    assert!((1..=20).contains(&retry), "{retry}");

    // A widget key doesn't reach staff routes.
    let (ok, widget, err) = clerk(&[
        "keys",
        "create",
        "--data-dir",
        data,
        "--name",
        "site",
        "--scope",
        "widget",
    ]);
    assert!(ok, "{err}");
    assert_eq!(status(&staff_route, Some(widget.trim())).await.0, 403);

    // The file holds hashes only.
    let file = std::fs::read(dir.join("keys.sqlite")).unwrap();
    let wal = std::fs::read(dir.join("keys.sqlite-wal")).unwrap_or_default();
    let all = [file, wal].concat();
    for secret in [&staff, widget.trim()] {
        assert!(!all.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }

    // Listed without secrets; revoked at once.
    let (ok, list, _) = clerk(&["keys", "list", "--data-dir", data, "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert!(!list.to_string().contains(&staff));
    let id = list[1]["id"].as_str().unwrap();
    let (ok, _, err) = clerk(&["keys", "revoke", "--data-dir", data, id]);
    assert!(ok, "{err}");
    assert_eq!(
        status(&format!("{base}/v1/models"), Some(widget.trim()))
            .await
            .0,
        401
    );
    let (ok, _, err) = clerk(&["keys", "revoke", "--data-dir", data, "key_nope"]);
    assert!(!ok && err.contains("key_nope"), "{err}");
    let (ok, _, err) = clerk(&[
        "keys",
        "create",
        "--data-dir",
        data,
        "--name",
        "x",
        "--scope",
        "root",
    ]);
    assert!(!ok && err.contains("scope"), "{err}");
}
