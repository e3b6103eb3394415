//! `clerk tokenize`: the ids (and pieces) a model's tokenizer gives a text, without loading weights.

use clap::Args;

use crate::engine::gguf::GgufFile;
use crate::engine::registry::{default_models_dir, resolve_model, DEFAULT_MODEL};
use crate::engine::tokenizer::Tokenizer;

#[derive(Debug, Clone, Args)]
pub struct TokenizeArgs {
    /// The model whose tokenizer to use (a GGUF path, a manifest name or a hub `owner/repo:file.gguf`).
    #[arg(long, env = "CLERK_MODEL", default_value = DEFAULT_MODEL)]
    pub model: String,
    /// Prepend BOS when the model asks for it.
    #[arg(long)]
    pub bos: bool,
    /// Print each id with its text.
    #[arg(long)]
    pub pieces: bool,
    pub text: String,
}

pub fn run(a: TokenizeArgs) -> anyhow::Result<()> {
    let resolved = resolve_model(&a.model, &default_models_dir())?;
    let tok = Tokenizer::from_gguf(&GgufFile::open(&resolved.path)?)?;
    let ids = tok.encode(&a.text, a.bos)?;
    if a.pieces {
        for id in &ids {
            println!("{id:>7} {:?}", tok.decode(&[*id], false)?);
        }
    } else {
        println!("{ids:?}");
    }
    Ok(())
}
