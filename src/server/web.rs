//! The shopper's chat page (`/`), its one-tag embed (`/widget.js`) and the staff console
//! (`/console`): static files built into the binary, so a server needs nothing else on disk and
//! the pages fetch nothing from anywhere but this server.
//!
//! The pages are public; what they show comes from the `/v1` routes, which check keys. The chat
//! page learns the widget key from `/web/config.json`: a widget key is public by design (it
//! sits in the merchant's page source) and reaches only the assistant and the shopper's own
//! conversation. The console asks staff for their key and keeps it in the tab's session storage.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use super::auth::Scope;
use super::error::ApiError;
use super::extract::Path;
use super::AppState;

/// `(name, content type, body)` of every file under `web/`.
const FILES: &[(&str, &str, &str)] = &[
    (
        "chat.html",
        "text/html; charset=utf-8",
        include_str!("../../web/chat.html"),
    ),
    (
        "chat.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/chat.js"),
    ),
    (
        "console.html",
        "text/html; charset=utf-8",
        include_str!("../../web/console.html"),
    ),
    (
        "console.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/console.js"),
    ),
    (
        "widget.js",
        "text/javascript; charset=utf-8",
        include_str!("../../web/widget.js"),
    ),
    (
        "clerk.css",
        "text/css; charset=utf-8",
        include_str!("../../web/clerk.css"),
    ),
];

/// Scripts, styles and requests only from this server. The chat page may be framed by any site
/// (the widget puts it in an iframe on the merchant's pages); the console by none.
const CSP_CHAT: &str =
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; \
                        script-src 'self'; connect-src 'self'; frame-ancestors *";
const CSP_CONSOLE: &str = "default-src 'self'; img-src 'self' data:; \
                           style-src 'self' 'unsafe-inline'; script-src 'self'; \
                           connect-src 'self'; frame-ancestors 'none'";

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/", get(|| async { page("chat.html", CSP_CHAT) }))
        .route(
            "/console",
            get(|| async { page("console.html", CSP_CONSOLE) }),
        )
        .route("/widget.js", get(|| async { file("widget.js") }))
        .route("/assets/{name}", get(asset))
        .route("/web/config.json", get(config))
}

fn file(name: &str) -> Result<Response, ApiError> {
    let (_, kind, body) = FILES
        .iter()
        .find(|(n, _, _)| *n == name)
        .ok_or_else(|| ApiError::NotFound(format!("No asset `{name}`.")))?;
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(kind)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
        ],
        *body,
    )
        .into_response())
}

fn page(name: &str, csp: &'static str) -> Result<Response, ApiError> {
    let mut res = file(name)?;
    res.headers_mut().insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp),
    );
    res.headers_mut().insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    Ok(res)
}

/// Scripts and styles; the pages themselves only at their own paths, with their policies.
async fn asset(Path(name): Path<String>) -> Result<Response, ApiError> {
    if name.ends_with(".html") {
        return Err(ApiError::NotFound(format!("No asset `{name}`.")));
    }
    file(&name)
}

/// What the chat page needs before its first message: the shop's name and the widget key.
async fn config(State(state): State<AppState>) -> Response {
    let widget_key = state
        .config
        .api_keys
        .iter()
        .find(|k| k.scope == Scope::Widget)
        .map(|k| k.key.clone());
    axum::Json(json!({
        "shop_name": state.assistant().ok().map(|a| a.shop_name().to_string()),
        "widget_key": widget_key,
    }))
    .into_response()
}
