//! A JSON body extractor whose failures have OpenAI's error shape and name the offending field.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use serde::de::DeserializeOwned;

use super::error::ApiError;

/// Like `axum::Json`, but a malformed body, a wrong type or a missing field is an [`ApiError`]
/// (400, `param` set to the field's path such as `messages[0].role`), and an oversized body a 413.
pub struct Json<T>(pub T);

impl<S, T> FromRequest<S> for Json<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let limit = req
            .extensions()
            .get::<BodyLimit>()
            .map_or(usize::MAX, |l| l.0);
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::PayloadTooLarge { limit }
            } else {
                ApiError::InvalidRequest {
                    message: format!("Could not read the request body: {rejection}"),
                    param: None,
                    code: None,
                }
            }
        })?;
        parse(&bytes).map(Json)
    }
}

/// Parses a JSON body; serde_json's recursion limit turns hostile nesting into an error, not a crash.
pub fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let message = if inner.is_syntax() || inner.is_eof() {
            format!("We could not parse the JSON body of your request: {inner}")
        } else if path == "." {
            format!("Invalid request body: {inner}")
        } else {
            format!("Invalid value for `{path}`: {inner}")
        };
        ApiError::InvalidRequest {
            message,
            param: (path != "." && !inner.is_syntax() && !inner.is_eof()).then_some(path),
            code: None,
        }
    })?;
    de.end().map_err(|e| ApiError::InvalidRequest {
        message: format!("We could not parse the JSON body of your request: {e}"),
        param: None,
        code: None,
    })?;
    Ok(value)
}

/// A body that may be left out (steps like claim or resolve need none): empty means the
/// defaults, anything else must parse.
pub fn parse_optional<T: DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        Ok(T::default())
    } else {
        parse(bytes)
    }
}

/// The configured body limit, put in request extensions so rejections can say what it is.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimit(pub usize);

/// Like `axum::extract::Path`, but a segment that doesn't parse ("abc" for a numeric id, bytes
/// that aren't UTF-8) is an [`ApiError`] in OpenAI's shape, not axum's plain-text 400.
pub struct Path<T>(pub T);

impl<S, T> axum::extract::FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &S,
    ) -> Result<Self, ApiError> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(rejection) => {
                use axum::extract::path::ErrorKind;
                let param = match &rejection {
                    axum::extract::rejection::PathRejection::FailedToDeserializePathParams(e) => {
                        match e.kind() {
                            ErrorKind::ParseErrorAtKey { key, .. }
                            | ErrorKind::InvalidUtf8InPathParam { key } => Some(key.clone()),
                            // A tuple of segments names its failure by place: say the name.
                            ErrorKind::ParseErrorAtIndex { index, .. } => {
                                axum::extract::RawPathParams::from_request_parts(parts, state)
                                    .await
                                    .ok()
                                    .and_then(|raw| {
                                        raw.iter().nth(*index).map(|(k, _)| k.to_string())
                                    })
                            }
                            _ => None,
                        }
                    }
                    _ => None,
                };
                Err(ApiError::InvalidRequest {
                    message: format!("Invalid path: {}", rejection.body_text()),
                    param,
                    code: None,
                })
            }
        }
    }
}
