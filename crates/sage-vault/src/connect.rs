//! Connecting a binding to a Sage business: authorize, callback, business choice.
//!
//! The `state` is 256 bits from the CSPRNG (oauth2's `CsrfToken::new_random`), stored
//! only as its SHA-256 with the binding, the region and the sealed PKCE verifier; it
//! is single-use and expires after 10 minutes.

use axum::extract::State;
use ledger_core::{
    AccountId, AppState, BindingId, FieldError, Problem, TenantId,
    audit::{self, Actor},
    crypto,
    extract::Json,
};
use ledger_sage_api::SageApi;
use ledger_tenant_binding::auth::OwnedBinding;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    oauth::{self, OAuthError, SageOAuth},
    reference, tokens,
};

const STATE_TTL_SECS: f64 = 600.0;
/// Unfinished authorizations one binding may have at a time.
const MAX_OPEN_FLOWS: i64 = 5;

fn verifier_context(state_hash: &[u8]) -> String {
    format!("sage_oauth_states.pkce_verifier:{}", hex::encode(state_hash))
}

/// A business the user may choose.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct BusinessChoice {
    pub id: String,
    pub name: String,
}

/// The cookie that ties a dashboard-started authorization to its browser.
pub const FLOW_COOKIE: &str = "ledger_sage_flow";

/// Starts an authorization: validates the region and the binding, remembers the state.
///
/// `browser_nonce` is the value of the [`FLOW_COOKIE`] the dashboard sets on the browser
/// it redirects to Sage; the callback must come back with it. Flows started through the
/// API have none and end on a confirmation page instead.
pub async fn start(
    state: &AppState,
    binding: BindingId,
    account: AccountId,
    region: &str,
    browser_nonce: Option<&str>,
) -> Result<String, Problem> {
    let region = region.trim().to_ascii_lowercase();
    let Some(country) = oauth::country_for(&region) else {
        let regions: Vec<&str> = oauth::REGIONS.iter().map(|(r, _)| *r).collect();
        return Err(Problem::validation(vec![FieldError {
            field: "region".into(),
            code: "invalid".into(),
            message: format!("must be one of {}", regions.join(", ")),
        }]));
    };
    let status = sqlx::query_scalar!("SELECT status FROM connector_bindings WHERE id = $1", binding.0)
        .fetch_optional(&state.db)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", format!("There is no binding {binding}.")))?;
    if matches!(status.as_str(), "pairing" | "revoked") {
        return Err(Problem::conflict(
            "binding_not_paired",
            "Pair the Magento store first (Generate pairing code in the Magento admin, then connect the store); then connect Sage.",
        ));
    }
    if state.settings.sage_client_id.is_empty() {
        return Err(Problem::unavailable(
            "sage_not_configured",
            "The ledger has no Sage app credentials (LEDGER_SAGE_CLIENT_ID); an operator must set them.",
            60,
        ));
    }
    // A bound on unfinished flows per binding: connect is not a free request generator.
    let open = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM sage_oauth_states WHERE binding_id = $1 AND expires_at > now()"#,
        binding.0
    )
    .fetch_one(&state.db)
    .await?;
    if open >= MAX_OPEN_FLOWS {
        return Err(Problem::too_many(
            "too_many_connect_attempts",
            format!("This binding has {open} unfinished Sage sign-ins. Finish one, or wait 10 minutes and try again."),
            STATE_TTL_SECS as u32,
        ));
    }
    let (url, csrf, verifier) = SageOAuth::of(state).authorize_url(country);
    let state_hash = crypto::sha256(csrf.expose().as_bytes()).to_vec();
    let sealed = state
        .keyring
        .seal(verifier.expose().as_bytes(), &verifier_context(&state_hash));
    let browser_hash = browser_nonce.map(|n| crypto::sha256(n.as_bytes()).to_vec());
    sqlx::query!(
        "INSERT INTO sage_oauth_states (state_hash, binding_id, account_id, region, pkce_verifier, pkce_verifier_key_id, expires_at, browser_hash)
         VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8)",
        state_hash,
        binding.0,
        account.0,
        region,
        sealed,
        state.keyring.active_id(),
        STATE_TTL_SECS,
        browser_hash,
    )
    .execute(&state.db)
    .await?;
    Ok(url.to_string())
}

