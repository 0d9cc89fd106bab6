//! Typed client for the Sage Accounting API v3.1 (facts: `sage-accounting.md`).
//!
//! Every call sends `Authorization: Bearer` and, once a business is chosen,
//! `X-Business`. Errors are classified the way the ledger acts on them: a token 401
//! (refresh), Sage's "No active subscription" 401 (pause, do not refresh), 429 (rate
//! limited, with `Retry-After`), 422 (validation: `$dataCode`/`$source` parsed), 5xx
//! and network failures (transient). No business logic lives here.

use std::time::Duration;

use ledger_core::Secret;
use reqwest::{StatusCode, header};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;

/// One entry of Sage's error array.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    #[serde(rename = "$severity", default)]
    pub severity: String,
    #[serde(rename = "$dataCode", default)]
    pub data_code: String,
    #[serde(rename = "$message", default)]
    pub message: String,
    #[serde(rename = "$source", default)]
    pub source: String,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // `$source` names the real culprit; `$message` is often generic.
        if self.source.is_empty() {
            write!(f, "[{}] {}", self.data_code, self.message)
        } else {
            write!(f, "[{}] {}: {}", self.data_code, self.source, self.message)
        }
    }
}

fn join(errors: &[ApiError]) -> String {
    errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
}

/// A failed Sage call, classified. Display never includes tokens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SageError {
    /// The access token was refused: refresh and retry once.
    #[error("Sage refused the access token (401): {}", join(.0))]
    TokenRejected(Vec<ApiError>),
    /// "No active subscription": the business's Sage subscription or trial lapsed.
    #[error("Sage says the business has no active subscription (401): {}", join(.0))]
    SubscriptionLapsed(Vec<ApiError>),
    #[error("Sage rate limit hit (429){}", .retry_after.map(|s| format!(", retry after {s} s")).unwrap_or_default())]
    RateLimited { retry_after: Option<u64> },
    /// 422 and other 4xx with an error array: fix the data, do not retry.
    #[error("Sage refused the request (HTTP {status}): {}", join(errors))]
    Rejected { status: u16, errors: Vec<ApiError> },
    #[error("Sage has no {path} (404)")]
    NotFound { path: String },
    /// 5xx, timeouts, connection failures.
    #[error("Sage is unavailable: {reason}")]
    Transient { reason: String },
    #[error("Sage answered with an unexpected body: {reason}")]
    BadResponse { reason: String },
}

impl SageError {
    /// A short, stable name for the variant (span attributes, call summaries).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::TokenRejected(_) => "token_rejected",
            Self::SubscriptionLapsed(_) => "subscription_lapsed",
            Self::RateLimited { .. } => "rate_limited",
            Self::Rejected { .. } => "rejected",
            Self::NotFound { .. } => "not_found",
            Self::Transient { .. } => "transient",
            Self::BadResponse { .. } => "bad_response",
        }
    }

    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient { .. } | Self::RateLimited { .. })
    }
}

/// Sage's list envelope. `$items_per_page` is sometimes spelled `$itemsPerPage`.
#[derive(Debug, Clone, Deserialize)]
pub struct Page<T> {
    #[serde(rename = "$items", default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(rename = "$next", default)]
    pub next: Option<String>,
    #[serde(rename = "$total", default)]
    pub total: Option<u64>,
}

/// `GET /businesses` item.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Business {
    pub id: String,
    #[serde(default)]
    pub displayed_as: String,
    #[serde(rename = "$path", default)]
    pub path: Option<String>,
}

/// Credentials for one call.
#[derive(Debug, Clone, Copy)]
pub struct Auth<'a> {
    pub access_token: &'a Secret<String>,
    /// `X-Business`; `None` only before a business is chosen.
    pub business_id: Option<&'a str>,
}

/// The client. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SageApi {
    http: reqwest::Client,
    base: String,
}

/// Sage's list pages hold at most 200 items.
pub const MAX_PAGE: u32 = 200;

