//! The assistant's routes besides the model `clerk`: what the shopper's chat page needs (its
//! conversation after a reload, the "talk to a person" button, thumbs and corrections) and what
//! staff review (corrections, curated answers, analytics).
//!
//! A conversation id is unguessable (see [`Assistant::new_conversation_id`]), and holding it is
//! holding the conversation: the shopper routes take it from the path or the
//! `X-Clerk-Conversation` header and accept any key scope. The review routes need staff.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::auth::{Caller, Scope};
use super::error::ApiError;
use super::extract::{Json, Path};
use super::shop::{blocking, ctx, message_after, page, paged, params, shop, Params};
use super::AppState;
use crate::assistant::Assistant;
use crate::shop::service::RatingStatus;
use crate::shop::{Channel, Ctx, ShopError};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/assistant/conversations/{id}", get(history))
        .route("/v1/assistant/conversations/{id}/handoff", post(human))
        .route("/v1/assistant/messages/{id}/rating", post(rate))
        .route("/v1/assistant/ratings", get(ratings))
        .route("/v1/assistant/ratings/{id}/{step}", post(review))
        .route("/v1/assistant/curated", get(curated))
        .route("/v1/assistant/curated/{id}", delete(delete_curated))
        .route("/v1/analytics", get(analytics))
}

/// A conversation id from a path or header, as the server makes them; anything else reads as
/// a conversation that does not exist.
fn conversation_id(id: &str) -> Result<String, ApiError> {
    let id = id.trim();
    if Assistant::is_conversation_id(id) {
        Ok(id.to_string())
    } else {
        Err(ApiError::NotFound(format!("No conversation `{id}`.")))
    }
}

async fn run<T: Send + 'static>(
    assistant: Assistant,
    f: impl FnOnce(&Assistant) -> Result<T, crate::assistant::AssistantError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(move || f(&assistant))
        .await
        .map_err(|e| ApiError::Internal(format!("assistant task failed: {e}")))?
        .map_err(Into::into)
}

/// `GET /v1/assistant/conversations/{id}?after=N`: the messages after message `N`.
async fn history(
    State(state): State<AppState>,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let assistant = state.assistant()?.clone();
    let id = conversation_id(&id)?;
    let after = message_after(&params(q)?)?;
    let h = run(assistant, move |a| a.history(&id, after)).await?;
    Ok(axum::Json(h).into_response())
}

/// `POST /v1/assistant/conversations/{id}/handoff`: the "talk to a person" button.
async fn human(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let assistant = state.assistant()?.clone();
    let id = conversation_id(&id)?;
    let reply = run(assistant, move |a| {
        if !a.knows(&id)? {
            return Err(ShopError::not_found("conversation", &id).into());
        }
        a.request_human(&id)
    })
    .await?;
    Ok(axum::Json(json!({
        "conversation_id": reply.conversation_id,
        "text": reply.text,
        "handoff_id": reply.handoff,
        "message_id": reply.message_id,
        "language": reply.language,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum Thumb {
    Up,
    Down,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rating {
    rating: Thumb,
    #[serde(default)]
    correction: Option<String>,
}

/// `POST /v1/assistant/messages/{id}/rating` with the conversation in `X-Clerk-Conversation`.
async fn rate(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<i64>,
    Json(body): Json<Rating>,
) -> Result<Response, ApiError> {
    let assistant = state.assistant()?.clone();
    let conversation = headers
        .get(super::openai::assistant::HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| {
            ApiError::invalid(
                "X-Clerk-Conversation",
                "rating an answer needs its conversation id in the X-Clerk-Conversation header",
            )
        })?;
    let conversation = conversation_id(conversation)?;
    let r = run(assistant, move |a| {
        Ok(a.shop().rate_answer(
            &Ctx::shopper(Channel::Assistant),
            &conversation,
            id,
            matches!(body.rating, Thumb::Up),
            body.correction.as_deref(),
        )?)
    })
    .await?;
    Ok(axum::Json(r).into_response())
}

/// `GET /v1/assistant/ratings?status=pending|noted|approved|rejected|all` (staff).
async fn ratings(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = state.assistant()?.shop().clone();
    let p = params(q)?;
    let page = page(&p)?;
    let status = match p.get("status").map(String::as_str) {
        None => Some(RatingStatus::Pending),
        Some("all") => None,
        Some(s) => Some(RatingStatus::parse(s).ok_or_else(|| {
            ApiError::invalid(
                "status",
                "status must be pending, noted, approved, rejected or all",
            )
        })?),
    };
    paged(
        page,
        move |pg| shop.store().ratings(status, pg),
        |r| r.id.to_string(),
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Review {
    #[serde(default)]
    answer: Option<String>,
}

/// `POST /v1/assistant/ratings/{id}/{approve|reject}` (staff). Approving makes the correction
/// (or the `answer` staff wrote instead) the curated answer to the rated question.
async fn review(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, step)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = state.assistant()?.shop().clone();
    let ctx = ctx(caller, &headers);
    let approve = match step.as_str() {
        "approve" => true,
        "reject" => false,
        _ => return Err(ApiError::NotFound(format!("No rating step `{step}`."))),
    };
    let review: Review = super::extract::parse_optional(&body)?;
    let (rating, curated) =
        blocking(move || shop.review_rating(&ctx, id, approve, review.answer.as_deref())).await?;
    Ok(axum::Json(json!({ "rating": rating, "curated": curated })).into_response())
}

async fn curated(State(state): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = state.assistant()?.shop().clone();
    let rows = blocking(move || shop.store().curated_answers()).await?;
    Ok(axum::Json(json!({ "object": "list", "data": rows })).into_response())
}

async fn delete_curated(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = state.assistant()?.shop().clone();
    let ctx = ctx(caller, &headers);
    blocking(move || shop.delete_curated(&ctx, id)).await?;
    Ok(axum::Json(json!({ "id": id, "deleted": true })).into_response())
}

/// `GET /v1/analytics?days=N` (staff, N from 1 to 366, default 14): the console's charts.
async fn analytics(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let p = params(q)?;
    let days: i64 = match p.get("days") {
        None => 14,
        Some(d) => match d.parse() {
            Ok(n) if (1..=366).contains(&n) => n,
            _ => return Err(ApiError::invalid("days", "days must be 1 to 366")),
        },
    };
    let now = crate::clock::unix_now();
    // Whole UTC days: today and the days before it.
    let since = (now.div_euclid(86_400) - (days - 1)) * 86_400;
    let a = blocking(move || shop.store().analytics(since, now + 1)).await?;
    let counted = |rows: &[crate::shop::service::Counted], key: &str| {
        rows.iter()
            .map(|c| json!({ key: c.label, "count": c.count }))
            .collect::<Vec<_>>()
    };
    Ok(axum::Json(json!({
        "days": a.days,
        "conversations": a.conversations,
        "resolved_without_human": a.resolved_without_human,
        "handoff_rate": a.handoff_rate,
        "handoff_reasons": counted(&a.handoff_reasons, "reason"),
        "ratings": a.ratings,
        "top_intents": counted(&a.top_intents, "intent"),
        "unanswered": counted(&a.unanswered, "question"),
        "latency_ms": a.latency_ms,
    }))
    .into_response())
}
