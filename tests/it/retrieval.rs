//! The knowledge base end to end with the real embedder: ingest the demo shop and the tau2
//! catalogue, search with filters, re-ingest, delete, refuse bad batches whole, survive a killed
//! ingest, meet the quality targets on the labeled set, and the HTTP routes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clerk::retrieval::{
    self, eval, Kind, Knowledge, Query, RetrievalError, DEFAULT_ANSWER_THRESHOLD,
};
use clerk::server::{app, AppState, ServerConfig};
use serde_json::{json, Value};

use crate::common::{dataset_dir, scratch_dir, shared_embedder};

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("demo")
}

fn open(data: &Path) -> Knowledge {
    Knowledge::open(data, shared_embedder(), DEFAULT_ANSWER_THRESHOLD)
        .expect("open the knowledge base")
}

fn demo(data: &Path) -> Knowledge {
    let k = open(data);
    k.ingest(retrieval::collect_files(&[demo_dir()], None).unwrap())
        .expect("ingest the demo shop");
    k
}

fn search(k: &Knowledge, q: Query) -> retrieval::SearchResults {
    k.search(&q).expect("search")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

#[test]
fn demo_shop_answers_with_citations_and_filters() {
    let dir = scratch_dir("retrieval-demo");
    let k = demo(&dir);
    assert_eq!(k.documents().len(), 8, "{:?}", k.documents());

    let r = search(&k, Query::new("how long do I have to send boots back?"));
    assert!(r.answerable);
    let top = &r.hits[0];
    assert!(matches!(top.kind, Kind::Policy | Kind::Faq), "{top:?}");
    assert!(top.passage.contains("30 days"), "{top:?}");
    assert!(
        top.source.file.contains("returns") || top.source.file.contains("faq"),
        "{top:?}"
    );
    assert!(
        top.source.line.is_some() && top.source.locator.starts_with("heading: "),
        "{top:?}"
    );

    // Filters hold for every hit, not just the first.
    let mut q = Query::new("warm jacket");
    q.kind = Some(Kind::Product);
    q.in_stock = true;
    q.max_price = Some(150.0);
    q.limit = 10;
    let r = search(&k, q);
    assert!(!r.hits.is_empty());
    for h in &r.hits {
        let p = h.product.as_ref().expect("product facts");
        assert!(
            h.kind == Kind::Product && p.in_stock && p.price_min <= 150.0,
            "{h:?}"
        );
    }
    let mut q = Query::new("something for cooking");
    q.category = Some("kitchen".into());
    q.limit = 10;
    for h in search(&k, q).hits {
        assert_eq!(
            h.product.and_then(|p| p.category).as_deref(),
            Some("Kitchen")
        );
    }
    let mut q = Query::new("camp chair");
    q.in_stock = true;
    assert!(
        search(&k, q)
            .hits
            .iter()
            .all(|h| h.product.as_ref().is_none_or(|p| p.in_stock)),
        "the out-of-stock chair is filtered out"
    );

    // Chinese questions find the Chinese entries: the full-text side splits them into bigrams.
    let r = search(&k, Query::new("怎么申请退货"));
    assert!(
        r.hits[..3].iter().any(|h| h.title.contains("退货")),
        "{:?}",
        r.hits
    );

    let r = search(&k, Query::new("do you sell car tyres and motor oil?"));
    assert!(
        !r.answerable,
        "best similarity {:?}",
        r.hits.first().map(|h| h.similarity)
    );

    assert!(matches!(
        k.search(&Query::new("  ")),
        Err(RetrievalError::InvalidQuery { param: "q", .. })
    ));
}

#[test]
fn reingest_skips_unchanged_replaces_changed_and_deletes() {
    let dir = scratch_dir("retrieval-reingest");
    let src = dir.join("shop");
    copy_dir(&demo_dir(), &src);
    let data = dir.join("data");
    let k = open(&data);
    let first = k
        .ingest(retrieval::collect_files(std::slice::from_ref(&src), None).unwrap())
        .unwrap();
    assert_eq!(first.added.len(), 8);

    let again = k
        .ingest(retrieval::collect_files(std::slice::from_ref(&src), None).unwrap())
        .unwrap();
    assert_eq!(
        (again.unchanged.len(), again.embedded, again.generation),
        (8, 0, first.generation)
    );

    let faq = src.join("faq.md");
    let mut text = std::fs::read_to_string(&faq).unwrap();
    text.push_str("\n## Do you offer engraving on knives?\nYes: up to 12 letters, for 9 USD, added at checkout.\n");
    std::fs::write(&faq, text).unwrap();
    let changed = k
        .ingest(retrieval::collect_files(std::slice::from_ref(&src), None).unwrap())
        .unwrap();
    assert_eq!(changed.replaced, ["faq.md"]);
    assert_eq!(
        changed.embedded, 1,
        "only the new entry is embedded; the rest reuse their vectors"
    );
    let r = search(&k, Query::new("can you engrave my knife?"));
    assert_eq!(r.hits[0].title, "Do you offer engraving on knives?");

    // Another process (here: another handle) sees the same generation.
    let other = open(&data);
    assert_eq!(other.chunk_count(), k.chunk_count());

    k.delete("faq.md").unwrap();
    let mut q = Query::new("engraving");
    q.kind = Some(Kind::Faq);
    assert!(search(&k, q).hits.is_empty());
    assert!(matches!(
        k.delete("faq.md"),
        Err(RetrievalError::NotFound(_))
    ));
    assert!(
        other.refresh().unwrap(),
        "the other handle picks up the new generation"
    );
    assert_eq!(other.documents().len(), 7);
}

#[test]
fn a_bad_file_refuses_the_whole_batch() {
    let dir = scratch_dir("retrieval-bad");
    let k = demo(&dir.join("data"));
    let before = k.documents();
    let good = dir.join("more.csv");
    std::fs::write(&good, "name,price\nEnamel Mug,14\n").unwrap();
    let bad = dir.join("broken.csv");
    std::fs::write(
        &bad,
        "id,name,price,stock\nx1,Lantern,20,3\nx2,Stove,cheap,1\n",
    )
    .unwrap();
    let err = k
        .ingest(retrieval::collect_files(&[good, bad], None).unwrap())
        .unwrap_err();
    let RetrievalError::Parse(errors) = &err else {
        panic!("{err}")
    };
    assert_eq!(errors.len(), 1);
    assert!(errors[0].file.ends_with("broken.csv"));
    assert_eq!(
        (errors[0].line, errors[0].field.as_deref()),
        (Some(3), Some("price")),
        "{err}"
    );
    assert_eq!(
        k.documents().len(),
        before.len(),
        "the good file did not land either"
    );
}

#[test]
fn a_killed_ingest_leaves_the_previous_index_queryable() {
    let dir = scratch_dir("retrieval-kill");
    let data = dir.join("data");
    drop(demo(&data));
    // A large catalogue keeps the child busy embedding long enough to be killed mid-way; a
    // leftover half-written generation from an earlier crash sits beside it.
    let big = dir.join("big.jsonl");
    let lines: Vec<String> = (0..4000)
        .map(|i| json!({"id": format!("b{i}"), "name": format!("Bulk item {i}"), "price": i % 90, "description": "A plain item."}).to_string())
        .collect();
    std::fs::write(&big, lines.join("\n")).unwrap();
    let knowledge = data.join("knowledge");
    std::fs::create_dir_all(knowledge.join("gen-9.tmp")).unwrap();
    std::fs::write(knowledge.join("gen-9.tmp/chunks.json"), "[{\"id\": ").unwrap();
    std::fs::write(knowledge.join("CURRENT.tmp"), "gen-9").unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_clerk"))
        .args(["ingest", "--data-dir"])
        .arg(&data)
        .arg(&big)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the ingest finished before it could be killed"
    );
    child.kill().unwrap();
    child.wait().unwrap();

    let k = open(&data);
    assert_eq!(
        k.documents().len(),
        8,
        "the demo shop is still the live generation"
    );
    assert!(search(&k, Query::new("return window")).answerable);
    // The next writer sweeps the leftovers.
    std::fs::write(dir.join("note.md"), "# Note\nOpen on Sundays.\n").unwrap();
    k.ingest(retrieval::collect_files(&[dir.join("note.md")], None).unwrap())
        .unwrap();
    assert!(!knowledge.join("gen-9.tmp").exists());
    // A generation finished but never made current (a writer stopped between its rename and
    // CURRENT's) doesn't block the next writer, which takes its number; it used to fail every
    // ingest from then on.
    let n = live_generation(&knowledge);
    let next = knowledge.join(format!("gen-{}", n + 1));
    std::fs::create_dir_all(&next).unwrap();
    std::fs::write(next.join("junk"), "x").unwrap();
    std::fs::write(dir.join("hours.md"), "# Hours\nOpen on Mondays too.\n").unwrap();
    k.ingest(retrieval::collect_files(&[dir.join("hours.md")], None).unwrap())
        .unwrap();
    let now = std::fs::read_to_string(knowledge.join("CURRENT")).unwrap();
    assert_eq!(now.trim(), format!("gen-{}", n + 1));
    assert!(!next.join("junk").exists());
    assert!(search(&k, Query::new("open on mondays")).answerable);
}

