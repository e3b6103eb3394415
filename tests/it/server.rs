//! The OpenAI-compatible server on a real socket (port 0), driven by the real `async-openai` client,
//! by raw HTTP for the error cases, and by the official Python `openai` package.

use std::sync::atomic::Ordering;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestUserMessageArgs, ChatCompletionStreamOptions,
    CreateChatCompletionRequestArgs, FinishReason,
};
use async_openai::types::completions::CreateCompletionRequestArgs;
use async_openai::Client;
use clerk::engine::{ChatMessage, Engine, EngineConfig};
use clerk::server::{app, AppState, ServerConfig, ShutdownHandle};
use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::common::{model_path, shared_embedder};

const MODEL: &str = "smollm2-135m-instruct";

/// One SmolLM2 engine shared by the tests that don't need special engine settings.
fn shared_engine() -> Engine {
    static ENGINE: OnceLock<Engine> = OnceLock::new();
    ENGINE.get_or_init(|| load(|_| {})).clone()
}

fn load(configure: impl FnOnce(&mut EngineConfig)) -> Engine {
    let mut cfg = EngineConfig::new(model_path(MODEL));
    cfg.model_name = MODEL.into();
    cfg.threads = 2;
    configure(&mut cfg);
    Engine::load(cfg).expect("load SmolLM2")
}

const EMBEDDER: &str = "all-minilm-l6-v2";

struct TestServer {
    base: String,
    state: AppState,
    _stop: ShutdownHandle,
}

