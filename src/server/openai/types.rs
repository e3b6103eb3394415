//! OpenAI request bodies as clients send them, and their validation into engine types.
//!
//! Fields clerk does not know are ignored (serde's default), as OpenAI-compatible servers do, so a
//! newer SDK's extra fields never break a request.

use std::collections::HashMap;

use serde::Deserialize;

use crate::engine::template::{FunctionCall, ToolCall};
use crate::engine::{ChatMessage, Grammar, Role, SamplingParams};
use crate::server::error::ApiError;

use super::tools::ResponseFormat;

/// Sampling fields shared by chat and legacy completions (OpenAI's, plus `top_k`, `min_p` and
/// `repetition_penalty` as the extra fields vLLM and llama.cpp's server also take).
#[derive(Debug, Default, Deserialize)]
pub struct Sampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub presence_penalty: Option<f32>,
    pub repetition_penalty: Option<f32>,
    pub seed: Option<i64>,
    pub stop: Option<Stop>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub n: Option<i64>,
    pub logit_bias: Option<HashMap<String, f32>>,
    #[serde(default)]
    pub stream: Option<bool>,
    pub stream_options: Option<StreamOptions>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Stop {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// What a validated request asks of the engine, per choice.
#[derive(Debug, Clone)]
pub struct Plan {
    pub sampling: SamplingParams,
    pub max_tokens: Option<usize>,
    pub stop: Vec<String>,
    pub n: usize,
    pub stream: bool,
    pub include_usage: bool,
    /// Set by `response_format` or by tools: what every choice must match.
    pub grammar: Option<Grammar>,
    /// The parameter a grammar that does not compile is blamed on.
    pub grammar_param: &'static str,
}

impl Sampling {
    /// Checks every field and builds the engine's parameters. `logprobs` is the number of
    /// alternatives wanted (None: no logprobs).
    pub fn plan(&self, logprobs: Option<usize>, max_n: usize) -> Result<Plan, ApiError> {
        let max_tokens = match self.max_completion_tokens.or(self.max_tokens) {
            None => None,
            Some(m) if m >= 1 => Some(usize::try_from(m).unwrap_or(usize::MAX)),
            Some(_) => {
                let p = if self.max_completion_tokens.is_some() {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                return Err(ApiError::invalid(p, format!("`{p}` must be at least 1")));
            }
        };
        let n = match self.n {
            None => 1,
            Some(n) if n >= 1 && n as usize <= max_n => n as usize,
            Some(_) => {
                return Err(ApiError::invalid(
                    "n",
                    format!("`n` must be between 1 and {max_n}"),
                ))
            }
        };
        let top_k = match self.top_k {
            None => 0,
            Some(k) if k >= 0 => k as usize,
            Some(_) => return Err(ApiError::invalid("top_k", "`top_k` must be 0 or more")),
        };
        let stop = match &self.stop {
            None => Vec::new(),
            Some(Stop::One(s)) => vec![s.clone()],
            Some(Stop::Many(v)) => v.clone(),
        };
        if stop.len() > 16 || stop.iter().any(|s| s.is_empty() || s.len() > 256) {
            return Err(ApiError::invalid(
                "stop",
                "`stop` takes at most 16 non-empty strings of at most 256 bytes",
            ));
        }
        let mut logit_bias = Vec::new();
        for (k, v) in self.logit_bias.iter().flatten() {
            let id = k.parse::<u32>().map_err(|_| {
                ApiError::invalid(
                    "logit_bias",
                    format!("`logit_bias` keys are token ids; `{k}` is not one"),
                )
            })?;
            logit_bias.push((id, *v));
        }
        if logit_bias.len() > 1024 {
            return Err(ApiError::invalid(
                "logit_bias",
                "`logit_bias` takes at most 1024 tokens",
            ));
        }
        logit_bias.sort_by_key(|(id, _)| *id);
        let sampling = SamplingParams {
            // OpenAI's defaults, so a client that sends nothing gets what it would get there.
            temperature: self.temperature.unwrap_or(1.0),
            top_k,
            top_p: self.top_p.unwrap_or(1.0),
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed.map(|s| s as u64),
            logprobs,
        };
        let stream = self.stream.unwrap_or(false);
        Ok(Plan {
            sampling,
            max_tokens,
            stop,
            n,
            stream,
            include_usage: stream
                && self
                    .stream_options
                    .as_ref()
                    .is_some_and(|o| o.include_usage),
            grammar: None,
            grammar_param: "response_format",
        })
    }
}

#[derive(Debug, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: String,
    pub messages: Vec<InMessage>,
    #[serde(flatten)]
    pub sampling: Sampling,
    pub logprobs: Option<bool>,
    pub top_logprobs: Option<i64>,
    pub tools: Option<Vec<serde_json::Value>>,
    pub tool_choice: Option<serde_json::Value>,
    pub parallel_tool_calls: Option<bool>,
    pub response_format: Option<ResponseFormat>,
    /// OpenAI's free-form metadata; the model `clerk` reads `conversation_id` from it.
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InRole {
    System,
    Developer,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Deserialize)]
pub struct InMessage {
    pub role: InRole,
    #[serde(default)]
    pub content: Option<Content>,
    pub name: Option<String>,
    pub tool_calls: Option<Vec<InToolCall>>,
    pub tool_call_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct InToolCall {
    pub id: String,
    pub function: InFunctionCall,
}

#[derive(Debug, Deserialize)]
pub struct InFunctionCall {
    pub name: String,
    pub arguments: String,
}

impl Content {
    /// The text of a message; parts are joined in order. Non-text parts are refused, not dropped.
    pub fn text(&self, param: &str) -> Result<String, ApiError> {
        match self {
            Content::Text(s) => Ok(s.clone()),
            Content::Parts(parts) => {
                let mut out = String::new();
                for (i, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => out.push_str(t),
                        ("text", None) => {
                            return Err(ApiError::invalid(
                                format!("{param}[{i}].text"),
                                "a text part needs `text`",
                            ))
                        }
                        (other, _) => {
                            return Err(ApiError::invalid(
                                format!("{param}[{i}].type"),
                                format!(
                                    "content parts of type `{other}` are not supported; send text"
                                ),
                            ))
                        }
                    }
                }
                Ok(out)
            }
        }
    }
}

impl ChatCompletionRequest {
    /// The messages as the engine's chat template takes them.
    pub fn engine_messages(&self) -> Result<Vec<ChatMessage>, ApiError> {
        if self.messages.is_empty() {
            return Err(ApiError::invalid(
                "messages",
                "`messages` must not be empty",
            ));
        }
        self.messages
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let param = format!("messages[{i}].content");
                let content = match &m.content {
                    Some(c) => c.text(&param)?,
                    None if m.role == InRole::Assistant && m.tool_calls.is_some() => String::new(),
                    None => return Err(ApiError::invalid(param, "a message needs `content`")),
                };
                let role = match m.role {
                    InRole::System | InRole::Developer => Role::System,
                    InRole::User => Role::User,
                    InRole::Assistant => Role::Assistant,
                    InRole::Tool => Role::Tool,
                };
                if role == Role::Tool && m.tool_call_id.is_none() {
                    return Err(ApiError::invalid(
                        format!("messages[{i}].tool_call_id"),
                        "a tool message needs `tool_call_id`",
                    ));
                }
                let tool_calls = m.tool_calls.as_ref().map(|calls| {
                    calls
                        .iter()
                        .map(|c| ToolCall {
                            id: c.id.clone(),
                            kind: "function".into(),
                            function: FunctionCall {
                                name: c.function.name.clone(),
                                // Templates iterate or `tojson` the arguments; keep the string when it
                                // isn't JSON rather than refusing the conversation.
                                arguments: serde_json::from_str(&c.function.arguments)
                                    .unwrap_or_else(|_| {
                                        serde_json::Value::String(c.function.arguments.clone())
                                    }),
                            },
                        })
                        .collect()
                });
                Ok(ChatMessage {
                    role,
                    content,
                    name: m.name.clone(),
                    tool_calls,
                    tool_call_id: m.tool_call_id.clone(),
                })
            })
            .collect()
    }

    /// Number of alternatives per token, when logprobs are asked for.
    pub fn logprobs(&self) -> Result<Option<usize>, ApiError> {
        match (self.logprobs.unwrap_or(false), self.top_logprobs) {
            (false, None) => Ok(None),
            (false, Some(_)) => Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` needs `logprobs: true`",
            )),
            (true, None) => Ok(Some(0)),
            (true, Some(k)) if (0..=20).contains(&k) => Ok(Some(k as usize)),
            (true, Some(_)) => Err(ApiError::invalid(
                "top_logprobs",
                "`top_logprobs` must be between 0 and 20",
            )),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Legacy logprobs: the number of alternatives (0..=5 at OpenAI; up to 20 here).
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    pub suffix: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Prompt {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

impl InMessage {
    /// The message's text (a string, or its text parts joined).
    pub fn text(&self) -> Result<String, ApiError> {
        match &self.content {
            Some(c) => c.text("messages.content"),
            None => Ok(String::new()),
        }
    }
}
