use std::fmt;
use std::path::PathBuf;

use thiserror::Error;

use crate::engine::EngineError;

/// A file that cannot be ingested, located as precisely as the format allows.
#[derive(Debug, Clone, PartialEq)]
pub struct ParseError {
    pub file: String,
    pub line: Option<usize>,
    /// The column or JSON path, `price` or `products[3].variants[0].price`.
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ", line {line}")?;
        }
        if let Some(field) = &self.field {
            write!(f, ", field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

#[derive(Debug, Error)]
pub enum RetrievalError {
    /// The whole batch was refused; nothing was written.
    #[error("{} (nothing was ingested)", .0.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))]
    Parse(Vec<ParseError>),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the knowledge index in {path} is damaged: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("full-text index: {0}")]
    Index(#[from] tantivy::TantivyError),
    #[error("embedder: {0}")]
    Embedder(#[from] EngineError),
    /// A search the caller got wrong, naming the parameter.
    #[error("invalid query: {message}")]
    InvalidQuery {
        param: &'static str,
        message: String,
    },
    #[error("no document with id `{0}`")]
    NotFound(String),
    #[error("another process is ingesting into {0}; try again when it finishes")]
    Busy(PathBuf),
    /// Another process made the live generation with another embedder: its vectors can't be
    /// compared with this process's queries.
    #[error(
        "the knowledge base's generation {generation} was embedded with `{found}`, but this \
         process embeds with `{serving}`; kept the previous generation (restart with the same \
         embedder, or ingest here to re-embed)"
    )]
    OtherEmbedder {
        generation: u64,
        found: String,
        serving: String,
    },
}

pub type Result<T> = std::result::Result<T, RetrievalError>;
