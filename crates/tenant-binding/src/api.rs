//! The merchant's view of bindings (JSON twins of the dashboard's bindings pages).

use axum::extract::{Query, State};
use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, Problem, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::{
    auth::{Merchant, OwnedBinding},
    bindings::{self, Binding},
};

#[derive(Debug, Serialize, ToSchema)]
pub struct BindingView {
    #[serde(flatten)]
    pub binding: Binding,
    /// Webhook events accepted from the store.
    pub events_received: i64,
    pub last_event_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct TenantQuery {
    /// Which tenant; defaults to your first.
    pub tenant_id: Option<TenantId>,
}

async fn view(db: &sqlx::PgPool, binding: Binding) -> Result<BindingView, Problem> {
    let stats = sqlx::query!(
        r#"SELECT count(*) AS "count!", max(received_at) AS last FROM received_events WHERE binding_id = $1"#,
        binding.binding_id.0
    )
    .fetch_one(db)
    .await?;
    Ok(BindingView {
        binding,
        events_received: stats.count,
        last_event_at: stats.last,
    })
}

/// The tenant's bindings (one per Magento install), newest first.
#[utoipa::path(get, path = "/v1/bindings", tag = "bindings", operation_id = "list_bindings",
    security(("bearer" = []), ("session" = [])),
    params(TenantQuery),
    responses(
        (status = 200, body = Vec<BindingView>),
        (status = 401, description = "Not signed in", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list(
    State(state): State<AppState>,
    merchant: Merchant,
    Query(query): Query<TenantQuery>,
) -> Result<axum::Json<Vec<BindingView>>, Problem> {
    let tenant = merchant.tenant(&state.db, query.tenant_id).await?;
    let ids = sqlx::query_scalar!(
        r#"SELECT id AS "id: BindingId" FROM connector_bindings
           WHERE tenant_id = $1 AND status <> 'pairing' ORDER BY created_at DESC, id"#,
        tenant.0
    )
    .fetch_all(&state.db)
    .await?;
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(b) = bindings::load(&state.db, id).await? {
            out.push(view(&state.db, b).await?);
        }
    }
    Ok(axum::Json(out))
}

/// One binding.
#[utoipa::path(get, path = "/v1/bindings/{binding_id}", tag = "bindings", operation_id = "get_binding",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = BindingView),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    OwnedBinding { binding_id, .. }: OwnedBinding,
) -> Result<axum::Json<BindingView>, Problem> {
    let binding = bindings::load(&state.db, binding_id)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", format!("You have no binding {binding_id}.")))?;
    Ok(axum::Json(view(&state.db, binding).await?))
}