impl TestServer {
    async fn start(engine: Option<Engine>, config: ServerConfig) -> Self {
        let (state, stop) = AppState::new(config, false);
        if let Some(e) = engine {
            state.set_engine(e);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = app(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            base: format!("http://{addr}"),
            state,
            _stop: stop,
        }
    }

    async fn default() -> Self {
        let server = Self::start(Some(shared_engine()), ServerConfig::default()).await;
        server.state.set_embedder(shared_embedder());
        server
    }

    fn client(&self) -> Client<OpenAIConfig> {
        self.client_with_key("unused")
    }

    fn client_with_key(&self, key: &str) -> Client<OpenAIConfig> {
        Client::with_config(
            OpenAIConfig::new()
                .with_api_base(format!("{}/v1", self.base))
                .with_api_key(key),
        )
    }

    async fn post(&self, path: &str, body: impl Into<reqwest::Body>) -> (u16, Value) {
        let res = reqwest::Client::new()
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn metric(&self, name: &str) -> f64 {
        let text = reqwest::get(format!("{}/metrics", self.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or(0.0)
    }
}

fn user(text: &str) -> async_openai::types::chat::ChatCompletionRequestMessage {
    ChatCompletionRequestUserMessageArgs::default()
        .content(text)
        .build()
        .unwrap()
        .into()
}

/// The prompt length the server must report, computed independently through the engine.
fn prompt_tokens(text: &str) -> u32 {
    shared_engine()
        .chat_prompt(&[ChatMessage::user(text)], None)
        .unwrap()
        .len() as u32
}

/// Asserts an OpenAI-shaped error body with this status and code.
fn assert_error(status: u16, body: &Value, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "{body}");
    let e = &body["error"];
    assert!(
        e["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert!(e["type"].is_string(), "{body}");
    assert!(e.get("param").is_some(), "{body}");
    assert_eq!(e["code"], want_code, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completion_has_exact_usage_and_streaming_gives_the_same_text() {
    let server = TestServer::default().await;
    let client = server.client();
    let question = "What is the capital of France?";
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages(vec![user(question)])
        .temperature(0.0)
        .max_tokens(20u32)
        .build()
        .unwrap();
    let whole = client.chat().create(req.clone()).await.unwrap();
    assert_eq!(whole.object, "chat.completion");
    assert_eq!(whole.model, MODEL);
    let choice = &whole.choices[0];
    let text = choice.message.content.clone().unwrap();
    assert!(!text.is_empty());
    let usage = whole.usage.unwrap();
    assert_eq!(usage.prompt_tokens, prompt_tokens(question));
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= 20);
    assert_eq!(
        usage.total_tokens,
        usage.prompt_tokens + usage.completion_tokens
    );
    if choice.finish_reason == Some(FinishReason::Length) {
        assert_eq!(usage.completion_tokens, 20);
    }

    let mut req = req;
    req.stream_options = Some(ChatCompletionStreamOptions {
        include_usage: Some(true),
        include_obfuscation: None,
    });
    let mut stream = client.chat().create_stream(req).await.unwrap();
    let mut chunks = Vec::new();
    while let Some(c) = stream.next().await {
        chunks.push(c.unwrap());
    }
    let first = &chunks[0];
    assert_eq!(
        first.choices[0].delta.role,
        Some(async_openai::types::chat::Role::Assistant)
    );
    assert!(chunks
        .iter()
        .all(|c| c.id == first.id && c.created == first.created));
    assert!(chunks.iter().all(|c| c.object == "chat.completion.chunk"));
    let streamed: String = chunks
        .iter()
        .flat_map(|c| c.choices.iter())
        .filter_map(|c| c.delta.content.clone())
        .collect();
    assert_eq!(streamed, text, "greedy streaming must give the same text");
    // The last choice chunk has an empty delta and the finish reason; then the usage chunk.
    let n = chunks.len();
    let last_choice = &chunks[n - 2].choices[0];
    assert_eq!(last_choice.finish_reason, choice.finish_reason);
    assert!(last_choice.delta.content.is_none());
    assert!(chunks[n - 1].choices.is_empty());
    let su = chunks[n - 1].usage.clone().expect("usage chunk");
    assert_eq!(su.prompt_tokens, usage.prompt_tokens);
    assert_eq!(su.completion_tokens, usage.completion_tokens);
    assert!(chunks[..n - 1].iter().all(|c| c.usage.is_none()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_logprobs_and_stop() {
    let server = TestServer::default().await;
    let req = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages(vec![user("Name a colour.")])
        .temperature(1.0)
        .seed(5)
        .n(2u8)
        .logprobs(true)
        .top_logprobs(3u8)
        .max_tokens(6u32)
        .build()
        .unwrap();
    let res = server.client().chat().create(req).await.unwrap();
    assert_eq!(res.choices.len(), 2);
    assert_eq!(res.choices[0].index, 0);
    assert_eq!(res.choices[1].index, 1);
    for c in &res.choices {
        let lp = c.logprobs.as_ref().unwrap().content.as_ref().unwrap();
        assert!(!lp.is_empty());
        for t in lp {
            assert!(t.logprob <= 0.0);
            assert_eq!(t.top_logprobs.len(), 3);
        }
        // The tokens' bytes join into the text, whatever characters it has.
        let joined: Vec<u8> = lp
            .iter()
            .flat_map(|t| t.bytes.clone().unwrap_or_default())
            .collect();
        let content = c.message.content.clone().unwrap_or_default();
        assert_eq!(String::from_utf8_lossy(&joined), content);
    }
    let usage = res.usage.unwrap();
    assert_eq!(usage.prompt_tokens, prompt_tokens("Name a colour."));

    // A stop string ends the text before it, and is never sent.
    let base = CreateChatCompletionRequestArgs::default()
        .model(MODEL)
        .messages(vec![user("What is the capital of France?")])
        .temperature(0.0)
        .max_tokens(20u32)
        .build()
        .unwrap();
    let full = server.client().chat().create(base.clone()).await.unwrap();
    let text = full.choices[0].message.content.clone().unwrap();
    let word = text
        .split_whitespace()
        .nth(2)
        .expect("a few words")
        .to_string();
    let mut cut = base;
    cut.stop = Some(async_openai::types::chat::StopConfiguration::String(
        word.clone(),
    ));
    let res = server.client().chat().create(cut).await.unwrap();
    let got = res.choices[0].message.content.clone().unwrap();
    assert_eq!(got, text[..text.find(&word).unwrap()]);
    assert_eq!(res.choices[0].finish_reason, Some(FinishReason::Stop));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_completions_whole_and_streamed() {
    let server = TestServer::default().await;
    let req = CreateCompletionRequestArgs::default()
        .model(MODEL)
        .prompt("Once upon a time")
        .temperature(0.0)
        .max_tokens(12u32)
        .build()
        .unwrap();
    let whole = server
        .client()
        .completions()
        .create(req.clone())
        .await
        .unwrap();
    assert_eq!(whole.object, "text_completion");
    let text = whole.choices[0].text.clone();
    assert!(!text.is_empty());
    let usage = whole.usage.unwrap();
    let want = shared_engine()
        .tokenizer()
        .encode("Once upon a time", true)
        .unwrap()
        .len();
    assert_eq!(usage.prompt_tokens as usize, want);

    let mut stream = server
        .client()
        .completions()
        .create_stream(req)
        .await
        .unwrap();
    let mut streamed = String::new();
    let mut finish = None;
    while let Some(c) = stream.next().await {
        let c = c.unwrap();
        for ch in c.choices {
            streamed.push_str(&ch.text);
            if ch.finish_reason.is_some() {
                finish = ch.finish_reason;
            }
        }
    }
    assert_eq!(streamed, text);
    assert!(finish.is_some());

    // OpenAI's defaults and names for this endpoint: 16 tokens when `max_tokens` is left out (the
    // end-of-sequence tokens banned, so it can't stop sooner), errors about `prompt`, and a
    // scoring request (`echo` with `logprobs`) refused rather than given half its logprobs.
    let (s, b) = server
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Once upon a time", "temperature": 0,
                   "logit_bias": {"0": -100, "2": -100}})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["usage"]["completion_tokens"], 16, "{b}");
    let (s, b) = server
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "word ".repeat(9000), "max_tokens": 4}).to_string(),
        )
        .await;
    assert_error(s, &b, 400, "context_length_exceeded");
    assert_eq!(b["error"]["param"], "prompt", "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("in the prompt"),
        "{b}"
    );
    let (s, b) = server
        .post(
            "/v1/completions",
            json!({"model": MODEL, "prompt": "Once", "echo": true, "logprobs": 1, "max_tokens": 1})
                .to_string(),
        )
        .await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["param"], "echo", "{b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_health_and_metrics() {
    let server = TestServer::default().await;
    let client = server.client();
    let list = client.models().list().await.unwrap();
    let ids: Vec<&str> = list.data.iter().map(|m| m.id.as_str()).collect();
    assert_eq!(ids, [MODEL, EMBEDDER]);
    assert_eq!(client.models().retrieve(MODEL).await.unwrap().id, MODEL);
    match client.models().retrieve("gpt-17").await {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 404);
            assert_eq!(e.api_error.code.as_deref(), Some("model_not_found"));
        }
        other => panic!("expected a 404, got {other:?}"),
    }
    let health = reqwest::get(format!("{}/health", server.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 200);

    let loading = TestServer::start(None, ServerConfig::default()).await;
    let health = reqwest::get(format!("{}/health", loading.base))
        .await
        .unwrap();
    assert_eq!(health.status(), 503);
    let (status, body) = loading
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}).to_string(),
        )
        .await;
    assert_error(status, &body, 503, "model_loading");

