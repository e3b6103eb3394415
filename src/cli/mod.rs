//! Subcommands of the `clerk` binary, one file each. `main.rs` parses and calls [`run`].

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::engine::registry::{default_models_dir, resolve_model, DEFAULT_MODEL};
use crate::engine::{Device, Engine, EngineConfig, SamplingParams};

pub mod assistant;
pub mod backup;
pub mod bench;
pub mod chat;
pub mod data_key;
pub mod generate;
pub mod keys;
pub mod knowledge;
pub mod serve;
pub mod shop;
pub mod tokenize;

#[derive(Debug, Parser)]
#[command(
    name = "clerk",
    version,
    about = "A self-hosted AI customer-service engine for online shops"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate text from a prompt with a raw model, streaming to stdout.
    Generate(generate::GenerateArgs),
    /// Chat with a raw model in the terminal.
    Chat(chat::ChatArgs),
    /// Measure load time, prompt and decode speed, time to first token, memory and batching.
    Bench(bench::BenchArgs),
    /// Serve the OpenAI-compatible HTTP API.
    Serve(serve::ServeArgs),
    /// Print the token ids a model's tokenizer gives a text.
    Tokenize(tokenize::TokenizeArgs),
    /// Add or update products, FAQ and policy pages in the knowledge base.
    Ingest(knowledge::IngestArgs),
    /// Search the knowledge base the way the assistant does.
    Search(knowledge::SearchArgs),
    /// List the documents in the knowledge base, or delete one.
    Documents(knowledge::DocumentsArgs),
    /// Import a shop's customers, products and orders (tau2 db.json, CSV exports).
    Import(shop::ImportArgs),
    /// Retention: remove old conversations, audit entries and expired tokens now.
    Purge(shop::PurgeArgs),
    /// Make, list and revoke API keys (stored hashed, with a scope and a rate limit).
    Keys(keys::KeysArgs),
    /// Make a data key, or rotate the one the shop's personal fields are sealed with.
    #[command(subcommand)]
    DataKey(data_key::DataKeyCommand),
    /// Copy a data folder (shop database, keys, knowledge base) consistently, while serving.
    Backup(backup::BackupArgs),
    /// Bring a backup back into a new data folder, after checking every file.
    Restore(backup::RestoreArgs),
    /// Measure quality on labeled data.
    #[command(subcommand)]
    Eval(knowledge::EvalCommand),
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLERK_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Settings that must be made while the process has one thread, before [`run`] starts any other.
pub fn prepare(cli: &Cli) {
    let model = match &cli.command {
        Command::Generate(a) => &a.model,
        Command::Chat(a) => &a.model,
        Command::Bench(a) => &a.model,
        Command::Serve(a) => &a.model,
        _ => return,
    };
    if model.device == Device::CandleCpu {
        let threads = model
            .threads
            .unwrap_or_else(crate::engine::scheduler::default_threads);
        // SAFETY: called from `main` before anything has started a thread.
        unsafe { crate::engine::scheduler::size_candle_cpu_threads(threads) };
    }
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Generate(a) => generate::run(a),
        Command::Chat(a) => chat::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Tokenize(a) => tokenize::run(a),
        Command::Ingest(a) => knowledge::ingest(a),
        Command::Search(a) => knowledge::search(a),
        Command::Documents(a) => knowledge::documents(a),
        Command::Eval(c) => knowledge::eval(c),
        Command::Import(a) => shop::import(a),
        Command::Purge(a) => shop::purge(a),
        Command::Keys(a) => keys::run(a),
        Command::DataKey(c) => data_key::run(c),
        Command::Backup(a) => backup::backup(a),
        Command::Restore(a) => backup::restore(a),
    }
}

