//! `clerk import` (a shop's customers, products and orders into the shop database) and
//! `clerk eval feedback` (the feedback classifier's accuracy on a labelled set).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::knowledge::KnowledgeArgs;
use crate::shop::care::{evaluate, parse_labelled};
use crate::shop::{Channel, Ctx, FeedbackClassifier, Policy, Shop};

#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// tau2 retail `db.json` files, customers or orders CSV exports, or folders of them. All of
    /// them go in as one transaction: one bad record and nothing is imported.
    #[arg(required = true)]
    pub paths: Vec<PathBuf>,
    /// Folder holding clerk's stored data (knowledge base, shop database).
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
}

#[derive(Debug, Clone, Args)]
pub struct PurgeArgs {
    /// Remove conversations idle this many days (with their messages and ratings), older audit
    /// entries and expired tokens; what a person still holds stays.
    #[arg(long = "older-than-days")]
    pub days: u32,
    /// Also remove audit entries older than this many days (kept when unset).
    #[arg(long = "audit-older-than-days")]
    pub audit_days: Option<u32>,
    /// Folder holding clerk's stored data.
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
}

pub fn purge(a: PurgeArgs) -> anyhow::Result<()> {
    let shop = Shop::open_with_key(&a.data_dir, Policy::default(), &a.data_key.source())?;
    let p = shop.purge_older_than(&Ctx::system(Channel::Cli), a.days, a.audit_days)?;
    println!(
        "purged {} conversations ({} messages), {} handoffs, {} audit entries, {} expired tokens",
        p.conversations, p.messages, p.handoffs, p.audit, p.tokens
    );
    Ok(())
}

pub fn import(a: ImportArgs) -> anyhow::Result<()> {
    let shop = Shop::open_with_key(&a.data_dir, Policy::default(), &a.data_key.source())?;
    let paths: Vec<&std::path::Path> = a.paths.iter().map(PathBuf::as_path).collect();
    let counts = shop.import_paths(&Ctx::system(Channel::Cli), &paths)?;
    println!(
        "shop now holds {} customers, {} products ({} variants), {} orders ({} items, {} paid, {} refunded)",
        counts.customers,
        counts.products,
        counts.variants,
        counts.orders,
        counts.order_items,
        counts.paid_total,
        counts.refunded_total
    );
    Ok(())
}

#[derive(Debug, Clone, Args)]
pub struct EvalFeedbackArgs {
    #[command(flatten)]
    pub knowledge: KnowledgeArgs,
    /// The labelled feedback (JSON lines: text, topic, sentiment).
    #[arg(long, default_value = "tests/data/feedback-eval.jsonl")]
    pub set: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn eval_feedback(a: EvalFeedbackArgs) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(&a.set).with_context(|| format!("reading {}", a.set.display()))?;
    let set = parse_labelled(&text).map_err(|e| anyhow::anyhow!("{}: {e}", a.set.display()))?;
    let classifier = FeedbackClassifier::new(Arc::clone(&a.knowledge.load_embedder()?))?;
    let report = evaluate(&classifier, &set)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "{} examples: topic accuracy {:.3}, sentiment accuracy {:.3}",
        report.examples, report.topic_accuracy, report.sentiment_accuracy
    );
    for (topic, (right, total)) in &report.per_topic {
        println!("  {topic:<16} {right}/{total}");
    }
    Ok(())
}
