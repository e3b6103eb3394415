//! `clerk eval intents` and `clerk eval conversations`: the assistant's measured quality.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use crate::assistant::{eval, intent, IntentClassifier, Prompts};
use crate::retrieval::{demo, Knowledge};
use crate::shop::FeedbackClassifier;

use super::knowledge::KnowledgeArgs;

#[derive(Debug, Clone, Args)]
pub struct EvalIntentsArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// The labelled utterances (JSON lines: text, intent, lang).
    #[arg(long, default_value = "tests/data/intent-eval.jsonl")]
    pub set: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn eval_intents(a: EvalIntentsArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let set =
        intent::parse_labelled(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.set.display()))?;
    let classifier = IntentClassifier::new(a.knowledge.load_embedder()?)?;
    let report = intent::evaluate(&classifier, &set)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} utterances: accuracy {:.3}",
        report.examples, report.accuracy
    );
    for (lang, n, acc) in &report.by_language {
        println!("  {lang:<4} {n:>4}  {acc:.3}");
    }
    for (i, n, acc) in &report.by_intent {
        println!("  {:<16} {n:>4}  {acc:.3}", i.as_str());
    }
    for (text, want, got) in &report.misses {
        println!("  miss: {text:?}: {want} → {got}");
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct EvalConversationsArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// A folder of conversation scripts (YAML), or one file.
    #[arg(default_value = "tests/conversations")]
    pub path: PathBuf,
    /// Only conversations whose name contains this.
    #[arg(long)]
    pub only: Option<String>,
    /// Print every conversation's transcript, not only the failures'.
    #[arg(long)]
    pub verbose: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Understand messages by this chat model's tool calls (a GGUF file or a manifest name)
    /// instead of the offline classifier, as `clerk serve --assistant-tool-calls` does.
    #[arg(long)]
    pub tool_model: Option<String>,
}

/// Builds what every scripted conversation shares: the demo knowledge base (ingested once into
/// `DATA_DIR/eval/assistant`), the classifiers and the phrases.
pub fn fixture(k: &KnowledgeArgs) -> anyhow::Result<eval::Fixture> {
    let embedder = k.load_embedder()?;
    let dir = k.data_dir.join("eval").join("assistant");
    let knowledge = Knowledge::open(&dir.join("knowledge"), embedder.clone(), k.answer_threshold)?;
    let inputs = demo::inputs();
    knowledge.ingest(inputs.clone())?;
    Ok(eval::Fixture {
        knowledge,
        intents: Arc::new(IntentClassifier::new(embedder.clone())?),
        feedback: Arc::new(FeedbackClassifier::new(embedder)?),
        prompts: Arc::new(Prompts::builtin()?),
        scratch: dir.join("shops"),
        documents_text: eval::documents_text(&inputs),
        tool_model: None,
    })
}

pub fn eval_conversations(a: EvalConversationsArgs) -> anyhow::Result<()> {
    let mut scripts = eval::load(&a.path)?;
    if let Some(only) = &a.only {
        scripts.retain(|(_, s)| s.name.contains(only.as_str()));
    }
    let mut fixture = fixture(&a.knowledge)?;
    if let Some(spec) = &a.tool_model {
        let dir = a
            .knowledge
            .models_dir
            .clone()
            .unwrap_or_else(crate::engine::registry::default_models_dir);
        let resolved = crate::engine::registry::resolve_model(spec, &dir)?;
        let mut cfg = crate::engine::EngineConfig::new(resolved.path);
        cfg.model_name = resolved.name;
        cfg.chat_template = resolved.chat_template;
        fixture.tool_model = Some(crate::engine::Engine::load(cfg)?);
    }
    let report = eval::run(&fixture, &scripts)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    for r in &report.results {
        if !r.passed || a.verbose {
            println!(
                "{} {} ({}, {})",
                if r.passed { "PASS" } else { "FAIL" },
                r.name,
                r.file,
                r.lang
            );
            for f in &r.failures {
                println!("    ✗ {f}");
            }
            for (who, text) in &r.transcript {
                println!("    {who:>5}: {}", text.replace('\n', " ⏎ "));
            }
        }
    }
    println!(
        "{}/{} conversations passed ({:.1}%), {} turns, {} replies with a fact not in the shop's data",
        report.passed,
        report.conversations,
        report.pass_rate * 100.0,
        report.turns,
        report.wrong_facts
    );
    for (lang, (passed, total)) in &report.by_language {
        println!("  {lang}: {passed}/{total}");
    }
    println!(
        "  assistant turn: p50 {:.1} ms, p90 {:.1} ms",
        report.turn_ms_p50, report.turn_ms_p90
    );
    Ok(())
}

/// Opens (and on first run fills with the demo shop) the data folder's shop and knowledge base,
/// and makes the assistant over them, as `clerk serve` does.
pub fn open_assistant(
    data_dir: &std::path::Path,
    data_key: &crate::shop::KeySource,
    embedder: Arc<crate::engine::Embedder>,
    answer_threshold: f32,
    shop_name: &str,
) -> anyhow::Result<crate::assistant::Assistant> {
    let shop = crate::server::ShopConfig {
        data_dir: data_dir.to_path_buf(),
        name: shop_name.to_string(),
        policy: crate::shop::Policy::default(),
        seed_demo: true,
        retention_days: None,
        audit_retention_days: None,
        data_key: data_key.clone(),
        assistant_tool_calls: false,
    }
    .open()?;
    shop.set_classifier(Arc::new(FeedbackClassifier::new(embedder.clone())?));
    let knowledge = crate::server::KnowledgeConfig {
        data_dir: data_dir.to_path_buf(),
        answer_threshold,
        seed_demo: true,
    }
    .open(embedder.clone())?;
    Ok(crate::assistant::Assistant::new(
        shop,
        knowledge,
        Arc::new(IntentClassifier::new(embedder)?),
        Arc::new(Prompts::builtin()?),
        shop_name,
    ))
}