/// Which model to load and how to run it; shared by every subcommand that loads one.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// The model: a GGUF file, a manifest name from models/ (smollm2-135m-instruct, gemma3-270m), or a
    /// Hugging Face `owner/repo:file.gguf` (downloaded once into the hub cache, $HF_HOME; HF_TOKEN,
    /// HF_ENDPOINT and HF_HUB_OFFLINE are honoured).
    #[arg(long, env = "CLERK_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Folder of model manifests and weights.
    #[arg(long, env = "CLERK_MODELS_DIR")]
    pub models_dir: Option<PathBuf>,
    /// Where the model runs: cpu (clerk's own kernels), cuda, cuda:N or metal (builds with the `cuda` or
    /// `metal` feature), or candle-cpu (the GPU builds' tensor forward on the CPU, for comparison).
    #[arg(long, env = "CLERK_DEVICE", default_value = "cpu")]
    pub device: Device,
    /// CPU threads for the forward (default: all cores).
    #[arg(long, env = "CLERK_THREADS")]
    pub threads: Option<usize>,
    /// Cap on the context length in tokens (default: the model's own).
    #[arg(long, env = "CLERK_CTX_SIZE")]
    pub ctx_size: Option<usize>,
    /// Sequences decoded together at most.
    #[arg(long, env = "CLERK_MAX_BATCH", default_value_t = 16)]
    pub max_batch: usize,
    /// Requests that may wait for a place in the batch; more are refused at once with 429.
    #[arg(long, env = "CLERK_QUEUE_CAPACITY", default_value_t = 64)]
    pub queue_capacity: usize,
    /// Memory for the prefix cache, in MiB (0 disables it).
    #[arg(long, env = "CLERK_PREFIX_CACHE_MB", default_value_t = 64)]
    pub prefix_cache_mb: usize,
    /// A tokenizer.json to use instead of the GGUF's vocabulary.
    #[arg(long)]
    pub tokenizer: Option<PathBuf>,
    /// A Jinja chat-template file to use instead of the model's own.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

impl ModelArgs {
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        let dir = self.models_dir.clone().unwrap_or_else(default_models_dir);
        let resolved = resolve_model(&self.model, &dir)?;
        let mut cfg = EngineConfig::new(resolved.path);
        cfg.model_name = resolved.name;
        cfg.chat_template = match &self.chat_template {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading chat template {}", p.display()))?,
            ),
            None => resolved.chat_template,
        };
        cfg.tokenizer_json = self.tokenizer.clone();
        cfg.device = self.device;
        if let Some(t) = self.threads {
            cfg.threads = t;
        }
        cfg.context_length = self.ctx_size;
        cfg.max_batch = self.max_batch;
        if self.queue_capacity == 0 {
            anyhow::bail!("--queue-capacity must be at least 1");
        }
        cfg.queue_capacity = self.queue_capacity;
        cfg.prefix_cache_bytes = self.prefix_cache_mb << 20;
        Ok(cfg)
    }

    pub fn load(&self) -> anyhow::Result<Engine> {
        Ok(Engine::load(self.engine_config()?)?)
    }
}

/// Where the key that seals the shop's personal fields comes from; shared by every subcommand
/// that opens the shop database.
#[derive(Debug, Clone, Default, Args)]
pub struct DataKeyArgs {
    /// File holding the data key that seals personal fields (emails, phones, addresses, payment
    /// details, what shoppers wrote): base64 of 32 bytes, made with `clerk data-key new FILE`.
    /// Default: DATA_DIR/data.key, made on first start.
    #[arg(long, env = "CLERK_DATA_KEY_FILE")]
    pub data_key_file: Option<PathBuf>,
}

impl DataKeyArgs {
    /// The file if one is given, else the key itself from `CLERK_DATA_KEY` (an environment
    /// variable only, never a flag: arguments are visible to every user of the machine), else
    /// the automatic key in the data folder.
    pub fn source(&self) -> crate::shop::KeySource {
        use crate::shop::KeySource;
        if let Some(f) = &self.data_key_file {
            return KeySource::File(f.clone());
        }
        match std::env::var("CLERK_DATA_KEY").ok() {
            Some(v) if !v.trim().is_empty() => KeySource::Value(v),
            _ => KeySource::Auto,
        }
    }
}

/// Sampling flags shared by `generate` and `chat`.
#[derive(Debug, Clone, Args)]
pub struct SamplingArgs {
    /// 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f32,
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0.05)]
    pub min_p: f32,
    #[arg(long, default_value_t = 1.1)]
    pub repetition_penalty: f32,
    /// Makes sampling reproducible.
    #[arg(long)]
    pub seed: Option<u64>,
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Stop strings (repeatable); never printed.
    #[arg(long)]
    pub stop: Vec<String>,
}

impl SamplingArgs {
    pub fn params(&self) -> SamplingParams {
        SamplingParams {
            temperature: self.temperature,
            top_k: self.top_k,
            top_p: self.top_p,
            min_p: self.min_p,
            repetition_penalty: self.repetition_penalty,
            seed: self.seed,
            ..SamplingParams::default()
        }
    }
}