/// What Sage sent back to the redirect URI (unknown extras such as `country` or `iss` are ignored).
#[derive(Debug, Clone, Default, Deserialize, utoipa::IntoParams)]
pub struct CallbackParams {
    pub code: Option<String>,
    pub state: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Who is at the callback: the signed-in account and the flow cookie, if any.
#[derive(Debug, Clone, Copy, Default)]
pub struct CallbackBrowser<'a> {
    pub account: Option<AccountId>,
    pub flow_nonce: Option<&'a str>,
}

/// Where a callback ended.
#[derive(Debug, Clone)]
pub enum CallbackOutcome {
    /// Connected to the only business the user has.
    Connected {
        binding_id: BindingId,
        business_name: String,
    },
    /// Several businesses: the user picks one.
    ChooseBusiness {
        binding_id: BindingId,
        businesses: Vec<BusinessChoice>,
    },
    /// Started through the API: the tokens wait until the user confirms the store.
    Confirm(PendingGrant),
}

/// Tokens held for confirmation (never the tokens themselves).
#[derive(Debug, Clone)]
pub struct PendingGrant {
    pub grant_id: uuid::Uuid,
    pub binding_id: BindingId,
    /// The store the binding is for, as the merchant knows it.
    pub store_url: String,
    pub businesses: Vec<BusinessChoice>,
}

/// Why a callback failed: a message for the page, never a token or code.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message}")]
pub struct CallbackFailure {
    /// Known when the state was valid and the caller owns it: the page offers "try again".
    pub binding_id: Option<BindingId>,
    pub code: &'static str,
    pub message: String,
}

fn failure(binding_id: Option<BindingId>, code: &'static str, message: impl Into<String>) -> CallbackFailure {
    CallbackFailure {
        binding_id,
        code,
        message: message.into(),
    }
}

fn internal_failure(e: &dyn std::fmt::Display) -> CallbackFailure {
    tracing::error!(error = %e, "Sage callback failed");
    failure(
        None,
        "internal",
        "Something went wrong on our side. Please start the connection again.",
    )
}

