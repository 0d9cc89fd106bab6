//! The Sage reference cache: what settings dropdowns and mapping defaults read.
//! Fetched after connecting, every `sage_reference_ttl` (24 h) and on demand.

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, Problem};
use ledger_sage_api::SageError;
use ledger_tenant_binding::auth::{BindingAccess, action};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::{
    session::{CallError, Session},
    tokens::VaultError,
};

/// Each cached kind and the list it comes from (full records need `attributes=all`;
/// destination VAT rates, for OSS sellers, need asking for).
pub const KINDS: &[(&str, &str)] = &[
    (
        "tax_rates",
        "/tax_rates?usage=sales&include_destination_vat_rates=true&attributes=all",
    ),
    (
        "ledger_accounts_sales",
        "/ledger_accounts?visible_in=sales&attributes=all",
    ),
    (
        "ledger_accounts_expenses",
        "/ledger_accounts?visible_in=expenses&attributes=all",
    ),
    ("bank_accounts", "/bank_accounts?attributes=all"),
    ("currencies", "/currencies?attributes=all"),
];

/// Single settings objects cached beside the lists (as a one-item list): the base
/// currency and multi-currency flag, and the country of registration.
pub const SETTINGS: &[(&str, &str)] = &[
    ("financial_settings", "/financial_settings"),
    ("business_settings", "/business_settings"),
];

/// Why a refresh failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Call(#[from] CallError),
    #[error("database: {0}")]
    Database(String),
}

impl From<sqlx::Error> for ReferenceError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e.to_string())
    }
}

impl From<ReferenceError> for Problem {
    fn from(err: ReferenceError) -> Self {
        match err {
            ReferenceError::Call(CallError::Vault(VaultError::NotConnected)) => {
                Problem::conflict("sage_not_connected", "Connect Sage for this binding first.")
            }
            ReferenceError::Call(CallError::Vault(VaultError::NeedsReauth)) => Problem::conflict(
                "sage_needs_reauth",
                "Sage refused the stored authorisation. Connect Sage again from the binding page.",
            ),
            ReferenceError::Call(CallError::Sage(SageError::SubscriptionLapsed(_))) => Problem::conflict(
                "sage_subscription_lapsed",
                "Sage says the business has no active subscription. Renew it in Sage, then refresh.",
            ),
            other => Problem::unavailable(
                "sage_unavailable",
                format!("Could not fetch from Sage: {other}. Try again shortly."),
                30,
            ),
        }
    }
}

/// Fetches every kind, following `$next`; calls count against the business's budget
/// (waiting for it when spent).
pub async fn refresh(state: &AppState, binding: BindingId) -> Result<(), ReferenceError> {
    let mut session = Session::open(state, binding).await?.waiting();
    let mut fetched = Vec::with_capacity(KINDS.len());
    for (kind, path) in KINDS {
        fetched.push((*kind, session.list_all(path).await?));
    }
    for (kind, path) in SETTINGS {
        let object: Value = session.get(path).await?;
        fetched.push((*kind, vec![object]));
    }
    let mut tx = state.db.begin().await?;
    for (kind, mut items) in fetched {
        if kind == "bank_accounts" {
            items = items.into_iter().map(bank_account_summary).collect();
        }
        sqlx::query!(
            "INSERT INTO sage_reference (binding_id, kind, items, fetched_at) VALUES ($1, $2, $3, now())
             ON CONFLICT (binding_id, kind) DO UPDATE SET items = $3, fetched_at = now()",
            binding.0,
            kind,
            Value::Array(items),
        )
        .execute(&mut *tx)
        .await?;
    }
    // A successful call proves the subscription is live again.
    let revived = sqlx::query!(
        "UPDATE sage_connections SET status = 'connected' WHERE binding_id = $1 AND status = 'subscription_lapsed'",
        binding.0
    )
    .execute(&mut *tx)
    .await?
    .rows_affected();
    // Only a lapse's pause ends here: an operator's pause stays until they resume it.
    let resumed = revived > 0
        && ledger_tenant_binding::bindings::transition(
            &mut tx,
            binding,
            ledger_tenant_binding::bindings::Move::SubscriptionRestored,
        )
        .await?
        .is_some();
    if resumed {
        // Work held while the subscription was lapsed resumes.
        ledger_jobs::release_binding(&mut tx, binding).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// What the ledger needs of a bank account: which one it is and its currency — never
/// its account number, sort code, IBAN or balance (`attributes=all` returns them all).
fn bank_account_summary(account: Value) -> Value {
    const KEPT: &[&str] = &[
        "id",
        "displayed_as",
        "name",
        "nominal_code",
        "bank_account_type",
        "currency",
        "is_active",
    ];
    match account {
        Value::Object(fields) => {
            Value::Object(fields.into_iter().filter(|(k, _)| KEPT.contains(&k.as_str())).collect())
        }
        other => other,
    }
}

/// One cached list.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ReferenceList {
    pub items: Vec<Value>,
    pub fetched_at: DateTime<Utc>,
}

/// Everything cached for a binding, by kind, with the oldest fetch time.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Reference {
    pub kinds: BTreeMap<String, ReferenceList>,
    /// The oldest `fetched_at` (null before the first fetch).
    pub fetched_at: Option<DateTime<Utc>>,
}

