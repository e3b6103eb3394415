//! The OpenAI-compatible routes: request types, the shared generation runner, and one file per
//! endpoint.

pub mod assistant;
pub mod chat;
pub mod completions;
pub mod embeddings;
pub mod models;
pub mod run;
pub mod tools;
pub mod types;
