//! The server's error type and its one mapping to HTTP.
//!
//! Every failure a client can see goes through [`ApiError`], which renders OpenAI's error shape
//! `{"error": {"message", "type", "param", "code"}}` with the matching status, so OpenAI SDKs raise
//! their usual exception classes. Internal failures are logged in full and sent as a generic message.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::engine::EngineError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// A malformed body or an invalid parameter (400), naming the parameter where there is one.
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
        code: Option<&'static str>,
    },
    #[error("The model `{0}` does not exist or is not served here.")]
    ModelNotFound(String),
    #[error("{0}")]
    NotFound(String),
    #[error("Method not allowed for this route.")]
    MethodNotAllowed,
    #[error(
        "You didn't provide an API key. Send it as a Bearer token in the Authorization header."
    )]
    MissingApiKey,
    #[error("Incorrect API key provided.")]
    InvalidApiKey,
    #[error(
        "This model's maximum context length is {context_length} tokens. However, you requested \
         {total} tokens ({prompt_tokens} in the messages, {max_tokens} in the completion). Please \
         reduce the length of the messages or completion."
    )]
    ContextOverflow {
        context_length: usize,
        prompt_tokens: usize,
        max_tokens: usize,
        total: usize,
    },
    #[error("The server is busy ({capacity} requests already waiting). Please retry shortly.")]
    Overloaded { capacity: usize },
    #[error(
        "This API key is over its limit of {per_minute} requests per minute; retry in \
         {retry_after} s."
    )]
    RateLimited { per_minute: u32, retry_after: u64 },
    #[error("The request body is larger than the {limit} bytes this server accepts.")]
    PayloadTooLarge { limit: usize },
    #[error("The model is still loading; retry shortly.")]
    Loading,
    #[error("The request took longer than the server's limit of {0} seconds.")]
    Timeout(u64),
    #[error("The server is shutting down.")]
    ShuttingDown,
    /// The request can't run now because of other work on the same data (409).
    #[error("{0}")]
    Conflict(String),
    /// The key's scope or the shopper's session does not allow this (403).
    #[error("{0}")]
    Forbidden(String),
    /// The shopper could not be identified, or the session is missing or expired (403).
    #[error("{0}")]
    NotIdentified(String),
    /// The shop's policy refuses the action (422); `code` says which rule.
    #[error("{message}")]
    Refused { message: String, code: &'static str },
    /// Something broke inside; the detail is logged, never sent.
    #[error("The server had an error while processing your request.")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: Some(param.into()),
            code: None,
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::InvalidRequest { .. } | ApiError::ContextOverflow { .. } => {
                StatusCode::BAD_REQUEST
            }
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::MissingApiKey | ApiError::InvalidApiKey => StatusCode::UNAUTHORIZED,
            ApiError::Overloaded { .. } | ApiError::RateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            ApiError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::Loading | ApiError::ShuttingDown => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Forbidden(_) | ApiError::NotIdentified(_) => StatusCode::FORBIDDEN,
            ApiError::Refused { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ApiError::MissingApiKey | ApiError::InvalidApiKey => "invalid_request_error",
            ApiError::Overloaded { .. } | ApiError::RateLimited { .. } => "rate_limit_error",
            ApiError::Loading | ApiError::ShuttingDown | ApiError::Timeout(_) => "server_error",
            ApiError::Internal(_) => "server_error",
            _ => "invalid_request_error",
        }
    }

    pub(crate) fn param(&self) -> Option<&str> {
        match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            ApiError::ContextOverflow { .. } => Some("messages"),
            ApiError::ModelNotFound(_) => Some("model"),
            _ => None,
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::InvalidRequest { code, .. } => *code,
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::NotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed => Some("method_not_allowed"),
            ApiError::MissingApiKey => Some("missing_api_key"),
            ApiError::InvalidApiKey => Some("invalid_api_key"),
            ApiError::ContextOverflow { .. } => Some("context_length_exceeded"),
            ApiError::Overloaded { .. } => Some("rate_limit_exceeded"),
            ApiError::RateLimited { .. } => Some("key_rate_limit_exceeded"),
            ApiError::PayloadTooLarge { .. } => Some("request_too_large"),
            ApiError::Loading => Some("model_loading"),
            ApiError::Timeout(_) => Some("timeout"),
            ApiError::ShuttingDown => Some("shutting_down"),
            ApiError::Conflict(_) => Some("conflict"),
            ApiError::Forbidden(_) => Some("permission_denied"),
            ApiError::NotIdentified(_) => Some("not_identified"),
            ApiError::Refused { code, .. } => Some(code),
            ApiError::Internal(_) => Some("internal_error"),
        }
    }

    /// The `{"error": …}` object, also sent as an SSE event when a stream fails mid-way.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "message": self.to_string(),
                "type": self.kind(),
                "param": self.param(),
                "code": self.code(),
            }
        })
    }
}

