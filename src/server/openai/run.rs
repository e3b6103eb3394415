//! Runs a request's choices on the engine and shapes the results, whole or as a server-sent-event
//! stream. Chat and legacy completions differ only in how a choice is written ([`Shape`]).
//!
//! A stream is driven by its own task that owns the engine's [`Generation`]s. When the client goes
//! away the response body (the receiving end) is dropped, the task sees its sender close at once, and
//! returning drops the generations, which cancels them in the engine before its next step.

use std::convert::Infallible;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, BoxStream, SelectAll, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;

use crate::engine::{
    Done, Engine, EngineError, Event, FinishReason, GenerateRequest, Generation, TokenLogprob,
    Usage,
};
use crate::server::error::ApiError;
use crate::server::AppState;

use super::types::Plan;

/// How one API writes its choices.
pub trait Shape: Send + Sync + 'static {
    /// `object` of a whole response and of a stream chunk.
    fn objects(&self) -> (&'static str, &'static str);
    /// The first chunk of a choice in a stream (chat sends the role), if any.
    fn opening(&self, index: usize) -> Option<Value>;
    /// A stream chunk's choice carrying new text.
    fn delta(&self, index: usize, text: &str, logprobs: Option<Value>) -> Value;
    /// The last chunk of a choice in a stream.
    fn closing(&self, index: usize, reason: FinishReason) -> Value;
    /// What a piece of generated text becomes in a stream: by default one delta; a shape that
    /// parses the text (tool calls) may hold it back or turn it into something else.
    fn stream_piece(&self, index: usize, text: &str, logprobs: Option<Value>) -> Vec<Value> {
        vec![self.delta(index, text, logprobs)]
    }
    /// The end of a choice in a stream: whatever was held back, then the closing chunk.
    fn stream_end(&self, index: usize, reason: FinishReason) -> Vec<Value> {
        vec![self.closing(index, reason)]
    }
    /// A whole choice in a non-streaming response.
    fn whole(
        &self,
        index: usize,
        text: String,
        logprobs: Option<Value>,
        reason: FinishReason,
    ) -> Value;
    /// Logprobs of some tokens in this API's format; `offset` is the text length before them.
    fn logprobs(&self, engine: &Engine, tokens: &[(u32, TokenLogprob)], offset: usize) -> Value;
}

pub fn finish_reason(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// `prefix-` and 24 random letters and digits: unique enough for response ids, no crate needed.
pub fn random_id(prefix: &str) -> String {
    use std::hash::{BuildHasher, Hasher};
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut out = String::from(prefix);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    let mut x = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(x);
    let mut y = h2.finish();
    for i in 0..24 {
        let v = if i < 12 { &mut x } else { &mut y };
        out.push(ALPHABET[(*v % ALPHABET.len() as u64) as usize] as char);
        *v /= ALPHABET.len() as u64;
    }
    out
}

/// One prompt's engine requests: `plan.n` choices, each with its own seed so they differ.
fn submit(engine: &Engine, prompt: Vec<u32>, plan: &Plan) -> Result<Vec<Generation>, ApiError> {
    (0..plan.n)
        .map(|i| {
            let mut sampling = plan.sampling.clone();
            sampling.seed = sampling.seed.map(|s| s.wrapping_add(i as u64));
            engine
                .submit(GenerateRequest {
                    prompt: prompt.clone(),
                    sampling,
                    max_tokens: plan.max_tokens,
                    stop: plan.stop.clone(),
                    ignore_eos: false,
                    grammar: plan.grammar.clone(),
                })
                .map_err(|e| match e {
                    EngineError::Grammar(m) => {
                        ApiError::invalid(plan.grammar_param, super::tools::grammar_message(&m))
                    }
                    e => e.into(),
                })
        })
        .collect()
}

fn usage_json(u: &Usage) -> Value {
    json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": { "cached_tokens": u.cached_tokens },
    })
}

/// Adds one choice's usage to the request's: every choice of a prompt shares its prompt tokens,
/// which OpenAI counts once per prompt.
fn add_usage(total: &mut Usage, done: &Usage, first_of_prompt: bool) {
    if first_of_prompt {
        total.prompt_tokens += done.prompt_tokens;
        total.cached_tokens += done.cached_tokens;
    }
    total.completion_tokens += done.completion_tokens;
}

