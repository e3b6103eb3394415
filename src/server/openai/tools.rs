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
    /// The grammar a `response_format` asks for; None for plain text.
    pub fn grammar(&self) -> Result<Option<Grammar>, ApiError> {
        match self.kind.as_str() {
            "text" => Ok(None),
            "json_object" => Ok(Some(Grammar::JsonSchema(styled(
                json!({ "type": "object" }),
                false,
            )))),
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
                Ok(Some(Grammar::JsonSchema(styled(
                    schema,
                    f.strict.unwrap_or(false),
                ))))
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

    /// The schema of one call's JSON: the function's name, then its arguments.
    fn call_schema(tool: &Tool) -> Value {
        let params = tool
            .function
            .parameters
            .clone()
            .unwrap_or_else(|| json!({ "type": "object" }));
        json!({
            "type": "object",
            "properties": {
                "name": { "const": tool.function.name },
                "arguments": params,
            },
            "required": ["name", "arguments"],
            "additionalProperties": false,
        })
    }

    /// The grammar every choice is generated under.
    pub fn grammar(&self) -> Grammar {
        let callable: Vec<&Tool> = match &self.choice {
            Choice::Named(n) => self
                .tools
                .iter()
                .filter(|t| &t.function.name == n)
                .collect(),
            _ => self.tools.iter().collect(),
        };
        let strict = callable.iter().all(|t| t.function.strict.unwrap_or(false));
        let mut schema =
            json!({ "anyOf": callable.iter().map(|t| Self::call_schema(t)).collect::<Vec<_>>() });
        schema = styled(schema, strict);
        // serde_json writes the schema as one line with no raw newlines, which is what `%json`
        // needs inside a Lark rule.
        let call = format!("call: \"{OPEN}\\n\" %json {schema} \"\\n{CLOSE}\"");
        let calls = if self.parallel && !matches!(self.choice, Choice::Named(_)) {
            "calls: call (\"\\n\" call)*"
        } else {
            "calls: call"
        };
        let start = match self.choice {
            // Plain text may not begin with `<`, so a reply is either all calls or all text.
            Choice::Auto => "start: calls | TEXT\nTEXT: /[^<][\\s\\S]*/",
            _ => "start: calls",
        };
        Grammar::Lark(format!("{start}\n{calls}\n{call}\n"))
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

    /// The conversation as the template will render it. A template that takes `tools` gets the
    /// messages as they are (and `tools` separately); for any other, the tools are described in the
    /// system message, earlier calls are written as the model writes them, and tool results become
    /// user turns, since such templates know no `tool` role.
    pub fn prepare(
        &self,
        messages: Vec<ChatMessage>,
        template_takes_tools: bool,
    ) -> Vec<ChatMessage> {
        if template_takes_tools {
            return messages;
        }
        let mut out = Vec::with_capacity(messages.len() + 1);
        let instructions = self.instructions();
        let mut iter = messages.into_iter().peekable();
        match iter.peek() {
            Some(m) if m.role == Role::System => {
                let mut m = iter.next().unwrap_or_else(|| ChatMessage::system(""));
                m.content = format!("{}\n\n{instructions}", m.content);
                out.push(m);
            }
            _ => out.push(ChatMessage::system(instructions)),
        }
        for mut m in iter {
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
                    m = ChatMessage::user(format!(
                        "<tool_response>\n{}\n</tool_response>",
                        m.content
                    ));
                }
                Role::System | Role::User => {}
            }
            out.push(m);
        }
        out
    }
}

