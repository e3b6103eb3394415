//! The shop over HTTP, under `/v1/shop/`, for the merchant's systems, the staff console and the
//! shopper's widget.
//!
//! Staff and admin keys reach every customer; a widget key reaches only the customer its session
//! (`X-Clerk-Session`, from `POST /v1/shop/identify`) identified, and anyone else's records read
//! as not found. Order changes take two calls: without `confirmation_token` the answer is the
//! summary and a token; with it, the change is made. Lists are paged with `limit` and `after`
//! and answer `{"object": "list", "data", "has_more", "last_id"}`.

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::auth::{Caller, Scope};
use super::error::ApiError;
use super::extract::{Json, Path};
use super::AppState;
use crate::shop::care::About;
use crate::shop::service::HandoffStatus;
use crate::shop::store::{AuditFilter, OrderFilter, Page};
use crate::shop::{
    Channel, Ctx, CustomerId, Identified, IdentifyBy, OrderAction, OrderId, OrderStatus, Refusal,
    Shop, ShopError,
};

/// How long a widget session lasts.
const SESSION_SECS: i64 = 8 * 3600;
const SESSION_HEADER: &str = "x-clerk-session";
const STAFF_HEADER: &str = "x-clerk-staff";

impl From<ShopError> for ApiError {
    fn from(e: ShopError) -> Self {
        match e {
            ShopError::Invalid { field, message } => {
                ApiError::invalid(field, format!("Invalid {field}: {message}"))
            }
            ShopError::NotIdentified => ApiError::NotIdentified(e.to_string()),
            ShopError::Ambiguous => ApiError::InvalidRequest {
                message: e.to_string(),
                param: Some("email".into()),
                code: Some("ambiguous_identity"),
            },
            ShopError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            ShopError::Refused { code, message, .. } => ApiError::Refused {
                message,
                code: match code {
                    Refusal::Status => "order_status",
                    Refusal::Reason => "cancel_reason",
                    Refusal::PaymentMethod => "payment_method",
                    Refusal::Balance => "insufficient_balance",
                    Refusal::Item => "item_not_allowed",
                    Refusal::AlreadyModified => "already_modified",
                    Refusal::Window => "outside_window",
                    Refusal::Policy => "policy",
                },
            },
            ShopError::Confirmation(m) => ApiError::InvalidRequest {
                message: m.to_string(),
                param: Some("confirmation_token".into()),
                code: Some("invalid_confirmation"),
            },
            ShopError::Conflict(m) => ApiError::Conflict(m),
            ShopError::Forbidden(m) => ApiError::Forbidden(m.to_string()),
            ShopError::Import { .. } => ApiError::InvalidRequest {
                message: e.to_string(),
                param: None,
                code: Some("invalid_import"),
            },
            ShopError::Storage(detail) | ShopError::Key(detail) => ApiError::Internal(detail),
        }
    }
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/shop/identify", post(identify))
        .route("/v1/shop/me", get(me))
        .route("/v1/shop/customers", get(list_customers))
        .route("/v1/shop/customers/{id}", get(get_customer))
        .route("/v1/shop/customers/{id}/export", get(export_customer))
        .route("/v1/shop/customers/{id}/erase", post(erase_customer))
        .route(
            "/v1/shop/customers/{id}/recommendations",
            get(recommendations),
        )
        .route("/v1/shop/orders", get(list_orders))
        .route("/v1/shop/orders/{id}", get(get_order))
        .route("/v1/shop/orders/{id}/{action}", post(order_action))
        .route("/v1/shop/feedback", get(list_feedback).post(add_feedback))
        .route(
            "/v1/shop/complaints",
            get(list_complaints).post(add_complaint),
        )
        .route("/v1/shop/complaints/{id}/resolve", post(resolve_complaint))
        .route("/v1/shop/handoffs", get(list_handoffs).post(open_handoff))
        .route("/v1/shop/handoffs/{id}/{step}", post(handoff_step))
        .route("/v1/shop/conversations/{id}/messages", get(messages))
        .route("/v1/shop/audit", get(audit))
}