struct Envelope {
    id: String,
    created: u64,
    model: String,
}

impl Envelope {
    fn new(prefix: &str, model: &str) -> Self {
        Self {
            id: random_id(prefix),
            created: crate::clock::unix_now().max(0) as u64,
            model: model.to_string(),
        }
    }

    fn wrap(&self, object: &str, choices: Vec<Value>) -> Value {
        json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": concat!("clerk-", env!("CARGO_PKG_VERSION")),
            "choices": choices,
        })
    }
}

/// Choices grouped by prompt (`n` per prompt), in index order.
struct Choices {
    gens: Vec<Generation>,
    per_prompt: usize,
}

/// Submits `plan.n` choices for each prompt and answers whole or as a stream. `echo` holds prompt
/// texts to put before each prompt's choices (legacy completions).
pub async fn answer<S: Shape>(
    state: &AppState,
    engine: &Engine,
    shape: S,
    id_prefix: &str,
    prompts: Vec<Vec<u32>>,
    plan: &Plan,
    echo: Option<Vec<String>>,
) -> Result<Response, ApiError> {
    for ids in &prompts {
        state.record_prompt(ids.len());
    }
    let submit_all = {
        let (engine, plan) = (engine.clone(), plan.clone());
        move || -> Result<Vec<Generation>, ApiError> {
            let mut gens = Vec::with_capacity(prompts.len() * plan.n);
            for ids in prompts {
                gens.extend(submit(&engine, ids, &plan)?);
            }
            Ok(gens)
        }
    };
    // Compiling a grammar (and, the first time, indexing the vocabulary for it) is CPU work that
    // must not hold an async worker.
    let gens = if plan.grammar.is_some() {
        tokio::task::spawn_blocking(submit_all)
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??
    } else {
        submit_all()?
    };
    let env = Envelope::new(id_prefix, &engine.info().name);
    let choices = Choices {
        gens,
        per_prompt: plan.n,
    };
    if plan.stream {
        Ok(stream(
            state,
            engine,
            shape,
            env,
            choices,
            plan.include_usage,
            echo,
        ))
    } else {
        respond(state, engine, shape, env, choices, echo).await
    }
}

struct Collected {
    text: String,
    tokens: Vec<(u32, TokenLogprob)>,
    done: Done,
}

async fn collect(mut g: Generation) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut tokens = Vec::new();
    while let Some(ev) = g.next().await {
        match ev {
            Event::Token {
                id,
                text: t,
                logprob,
            } => {
                text.push_str(&t);
                if let Some(lp) = logprob {
                    tokens.push((id, lp));
                }
            }
            Event::Text(t) => text.push_str(&t),
            Event::Done(done) => return Ok(Collected { text, tokens, done }),
            Event::Error(e) => return Err(e.into()),
        }
    }
    Err(ApiError::ShuttingDown)
}

/// A whole (non-streaming) response. `echo` holds prompt texts to put before each choice's text.
async fn respond<S: Shape>(
    state: &AppState,
    engine: &Engine,
    shape: S,
    env: Envelope,
    choices: Choices,
    echo: Option<Vec<String>>,
) -> Result<Response, ApiError> {
    let timeout = state.config.request_timeout;
    let per_prompt = choices.per_prompt;
    let all = futures_util::future::try_join_all(choices.gens.into_iter().map(collect));
    // A shutdown's grace holds for whole responses as for streams: past it, the generations are
    // dropped (which cancels them) and the client told why, so the process can exit.
    let mut shutdown = state.shutdown.clone();
    let results = tokio::select! {
        r = tokio::time::timeout(timeout, all) => {
            r.map_err(|_| ApiError::Timeout(timeout.as_secs()))??
        }
        _ = shutdown.wait_for(|stop| *stop) => return Err(ApiError::ShuttingDown),
    };
    let mut usage = Usage::default();
    let mut out = Vec::with_capacity(results.len());
    for (i, c) in results.into_iter().enumerate() {
        state.metrics.record_generation(&c.done);
        add_usage(&mut usage, &c.done.usage, i % per_prompt == 0);
        let prefix = echo
            .as_ref()
            .map(|e| e[i / per_prompt].clone())
            .unwrap_or_default();
        let logprobs =
            (!c.tokens.is_empty()).then(|| shape.logprobs(engine, &c.tokens, prefix.len()));
        out.push(shape.whole(i, prefix + &c.text, logprobs, c.done.finish_reason));
    }
    let mut body = env.wrap(shape.objects().0, out);
    body["usage"] = usage_json(&usage);
    Ok(axum::Json(body).into_response())
}

