//! The HTTP server: OpenAI-compatible routes over the engine, health and metrics.
//!
//! - `error`: [`ApiError`], the one mapping from every layer's errors to OpenAI-shaped responses.
//! - `extract`: the JSON extractor whose rejections are [`ApiError`]s.
//! - `auth`: API keys (Bearer tokens) for `/v1` and `/metrics`.
//! - `metrics`: counters and histograms rendered for Prometheus.
//! - `openai`: the OpenAI routes under `/v1`, the model `clerk` among them.
//! - `assistant`: the chat page's conversation, rating and handoff routes, and staff review
//!   of corrections and analytics.
//! - `shop`, `knowledge`: the shop's records and the knowledge base under `/v1/shop`,
//!   `/v1/knowledge`.
//! - `web`: the chat page, the widget script and the staff console, built into the binary.
//!
//! [`app`] builds the router from an [`AppState`], a `Clone` bundle of handles; [`serve`] binds,
//! loads the model in the background (so `/health` answers 503 meanwhile), and shuts down gracefully.

pub mod assistant;
pub mod auth;
pub mod error;
pub mod extract;
pub mod keys;
pub mod knowledge;
pub mod metrics;
pub mod openai;
pub mod shop;
pub mod tls;
pub mod web;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tower_http::cors::CorsLayer;

use crate::assistant::{Assistant, IntentClassifier, Prompts};
use crate::engine::{Embedder, Engine, EngineConfig};
use crate::retrieval::Knowledge;
use crate::shop::Shop;
pub use error::ApiError;
use extract::BodyLimit;
use metrics::Metrics;
use std::path::PathBuf;

/// Settings of the HTTP layer, validated by the CLI.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Accepted API keys and their scopes; empty means no authentication (allowed on loopback
    /// only, see [`serve`]).
    pub api_keys: Vec<auth::ApiKey>,
    /// Origins allowed to call from a browser; empty means no cross-origin access.
    pub cors_origins: Vec<HeaderValue>,
    pub body_limit: usize,
    pub request_timeout: Duration,
    /// Choices per request at most (`n`, times the prompts of a legacy completion).
    pub max_n: usize,
    /// How long streams in flight may run on after a shutdown signal before they are ended.
    pub shutdown_grace: Duration,
    /// Requests per minute a key may make, unless its own stored limit says otherwise.
    pub rate_per_minute: Option<u32>,
    /// Serve HTTPS with this certificate and key instead of plain HTTP.
    pub tls: Option<tls::TlsConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            api_keys: Vec::new(),
            cors_origins: Vec::new(),
            body_limit: 2 << 20,
            request_timeout: Duration::from_secs(600),
            max_n: 8,
            shutdown_grace: Duration::from_secs(10),
            rate_per_minute: None,
            tls: None,
        }
    }
}

/// What every handler can reach: cheap clones of shared handles.
#[derive(Clone)]
pub struct AppState {
    /// Filled once the model has loaded; until then model routes answer 503.
    engine: Arc<OnceLock<Engine>>,
    /// The sentence embedder, when one is configured; filled once loaded.
    embedder: Arc<OnceLock<Arc<Embedder>>>,
    /// Whether an embedder is configured (so health waits for it too).
    expects_embedder: bool,
    /// The shop's knowledge base, opened once the embedder has loaded.
    knowledge: Arc<OnceLock<Knowledge>>,
    /// The shop's records and actions, when the server keeps a shop database.
    shop: Arc<OnceLock<Shop>>,
    /// The model `clerk`, once the shop, the knowledge base and the embedder are all there.
    assistant: Arc<OnceLock<Assistant>>,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Turns true when streams in flight must end (the shutdown grace is over).
    pub shutdown: watch::Receiver<bool>,
    /// Unix time the server started, the `created` of its models.
    pub started: u64,
    /// Keys made with `clerk keys`, when the server has a data folder.
    keys: Arc<OnceLock<Arc<keys::KeyStore>>>,
    pub limiter: Arc<keys::RateLimiter>,
}

/// Ends the streams of an [`AppState`]'s server when dropped or told to.
pub struct ShutdownHandle(watch::Sender<bool>);

impl ShutdownHandle {
    pub fn end_streams(&self) {
        let _ = self.0.send(true);
    }
}

impl AppState {
    pub fn new(config: ServerConfig, expects_embedder: bool) -> (Self, ShutdownHandle) {
        let (tx, rx) = watch::channel(false);
        let state = Self {
            engine: Arc::new(OnceLock::new()),
            embedder: Arc::new(OnceLock::new()),
            expects_embedder,
            knowledge: Arc::new(OnceLock::new()),
            shop: Arc::new(OnceLock::new()),
            assistant: Arc::new(OnceLock::new()),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
            shutdown: rx,
            started: crate::clock::unix_now().max(0) as u64,
            keys: Arc::new(OnceLock::new()),
            limiter: Arc::new(keys::RateLimiter::default()),
        };
        (state, ShutdownHandle(tx))
    }