pub(super) fn shop(state: &AppState) -> Result<Shop, ApiError> {
    state
        .shop()
        .cloned()
        .ok_or_else(|| ApiError::NotFound("This server has no shop database.".into()))
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ShopError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::Internal(format!("shop task failed: {e}")))?
        .map_err(Into::into)
}

/// Who is acting, for the audit log: staff by the name they send (or `staff`), else the shopper.
pub(super) fn ctx(caller: Caller, headers: &HeaderMap) -> Ctx {
    if caller.scope >= Scope::Staff {
        let name = headers
            .get(STAFF_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|n| !n.is_empty() && n.len() <= 64)
            .unwrap_or(caller.scope.as_str());
        Ctx::staff(name, Channel::Api)
    } else {
        Ctx::shopper(Channel::Api)
    }
}

fn session_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get(SESSION_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The shopper a widget call acts for; staff get `None` (they may name any customer).
fn widget_identity(
    shop: &Shop,
    caller: Caller,
    headers: &HeaderMap,
) -> Result<Option<Identified>, ShopError> {
    if caller.scope >= Scope::Staff {
        return Ok(None);
    }
    let token = session_token(headers).ok_or(ShopError::NotIdentified)?;
    shop.session(&token).map(Some)
}

/// For what a shopper may also send anonymously (feedback, a handoff): the widget's shopper when
/// it sends a session, else nobody in particular.
fn shopper_if_known(
    shop: &Shop,
    caller: Caller,
    headers: &HeaderMap,
) -> Result<Option<Identified>, ShopError> {
    match session_token(headers) {
        Some(t) if caller.scope == Scope::Widget => shop.session(&t).map(Some),
        _ => Ok(None),
    }
}

/// The customer a route names, as the caller may act for them: staff for anyone, a widget only
/// for its own session's customer (anyone else reads as not found).
fn acting_for(
    shop: &Shop,
    ctx: &Ctx,
    caller: Caller,
    headers: &HeaderMap,
    id: &str,
) -> Result<Identified, ShopError> {
    let id = CustomerId::parse(id)?;
    match widget_identity(shop, caller, headers)? {
        Some(who) if who.customer_id() == &id => Ok(who),
        Some(_) => Err(ShopError::not_found("customer", id)),
        None => shop.for_staff(ctx, &id),
    }
}

/// The customer an order belongs to, as the caller may act for them.
fn acting_for_order(
    shop: &Shop,
    ctx: &Ctx,
    caller: Caller,
    headers: &HeaderMap,
    order: &OrderId,
) -> Result<Identified, ShopError> {
    match widget_identity(shop, caller, headers)? {
        // Ownership is checked by every order action against this identity.
        Some(who) => Ok(who),
        None => {
            let o = shop
                .store()
                .order(order)?
                .ok_or_else(|| ShopError::not_found("order", order))?;
            shop.for_staff(ctx, &o.customer_id)
        }
    }
}

pub(super) type Params = Result<Query<HashMap<String, String>>, QueryRejection>;

pub(super) fn params(q: Params) -> Result<HashMap<String, String>, ApiError> {
    q.map(|Query(m)| m)
        .map_err(|e| ApiError::invalid("query", format!("Invalid query string: {e}")))
}

/// The `after` of a conversation's messages: a message id, 0 for all.
pub(super) fn message_after(p: &HashMap<String, String>) -> Result<i64, ApiError> {
    match p.get("after") {
        None => Ok(0),
        Some(a) => a
            .parse()
            .map_err(|_| ApiError::invalid("after", "after must be a message id")),
    }
}

pub(super) fn page(p: &HashMap<String, String>) -> Result<Page, ApiError> {
    let limit = match p.get("limit") {
        None => 20,
        Some(l) => match l.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => return Err(ApiError::invalid("limit", "limit must be 1 to 100")),
        },
    };
    Ok(Page {
        // One more than asked tells whether there is a next page.
        limit: limit + 1,
        after: p.get("after").cloned(),
    })
}

