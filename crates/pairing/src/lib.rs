//! Pairing (contract §4): the merchant pastes the store URL and the one-time code from
//! the Magento admin; the ledger mints a 256-bit api_key and hands it to the store with
//! `POST {store}/rest/V1/byte8/setup/pair`.
//!
//! The key is sealed and recorded as *pending* before the call, and becomes the
//! binding's key only when the store answers 200. A definite refusal removes it (and a
//! binding that never paired); an answer lost to a timeout or a 5xx keeps it pending, so
//! if the store did store it, its first signed request confirms it (see
//! `ledger_tenant_binding::magento`). Either way no binding goes live unconfirmed.

use axum::{
    extract::{ConnectInfo, State},
    http::StatusCode,
};

/// Store connections tried per account and per client address in an hour.
const CONNECTS_PER_ACCOUNT: i64 = 30;
const CONNECTS_PER_ADDRESS: i64 = 60;
const CONNECT_WINDOW: std::time::Duration = std::time::Duration::from_secs(3600);
use ledger_core::{
    AppState, BindingId, FieldError, Problem, Secret, TenantId,
    audit::{self, Actor},
    crypto,
    extract::Json,
};
use ledger_magento_api::{
    MagentoError,
    client::pair,
    url::{self, UrlPolicy},
};
use ledger_tenant_binding::{
    auth::{Merchant, TenantError},
    bindings::{self, BindingStatus},
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(connect))
}

/// Prefix of minted api_keys (as in the module's tests); the rest is 256 random bits in hex.
pub const API_KEY_PREFIX: &str = "byte8_lk_";

