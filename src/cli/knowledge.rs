//! `clerk ingest`, `clerk search`, `clerk documents` and `clerk eval retrieval`: the knowledge base
//! from the command line.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};

use crate::engine::registry::{default_models_dir, resolve_embedder, DEFAULT_EMBEDDER};
use crate::engine::Embedder;
use crate::retrieval::{self, eval, Format, Kind, Knowledge, Mode, Query};

/// Where the knowledge base lives and what embeds it; shared by every command that opens it.
#[derive(Debug, Clone, Args)]
pub struct KnowledgeArgs {
    /// Folder holding clerk's stored data (knowledge base, shop database).
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
    /// Sentence embedder for the knowledge base: a folder (config.json, tokenizer.json,
    /// model.safetensors), an embedder manifest name, or a hub `owner/repo` (a sentence-transformers
    /// repository, fetched into the hub cache).
    #[arg(long, env = "CLERK_EMBEDDER", default_value = DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// Folder of model manifests and weights.
    #[arg(long, env = "CLERK_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Best-passage similarity under which a question counts as unanswerable from the shop's data.
    #[arg(long, env = "CLERK_ANSWER_THRESHOLD", default_value_t = retrieval::DEFAULT_ANSWER_THRESHOLD)]
    pub answer_threshold: f32,
}

impl KnowledgeArgs {
    pub fn load_embedder(&self) -> anyhow::Result<Arc<Embedder>> {
        let models = self.models_dir.clone().unwrap_or_else(default_models_dir);
        let (name, dir) = resolve_embedder(&self.embedder, &models)?;
        Ok(Arc::new(Embedder::load(&dir, &name)?))
    }

    pub fn open(&self) -> anyhow::Result<Knowledge> {
        self.open_at(&self.data_dir)
    }

    fn open_at(&self, data_dir: &std::path::Path) -> anyhow::Result<Knowledge> {
        Ok(Knowledge::open(
            data_dir,
            self.load_embedder()?,
            self.answer_threshold,
        )?)
    }
}

#[derive(Debug, Clone, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Files or folders (walked recursively) of products (CSV, JSON, JSONL, tau2 db.json), FAQ
    /// (Markdown, CSV, JSON) and pages (Markdown, text, HTML).
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Treat every file as this kind (product, faq, policy) instead of telling from its content.
    #[arg(long)]
    pub kind: Option<Kind>,
    /// Read every file as this format instead of telling from its extension.
    #[arg(long)]
    pub format: Option<Format>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn ingest(a: IngestArgs) -> anyhow::Result<()> {
    let k = a.knowledge.open()?;
    let mut inputs = retrieval::collect_files(&a.paths, a.kind)?;
    if inputs.is_empty() {
        anyhow::bail!("no files clerk can read under {:?}", a.paths);
    }
    for i in &mut inputs {
        i.format = a.format.or(i.format);
    }
    let start = std::time::Instant::now();
    let report = k.ingest(inputs)?;
    let secs = start.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{} added, {} replaced, {} unchanged; {} chunks ({} embedded) in {:.1} s; generation {}",
            report.added.len(),
            report.replaced.len(),
            report.unchanged.len(),
            report.chunks,
            report.embedded,
            secs,
            report.generation
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct SearchArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    pub query: String,
    /// Only this kind: product, faq or policy.
    #[arg(long)]
    pub kind: Option<Kind>,
    #[arg(long, default_value_t = 5)]
    pub limit: usize,
    /// Only products in stock.
    #[arg(long)]
    pub in_stock: bool,
    #[arg(long)]
    pub category: Option<String>,
    #[arg(long)]
    pub min_price: Option<f64>,
    #[arg(long)]
    pub max_price: Option<f64>,
    /// hybrid (rank fusion), blend (score blend), bm25 or vector.
    #[arg(long, default_value = "hybrid")]
    pub mode: Mode,
    /// Print the results as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn search(a: SearchArgs) -> anyhow::Result<()> {
    let k = a.knowledge.open()?;
    let q = Query {
        text: a.query,
        limit: a.limit,
        kind: a.kind,
        category: a.category,
        in_stock: a.in_stock,
        min_price: a.min_price,
        max_price: a.max_price,
        mode: a.mode,
    };
    let r = k.search(&q)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    if r.hits.is_empty() {
        println!("no results");
    }
    for (n, h) in r.hits.iter().enumerate() {
        let mut where_ = format!("{} ({})", h.source.file, h.source.locator);
        if let Some(p) = &h.product {
            where_ = format!(
                "{where_}; {:.2}{} {}",
                p.price_min,
                if p.price_max > p.price_min {
                    format!("–{:.2}", p.price_max)
                } else {
                    String::new()
                },
                if p.in_stock {
                    "in stock"
                } else {
                    "out of stock"
                }
            );
        }
        let passage: String = h.passage.chars().take(160).collect();
        println!(
            "{}. [{}] {}  (score {:.4}, similarity {:.2})\n   {}\n   {}",
            n + 1,
            h.kind,
            h.title,
            h.score,
            h.similarity,
            where_,
            passage.replace('\n', " ")
        );
    }
    if !r.answerable {
        println!(
            "(no passage is close enough to answer this; best similarity under {:.2})",
            r.threshold
        );
    }
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct DocumentsArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// Delete this document (by id) instead of listing.
    #[arg(long)]
    pub delete: Option<String>,
}