#[test]
fn retrieval_meets_the_quality_targets_on_the_labeled_set() {
    let set = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/retrieval-eval.jsonl"),
    )
    .unwrap();
    let cases = eval::parse_cases(&set).unwrap();
    assert!(cases.len() >= 150);
    let dir = scratch_dir("retrieval-eval");
    let mut shops = BTreeMap::new();
    shops.insert("demo".to_string(), demo(&dir.join("demo")));
    let tau2 = open(&dir.join("tau2"));
    tau2.ingest(
        retrieval::collect_files(&[dataset_dir("tau2-retail").join("db.json")], None).unwrap(),
    )
    .unwrap();
    assert_eq!(tau2.chunk_count(), 50);
    shops.insert("tau2".to_string(), tau2);
    let report = eval::run(&shops, &cases, DEFAULT_ANSWER_THRESHOLD).unwrap();
    let hybrid = report
        .modes
        .iter()
        .find(|m| m.mode == retrieval::Mode::Hybrid)
        .unwrap();
    assert!(hybrid.overall.recall_at_5 >= 0.95, "{:?}", hybrid);
    assert!(hybrid.overall.recall_at_1 >= 0.80, "{:?}", hybrid);
    for m in &report.modes {
        if m.mode != retrieval::Mode::Hybrid {
            assert!(
                m.overall.recall_at_5 <= hybrid.overall.recall_at_5 + 0.02,
                "hybrid is not worse than {:?}",
                m.mode
            );
        }
    }
    assert!(report.accuracy_at_threshold >= 0.9, "{report:?}");
    assert!(
        report.unanswerable_caught * 2 >= report.unanswerable,
        "{report:?}"
    );
}