/// The assistant over `data_dir` with the default embedder and threshold, for the commands that
/// run it without a server (`clerk chat`, `clerk bench --assistant`).
pub fn open_default(
    models_dir: Option<&std::path::Path>,
    data_dir: &std::path::Path,
    data_key: &crate::shop::KeySource,
) -> anyhow::Result<crate::assistant::Assistant> {
    let models = models_dir.map_or_else(crate::engine::registry::default_models_dir, |p| {
        p.to_path_buf()
    });
    let (name, dir) = crate::engine::registry::resolve_embedder(
        crate::engine::registry::DEFAULT_EMBEDDER,
        &models,
    )?;
    let embedder = Arc::new(crate::engine::Embedder::load(&dir, &name)?);
    open_assistant(
        data_dir,
        data_key,
        embedder,
        crate::retrieval::DEFAULT_ANSWER_THRESHOLD,
        "Harbor & Pine",
    )
}

/// `clerk chat` without `--model`: the assistant in the terminal.
pub fn chat(assistant: crate::assistant::Assistant) -> anyhow::Result<()> {
    use std::io::Write;
    let conversation = crate::assistant::Assistant::new_conversation_id();
    eprintln!("clerk chat with the shop assistant (empty line or Ctrl-D to quit)");
    let mut out = std::io::stdout();
    while let Some(line) = super::chat::next_line(&mut out)? {
        let reply = assistant.turn(Some(&conversation), &line)?;
        if reply.silent {
            writeln!(out, "(a member of staff holds this conversation)")?;
        } else {
            writeln!(out, "{}", reply.text)?;
        }
    }
    Ok(())
}

/// Questions a shopper asks of the demo shop's FAQ, for the latency benchmark.
const BENCH_QUESTIONS: &[&str] = &[
    "How long does delivery take?",
    "How much does shipping cost?",
    "Do you ship to Canada?",
    "Will I have to pay customs duties?",
    "How long do I have to return an item?",
    "When will I get my refund?",
    "Can I exchange an item for a different size?",
    "My item arrived damaged, what should I do?",
    "What does the warranty cover?",
    "Which payment methods do you accept?",
    "Do gift cards expire?",
    "Why isn't my discount code working?",
    "Do you price match?",
    "How do I find the right size?",
    "How do I wash my merino top?",
    "What are your support hours?",
    "How much is the Ridgeline Rain Jacket?",
    "¿Hacen envíos internacionales?",
    "如何申请退货？",
    "Is the Cove 2 tent in stock?",
];

#[derive(Debug, serde::Serialize)]
pub struct AssistantBench {
    pub questions: usize,
    pub repetitions: usize,
    /// Request sent to first content chunk of the SSE stream, over loopback HTTP.
    pub ttft_ms_p50: f64,
    pub ttft_ms_p90: f64,
    /// Request sent to `[DONE]`.
    pub answer_ms_p50: f64,
    pub answer_ms_p90: f64,
}

/// Streams every question to a real server on a loopback port as an OpenAI client would and
/// times the first content chunk and the end of the answer.
pub fn bench(
    assistant: crate::assistant::Assistant,
    repetitions: usize,
) -> anyhow::Result<AssistantBench> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let (state, _stop) = crate::server::AppState::new(crate::server::ServerConfig::default(), false);
        state.set_shop(assistant.shop().clone());
        state.set_assistant(assistant);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, crate::server::app(state)).await });
        let mut ttft = Vec::new();
        let mut whole = Vec::new();
        for _ in 0..repetitions {
            for q in BENCH_QUESTIONS {
                let body = serde_json::json!({
                    "model": "clerk", "stream": true,
                    "messages": [{ "role": "user", "content": q }],
                })
                .to_string();
                let request = format!(
                    "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let started = std::time::Instant::now();
                let mut stream = tokio::net::TcpStream::connect(addr).await?;
                stream.write_all(request.as_bytes()).await?;
                let mut seen = Vec::new();
                let mut buf = [0u8; 8192];
                let mut first = None;
                loop {
                    let n = stream.read(&mut buf).await?;
                    if n == 0 {
                        break;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&seen);
                    if first.is_none() && text.contains("\"content\":\"") && text.matches("data: ").count() >= 2 {
                        first = Some(started.elapsed());
                    }
                    if text.contains("data: [DONE]") {
                        break;
                    }
                }
                let text = String::from_utf8_lossy(&seen);
                anyhow::ensure!(text.starts_with("HTTP/1.1 200"), "the server answered: {text}");
                ttft.push(first.unwrap_or_else(|| started.elapsed()).as_secs_f64() * 1000.0);
                whole.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        let pct = |v: &mut Vec<f64>, p: f64| {
            v.sort_by(f64::total_cmp);
            v[((v.len() - 1) as f64 * p).round() as usize]
        };
        Ok(AssistantBench {
            questions: BENCH_QUESTIONS.len(),
            repetitions,
            ttft_ms_p50: pct(&mut ttft, 0.5),
            ttft_ms_p90: pct(&mut ttft, 0.9),
            answer_ms_p50: pct(&mut whole, 0.5),
            answer_ms_p90: pct(&mut whole, 0.9),
        })
    })
}
