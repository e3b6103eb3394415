//! `clerk chat`: a raw-model conversation in the terminal, one line per turn.

use std::io::{BufRead, Write};

use clap::Args;

use super::{ModelArgs, SamplingArgs};
use crate::engine::{ChatMessage, Event, GenerateRequest};

#[derive(Debug, Clone, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// A system message to start the conversation with.
    #[arg(long)]
    pub system: Option<String>,
    /// Folder of the shop the assistant serves (filled with the demo shop on first use); used
    /// when no --model is given.
    #[arg(long, env = "CLERK_DATA_DIR", default_value = "./clerk-data")]
    pub data_dir: std::path::PathBuf,
    #[command(flatten)]
    pub data_key: super::DataKeyArgs,
}

/// Whether the command line (or the environment) names a model; without one, `clerk chat` talks
/// to the shop assistant.
fn model_named() -> bool {
    std::env::var_os("CLERK_MODEL").is_some()
        || std::env::args().any(|a| a == "--model" || a.starts_with("--model="))
}

/// Prompts with `> ` and reads the user's next line; `None` on an empty line or end of input.
pub(super) fn next_line(out: &mut impl Write) -> std::io::Result<Option<String>> {
    write!(out, "> ")?;
    out.flush()?;
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
        return Ok(None);
    }
    Ok(Some(line.trim().to_string()))
}

pub fn run(a: ChatArgs) -> anyhow::Result<()> {
    if !model_named() || a.model.model == "clerk" {
        let assistant = super::assistant::open_default(
            a.model.models_dir.as_deref(),
            &a.data_dir,
            &a.data_key.source(),
        )?;
        return super::assistant::chat(assistant);
    }
    let engine = a.model.load()?;
    let mut history: Vec<ChatMessage> = a
        .system
        .iter()
        .map(|s| ChatMessage::system(s.clone()))
        .collect();
    let mut out = std::io::stdout();
    eprintln!(
        "clerk chat with {} (empty line or Ctrl-D to quit)",
        engine.info().name
    );
    while let Some(line) = next_line(&mut out)? {
        history.push(ChatMessage::user(line));
        let prompt = engine.chat_prompt(&history, None)?;
        let mut generation = engine.submit(GenerateRequest {
            prompt,
            sampling: a.sampling.params(),
            max_tokens: Some(a.sampling.max_tokens),
            stop: a.sampling.stop.clone(),
            ignore_eos: false,
            grammar: None,
        })?;
        let mut reply = String::new();
        while let Some(ev) = generation.blocking_next() {
            match ev {
                Event::Token { text, .. } | Event::Text(text) => {
                    write!(out, "{text}")?;
                    out.flush()?;
                    reply.push_str(&text);
                }
                Event::Done(_) => break,
                Event::Error(e) => return Err(e.into()),
            }
        }
        writeln!(out)?;
        history.push(ChatMessage::assistant(reply));
    }
    Ok(())
}
