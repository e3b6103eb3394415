//! `POST /v1/chat/completions`.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use crate::engine::{Engine, FinishReason, TokenLogprob};
use crate::server::auth::{Caller, Scope};
use crate::server::error::ApiError;
use crate::server::extract::Json;
use crate::server::AppState;

use super::run::{self, finish_reason, Shape};
use super::types::ChatCompletionRequest;

pub async fn handler(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(req): Json<ChatCompletionRequest>,
) -> Result<Response, ApiError> {
    if req.model == super::assistant::MODEL {
        return super::assistant::handle(state, headers, req).await;
    }
    // A widget key sits in a public page: it reaches the assistant, not the raw model.
    caller.require(Scope::Staff)?;
    let engine = state.engine(&req.model)?;
    req.check_unsupported()?;
    let plan = req.sampling.plan(req.logprobs()?, state.config.max_n)?;
    let messages = req.engine_messages()?;
    // Rendering and tokenizing a long conversation is CPU work: keep it off the async runtime.
    let e = engine.clone();
    let prompt = tokio::task::spawn_blocking(move || e.chat_prompt(&messages, None))
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))??;
    run::answer(
        &state,
        &engine,
        Chat,
        "chatcmpl-",
        vec![prompt],
        &plan,
        None,
    )
    .await
}

struct Chat;

fn token_entry(engine: &Engine, id: u32, logprob: f32) -> Value {
    let text = engine.tokenizer().decode(&[id], false).unwrap_or_default();
    json!({ "token": text, "logprob": logprob, "bytes": text.as_bytes() })
}

impl Shape for Chat {
    fn objects(&self) -> (&'static str, &'static str) {
        ("chat.completion", "chat.completion.chunk")
    }

    fn opening(&self, index: usize) -> Option<Value> {
        Some(json!({
            "index": index,
            "delta": { "role": "assistant", "content": "" },
            "logprobs": null,
            "finish_reason": null,
        }))
    }

    fn delta(&self, index: usize, text: &str, logprobs: Option<Value>) -> Value {
        json!({
            "index": index,
            "delta": { "content": text },
            "logprobs": logprobs,
            "finish_reason": null,
        })
    }

    fn closing(&self, index: usize, reason: FinishReason) -> Value {
        json!({
            "index": index,
            "delta": {},
            "logprobs": null,
            "finish_reason": finish_reason(reason),
        })
    }

    fn whole(
        &self,
        index: usize,
        text: String,
        logprobs: Option<Value>,
        reason: FinishReason,
    ) -> Value {
        json!({
            "index": index,
            "message": { "role": "assistant", "content": text, "refusal": null },
            "logprobs": logprobs,
            "finish_reason": finish_reason(reason),
        })
    }

    fn logprobs(&self, engine: &Engine, tokens: &[(u32, TokenLogprob)], _offset: usize) -> Value {
        let content: Vec<Value> = tokens
            .iter()
            .map(|(id, lp)| {
                let mut entry = token_entry(engine, *id, lp.logprob);
                entry["top_logprobs"] = lp
                    .top
                    .iter()
                    .map(|&(t, l)| token_entry(engine, t, l))
                    .collect();
                entry
            })
            .collect();
        json!({ "content": content, "refusal": null })
    }
}