async fn send(
    base: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new().request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let res = req.send().await.unwrap();
    (
        res.status().as_u16(),
        res.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn knowledge_routes_search_add_list_and_delete() {
    let dir = scratch_dir("retrieval-http");
    let data = dir.clone();
    let k = tokio::task::spawn_blocking(move || demo(&data))
        .await
        .unwrap();
    let (state, _stop) = AppState::new(ServerConfig::default(), true);
    state.set_knowledge(k);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app(state)).await });
    use reqwest::Method;

    let (s, b) = send(
        &base,
        Method::GET,
        "/v1/knowledge/search?q=free%20shipping%20threshold&limit=3",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["data"].as_array().unwrap().len(), 3);
    assert!(
        b["data"][0]["passage"].as_str().unwrap().contains("75"),
        "{b}"
    );
    for field in [
        "chunk_id",
        "document_id",
        "kind",
        "title",
        "source",
        "score",
    ] {
        assert!(!b["data"][0][field].is_null(), "{field} missing: {b}");
    }
    let (s, b) = send(
        &base,
        Method::GET,
        "/v1/knowledge/search?q=tent&kind=product&in_stock=true&max_price=300",
        None,
    )
    .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["kind"] == "product" && h["product"]["in_stock"] == true));

    for (path, param) in [
        ("/v1/knowledge/search", "q"),
        ("/v1/knowledge/search?q=x&kind=gadget", "kind"),
        ("/v1/knowledge/search?q=x&limit=0", "limit"),
        (
            "/v1/knowledge/search?q=x&min_price=9&max_price=3",
            "min_price",
        ),
        ("/v1/knowledge/search?q=x&min_price=cheap", "min_price"),
    ] {
        let (s, b) = send(&base, Method::GET, path, None).await;
        assert_eq!(
            (s, b["error"]["param"].as_str()),
            (400, Some(param)),
            "{path}: {b}"
        );
    }

    let doc = json!({"documents": [{"name": "hours.md", "content": "# Store hours\n## When is the shop open?\nEvery day from 9 to 5.\n"}]});
    let (s, b) = send(
        &base,
        Method::POST,
        "/v1/knowledge/documents",
        Some(doc.clone()),
    )
    .await;
    assert_eq!((s, &b["added"]), (200, &json!(["hours.md"])), "{b}");
    let (_, b) = send(&base, Method::POST, "/v1/knowledge/documents", Some(doc)).await;
    assert_eq!(b["unchanged"], json!(["hours.md"]));
    let (_, b) = send(&base, Method::GET, "/v1/knowledge/documents", None).await;
    assert_eq!(b["documents"], 9);

    let bad = json!({"name": "p.csv", "content": "name,price\nMug,abc\n"});
    let (s, b) = send(&base, Method::POST, "/v1/knowledge/documents", Some(bad)).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_document")),
        "{b}"
    );
    assert!(
        b["error"]["message"].as_str().unwrap().contains("line 2"),
        "{b}"
    );
    let (s, b) = send(
        &base,
        Method::POST,
        "/v1/knowledge/documents",
        Some(json!({"name": 3})),
    )
    .await;
    assert_eq!(s, 400, "{b}");

    let (s, _) = send(
        &base,
        Method::DELETE,
        "/v1/knowledge/documents/hours.md",
        None,
    )
    .await;
    assert_eq!(s, 200);
    let (s, b) = send(
        &base,
        Method::DELETE,
        "/v1/knowledge/documents/policies/returns.md",
        None,
    )
    .await;
    assert_eq!(s, 200, "ids with slashes: {b}");
    let (s, b) = send(
        &base,
        Method::DELETE,
        "/v1/knowledge/documents/hours.md",
        None,
    )
    .await;
    assert_eq!((s, b["error"]["code"].as_str()), (404, Some("not_found")));
}

