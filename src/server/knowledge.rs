//! The knowledge base over HTTP: `GET /v1/knowledge/search`, and listing, adding and deleting
//! documents under `/v1/knowledge/documents`. Search and ingest are blocking work (the embedder,
//! the index), so they run on blocking threads.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;

use crate::retrieval::{self, Format, Input, Kind, Knowledge, Mode, RetrievalError};
use crate::server::auth::{Caller, Scope};
use crate::server::error::ApiError;
use crate::server::extract::{Json, Path};
use crate::server::AppState;

/// Documents per request at most; a whole catalogue is one document.
const MAX_DOCUMENTS: usize = 256;

impl From<RetrievalError> for ApiError {
    fn from(e: RetrievalError) -> Self {
        match e {
            RetrievalError::Parse(_) => ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("documents".into()),
                code: Some("invalid_document"),
            },
            RetrievalError::InvalidQuery { param, message } => ApiError::invalid(param, message),
            RetrievalError::NotFound(id) => {
                ApiError::NotFound(format!("No document with id `{id}`."))
            }
            RetrievalError::Busy(_) => ApiError::Conflict(
                "Another ingest is writing the knowledge base; retry when it finishes.".into(),
            ),
            RetrievalError::Embedder(e) => e.into(),
            e @ (RetrievalError::Io { .. }
            | RetrievalError::Corrupt { .. }
            | RetrievalError::OtherEmbedder { .. }
            | RetrievalError::Index(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

fn knowledge(state: &AppState) -> Result<Knowledge, ApiError> {
    state.knowledge().cloned()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, RetrievalError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("knowledge task failed: {e}")))?
        .map_err(Into::into)
}

pub async fn search(
    State(state): State<AppState>,
    caller: Caller,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    // Shoppers reach the knowledge base through the assistant and the passages it cites.
    caller.require(Scope::Staff)?;
    let Query(params) = query.map_err(|e| ApiError::invalid("q", e.body_text()))?;
    let k = knowledge(&state)?;
    let text = params
        .get("q")
        .or_else(|| params.get("query"))
        .ok_or_else(|| ApiError::invalid("q", "Missing the query parameter `q`."))?;
    let mut q = retrieval::Query::new(text.clone());
    fn parse<T: std::str::FromStr>(
        params: &HashMap<String, String>,
        name: &str,
    ) -> Result<Option<T>, ApiError>
    where
        T::Err: std::fmt::Display,
    {
        params
            .get(name)
            .map(|v| {
                v.parse::<T>()
                    .map_err(|e| ApiError::invalid(name, format!("Invalid `{name}`: {e}")))
            })
            .transpose()
    }
    q.kind = parse::<Kind>(&params, "kind")?;
    q.limit = parse::<usize>(&params, "limit")?.unwrap_or(5);
    q.in_stock = parse::<bool>(&params, "in_stock")?.unwrap_or(false);
    q.category = params.get("category").cloned();
    q.min_price = parse::<f64>(&params, "min_price")?;
    q.max_price = parse::<f64>(&params, "max_price")?;
    q.mode = parse::<Mode>(&params, "mode")?.unwrap_or_default();
    let results = blocking(move || k.search(&q)).await?;
    Ok(axum::Json(json!({
        "object": "list",
        "data": results.hits,
        "answerable": results.answerable,
        "threshold": results.threshold,
        "took_ms": results.took_ms,
    }))
    .into_response())
}

/// `GET /v1/knowledge/passage?document_id=D&locator=L`: the passage a reply's source names, so
/// the chat page can open what it cites. Any key: the assistant shows these passages to
/// shoppers anyway.
pub async fn passage(
    State(state): State<AppState>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(params) = query.map_err(|e| ApiError::invalid("document_id", e.body_text()))?;
    let k = knowledge(&state)?;
    let field = |name: &'static str| {
        params.get(name).filter(|v| !v.is_empty()).ok_or_else(|| {
            ApiError::invalid(name, format!("Missing the query parameter `{name}`."))
        })
    };
    let (doc, locator) = (field("document_id")?, field("locator")?);
    let c = k
        .passage(doc, locator)
        .ok_or_else(|| ApiError::NotFound(format!("No passage `{locator}` in `{doc}`.")))?;
    Ok(axum::Json(json!({
        "document_id": c.document_id,
        "kind": c.kind,
        "title": c.title,
        "context": c.context,
        "text": c.text,
        "source": c.source,
    }))
    .into_response())
}

pub async fn list(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let k = knowledge(&state)?;
    let docs = k.documents();
    Ok(axum::Json(json!({
        "object": "list",
        "data": docs,
        "documents": docs.len(),
        "chunks": k.chunk_count(),
    }))
    .into_response())
}

#[derive(Debug, Deserialize)]
pub struct NewDocument {
    /// Defaults to `name`.
    pub id: Option<String>,
    /// A file name: cited as the source, and its extension tells the format when none is given.
    pub name: String,
    pub content: String,
    pub format: Option<String>,
    pub kind: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum AddRequest {
    Many { documents: Vec<NewDocument> },
    One(NewDocument),
}

/// Adds or replaces documents; all of them land, or (on any bad one) none.
pub async fn add(
    State(state): State<AppState>,
    caller: Caller,
    Json(req): Json<AddRequest>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let k = knowledge(&state)?;
    let docs = match req {
        AddRequest::Many { documents } => documents,
        AddRequest::One(d) => vec![d],
    };
    if docs.is_empty() || docs.len() > MAX_DOCUMENTS {
        return Err(ApiError::invalid(
            "documents",
            format!("Send 1 to {MAX_DOCUMENTS} documents."),
        ));
    }
    let mut inputs = Vec::with_capacity(docs.len());
    for (i, d) in docs.into_iter().enumerate() {
        let param = |f: &str| format!("documents[{i}].{f}");
        if d.name.trim().is_empty() {
            return Err(ApiError::invalid(param("name"), "A document needs a name."));
        }
        let format = d
            .format
            .map(|f| {
                f.parse::<Format>()
                    .map_err(|e| ApiError::invalid(param("format"), e))
            })
            .transpose()?;
        let kind = d
            .kind
            .map(|f| {
                f.parse::<Kind>()
                    .map_err(|e| ApiError::invalid(param("kind"), e))
            })
            .transpose()?;
        let id = d.id.unwrap_or_else(|| d.name.clone());
        if id.trim().is_empty() {
            return Err(ApiError::invalid(
                param("id"),
                "A document id can't be empty.",
            ));
        }
        inputs.push(Input {
            id,
            name: d.name,
            content: d.content.into_bytes(),
            format,
            kind,
        });
    }
    let report = blocking(move || k.ingest(inputs)).await?;
    Ok(axum::Json(json!({
        "object": "knowledge.ingest",
        "added": report.added,
        "replaced": report.replaced,
        "unchanged": report.unchanged,
        "chunks": report.chunks,
        "embedded": report.embedded,
    }))
    .into_response())
}

pub async fn delete(
    State(state): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let k = knowledge(&state)?;
    let deleted = id.clone();
    blocking(move || k.delete(&id)).await?;
    Ok(
        axum::Json(json!({"id": deleted, "object": "knowledge.document", "deleted": true}))
            .into_response(),
    )
}