    /// Makes a loaded engine available; the first one set stays.
    pub fn set_engine(&self, engine: Engine) {
        let _ = self.engine.set(engine);
    }

    pub fn set_embedder(&self, embedder: Arc<Embedder>) {
        let _ = self.embedder.set(embedder);
    }

    pub fn set_knowledge(&self, knowledge: Knowledge) {
        let _ = self.knowledge.set(knowledge);
    }

    pub fn set_key_store(&self, store: Arc<keys::KeyStore>) {
        let _ = self.keys.set(store);
    }

    pub fn key_store(&self) -> Option<Arc<keys::KeyStore>> {
        self.keys.get().cloned()
    }

    pub fn set_shop(&self, shop: Shop) {
        let _ = self.shop.set(shop);
    }

    pub fn shop(&self) -> Option<&Shop> {
        self.shop.get()
    }

    pub fn set_assistant(&self, assistant: Assistant) {
        let _ = self.assistant.set(assistant);
    }

    /// The assistant, or why there is none.
    pub fn assistant(&self) -> Result<&Assistant, ApiError> {
        match self.assistant.get() {
            Some(a) => Ok(a),
            None if !self.ready() => Err(ApiError::Loading),
            None => Err(ApiError::ModelNotFound(
                "clerk (this server runs without a shop database or knowledge base)".into(),
            )),
        }
    }

    /// The knowledge base, or why there is none.
    pub fn knowledge(&self) -> Result<&Knowledge, ApiError> {
        match self.knowledge.get() {
            Some(k) => Ok(k),
            None if self.expects_embedder && !self.ready() => Err(ApiError::Loading),
            None => Err(ApiError::NotFound(
                "This server has no knowledge base (it runs without an embedder).".into(),
            )),
        }
    }

    pub fn loaded_engine(&self) -> Option<&Engine> {
        self.engine.get()
    }

    /// Whether every configured model has loaded.
    pub fn ready(&self) -> bool {
        self.engine.get().is_some() && (!self.expects_embedder || self.embedder.get().is_some())
    }

    /// The embedder called `model`, or why there is none.
    pub fn embedder(&self, model: &str) -> Result<Arc<Embedder>, ApiError> {
        match self.embedder.get() {
            Some(e) if e.name() == model => Ok(e.clone()),
            None if self.expects_embedder => Err(ApiError::Loading),
            _ => Err(ApiError::ModelNotFound(model.to_string())),
        }
    }

    /// The engine serving `model`, or why there is none.
    pub fn engine(&self, model: &str) -> Result<Engine, ApiError> {
        let engine = self.engine.get().ok_or(ApiError::Loading)?;
        if engine.info().name == model {
            Ok(engine.clone())
        } else {
            Err(ApiError::ModelNotFound(model.to_string()))
        }
    }

    pub fn model_ids(&self) -> Vec<String> {
        let chat = self.engine.get().map(|e| e.info().name.clone());
        let embed = self.embedder.get().map(|e| e.name().to_string());
        let clerk = self
            .assistant
            .get()
            .map(|_| openai::assistant::MODEL.to_string());
        clerk.into_iter().chain(chat).chain(embed).collect()
    }

    pub fn record_prompt(&self, tokens: usize) {
        self.metrics
            .prompt_tokens
            .fetch_add(tokens as u64, Ordering::Relaxed);
    }
}