/// The part of a grammar engine error that speaks of the caller's schema, without the grammar text
/// clerk wrapped it in.
pub fn grammar_message(raw: &str) -> String {
    const SCHEMA: &str = "failed to compile JSON schema: ";
    let tail = raw.find(SCHEMA).map_or(raw, |i| &raw[i + SCHEMA.len()..]);
    let line = tail.lines().next().unwrap_or(tail).trim();
    format!("the schema can't be enforced: {line}")
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

/// The JSON between `<tool_call>` and `</tool_call>`, as a call with a fresh id.
fn parse_call(body: &str) -> Option<ToolCall> {
    let v: Value = serde_json::from_str(body.trim()).ok()?;
    let name = v.get("name")?.as_str()?.to_string();
    let arguments = v.get("arguments").cloned().unwrap_or_else(|| json!({}));
    Some(ToolCall {
        id: random_id("call_"),
        kind: "function".into(),
        function: FunctionCall { name, arguments },
    })
}

/// A whole reply's calls, when it is calls; None for plain text or calls cut short.
pub fn parse_calls(text: &str) -> Option<Vec<ToolCall>> {
    let mut rest = text.trim_start();
    if !rest.starts_with(OPEN) {
        return None;
    }
    let mut calls = Vec::new();
    while let Some(after) = rest.trim_start().strip_prefix(OPEN) {
        let end = after.find(CLOSE)?;
        calls.push(parse_call(&after[..end])?);
        rest = &after[end + CLOSE.len()..];
    }
    rest.trim().is_empty().then_some(calls)
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
/// arrives.
#[derive(Debug, Default)]
pub struct StreamParser {
    buf: String,
    /// None until the reply shows whether it is text or calls.
    calls: Option<bool>,
    emitted: usize,
}

impl StreamParser {
    pub fn push(&mut self, text: &str) -> Vec<Piece> {
        let mut out = Vec::new();
        if self.calls == Some(false) {
            if !text.is_empty() {
                out.push(Piece::Text(text.to_string()));
            }
            return out;
        }
        self.buf.push_str(text);
        if self.calls.is_none() {
            let head = self.buf.trim_start();
            if head.starts_with(OPEN) {
                self.calls = Some(true);
            } else if head.is_empty() || OPEN.starts_with(head) {
                return out;
            } else {
                self.calls = Some(false);
                out.push(Piece::Text(std::mem::take(&mut self.buf)));
                return out;
            }
        }
        while let Some(start) = self.buf.find(OPEN) {
            let Some(len) = self.buf[start..].find(CLOSE) else {
                break;
            };
            let body = &self.buf[start + OPEN.len()..start + len];
            if let Some(call) = parse_call(body) {
                out.push(Piece::Call(call_json(self.emitted, &call)));
                self.emitted += 1;
            }
            self.buf.drain(..start + len + CLOSE.len());
        }
        out
    }

    /// Whatever was held back when the generation ended: text, or a call cut short (sent as text
    /// so nothing generated is lost).
    pub fn finish(&mut self) -> Option<String> {
        let rest = std::mem::take(&mut self.buf);
        if self.calls == Some(true) && rest.trim().is_empty() {
            return None;
        }
        (!rest.is_empty()).then_some(rest)
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
        let Grammar::Lark(auto) = set(json!("auto"), None).grammar() else {
            panic!()
        };
        assert!(
            auto.contains("start: calls | TEXT") && auto.contains("(\"\\n\" call)*"),
            "{auto}"
        );
        let Grammar::Lark(one) = set(json!("required"), Some(false)).grammar() else {
            panic!()
        };
        assert!(one.contains("start: calls\ncalls: call\n"), "{one}");
        assert!(one.contains("\"const\":\"lookup\""), "{one}");
    }

    #[test]
    fn whole_replies_parse_into_calls() {
        let text = "<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"W1\"}}\n</tool_call>\n<tool_call>\n{\"name\": \"lookup\", \"arguments\": {\"id\": \"W2\"}}\n</tool_call>";
        let calls = parse_calls(text).unwrap();
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[1].function.arguments["id"], "W2");
        assert_ne!(calls[0].id, calls[1].id);
        assert!(parse_calls("Hello").is_none());
        assert!(parse_calls("<tool_call>\n{\"name\": \"lookup\", \"argu").is_none());
    }

    #[test]
    fn the_stream_parser_holds_back_only_what_might_be_a_call() {
        let mut p = StreamParser::default();
        assert!(p.push("<tool").is_empty());
        assert!(p.push("_call>\n{\"name\": \"lookup\", ").is_empty());
        let out = p.push("\"arguments\": {\"id\": \"W1\"}}\n</tool_call>\n<tool_call>\n{\"name\"");
        assert_eq!(out.len(), 1);
        let Piece::Call(c) = &out[0] else { panic!() };
        assert_eq!(c["index"], 0);
        assert_eq!(c["function"]["arguments"], "{\"id\":\"W1\"}");
        assert!(p.called());
        // A second call cut short comes out as text rather than vanishing.
        assert!(p.finish().unwrap().contains("<tool_call>"));

        let mut t = StreamParser::default();
        assert!(t.push("<").is_empty());
        assert_eq!(t.push("b>Hi"), vec![Piece::Text("<b>Hi".into())]);
        assert_eq!(t.push(" there"), vec![Piece::Text(" there".into())]);
        assert!(!t.called());
        assert_eq!(t.finish(), None);
    }

    #[test]
    fn templates_without_tools_get_instructions_and_written_calls() {
        let s = set(json!("auto"), None);
        let mut asked = ChatMessage::assistant("");
        asked.tool_calls = Some(vec![ToolCall {
            id: "call_1".into(),
            kind: "function".into(),
            function: FunctionCall {
                name: "lookup".into(),
                arguments: json!({"id": "W1"}),
            },
        }]);
        let mut result = ChatMessage::user("");
        result.role = Role::Tool;
        result.content = "{\"status\": \"shipped\"}".into();
        let out = s.prepare(
            vec![ChatMessage::user("Where is W1?"), asked, result],
            false,
        );
        assert_eq!(out[0].role, Role::System);
        assert!(out[0].content.contains("\"name\":\"lookup\""));
        assert!(
            out[2]
                .content
                .starts_with("<tool_call>\n{\"name\":\"lookup\""),
            "{}",
            out[2].content
        );
        assert_eq!(out[3].role, Role::User);
        assert!(out[3]
            .content
            .contains("<tool_response>\n{\"status\": \"shipped\"}"));
        assert_eq!(s.prepare(vec![ChatMessage::user("x")], true).len(), 1);
    }
}