/// Handles the redirect back from Sage.
///
/// The state is only honoured for the account that started the flow, signed in in this
/// browser, and (for dashboard flows) with the flow cookie of the browser that started
/// it; otherwise nothing is exchanged and the state stays usable by its owner.
pub async fn complete(
    state: &AppState,
    params: &CallbackParams,
    browser: CallbackBrowser<'_>,
) -> Result<CallbackOutcome, CallbackFailure> {
    let internal = |e: &dyn std::fmt::Display| internal_failure(e);
    let Some(raw_state) = params.state.as_deref().filter(|s| !s.is_empty()) else {
        return Err(failure(
            None,
            "state_missing",
            "This page was opened without a sign-in request. Start the connection from your binding page.",
        ));
    };
    let state_hash = crypto::sha256(raw_state.as_bytes()).to_vec();
    let expired = || {
        failure(
            None,
            "state_invalid",
            "This sign-in link has expired (they last 10 minutes) or was already used. Start the connection again.",
        )
    };
    let owner = sqlx::query!(
        r#"SELECT account_id, browser_hash FROM sage_oauth_states WHERE state_hash = $1 AND expires_at > now()"#,
        state_hash
    )
    .fetch_optional(&state.db)
    .await
    .map_err(|e| internal(&e))?
    .ok_or_else(expired)?;
    let Some(account) = browser.account else {
        return Err(failure(
            None,
            "signin_required",
            "Sign in to the ledger in this browser, as the account that started connecting Sage, then start the connection again.",
        ));
    };
    if owner.account_id != Some(account.0) {
        // Someone else's flow (a forwarded consent link): say nothing about it.
        tracing::warn!(%account, "Sage callback for a flow another account started; refused");
        return Err(failure(
            None,
            "wrong_account",
            "This Sage sign-in was started by a different ledger account. Nothing was connected. Start the connection from your own binding page.",
        ));
    }
    if let Some(expected) = &owner.browser_hash {
        let sent = browser.flow_nonce.map(|n| crypto::sha256(n.as_bytes()));
        if !sent.is_some_and(|s| ledger_core::secret::constant_time_eq(&s, expected)) {
            return Err(failure(
                None,
                "other_browser",
                "This Sage sign-in was started in a different browser. Nothing was connected. Start the connection again in this browser.",
            ));
        }
    }
    // Single use: from here the row is consumed whatever happens next.
    let pending = sqlx::query!(
        r#"DELETE FROM sage_oauth_states WHERE state_hash = $1 AND account_id = $2
           RETURNING binding_id AS "binding_id: BindingId", region, pkce_verifier, browser_hash IS NOT NULL AS "from_dashboard!""#,
        state_hash,
        account.0,
    )
    .fetch_optional(&state.db)
    .await
    .map_err(|e| internal(&e))?
    .ok_or_else(expired)?;
    let binding = pending.binding_id;
    if let Some(error) = params.error.as_deref() {
        let message = match error {
            "access_denied" => match params.error_description.as_deref().filter(|d| !d.is_empty()) {
                // Sage also denies when the region does not match the business's country.
                Some(description) => format!(
                    "Sage refused access: {}. Check that you chose the region where your Sage business is registered.",
                    description.chars().take(200).collect::<String>()
                ),
                None => "You chose not to give the ledger access to Sage, so nothing was connected.".to_owned(),
            },
            "temporarily_unavailable" => {
                "Sage is temporarily unavailable. Wait about 10 minutes, then try again.".to_owned()
            }
            "server_error" => "Sage had an error while signing you in. Try again in a moment.".to_owned(),
            other => format!(
                "Sage did not complete the sign-in ({}{}). Try again; if it keeps failing, contact support.",
                other.chars().take(60).collect::<String>(),
                params
                    .error_description
                    .as_deref()
                    .map(|d| format!(": {}", d.chars().take(200).collect::<String>()))
                    .unwrap_or_default()
            ),
        };
        return Err(failure(Some(binding), "sage_declined", message));
    }
    let Some(code) = params.code.as_deref().filter(|c| !c.is_empty()) else {
        return Err(failure(
            Some(binding),
            "code_missing",
            "Sage did not send an authorization code. Try again.",
        ));
    };
    let verifier = state
        .keyring
        .open_string(&pending.pkce_verifier, &verifier_context(&state_hash))
        .map_err(|e| internal(&e))?;
    let tokens = SageOAuth::of(state)
        .exchange_code(code, &verifier)
        .await
        .map_err(|e| match e {
            OAuthError::InvalidGrant => failure(
                Some(binding),
                "code_expired",
                "Sage's authorization code expired (they last 60 seconds) or was already used. Try again.",
            ),
            OAuthError::Rejected(reason) => failure(
                Some(binding),
                "sage_rejected",
                format!("Sage refused the ledger's request ({reason}). Contact support."),
            ),
            OAuthError::Transient(_) => failure(
                Some(binding),
                "sage_unavailable",
                "Sage did not answer in time. Try again in a moment.",
            ),
        })?;

    let api = SageApi::of(state);
    let businesses = api.businesses(&tokens.access_token).await.map_err(|e| {
        tracing::warn!(%binding, error = %e, "listing Sage businesses failed");
        failure(
            Some(binding),
            "businesses_unavailable",
            "Connected, but Sage did not list your businesses. Try again in a moment.",
        )
    })?;
    let choices: Vec<BusinessChoice> = businesses
        .iter()
        .map(|b| BusinessChoice {
            id: b.id.clone(),
            name: b.displayed_as.clone(),
        })
        .collect();
    if choices.is_empty() {
        return Err(failure(
            Some(binding),
            "no_business",
            "Your Sage user has no business yet. Create one in Sage, then try again.",
        ));
    }
    if pending.from_dashboard {
        return attach(state, binding, &pending.region, &tokens, choices, account).await;
    }
    hold(state, binding, account, &pending.region, &tokens, choices)
        .await
        .map(CallbackOutcome::Confirm)
}

