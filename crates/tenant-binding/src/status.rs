//! The endpoints the module calls besides webhooks (contract §5.3–§5.5).

use axum::{
    extract::{Query, State},
    http::HeaderMap,
};
use chrono::{DateTime, Utc};
use ledger_core::{
    AppState, BindingId, Problem, TenantId,
    audit::{self, Actor},
};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    bindings::{self, BindingStatus},
    magento::{self, MagentoCaller},
};

/// RFC 3339 with seconds and `Z`, as the module parses it.
fn rfc3339(at: DateTime<Utc>) -> String {
    at.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

async fn verified(state: &AppState, headers: &HeaderMap, accept: magento::Accept) -> Result<MagentoCaller, Problem> {
    let caller = magento::authenticate_with(state, headers, None, accept).await?;
    let mut conn = state.db.acquire().await?;
    magento::consume_jti(&mut conn, &caller).await?;
    Ok(caller)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TileTenant {
    pub id: TenantId,
    /// `active`, or `token_revoked` when the store last answered the ledger with 401.
    pub magento_connection_status: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TileBinding {
    pub id: BindingId,
    /// `active` when Magento and Sage are both connected; empty while Sage is not yet
    /// connected (the module shows "Finish setup"); otherwise the problem state
    /// (`needs_reauth`, `paused`, `revoked`), which the module shows in red.
    pub status: String,
    /// Sage region, e.g. `uk` (the module upper-cases it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct TileSync {
    /// Runs waiting or running.
    pub pending_count: i64,
    /// Runs that failed (or died) in the last 24 hours.
    pub failed_24h: i64,
    /// When the last run finished, RFC 3339; null before the first.
    pub last_run_at: Option<String>,
}

/// The health tile in the Magento admin dashboard.
#[derive(Debug, Serialize, ToSchema)]
pub struct TileHealth {
    pub tenant: TileTenant,
    pub binding: TileBinding,
    pub sync: TileSync,
}

/// Clock skew the tile accepts beyond the webhook leeway.
const TILE_EXTRA_CLOCK_TOLERANCE_SECS: i64 = 600;

/// The module's "status" string for a binding: `active`, `""` until Sage is connected.
pub fn tile_status(status: BindingStatus) -> String {
    match status {
        BindingStatus::Active => "active".to_owned(),
        BindingStatus::Paired | BindingStatus::Pairing => String::new(),
        other => other.as_str().to_owned(),
    }
}

/// Health of the calling store's binding, for the Magento admin tile (cached 30 s by the module).
#[utoipa::path(get, path = "/v1/tile/health", tag = "magento", operation_id = "tile_health",
    security(("magento_jwt" = [])),
    responses(
        (status = 200, body = TileHealth),
        (status = 401, description = "The module's token was refused", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Correctly signed, but the store's clock is more than ten minutes off (`store_clock_skew`)", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn tile_health(State(state): State<AppState>, headers: HeaderMap) -> Result<axum::Json<TileHealth>, Problem> {
    // The tile is how a merchant learns what is wrong, so it answers a revoked binding
    // (the module shows any 4xx as "Ledger unreachable") and a store whose clock is off
    // by up to ten minutes more than webhooks may be; it changes nothing.
    let accept = magento::Accept {
        revoked: true,
        extra_clock_tolerance: TILE_EXTRA_CLOCK_TOLERANCE_SECS,
        cached: false,
    };
    let caller = verified(&state, &headers, accept).await?;
    let binding = bindings::load(&state.db, caller.binding_id)
        .await?
        .ok_or_else(|| Problem::internal("verified binding vanished"))?;
    let counts = sqlx::query!(
        r#"SELECT
             count(*) FILTER (WHERE status IN ('pending', 'running')) AS "pending!",
             count(*) FILTER (WHERE status IN ('failed', 'dead') AND finished_at > now() - interval '24 hours') AS "failed!",
             max(finished_at) FILTER (WHERE status IN ('synced', 'skipped_by_policy', 'failed', 'dead')) AS last_run_at
           FROM sync_runs WHERE binding_id = $1"#,
        caller.binding_id.0
    )
    .fetch_one(&state.db)
    .await?;
    let leeway = i64::try_from(state.settings.magento_clock_leeway.as_secs()).unwrap_or(30);
    let (magento_status, status) = if binding.status == BindingStatus::Revoked {
        // The module's red "re-pair required": its key is no longer the ledger's.
        ("token_revoked".to_owned(), tile_status(binding.status))
    } else if caller.store_clock_skew.abs() > leeway {
        // Red "Binding store clock 95 s ahead — fix NTP": its events wait meanwhile.
        (
            binding.magento_connection_status,
            magento::clock_warning(caller.store_clock_skew),
        )
    } else {
        (binding.magento_connection_status, tile_status(binding.status))
    };
    Ok(axum::Json(TileHealth {
        tenant: TileTenant {
            id: caller.tenant_id,
            magento_connection_status: magento_status,
        },
        binding: TileBinding {
            id: binding.binding_id,
            status,
            region: binding.region,
        },
        sync: TileSync {
            pending_count: counts.pending,
            failed_24h: counts.failed,
            last_run_at: counts.last_run_at.map(rfc3339),
        },
    }))
}

const ENTITY_TYPES: &[&str] = &["invoice", "creditmemo", "customer", "product"];

#[derive(Debug, Deserialize, IntoParams)]
pub struct StatusQuery {
    /// `invoice`, `creditmemo`, `customer` or `product`.
    pub entity_type: String,
    /// The Magento entity id.
    pub entity_id: String,
}

/// The ledger's view of one Magento entity.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityStatus {
    pub entity_type: String,
    pub entity_id: i64,
    /// The latest run's status (`pending`, `running`, `synced`, `skipped_by_policy`,
    /// `failed`, `dead`), or `unknown` when the ledger has no run for the entity.
    pub status: String,
    pub sync_run_id: Option<uuid::Uuid>,
    pub sage_id: Option<String>,
    pub sage_reference: Option<String>,
    pub error_class: Option<String>,
    pub error_code: Option<String>,
    /// What happened, and what to do about it when it failed.
    pub message: Option<String>,
    pub updated_at: Option<String>,
    /// The binding's status, as in the health tile.
    pub binding_status: String,
}

/// Sync status of one entity (the module declares this call; nothing in it calls it yet).
#[utoipa::path(get, path = "/v1/status", tag = "magento", operation_id = "entity_status",
    security(("magento_jwt" = [])),
    params(StatusQuery),
    responses(
        (status = 200, body = EntityStatus),
        (status = 401, description = "The module's token was refused", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown entity type or bad id", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn entity_status(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<StatusQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<axum::Json<EntityStatus>, Problem> {
    let caller = verified(&state, &headers, magento::Accept::WEBHOOK).await?;
    let Query(query) = query.map_err(|e| {
        Problem::validation(vec![ledger_core::FieldError {
            field: "query".into(),
            code: "required".into(),
            message: format!("{} (expected ?entity_type=…&entity_id=…)", e.body_text()),
        }])
    })?;
    let mut errors = Vec::new();
    if !ENTITY_TYPES.contains(&query.entity_type.as_str()) {
        errors.push(ledger_core::FieldError {
            field: "entity_type".into(),
            code: "invalid".into(),
            message: format!("must be one of {}", ENTITY_TYPES.join(", ")),
        });
    }
    let entity_id = query.entity_id.trim().parse::<i64>().ok().filter(|id| *id > 0);
    if entity_id.is_none() {
        errors.push(ledger_core::FieldError {
            field: "entity_id".into(),
            code: "invalid".into(),
            message: "must be a positive integer".into(),
        });
    }
    let Some(entity_id) = entity_id.filter(|_| errors.is_empty()) else {
        return Err(Problem::validation(errors));
    };
    let run = sqlx::query!(
        "SELECT id, status, sage_id, sage_reference, error_class, error_code, message, updated_at
         FROM sync_runs WHERE binding_id = $1 AND entity_type = $2 AND magento_entity_id = $3
         ORDER BY created_at DESC, id LIMIT 1",
        caller.binding_id.0,
        query.entity_type,
        entity_id,
    )
    .fetch_optional(&state.db)
    .await?;
    let binding_status = tile_status(caller.status);
    Ok(axum::Json(match run {
        None => EntityStatus {
            entity_type: query.entity_type,
            entity_id,
            status: "unknown".into(),
            sync_run_id: None,
            sage_id: None,
            sage_reference: None,
            error_class: None,
            error_code: None,
            message: None,
            updated_at: None,
            binding_status,
        },
        Some(r) => EntityStatus {
            entity_type: query.entity_type,
            entity_id,
            status: r.status,
            sync_run_id: Some(r.id),
            sage_id: r.sage_id,
            sage_reference: r.sage_reference,
            error_class: r.error_class,
            error_code: r.error_code,
            message: r.message,
            updated_at: Some(rfc3339(r.updated_at)),
            binding_status,
        },
    }))
}

/// The module's disconnect without its answer: the binding that was disconnected.
/// The Sage side (revoking its tokens) is the caller's (`ledger_sage_vault`).
pub async fn disconnect_binding(state: &AppState, headers: &HeaderMap) -> Result<BindingId, Problem> {
    let caller = magento::authenticate(state, headers, None, true).await?;
    let mut tx = state.db.begin().await?;
    magento::consume_jti(&mut tx, &caller).await?;
    revoke(
        &mut tx,
        caller.tenant_id,
        caller.binding_id,
        Actor::Magento(caller.binding_id),
        "magento",
    )
    .await?;
    tx.commit().await?;
    Ok(caller.binding_id)
}

/// Revokes a binding and cancels its queued jobs, recording who did it. No-op when
/// already revoked.
pub async fn revoke(
    conn: &mut sqlx::PgConnection,
    tenant_id: TenantId,
    binding_id: BindingId,
    actor: Actor,
    initiated_by: &str,
) -> Result<bool, sqlx::Error> {
    let changed = bindings::transition(&mut *conn, binding_id, bindings::Move::Disconnect)
        .await?
        .is_some();
    if changed {
        let cancelled = ledger_jobs::cancel_binding(&mut *conn, binding_id).await?;
        audit::record(
            conn,
            audit::Entry {
                actor,
                tenant_id: Some(tenant_id),
                binding_id: Some(binding_id),
                action: "binding.disconnected",
                details: serde_json::json!({ "initiated_by": initiated_by, "jobs_cancelled": cancelled }),
                request_id: None,
            },
        )
        .await?;
    }
    Ok(changed)
}
