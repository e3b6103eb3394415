//! `clerk serve`: the OpenAI-compatible HTTP server.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use axum::http::HeaderValue;
use clap::Args;

use super::ModelArgs;
use crate::engine::registry::{default_models_dir, resolve_embedder};
use crate::server::auth::ApiKey;
use crate::server::{self, ServerConfig};

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Sentence embedder for /v1/embeddings: a folder (config.json, tokenizer.json,
    /// model.safetensors), an embedder manifest name, a hub `owner/repo`, or `none`.
    #[arg(long, env = "CLERK_EMBEDDER", default_value = crate::engine::registry::DEFAULT_EMBEDDER)]
    pub embedder: String,
    /// Address to listen on. Without an API key only loopback addresses are allowed.
    #[arg(long, env = "CLERK_HOST", default_value = "127.0.0.1")]
    pub host: IpAddr,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, env = "CLERK_PORT", default_value_t = 8080)]
    pub port: u16,
    /// API keys clients must send as `Authorization: Bearer KEY`, as `[SCOPE:]KEY` where SCOPE is
    /// `admin` (the default), `staff` or `widget` (repeat, or comma-separate in the environment
    /// variable).
    #[arg(
        long = "api-key",
        env = "CLERK_API_KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,
    /// Serve HTTPS: the certificate chain, PEM (with --tls-key).
    #[arg(long = "tls-cert", env = "CLERK_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<std::path::PathBuf>,
    /// Serve HTTPS: the certificate's private key, PEM (with --tls-cert).
    #[arg(long = "tls-key", env = "CLERK_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<std::path::PathBuf>,
    /// Requests per minute each API key may make (a key made with `clerk keys create
    /// --rate-limit` keeps its own); unlimited when unset.
    #[arg(long = "rate-limit", env = "CLERK_RATE_LIMIT")]
    pub rate_limit: Option<u32>,
    /// Browser origins allowed to call the API (repeat, or comma-separate); none by default.
    #[arg(
        long = "cors-origin",
        env = "CLERK_CORS_ORIGINS",
        value_delimiter = ','
    )]
    pub cors_origins: Vec<String>,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "CLERK_MAX_BODY_BYTES", default_value_t = 2 << 20)]
    pub max_body_bytes: usize,
    /// Longest a request may run, in seconds (a stream is ended with an error event after it).
    #[arg(long, env = "CLERK_REQUEST_TIMEOUT_SECS", default_value_t = 600)]
    pub request_timeout_secs: u64,
    /// Most choices one request may ask for (`n`).
    #[arg(long, env = "CLERK_MAX_N", default_value_t = 8)]
    pub max_n: usize,
    /// Folder holding clerk's stored data (knowledge base, shop database).
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: std::path::PathBuf,
    /// Start with an empty knowledge base and shop database instead of the built-in demo shop
    /// when the data folder has none.
    #[arg(long, env = "CLERK_NO_DEMO")]
    pub no_demo: bool,
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
    /// The shop's policy as JSON (fields left out keep the defaults, which model tau2's retail
    /// policy).
    #[arg(long, env = "CLERK_SHOP_POLICY")]
    pub shop_policy: Option<std::path::PathBuf>,
    /// Purge conversations idle this many days (with their messages and ratings), older audit
    /// entries and expired tokens, at start and hourly; kept forever when unset.
    #[arg(long, env = "CLERK_RETENTION_DAYS")]
    pub retention_days: Option<u32>,
    /// With --retention-days: also purge audit entries older than this many days.
    #[arg(long, env = "CLERK_AUDIT_RETENTION_DAYS", requires = "retention_days")]
    pub audit_retention_days: Option<u32>,
    /// The assistant (the model `clerk`) understands each message by a tool call of the served
    /// model (constrained decoding: one of its functions, always) instead of the offline
    /// classifier. For a model that calls tools well; the flows, identity checks and
    /// confirmations stay the same.
    #[arg(long, env = "CLERK_ASSISTANT_TOOL_CALLS")]
    pub assistant_tool_calls: bool,
    /// The shop's name, as the assistant (the model `clerk`) introduces it.
    #[arg(long, env = "CLERK_SHOP_NAME", default_value = "Harbor & Pine")]
    pub shop_name: String,
    /// Best-passage similarity under which a question counts as unanswerable from the shop's data.
    #[arg(long, env = "CLERK_ANSWER_THRESHOLD", default_value_t = crate::retrieval::DEFAULT_ANSWER_THRESHOLD)]
    pub answer_threshold: f32,
    /// Seconds streams in flight may run on after Ctrl-C or SIGTERM.
    #[arg(long, env = "CLERK_SHUTDOWN_GRACE_SECS", default_value_t = 10)]
    pub shutdown_grace_secs: u64,
}

impl ServeArgs {
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let api_keys = self
            .api_keys
            .iter()
            .filter(|k| !k.trim().is_empty())
            .map(|k| ApiKey::parse(k).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let cors_origins = self
            .cors_origins
            .iter()
            .map(|o| {
                HeaderValue::from_str(o.trim())
                    .with_context(|| format!("invalid CORS origin `{o}`"))
            })
            .collect::<anyhow::Result<_>>()?;
        if self.rate_limit == Some(0) {
            anyhow::bail!("--rate-limit must be at least 1 request per minute");
        }
        if self.max_n == 0 || self.max_body_bytes == 0 || self.request_timeout_secs == 0 {
            anyhow::bail!(
                "--max-n, --max-body-bytes and --request-timeout-secs must be at least 1"
            );
        }
        Ok(ServerConfig {
            api_keys,
            cors_origins,
            body_limit: self.max_body_bytes,
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_n: self.max_n,
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            rate_per_minute: self.rate_limit,
            tls: match (&self.tls_cert, &self.tls_key) {
                (Some(cert), Some(key)) => Some(crate::server::tls::TlsConfig {
                    cert: cert.clone(),
                    key: key.clone(),
                }),
                _ => None,
            },
        })
    }
}

pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    let config = a.server_config()?;
    let engine = a.model.engine_config()?;
    let embedder = match a.embedder.as_str() {
        "none" => None,
        spec => {
            let dir = a
                .model
                .models_dir
                .clone()
                .unwrap_or_else(default_models_dir);
            Some(resolve_embedder(spec, &dir)?)
        }
    };
    let knowledge = embedder.as_ref().map(|_| server::KnowledgeConfig {
        data_dir: a.data_dir.clone(),
        answer_threshold: a.answer_threshold,
        seed_demo: !a.no_demo,
    });
    let policy = match &a.shop_policy {
        Some(p) => crate::shop::Policy::load(p)?,
        None => crate::shop::Policy::default(),
    };
    let shop = Some(server::ShopConfig {
        name: a.shop_name.clone(),
        data_dir: a.data_dir.clone(),
        policy,
        seed_demo: !a.no_demo,
        retention_days: a.retention_days,
        audit_retention_days: a.audit_retention_days,
        data_key: a.data_key.source(),
        assistant_tool_calls: a.assistant_tool_calls,
    });
    if a.retention_days == Some(0) || a.audit_retention_days == Some(0) {
        anyhow::bail!("--retention-days and --audit-retention-days must be at least 1");
    }
    let addr = SocketAddr::new(a.host, a.port);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(server::serve(
            addr,
            config,
            engine,
            embedder,
            knowledge,
            shop,
            Some(std::sync::Arc::new(crate::server::keys::KeyStore::open(
                &a.data_dir,
            )?)),
        ))
}
