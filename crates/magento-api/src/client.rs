//! Typed client for the module's REST routes (contract §4, §8).
//!
//! Every request carries a freshly minted inbound JWT (the module refuses a reused
//! `jti`), goes only to the store's checked addresses, follows no redirects and is
//! bounded by the configured timeouts. Failures are classified so callers decide
//! between retrying, pausing and reporting.

use std::fmt;

use ledger_core::{Secret, http};
use reqwest::{StatusCode, header};
use serde::{Serialize, de::DeserializeOwned};

use crate::{
    auth::{self, Subkeys},
    canonical::{Contact, CreditMemo, Invoice, Payment, PaymentMethod, Product, SyncState},
    url::{self, Url, UrlError, UrlPolicy},
};

/// How a failure should be treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 401: the store no longer accepts our key (re-pair needed).
    Auth,
    /// 404: the entity (or the module's route) does not exist.
    NotFound,
    /// Worth retrying: 5xx, timeouts, connection failures.
    Transient,
    /// Will not change by retrying: 4xx other than 401/404, undecodable answers,
    /// redirects, refused URLs.
    BadData,
}

/// A failed call to a store. Display names the URL and what happened; never a secret.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MagentoError {
    #[error(transparent)]
    Url(#[from] UrlError),
    #[error("{url} answered 401: the store did not accept the ledger's credentials")]
    Unauthorized { url: String },
    /// A 401 whose `Date` shows the store's clock far from the ledger's: the store refused
    /// the token's times, not its key.
    #[error(
        "{url} answered 401 with its clock {} s {} the ledger's: the store refused the token's times, not its key. \
         Fix the Magento server's clock (NTP); the ledger retries",
        store_ahead_secs.unsigned_abs(),
        if *store_ahead_secs > 0 { "ahead of" } else { "behind" }
    )]
    ClockSkew { url: String, store_ahead_secs: i64 },
    #[error("{url} answered 404{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    NotFound { url: String, message: Option<String> },
    #[error("{url} answered HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Rejected {
        url: String,
        status: u16,
        message: Option<String>,
    },
    #[error("{url} redirected (HTTP {status}) to {location}; the ledger does not follow redirects")]
    Redirected { url: String, status: u16, location: String },
    #[error("{url}: {reason}")]
    Transient { url: String, reason: String },
    #[error("{url} answered with an unusable body: {reason}")]
    BadResponse { url: String, reason: String },
}

impl MagentoError {
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Unauthorized { .. } => ErrorClass::Auth,
            Self::NotFound { .. } => ErrorClass::NotFound,
            Self::Transient { .. } | Self::ClockSkew { .. } => ErrorClass::Transient,
            Self::Url(UrlError::Resolve { .. }) => ErrorClass::Transient,
            Self::Url(_) | Self::Rejected { .. } | Self::Redirected { .. } | Self::BadResponse { .. } => {
                ErrorClass::BadData
            }
        }
    }

    /// Maps a transport failure (no HTTP answer) to a readable reason.
    fn transport(url: &str, err: &reqwest::Error, timeout: std::time::Duration) -> Self {
        // reqwest's own text names the URL; ours already does, so only its causes are kept.
        let chain = http::describe(err);
        let reason = if err.is_timeout() {
            format!("no answer within {} ms (timed out)", timeout.as_millis())
        } else if chain.contains("certificate") || chain.contains("tls") || chain.contains("TLS") {
            format!("TLS handshake failed ({chain})")
        } else if chain.contains("refused") {
            "connection refused".to_owned()
        } else {
            chain
        };
        Self::Transient {
            url: url.to_owned(),
            reason,
        }
    }
}

impl MagentoError {
    /// A body that could not be read: too large is the store's answer, not a blip.
    fn body(url: &str, err: http::BodyError, timeout: std::time::Duration) -> Self {
        match err {
            http::BodyError::TooLarge { .. } => Self::BadResponse {
                url: url.to_owned(),
                reason: err.to_string(),
            },
            http::BodyError::Transport(e) => Self::transport(url, &e, timeout),
        }
    }
}