/// Loads one page on a blocking thread and answers it as an OpenAI-style list; `id` gives each
/// row's cursor.
pub(super) async fn paged<T: Serialize + Send + 'static>(
    page: Page,
    load: impl FnOnce(&Page) -> Result<Vec<T>, ShopError> + Send + 'static,
    id: impl Fn(&T) -> String,
) -> Result<Response, ApiError> {
    let limit = page.limit;
    let mut rows = blocking(move || load(&page)).await?;
    // `page` asked for one row more than the caller did: its presence means another page.
    let has_more = rows.len() >= limit;
    rows.truncate(limit - 1);
    let last_id = rows.last().map(&id);
    Ok(axum::Json(json!({
        "object": "list",
        "data": rows,
        "has_more": has_more,
        "last_id": last_id,
    }))
    .into_response())
}

async fn identify(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(by): Json<IdentifyBy>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let (who, token, expires_at) = blocking(move || {
        // Proof is required whatever the key: staff use the customer routes instead.
        let who = shop.identify(&Ctx::shopper(ctx.channel), &by)?;
        let (token, expires) = shop.open_session(&ctx, &who, SESSION_SECS)?;
        Ok((who, token, expires))
    })
    .await?;
    Ok(axum::Json(json!({
        "object": "shop.session",
        "session": token,
        "customer_id": who.customer_id(),
        "expires_at": expires_at,
    }))
    .into_response())
}

async fn me(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let token = session_token(&headers).ok_or_else(|| {
        ApiError::NotIdentified(format!(
            "Send the session from /v1/shop/identify in `{SESSION_HEADER}`."
        ))
    })?;
    let (profile, orders) = blocking(move || {
        let who = shop.session(&token)?;
        shop.account(&ctx, &who)
    })
    .await?;
    Ok(axum::Json(json!({ "customer": profile, "orders": orders })).into_response())
}

async fn list_customers(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let page = page(&params(q)?)?;
    paged(
        page,
        move |pg| shop.store().list_customers(pg),
        |c| c.id.to_string(),
    )
    .await
}

async fn get_customer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let (profile, orders) = blocking(move || {
        let who = acting_for(&shop, &ctx, caller, &headers, &id)?;
        shop.account(&ctx, &who)
    })
    .await?;
    Ok(axum::Json(json!({ "customer": profile, "orders": orders })).into_response())
}

async fn export_customer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let export = blocking(move || {
        let who = shop.for_staff(&ctx, &CustomerId::parse(&id)?)?;
        shop.export_customer(&ctx, &who)
    })
    .await?;
    Ok(axum::Json(export).into_response())
}

async fn erase_customer(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let cid = id.clone();
    blocking(move || {
        let who = shop.for_staff(&ctx, &CustomerId::parse(&cid)?)?;
        shop.erase_customer(&ctx, &who)
    })
    .await?;
    Ok(
        axum::Json(json!({ "object": "shop.customer.erased", "id": id, "erased": true }))
            .into_response(),
    )
}

async fn recommendations(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let p = params(q)?;
    let limit = match p.get("limit") {
        None => 5,
        Some(l) => l
            .parse()
            .map_err(|_| ApiError::invalid("limit", "limit must be 1 to 50"))?,
    };
    let context = p.get("context").cloned().unwrap_or_default();
    let knowledge = state.knowledge().ok().cloned();
    let ctx = ctx(caller, &headers);
    let rows = blocking(move || {
        let who = acting_for(&shop, &ctx, caller, &headers, &id)?;
        shop.recommend(&ctx, &who, &context, knowledge.as_ref(), limit)
    })
    .await?;
    Ok(axum::Json(json!({ "object": "list", "data": rows })).into_response())
}