pub async fn load(db: &sqlx::PgPool, binding: BindingId) -> Result<Reference, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT kind, items, fetched_at FROM sage_reference WHERE binding_id = $1",
        binding.0
    )
    .fetch_all(db)
    .await?;
    let fetched_at = rows.iter().map(|r| r.fetched_at).min();
    let kinds = rows
        .into_iter()
        .map(|r| {
            (
                r.kind,
                ReferenceList {
                    items: serde_json::from_value(r.items).unwrap_or_default(),
                    fetched_at: r.fetched_at,
                },
            )
        })
        .collect();
    Ok(Reference { kinds, fetched_at })
}

/// Refreshes every connected binding whose cache is older than the TTL, and asks again
/// for every lapsed subscription: the first answer after a renewal revives it (and
/// resumes the held work) without anyone pressing anything.
pub async fn refresh_stale(state: &AppState) -> Result<usize, sqlx::Error> {
    let ttl = state.settings.sage_reference_ttl.as_secs_f64();
    let due = sqlx::query_scalar!(
        r#"SELECT c.binding_id AS "binding_id: BindingId" FROM sage_connections c
           JOIN connector_bindings b ON b.id = c.binding_id AND b.status NOT IN ('revoked', 'pairing')
           WHERE c.status = 'subscription_lapsed' OR c.status = 'connected' AND NOT EXISTS (
             SELECT 1 FROM sage_reference r WHERE r.binding_id = c.binding_id AND r.fetched_at > now() - make_interval(secs => $1))"#,
        ttl
    )
    .fetch_all(&state.db)
    .await?;
    let mut done = 0;
    for binding in due {
        match refresh(state, binding).await {
            Ok(()) => done += 1,
            Err(err) => tracing::warn!(%binding, error = %err, "reference refresh failed"),
        }
    }
    Ok(done)
}

/// The cached Sage reference data (tax rates, ledger accounts, bank accounts, currencies).
#[utoipa::path(get, path = "/v1/bindings/{binding_id}/sage/reference", tag = "sage", operation_id = "sage_reference",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Reference),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding, ..
    }: BindingAccess<action::ViewReference>,
) -> Result<axum::Json<Reference>, Problem> {
    Ok(axum::Json(load(&state.db, binding).await?))
}

/// Fetch the reference data from Sage now (the settings page's Refresh button).
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/sage/reference/refresh", tag = "sage", operation_id = "sage_reference_refresh",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Reference),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Sage not connected, needs re-authorisation, or subscription lapsed", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn refresh_now(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding, ..
    }: BindingAccess<action::RefreshReference>,
) -> Result<axum::Json<Reference>, Problem> {
    refresh(&state, binding).await?;
    Ok(axum::Json(load(&state.db, binding).await?))
}
