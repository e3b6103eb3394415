//! `POST /v1/chat/completions`.

use std::sync::Mutex;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{json, Value};

use crate::engine::{Engine, FinishReason, Grammar, TokenLogprob};
use crate::server::auth::{Caller, Scope};
use crate::server::error::ApiError;
use crate::server::extract::Json;
use crate::server::AppState;

use super::run::{self, finish_reason, Shape};
use super::tools::{
    finished_calls, message_with_calls, parse_calls, written_history, Piece, StreamParser, ToolSet,
};
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
    let mut plan = req.sampling.plan(req.logprobs()?, state.config.max_n)?;
    let mut messages = req.engine_messages()?;
    let tools = ToolSet::parse(
        req.tools.as_deref(),
        req.tool_choice.as_ref(),
        req.parallel_tool_calls,
    )?;
    let format = match &req.response_format {
        Some(f) => f.schema()?,
        None => None,
    };
    // Only a template that writes Hermes calls itself renders tools natively; for any other the
    // tools are described in the system message and earlier calls written out, since the grammar
    // makes the model write Hermes calls whatever its template says.
    let native = engine
        .template()
        .is_some_and(|t| t.writes_hermes_tool_calls());
    if !native {
        messages = written_history(messages);
    }
    let mut template_tools = None;
    match &tools {
        Some(t) => {
            plan.grammar = Some(t.grammar(format.as_ref()));
            plan.grammar_param = "tools";
            if native {
                template_tools = Some(t.raw.clone());
            } else {
                messages = t.prepare(messages);
            }
        }
        None => plan.grammar = format.map(Grammar::JsonSchema),
    }
    // Rendering and tokenizing a long conversation is CPU work: keep it off the async runtime.
    let e = engine.clone();
    let prompt =
        tokio::task::spawn_blocking(move || e.chat_prompt(&messages, template_tools.as_ref()))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))??;
    let n = plan.n;
    run::answer(
        &state,
        &engine,
        Chat::new(tools.as_ref().map(ToolSet::names), n),
        "chatcmpl-",
        vec![prompt],
        &plan,
        None,
    )
    .await
}

/// Chat's choices; with tools, each choice's text is parsed into calls.
struct Chat {
    /// The declared functions' names when tools are callable.
    tools: Option<Vec<String>>,
    streams: Mutex<Vec<ToolStream>>,
}

/// One streamed choice under tools: its parser, and the logprobs of text it holds back (they go
/// out with that text; calls carry none, as at OpenAI).
struct ToolStream {
    parser: StreamParser,
    logprobs: Vec<Value>,
}

impl Chat {
    fn new(tools: Option<Vec<String>>, n: usize) -> Self {
        let streams = match &tools {
            Some(names) => (0..n)
                .map(|_| ToolStream {
                    parser: StreamParser::new(names.clone()),
                    logprobs: Vec::new(),
                })
                .collect(),
            None => Vec::new(),
        };
        Self {
            tools,
            streams: Mutex::new(streams),
        }
    }

    fn with_stream<T>(&self, index: usize, f: impl FnOnce(&mut ToolStream) -> T) -> Option<T> {
        let mut streams = self.streams.lock().ok()?;
        streams.get_mut(index).map(f)
    }
}

fn tool_delta(index: usize, call: Value) -> Value {
    json!({
        "index": index,
        "delta": { "tool_calls": [call] },
        "logprobs": null,
        "finish_reason": null,
    })
}

fn token_entry(engine: &Engine, id: u32, logprob: f32) -> Value {
    let text = engine.tokenizer().decode(&[id], false).unwrap_or_default();
    let bytes = engine.tokenizer().bytes_of(id);
    json!({ "token": text, "logprob": logprob, "bytes": bytes })
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

    fn stream_piece(&self, index: usize, text: &str, logprobs: Option<Value>) -> Vec<Value> {
        if self.tools.is_none() {
            return vec![self.delta(index, text, logprobs)];
        }
        self.with_stream(index, |st| {
            if let Some(Value::Array(entries)) = logprobs.map(|mut l| l["content"].take()) {
                st.logprobs.extend(entries);
            }
            let mut out = Vec::new();
            for piece in st.parser.push(text) {
                match piece {
                    Piece::Text(t) => {
                        let lp = (!st.logprobs.is_empty()).then(|| {
                            json!({ "content": std::mem::take(&mut st.logprobs), "refusal": null })
                        });
                        out.push(self.delta(index, &t, lp));
                    }
                    Piece::Call(c) => {
                        st.logprobs.clear();
                        out.push(tool_delta(index, c));
                    }
                }
            }
            out
        })
        .unwrap_or_default()
    }

    fn stream_end(&self, index: usize, reason: FinishReason) -> Vec<Value> {
        if self.tools.is_none() {
            return vec![self.closing(index, reason)];
        }
        let (rest, called, logprobs) = self
            .with_stream(index, |st| {
                let lp = (!st.logprobs.is_empty()).then(
                    || json!({ "content": std::mem::take(&mut st.logprobs), "refusal": null }),
                );
                (st.parser.finish(), st.parser.called(), lp)
            })
            .unwrap_or_default();
        // A reply cut short after some calls drops the call it was still writing, as a whole
        // reply does; held-back text keeps its logprobs.
        let rest = rest.filter(|_| !(called && reason == FinishReason::Length));
        let mut out: Vec<Value> = rest
            .iter()
            .map(|t| self.delta(index, t, logprobs.clone()))
            .collect();
        let mut last = self.closing(index, reason);
        if called && reason == FinishReason::Stop {
            last["finish_reason"] = json!("tool_calls");
        }
        out.push(last);
        out
    }

    fn whole(
        &self,
        index: usize,
        text: String,
        logprobs: Option<Value>,
        reason: FinishReason,
    ) -> Value {
        if let Some(names) = &self.tools {
            let calls = match reason {
                FinishReason::Stop => parse_calls(&text, names),
                FinishReason::Length => finished_calls(&text, names),
            };
            if let Some(calls) = calls {
                let finish = match reason {
                    FinishReason::Stop => "tool_calls",
                    other => finish_reason(other),
                };
                return json!({
                    "index": index,
                    "message": message_with_calls(&calls),
                    "logprobs": logprobs,
                    "finish_reason": finish,
                });
            }
        }
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
