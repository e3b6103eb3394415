//! `POST /v1/completions`: legacy prompt completions.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use crate::engine::{Engine, FinishReason, TokenLogprob};
use crate::server::auth::{Caller, Scope};
use crate::server::error::ApiError;
use crate::server::extract::Json;
use crate::server::AppState;

use super::run::{self, finish_reason, Shape};
use super::types::{CompletionRequest, Prompt};

/// Prompts per request at most (each becomes `n` sequences).
const MAX_PROMPTS: usize = 16;

pub async fn handler(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<CompletionRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let engine = state.engine(&req.model)?;
    let logprobs = match req.logprobs {
        None => None,
        Some(k) if (0..=20).contains(&k) => Some(k as usize),
        Some(_) => {
            return Err(ApiError::invalid(
                "logprobs",
                "`logprobs` must be between 0 and 20",
            ))
        }
    };
    if req.suffix.as_ref().is_some_and(|s| !s.is_empty()) {
        return Err(ApiError::invalid(
            "suffix",
            "`suffix` (insertion) is not supported",
        ));
    }
    if req.echo && logprobs.is_some() {
        // Scoring a prompt this way needs every prompt token's logprob, which the engine does
        // not compute: refused rather than answered with the completion's logprobs alone.
        return Err(ApiError::invalid(
            "echo",
            "`echo` with `logprobs` would need the prompt tokens' logprobs, which clerk does not \
             compute; ask for one or the other",
        ));
    }
    let mut plan = req.sampling.plan(logprobs, state.config.max_n)?;
    if req.sampling.max_tokens.is_none() && req.sampling.max_completion_tokens.is_none() {
        // OpenAI's default for this endpoint (chat's is the rest of the context).
        plan.max_tokens = Some(16);
    }
    let prompts = tokenize(&engine, req.prompt)
        .await
        .map_err(about_the_prompt)?;
    if prompts.is_empty() || prompts.len() > MAX_PROMPTS {
        return Err(ApiError::invalid(
            "prompt",
            format!("`prompt` must hold between 1 and {MAX_PROMPTS} prompts"),
        ));
    }
    if plan.n * prompts.len() > state.config.max_n {
        return Err(ApiError::invalid(
            "n",
            format!(
                "`n` times the number of prompts must be at most {}",
                state.config.max_n
            ),
        ));
    }
    let echo = req
        .echo
        .then(|| prompts.iter().map(|(text, _)| text.clone()).collect());
    let ids = prompts.into_iter().map(|(_, ids)| ids).collect();
    run::answer(&state, &engine, Legacy, "cmpl-", ids, &plan, echo)
        .await
        .map_err(about_the_prompt)
}

/// The shared errors name `messages`, chat's field; here the text is `prompt`.
fn about_the_prompt(e: ApiError) -> ApiError {
    match e {
        ApiError::ContextOverflow {
            context_length,
            prompt_tokens,
            max_tokens,
            total,
        } => ApiError::InvalidRequest {
            message: format!(
                "This model's maximum context length is {context_length} tokens. However, you \
                 requested {total} tokens ({prompt_tokens} in the prompt, {max_tokens} in the \
                 completion). Please reduce the length of the prompt or completion."
            ),
            param: Some("prompt".into()),
            code: Some("context_length_exceeded"),
        },
        ApiError::InvalidRequest {
            message,
            param: Some(p),
            code,
        } if p == "messages" => ApiError::InvalidRequest {
            message,
            param: Some("prompt".into()),
            code,
        },
        other => other,
    }
}

/// Each prompt as (its text, its token ids).
async fn tokenize(engine: &Engine, prompt: Prompt) -> Result<Vec<(String, Vec<u32>)>, ApiError> {
    let e = engine.clone();
    tokio::task::spawn_blocking(move || {
        let tok = e.tokenizer();
        let from_text = |t: String| -> Result<(String, Vec<u32>), ApiError> {
            let ids = tok.encode(&t, true)?;
            Ok((t, ids))
        };
        let from_ids = |ids: Vec<u32>| -> Result<(String, Vec<u32>), ApiError> {
            let text = tok.decode(&ids, false)?;
            Ok((text, ids))
        };
        match prompt {
            Prompt::Text(t) => Ok(vec![from_text(t)?]),
            Prompt::Texts(ts) => ts.into_iter().map(from_text).collect(),
            Prompt::Tokens(ids) => Ok(vec![from_ids(ids)?]),
            Prompt::TokenLists(l) => l.into_iter().map(from_ids).collect(),
        }
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?
}

struct Legacy;

impl Shape for Legacy {
    fn objects(&self) -> (&'static str, &'static str) {
        ("text_completion", "text_completion")
    }

    fn opening(&self, _index: usize) -> Option<Value> {
        None
    }

    fn delta(&self, index: usize, text: &str, logprobs: Option<Value>) -> Value {
        json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": null })
    }

    fn closing(&self, index: usize, reason: FinishReason) -> Value {
        json!({ "index": index, "text": "", "logprobs": null, "finish_reason": finish_reason(reason) })
    }

    fn whole(
        &self,
        index: usize,
        text: String,
        logprobs: Option<Value>,
        reason: FinishReason,
    ) -> Value {
        json!({ "index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason(reason) })
    }

    fn logprobs(&self, engine: &Engine, tokens: &[(u32, TokenLogprob)], offset: usize) -> Value {
        let decode = |id: u32| engine.tokenizer().decode(&[id], false).unwrap_or_default();
        let mut text_offset = Vec::with_capacity(tokens.len());
        let mut at = offset;
        let mut strings = Vec::with_capacity(tokens.len());
        for (id, _) in tokens {
            let s = decode(*id);
            text_offset.push(at);
            at += s.len();
            strings.push(s);
        }
        let top: Vec<BTreeMap<String, f32>> = tokens
            .iter()
            .map(|(_, lp)| lp.top.iter().map(|&(t, l)| (decode(t), l)).collect())
            .collect();
        json!({
            "tokens": strings,
            "token_logprobs": tokens.iter().map(|(_, lp)| lp.logprob).collect::<Vec<_>>(),
            "top_logprobs": top,
            "text_offset": text_offset,
        })
    }
}