/// A fresh api_key from the system CSPRNG.
pub fn mint_api_key() -> Secret<String> {
    Secret::new(format!("{API_KEY_PREFIX}{}", hex::encode(crypto::random_bytes::<32>())))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ConnectRequest {
    /// The store's base URL as the module's configuration page shows it, e.g. `https://shop.example.com`.
    pub magento_base_url: String,
    /// The one-time code from "Generate pairing code" in the Magento admin (32 hex characters, valid 30 minutes).
    pub pairing_code: String,
    /// The tenant to pair into; defaults to your first tenant.
    #[serde(default)]
    pub tenant_id: Option<TenantId>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Connected {
    pub binding_id: BindingId,
    pub tenant_id: TenantId,
    pub status: BindingStatus,
    pub magento_base_url: String,
    /// True when this store was paired before: same binding, new key, history kept.
    pub repaired: bool,
}

fn looks_like_module_code(code: &str) -> bool {
    code.len() == 32 && code.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// Pair a Magento store with a tenant.
///
/// Answers 201 only after the store accepted the key. Re-pairing a store that was paired
/// before keeps its binding (and so its sync history) and replaces its key.
#[utoipa::path(post, path = "/v1/magento/connect", tag = "bindings", operation_id = "magento_connect",
    security(("bearer" = []), ("session" = [])),
    request_body = ConnectRequest,
    responses(
        (status = 201, description = "Paired", body = Connected),
        (status = 401, description = "Not signed in", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Another connect for this store ran at the same time", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 429, description = "Too many connects from this account or address in an hour", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid URL, code refused by the store, or no module at that URL", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "The store could not be reached or answered with an error", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 504, description = "The store did not answer in time", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn connect(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: axum::http::HeaderMap,
    merchant: Merchant,
    Json(request): Json<ConnectRequest>,
) -> Result<(StatusCode, axum::Json<Connected>), Problem> {
    let client = ledger_tenant_binding::accounts::client_address(&state, &headers, peer);
    let connected = connect_store(&state, &merchant, client, request).await?;
    Ok((StatusCode::CREATED, axum::Json(connected)))
}

/// Pairs a Magento store with one of the merchant's tenants (the API's and the
/// dashboard's connect): `client` is the caller's address, for the connect limit.
pub async fn connect_store(
    state: &AppState,
    merchant: &Merchant,
    client: String,
    request: ConnectRequest,
) -> Result<Connected, ConnectError> {
    // Each connect makes the ledger call a URL the caller chose: bounded per account and
    // per client address, counted before any call.
    for (bucket, key, limit) in [
        ("connect:account", merchant.account_id.to_string(), CONNECTS_PER_ACCOUNT),
        ("connect:address", client, CONNECTS_PER_ADDRESS),
    ] {
        let hit = ledger_core::rate::hit(&state.db, bucket, &key, CONNECT_WINDOW).await?;
        if hit.exceeds(limit) {
            return Err(ConnectError::TooMany {
                retry_after: hit.retry_after(),
            });
        }
    }
    let policy = UrlPolicy::of(state);
    let mut errors = Vec::new();
    let base = url::normalize_base_url(&request.magento_base_url, &policy)
        .map_err(|e| {
            errors.push(FieldError {
                field: "magento_base_url".into(),
                code: e.code().into(),
                message: e.to_string(),
            })
        })
        .ok();
    let code = request.pairing_code.trim();
    if code.is_empty() || code.len() > 128 || code.chars().any(|c| c.is_whitespace() || c.is_control()) {
        errors.push(FieldError {
            field: "pairing_code".into(),
            code: "invalid_format".into(),
            message: "paste the code exactly as the Magento admin shows it (32 characters, no spaces)".into(),
        });
    }
    let Some(base) = base.filter(|_| errors.is_empty()) else {
        return Err(ConnectError::Invalid(errors));
    };
    let tenant_id = merchant.tenant(&state.db, request.tenant_id).await?;
    // Check the address before anything is stored, so a refused URL changes nothing.
    url::resolve(&base, &policy).await.map_err(|e| {
        ConnectError::Invalid(vec![FieldError {
            field: "magento_base_url".into(),
            code: e.code().into(),
            message: e.to_string(),
        }])
    })?;
    let base_text = url::base_url_text(&base);

    let api_key = mint_api_key();
    let attempt = uuid::Uuid::new_v4();
    let (binding_id, repaired) = record_pending(state, tenant_id, &base_text, &api_key, attempt).await?;

    let outcome = pair(
        &base,
        &policy,
        code,
        &tenant_id.to_string(),
        &api_key,
        &state.settings.public_url,
    )
    .await;
    match outcome {
        Ok(()) => {
            let status = confirm(state, merchant, tenant_id, binding_id, &api_key, attempt, repaired).await?;
            tracing::info!(%binding_id, %tenant_id, repaired, "store paired");
            Ok(Connected {
                binding_id,
                tenant_id,
                status,
                magento_base_url: base_text,
                repaired,
            })
        }
        Err(err) => {
            let uncertain = matches!(&err, MagentoError::Transient { reason, .. }
                if reason.starts_with("no answer") || reason.starts_with("HTTP 5"));
            if !uncertain {
                discard_pending(state, binding_id, attempt).await?;
            }
            tracing::warn!(%binding_id, error = %err, uncertain, "pairing failed");
            Err(ConnectError::Store {
                error: err,
                module_code: looks_like_module_code(code),
                uncertain,
            })
        }
    }
}

/// Seals the new key as pending on the (possibly new) binding; returns it and whether
/// the store had a binding already.
async fn record_pending(
    state: &AppState,
    tenant_id: TenantId,
    base: &str,
    api_key: &Secret<String>,
    attempt: uuid::Uuid,
) -> Result<(BindingId, bool), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let pending = bindings::record_pending_key(&mut tx, &state.keyring, tenant_id, base, api_key, attempt).await?;
    tx.commit().await?;
    Ok(pending)
}

/// The store accepted: the pending key becomes the binding's key.
async fn confirm(
    state: &AppState,
    merchant: &Merchant,
    tenant_id: TenantId,
    binding_id: BindingId,
    api_key: &Secret<String>,
    attempt: uuid::Uuid,
    repaired: bool,
) -> Result<BindingStatus, ConnectError> {
    let mut tx = state.db.begin().await?;
    let status = bindings::confirm_pending_key(&mut tx, &state.keyring, binding_id, api_key, attempt).await?;
    let Some(status) = status else {
        return Err(ConnectError::Superseded);
    };
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::Account(merchant.account_id.0),
            tenant_id: Some(tenant_id),
            binding_id: Some(binding_id),
            action: if repaired { "binding.repaired" } else { "binding.paired" },
            details: serde_json::json!({}),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(status)
}

/// The store refused (or never got) the key: forget it, and the binding if it never paired.
async fn discard_pending(state: &AppState, binding_id: BindingId, attempt: uuid::Uuid) -> Result<(), sqlx::Error> {
    let mut tx = state.db.begin().await?;
    bindings::discard_pending_key(&mut tx, binding_id, attempt).await?;
    tx.commit().await?;
    Ok(())
}

/// Why a connect did not pair the store. Nothing is stored unless the store may have
/// taken the code (`Store { uncertain: true, .. }`).
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// Too many connects from this account or address; seconds until one is allowed.
    #[error(
        "Too many store connections were tried in the last hour. Try again in {} minutes.",
        retry_after.div_ceil(60)
    )]
    TooMany { retry_after: u32 },
    /// The URL or the code refused before the store is called.
    #[error("the store URL or pairing code is refused ({} field errors)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Tenant(#[from] TenantError),
    #[error(
        "Another connect for this store ran at the same time and replaced this one. \
         Generate a new pairing code in the Magento admin and connect once."
    )]
    Superseded,
    /// The store refused the pairing or did not answer. `module_code`: the code has the
    /// module's shape (the hint about pasting it is left out); `uncertain`: the store
    /// may have taken the code.
    #[error("pairing failed: {error}")]
    Store {
        error: MagentoError,
        module_code: bool,
        uncertain: bool,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<ConnectError> for Problem {
    fn from(err: ConnectError) -> Self {
        match err {
            ConnectError::TooMany { retry_after } => {
                Problem::too_many("too_many_connects", err.to_string(), retry_after)
            }
            ConnectError::Invalid(errors) => Problem::validation(errors),
            ConnectError::Tenant(e) => e.into(),
            ConnectError::Superseded => Problem::conflict("pairing_superseded", err.to_string()),
            ConnectError::Store {
                error,
                module_code,
                uncertain,
            } => pairing_problem(&error, module_code, uncertain),
            ConnectError::Database(e) => e.into(),
        }
    }
}

fn pairing_problem(err: &MagentoError, module_code: bool, uncertain: bool) -> Problem {
    let url_field = |code: &str, message: String| {
        Problem::validation(vec![FieldError {
            field: "magento_base_url".into(),
            code: code.into(),
            message,
        }])
    };
    match err {
        // Pairing carries no token, so a 401 is the code whatever the store's clock.
        MagentoError::Unauthorized { .. } | MagentoError::ClockSkew { .. } => {
            let hint = if module_code {
                ""
            } else {
                " Pairing codes are 32 lower-case hexadecimal characters; paste the code exactly as shown."
            };
            let detail = format!(
                "The store refused the pairing code: it is wrong, already used, or older than 30 minutes. \
                 In the Magento admin (Stores → Configuration → Byte8 → Sage Accounting) click \"Generate pairing code\" \
                 and paste the new code.{hint}"
            );
            Problem::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "pairing_code_rejected",
                detail.clone(),
            )
            .with_field("pairing_code", "rejected", detail)
        }
        MagentoError::NotFound { url, .. } => url_field(
            "module_not_found",
            format!(
                "No byte8 module answered at {url} (HTTP 404). Check the store URL (the module's configuration page \
                 shows it) and that the Byte8 Sage Accounting module is installed and enabled."
            ),
        ),
        MagentoError::Redirected { url, location, status } => url_field(
            "redirected",
            format!("{url} redirected (HTTP {status}) to {location}. Enter the store's final base URL instead."),
        ),
        MagentoError::Url(e) => url_field(e.code(), e.to_string()),
        MagentoError::Rejected { url, status, message } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "magento_rejected",
            format!(
                "The store at {url} refused the pairing request (HTTP {status}): {}.",
                message.as_deref().unwrap_or("no reason given")
            ),
        ),
        MagentoError::BadResponse { url, reason } => Problem::new(
            StatusCode::BAD_GATEWAY,
            "magento_bad_response",
            format!("{url} answered, but not like the Magento module: {reason}."),
        ),
        MagentoError::Transient { url, reason } => {
            let retry = if uncertain {
                " If the store did take the code, it starts working by itself within a minute; \
                  otherwise generate a new pairing code and try again."
            } else {
                " Check the URL and that the store is online, then try again with the same code (it stays valid for 30 minutes)."
            };
            let (status, code) = if reason.starts_with("no answer") {
                (StatusCode::GATEWAY_TIMEOUT, "magento_timeout")
            } else if reason.starts_with("HTTP 5") {
                (StatusCode::BAD_GATEWAY, "magento_error")
            } else {
                (StatusCode::BAD_GATEWAY, "magento_unreachable")
            };
            Problem::new(status, code, format!("Pairing with {url} failed: {reason}.{retry}"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_keys_are_256_bit_and_distinct() {
        let (a, b) = (mint_api_key(), mint_api_key());
        assert_ne!(a.expose(), b.expose());
        let hex_part = a.expose().strip_prefix(API_KEY_PREFIX).unwrap();
        assert_eq!(hex_part.len(), 64);
        assert!(hex_part.bytes().all(|c| c.is_ascii_hexdigit()));
    }

    #[test]
    fn module_code_shape() {
        assert!(looks_like_module_code("deadbeefcafef00d0123456789abcdef"));
        assert!(!looks_like_module_code("DEADBEEFCAFEF00D0123456789ABCDEF"));
        assert!(!looks_like_module_code("J3K7-XQ9F-RP2M"));
    }
}
