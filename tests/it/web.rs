//! The chat page and the staff console: the routes they stand on (conversation history, the
//! "talk to a person" button, ratings and curated answers, analytics), the pages themselves,
//! and the whole journey in a real browser (headless Chromium driven by playwright-core).

use std::sync::Arc;

use clerk::assistant::{Assistant, Prompts};
use clerk::server::auth::ApiKey;
use clerk::server::{app, AppState, ServerConfig};
use clerk::shop::{OrderId, OrderStatus, Shop};
use serde_json::{json, Value};

use crate::assistant::{chat, demo_knowledge, demo_shop, intents, user};

pub(crate) const WIDGET: &str = "widget-key-0123456789";
pub(crate) const STAFF: &str = "staff-key-0123456789ab";

pub(crate) struct Server {
    pub(crate) base: String,
    pub(crate) shop: Shop,
}

/// A real server on a loopback port over a fresh demo shop, with a widget and a staff key.
async fn server(name: &str) -> Server {
    server_with(name, demo_knowledge()).await
}

/// The same over a knowledge base of the test's own (one it may change).
pub(crate) async fn server_with(name: &str, knowledge: clerk::retrieval::Knowledge) -> Server {
    let config = ServerConfig {
        api_keys: vec![
            ApiKey::parse(&format!("widget:{WIDGET}")).unwrap(),
            ApiKey::parse(&format!("staff:{STAFF}")).unwrap(),
        ],
        ..ServerConfig::default()
    };
    let (state, stop) = AppState::new(config, false);
    // The server lives as long as the test process; its streams end with it.
    std::mem::forget(stop);
    let shop = demo_shop(name);
    state.set_shop(shop.clone());
    state.set_knowledge(knowledge.clone());
    state.set_assistant(Assistant::new(
        shop.clone(),
        knowledge,
        intents(),
        Arc::new(Prompts::builtin().unwrap()),
        "Harbor & Pine",
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    Server { base, shop }
}

pub(crate) async fn call(
    method: reqwest::Method,
    url: String,
    key: &str,
    conversation: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, url)
        .bearer_auth(key)
        .header("x-clerk-staff", "Alex");
    if let Some(c) = conversation {
        req = req.header("x-clerk-conversation", c);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub(crate) async fn delete(url: String, key: &str) -> (u16, Value) {
    call(reqwest::Method::DELETE, url, key, None, None).await
}

pub(crate) async fn get(url: String, key: &str) -> (u16, Value) {
    call(reqwest::Method::GET, url, key, None, None).await
}

pub(crate) async fn post(
    url: String,
    key: &str,
    conversation: Option<&str>,
    body: Value,
) -> (u16, Value) {
    call(reqwest::Method::POST, url, key, conversation, Some(body)).await
}

const REPAIRS: &str =
    "My jacket is out of warranty. How much do paid repairs cost and how long do they take?";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_correction_staff_approve_answers_the_same_question_next_time() {
    let s = server("web-curated").await;
    let (status, _, first) = chat(&s.base, WIDGET, None, user(REPAIRS)).await;
    assert_eq!(status, 200, "{first}");
    let conv = first["conversation_id"].as_str().unwrap().to_string();
    let message = first["clerk"]["message_id"].as_i64().unwrap();
    assert!(first["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("$15–$60"));

    // Its source opens the passage it quotes, for the shopper's key too.
    let src = &first["sources"][0];
    let url = reqwest::Url::parse_with_params(
        &format!("{}/v1/knowledge/passage", s.base),
        [
            ("document_id", src["document_id"].as_str().unwrap()),
            ("locator", src["locator"].as_str().unwrap()),
        ],
    )
    .unwrap();
    let (status, passage) = get(url.to_string(), WIDGET).await;
    assert_eq!(status, 200, "{passage}");
    assert!(
        passage["text"].as_str().unwrap().contains("$15–$60"),
        "{passage}"
    );
    let missing = format!(
        "{}/v1/knowledge/passage?document_id=faq.md&locator=nowhere",
        s.base
    );
    assert_eq!(get(missing, WIDGET).await.0, 404);
    let (status, body) = get(format!("{}/v1/knowledge/passage?locator=x", s.base), WIDGET).await;
    assert_eq!(
        (status, &body["error"]["param"]),
        (400, &json!("document_id"))
    );

    // A thumbs down needs the conversation the message is in: another one's reads as absent.
    let rating = format!("{}/v1/assistant/messages/{message}/rating", s.base);
    let (_, _, other) = chat(&s.base, WIDGET, None, user("hello")).await;
    let other = other["conversation_id"].as_str().unwrap().to_string();
    let (status, body) = post(
        rating.clone(),
        WIDGET,
        Some(&other),
        json!({"rating": "down"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post(
        rating.clone(),
        WIDGET,
        Some(&conv),
        json!({"rating": "sideways"}),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = post(rating.clone(), WIDGET, None, json!({"rating": "up"})).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "X-Clerk-Conversation");
    let correction = "Paid repairs cost $15–$60 and take 2–3 weeks; we email a quote first.";
    let (status, r) = post(
        rating.clone(),
        WIDGET,
        Some(&conv),
        json!({"rating": "down", "correction": correction}),
    )
    .await;
    assert_eq!(status, 200, "{r}");
    assert_eq!(
        (r["status"].as_str(), r["rating"].as_i64()),
        (Some("pending"), Some(-1))
    );
    assert_eq!(r["question"], REPAIRS);

    // Review is for staff only.
    let ratings = format!("{}/v1/assistant/ratings", s.base);
    assert_eq!(get(ratings.clone(), WIDGET).await.0, 403);
    let (_, list) = get(ratings, STAFF).await;
    assert_eq!(list["data"].as_array().unwrap().len(), 1, "{list}");
    let id = r["id"].as_i64().unwrap();
    let (status, approved) = post(
        format!("{}/v1/assistant/ratings/{id}/approve", s.base),
        STAFF,
        None,
        json!({}),
    )
    .await;
    assert_eq!(status, 200, "{approved}");
    assert_eq!(approved["rating"]["status"], "approved");
    assert_eq!(approved["curated"]["answer"], correction);
    assert_eq!(approved["rating"]["reviewed_by"], "Alex");
    // Twice is a conflict, not a second curated answer.
    let (status, _) = post(
        format!("{}/v1/assistant/ratings/{id}/approve", s.base),
        STAFF,
        None,
        json!({}),
    )
    .await;
    assert_eq!(status, 409);
    // Nor can the shopper rate a reviewed answer again and put a new correction up for review.
    let (status, body) = post(
        rating,
        WIDGET,
        Some(&conv),
        json!({"rating": "down", "correction": "It is free."}),
    )
    .await;
    assert_eq!(status, 409, "{body}");

    // A new conversation asking the same question gets the approved answer, cited as curated.
    let (_, _, again) = chat(&s.base, WIDGET, None, user(REPAIRS)).await;
    let text = again["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("we email a quote first"), "{text}");
    assert_eq!(again["sources"][0]["kind"], "curated", "{again}");
    // A different question still goes to retrieval.
    let (_, _, other) = chat(
        &s.base,
        WIDGET,
        None,
        user("How long do you keep the transcripts of chats with the shop assistant?"),
    )
    .await;
    assert!(other["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("90 days"));

    // Removing the curated answer gives the question back to retrieval.
    let curated_id = approved["curated"]["id"].as_i64().unwrap();
    let (status, _) = delete(
        format!("{}/v1/assistant/curated/{curated_id}", s.base),
        STAFF,
    )
    .await;
    assert_eq!(status, 200);
    let (status, _) = delete(
        format!("{}/v1/assistant/curated/{curated_id}", s.base),
        STAFF,
    )
    .await;
    assert_eq!(status, 404);
    let (_, _, after) = chat(&s.base, WIDGET, None, user(REPAIRS)).await;
    assert_ne!(after["sources"][0]["kind"], "curated", "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_cards_the_human_button_and_a_staff_reply_reach_the_shopper_page() {
    let s = server("web-history").await;
    let (_, _, r) = chat(&s.base, WIDGET, None, user("Where is my order #W1000005?")).await;
    let conv = r["conversation_id"].as_str().unwrap().to_string();
    let (_, _, r) = chat(
        &s.base,
        WIDGET,
        Some(&conv),
        user("it's wei.tanaka1@example.com"),
    )
    .await;
    let card = &r["clerk"]["cards"][0];
    assert_eq!(card["type"], "order", "{r}");
    assert_eq!(card["order_id"], "#W1000005");
    assert_eq!(card["status"], "delivered");
    assert_eq!(card["tracking"][0]["id"], "810103730582", "{card}");

    // After a reload the page gets the conversation back, cards included.
    let history = format!("{}/v1/assistant/conversations/{conv}", s.base);
    let (status, h) = get(history.clone(), WIDGET).await;
    assert_eq!(status, 200, "{h}");
    let messages = h["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 4, "{h}");
    assert_eq!(messages[3]["meta"]["cards"][0]["order_id"], "#W1000005");
    assert_eq!(h["human"], false);
    for unknown in [
        "conv-no-such-thing",
        "1",
        &format!("conv-{}", "0".repeat(48)),
    ] {
        let (status, _) = get(
            format!("{}/v1/assistant/conversations/{unknown}", s.base),
            WIDGET,
        )
        .await;
        assert_eq!(status, 404, "{unknown}");
    }

    // A question the shop's data can't answer, and a thumbs up, for the analytics below.
    let (_, _, r) = chat(&s.base, WIDGET, Some(&conv), user("Do you sell kayaks?")).await;
    assert_eq!(r["clerk"]["intent"], "question", "{r}");
    let order_answer = messages[3]["id"].as_i64().unwrap();
    let (status, _) = post(
        format!("{}/v1/assistant/messages/{order_answer}/rating", s.base),
        WIDGET,
        Some(&conv),
        json!({"rating": "up"}),
    )
    .await;
    assert_eq!(status, 200);

    // The button opens a handoff at once; pressing it again opens no second one.
    let button = format!("{}/v1/assistant/conversations/{conv}/handoff", s.base);
    let (status, b) = post(button.clone(), WIDGET, None, json!({})).await;
    assert_eq!(status, 200, "{b}");
    let handoff = b["handoff_id"].as_i64().unwrap();
    let (_, again) = post(button, WIDGET, None, json!({})).await;
    assert_eq!(again["handoff_id"].as_i64(), Some(handoff));
    let (_, queue) = get(format!("{}/v1/shop/handoffs?status=open", s.base), STAFF).await;
    assert_eq!(queue["data"].as_array().unwrap().len(), 1, "{queue}");
    assert!(queue["data"][0]["customer_id"].as_str().is_some());

    // Staff claim and reply; the page's poll sees the reply, and the next turn doesn't repeat it.
    let step = |s2: &str| format!("{}/v1/shop/handoffs/{handoff}/{s2}", s.base);
    assert_eq!(post(step("claim"), STAFF, None, json!({})).await.0, 200);
    let (status, _) = post(
        step("reply"),
        STAFF,
        None,
        json!({"text": "Hi, this is Alex."}),
    )
    .await;
    assert_eq!(status, 200);
    let last = messages[3]["id"].as_i64().unwrap();
    let (_, h) = get(format!("{history}?after={last}"), WIDGET).await;
    let staff: Vec<&Value> = h["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "staff")
        .collect();
    assert_eq!(staff.len(), 1, "{h}");
    assert_eq!(staff[0]["author"], "Alex");
    assert_eq!(h["handoff"]["status"], "claimed");
    // The page learns where the handoff stands, not the summary written for staff.
    assert!(h["handoff"].get("summary").is_none(), "{h}");
    let (_, _, r) = chat(
        &s.base,
        WIDGET,
        Some(&conv),
        user("thanks, one more question"),
    )
    .await;
    assert_eq!(r["clerk"]["silent"], true, "{r}");
    assert_eq!(r["choices"][0]["message"]["content"], "");

    // Analytics count what happened.
    let (status, a) = get(format!("{}/v1/analytics?days=7", s.base), STAFF).await;
    assert_eq!(status, 200, "{a}");
    assert_eq!(a["days"].as_array().unwrap().len(), 7);
    assert_eq!(a["conversations"], 1, "{a}");
    assert_eq!(a["handoff_rate"], 1.0);
    assert_eq!(a["days"][6]["handoffs"], 1);
    assert!(a["handoff_reasons"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("talk to a person"));
    assert_eq!(a["unanswered"][0]["question"], "Do you sell kayaks?", "{a}");
    assert_eq!(a["ratings"], json!({"up": 1, "down": 0}));
    // Every assistant reply recorded how long its turn took: five replies, the second button
    // press included.
    assert_eq!(a["latency_ms"]["count"], 5, "{a}");
    let p = |k: &str| a["latency_ms"][k].as_f64().unwrap();
    assert!(
        p("p50") > 0.0 && p("p50") <= p("p90") && p("p90") <= p("p99"),
        "{a}"
    );
    assert!(a["top_intents"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["intent"] == "order_status"));
    assert_eq!(get(format!("{}/v1/analytics", s.base), WIDGET).await.0, 403);
    assert_eq!(
        get(format!("{}/v1/analytics?days=0", s.base), STAFF)
            .await
            .0,
        400
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn staff_resolve_complaints_once_and_pages_are_served_from_the_binary() {
    let s = server("web-pages").await;
    let (_, _, r) = chat(
        &s.base,
        WIDGET,
        None,
        user("The zipper on my new jacket broke after two days, this is really disappointing."),
    )
    .await;
    assert_eq!(r["clerk"]["intent"], "complaint", "{r}");
    let (_, list) = get(format!("{}/v1/shop/complaints", s.base), STAFF).await;
    let id = list["data"][0]["id"].as_i64().unwrap();
    assert_eq!(list["data"][0]["status"], "open");
    let resolve = format!("{}/v1/shop/complaints/{id}/resolve", s.base);
    assert_eq!(post(resolve.clone(), WIDGET, None, json!({})).await.0, 403);
    let (status, c) = post(
        resolve.clone(),
        STAFF,
        None,
        json!({"note": "replacement sent"}),
    )
    .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(
        (c["status"].as_str(), c["resolved_by"].as_str()),
        (Some("resolved"), Some("Alex"))
    );
    assert_eq!(post(resolve, STAFF, None, json!({})).await.0, 409);

    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/console", "text/html"),
        ("/widget.js", "text/javascript"),
        ("/assets/chat.js", "text/javascript"),
        ("/assets/clerk.css", "text/css"),
    ] {
        let res = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200, "{path}");
        let ct = res.headers()["content-type"].to_str().unwrap().to_string();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        let csp = res.headers().get("content-security-policy").cloned();
        assert_eq!(csp.is_some(), kind == "text/html", "{path}");
        // Nothing a page loads may come from anywhere but this server.
        let body = res.text().await.unwrap().to_lowercase().replace(' ', "");
        // widget.js's header comment shows the merchant's tag, with its https address.
        if path == "/widget.js" {
            continue;
        }
        for outside in [
            "src=\"http",
            "href=\"http",
            "url(http",
            "url(\"http",
            "@import",
            "fetch(\"http",
        ] {
            assert!(
                !body.contains(outside),
                "{path} loads from elsewhere ({outside})"
            );
        }
    }
    for path in [
        "/assets/../Cargo.toml",
        "/assets/%2e%2e%2fCargo.toml",
        "/assets/nope.js",
    ] {
        let res = client
            .get(format!("{}{path}", s.base))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
    }
    // The widget key is public: it reaches the assistant, never the raw models, the embedder,
    // the knowledge base's search or the metrics.
    for (path, body) in [
        (
            "/v1/chat/completions",
            json!({"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "hi"}]}),
        ),
        (
            "/v1/completions",
            json!({"model": "smollm2-135m-instruct", "prompt": "hi"}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "all-minilm-l6-v2", "input": "hi"}),
        ),
    ] {
        let (status, body) = post(format!("{}{path}", s.base), WIDGET, None, body).await;
        assert_eq!(status, 403, "{path}: {body}");
    }
    for path in [
        "/v1/knowledge/search?q=returns",
        "/v1/knowledge/documents",
        "/metrics",
    ] {
        assert_eq!(
            get(format!("{}{path}", s.base), WIDGET).await.0,
            403,
            "{path}"
        );
        assert_eq!(
            get(format!("{}{path}", s.base), STAFF).await.0,
            200,
            "{path}"
        );
    }

    let (_, config) = get(format!("{}/web/config.json", s.base), "").await;
    assert_eq!(config["widget_key"], WIDGET);
    assert_eq!(config["shop_name"], "Harbor & Pine");
}

/// The journey of issue 7 in headless Chromium: a cited FAQ answer streamed in, an order card,
/// thumbs and a correction, a cancellation confirmed with a button, the conversation back after
/// a reload, a person asked for, staff claiming and replying in a second browser context and the
/// shopper seeing it, the console's charts, the one-tag widget on another origin; screenshots of
/// both pages at phone and desktop sizes go to `target/web-e2e/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shopper_and_staff_journey_works_in_a_real_browser() {
    let chromium = std::env::var("CLERK_TEST_CHROMIUM").expect(
        "CLERK_TEST_CHROMIUM is unset: run the tests through scripts/test.sh, which installs \
         Chromium and playwright-core and points this at the browser",
    );
    let s = server("web-browser").await;
    let root = env!("CARGO_MANIFEST_DIR");
    let out = format!("{root}/target/web-e2e");
    let _ = std::fs::remove_dir_all(&out);
    let base = s.base.clone();
    let run = {
        let out = out.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .arg(format!("{root}/tests/web/e2e.mjs"))
                .env("CLERK_BASE", base)
                .env("CLERK_STAFF_KEY", STAFF)
                .env("CLERK_OUT", out)
                .env("CHROMIUM", chromium)
                .output()
                .expect("node runs")
        })
    };
    let output = run.await.unwrap();
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "the browser journey failed:\n{log}"
    );
    // What the browser did is checked in the shop too, not only on screen.
    let order = s
        .shop
        .store()
        .order(&OrderId::parse("#W1000016").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(order.status, OrderStatus::Cancelled, "{log}");
    let handoffs = s
        .shop
        .store()
        .handoffs(None, &clerk::shop::store::Page::first(10))
        .unwrap();
    assert!(
        handoffs
            .iter()
            .any(|h| h.claimed_by.as_deref() == Some("Alex")),
        "{handoffs:?}"
    );
    for shot in [
        "chat-phone.png",
        "chat-desktop.png",
        "console-desktop.png",
        "console-phone.png",
    ] {
        let len = std::fs::metadata(format!("{out}/{shot}")).map_or(0, |m| m.len());
        assert!(len > 10_000, "{shot}: {len} bytes\n{log}");
    }
}
