//! The model `clerk` on `/v1/chat/completions`: the shop's assistant behind OpenAI's chat API.
//!
//! Only the last user message is read; what the conversation already established lives on the
//! server under the conversation id, which the client sends as the `X-Clerk-Conversation` header
//! or `metadata.conversation_id` (both reachable from unmodified SDKs through their extra-header
//! and extra-body options) and gets back in every response, header and body.

use std::convert::Infallible;

use axum::http::{HeaderMap, HeaderValue};
use axum::response::sse::{Event as SseEvent, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream;
use serde_json::{json, Value};

use crate::assistant::{Assistant, AssistantError, Reply};
use crate::server::error::ApiError;
use crate::server::AppState;

use super::run::random_id;
use super::types::{ChatCompletionRequest, InRole};

pub const MODEL: &str = "clerk";
pub const HEADER: &str = "x-clerk-conversation";

impl From<AssistantError> for ApiError {
    fn from(e: AssistantError) -> Self {
        match e {
            AssistantError::Invalid { field, message } => ApiError::invalid(field, message),
            AssistantError::Shop(e) => e.into(),
            AssistantError::Retrieval(e) => e.into(),
            AssistantError::Embedding(e) => ApiError::Internal(e.to_string()),
            AssistantError::Prompts(m) | AssistantError::Data(m) | AssistantError::Model(m) => {
                ApiError::Internal(m)
            }
        }
    }
}

fn conversation_id(
    headers: &HeaderMap,
    req: &ChatCompletionRequest,
) -> Result<Option<String>, ApiError> {
    let from_header = headers
        .get(HEADER)
        .map(|v| {
            v.to_str().map(str::to_string).map_err(|_| {
                ApiError::invalid("X-Clerk-Conversation", "the conversation id must be ASCII")
            })
        })
        .transpose()?;
    let from_body = match req.metadata.as_ref().and_then(|m| m.get("conversation_id")) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            return Err(ApiError::invalid(
                "metadata.conversation_id",
                "`metadata.conversation_id` must be a string",
            ))
        }
    };
    let id = from_header.or(from_body).filter(|s| !s.trim().is_empty());
    if let Some(id) = &id {
        if !Assistant::is_conversation_id(id.trim()) {
            return Err(unknown_conversation());
        }
    }
    Ok(id)
}

/// The request's fields are checked as for any model (a `temperature` of 9 is as wrong here), and
/// what a turn can't give is refused, not dropped: the assistant writes one reply from the shop's
/// data, not sampled tokens, so it has no second choice, no logprobs and no tool calls. Sampling
/// settings that merely shape tokens (temperature, stop, max_tokens) have nothing to act on.
fn refuse_what_a_turn_cannot_honour(
    state: &AppState,
    req: &ChatCompletionRequest,
) -> Result<(), ApiError> {
    let plan = req.sampling.plan(req.logprobs()?, state.config.max_n)?;
    // No vocabulary to check token ids against: the ranges are what can be wrong.
    plan.sampling.validate(usize::MAX)?;
    let unsupported = |param: &str, what: &str| {
        Err(ApiError::invalid(
            param,
            format!("the model `{MODEL}` {what}"),
        ))
    };
    if plan.n != 1 {
        return unsupported("n", "gives one reply per turn; `n` must be 1");
    }
    if req.logprobs == Some(true) {
        return unsupported(
            "logprobs",
            "writes its replies from the shop's data, not sampled tokens, so it has no logprobs",
        );
    }
    if req.tools.as_ref().is_some_and(|t| !t.is_empty()) {
        return unsupported("tools", "acts on the shop itself and calls no client tools");
    }
    let format = match &req.response_format {
        Some(f) => f.schema()?,
        None => None,
    };
    if format.is_some() {
        return unsupported("response_format", "answers in text only");
    }
    Ok(())
}

fn unknown_conversation() -> ApiError {
    ApiError::invalid(
        "X-Clerk-Conversation",
        "unknown conversation id: the server makes them; leave it out to start a conversation \
         and send back the `conversation_id` each response returns",
    )
}

/// The newest user message's text: earlier turns, including any the client made up, are not read.
fn last_user_text(req: &ChatCompletionRequest) -> Result<String, ApiError> {
    let m = req
        .messages
        .iter()
        .rev()
        .find(|m| m.role == InRole::User)
        .ok_or_else(|| ApiError::invalid("messages", "`messages` must contain a user message"))?;
    m.text()
}