fn grant_context(column: &str, id: uuid::Uuid) -> String {
    format!("sage_pending_grants.{column}:{id}")
}

/// Keeps an API-started flow's tokens until the account confirms the store.
async fn hold(
    state: &AppState,
    binding: BindingId,
    account: AccountId,
    region: &str,
    tokens: &oauth::TokenSet,
    choices: Vec<BusinessChoice>,
) -> Result<PendingGrant, CallbackFailure> {
    let id = uuid::Uuid::new_v4();
    let keyring = &state.keyring;
    let access = keyring.seal(
        tokens.access_token.expose().as_bytes(),
        &grant_context("access_token", id),
    );
    let refresh = keyring.seal(
        tokens.refresh_token.expose().as_bytes(),
        &grant_context("refresh_token", id),
    );
    let store_url = sqlx::query_scalar!(
        "INSERT INTO sage_pending_grants
           (id, binding_id, account_id, region, businesses, access_token, access_token_key_id, access_expires_at,
            refresh_token, refresh_token_key_id, refresh_expires_at, requested_by_id, expires_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now() + make_interval(secs => $8), $9, $7,
                 now() + make_interval(secs => $10), $11, now() + make_interval(secs => $12))
         RETURNING (SELECT magento_base_url FROM connector_bindings WHERE id = $2)",
        id,
        binding.0,
        account.0,
        region,
        serde_json::to_value(&choices).unwrap_or_default(),
        access,
        keyring.active_id(),
        tokens.access_expires_in.as_secs_f64(),
        refresh,
        tokens.refresh_expires_in.as_secs_f64(),
        tokens.requested_by_id,
        STATE_TTL_SECS,
    )
    .fetch_one(&state.db)
    .await
    .map_err(|e| internal_failure(&e))?;
    Ok(PendingGrant {
        grant_id: id,
        binding_id: binding,
        store_url: store_url.unwrap_or_default(),
        businesses: choices,
    })
}

/// Stores the tokens on the binding and picks the business when there is only one.
async fn attach(
    state: &AppState,
    binding: BindingId,
    region: &str,
    tokens: &oauth::TokenSet,
    choices: Vec<BusinessChoice>,
    account: AccountId,
) -> Result<CallbackOutcome, CallbackFailure> {
    let internal = |e: &dyn std::fmt::Display| internal_failure(e);
    let mut tx = state.db.begin().await.map_err(|e| internal(&e))?;
    tokens::store_tokens(&mut tx, state, binding, region, tokens)
        .await
        .map_err(|e| internal(&e))?;
    sqlx::query!(
        "UPDATE sage_connections SET businesses = $2 WHERE binding_id = $1",
        binding.0,
        serde_json::to_value(&choices).unwrap_or_default()
    )
    .execute(&mut *tx)
    .await
    .map_err(|e| internal(&e))?;
    tx.commit().await.map_err(|e| internal(&e))?;

    if let [only] = choices.as_slice() {
        choose(state, binding, &only.id, Actor::Account(account.0))
            .await
            .map_err(|e| match e {
                ChooseError::Database(e) => internal(&e),
                other => failure(Some(binding), "internal", other.to_string()),
            })?;
        return Ok(CallbackOutcome::Connected {
            binding_id: binding,
            business_name: only.name.clone(),
        });
    }
    Ok(CallbackOutcome::ChooseBusiness {
        binding_id: binding,
        businesses: choices,
    })
}

