//! The engine's error type: one enum for everything below the server.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("model `{name}` is not available: {hint}")]
    ModelNotFound { name: String, hint: String },
    #[error("unsupported model architecture `{0}`")]
    UnsupportedArchitecture(String),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    Template(String),
    #[error(
        "the prompt has {prompt_tokens} tokens and asks for up to {max_tokens} more, \
         but the model's context is {context_length} tokens"
    )]
    ContextOverflow {
        prompt_tokens: usize,
        max_tokens: usize,
        context_length: usize,
    },
    #[error("the engine queue is full ({capacity} requests waiting); retry later")]
    QueueFull { capacity: usize },
    #[error("invalid `{param}`: {message}")]
    InvalidParameter {
        param: &'static str,
        message: String,
    },
    /// A grammar (a JSON schema, a tool's parameters) that does not compile, or a constrained
    /// generation the grammar engine could not follow.
    #[error("grammar: {0}")]
    Grammar(String),
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("the engine has stopped")]
    Stopped,
    #[error("tensor error: {0}")]
    Tensor(#[from] candle_core::Error),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