    let _ = client.models().list().await.unwrap();
    let text = reqwest::get(format!("{}/metrics", server.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("clerk_http_requests_total{route=\"/v1/models\",status=\"200\"} 2"),
        "{text}"
    );
    assert!(
        text.contains("clerk_http_requests_total{route=\"/v1/models/{*id}\",status=\"404\"} 1"),
        "{text}"
    );
    for name in [
        "clerk_time_to_first_token_seconds_bucket",
        "clerk_time_per_output_token_seconds_count",
        "clerk_queue_depth",
        "clerk_active_sequences",
        "clerk_prefix_cache_hits_total",
        "clerk_prompt_tokens_total",
        "clerk_completion_tokens_total",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openai_shape_and_status() {
    let server = TestServer::default().await;
    let chat = |body: Value| body.to_string();

    let (s, b) = server.post("/v1/chat/completions", "{\"model\": ").await;
    assert_eq!(s, 400, "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("parse"),
        "{b}"
    );
    assert_eq!(b["error"]["type"], "invalid_request_error");
    // A path segment that doesn't parse gets the same shape, naming the segment.
    let (s, b) = server.post("/v1/shop/handoffs/abc/claim", "").await;
    assert_eq!(s, 400, "{b}");
    assert_eq!(b["error"]["type"], "invalid_request_error", "{b}");
    assert_eq!(b["error"]["param"], "id", "{b}");

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"model": MODEL, "messages": 5})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["param"], "messages", "{b}");

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["param"], "messages[0].role", "{b}");

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "temperature": 7})),
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(b["error"]["param"], "temperature", "{b}");

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"model": "gpt-17", "messages": [{"role": "user", "content": "hi"}]})),
        )
        .await;
    assert_error(s, &b, 404, "model_not_found");

    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(json!({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1_000_000})),
        )
        .await;
    assert_error(s, &b, 400, "context_length_exceeded");

    // Extra fields a newer SDK might send are ignored, and text parts are accepted.
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            chat(
                json!({"model": MODEL, "max_tokens": 2, "some_future_field": {"x": 1},
                "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]}),
            ),
        )
        .await;
    assert_eq!(s, 200, "{b}");

    // Tools and structured output: each bad part is named.
    let hi = json!([{"role": "user", "content": "hi"}]);
    for (body, param) in [
        (
            json!({"tools": [{"type": "function", "function": {"name": "no spaces"}}]}),
            "tools[0].function.name",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "objectx"}}}]}),
            "tools",
        ),
        (
            json!({"tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}}}),
            "tool_choice",
        ),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (
            json!({"response_format": {"type": "yaml"}}),
            "response_format.type",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objectx"}}}}),
            "response_format",
        ),
        (
            json!({"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}}),
            "response_format.json_schema.name",
        ),
    ] {
        let mut body = body;
        body["model"] = json!(MODEL);
        body["messages"] = hi.clone();
        let (s, b) = server
            .post("/v1/chat/completions", chat(body.clone()))
            .await;
        assert_eq!(s, 400, "{body} -> {b}");
        assert_eq!(b["error"]["param"], param, "{body} -> {b}");
        assert!(
            !b["error"]["message"].as_str().unwrap().contains("%json"),
            "{b}"
        );
    }

    let (s, b) = server.post("/v1/nothing-here", "{}").await;
    assert_error(s, &b, 404, "not_found");

    // Hostile nesting is a parse error, not a crash.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let (s, b) = server.post("/v1/chat/completions", deep).await;
    assert_eq!(s, 400, "{b}");

    let small = TestServer::start(
        Some(shared_engine()),
        ServerConfig {
            body_limit: 1024,
            ..ServerConfig::default()
        },
    )
    .await;
    let big =
        chat(json!({"model": MODEL, "messages": [{"role": "user", "content": "x".repeat(4096)}]}));
    let (s, b) = small.post("/v1/chat/completions", big).await;
    assert_error(s, &b, 413, "request_too_large");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_are_required_when_configured() {
    let key = "sk-clerk-test-0123456789";
    let server = TestServer::start(
        Some(shared_engine()),
        ServerConfig {
            api_keys: vec![clerk::server::auth::ApiKey::parse(key).unwrap()],
            ..ServerConfig::default()
        },
    )
    .await;
    match server
        .client_with_key("sk-wrong-key-0123456789")
        .models()
        .list()
        .await
    {
        Err(OpenAIError::ApiError(e)) => {
            assert_eq!(e.status_code.as_u16(), 401);
            assert_eq!(e.api_error.code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("expected 401, got {other:?}"),
    }
    let res = reqwest::get(format!("{}/v1/models", server.base))
        .await
        .unwrap();
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "missing_api_key");
    assert_eq!(
        server
            .client_with_key(key)
            .models()
            .list()
            .await
            .unwrap()
            .data[0]
            .id,
        MODEL
    );
    // Health stays open for load balancers.
    assert_eq!(
        reqwest::get(format!("{}/health", server.base))
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_a_429_with_retry_after() {
    let engine = load(|c| {
        c.max_batch = 1;
        c.queue_capacity = 1;
    });
    let server = TestServer::start(Some(engine), ServerConfig::default()).await;
    let long = json!({"model": MODEL, "stream": true, "max_tokens": 4000,
        "messages": [{"role": "user", "content": "Write a very long story."}]})
    .to_string();
    let http = reqwest::Client::new();
    let url = format!("{}/v1/chat/completions", server.base);
    // One running, one waiting: the third is refused at once.
    let mut running = http
        .post(&url)
        .body(long.clone())
        .send()
        .await
        .unwrap()
        .bytes_stream();
    running.next().await.unwrap().unwrap();
    let _waiting = http.post(&url).body(long.clone()).send().await.unwrap();
    let started = Instant::now();
    let res = http.post(&url).body(long).send().await.unwrap();
    assert_eq!(res.status(), 429);
    assert_eq!(res.headers()["retry-after"], "1");
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["error"]["code"], "rate_limit_exceeded");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let engine = load(|c| c.max_batch = 4);
    let server = TestServer::start(Some(engine.clone()), ServerConfig::default()).await;
    let body = json!({"model": MODEL, "stream": true, "max_tokens": 4000,
        "messages": [{"role": "user", "content": "Write a very long story."}]})
    .to_string();
    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .body(body)
        .send()
        .await
        .unwrap();
    let mut bytes = res.bytes_stream();
    bytes.next().await.unwrap().unwrap();
    drop(bytes);
    // The engine frees the sequence at its next step; poll briefly for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    while engine.stats().cancelled.load(Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the generation was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(engine.stats().active.load(Ordering::Relaxed), 0);
    assert!(server.metric("clerk_client_disconnects_total").await >= 1.0);
    assert!(server.metric("clerk_cancelled_sequences_total").await >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_float_and_base64() {
    use async_openai::types::embeddings::{CreateEmbeddingRequestArgs, EmbeddingInput};
    let server = TestServer::default().await;
    let texts = vec![
        "How do I return a pair of shoes?".to_string(),
        "What is your refund policy for footwear?".to_string(),
        "The weather is sunny today.".to_string(),
    ];
    let req = CreateEmbeddingRequestArgs::default()
        .model(EMBEDDER)
        .input(EmbeddingInput::StringArray(texts.clone()))
        .build()
        .unwrap();
    let res = server.client().embeddings().create(req).await.unwrap();
    assert_eq!(res.data.len(), 3);
    let v: Vec<&Vec<f32>> = res.data.iter().map(|d| &d.embedding).collect();
    assert!(v.iter().all(|e| e.len() == 384));
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>();
    assert!((dot(v[0], v[0]) - 1.0).abs() < 1e-4, "normalised");
    let (near, far) = (dot(v[0], v[1]), dot(v[0], v[2]));
    assert!(
        near > far + 0.2,
        "a paraphrase ({near}) is closer than an unrelated text ({far})"
    );
    // Padding inside a batch must not change a text's vector.
    let alone = shared_embedder().embed(&[texts[2].as_str()]).unwrap();
    assert!(alone[0].iter().zip(v[2]).all(|(a, b)| (a - b).abs() < 1e-5));
    let want_tokens: usize = texts
        .iter()
        .map(|t| shared_embedder().tokenize(t).unwrap().len())
        .sum();
    assert_eq!(res.usage.prompt_tokens as usize, want_tokens);

    let (s, b) = server
        .post(
            "/v1/embeddings",
            json!({"model": EMBEDDER, "input": texts[0], "encoding_format": "base64"}).to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    use base64::Engine as _;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b["data"][0]["embedding"].as_str().unwrap())
        .unwrap();
    let decoded: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    assert_eq!(&decoded, v[0]);

    let (s, b) = server
        .post(
            "/v1/embeddings",
            json!({"model": EMBEDDER, "input": "x ".repeat(2000)}).to_string(),
        )
        .await;
    assert_eq!(s, 400, "an over-long input is refused, not truncated: {b}");
    assert_eq!(b["error"]["param"], "input");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_time_limit_end_cleanly() {
    let server = TestServer::start(
        Some(shared_engine()),
        ServerConfig {
            request_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        },
    )
    .await;
    // End-of-sequence tokens banned, so only the time limit can end these.
    let body = |stream: bool| {
        json!({"model": MODEL, "stream": stream, "max_tokens": 4000, "logit_bias": {"0": -100, "2": -100},
            "messages": [{"role": "user", "content": "Write a long story."}]})
        .to_string()
    };
    let (s, b) = server.post("/v1/chat/completions", body(false)).await;
    assert_error(s, &b, 504, "timeout");

    let res = reqwest::Client::new()
        .post(format!("{}/v1/chat/completions", server.base))
        .body(body(true))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let text = res.text().await.unwrap();
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let err: Value = serde_json::from_str(events[events.len() - 2]).unwrap();
    assert_eq!(err["error"]["code"], "timeout", "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_closed_unless_an_origin_is_allowed() {
    let preflight = |base: String| async move {
        reqwest::Client::new()
            .request(
                reqwest::Method::OPTIONS,
                format!("{base}/v1/chat/completions"),
            )
            .header("origin", "https://shop.example")
            .header("access-control-request-method", "POST")
            .send()
            .await
            .unwrap()
    };
    let closed = TestServer::start(Some(shared_engine()), ServerConfig::default()).await;
    let res = preflight(closed.base.clone()).await;
    assert!(res.headers().get("access-control-allow-origin").is_none());

    let open = TestServer::start(
        Some(shared_engine()),
        ServerConfig {
            cors_origins: vec!["https://shop.example".parse().unwrap()],
            ..ServerConfig::default()
        },
    )
    .await;
    let res = preflight(open.base.clone()).await;
    assert_eq!(
        res.headers()["access-control-allow-origin"],
        "https://shop.example"
    );
    // The headers the OpenAI SDKs and clerk's own pages send pass the preflight, and a page can
    // read the conversation id clerk answers with.
    let asked = "authorization,content-type,x-stainless-os,x-clerk-session";
    let res = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/v1/chat/completions", open.base),
        )
        .header("origin", "https://shop.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", asked)
        .send()
        .await
        .unwrap();
    let allowed = res.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    for h in asked.split(',') {
        assert!(allowed.contains(h), "{allowed}");
    }
    let res = reqwest::Client::new()
        .get(format!("{}/v1/models", open.base))
        .header("origin", "https://shop.example")
        .send()
        .await
        .unwrap();
    let exposed = res.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(exposed.contains("x-clerk-conversation"), "{exposed}");

    // A keyless server (loopback only) is its machine's, not the pages its browser shows: a post
    // from another site (a "simple" request that needs no preflight) and a DNS name rebound to
    // 127.0.0.1 are refused before any handler runs; its own pages and allowed origins are not.
    let post = |base: String, headers: Vec<(&'static str, String)>| async move {
        let mut req = reqwest::Client::new()
            .post(format!("{base}/v1/embeddings"))
            .header("content-type", "text/plain")
            .body(r#"{"model":"x","input":"hi"}"#);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    let (status, body) = post(
        closed.base.clone(),
        vec![("origin", "https://evil.example".into())],
    )
    .await;
    assert_error(status, &body, 403, "permission_denied");
    let (status, body) = post(
        closed.base.clone(),
        vec![("host", "rebound.evil.example".into())],
    )
    .await;
    assert_error(status, &body, 403, "permission_denied");
    let models = |base: String, origin: String| async move {
        let res = reqwest::Client::new()
            .get(format!("{base}/v1/models"))
            .header("origin", origin)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        (status, res.json::<Value>().await.unwrap_or(Value::Null))
    };
    // Its own pages (the origin is the server itself) and an allowed origin are answered.
    let (status, body) = models(closed.base.clone(), closed.base.clone()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = models(open.base.clone(), "https://shop.example".into()).await;
    assert_eq!(status, 200, "{body}");
    // Another port of the same machine is another site; so is a page opened from a file.
    let port = closed
        .base
        .rsplit(':')
        .next()
        .unwrap()
        .parse::<u16>()
        .unwrap();
    let other = format!("http://127.0.0.1:{}", port.wrapping_add(1));
    for origin in [other, "http://localhost:3000".into(), "null".into()] {
        let (status, body) = models(closed.base.clone(), origin.clone()).await;
        assert_error(status, &body, 403, "permission_denied");
    }
}

/// The official Python client, as most users run it, against the same server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_openai_client_works() {
    let python = std::env::var("CLERK_TEST_PYTHON").expect(
        "CLERK_TEST_PYTHON is unset: run the tests through scripts/test.sh, which installs the \
         Python openai package into a virtual environment and points this at it",
    );
    let server = TestServer::default().await;
    let key = "sk-clerk-python-0123456789";
    let keyed = TestServer::start(
        Some(shared_engine()),
        ServerConfig {
            api_keys: vec![clerk::server::auth::ApiKey::parse(key).unwrap()],
            ..ServerConfig::default()
        },
    )
    .await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/openai_client.py");
    let base = format!("{}/v1", server.base);
    let keyed_base = format!("{}/v1", keyed.base);
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&base)
            .arg(MODEL)
            .arg(EMBEDDER)
            .arg(&keyed_base)
            .arg(key)
            .output()
            .expect("run python")
    })
    .await
    .unwrap();
    let log = format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python client failed:\n{log}");
    assert!(log.contains("all python client checks passed"), "{log}");
}

/// Sixteen concurrent streaming clients: all finish, every chunk parses, and the aggregate rate is
/// printed (the README quotes it). Bounded: 16 requests of 32 tokens, loopback only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixteen_concurrent_streams_all_complete() {
    let engine = load(|c| c.max_batch = 16);
    let server = TestServer::start(Some(engine), ServerConfig::default()).await;
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let client = server.client();
            tokio::spawn(async move {
                let req = CreateChatCompletionRequestArgs::default()
                    .model(MODEL)
                    .messages(vec![user(&format!(
                        "Tell me fact number {i} about the sea."
                    ))])
                    .temperature(0.0)
                    .max_tokens(32u32)
                    .stream_options(ChatCompletionStreamOptions {
                        include_usage: Some(true),
                        include_obfuscation: None,
                    })
                    .build()
                    .unwrap();
                let mut s = client.chat().create_stream(req).await.unwrap();
                let mut usage = None;
                let mut finished = false;
                while let Some(c) = s.next().await {
                    let c = c.expect("a well-formed chunk");
                    finished |= c.choices.iter().any(|c| c.finish_reason.is_some());
                    usage = usage.or(c.usage);
                }
                assert!(finished);
                usage.expect("usage").completion_tokens
            })
        })
        .collect();
    let mut tokens = 0;
    for t in tasks {
        tokens += t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "16 concurrent streams: {tokens} tokens in {secs:.2} s = {:.1} tokens/s aggregate",
        tokens as f64 / secs
    );
    assert!(tokens >= 16);
}

fn weather_tools() -> Vec<async_openai::types::chat::ChatCompletionTools> {
    use async_openai::types::chat::{ChatCompletionTool, ChatCompletionTools, FunctionObject};
    let f = |name: &str, description: &str, parameters: Value| {
        ChatCompletionTools::Function(ChatCompletionTool {
            function: FunctionObject {
                name: name.into(),
                description: Some(description.into()),
                parameters: Some(parameters),
                strict: Some(true),
            },
        })
    };
    vec![
        f(
            "get_weather",
            "The current weather in a city",
            json!({"type": "object", "properties": {
                "city": {"type": "string", "maxLength": 30},
                "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"], "additionalProperties": false}),
        ),
        f(
            "get_time",
            "The local time in a time zone",
            json!({"type": "object", "properties": {"tz": {"type": "string", "maxLength": 40}},
                "required": ["tz"], "additionalProperties": false}),
        ),
    ]
}

/// Checks a call against [`weather_tools`]' schemas; returns the parsed arguments.
fn check_weather_call(name: &str, arguments: &str) -> Value {
    let args: Value = serde_json::from_str(arguments)
        .unwrap_or_else(|e| panic!("arguments of {name} are not JSON ({e}): {arguments}"));
    let obj = args.as_object().expect("arguments are an object");
    match name {
        "get_weather" => {
            assert!(
                obj["city"]
                    .as_str()
                    .is_some_and(|c| c.chars().count() <= 30),
                "{args}"
            );
            assert!(
                ["celsius", "fahrenheit"].contains(&obj["unit"].as_str().unwrap()),
                "{args}"
            );
            assert_eq!(obj.len(), 2, "{args}");
        }
        "get_time" => {
            assert!(obj["tz"].is_string(), "{args}");
            assert_eq!(obj.len(), 1, "{args}");
        }
        other => panic!("called an undeclared function {other}"),
    }
    args
}

/// `tools` with `required`, a named function and `auto`, whole and streamed, a tool result on the
/// next turn, and `json_schema`, all through async-openai: constrained decoding means every call
/// and every JSON reply validates, whatever the small model would have written on its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tools_and_json_schema_through_async_openai() {
    use async_openai::types::chat::{
        ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
        ChatCompletionNamedToolChoice, ChatCompletionRequestAssistantMessageArgs,
        ChatCompletionRequestToolMessageArgs, ChatCompletionToolChoiceOption, ToolChoiceOptions,
    };
    use async_openai::types::chat::{
        FunctionCall, FunctionName, ResponseFormat, ResponseFormatJsonSchema,
    };

    let server = TestServer::default().await;
    let client = server.client();
    let question = "What is the weather in Paris right now?";
    let base = || {
        let mut b = CreateChatCompletionRequestArgs::default();
        b.model(MODEL)
            .messages(vec![user(question)])
            .tools(weather_tools())
            .temperature(0.0)
            .max_completion_tokens(120u32);
        b
    };

    // `required`, one call: a call to a declared function with valid arguments.
    let res = client
        .chat()
        .create(
            base()
                .tool_choice(ChatCompletionToolChoiceOption::Mode(
                    ToolChoiceOptions::Required,
                ))
                .parallel_tool_calls(false)
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let choice = &res.choices[0];
    assert_eq!(choice.finish_reason, Some(FinishReason::ToolCalls));
    assert!(choice.message.content.is_none());
    let calls = choice.message.tool_calls.as_ref().expect("tool_calls");
    assert_eq!(calls.len(), 1);
    let ChatCompletionMessageToolCalls::Function(call) = &calls[0] else {
        panic!("not a function call")
    };
    assert!(call.id.starts_with("call_"));
    check_weather_call(&call.function.name, &call.function.arguments);
    let first_call = call.clone();

    // A named function, streamed: OpenAI-style tool_calls deltas, then `tool_calls` as the reason.
    let mut stream = client
        .chat()
        .create_stream(
            base()
                .tool_choice(ChatCompletionToolChoiceOption::Function(
                    ChatCompletionNamedToolChoice {
                        function: FunctionName {
                            name: "get_time".into(),
                        },
                    },
                ))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    let (mut name, mut arguments, mut id, mut finish) = (String::new(), String::new(), None, None);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.expect("a well-formed chunk");
        for c in chunk.choices {
            for tc in c.delta.tool_calls.into_iter().flatten() {
                assert_eq!(tc.index, 0);
                id = id.or(tc.id);
                if let Some(f) = tc.function {
                    name.push_str(&f.name.unwrap_or_default());
                    arguments.push_str(&f.arguments.unwrap_or_default());
                }
            }
            assert!(c.delta.content.as_deref().unwrap_or("").is_empty());
            finish = finish.or(c.finish_reason);
        }
    }
    assert_eq!(name, "get_time");
    assert!(id.is_some_and(|i| i.starts_with("call_")));
    check_weather_call(&name, &arguments);
    assert_eq!(finish, Some(FinishReason::ToolCalls));

    // The tool's result on the next turn, under `auto`: either an answer or more valid calls.
    let assistant = ChatCompletionRequestAssistantMessageArgs::default()
        .tool_calls(vec![ChatCompletionMessageToolCalls::Function(
            ChatCompletionMessageToolCall {
                id: first_call.id.clone(),
                function: FunctionCall {
                    name: first_call.function.name.clone(),
                    arguments: first_call.function.arguments.clone(),
                },
            },
        )])
        .build()
        .unwrap();
    let result = ChatCompletionRequestToolMessageArgs::default()
        .tool_call_id(first_call.id.clone())
        .content("{\"city\": \"Paris\", \"temperature\": 18, \"sky\": \"cloudy\"}")
        .build()
        .unwrap();
    let res = client
        .chat()
        .create(
            base()
                .messages(vec![user(question), assistant.into(), result.into()])
                .tool_choice(ChatCompletionToolChoiceOption::Mode(
                    ToolChoiceOptions::Auto,
                ))
                .build()
                .unwrap(),
        )
        .await
        .unwrap();
    // A reply cut short by the token limit keeps the calls it finished (finish_reason
    // `length`); the one it was still writing is dropped, never returned as markup.
    let choice = &res.choices[0];
    match (&choice.message.tool_calls, choice.finish_reason) {
        (Some(calls), Some(FinishReason::ToolCalls | FinishReason::Length)) => {
            assert!(!calls.is_empty());
            assert!(choice.message.content.is_none());
            for c in calls {
                let ChatCompletionMessageToolCalls::Function(c) = c else {
                    panic!()
                };
                check_weather_call(&c.function.name, &c.function.arguments);
            }
        }
        (None, Some(FinishReason::Stop)) => {
            let text = choice.message.content.as_deref().unwrap_or("");
            assert!(!text.is_empty() && !text.starts_with('<'), "{text:?}");
        }
        (None, Some(FinishReason::Length)) => {}
        other => panic!("unexpected reply: {other:?}"),
    }

    // Parameters with `$defs`/`$ref`, as Pydantic writes them, resolve within the function's own
    // schema; raw HTTP here, since the test also needs `tool_choice: "none"` on a history of calls.
    let refs_tool = json!([{"type": "function", "function": {"name": "start_return",
        "parameters": {"type": "object", "$defs": {"Item": {"type": "object",
            "properties": {"sku": {"type": "string", "pattern": "^[0-9]{6}$"}},
            "required": ["sku"], "additionalProperties": false}},
            "properties": {"items": {"type": "array", "items": {"$ref": "#/$defs/Item"},
                "minItems": 1, "maxItems": 2}},
            "required": ["items"], "additionalProperties": false}}}]);
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "temperature": 0, "max_tokens": 80, "tools": refs_tool,
                "messages": [{"role": "user", "content": "Return item 123456 please."}],
                "tool_choice": {"type": "function", "function": {"name": "start_return"}}})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    let call = &b["choices"][0]["message"]["tool_calls"][0]["function"];
    let args: Value = serde_json::from_str(call["arguments"].as_str().unwrap()).unwrap();
    let items = args["items"].as_array().unwrap();
    assert!((1..=2).contains(&items.len()), "{args}");
    for it in items {
        let sku = it["sku"].as_str().unwrap();
        assert!(
            sku.len() == 6 && sku.bytes().all(|c| c.is_ascii_digit()),
            "{args}"
        );
    }
    let (s, b) = server
        .post(
            "/v1/chat/completions",
            json!({"model": MODEL, "temperature": 0, "max_tokens": 20, "tools": refs_tool,
                "tool_choice": "none",
                "messages": [{"role": "user", "content": "Return item 123456 please."},
                    {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1",
                        "type": "function", "function": {"name": "start_return",
                        "arguments": "{\"items\": [{\"sku\": \"123456\"}]}"}}]},
                    {"role": "tool", "tool_call_id": "call_1", "content": "{\"return\": \"R-1\"}"}]})
            .to_string(),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert!(b["choices"][0]["message"]["tool_calls"].is_null(), "{b}");
    assert!(b["choices"][0]["message"]["content"].is_string(), "{b}");

    // `json_schema` with `strict`: the reply parses and validates, at a temperature where an
    // unconstrained 135M model rarely writes valid JSON.
    let schema = json!({"type": "object", "properties": {
        "product": {"type": "string", "maxLength": 40},
        "price": {"type": "integer", "minimum": 0, "maximum": 100000},
        "in_stock": {"type": "boolean"}},
        "required": ["product", "price", "in_stock"], "additionalProperties": false});
    for seed in 0..3 {
        let res = client
            .chat()
            .create(
                CreateChatCompletionRequestArgs::default()
                    .model(MODEL)
                    .messages(vec![user("Describe one product for sale as JSON.")])
                    .temperature(1.2)
                    .seed(seed)
                    .max_completion_tokens(150u32)
                    .response_format(ResponseFormat::JsonSchema {
                        json_schema: ResponseFormatJsonSchema {
                            name: "product".into(),
                            description: None,
                            schema: schema.clone(),
                            strict: Some(true),
                        },
                    })
                    .build()
                    .unwrap(),
            )
            .await
            .unwrap();
        let text = res.choices[0].message.content.clone().unwrap();
        assert_eq!(
            res.choices[0].finish_reason,
            Some(FinishReason::Stop),
            "{text}"
        );
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(v["product"].as_str().unwrap().chars().count() <= 40, "{v}");
        assert!((0..=100_000).contains(&v["price"].as_i64().unwrap()), "{v}");
        assert!(v["in_stock"].is_boolean(), "{v}");
        assert_eq!(v.as_object().unwrap().len(), 3, "{v}");
    }
}