type Tagged = BoxStream<'static, (usize, Event)>;

fn merged(gens: Vec<Generation>) -> SelectAll<Tagged> {
    stream::select_all(gens.into_iter().enumerate().map(|(i, g)| {
        stream::unfold(g, |mut g| async move { g.next().await.map(|ev| (ev, g)) })
            .map(move |ev| (i, ev))
            .boxed()
    }))
}

/// A streaming response: chunks as OpenAI sends them, then `[DONE]`.
fn stream<S: Shape>(
    state: &AppState,
    engine: &Engine,
    shape: S,
    env: Envelope,
    choices: Choices,
    include_usage: bool,
    echo: Option<Vec<String>>,
) -> Response {
    let (tx, rx) = mpsc::channel::<SseEvent>(64);
    let state = state.clone();
    let engine = engine.clone();
    tokio::spawn(async move {
        let per_prompt = choices.per_prompt;
        let n = choices.gens.len();
        let chunk_object = shape.objects().1;
        let chunk = |choices: Vec<Value>| {
            let mut v = env.wrap(chunk_object, choices);
            if include_usage {
                v["usage"] = Value::Null;
            }
            SseEvent::default().data(v.to_string())
        };
        let mut events = merged(choices.gens);
        let mut offsets = vec![0usize; n];
        let mut opening = Vec::new();
        for i in 0..n {
            if let Some(c) = shape.opening(i) {
                opening.push(chunk(vec![c]));
            }
            if let Some(e) = &echo {
                let text = &e[i / per_prompt];
                offsets[i] = text.len();
                opening.push(chunk(vec![shape.delta(i, text, None)]));
            }
        }
        let mut usage = Usage::default();
        let mut finished = 0;
        let deadline = tokio::time::sleep(state.config.request_timeout);
        tokio::pin!(deadline);
        let mut shutdown = state.shutdown.clone();
        for ev in opening {
            if tx.send(ev).await.is_err() {
                state.metrics.record_disconnect();
                return;
            }
        }
        let failure = loop {
            let next = tokio::select! {
                biased;
                _ = tx.closed() => {
                    state.metrics.record_disconnect();
                    return;
                }
                _ = &mut deadline => break Some(ApiError::Timeout(state.config.request_timeout.as_secs())),
                _ = shutdown.wait_for(|stop| *stop) => break Some(ApiError::ShuttingDown),
                ev = events.next() => ev,
            };
            let Some((i, ev)) = next else { break None };
            let out = match ev {
                Event::Token { id, text, logprob } => {
                    if text.is_empty() && logprob.is_none() {
                        continue;
                    }
                    let lp = logprob.map(|lp| shape.logprobs(&engine, &[(id, lp)], offsets[i]));
                    offsets[i] += text.len();
                    shape.stream_piece(i, &text, lp)
                }
                Event::Text(text) => {
                    offsets[i] += text.len();
                    shape.stream_piece(i, &text, None)
                }
                Event::Done(done) => {
                    state.metrics.record_generation(&done);
                    add_usage(&mut usage, &done.usage, i % per_prompt == 0);
                    finished += 1;
                    shape.stream_end(i, done.finish_reason)
                }
                Event::Error(e) => break Some(e.into()),
            };
            for choice in out {
                if tx.send(chunk(vec![choice])).await.is_err() {
                    state.metrics.record_disconnect();
                    return;
                }
            }
        };
        // Dropping the other generations here cancels them in the engine.
        drop(events);
        if let Some(e) = failure {
            tracing::warn!(error = %crate::server::error::redact(&e.to_string()), "stream ended early");
            let _ = tx
                .send(SseEvent::default().data(e.body().to_string()))
                .await;
        } else if include_usage && finished == n {
            let mut v = env.wrap(chunk_object, Vec::new());
            v["usage"] = usage_json(&usage);
            let _ = tx.send(SseEvent::default().data(v.to_string())).await;
        }
        let _ = tx.send(SseEvent::default().data("[DONE]")).await;
    });
    let body = stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|ev| (Ok::<_, Infallible>(ev), rx))
    });
    Sse::new(body).into_response()
}