/// The whole router over `state`.
pub fn app(state: AppState) -> Router {
    let protected = Router::new()
        .route("/v1/chat/completions", post(openai::chat::handler))
        .route("/v1/completions", post(openai::completions::handler))
        .route("/v1/embeddings", post(openai::embeddings::handler))
        .route("/v1/models", get(openai::models::list))
        .route("/v1/models/{*id}", get(openai::models::get))
        .route("/v1/knowledge/search", get(knowledge::search))
        .route("/v1/knowledge/passage", get(knowledge::passage))
        .route(
            "/v1/knowledge/documents",
            get(knowledge::list).post(knowledge::add),
        )
        .route(
            "/v1/knowledge/documents/{*id}",
            axum::routing::delete(knowledge::delete),
        )
        .route("/metrics", get(metrics_handler))
        .merge(shop::routes())
        .merge(assistant::routes())
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            auth::require_key,
        ));
    let mut router = Router::new()
        .merge(protected)
        .merge(web::routes())
        .route("/health", get(health))
        .fallback(|| async { ApiError::NotFound("No such route.".into()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state(state.clone(), track))
        .layer(DefaultBodyLimit::max(state.config.body_limit));
    if !state.config.cors_origins.is_empty() {
        router = router.layer(
            CorsLayer::new()
                .allow_origin(state.config.cors_origins.clone())
                .allow_methods([Method::GET, Method::POST, Method::DELETE, Method::OPTIONS])
                // Whatever headers the page asks to send: the OpenAI SDKs add their own
                // (`x-stainless-*`) and clerk's pages send `X-Clerk-*`; the allowed origin and
                // the key decide what a request may do, not its header names.
                .allow_headers(tower_http::cors::AllowHeaders::mirror_request())
                .expose_headers([
                    header::HeaderName::from_static("x-clerk-conversation"),
                    header::RETRY_AFTER,
                ]),
        );
    }
    router.with_state(state)
}

/// Counts every request by route and status, and tells the JSON extractor the body limit.
async fn track(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    req.extensions_mut()
        .insert(BodyLimit(state.config.body_limit));
    let res = next.run(req).await;
    state.metrics.record_request(&route, res.status().as_u16());
    res
}

async fn health(State(state): State<AppState>) -> Response {
    if state.ready() {
        Json(json!({ "status": "ok", "models": state.model_ids() })).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "loading" })),
        )
            .into_response()
    }
}

async fn metrics_handler(
    caller: auth::Caller,
    State(state): State<AppState>,
) -> Result<Response, ApiError> {
    caller.require(auth::Scope::Staff)?;
    let body = state
        .metrics
        .render(state.loaded_engine().map(|e| e.stats()));
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

/// Where the knowledge base lives, and whether to fill an empty one with the built-in demo shop.
#[derive(Debug, Clone)]
pub struct KnowledgeConfig {
    pub data_dir: PathBuf,
    pub answer_threshold: f32,
    pub seed_demo: bool,
}

impl KnowledgeConfig {
    /// Opens the knowledge base (blocking: it may embed the demo shop on first run).
    pub fn open(&self, embedder: Arc<Embedder>) -> anyhow::Result<Knowledge> {
        let k = Knowledge::open(&self.data_dir, embedder, self.answer_threshold)?;
        if self.seed_demo && k.documents().is_empty() {
            let report = k.ingest(crate::retrieval::demo::inputs())?;
            tracing::info!(
                chunks = report.chunks,
                "knowledge base was empty: loaded the demo shop"
            );
        }
        Ok(k)
    }
}

/// Where the shop database lives, the policy it enforces, and whether to fill an empty one with
/// the demo shop's customers and orders.
#[derive(Debug, Clone)]
pub struct ShopConfig {
    pub data_dir: PathBuf,
    /// The shop's name, as the assistant introduces it.
    pub name: String,
    pub policy: crate::shop::Policy,
    pub seed_demo: bool,
    /// Conversations idle this many days are purged hourly.
    pub retention_days: Option<u32>,
    /// Audit entries older than this many days are purged hourly.
    pub audit_retention_days: Option<u32>,
    /// The key the personal fields are sealed with.
    pub data_key: crate::shop::KeySource,
    /// The assistant understands messages by the served model's tool calls instead of the
    /// offline classifier (for a model that calls tools well).
    pub assistant_tool_calls: bool,
}

impl ShopConfig {
    /// Opens (and on first run seeds) the shop database; blocking.
    pub fn open(&self) -> anyhow::Result<Shop> {
        let shop = Shop::open_with_key(&self.data_dir, self.policy.clone(), &self.data_key)?;
        if self.seed_demo && shop.counts()?.customers == 0 {
            let data = crate::shop::seed::demo_shop(40, crate::shop::unix_now())?;
            let counts = shop.import(
                &crate::shop::Ctx::system(crate::shop::Channel::Import),
                &data,
                &["demo".to_string()],
            )?;
            tracing::info!(
                customers = counts.customers,
                orders = counts.orders,
                "shop database was empty: loaded the demo shop"
            );
        }
        Ok(shop)
    }
}

/// Retention: purges at start and then every hour; a failed purge is logged and tried again.
async fn purge_every_hour(shop: Shop, days: u32, audit_days: Option<u32>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let s = shop.clone();
        let ctx = crate::shop::Ctx::system(crate::shop::Channel::Api);
        match tokio::task::spawn_blocking(move || s.purge_older_than(&ctx, days, audit_days)).await
        {
            Ok(Ok(p)) => tracing::info!(
                conversations = p.conversations,
                audit = p.audit,
                "retention purge"
            ),
            Ok(Err(e)) => {
                tracing::warn!(error = %error::redact(&e.to_string()), "retention purge failed")
            }
            Err(e) => tracing::warn!(error = %e, "retention purge task failed"),
        }
    }
}

