//! Tool calling and structured output for `/v1/chat/completions`.
//!
//! A model calls a tool by writing the Hermes format that Qwen and many fine-tunes use:
//!
//! ```text
//! <tool_call>
//! {"name": "lookup_order", "arguments": {"order_id": "W123"}}
//! </tool_call>
//! ```
//!
//! The format is not hoped for: every request with tools generates under a grammar that allows only
//! calls to the declared functions with arguments valid against their schemas (`required` and a
//! named function), or either that or plain text (`auto`). The server turns the calls back into
//! OpenAI's `tool_calls`, whole or as stream deltas. A chat template that takes `tools` renders them
//! itself; for one that does not (SmolLM2's), the tools and the format are described in the system
//! message and earlier calls and results are written in the same format.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::engine::constraint::styled;
use crate::engine::template::{FunctionCall, ToolCall};
use crate::engine::{ChatMessage, Grammar, Role};
use crate::server::error::ApiError;

use super::run::random_id;

const OPEN: &str = "<tool_call>";
const CLOSE: &str = "</tool_call>";

#[derive(Debug, Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: String,
    pub json_schema: Option<JsonSchemaFormat>,
}

#[derive(Debug, Deserialize)]
pub struct JsonSchemaFormat {
    pub name: Option<String>,
    pub schema: Option<Value>,
    pub strict: Option<bool>,
}

