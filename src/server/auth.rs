//! API keys and their scopes: `Authorization: Bearer KEY` on every protected route, when keys
//! are configured. A key's scope is `admin` (everything), `staff` (the raw models, the shop's
//! records, the knowledge base, the console's routes, metrics) or `widget` (a shopper's page,
//! public by design: the assistant `clerk`, its conversation routes and the passages it cites,
//! the model list, and the shop routes of the one customer its session identified).

use axum::extract::{FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::AppState;

/// What a key may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Widget,
    Staff,
    Admin,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "widget" => Some(Scope::Widget),
            "staff" => Some(Scope::Staff),
            "admin" => Some(Scope::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Widget => "widget",
            Scope::Staff => "staff",
            Scope::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub key: String,
    pub scope: Scope,
}

impl ApiKey {
    /// `[SCOPE:]KEY`: `widget:…`, `staff:…`, `admin:…`; a bare key is an admin key.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let raw = raw.trim();
        let (scope, key) = match raw.split_once(':') {
            Some((s, k)) if Scope::parse(s).is_some() => {
                (Scope::parse(s).unwrap_or(Scope::Admin), k)
            }
            _ => (Scope::Admin, raw),
        };
        if key.len() < 16 {
            return Err("API keys must be at least 16 characters long".into());
        }
        Ok(Self {
            key: key.to_string(),
            scope,
        })
    }
}

/// The authenticated caller, put in the request by [`require_key`].
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub scope: Scope,
}

impl Caller {
    /// Refuses a caller whose key is below `needed`.
    pub fn require(&self, needed: Scope) -> Result<(), ApiError> {
        if self.scope >= needed {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "This API key's scope ({}) does not allow this; it needs `{}`.",
                self.scope.as_str(),
                needed.as_str()
            )))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts
            .extensions
            .get::<Caller>()
            .copied()
            .ok_or_else(|| ApiError::Internal("route outside the key check".into()))
    }
}

/// Equal-length comparison that looks at every byte, so response timing does not reveal how much
/// of a guessed key was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

pub async fn require_key(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let keys = &state.config.api_keys;
    let store = state.key_store();
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_string());
    // The key file is read per request (off the async threads), so a key made or revoked by
    // `clerk keys` counts at once.
    let stored = match &store {
        Some(s) => {
            let (s, g) = (s.clone(), given.clone());
            match tokio::task::spawn_blocking(move || {
                let any = s.any()?;
                let found = match (&g, any) {
                    (Some(g), true) => s.lookup(g)?,
                    _ => None,
                };
                Ok::<_, super::keys::KeyError>((any, found))
            })
            .await
            {
                Ok(Ok(r)) => Some(r),
                Ok(Err(e)) => return ApiError::Internal(e.to_string()).into_response(),
                Err(e) => return ApiError::Internal(e.to_string()).into_response(),
            }
        }
        None => None,
    };
    let store_has_keys = stored.as_ref().is_some_and(|(any, _)| *any);
    if keys.is_empty() && !store_has_keys {
        // No keys: a loopback-only development server (see `serve`), open to its own machine.
        req.extensions_mut().insert(Caller {
            scope: Scope::Admin,
        });
        return next.run(req).await;
    }
    let Some(given) = given.as_deref() else {
        return ApiError::MissingApiKey.into_response();
    };
    // Every key is compared, so timing does not reveal which one matched.
    let found = keys.iter().enumerate().fold(None, |found, (i, k)| {
        if same(k.key.as_bytes(), given.as_bytes()) {
            Some((format!("config:{i}"), k.scope, None))
        } else {
            found
        }
    });
    let found = found.or_else(|| {
        stored
            .and_then(|(_, k)| k)
            .map(|k| (k.id, k.scope, k.rate_per_minute))
    });
    let Some((id, scope, own_rate)) = found else {
        return ApiError::InvalidApiKey.into_response();
    };
    if let Some(per_minute) = own_rate.or(state.config.rate_per_minute) {
        if let Err(retry_after) = state.limiter.take(&id, per_minute) {
            return ApiError::RateLimited {
                per_minute,
                retry_after,
            }
            .into_response();
        }
    }
    req.extensions_mut().insert(Caller { scope });
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_carry_their_scope() {
        let k = ApiKey::parse("widget:0123456789abcdef").unwrap();
        assert_eq!(
            (k.key.as_str(), k.scope),
            ("0123456789abcdef", Scope::Widget)
        );
        assert_eq!(
            ApiKey::parse("0123456789abcdef").unwrap().scope,
            Scope::Admin
        );
        assert!(ApiKey::parse("staff:short").is_err());
        assert!(Caller {
            scope: Scope::Widget
        }
        .require(Scope::Staff)
        .is_err());
        assert!(Caller {
            scope: Scope::Admin
        }
        .require(Scope::Staff)
        .is_ok());
    }
}