/// Magento error bodies are `{"message": "...", "parameters": ...}` with `%1` placeholders.
fn magento_message(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    let mut message = value.get("message")?.as_str()?.to_owned();
    if let Some(params) = value.get("parameters") {
        let values: Vec<String> = match params {
            serde_json::Value::Array(a) => a
                .iter()
                .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                .collect(),
            serde_json::Value::Object(o) => o
                .values()
                .map(|v| v.as_str().map_or(v.to_string(), str::to_owned))
                .collect(),
            _ => Vec::new(),
        };
        for (i, v) in values.iter().enumerate() {
            message = message.replace(&format!("%{}", i + 1), v);
        }
    }
    Some(message.chars().take(500).collect())
}

/// A store answer's clock (its `Date` header) minus the ledger's, in seconds; `None` when
/// the header is missing or unreadable.
pub fn store_clock_offset(headers: &header::HeaderMap, now: chrono::DateTime<chrono::Utc>) -> Option<i64> {
    let date = headers.get(header::DATE)?.to_str().ok()?;
    let at = chrono::DateTime::parse_from_rfc2822(date).ok()?;
    Some(at.timestamp() - now.timestamp())
}

/// Beyond this the store's refusal is its clock, not our key: the ledger's tokens are
/// accepted by a store up to 90 s behind or 240 s ahead (`auth::mint_inbound`), and a
/// `Date` header is whole seconds.
const SKEW_REFUSAL_SECS: i64 = 80;

/// Turns a non-2xx answer into an error. `dated_for` is the store clock offset the
/// request's token was dated for.
fn status_error(
    url: &str,
    status: StatusCode,
    headers: &header::HeaderMap,
    body: &[u8],
    dated_for: i64,
) -> MagentoError {
    let url = url.to_owned();
    match status.as_u16() {
        401 => match store_clock_offset(headers, chrono::Utc::now()) {
            Some(offset) if !(-SKEW_REFUSAL_SECS..=200).contains(&(offset - dated_for)) => MagentoError::ClockSkew {
                url,
                store_ahead_secs: offset,
            },
            _ => MagentoError::Unauthorized { url },
        },
        404 => MagentoError::NotFound {
            url,
            message: magento_message(body),
        },
        300..=399 => MagentoError::Redirected {
            url,
            status: status.as_u16(),
            location: headers
                .get(header::LOCATION)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("(no Location)")
                .to_owned(),
        },
        500..=599 => MagentoError::Transient {
            url,
            reason: match magento_message(body) {
                Some(m) => format!("HTTP {}: {m}", status.as_u16()),
                None => format!("HTTP {}", status.as_u16()),
            },
        },
        s => MagentoError::Rejected {
            url,
            status: s,
            message: magento_message(body),
        },
    }
}

/// The body of the pairing call (contract §4), keys in the documented snake_case.
#[derive(Serialize)]
struct PairBody<'a> {
    pairing_code: &'a str,
    tenant_id: &'a str,
    byte8_api_key: &'a str,
    ledger_base_url: &'a str,
}

/// `POST {base}/rest/V1/byte8/setup/pair` (anonymous). Ok only on 2xx.
pub async fn pair(
    base: &Url,
    policy: &UrlPolicy,
    pairing_code: &str,
    tenant_id: &str,
    api_key: &Secret<String>,
    ledger_base_url: &str,
) -> Result<(), MagentoError> {
    let http = url::pinned_client(base, policy).await?;
    let target = format!("{}/rest/V1/byte8/setup/pair", url::base_url_text(base));
    let body = PairBody {
        pairing_code,
        tenant_id,
        byte8_api_key: api_key.expose(),
        ledger_base_url,
    };
    let response = http
        .post(&target)
        .header(header::ACCEPT, "application/json")
        .json(&body)
        .send()
        .await
        .map_err(|e| MagentoError::transport(&target, &e, policy.request_timeout))?;
    let status = response.status();
    let headers = response.headers().clone();
    if !status.is_success() {
        let bytes = http::read_prefix(response, http::ERROR_LIMIT).await;
        if status == StatusCode::UNAUTHORIZED {
            // No token to be dated: the store refused the pairing code.
            return Err(MagentoError::Unauthorized { url: target });
        }
        return Err(status_error(&target, status, &headers, &bytes, 0));
    }
    let bytes = http::read_limited(response, http::SMALL_LIMIT)
        .await
        .map_err(|e| MagentoError::body(&target, e, policy.request_timeout))?;
    // Stock Magento answers `[]`; a page that is not JSON means something else answered.
    if !bytes.is_empty() && serde_json::from_slice::<serde_json::Value>(&bytes).is_err() {
        return Err(MagentoError::BadResponse {
            url: target,
            reason: "expected JSON, got something else (is this the Magento storefront URL?)".to_owned(),
        });
    }
    Ok(())
}