pub async fn handle(
    state: AppState,
    headers: HeaderMap,
    req: ChatCompletionRequest,
) -> Result<Response, ApiError> {
    let assistant = state.assistant()?.clone();
    refuse_what_a_turn_cannot_honour(&state, &req)?;
    let conversation = conversation_id(&headers, &req)?;
    let text = last_user_text(&req)?;
    let stream = req.sampling.stream.unwrap_or(false);
    let include_usage = stream
        && req
            .sampling
            .stream_options
            .as_ref()
            .is_some_and(|o| o.include_usage);
    let reply = tokio::task::spawn_blocking(move || -> Result<Reply, ApiError> {
        if let Some(id) = &conversation {
            if !assistant.knows(id)? {
                return Err(unknown_conversation());
            }
        }
        Ok(assistant.turn(conversation.as_deref(), &text)?)
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    let id = random_id("chatcmpl-");
    let created = crate::clock::unix_now().max(0) as u64;
    let header = HeaderValue::from_str(&reply.conversation_id).ok();
    let mut res = if stream {
        stream_reply(&id, created, &reply, include_usage)
    } else {
        axum::Json(whole(&id, created, &reply)).into_response()
    };
    if let Some(h) = header {
        res.headers_mut().insert(HEADER, h);
    }
    Ok(res)
}

fn extra(reply: &Reply) -> Value {
    json!({
        "intent": reply.intent,
        "language": reply.language,
        "handoff_id": reply.handoff,
        "silent": reply.silent,
        "verified": reply.verified,
        "awaiting_confirmation": reply.awaiting_confirmation,
        "message_id": reply.message_id,
        "cards": reply.cards,
    })
}

/// The assistant runs no model tokens for its replies: usage is zero, stated rather than guessed.
fn usage() -> Value {
    json!({ "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0 })
}

fn whole(id: &str, created: u64, reply: &Reply) -> Value {
    json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": MODEL,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": { "role": "assistant", "content": reply.text, "refusal": null },
            "logprobs": null,
            "finish_reason": "stop",
        }],
        "usage": usage(),
        "conversation_id": reply.conversation_id,
        "sources": reply.sources,
        "clerk": extra(reply),
    })
}

/// Pieces of about a few words, so a chat window shows the reply arriving.
fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    for (i, ch) in text.char_indices() {
        cur.push(ch);
        let boundary = ch.is_whitespace() && cur.chars().count() >= 16;
        let cjk = !ch.is_ascii() && cur.chars().count() >= 8;
        if boundary || cjk || i + ch.len_utf8() == text.len() {
            out.push(std::mem::take(&mut cur));
        }
    }
    out
}

fn stream_reply(id: &str, created: u64, reply: &Reply, include_usage: bool) -> Response {
    let chunk = |choices: Value, extra: Option<(&str, Value)>| {
        let mut v = json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": MODEL,
            "system_fingerprint": null,
            "choices": choices,
            "conversation_id": reply.conversation_id,
        });
        if include_usage {
            // As OpenAI does: every chunk has the field, null until the last.
            v["usage"] = Value::Null;
        }
        if let Some((k, x)) = extra {
            v[k] = x;
        }
        v
    };
    let mut events = vec![chunk(
        json!([{ "index": 0, "delta": { "role": "assistant", "content": "" }, "logprobs": null, "finish_reason": null }]),
        None,
    )];
    for p in pieces(&reply.text) {
        events.push(chunk(
            json!([{ "index": 0, "delta": { "content": p }, "logprobs": null, "finish_reason": null }]),
            None,
        ));
    }
    let mut last = chunk(
        json!([{ "index": 0, "delta": {}, "logprobs": null, "finish_reason": "stop" }]),
        Some(("sources", json!(reply.sources))),
    );
    last["clerk"] = extra(reply);
    events.push(last);
    if include_usage {
        events.push(chunk(json!([]), Some(("usage", usage()))));
    }
    let mut data: Vec<Result<SseEvent, Infallible>> = events
        .into_iter()
        .map(|v| Ok(SseEvent::default().data(v.to_string())))
        .collect();
    data.push(Ok(SseEvent::default().data("[DONE]")));
    Sse::new(stream::iter(data)).into_response()
}

#[cfg(test)]
mod tests {
    #[test]
    fn pieces_rebuild_the_text() {
        for text in [
            "Order #W1000005 is delivered. Items: Granite Peak Hiking Boots (brown, US 9).",
            "订单 #W1000005 的状态：delivered。",
            "",
            "x",
        ] {
            assert_eq!(super::pieces(text).concat(), text);
        }
    }
}