/// Follows the knowledge base on disk: another process (`clerk ingest` beside a running server)
/// may switch it to a new generation, which is picked up within two seconds.
async fn follow_knowledge(knowledge: Knowledge) {
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    loop {
        tick.tick().await;
        let k = knowledge.clone();
        match tokio::task::spawn_blocking(move || k.refresh()).await {
            Ok(Ok(true)) => {
                tracing::info!("knowledge base: picked up a generation another process wrote")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "knowledge base refresh failed"),
            Err(e) => tracing::warn!(error = %e, "knowledge base refresh task failed"),
        }
    }
}

/// Runs the server until Ctrl-C or SIGTERM: binds first, loads the model in the background, then
/// shuts down gracefully (no new connections; streams in flight get `shutdown_grace` to finish).
pub async fn serve(
    addr: SocketAddr,
    config: ServerConfig,
    engine_config: EngineConfig,
    embedder: Option<(String, PathBuf)>,
    knowledge: Option<KnowledgeConfig>,
    shop: Option<ShopConfig>,
    key_store: Option<Arc<keys::KeyStore>>,
) -> anyhow::Result<()> {
    let stored_keys = match &key_store {
        Some(k) => k.any()?,
        None => false,
    };
    if config.api_keys.is_empty() && !stored_keys && !addr.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {addr} without an API key: make one with `clerk keys create`, \
             set --api-key (or CLERK_API_KEY), or listen on a loopback address"
        );
    }
    // A bad certificate or key stops the server before it listens.
    let tls = config
        .tls
        .as_ref()
        .map(tls::TlsConfig::server_config)
        .transpose()?;
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let grace = config.shutdown_grace;
    let (state, stop) = AppState::new(config, embedder.is_some());
    if let Some(k) = key_store {
        state.set_key_store(k);
    }
    let shop_name = shop.as_ref().map_or_else(String::new, |s| s.name.clone());
    let tool_calls = shop.as_ref().is_some_and(|s| s.assistant_tool_calls);
    if let Some(sc) = shop {
        let (retention, audit) = (sc.retention_days, sc.audit_retention_days);
        let shop = tokio::task::spawn_blocking(move || sc.open()).await??;
        if let Some(days) = retention {
            tokio::spawn(purge_every_hour(shop.clone(), days, audit));
        }
        state.set_shop(shop);
    }
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("clerk listening on {scheme}://{local}");

    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel();
    let loading = state.clone();
    let runtime = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let loaded = Engine::load(engine_config).map_err(anyhow::Error::from).and_then(|engine| {
            tracing::info!(model = %engine.info().name, secs = started.elapsed().as_secs_f64(), "model loaded");
            let model = engine.clone();
            loading.set_engine(engine);
            if let Some((name, dir)) = embedder {
                let embedder = Arc::new(Embedder::load(&dir, &name)?);
                tracing::info!(embedder = %name, "embedder loaded");
                if let Some(shop) = loading.shop() {
                    shop.set_classifier(Arc::new(crate::shop::FeedbackClassifier::new(
                        embedder.clone(),
                    )?));
                }
                if let Some(kc) = knowledge {
                    let k = kc.open(embedder.clone())?;
                    if let Some(shop) = loading.shop() {
                        let assistant = Assistant::new(
                            shop.clone(),
                            k.clone(),
                            Arc::new(IntentClassifier::new(embedder.clone())?),
                            Arc::new(Prompts::builtin()?),
                            shop_name.clone(),
                        );
                        if tool_calls {
                            assistant.understand_with(
                                crate::assistant::tools::ToolUnderstanding::new(model.clone())?,
                            );
                            tracing::info!("the assistant understands messages by tool calls");
                        }
                        loading.set_assistant(assistant);
                    }
                    runtime.spawn(follow_knowledge(k.clone()));
                    loading.set_knowledge(k);
                }
                loading.set_embedder(embedder);
            }
            Ok::<_, anyhow::Error>(())
        });
        if let Err(e) = loaded {
            let _ = failed_tx.send(e);
        }
    });

    let shutdown = async move {
        shutdown_signal().await;
        tracing::info!("shutting down; streams in flight have {grace:?} to finish");
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            stop.end_streams();
        });
    };
    let router = app(state);
    let server: std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<()>> + Send>> =
        match tls {
            Some(config) => Box::pin(
                axum::serve(tls::TlsListener::new(listener, config)?, router)
                    .with_graceful_shutdown(shutdown)
                    .into_future(),
            ),
            None => Box::pin(
                axum::serve(listener, router)
                    .with_graceful_shutdown(shutdown)
                    .into_future(),
            ),
        };
    tokio::select! {
        r = server => r.map_err(Into::into),
        Ok(e) = failed_rx => Err(e.context("loading the models and the knowledge base")),
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