impl ResponseFormat {
    /// The JSON schema a `response_format` asks the reply to match, in clerk's JSON style; None for
    /// plain text.
    pub fn schema(&self) -> Result<Option<Value>, ApiError> {
        match self.kind.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(styled(json!({ "type": "object" }), false))),
            "json_schema" => {
                let f = self.json_schema.as_ref().ok_or_else(|| {
                    ApiError::invalid(
                        "response_format.json_schema",
                        "`json_schema` is required when `type` is `json_schema`",
                    )
                })?;
                if f.name.as_deref().is_none_or(str::is_empty) {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.name",
                        "`json_schema.name` is required",
                    ));
                }
                let schema = f.schema.clone().unwrap_or_else(|| json!({}));
                if !schema.is_object() {
                    return Err(ApiError::invalid(
                        "response_format.json_schema.schema",
                        "`json_schema.schema` must be a JSON schema object",
                    ));
                }
                Ok(Some(styled(schema, f.strict.unwrap_or(false))))
            }
            other => Err(ApiError::invalid(
                "response_format.type",
                format!(
                    "`response_format.type` must be `text`, `json_object` or `json_schema`, not `{other}`"
                ),
            )),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct Tool {
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionDef,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FunctionDef {
    pub name: String,
    pub description: Option<String>,
    pub parameters: Option<Value>,
    pub strict: Option<bool>,
}

/// What `tool_choice` asks.
#[derive(Debug, Clone, PartialEq)]
pub enum Choice {
    None,
    Auto,
    Required,
    Named(String),
}

/// A request's tools, validated: what the grammar allows and what the prompt describes.
#[derive(Debug, Clone)]
pub struct ToolSet {
    pub tools: Vec<Tool>,
    /// The tools as the client sent them, for templates that render `tools` themselves.
    pub raw: Value,
    pub choice: Choice,
    pub parallel: bool,
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl ToolSet {
    /// Validates `tools`, `tool_choice` and `parallel_tool_calls`. None when no tool may be called
    /// (no tools, or `tool_choice: "none"`).
    pub fn parse(
        tools: Option<&[Value]>,
        choice: Option<&Value>,
        parallel: Option<bool>,
    ) -> Result<Option<Self>, ApiError> {
        let raw_tools = tools.unwrap_or_default();
        let mut parsed = Vec::with_capacity(raw_tools.len());
        for (i, t) in raw_tools.iter().enumerate() {
            let tool: Tool = serde_json::from_value(t.clone()).map_err(|e| {
                ApiError::invalid(format!("tools[{i}]"), format!("not a function tool: {e}"))
            })?;
            if tool.kind != "function" {
                return Err(ApiError::invalid(
                    format!("tools[{i}].type"),
                    "only tools of type `function` are supported",
                ));
            }
            if !valid_name(&tool.function.name) {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    "a function name is 1 to 64 letters, digits, `_` or `-`",
                ));
            }
            if parsed
                .iter()
                .any(|p: &Tool| p.function.name == tool.function.name)
            {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.name"),
                    format!("function `{}` is declared twice", tool.function.name),
                ));
            }
            if tool
                .function
                .parameters
                .as_ref()
                .is_some_and(|p| !p.is_object())
            {
                return Err(ApiError::invalid(
                    format!("tools[{i}].function.parameters"),
                    "`parameters` must be a JSON schema object",
                ));
            }
            parsed.push(tool);
        }
        let choice = match choice {
            None => {
                if parsed.is_empty() {
                    Choice::None
                } else {
                    Choice::Auto
                }
            }
            Some(Value::String(s)) => match s.as_str() {
                "none" => Choice::None,
                "auto" => Choice::Auto,
                "required" => Choice::Required,
                other => {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` must be `none`, `auto`, `required` or a named function, not `{other}`"),
                    ))
                }
            },
            Some(v) => {
                let name = v
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                    .filter(|_| v.get("type").and_then(Value::as_str) == Some("function"))
                    .ok_or_else(|| {
                        ApiError::invalid(
                            "tool_choice",
                            "a named `tool_choice` is {\"type\": \"function\", \"function\": {\"name\": …}}",
                        )
                    })?;
                if !parsed.iter().any(|t| t.function.name == name) {
                    return Err(ApiError::invalid(
                        "tool_choice",
                        format!("`tool_choice` names `{name}`, which is not in `tools`"),
                    ));
                }
                Choice::Named(name.to_string())
            }
        };
        if choice != Choice::None && parsed.is_empty() {
            return Err(ApiError::invalid(
                "tool_choice",
                "`tool_choice` needs `tools`",
            ));
        }
        if choice == Choice::None {
            return Ok(None);
        }
        Ok(Some(Self {
            raw: Value::Array(raw_tools.to_vec()),
            tools: parsed,
            choice,
            parallel: parallel.unwrap_or(true),
        }))
    }

    pub fn names(&self) -> Vec<String> {
        self.tools.iter().map(|t| t.function.name.clone()).collect()
    }

    /// The grammar every choice is generated under. `reply` is the `response_format` schema a
    /// non-call reply must match under `auto` (plain text when None).
    ///
    /// Each function gets its own rule and its own `%json` root, so `$ref`s in its parameters
    /// resolve against its own schema, as the client wrote them.
    pub fn grammar(&self, reply: Option<&Value>) -> Grammar {
        let callable: Vec<(usize, &Tool)> = self
            .tools
            .iter()
            .enumerate()
            .filter(|(_, t)| match &self.choice {
                Choice::Named(n) => &t.function.name == n,
                _ => true,
            })
            .collect();
        let mut rules = Vec::new();
        let alternatives: Vec<String> = callable.iter().map(|(i, _)| format!("fn_{i}")).collect();
        rules.push(format!(
            "call: {} ({}) {}",
            lark_string(&format!("{OPEN}\n")),
            alternatives.join(" | "),
            lark_string(&format!("\n{CLOSE}")),
        ));
        for (i, t) in &callable {
            let f = &t.function;
            let head = format!(
                "{{\"name\": {}, \"arguments\": ",
                Value::from(f.name.clone())
            );
            let params = f
                .parameters
                .clone()
                .unwrap_or_else(|| json!({ "type": "object" }));
            // serde_json writes a schema on one line, as `%json` inside a Lark rule needs.
            let params = styled(params, f.strict.unwrap_or(false));
            rules.push(format!("fn_{i}: {} args_{i} \"}}\"", lark_string(&head)));
            rules.push(format!("args_{i}: %json {params}"));
        }
        // A newline may follow the last call, as models trained on this format write one.
        rules.push(
            if self.parallel && !matches!(self.choice, Choice::Named(_)) {
                "calls: call (\"\\n\" call)* \"\\n\"?".to_string()
            } else {
                "calls: call \"\\n\"?".to_string()
            },
        );
        let start = match (&self.choice, reply) {
            (Choice::Auto, Some(schema)) => format!("start: calls | reply\nreply: %json {schema}"),
            // Text may not begin with `<` or a space, so a reply is all calls or all text and
            // nothing before a call escapes the grammar.
            (Choice::Auto, None) => "start: calls | TEXT\nTEXT: /[^<\\s][\\s\\S]*/".to_string(),
            _ => "start: calls".to_string(),
        };
        Grammar::Lark(format!("{start}\n{}\n", rules.join("\n")))
    }

    /// How the tools are described to a model whose template does not render them.
    fn instructions(&self) -> String {
        let mut s = String::from(
            "You can call functions to help answer. The functions, as JSON schemas:\n",
        );
        for t in &self.tools {
            let f = &t.function;
            let line = json!({
                "name": f.name,
                "description": f.description.clone().unwrap_or_default(),
                "parameters": f.parameters.clone().unwrap_or_else(|| json!({ "type": "object" })),
            });
            s.push_str(&line.to_string());
            s.push('\n');
        }
        s.push_str(&format!(
            "To call a function, reply with\n{OPEN}\n{{\"name\": \"<function name>\", \"arguments\": {{<arguments>}}}}\n{CLOSE}\n"
        ));
        match &self.choice {
            Choice::Required => s.push_str("You must call at least one function."),
            Choice::Named(n) => s.push_str(&format!("You must call `{n}`.")),
            _ => s.push_str("Otherwise answer in plain text."),
        }
        s
    }

    /// The conversation for a template that does not render tools: the tools are described in the
    /// system message (see [`written_history`] for the rest).
    pub fn prepare(&self, messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
        let mut messages = written_history(messages);
        let instructions = self.instructions();
        match messages.first_mut() {
            Some(m) if m.role == Role::System => {
                m.content = format!("{}\n\n{instructions}", m.content);
            }
            _ => messages.insert(0, ChatMessage::system(instructions)),
        }
        messages
    }
}

/// A Lark string literal for `s` (JSON's escapes, which Lark strings share).
fn lark_string(s: &str) -> String {
    Value::from(s).to_string()
}

/// Earlier calls and results for a template that knows no tools: calls written as the model writes
/// them, and each run of tool results as one user turn (templates that insist on alternating
/// turns refuse two user turns in a row).
pub fn written_history(messages: Vec<ChatMessage>) -> Vec<ChatMessage> {
    let mut out: Vec<ChatMessage> = Vec::with_capacity(messages.len());
    let mut last_was_tool = false;
    for mut m in messages {
        match m.role {
            Role::Assistant => {
                if let Some(calls) = m.tool_calls.take() {
                    let mut text = m.content.clone();
                    for c in calls {
                        if !text.is_empty() {
                            text.push('\n');
                        }
                        text.push_str(&format_call(&c.function));
                    }
                    m.content = text;
                }
            }
            Role::Tool => {
                let block = format!("<tool_response>\n{}\n</tool_response>", m.content);
                match out.last_mut() {
                    Some(prev) if last_was_tool => {
                        prev.content.push('\n');
                        prev.content.push_str(&block);
                    }
                    _ => out.push(ChatMessage::user(block)),
                }
                last_was_tool = true;
                continue;
            }
            Role::System | Role::User => {}
        }
        last_was_tool = false;
        out.push(m);
    }
    out
}

/// The part of a grammar engine error that speaks of the caller's schema, without the grammar text
/// clerk wrapped it in.
pub fn grammar_message(raw: &str) -> String {
    const SCHEMA: &str = "failed to compile JSON schema: ";
    match raw.find(SCHEMA) {
        Some(i) => {
            let tail = &raw[i + SCHEMA.len()..];
            let line = tail.lines().next().unwrap_or(tail).trim();
            format!("the schema can't be enforced: {line}")
        }
        None => raw.lines().next().unwrap_or(raw).trim().to_string(),
    }
}

fn format_call(f: &FunctionCall) -> String {
    let call = json!({ "name": f.name, "arguments": f.arguments });
    format!("{OPEN}\n{call}\n{CLOSE}")
}

/// One call as OpenAI returns it: arguments as a JSON string.
fn call_json(index: usize, call: &ToolCall) -> Value {
    json!({
        "index": index,
        "id": call.id,
        "type": "function",
        "function": {
            "name": call.function.name,
            "arguments": call.function.arguments.to_string(),
        },
    })
}

/// What the text after a `<tool_call>` tag holds.
enum Parsed {
    /// A call to a declared function, and the bytes it took up to and including `</tool_call>`.
    Call(ToolCall, usize),
    /// Not finished yet (a stream).
    Incomplete,
    /// Not a call to a declared function.
    Invalid,
}

/// Reads one call after its opening tag. The JSON is read as JSON, so a `</tool_call>` inside an
/// argument's string does not end the call.
fn parse_one(after_open: &str, names: &[String]) -> Parsed {
    let lead = after_open.len() - after_open.trim_start().len();
    let body = &after_open[lead..];
    let mut values = serde_json::Deserializer::from_str(body).into_iter::<Value>();
    let v = match values.next() {
        None => return Parsed::Incomplete,
        Some(Err(e)) if e.is_eof() => return Parsed::Incomplete,
        Some(Err(_)) => return Parsed::Invalid,
        Some(Ok(v)) => v,
    };
    let end = values.byte_offset();
    let rest = &body[end..];
    let gap = rest.len() - rest.trim_start().len();
    let rest = &rest[gap..];
    if !rest.starts_with(CLOSE) {
        return if CLOSE.starts_with(rest) {
            Parsed::Incomplete
        } else {
            Parsed::Invalid
        };
    }
    let name = match v.get("name").and_then(Value::as_str) {
        Some(n) if names.iter().any(|d| d == n) => n.to_string(),
        _ => return Parsed::Invalid,
    };
    let Some(arguments) = v.get("arguments").cloned() else {
        return Parsed::Invalid;
    };
    let call = ToolCall {
        id: random_id("call_"),
        kind: "function".into(),
        function: FunctionCall { name, arguments },
    };
    Parsed::Call(call, lead + end + gap + CLOSE.len())
}

/// A whole reply's calls, when it is nothing but calls to declared functions; None otherwise
/// (plain text, or calls cut short), and the reply is then returned as text.
pub fn parse_calls(text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim_start();
    let mut calls = Vec::new();
    while let Some(after) = rest.strip_prefix(OPEN) {
        match parse_one(after, names) {
            Parsed::Call(call, used) => {
                calls.push(call);
                rest = after[used..].trim_start();
            }
            Parsed::Incomplete | Parsed::Invalid => return None,
        }
    }
    (!calls.is_empty() && rest.is_empty()).then_some(calls)
}

/// The calls a reply cut short by `max_tokens` had finished; the one it was still writing is
/// dropped, as a stream drops it. None when it finished none, or holds text besides calls.
pub fn finished_calls(text: &str, names: &[String]) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim_start();
    let mut calls = Vec::new();
    loop {
        let Some(after) = rest.strip_prefix(OPEN) else {
            return (!calls.is_empty() && OPEN.starts_with(rest)).then_some(calls);
        };
        match parse_one(after, names) {
            Parsed::Call(call, used) => {
                calls.push(call);
                rest = after[used..].trim_start();
            }
            Parsed::Incomplete => return (!calls.is_empty()).then_some(calls),
            Parsed::Invalid => return None,
        }
    }
}

/// The `message` of a whole choice with calls.
pub fn message_with_calls(calls: &[ToolCall]) -> Value {
    json!({
        "role": "assistant",
        "content": null,
        "refusal": null,
        "tool_calls": calls.iter().enumerate().map(|(i, c)| {
            let mut v = call_json(i, c);
            if let Some(o) = v.as_object_mut() {
                o.remove("index");
            }
            v
        }).collect::<Vec<_>>(),
    })
}

/// What a piece of streamed text becomes.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Text(String),
    Call(Value),
}

/// Splits one choice's streamed text into content and calls: text that might still become
/// `<tool_call>` is held back until it can't, and a call goes out whole once its closing tag
/// arrives. Anything that turns out not to be a call goes out as text: nothing generated is lost.
#[derive(Debug)]
pub struct StreamParser {
    names: Vec<String>,
    buf: String,
    /// None until the reply shows whether it is text or calls.
    calls: Option<bool>,
    emitted: usize,
}

impl StreamParser {
    pub fn new(names: Vec<String>) -> Self {
        Self {
            names,
            buf: String::new(),
            calls: None,
            emitted: 0,
        }
    }

    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.calls == Some(false) {
            if !text.is_empty() {
                out.push(Piece::Text(text.to_string()));
            }
            return out;
        }
        self.buf.push_str(text);
        loop {
            let head = self.buf.trim_start();
            if head.is_empty() {
                break;
            }
            let Some(after) = head.strip_prefix(OPEN) else {
                if OPEN.starts_with(head) {
                    break;
                }
                // Not a call: the rest of the reply is text.
                self.calls = Some(false);
                out.push(Piece::Text(std::mem::take(&mut self.buf)));
                break;
            };
            self.calls = Some(true);
            match parse_one(after, &self.names) {
                Parsed::Call(call, used) => {
                    out.push(Piece::Call(call_json(self.emitted, &call)));
                    self.emitted += 1;
                    let consumed = self.buf.len() - after.len() + used;
                    self.buf.drain(..consumed);
                }
                Parsed::Incomplete => break,
                Parsed::Invalid => {
                    self.calls = Some(false);
                    out.push(Piece::Text(std::mem::take(&mut self.buf)));
                    break;
                }
            }
        }
        out
    }

    /// Whatever was held back when the generation ended (a call cut short goes out as text).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        (!rest.trim().is_empty()).then_some(rest)
    }

    pub fn called(&self) -> bool {
        self.emitted > 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(choice: Value, parallel: Option<bool>) -> ToolSet {
        let tools = vec![
            json!({"type": "function", "function": {"name": "lookup", "parameters": {"type": "object", "properties": {"id": {"type": "string"}}, "required": ["id"]}}}),
        ];
        ToolSet::parse(Some(&tools), Some(&choice), parallel)
            .unwrap()
            .unwrap()
    }

    #[test]
    fn tool_choice_is_validated() {
        let tools = vec![json!({"type": "function", "function": {"name": "lookup"}})];
        assert!(ToolSet::parse(Some(&tools), Some(&json!("none")), None)
            .unwrap()
            .is_none());
        assert!(ToolSet::parse(None, None, None).unwrap().is_none());
        for (choice, param) in [
            (json!("sometimes"), "tool_choice"),
            (
                json!({"type": "function", "function": {"name": "other"}}),
                "tool_choice",
            ),
        ] {
            let e = ToolSet::parse(Some(&tools), Some(&choice), None).unwrap_err();
            assert_eq!(e.param(), Some(param), "{choice}");
        }
        let e = ToolSet::parse(None, Some(&json!("required")), None).unwrap_err();
        assert_eq!(e.param(), Some("tool_choice"));
        let bad = vec![json!({"type": "function", "function": {"name": "no spaces"}})];
        let e = ToolSet::parse(Some(&bad), None, None).unwrap_err();
        assert_eq!(e.param(), Some("tools[0].function.name"));
        let twice = vec![tools[0].clone(), tools[0].clone()];
        assert!(ToolSet::parse(Some(&twice), None, None).is_err());
    }

    #[test]
    fn grammars_follow_the_choice() {
        let Grammar::Lark(auto) = set(json!("auto"), None).grammar(None) else {
            panic!()
        };
        assert!(
            auto.contains("start: calls | TEXT") && auto.contains("(\"\\n\" call)*"),
            "{auto}"
        );
        // Each function's parameters are their own `%json` root, so `$ref`s resolve in them.
        assert!(
            auto.contains(
                "fn_0: \"{\\\"name\\\": \\\"lookup\\\", \\\"arguments\\\": \" args_0 \"}\""
            ),
            "{auto}"
        );
        assert!(auto.contains("args_0: %json {"), "{auto}");
        // With several functions, the alternatives sit between the tags (Lark's `|` binds
        // loosest).
        let two = vec![
            json!({"type": "function", "function": {"name": "a"}}),
            json!({"type": "function", "function": {"name": "b"}}),
        ];
        let Grammar::Lark(g) = ToolSet::parse(Some(&two), None, None)
            .unwrap()
            .unwrap()
            .grammar(None)
        else {
            panic!()
        };
        assert!(
            g.contains("call: \"<tool_call>\\n\" (fn_0 | fn_1) \"\\n</tool_call>\""),
            "{g}"
        );
        let Grammar::Lark(one) = set(json!("required"), Some(false)).grammar(None) else {
            panic!()
        };
        assert!(one.starts_with("start: calls\n"), "{one}");
        assert!(one.contains("calls: call \"\\n\"?"), "{one}");
        let reply = json!({"type": "object"});
        let Grammar::Lark(json_reply) = set(json!("auto"), None).grammar(Some(&reply)) else {
            panic!()
        };
        assert!(
            json_reply.starts_with("start: calls | reply\nreply: %json {\"type\":\"object\"}"),
            "{json_reply}"
        );
    }

    fn names() -> Vec<String> {
        vec!["lookup".to_string()]
    }

    #[test]
    fn whole_replies_parse_into_calls() {
        let text = "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"W1\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"</tool_call>\"}}\n</tool_call>\n";
        let calls = parse_calls(text, &names()).unwrap();
        assert_eq!(calls.len(), 2);
        // A closing tag inside an argument's string does not end the call.
        assert_eq!(calls[1].function.arguments["id"], "</tool_call>");
        assert_ne!(calls[0].id, calls[1].id);
        assert!(parse_calls("Hello", &names()).is_none());
        assert!(parse_calls("<tool_call>\n{\"name\": \"lookup\", \"argu", &names()).is_none());
        // Undeclared functions and text after the calls make the reply text, not calls.
        let other = "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>";
        assert!(parse_calls(other, &names()).is_none());
        let trailing = format!("{}\nand then some", &text[..text.len() - 1]);
        assert!(parse_calls(&trailing, &names()).is_none());
        // Cut short by the token limit: the finished calls stay, the unfinished one goes.
        let one =
            "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"W1\"}}\n</tool_call>\n";
        for cut in ["", "<tool", "<tool_call>\n{\"name\": \"look"] {
            let calls = finished_calls(&format!("{one}{cut}"), &names()).unwrap();
            assert_eq!(calls.len(), 1, "{cut:?}");
        }
        assert!(finished_calls("<tool_call>\n{\"name\": \"look", &names()).is_none());
        assert!(finished_calls(&format!("{one}and text"), &names()).is_none());
    }

    #[test]
    fn the_stream_parser_holds_back_only_what_might_be_a_call() {
        let mut p = StreamParser::new(names());
        assert!(p.push("<tool").is_empty());
        assert!(p.push("_call>\n{\"name\": \"lookup\", ").is_empty());
        let out = p.push(
            "\"arguments\": {\"id\": \"</tool_call>\"}}\n</tool_call>\n<tool_call>\n{\"name\"",
        );
        assert_eq!(out.len(), 1, "{out:?}");
        let Piece::Call(c) = &out[0] else { panic!() };
        assert_eq!(c["index"], 0);
        assert_eq!(c["function"]["arguments"], "{\"id\":\"</tool_call>\"}");
        assert!(p.called());
        // A second call cut short comes out as text rather than vanishing.
        assert!(p.finish().unwrap().contains("<tool_call>"));

        let mut t = StreamParser::new(names());
        assert!(t.push("<").is_empty());
        assert_eq!(t.push("b>Hi"), vec![Piece::Text("<b>Hi".into())]);
        assert_eq!(t.push(" there"), vec![Piece::Text(" there".into())]);
        assert!(!t.called());
        assert_eq!(t.finish(), None);

        // A call to an undeclared function is passed on as text, not dropped.
        let mut u = StreamParser::new(names());
        let bad = "<tool_call>\n{\"name\": \"rm_rf\", \"arguments\": {}}\n</tool_call>";
        assert_eq!(u.push(bad), vec![Piece::Text(bad.into())]);
        assert!(!u.called());
    }

    #[test]
    fn templates_without_tools_get_instructions_and_written_calls() {
        let s = set(json!("auto"), None);
        let call = |id: &str| ToolCall {
            id: id.into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: json!({"id": id}),
            },
        };
        let mut asked = ChatMessage::assistant("");
        asked.tool_calls = Some(vec![call("W1"), call("W2")]);
        let result = |text: &str| {
            let mut m = ChatMessage::user(text);
            m.role = Role::Tool;
            m.tool_call_id = Some("x".into());
            m
        };
        let out = s.prepare(vec![
            ChatMessage::user("Where are W1 and W2?"),
            asked,
            result("{\"status\": \"shipped\"}"),
            result("{\"status\": \"pending\"}"),
        ]);
        assert_eq!(out.len(), 4, "{out:?}");
        assert_eq!(out[0].role, Role::System);
        assert!(out[0].content.contains("\"name\":\"lookup\""));
        assert!(
            out[2]
                .content
                .starts_with("<tool_call>\n{\"name\":\"lookup\""),
            "{}",
            out[2].content
        );
        assert_eq!(out[2].content.matches("<tool_call>").count(), 2);
        // Both results in one user turn, so turns still alternate.
        assert_eq!(out[3].role, Role::User);
        assert!(out[3]
            .content
            .contains("<tool_response>\n{\"status\": \"shipped\"}\n</tool_response>\n<tool_response>\n{\"status\": \"pending\"}"));
    }
}
