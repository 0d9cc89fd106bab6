//! Liveness and readiness.

use std::time::Duration;

use axum::{Json, extract::State};
use ledger_core::{Problem, db};
use serde::Serialize;

use crate::AppState;

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Health {
    /// Always `ok`: the process is alive and serving.
    pub status: &'static str,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Readiness {
    /// `ready`.
    pub status: &'static str,
    pub database: &'static str,
    pub migrations: &'static str,
}

/// Liveness: the process answers. Never touches the database, so a database outage
/// does not get healthy pods restarted.
#[utoipa::path(get, path = "/healthz", tag = "operations", operation_id = "healthz",
    responses((status = 200, description = "The process is alive", body = Health)))]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers and every migration this build knows is applied.
#[utoipa::path(get, path = "/readyz", tag = "operations", operation_id = "readyz",
    responses(
        (status = 200, description = "Ready to serve traffic", body = Readiness),
        (status = 503, description = "Database unreachable or migrations pending",
            body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn readyz(State(state): State<AppState>) -> Result<Json<Readiness>, Problem> {
    let check = tokio::time::timeout(Duration::from_secs(2), db::pending_migrations(&state.db)).await;
    match check {
        Ok(Ok(pending)) if pending.is_empty() => Ok(Json(Readiness {
            status: "ready",
            database: "ok",
            migrations: "current",
        })),
        Ok(Ok(pending)) => Err(Problem::unavailable(
            "migrations_pending",
            format!(
                "The database lacks migrations {}; run `ledger migrate`.",
                pending.join(", ")
            ),
            5,
        )),
        Ok(Err(err)) => {
            tracing::warn!(error = %err, "readiness: database check failed");
            Err(Problem::unavailable(
                "database_unavailable",
                "The database does not answer.",
                5,
            ))
        }
        Err(_) => Err(Problem::unavailable(
            "database_unavailable",
            "The database did not answer within 2 s.",
            5,
        )),
    }
}
