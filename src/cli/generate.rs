//! `clerk generate`: one prompt, streamed to stdout.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use clap::Args;

use super::{ModelArgs, SamplingArgs};
use crate::engine::{ChatMessage, Event, GenerateRequest, Grammar};

#[derive(Debug, Clone, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt text.
    #[arg(long)]
    pub prompt: String,
    /// Wrap the prompt as a user turn in the model's chat template instead of continuing it raw.
    #[arg(long)]
    pub chat: bool,
    /// Constrain the output to JSON valid against the JSON schema in this file.
    #[arg(long, conflicts_with = "lark")]
    pub json_schema: Option<PathBuf>,
    /// Constrain the output to the Lark grammar in this file (llguidance's dialect).
    #[arg(long)]
    pub lark: Option<PathBuf>,
    /// Print token counts and speed to stderr at the end.
    #[arg(long)]
    pub verbose: bool,
}

fn grammar(a: &GenerateArgs) -> anyhow::Result<Option<Grammar>> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    if let Some(p) = &a.json_schema {
        let schema = serde_json::from_str(&read(p)?)
            .with_context(|| format!("{} is not JSON", p.display()))?;
        return Ok(Some(Grammar::JsonSchema(schema)));
    }
    Ok(a.lark.as_ref().map(read).transpose()?.map(Grammar::Lark))
}

pub fn run(a: GenerateArgs) -> anyhow::Result<()> {
    let engine = a.model.load()?;
    let prompt = if a.chat {
        engine.chat_prompt(&[ChatMessage::user(a.prompt.clone())], None)?
    } else {
        engine.tokenizer().encode(&a.prompt, true)?
    };
    let mut generation = engine.submit(GenerateRequest {
        prompt,
        sampling: a.sampling.params(),
        max_tokens: Some(a.sampling.max_tokens),
        stop: a.sampling.stop.clone(),
        ignore_eos: false,
        grammar: grammar(&a)?,
    })?;
    let mut out = std::io::stdout().lock();
    while let Some(ev) = generation.blocking_next() {
        match ev {
            Event::Token { text, .. } | Event::Text(text) => {
                out.write_all(text.as_bytes())?;
                out.flush()?;
            }
            Event::Done(d) => {
                writeln!(out)?;
                if a.verbose {
                    let decode = d.total.saturating_sub(d.time_to_first_token).as_secs_f64();
                    eprintln!(
                        "[{} prompt tokens, {} generated, first token {:.0} ms, {:.1} tokens/s, {:?}]",
                        d.usage.prompt_tokens,
                        d.usage.completion_tokens,
                        d.time_to_first_token.as_secs_f64() * 1e3,
                        d.usage.completion_tokens.saturating_sub(1) as f64 / decode.max(1e-9),
                        d.finish_reason
                    );
                }
                return Ok(());
            }
            Event::Error(e) => return Err(e.into()),
        }
    }
    anyhow::bail!("the engine stopped before finishing")
}