/// The answer to the confirmation page: attach the held tokens, or throw them away
/// (revoking them at Sage). Only the account that started the flow may answer.
pub async fn confirm(
    state: &AppState,
    id: uuid::Uuid,
    account: AccountId,
    accept: bool,
) -> Result<Option<CallbackOutcome>, CallbackFailure> {
    let internal = |e: &dyn std::fmt::Display| internal_failure(e);
    let row = sqlx::query!(
        r#"DELETE FROM sage_pending_grants WHERE id = $1 AND account_id = $2 AND expires_at > now()
           RETURNING binding_id AS "binding_id: BindingId", region, businesses, access_token, refresh_token, requested_by_id,
             GREATEST(EXTRACT(EPOCH FROM access_expires_at - now()), 0)::float8 AS "access_secs!",
             GREATEST(EXTRACT(EPOCH FROM refresh_expires_at - now()), 0)::float8 AS "refresh_secs!""#,
        id,
        account.0
    )
    .fetch_optional(&state.db)
    .await
    .map_err(|e| internal(&e))?;
    let Some(row) = row else {
        return Err(failure(
            None,
            "grant_invalid",
            "This confirmation has expired (it lasts 10 minutes) or was already answered. Start the connection again.",
        ));
    };
    let refresh_token = state
        .keyring
        .open_string(&row.refresh_token, &grant_context("refresh_token", id))
        .map_err(|e| internal(&e))?;
    if !accept {
        if let Err(err) = SageOAuth::of(state).revoke(&refresh_token).await {
            tracing::warn!(binding = %row.binding_id, error = %err, "revoking a declined Sage grant failed; it was deleted here anyway");
        }
        return Ok(None);
    }
    let access_token = state
        .keyring
        .open_string(&row.access_token, &grant_context("access_token", id))
        .map_err(|e| internal(&e))?;
    let tokens = oauth::TokenSet {
        access_token,
        access_expires_in: std::time::Duration::from_secs_f64(row.access_secs),
        refresh_token,
        refresh_expires_in: std::time::Duration::from_secs_f64(row.refresh_secs),
        requested_by_id: row.requested_by_id,
    };
    let choices: Vec<BusinessChoice> = serde_json::from_value(row.businesses).unwrap_or_default();
    attach(state, row.binding_id, &row.region, &tokens, choices, account)
        .await
        .map(Some)
}