pub fn documents(a: DocumentsArgs) -> anyhow::Result<()> {
    let k = a.knowledge.open()?;
    if let Some(id) = a.delete {
        k.delete(&id)?;
        println!("deleted {id}");
        return Ok(());
    }
    let docs = k.documents();
    for d in &docs {
        let kinds: Vec<&str> = d.kinds.iter().map(|k| k.as_str()).collect();
        println!(
            "{:<40} {:>5} chunks  {:<16} {}",
            d.id,
            d.chunks,
            kinds.join(","),
            d.source
        );
    }
    println!("{} documents, {} chunks", docs.len(), k.chunk_count());
    Ok(())
}

#[derive(Debug, Clone, Subcommand)]
pub enum EvalCommand {
    /// Recall@1, recall@5 and MRR of BM25, vectors and hybrid search on a labeled question set,
    /// and the calibrated no-answer threshold.
    Retrieval(EvalRetrievalArgs),
    /// Topic and sentiment accuracy of the offline feedback classifier on a labelled set.
    Feedback(super::shop::EvalFeedbackArgs),
    /// Accuracy of the assistant's offline intent classifier on a labelled set.
    Intents(super::assistant::EvalIntentsArgs),
    /// Replays scripted conversations (YAML) against the assistant on a fresh demo shop each.
    Conversations(super::assistant::EvalConversationsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct EvalRetrievalArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// The labeled questions (JSON lines: shop, type, q, expect).
    #[arg(long, default_value = "tests/data/retrieval-eval.jsonl")]
    pub set: PathBuf,
    /// Sources of each shop the set names, as NAME=PATH (repeatable). Each shop is ingested into
    /// its own knowledge base under --data-dir/eval/NAME.
    #[arg(long = "shop", default_values_t = ["demo=demo".to_string(), "tau2=models/tau2-retail/db.json".to_string()])]
    pub shops: Vec<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn eval(cmd: EvalCommand) -> anyhow::Result<()> {
    let a = match cmd {
        EvalCommand::Retrieval(a) => a,
        EvalCommand::Feedback(a) => return super::shop::eval_feedback(a),
        EvalCommand::Intents(a) => return super::assistant::eval_intents(a),
        EvalCommand::Conversations(a) => return super::assistant::eval_conversations(a),
    };
    let text =
        std::fs::read_to_string(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let cases =
        eval::parse_cases(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.set.display()))?;
    let embedder = a.knowledge.load_embedder()?;
    let mut shops = BTreeMap::new();
    for spec in &a.shops {
        let (name, path) = spec
            .split_once('=')
            .with_context(|| format!("--shop {spec}: expected NAME=PATH"))?;
        let dir = a.knowledge.data_dir.join("eval").join(name);
        let k = Knowledge::open(&dir, embedder.clone(), a.knowledge.answer_threshold)?;
        let inputs = retrieval::collect_files(&[PathBuf::from(path)], None)?;
        k.ingest(inputs)?;
        shops.insert(name.to_string(), k);
    }
    let skipped = cases
        .iter()
        .filter(|c| !shops.contains_key(&c.shop))
        .count();
    let report = eval::run(&shops, &cases, a.knowledge.answer_threshold)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} questions ({} skipped: their shop was not given), {} without an answer",
        cases.len() - skipped,
        skipped,
        report.unanswerable
    );
    println!(
        "{:<8} {:>9} {:>9} {:>7}   by type (recall@1 / recall@5)",
        "mode", "recall@1", "recall@5", "MRR"
    );
    for m in &report.modes {
        let types: Vec<String> = m
            .by_type
            .iter()
            .map(|(t, s)| format!("{t} {:.2}/{:.2}", s.recall_at_1, s.recall_at_5))
            .collect();
        println!(
            "{:<8} {:>9.3} {:>9.3} {:>7.3}   {}",
            format!("{:?}", m.mode).to_lowercase(),
            m.overall.recall_at_1,
            m.overall.recall_at_5,
            m.overall.mrr,
            types.join(", ")
        );
        if matches!(m.mode, Mode::Hybrid | Mode::Blend) && !m.misses_at_5.is_empty() {
            println!("         not in the top 5: {:?}", m.misses_at_5);
        }
    }
    println!(
        "answerability: threshold {:.2} classifies {:.1}% right ({}/{} unanswerable caught, {} answerable refused); best threshold on this set {:.2} ({:.1}%)",
        report.threshold,
        report.accuracy_at_threshold * 100.0,
        report.unanswerable_caught,
        report.unanswerable,
        report.answerable_refused,
        report.calibrated_threshold,
        report.calibrated_accuracy * 100.0
    );
    println!(
        "mean hybrid search time {:.2} ms (query embedding included)",
        report.mean_search_ms
    );
    Ok(())
}