/// Text fit for a log: email addresses keep only their domain, and numbers of six or more digits
/// (phone, card, tracking and postal numbers), even written in groups (`4111 1111 1111 1111`,
/// `(555) 123-4567`), keep only their last two characters. An error's detail may quote a record;
/// the log must not hold a shopper's personal data in clear.
pub fn redact(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    for word in text.split_inclusive(char::is_whitespace) {
        let (body, space) = word.split_at(word.trim_end().len());
        let masked = match body.find('@') {
            Some(at) if at > 0 && body[at + 1..].contains('.') => {
                let start = body[..at]
                    .char_indices()
                    .rev()
                    .find(|(_, c)| !(c.is_alphanumeric() || "._%+-".contains(*c)))
                    .map_or(0, |(i, c)| i + c.len_utf8());
                format!("{}***{}", &body[..start], &body[at..])
            }
            _ => body.to_string(),
        };
        out.push(masked + space);
    }
    mask_digits(&out.concat())
}

/// Masks runs of digits joined by at most two separators each (space, `-`, `.`, `/`, brackets)
/// that hold six digits or more.
fn mask_digits(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let separator = |c: char| " -./()".contains(c);
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < chars.len() {
        if !chars[i].is_ascii_digit() {
            out.push(chars[i]);
            i += 1;
            continue;
        }
        let start = i;
        let mut j = i;
        let end = loop {
            while j < chars.len() && chars[j].is_ascii_digit() {
                j += 1;
            }
            let mut k = j;
            while k < chars.len() && k - j < 2 && separator(chars[k]) {
                k += 1;
            }
            if k > j && k < chars.len() && chars[k].is_ascii_digit() {
                j = k;
            } else {
                break j;
            }
        };
        let run = &chars[start..end];
        if run.iter().filter(|c| c.is_ascii_digit()).count() >= 6 {
            out.push_str(&"*".repeat(run.len() - 2));
            out.extend(&run[run.len() - 2..]);
        } else {
            out.extend(run);
        }
        i = end;
    }
    out
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Internal(detail) = &self {
            tracing::error!(detail = %redact(detail), "internal error");
        }
        let mut res = (self.status(), axum::Json(self.body())).into_response();
        match self {
            ApiError::RateLimited { retry_after, .. } => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
            }
            ApiError::Overloaded { .. } | ApiError::Loading => {
                res.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::MissingApiKey | ApiError::InvalidApiKey => {
                res.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        res
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> Self {
        match e {
            EngineError::ContextOverflow {
                prompt_tokens,
                max_tokens,
                context_length,
            } => ApiError::ContextOverflow {
                context_length,
                prompt_tokens,
                max_tokens,
                total: prompt_tokens + max_tokens,
            },
            EngineError::QueueFull { capacity } => ApiError::Overloaded { capacity },
            EngineError::InvalidParameter { param, message } => ApiError::invalid(param, message),
            // A template refuses messages it can't render (roles out of order, say): the caller's
            // input, so a 400 that says why.
            EngineError::Template(message) => ApiError::invalid("messages", message),
            EngineError::Tokenizer(message) => ApiError::invalid("messages", message),
            // Grammars come from `response_format` unless the caller says otherwise (tools).
            EngineError::Grammar(message) => ApiError::invalid("response_format", message),
            EngineError::ModelNotFound { name, .. } => ApiError::ModelNotFound(name),
            EngineError::Stopped => ApiError::ShuttingDown,
            e @ (EngineError::Load { .. }
            | EngineError::UnsupportedArchitecture(_)
            | EngineError::Generation(_)
            | EngineError::Tensor(_)
            | EngineError::Io(_)) => ApiError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn logs_keep_no_email_or_long_number_in_clear() {
        assert_eq!(
            redact("no customer ana.garcia0@example.com, phone 555-123-4567, order #W1000016"),
            "no customer ***@example.com, phone **********67, order #W*****16"
        );
        assert_eq!(redact("card 4111111111111111."), "card **************11.");
        assert_eq!(
            redact("(bob@shop.io) sent 12 items at 10:45"),
            "(***@shop.io) sent 12 items at 10:45"
        );
        assert_eq!(redact("no personal data"), "no personal data");
        assert_eq!(redact("a@b"), "a@b");
        // Quotes of more than one byte before an address.
        assert_eq!(redact("“ana@example.com”"), "“***@example.com”");
        assert_eq!(redact("«ana@example.com»"), "«***@example.com»");
        // Numbers written in groups are numbers too.
        assert_eq!(
            redact("card 4111 1111 1111 1111 expired"),
            "card *****************11 expired"
        );
        assert_eq!(redact("call +1 (555) 123-4567."), "call +**************67.");
        assert_eq!(
            redact("postcode 28 013, 3 items"),
            "postcode 28 013, 3 items"
        );
        assert_eq!(redact("12 items and 345 more"), "12 items and 345 more");
    }
}