/// Picks the business for a connected binding; fetches its reference data.
pub async fn choose(
    state: &AppState,
    binding: BindingId,
    business_id: &str,
    actor: Actor,
) -> Result<String, ChooseError> {
    let offered = sqlx::query_scalar!(
        "SELECT businesses FROM sage_connections WHERE binding_id = $1",
        binding.0
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or(ChooseError::NotConnected)?;
    let choices: Vec<BusinessChoice> = serde_json::from_value(offered).unwrap_or_default();
    let Some(choice) = choices.iter().find(|c| c.id == business_id) else {
        return Err(ChooseError::NotOffered);
    };
    let mut tx = state.db.begin().await?;
    let region = sqlx::query_scalar!(
        "UPDATE sage_connections SET business_id = $2, business_name = $3, status = 'connected', updated_at = now(),
                token_version = token_version + 1
         WHERE binding_id = $1 RETURNING region",
        binding.0,
        choice.id,
        choice.name
    )
    .fetch_one(&mut *tx)
    .await?;
    let tenant = ledger_tenant_binding::bindings::set_region(&mut tx, binding, &region).await?;
    ledger_tenant_binding::bindings::transition(&mut tx, binding, ledger_tenant_binding::bindings::Move::SageConnected)
        .await?;
    // Work held while the connection needed re-authorisation resumes.
    ledger_jobs::release_binding(&mut tx, binding).await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: Some(tenant),
            binding_id: Some(binding),
            action: "sage.connected",
            details: serde_json::json!({ "business_id": choice.id, "business_name": choice.name, "region": region }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    tokens::TokenCache::of(state).forget(binding);
    if let Err(err) = reference::refresh(state, binding).await {
        // The settings page offers a Refresh button; connecting does not fail for this.
        tracing::warn!(%binding, error = %err, "fetching Sage reference data after connect failed");
    }
    Ok(choice.name.clone())
}

/// Why a business could not be chosen.
#[derive(Debug, thiserror::Error)]
pub enum ChooseError {
    #[error("Connect Sage for this binding first.")]
    NotConnected,
    #[error("choose one of the businesses Sage listed for this connection")]
    NotOffered,
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<ChooseError> for Problem {
    fn from(e: ChooseError) -> Self {
        match e {
            ChooseError::NotConnected => Problem::conflict("sage_not_connected", e.to_string()),
            ChooseError::NotOffered => Problem::validation(vec![FieldError {
                field: "business_id".into(),
                code: "not_offered".into(),
                message: e.to_string(),
            }]),
            ChooseError::Database(e) => e.into(),
        }
    }
}

// ---- JSON twins ------------------------------------------------------------------

#[derive(Debug, Default, Deserialize, ToSchema)]
pub struct AuthorizeRequest {
    /// uk (default), ie, ca, us, es, fr or de.
    #[serde(default)]
    pub region: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AuthorizeUrl {
    /// Send the user's browser here; Sage redirects back to `{LEDGER_PUBLIC_URL}/sage/callback`.
    pub authorize_url: String,
}

/// Start connecting Sage: the URL of Sage's consent page for this binding.
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/sage/authorize", tag = "sage", operation_id = "sage_authorize",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    request_body(content = AuthorizeRequest, description = "Optional; the region defaults to uk"),
    responses(
        (status = 200, body = AuthorizeUrl),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The store is not paired", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn authorize(
    State(state): State<AppState>,
    OwnedBinding {
        merchant,
        binding_id: binding,
        ..
    }: OwnedBinding,
    body: axum::body::Bytes,
) -> Result<axum::Json<AuthorizeUrl>, Problem> {
    // The body is optional: no body means the default region.
    let request: AuthorizeRequest = if body.iter().all(u8::is_ascii_whitespace) {
        AuthorizeRequest::default()
    } else {
        ledger_core::extract::parse(&body)?
    };
    let region = request.region.unwrap_or_else(|| "uk".to_owned());
    let authorize_url = start(&state, binding, merchant.account_id, &region, None).await?;
    Ok(axum::Json(AuthorizeUrl { authorize_url }))
}

/// A binding's Sage connection.
#[derive(Debug, Serialize, ToSchema)]
pub struct Connection {
    /// `not_connected`, `choosing_business`, `connected`, `needs_reauth` or `subscription_lapsed`.
    pub status: String,
    pub region: Option<String>,
    pub business_id: Option<String>,
    pub business_name: Option<String>,
    /// The businesses to choose from while `choosing_business`.
    pub businesses: Vec<BusinessChoice>,
    pub refresh_expires_at: Option<chrono::DateTime<chrono::Utc>>,
    pub last_refreshed_at: Option<chrono::DateTime<chrono::Utc>>,
}

pub async fn load_connection(db: &sqlx::PgPool, binding: BindingId) -> Result<Connection, sqlx::Error> {
    let row = sqlx::query!(
        "SELECT status, region, business_id, business_name, businesses, refresh_expires_at, last_refreshed_at
         FROM sage_connections WHERE binding_id = $1",
        binding.0
    )
    .fetch_optional(db)
    .await?;
    Ok(match row {
        None => Connection {
            status: "not_connected".into(),
            region: None,
            business_id: None,
            business_name: None,
            businesses: Vec::new(),
            refresh_expires_at: None,
            last_refreshed_at: None,
        },
        Some(r) => Connection {
            businesses: if r.status == "choosing_business" {
                serde_json::from_value(r.businesses).unwrap_or_default()
            } else {
                Vec::new()
            },
            status: r.status,
            region: Some(r.region),
            business_id: r.business_id,
            business_name: r.business_name,
            refresh_expires_at: r.refresh_expires_at,
            last_refreshed_at: Some(r.last_refreshed_at),
        },
    })
}

/// The binding's Sage connection (never its tokens).
#[utoipa::path(get, path = "/v1/bindings/{binding_id}/sage", tag = "sage", operation_id = "sage_connection",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Connection),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn connection(
    State(state): State<AppState>,
    OwnedBinding {
        binding_id: binding, ..
    }: OwnedBinding,
) -> Result<axum::Json<Connection>, Problem> {
    Ok(axum::Json(load_connection(&state.db, binding).await?))
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BusinessRequest {
    /// One of the ids offered in `businesses`.
    pub business_id: String,
}

/// Choose the Sage business when the user has more than one.
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/sage/business", tag = "sage", operation_id = "sage_choose_business",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    request_body = BusinessRequest,
    responses(
        (status = 200, body = Connection),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Sage is not connected", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn business(
    State(state): State<AppState>,
    OwnedBinding {
        merchant,
        binding_id: binding,
        ..
    }: OwnedBinding,
    Json(body): Json<BusinessRequest>,
) -> Result<axum::Json<Connection>, Problem> {
    choose(
        &state,
        binding,
        &body.business_id,
        Actor::Account(merchant.account_id.0),
    )
    .await?;
    Ok(axum::Json(load_connection(&state.db, binding).await?))
}

/// Disconnect a binding from the ledger side: the binding is revoked (the store's later
/// webhooks get 401 and dead-letter), the Sage refresh token is revoked at Sage (best
/// effort) and the tokens deleted. Sync history and `entity_xref` are kept.
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/disconnect", tag = "bindings", operation_id = "disconnect_binding",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 204, description = "Disconnected (or already disconnected)"),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn disconnect(
    State(state): State<AppState>,
    OwnedBinding {
        merchant,
        binding_id: binding,
        tenant_id: tenant,
    }: OwnedBinding,
) -> Result<axum::http::StatusCode, Problem> {
    disconnect_binding(&state, binding, tenant, Actor::Account(merchant.account_id.0)).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Revokes the binding (its queued work cancelled) and its Sage tokens: the dashboard's
/// and the API's disconnect.
pub async fn disconnect_binding(
    state: &AppState,
    binding: BindingId,
    tenant: TenantId,
    actor: Actor,
) -> Result<(), Problem> {
    let mut tx = state.db.begin().await?;
    ledger_tenant_binding::status::revoke(&mut tx, tenant, binding, actor, "dashboard").await?;
    tx.commit().await?;
    tokens::disconnect(state, binding).await?;
    Ok(())
}

/// The module's Disconnect button: the binding is revoked and its queued work stops,
/// and its Sage refresh token is revoked at Sage and deleted, as a disconnect from the
/// dashboard does. Idempotent: a repeat answers 204 too. Afterwards, webhooks signed
/// with the old key answer 401 `binding_revoked`.
#[utoipa::path(post, path = "/v1/tenant/disconnect", tag = "magento", operation_id = "tenant_disconnect",
    security(("magento_jwt" = [])),
    responses(
        (status = 204, description = "Disconnected (or already disconnected)"),
        (status = 401, description = "The module's token was refused", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn magento_disconnect(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
) -> Result<axum::http::StatusCode, Problem> {
    let binding = ledger_tenant_binding::status::disconnect_binding(&state, &headers).await?;
    tokens::disconnect(&state, binding).await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
