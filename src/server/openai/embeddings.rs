//! `POST /v1/embeddings`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::server::auth::{Caller, Scope};
use crate::server::error::ApiError;
use crate::server::extract::Json;
use crate::server::AppState;

/// Inputs per request at most (OpenAI's limit).
const MAX_INPUTS: usize = 2048;

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    pub model: String,
    pub input: Input,
    pub encoding_format: Option<EncodingFormat>,
    pub dimensions: Option<i64>,
    pub user: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Input {
    One(String),
    Many(Vec<String>),
    /// Token ids are another model's vocabulary (OpenAI's); refused rather than misread.
    Tokens(Vec<serde_json::Value>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncodingFormat {
    Float,
    Base64,
}

pub async fn handler(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<EmbeddingRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let embedder = state.embedder(&req.model)?;
    let texts = match req.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
        Input::Tokens(_) => {
            return Err(ApiError::invalid(
                "input",
                "token-id input is not supported: send text",
            ))
        }
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("`input` must hold between 1 and {MAX_INPUTS} texts"),
        ));
    }
    if let Some(d) = req.dimensions {
        if d != embedder.dimension() as i64 {
            return Err(ApiError::invalid(
                "dimensions",
                format!("this embedder gives {} dimensions", embedder.dimension()),
            ));
        }
    }
    let format = req.encoding_format.unwrap_or(EncodingFormat::Float);
    let e = embedder.clone();
    let (vectors, tokens) = tokio::task::spawn_blocking(move || {
        let ids = texts
            .iter()
            .map(|t| e.tokenize(t))
            .collect::<Result<Vec<_>, _>>()?;
        let tokens: usize = ids.iter().map(Vec::len).sum();
        Ok::<_, crate::engine::EngineError>((e.embed_ids(&ids)?, tokens))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))??;
    state.record_prompt(tokens);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match format {
                EncodingFormat::Float => json!(v),
                EncodingFormat::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    json!(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            json!({ "object": "embedding", "index": i, "embedding": embedding })
        })
        .collect();
    Ok(axum::Json(json!({
        "object": "list",
        "data": data,
        "model": embedder.name(),
        "usage": { "prompt_tokens": tokens, "total_tokens": tokens },
    }))
    .into_response())
}