/// A client for one paired store.
pub struct MagentoClient {
    base: String,
    tenant_id: String,
    subkeys: Subkeys,
    http: reqwest::Client,
    timeout: std::time::Duration,
    /// The store's clock minus the ledger's when the store is behind (≤ 0): its
    /// tokens are dated by its clock.
    store_behind_secs: i64,
}

impl fmt::Debug for MagentoClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MagentoClient")
            .field("base", &self.base)
            .field("tenant_id", &self.tenant_id)
            .finish_non_exhaustive()
    }
}

impl MagentoClient {
    /// Checks the URL against `policy`, resolves it once and pins the addresses.
    pub async fn new(
        base: &Url,
        tenant_id: &str,
        api_key: &Secret<String>,
        policy: &UrlPolicy,
    ) -> Result<Self, MagentoError> {
        let http = url::pinned_client(base, policy).await?;
        Ok(Self {
            base: url::base_url_text(base),
            tenant_id: tenant_id.to_owned(),
            subkeys: Subkeys::derive(api_key.expose()),
            http,
            timeout: policy.request_timeout,
            store_behind_secs: 0,
        })
    }

    /// Dates the ledger's tokens by the store's clock as its requests showed it
    /// (`skew_secs`: the store's clock minus the ledger's); only a store behind matters.
    #[must_use]
    pub fn with_store_clock(mut self, skew_secs: Option<i32>) -> Self {
        self.store_behind_secs = i64::from(skew_secs.unwrap_or(0).min(0));
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}/rest/V1/byte8/{path}", self.base)
    }

    fn bearer(&self) -> String {
        let now = chrono::Utc::now().timestamp() + self.store_behind_secs;
        format!(
            "Bearer {}",
            auth::mint_inbound(&self.subkeys, &self.tenant_id, now).expose()
        )
    }

    /// One client span per call; the store gets the W3C trace context, so a store that
    /// traces can join the ledger's trace.
    async fn send(&self, request: reqwest::RequestBuilder, url: &str, limit: usize) -> Result<Vec<u8>, MagentoError> {
        let method = request
            .try_clone()
            .and_then(|r| r.build().ok())
            .map_or_else(|| "HTTP".to_owned(), |r| r.method().to_string());
        let path = url.split(['?', '#']).next().unwrap_or_default();
        let route = path.rsplit_once("/rest/V1/").map_or("", |(_, r)| r);
        let route: Vec<&str> = route
            .split('/')
            .map(|s| {
                if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
                    "{id}"
                } else {
                    s
                }
            })
            .collect();
        let span = tracing::info_span!(
            "magento",
            otel.name = %format!("magento {method} /rest/V1/{}", route.join("/")),
            otel.kind = "client",
            http.request.method = %method,
        );
        let mut request = request;
        if let Some(tp) = ledger_core::trace::traceparent(&span) {
            request = request.header("traceparent", tp);
        }
        tracing::Instrument::instrument(self.send_inner(request, url, limit), span).await
    }

    async fn send_inner(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
        limit: usize,
    ) -> Result<Vec<u8>, MagentoError> {
        let response = request
            .header(header::AUTHORIZATION, self.bearer())
            .header(header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| MagentoError::transport(url, &e, self.timeout))?;
        let status = response.status();
        if status.is_success() {
            http::read_limited(response, limit)
                .await
                .map_err(|e| MagentoError::body(url, e, self.timeout))
        } else {
            let headers = response.headers().clone();
            let bytes = http::read_prefix(response, http::ERROR_LIMIT).await;
            Err(status_error(url, status, &headers, &bytes, self.store_behind_secs))
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, MagentoError> {
        let url = self.url(path);
        let bytes = self.send(self.http.get(&url), &url, http::ENTITY_LIMIT).await?;
        serde_json::from_slice(&bytes).map_err(|e| MagentoError::BadResponse {
            url,
            reason: e.to_string(),
        })
    }

    pub async fn invoice(&self, id: i64) -> Result<Invoice, MagentoError> {
        self.get(&format!("invoice/{id}")).await
    }

    pub async fn customer(&self, id: i64) -> Result<Contact, MagentoError> {
        self.get(&format!("customer/{id}")).await
    }

    pub async fn creditmemo(&self, id: i64) -> Result<CreditMemo, MagentoError> {
        self.get(&format!("creditmemo/{id}")).await
    }

    /// The payment of invoice `invoice_id`.
    pub async fn payment(&self, invoice_id: i64) -> Result<Payment, MagentoError> {
        self.get(&format!("payment/{invoice_id}")).await
    }

    pub async fn product(&self, id: i64) -> Result<Product, MagentoError> {
        self.get(&format!("product/{id}")).await
    }

    /// The store's payment methods; `None` when the module predates the route (404).
    pub async fn payment_methods(&self) -> Result<Option<Vec<PaymentMethod>>, MagentoError> {
        match self.get("payment-methods").await {
            Err(MagentoError::NotFound { .. }) => Ok(None),
            other => other.map(Some),
        }
    }

    /// Liveness and auth probe: any 2xx is healthy, whatever the body (contract §8.10).
    pub async fn ping(&self) -> Result<(), MagentoError> {
        let url = self.url("ping");
        self.send(self.http.get(&url), &url, http::SMALL_LIMIT).await.map(drop)
    }

    /// Reports a terminal outcome; any 2xx is success (stock Magento answers 200 `[]`).
    pub async fn sync_state(&self, state: &SyncState) -> Result<(), MagentoError> {
        let url = self.url("sync-state");
        self.send(self.http.post(&url).json(state), &url, http::SMALL_LIMIT)
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magento_messages_are_substituted() {
        let body = br#"{"message":"Invoice %1 has no associated order payment.","parameters":["42"]}"#;
        assert_eq!(
            magento_message(body).unwrap(),
            "Invoice 42 has no associated order payment."
        );
        let body = br#"{"message":"%fieldName is required","parameters":{"fieldName":"x"}}"#;
        assert!(magento_message(body).is_some());
        assert_eq!(magento_message(b"<html>"), None);
    }

    #[test]
    fn classes() {
        let e = status_error("u", StatusCode::SERVICE_UNAVAILABLE, &header::HeaderMap::new(), b"", 0);
        assert_eq!(e.class(), ErrorClass::Transient);
        let e = status_error("u", StatusCode::UNAUTHORIZED, &header::HeaderMap::new(), b"", 0);
        assert_eq!(e.class(), ErrorClass::Auth);
        let e = status_error("u", StatusCode::MOVED_PERMANENTLY, &header::HeaderMap::new(), b"", 0);
        assert_eq!(e.class(), ErrorClass::BadData);
        assert!(e.to_string().contains("does not follow redirects"));
    }

    fn dated(offset: i64) -> header::HeaderMap {
        let at = chrono::Utc::now() + chrono::Duration::seconds(offset);
        let mut h = header::HeaderMap::new();
        h.insert(
            header::DATE,
            at.format("%a, %d %b %Y %H:%M:%S GMT").to_string().parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_401_from_a_store_whose_clock_is_off_is_its_clock_not_our_key() {
        let e = status_error("u", StatusCode::UNAUTHORIZED, &dated(-120), b"", 0);
        assert!(
            matches!(
                e,
                MagentoError::ClockSkew {
                    store_ahead_secs: -121..=-119,
                    ..
                }
            ),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("behind"), "{e}");
        let e = status_error("u", StatusCode::UNAUTHORIZED, &dated(300), b"", 0);
        assert!(e.to_string().contains("ahead of"), "{e}");
        // Within what the ledger's tokens tolerate, a 401 is the key.
        assert_eq!(
            status_error("u", StatusCode::UNAUTHORIZED, &dated(-20), b"", 0).class(),
            ErrorClass::Auth
        );
        // Tokens already dated for a store 150 s behind: its 401 is the key again.
        assert_eq!(
            status_error("u", StatusCode::UNAUTHORIZED, &dated(-150), b"", -150).class(),
            ErrorClass::Auth
        );
    }
}