#[test]
fn a_texts_vector_is_the_same_alone_and_in_a_large_batch() {
    // Alone, a short text runs on both cores split by output rows; in a batch of more than
    // 2,048 tokens, batches run on separate threads without the split. Neither pads.
    let e = shared_embedder();
    let text = "Do the hiking boots come in wide sizes?";
    let alone = e.embed(&[text]).unwrap().remove(0);
    let filler: Vec<String> = (0..120)
        .map(|i| {
            format!(
                "Filler sentence number {i} about tents, stoves, kettles and the returns policy."
            )
        })
        .collect();
    let mut batch: Vec<&str> = filler.iter().map(String::as_str).collect();
    batch.insert(77, text);
    let tokens: usize = batch.iter().map(|t| e.tokenize(t).unwrap().len()).sum();
    assert!(
        tokens > 2048,
        "the batch must span several internal batches ({tokens} tokens)"
    );
    let all = e.embed(&batch).unwrap();
    assert_eq!(all[77], alone, "bit-identical alone and batched");
    let norm: f32 = alone.iter().map(|v| v * v).sum();
    assert!((norm - 1.0).abs() < 1e-5);
}

#[test]
fn a_single_text_is_encoded_once_while_it_is_recent() {
    // Its own embedder: the shared one's pass count moves with every other test.
    let name = clerk::engine::registry::DEFAULT_EMBEDDER;
    let e = clerk::engine::Embedder::load(&crate::common::embedder_dir(name), name).unwrap();
    let text = "Do you sell tents?";
    let first = e.embed(&[text]).unwrap();
    assert_eq!(e.passes(), 1);
    // Again, and through the token ids as the search does: no pass, the same vector.
    assert_eq!(e.embed(&[text]).unwrap(), first);
    let ids = e.tokenize(text).unwrap();
    assert_eq!(e.embed_ids(&[ids]).unwrap(), first);
    assert_eq!(e.passes(), 1);
    // A batch is not remembered and doesn't use the memo.
    e.embed(&[text, "Where is my order?"]).unwrap();
    assert_eq!(e.passes(), 2);
    // Eight other single texts push it out.
    for i in 0..8 {
        e.embed(&[&format!("Question number {i}")]).unwrap();
    }
    assert_eq!(e.passes(), 10);
    assert_eq!(
        e.embed(&[text]).unwrap(),
        first,
        "recomputed, the same bits"
    );
    assert_eq!(e.passes(), 11);
}

