//! Understanding by tool calls: with a model chosen in settings (`clerk serve
//! --assistant-model`), the shopper's message is read by the model, which must call exactly one
//! of the assistant's functions; the engine's constrained decoding guarantees the call parses and
//! names a declared function. The call replaces the offline intent classifier, nothing else:
//! ids, emails and codes still come from exact extraction of the shopper's own words, and the
//! flows in `turn.rs` act on the choice with the same identity checks, confirmations and policy.
//! A model can pick the wrong function; it can't make clerk act on what the shopper didn't say.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::intent::Intent;
use super::AssistantError;
use crate::engine::{ChatMessage, Engine, Event, GenerateRequest, Grammar, SamplingParams};

const FILE: &str = include_str!("../../prompts/tools.yaml");

#[derive(Deserialize)]
struct File {
    system: String,
    functions: BTreeMap<String, String>,
}

/// The model, the functions it may call and what each one means.
pub struct ToolUnderstanding {
    engine: Engine,
    system: String,
    functions: Vec<(String, String, Intent)>,
}

/// Which intent a function stands for.
fn intent_of(function: &str) -> Option<Intent> {
    Some(match function {
        "answer_question" => Intent::Question,
        "order_status" => Intent::OrderStatus,
        "cancel_order" => Intent::Cancel,
        "change_address" => Intent::ChangeAddress,
        "change_payment" => Intent::ChangePayment,
        "change_items" => Intent::ChangeItems,
        "return_items" => Intent::Return,
        "exchange_items" => Intent::Exchange,
        "recommend_products" => Intent::Recommendation,
        "give_feedback" => Intent::Feedback,
        "file_complaint" => Intent::Complaint,
        "talk_to_human" => Intent::Human,
        "small_talk" => Intent::SmallTalk,
        "out_of_scope" => Intent::OutOfScope,
        _ => return None,
    })
}

impl ToolUnderstanding {
    pub fn new(engine: Engine) -> Result<Self, AssistantError> {
        let file: File = serde_yaml::from_str(FILE)
            .map_err(|e| AssistantError::Prompts(format!("prompts/tools.yaml: {e}")))?;
        let mut functions = Vec::new();
        for (name, description) in file.functions {
            let intent = intent_of(&name).ok_or_else(|| {
                AssistantError::Prompts(format!("prompts/tools.yaml: unknown function `{name}`"))
            })?;
            functions.push((name, description, intent));
        }
        for intent in Intent::ALL {
            if !functions.iter().any(|(_, _, i)| *i == intent) {
                return Err(AssistantError::Prompts(format!(
                    "prompts/tools.yaml: no function for {}",
                    intent.as_str()
                )));
            }
        }
        Ok(Self {
            engine,
            system: file.system,
            functions,
        })
    }

    pub fn model_name(&self) -> &str {
        &self.engine.info().name
    }

    /// The tools as OpenAI function definitions (for templates that render tools themselves).
    fn tools(&self) -> Value {
        Value::Array(
            self.functions
                .iter()
                .map(|(name, description, _)| {
                    json!({"type": "function", "function": {"name": name,
                        "description": description,
                        "parameters": {"type": "object", "properties": {}}}})
                })
                .collect(),
        )
    }

    /// The one call the model may write: `{"name": …, "arguments": {}}`, as in a Hermes tool call.
    fn grammar(&self) -> Grammar {
        let names: Vec<&str> = self.functions.iter().map(|(n, ..)| n.as_str()).collect();
        Grammar::JsonSchema(json!({
            "type": "object",
            "properties": {
                "name": {"enum": names},
                "arguments": {"type": "object", "properties": {}, "additionalProperties": false}
            },
            "required": ["name", "arguments"],
            "additionalProperties": false
        }))
    }

    /// The intent the model's call stands for. Blocking: call it off the async runtime.
    pub fn understand(&self, text: &str) -> Result<Intent, AssistantError> {
        let catalogue: String = self
            .functions
            .iter()
            .map(|(name, description, _)| format!("- {name}: {description}\n"))
            .collect();
        let system = format!(
            "{}\n\nFunctions:\n{catalogue}\nAnswer with one JSON object: {{\"name\": \
             FUNCTION, \"arguments\": {{}}}}.",
            self.system
        );
        let prompt = self.engine.chat_prompt(
            &[ChatMessage::system(system), ChatMessage::user(text)],
            Some(&self.tools()),
        )?;
        let mut generation = self.engine.submit(GenerateRequest {
            prompt,
            // Greedy: the same message is understood the same way every time.
            sampling: SamplingParams {
                temperature: 0.0,
                ..SamplingParams::default()
            },
            max_tokens: Some(48),
            stop: Vec::new(),
            ignore_eos: false,
            grammar: Some(self.grammar()),
        })?;
        let mut out = String::new();
        while let Some(ev) = generation.blocking_next() {
            match ev {
                Event::Token { text, .. } | Event::Text(text) => out.push_str(&text),
                Event::Done(_) => break,
                Event::Error(e) => return Err(e.into()),
            }
        }
        let call: Value = serde_json::from_str(&out).map_err(|e| {
            AssistantError::Model(format!("the model's call did not parse ({e}): {out}"))
        })?;
        call["name"]
            .as_str()
            .and_then(intent_of)
            .ok_or_else(|| AssistantError::Model(format!("the model called no function: {out}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_intent_has_exactly_one_function() {
        let file: File = serde_yaml::from_str(FILE).unwrap();
        let mut seen: Vec<Intent> = file
            .functions
            .keys()
            .map(|n| intent_of(n).unwrap_or_else(|| panic!("unknown function {n}")))
            .collect();
        seen.sort_by_key(|i| i.as_str());
        seen.dedup();
        assert_eq!(seen.len(), Intent::ALL.len());
        assert_eq!(file.functions.len(), Intent::ALL.len());
    }
}
