//! Chat templates (`tokenizer.chat_template`), rendered with minijinja the way transformers renders
//! them: Python string and dict methods, `raise_exception`, `strftime_now`, `tojson`, trimmed blocks.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind, Value};
use serde::{Deserialize, Serialize};

use super::error::{EngineError, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
    Tool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FunctionCall {
    pub name: String,
    /// An object when the arguments parse as JSON; templates write it with `tojson` or iterate it.
    pub arguments: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ToolCall {
    pub id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub function: FunctionCall,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_calls: Option<Vec<ToolCall>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    fn new(role: Role, content: impl Into<String>) -> Self {
        Self {
            role,
            content: content.into(),
            name: None,
            tool_calls: None,
            tool_call_id: None,
        }
    }
    pub fn system(content: impl Into<String>) -> Self {
        Self::new(Role::System, content)
    }
    pub fn user(content: impl Into<String>) -> Self {
        Self::new(Role::User, content)
    }
    pub fn assistant(content: impl Into<String>) -> Self {
        Self::new(Role::Assistant, content)
    }
}

/// ChatML, for models that ship no template of their own.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Gemma's turn format: roles `user` and `model`, the system message folded into the first user turn.
pub const GEMMA_TEMPLATE: &str = "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{% set first_user_prefix = messages[0]['content'] + '\n\n' %}{% set loop_messages = messages[1:] %}{% else %}{% set first_user_prefix = '' %}{% set loop_messages = messages %}{% endif %}{% for message in loop_messages %}{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}";

pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    takes_tools: bool,
    hermes_tools: bool,
}

fn raise_exception(msg: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
}

/// `strftime_now` without a date crate: UTC from the system clock, with the directives templates use.
fn strftime_now(fmt: String) -> String {
    let (year, month, day) = crate::clock::civil_date(crate::clock::unix_now());
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    let month_name = MONTHS[(month - 1) as usize];
    let mut out = String::new();
    let mut chars = fmt.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str(&format!("{day:02}")),
            Some('m') => out.push_str(&format!("{month:02}")),
            Some('Y') => out.push_str(&year.to_string()),
            Some('y') => out.push_str(&format!("{:02}", year % 100)),
            Some('B') => out.push_str(month_name),
            Some('b') => out.push_str(&month_name[..3]),
            Some('%') => out.push('%'),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// The most template instructions one render may run (minijinja's fuel): a loop that runs away
/// stops with an error instead of holding the caller. Real templates use a few hundred per message.
const MAX_RENDER_FUEL: u64 = 20_000_000;
/// The longest sequence a template may print in one `{{ }}`. minijinja repeats a sequence lazily
/// (`n * seq`), so a huge repetition costs nothing until it is printed, and printing it can't be
/// interrupted; a chat prompt never prints a list this long.
const MAX_PRINTED_ITEMS: usize = 100_000;

impl ChatTemplate {
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_fuel(Some(MAX_RENDER_FUEL));
        env.set_formatter(|out, state, value| {
            if value.len().is_some_and(|n| n > MAX_PRINTED_ITEMS) {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!("a sequence of more than {MAX_PRINTED_ITEMS} items is not printed"),
                ));
            }
            minijinja::escape_formatter(out, state, value)
        });
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", source.to_string())
            .map_err(|e| {
                EngineError::Template(format!("cannot compile the chat template: {e:#}"))
            })?;
        Ok(Self {
            env,
            bos: bos_token.to_string(),
            eos: eos_token.to_string(),
            takes_tools: source.contains("tools"),
            hermes_tools: source.contains("tools") && source.contains("<tool_call>"),
        })
    }

    pub fn takes_tools(&self) -> bool {
        self.takes_tools
    }

    /// Renders `tools` and writes earlier calls in the Hermes format (`<tool_call>` JSON
    /// `</tool_call>`, as Qwen's templates do): the format clerk's tool grammar makes models write.
    pub fn writes_hermes_tool_calls(&self) -> bool {
        self.hermes_tools
    }

    pub fn render(
        &self,
        messages: &[ChatMessage],
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
    ) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| EngineError::Template(e.to_string()))?;
        tmpl.render(context! {
            messages => messages,
            tools => tools.map(Value::from_serialize),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(|e| {
            let detail = e
                .detail()
                .map(str::to_string)
                .unwrap_or_else(|| e.to_string());
            EngineError::Template(format!("cannot render the chat template: {detail}"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_turns_and_the_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "").unwrap();
        let out = t
            .render(
                &[ChatMessage::system("Be brief."), ChatMessage::user("Hi")],
                None,
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_folds_the_system_turn_into_the_first_user_turn() {
        let t = ChatTemplate::new(GEMMA_TEMPLATE, "<bos>", "<eos>").unwrap();
        let out = t
            .render(
                &[
                    ChatMessage::system("Be brief."),
                    ChatMessage::user("Hi"),
                    ChatMessage::assistant("Hello!"),
                ],
                None,
                true,
            )
            .unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\nHello!<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn python_methods_tools_and_raise_exception() {
        let src = "{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}{{ raise_exception('bad role: ' + m['role']) }}{% endif %}{{ m['content'].strip().upper() }}|{% endfor %}{% if tools %}{% for t in tools %}{{ t['function']['name'] }} {{ t | tojson }}{% endfor %}{% endif %}";
        let t = ChatTemplate::new(src, "", "").unwrap();
        assert!(t.takes_tools());
        let tools = serde_json::json!([{"type": "function", "function": {"name": "lookup", "parameters": {}}}]);
        let out = t
            .render(&[ChatMessage::user("  hi  ")], Some(&tools), false)
            .unwrap();
        assert!(out.starts_with("HI|lookup {"), "{out}");
        let err = t
            .render(&[ChatMessage::system("x")], None, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("bad role: system"), "{err}");
    }

    #[test]
    fn syntax_errors_are_clear() {
        let err = ChatTemplate::new("{% for m in messages %}", "", "")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("chat template"), "{err}");
    }

    #[test]
    fn a_runaway_template_stops_with_a_clear_error() {
        // Found by the fuzzer: a sequence repeated billions of times, printed.
        let huge = ChatTemplate::new("{{ 77 * 70000002554 * tools }}", "", "").unwrap();
        let tools = serde_json::json!([{"type": "function", "function": {"name": "f"}}]);
        let err = huge
            .render(&[ChatMessage::user("hi")], Some(&tools), true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("is not printed"), "{err}");
        // A loop that writes nothing runs out of fuel instead.
        let busy = ChatTemplate::new(
            "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}",
            "",
            "",
        )
        .unwrap();
        let err = busy
            .render(&[ChatMessage::user("hi")], None, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chat template"), "{err}");
    }

    #[test]
    fn strftime_now_formats_a_date() {
        let s = strftime_now("%d %b %Y".into());
        assert_eq!(s.len(), 11, "{s}");
        assert!(s[7..].parse::<i32>().unwrap() >= 2024);
    }
}