/// A generation another process embedded with another model (say `clerk documents --embedder X`
/// beside the server) is not searched with this process's queries: the refresh keeps the previous
/// generation and says why. Before, the vectors of two models were compared without a word.
#[test]
fn a_generation_from_another_embedder_is_not_searched_with_this_ones_queries() {
    let dir = scratch_dir("retrieval-other-embedder");
    let k = demo(&dir);
    let knowledge = dir.join("knowledge");
    let n = live_generation(&knowledge);
    // A copy of the live generation, relabelled as another model's.
    let (from, to) = (
        knowledge.join(format!("gen-{n}")),
        knowledge.join(format!("gen-{}", n + 1)),
    );
    std::fs::create_dir_all(&to).unwrap();
    for entry in walk(&from) {
        let rel = entry.strip_prefix(&from).unwrap();
        std::fs::create_dir_all(to.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(&entry, to.join(rel)).unwrap();
    }
    let mut meta: Value =
        serde_json::from_str(&std::fs::read_to_string(to.join("meta.json")).unwrap()).unwrap();
    meta["generation"] = json!(n + 1);
    meta["embedder"] = json!("some-other-model");
    std::fs::write(to.join("meta.json"), meta.to_string()).unwrap();
    std::fs::write(knowledge.join("CURRENT"), format!("gen-{}", n + 1)).unwrap();

    let err = k.refresh().unwrap_err().to_string();
    assert!(err.contains("some-other-model"), "{err}");
    assert!(search(&k, Query::new("return window")).answerable);
    // Writing here re-embeds it with this process's model, which then serves it.
    std::fs::write(dir.join("hours.md"), "# Hours\nOpen on Mondays too.\n").unwrap();
    k.ingest(retrieval::collect_files(&[dir.join("hours.md")], None).unwrap())
        .unwrap();
    assert!(!k.refresh().unwrap());
    assert!(search(&k, Query::new("open on mondays")).answerable);
}

/// The generation `CURRENT` names in a knowledge folder.
fn live_generation(knowledge: &Path) -> u64 {
    let current = std::fs::read_to_string(knowledge.join("CURRENT")).unwrap();
    current
        .trim()
        .strip_prefix("gen-")
        .unwrap()
        .parse()
        .unwrap()
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