impl SageApi {
    /// `base` is `LEDGER_SAGE_API_BASE`, e.g. `https://api.accounting.sage.com/v3.1`.
    pub fn new(base: &str, timeout: Duration) -> Self {
        ledger_core::install_crypto_provider();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .tls_backend_preconfigured(ledger_core::tls_config())
            .connect_timeout(Duration::from_secs(5))
            .timeout(timeout)
            .user_agent(concat!("byte8-ledger/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("HTTP client configuration is valid");
        Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
        }
    }

    /// The state's client (`LEDGER_SAGE_API_BASE`, `LEDGER_SAGE_TIMEOUT`), built once so
    /// that every session of the process shares its pool of connections to Sage.
    pub fn of(state: &ledger_core::AppState) -> std::sync::Arc<Self> {
        state.part(|s| Self::new(&s.settings.sage_api_base, s.settings.sage_timeout))
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// Resolves `path` (relative like `/tax_rates?x=1`, or an absolute `$next` URL on
    /// the same API host) against the base. Foreign hosts are refused: the bearer token
    /// must never leave for another host.
    fn url(&self, path: &str) -> Result<String, SageError> {
        if path.starts_with("http://") || path.starts_with("https://") {
            let base = url::Url::parse(&self.base).map_err(|e| SageError::BadResponse { reason: e.to_string() })?;
            let next = url::Url::parse(path).map_err(|e| SageError::BadResponse { reason: e.to_string() })?;
            if next.origin() != base.origin() {
                return Err(SageError::BadResponse {
                    reason: format!(
                        "a link points to another host ({})",
                        next.origin().ascii_serialization()
                    ),
                });
            }
            return Ok(path.to_owned());
        }
        let path = path
            .strip_prefix(
                url::Url::parse(&self.base)
                    .map(|u| u.path().to_owned())
                    .unwrap_or_default()
                    .as_str(),
            )
            .unwrap_or(path);
        Ok(format!("{}/{}", self.base, path.trim_start_matches('/')))
    }

    /// One client span per call, named by method and route (ids elided).
    async fn send(
        &self,
        method: &str,
        url: &str,
        request: reqwest::RequestBuilder,
        auth: Auth<'_>,
    ) -> Result<Vec<u8>, SageError> {
        let span = tracing::info_span!(
            "sage",
            otel.name = %format!("sage {method} {}", route_of(url)),
            otel.kind = "client",
            http.request.method = method,
            error.r#type = tracing::field::Empty,
        );
        let result = tracing::Instrument::instrument(self.send_inner(request, auth), span.clone()).await;
        if let Err(e) = &result {
            span.record("error.r#type", e.kind());
        }
        result
    }

    async fn send_inner(&self, request: reqwest::RequestBuilder, auth: Auth<'_>) -> Result<Vec<u8>, SageError> {
        let mut request = request
            .header(header::AUTHORIZATION, format!("Bearer {}", auth.access_token.expose()))
            .header(header::ACCEPT, "application/json");
        if let Some(business) = auth.business_id {
            request = request.header("X-Business", business);
        }
        // reqwest's text carries the URL, whose query can hold a customer's email.
        let response = request.send().await.map_err(|e| SageError::Transient {
            reason: ledger_core::http::describe(&e),
        })?;
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        if status.is_success() {
            return ledger_core::http::read_limited(response, ledger_core::http::PAGE_LIMIT)
                .await
                .map_err(|e| match e {
                    ledger_core::http::BodyError::TooLarge { .. } => SageError::BadResponse { reason: e.to_string() },
                    ledger_core::http::BodyError::Transport(_) => SageError::Transient { reason: e.to_string() },
                });
        }
        let bytes = ledger_core::http::read_prefix(response, ledger_core::http::ERROR_LIMIT).await;
        let errors: Vec<ApiError> = serde_json::from_slice(&bytes).unwrap_or_default();
        Err(match status {
            StatusCode::UNAUTHORIZED if errors.iter().any(|e| e.message.contains("No active subscription")) => {
                SageError::SubscriptionLapsed(errors)
            }
            StatusCode::UNAUTHORIZED => SageError::TokenRejected(errors),
            StatusCode::TOO_MANY_REQUESTS => SageError::RateLimited { retry_after },
            StatusCode::NOT_FOUND => SageError::NotFound { path: String::new() },
            s if s.is_server_error() => SageError::Transient {
                reason: format!("HTTP {}", s.as_u16()),
            },
            s => SageError::Rejected {
                status: s.as_u16(),
                errors,
            },
        })
    }

    /// GET and decode.
    pub async fn get<T: DeserializeOwned>(&self, auth: Auth<'_>, path: &str) -> Result<T, SageError> {
        let url = self.url(path)?;
        let bytes = self
            .send("GET", &url, self.http.get(&url), auth)
            .await
            .map_err(|e| match e {
                SageError::NotFound { .. } => SageError::NotFound { path: path.to_owned() },
                other => other,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| SageError::BadResponse { reason: e.to_string() })
    }

    /// POST a JSON body and decode the answer.
    pub async fn post<T: DeserializeOwned>(&self, auth: Auth<'_>, path: &str, body: &Value) -> Result<T, SageError> {
        let url = self.url(path)?;
        let bytes = self.send("POST", &url, self.http.post(&url).json(body), auth).await?;
        serde_json::from_slice(&bytes).map_err(|e| SageError::BadResponse { reason: e.to_string() })
    }

    /// PUT a JSON body and decode the answer.
    pub async fn put<T: DeserializeOwned>(&self, auth: Auth<'_>, path: &str, body: &Value) -> Result<T, SageError> {
        let url = self.url(path)?;
        let bytes = self.send("PUT", &url, self.http.put(&url).json(body), auth).await?;
        serde_json::from_slice(&bytes).map_err(|e| SageError::BadResponse { reason: e.to_string() })
    }

    /// DELETE (Sage voids a sales invoice this way); the answer carries no body.
    pub async fn delete(&self, auth: Auth<'_>, path: &str) -> Result<(), SageError> {
        let url = self.url(path)?;
        self.send("DELETE", &url, self.http.delete(&url), auth)
            .await
            .map(|_| ())
    }

    /// Every item of a list, following `$next` (200 per page).
    pub async fn list_all<T: DeserializeOwned>(&self, auth: Auth<'_>, path: &str) -> Result<Vec<T>, SageError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}items_per_page={MAX_PAGE}"));
        let mut items = Vec::new();
        let mut pages = 0;
        while let Some(path) = next.take() {
            pages += 1;
            if pages > 1000 {
                return Err(SageError::BadResponse {
                    reason: "more than 1000 pages; refusing to loop".to_owned(),
                });
            }
            let page: Page<T> = self.get(auth, &path).await?;
            items.extend(page.items);
            next = page.next.filter(|n| !n.is_empty());
        }
        Ok(items)
    }

    /// The businesses the token's user can access.
    pub async fn businesses(&self, access_token: &Secret<String>) -> Result<Vec<Business>, SageError> {
        self.list_all(
            Auth {
                access_token,
                business_id: None,
            },
            "/businesses",
        )
        .await
    }
}

/// The id of an object in a Sage answer (a created document, a list entry): `None` when
/// it is missing or empty, which must never be recorded as posted.
pub fn object_id(answer: &serde_json::Value) -> Option<&str> {
    answer["id"].as_str().filter(|id| !id.is_empty())
}

/// A URL's path with ids replaced by `{id}` and the query dropped: span names must not
/// carry ids (cardinality) or search terms (personal data).
pub fn route_of(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let path = path
        .split_once("://")
        .map_or(path, |(_, rest)| rest.find('/').map_or("", |i| &rest[i..]));
    path.split('/')
        .map(|seg| {
            let digits = seg.bytes().any(|b| b.is_ascii_digit());
            if digits && (seg.len() >= 8 || seg.bytes().all(|b| b.is_ascii_digit())) {
                "{id}"
            } else {
                seg
            }
        })
        .collect::<Vec<_>>()
        .join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_hide_ids_and_queries() {
        assert_eq!(
            route_of("https://api.accounting.sage.com/v3.1/sales_invoices/8f2c0a9e4b6d?search=Jane%20Doe"),
            "/v3.1/sales_invoices/{id}"
        );
        assert_eq!(route_of("http://127.0.0.1:8400/contacts"), "/contacts");
    }

    #[test]
    fn urls_resolve_against_the_base_and_stay_on_its_host() {
        let api = SageApi::new("https://api.accounting.sage.com/v3.1", Duration::from_secs(1));
        assert_eq!(
            api.url("/tax_rates?page=2").unwrap(),
            "https://api.accounting.sage.com/v3.1/tax_rates?page=2"
        );
        assert_eq!(
            api.url("/v3.1/tax_rates?page=2").unwrap(),
            "https://api.accounting.sage.com/v3.1/tax_rates?page=2"
        );
        assert_eq!(
            api.url("https://api.accounting.sage.com/v3.1/tax_rates?page=2")
                .unwrap(),
            "https://api.accounting.sage.com/v3.1/tax_rates?page=2"
        );
        assert!(api.url("https://evil.example/steal").is_err());
    }

    #[test]
    fn errors_name_their_source() {
        let e: Vec<ApiError> = serde_json::from_str(
            r#"[{"$severity":"error","$dataCode":"RecordInvalid","$message":"This field is required","$source":"line_items.description"}]"#,
        )
        .unwrap();
        assert_eq!(
            e[0].to_string(),
            "[RecordInvalid] line_items.description: This field is required"
        );
    }
}