async fn list_orders(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    q: Params,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let p = params(q)?;
    let mut page = page(&p)?;
    // Order ids start with `#`, which a query string must escape; `after=W123` works too.
    if let Some(after) = &page.after {
        page.after = Some(OrderId::parse(after)?.to_string());
    }
    let status = p.get("status").map(|s| OrderStatus::parse(s)).transpose()?;
    let customer = p
        .get("customer_id")
        .map(|c| CustomerId::parse(c))
        .transpose()?;
    let load = move |pg: &Page| {
        let customer = match widget_identity(&shop, caller, &headers)? {
            // A widget lists its own customer's orders, whatever it asks for.
            Some(who) => Some(who.customer_id().clone()),
            None => customer,
        };
        shop.store()
            .list_orders(&OrderFilter { customer, status }, pg)
    };
    paged(page, load, |o| o.id.to_string()).await
}

async fn get_order(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let id = OrderId::parse(&id)?;
    let ctx = ctx(caller, &headers);
    let details = blocking(move || {
        let who = acting_for_order(&shop, &ctx, caller, &headers, &id)?;
        shop.order_status(&ctx, &who, &id)
    })
    .await?;
    Ok(axum::Json(details).into_response())
}

/// `POST /v1/shop/orders/{id}/{cancel|modify_address|modify_payment|modify_items|return|exchange}`.
async fn order_action(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Json(mut body): Json<serde_json::Map<String, Value>>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let order = OrderId::parse(&id)?;
    let token = match body.remove("confirmation_token") {
        None | Some(Value::Null) => None,
        Some(Value::String(t)) => Some(t),
        Some(_) => {
            return Err(ApiError::invalid(
                "confirmation_token",
                "confirmation_token must be a string",
            ))
        }
    };
    body.insert("action".into(), Value::String(action.clone()));
    body.insert("order_id".into(), Value::String(order.to_string()));
    let action: OrderAction =
        super::extract::parse(&serde_json::to_vec(&body).map_err(|e| ApiError::Internal(e.to_string()))?)
            .map_err(|e| match e {
                ApiError::InvalidRequest { message, param, .. } if param.as_deref() == Some("action") || message.contains("unknown variant") => {
                    ApiError::NotFound(format!(
                        "No order action `{action}`; use cancel, modify_address, modify_payment, modify_items, return or exchange."
                    ))
                }
                e => e,
            })?;
    let ctx = ctx(caller, &headers);
    let result = blocking(move || {
        let who = acting_for_order(&shop, &ctx, caller, &headers, &order)?;
        match token {
            None => Ok(json!({ "object": "shop.confirmation", "confirmation": shop.prepare(&ctx, &who, &action)? })),
            Some(t) => Ok(json!({ "object": "shop.action", "result": shop.confirm(&ctx, &who, &action, &t)? })),
        }
    })
    .await?;
    Ok(axum::Json(result).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewFeedback {
    text: String,
    #[serde(default)]
    rating: Option<u8>,
    #[serde(default)]
    conversation_id: Option<String>,
}

async fn add_feedback(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<NewFeedback>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let f = blocking(move || {
        let who = shopper_if_known(&shop, caller, &headers)?;
        let about = About {
            conversation_id: body.conversation_id,
            order_id: None,
        };
        shop.feedback(&ctx, who.as_ref(), &about, &body.text, body.rating)
    })
    .await?;
    Ok(axum::Json(f).into_response())
}

async fn list_feedback(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let p = params(q)?;
    let page = page(&p)?;
    let queue = p.get("queue").cloned();
    paged(
        page,
        move |pg| shop.store().feedback(queue.as_deref(), pg),
        |f| f.id.to_string(),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewComplaint {
    text: String,
    #[serde(default)]
    order_id: Option<OrderId>,
    #[serde(default)]
    conversation_id: Option<String>,
}

async fn add_complaint(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<NewComplaint>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let c = blocking(move || {
        let who = widget_identity(&shop, caller, &headers)?;
        let about = About {
            conversation_id: body.conversation_id,
            order_id: body.order_id,
        };
        shop.complaint(&ctx, who.as_ref(), &about, &body.text)
    })
    .await?;
    Ok(axum::Json(c).into_response())
}

async fn list_complaints(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let page = page(&params(q)?)?;
    paged(
        page,
        move |pg| shop.store().complaints(pg),
        |c| c.id.to_string(),
    )
    .await
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewHandoff {
    conversation_id: String,
    reason: String,
    summary: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Resolve {
    #[serde(default)]
    note: Option<String>,
}

/// `POST /v1/shop/complaints/{id}/resolve` (staff), with an optional `{"note": ...}`.
async fn resolve_complaint(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let r: Resolve = super::extract::parse_optional(&body)?;
    let c = blocking(move || shop.resolve_complaint(&ctx, id, r.note.as_deref())).await?;
    Ok(axum::Json(c).into_response())
}

async fn open_handoff(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Json(body): Json<NewHandoff>,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    let h = blocking(move || {
        let who = shopper_if_known(&shop, caller, &headers)?;
        shop.open_handoff(
            &ctx,
            who.as_ref(),
            &body.conversation_id,
            &body.reason,
            &body.summary,
        )
    })
    .await?;
    Ok(axum::Json(h).into_response())
}

async fn list_handoffs(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let p = params(q)?;
    let page = page(&p)?;
    let status = match p.get("status") {
        None => None,
        Some(s) => Some(HandoffStatus::parse(s).ok_or_else(|| {
            ApiError::invalid("status", "status must be open, claimed or closed")
        })?),
    };
    paged(
        page,
        move |pg| shop.store().handoffs(status, pg),
        |h| h.id.to_string(),
    )
    .await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HandoffReply {
    #[serde(default)]
    text: Option<String>,
}

/// `POST /v1/shop/handoffs/{id}/{claim|reply|close}` (staff).
async fn handoff_step(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path((id, step)): Path<(i64, String)>,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    caller.require(Scope::Staff)?;
    let shop = shop(&state)?;
    let ctx = ctx(caller, &headers);
    // Claim and close need no body; a reply sends `{"text": ...}`.
    let text = super::extract::parse_optional::<HandoffReply>(&body)?.text;
    let out = blocking(move || match step.as_str() {
        "claim" => Ok(serde_json::to_value(shop.claim_handoff(&ctx, id)?)?),
        "close" => Ok(serde_json::to_value(shop.close_handoff(&ctx, id)?)?),
        "reply" => {
            let text = text.ok_or(ShopError::Invalid {
                field: "text",
                message: "a reply needs `text`".into(),
            })?;
            Ok(serde_json::to_value(shop.reply_handoff(&ctx, id, &text)?)?)
        }
        other => Err(ShopError::not_found("handoff step", other)),
    })
    .await?;
    Ok(axum::Json(out).into_response())
}

/// A conversation's messages after `after` (a message id): how a widget polls for staff replies.
async fn messages(
    State(state): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
    q: Params,
) -> Result<Response, ApiError> {
    let shop = shop(&state)?;
    let after = message_after(&params(q)?)?;
    let (conversation, rows) = blocking(move || {
        let conv = shop
            .store()
            .conversation(&id)?
            .ok_or_else(|| ShopError::not_found("conversation", &id))?;
        if let Some(who) = widget_identity(&shop, caller, &headers)? {
            if conv.customer_id.as_ref() != Some(who.customer_id()) {
                return Err(ShopError::not_found("conversation", &id));
            }
        }
        let rows = shop.store().messages(&id, after)?;
        Ok((conv, rows))
    })
    .await?;
    Ok(
        axum::Json(json!({ "object": "list", "conversation": conversation, "data": rows }))
            .into_response(),
    )
}

async fn audit(
    State(state): State<AppState>,
    caller: Caller,
    q: Params,
) -> Result<Response, ApiError> {
    caller.require(Scope::Admin)?;
    let shop = shop(&state)?;
    let p = params(q)?;
    let page = page(&p)?;
    let filter = AuditFilter {
        customer: p
            .get("customer_id")
            .map(|c| CustomerId::parse(c))
            .transpose()?,
        target: p.get("target").cloned(),
    };
    paged(
        page,
        move |pg| shop.store().audit(&filter, pg),
        |a| a.id.to_string(),
    )
    .await
}
