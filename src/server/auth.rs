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
        // No keys: a loopback-only development server (see `serve`), open to its own machine,
        // but not to a web page the machine's browser shows, which could post to it or, through
        // a DNS name rebound to 127.0.0.1, read from it.
        if let Some(why) = foreign_browser_request(&req, &state.config.cors_origins) {
            return ApiError::Forbidden(why).into_response();
        }
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

/// Why a request to a keyless server comes from somewhere other than its own machine's programs
/// or its own pages, if it does: a `Host` that is a DNS name other than localhost (a rebound
/// name), or an `Origin` (sent by browsers with every cross-origin POST) that is neither this
/// server nor one allowed by `--cors-origin`.
fn foreign_browser_request(req: &Request, allowed: &[axum::http::HeaderValue]) -> Option<String> {
    // Browsers always say which host they address; a request without one is a program's.
    let host = req
        .headers()
        .get(axum::http::header::HOST)
        .map(|h| h.to_str().unwrap_or("?"))
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or("localhost");
    if !is_local_host(host) {
        return Some(format!(
            "this server has no API key, so it answers only requests addressed to localhost or \
             an IP address, not to `{host}`; create a key to serve other names"
        ));
    }
    let origin = req.headers().get(axum::http::header::ORIGIN)?;
    if allowed.contains(origin) {
        return None;
    }
    let same = origin.to_str().ok().is_some_and(|o| {
        o.strip_prefix("http://")
            .or_else(|| o.strip_prefix("https://"))
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
    });
    (!same).then(|| {
        "this server has no API key, so it refuses requests from other sites' pages; allow \
         one with --cors-origin or create a key"
            .to_string()
    })
}

/// Whether `host` (a `Host` header: name or address, maybe a port) names this machine without
/// DNS: an IP address, `localhost` or a name under `.localhost`.
fn is_local_host(host: &str) -> bool {
    let name = if let Some(v6) = host.strip_prefix('[') {
        return v6.split_once(']').is_some_and(|(a, port)| {
            a.parse::<std::net::Ipv6Addr>().is_ok()
                && (port.is_empty()
                    || port
                        .strip_prefix(':')
                        .is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())))
        });
    } else {
        host.rsplit_once(':')
            .filter(|(_, port)| port.bytes().all(|b| b.is_ascii_digit()))
            .map_or(host, |(name, _)| name)
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost") || name.parse::<std::net::IpAddr>().is_ok()
}

#[cfg(test)]
mod host_tests {
    use super::is_local_host;

    #[test]
    fn only_addresses_and_localhost_name_this_machine() {
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "LOCALHOST:3000",
            "[::1]:8080",
            "app.localhost",
            "10.0.0.5",
        ] {
            assert!(is_local_host(ok), "{ok}");
        }
        for no in [
            "evil.example:8080",
            "127.0.0.1.nip.io",
            "",
            "localhost.evil.example",
            "[::1",
        ] {
            assert!(!is_local_host(no), "{no}");
        }
    }
}
