//! The JSON API of runs and settings: handlers that check who calls, translate the
//! request, call the domain code in [`crate::runs`] and [`crate::policy`], and answer.

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
};
use ledger_core::{AppState, BindingId, Problem, audit::Actor, extract::Json};
use ledger_tenant_binding::auth::{BindingAccess, Merchant, OperatorAction, OwnedBinding, action};

use crate::{
    policy::{Settings, load, save},
    runs::*,
};

// ---- Runs ----------------------------------------------------------------------

/// The binding's sync runs, newest first.
#[utoipa::path(get, path = "/v1/bindings/{binding_id}/runs", tag = "sync", operation_id = "list_runs",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding"), RunFilter),
    responses(
        (status = 200, body = Vec<Run>),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_runs(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding, ..
    }: BindingAccess<action::ViewRuns>,
    Query(filter): Query<RunFilter>,
) -> Result<axum::Json<Vec<Run>>, Problem> {
    Ok(axum::Json(list(&state.db, binding, &filter).await?))
}

/// One run with every attempt and the event that started it.
#[utoipa::path(get, path = "/v1/runs/{sync_run_id}", tag = "sync", operation_id = "get_run",
    security(("bearer" = []), ("session" = [])),
    params(("sync_run_id" = uuid::Uuid, Path, description = "The run")),
    responses(
        (status = 200, body = RunDetail),
        (status = 404, description = "No such run", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_run(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(run): Path<uuid::Uuid>,
) -> Result<axum::Json<RunDetail>, Problem> {
    owned_run(&state, &merchant, run, OperatorAction::ViewRuns).await?;
    let detail = detail(&state.db, run)
        .await?
        .ok_or_else(|| Problem::not_found("run_not_found", "No such run."))?;
    Ok(axum::Json(detail))
}

/// Retry a failed, dead or skipped run.
#[utoipa::path(post, path = "/v1/runs/{sync_run_id}/retry", tag = "sync", operation_id = "retry_run",
    security(("bearer" = []), ("session" = [])),
    params(("sync_run_id" = uuid::Uuid, Path, description = "The run")),
    responses(
        (status = 202, description = "Queued again"),
        (status = 404, description = "No such run", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The run is not finished", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn retry_run(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(run): Path<uuid::Uuid>,
) -> Result<StatusCode, Problem> {
    let (_, access) = owned_run(&state, &merchant, run, OperatorAction::RetryRuns).await?;
    if retry(&state, run, access.actor).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(Problem::conflict(
            "run_not_finished",
            "Only failed, dead or skipped runs can be retried; this one is still in progress or synced.",
        ))
    }
}

/// Skip a pending, failed or dead run (it will not be posted).
#[utoipa::path(post, path = "/v1/runs/{sync_run_id}/skip", tag = "sync", operation_id = "skip_run",
    security(("bearer" = []), ("session" = [])),
    params(("sync_run_id" = uuid::Uuid, Path, description = "The run")),
    responses(
        (status = 204, description = "Skipped"),
        (status = 404, description = "No such run", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already synced or skipped", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn skip_run(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(run): Path<uuid::Uuid>,
) -> Result<StatusCode, Problem> {
    let (_, access) = owned_run(&state, &merchant, run, OperatorAction::SkipRuns).await?;
    if skip(&state, run, access.actor).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::conflict(
            "run_finished",
            "This run is already synced or skipped.",
        ))
    }
}

/// Retry every dead and failed run of the binding.
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/runs/retry-dead", tag = "sync", operation_id = "retry_dead_runs",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Retried),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn retry_dead_runs(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding,
        access,
        ..
    }: BindingAccess<action::RetryRuns>,
) -> Result<axum::Json<Retried>, Problem> {
    let retried = retry_dead(&state, binding, access.actor).await?;
    Ok(axum::Json(Retried { retried }))
}

/// The runs a settings change could fix, counted by code.
#[utoipa::path(get, path = "/v1/bindings/{binding_id}/runs/fixable", tag = "sync", operation_id = "fixable_runs",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Fixable),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn fixable(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding, ..
    }: BindingAccess<action::ViewRuns>,
) -> Result<axum::Json<Fixable>, Problem> {
    let codes: Vec<String> = crate::policy::FIXABLE_CODES.iter().map(|c| (*c).to_owned()).collect();
    Ok(axum::Json(Fixable {
        runs_by_code: fixable_counts(&state.db, binding, &codes).await?,
    }))
}

/// Retry the runs held back by these codes, with today's settings (after fixing the
/// mapping they name).
#[utoipa::path(post, path = "/v1/bindings/{binding_id}/runs/retry-fixable", tag = "sync", operation_id = "retry_fixable_runs",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    request_body = FixableCodes,
    responses(
        (status = 200, body = Retried),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Unknown codes", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn retry_fixable_runs(
    State(state): State<AppState>,
    BindingAccess {
        binding_id: binding,
        access,
        ..
    }: BindingAccess<action::RetryRuns>,
    ledger_core::extract::Json(body): ledger_core::extract::Json<FixableCodes>,
) -> Result<axum::Json<Retried>, Problem> {
    let codes = known_fixable(&body.codes).map_err(|e| Problem::validation(vec![e]))?;
    let retried = retry_fixable(&state, binding, &codes, access.actor).await?;
    Ok(axum::Json(Retried { retried }))
}

/// Resolve a document Sage booked with other totals than Magento's: `repost` (void it,
/// post it again) or `accept` (keep it; audited). The run is retried at once.
#[utoipa::path(post, path = "/v1/runs/{sync_run_id}/resolve", tag = "sync", operation_id = "resolve_run",
    security(("bearer" = []), ("session" = [])),
    params(("sync_run_id" = uuid::Uuid, Path, description = "The run")),
    request_body = ResolveRequest,
    responses(
        (status = 202, description = "Resolved; the run is queued again"),
        (status = 404, description = "No such run", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The run holds no document with a totals difference", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn resolve_run(
    State(state): State<AppState>,
    merchant: Merchant,
    Path(run): Path<uuid::Uuid>,
    ledger_core::extract::Json(body): ledger_core::extract::Json<ResolveRequest>,
) -> Result<StatusCode, Problem> {
    let (_, access) = owned_run(&state, &merchant, run, OperatorAction::RetryRuns).await?;
    if resolve(&state, run, body.action, access.actor).await? {
        Ok(StatusCode::ACCEPTED)
    } else {
        Err(Problem::conflict(
            "run_not_held",
            "Only a run failed as total_mismatch (or void_refused) with its document in Sage can be resolved.",
        ))
    }
}

// ---- Settings ------------------------------------------------------------------

/// The binding's sync settings (defaults chosen from Sage's reference data until saved).
#[utoipa::path(get, path = "/v1/bindings/{binding_id}/settings", tag = "sync", operation_id = "get_settings",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    responses(
        (status = 200, body = Settings),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get(
    State(state): State<AppState>,
    OwnedBinding {
        binding_id: binding, ..
    }: OwnedBinding,
) -> Result<axum::Json<Settings>, Problem> {
    Ok(axum::Json(load(&state, binding).await?))
}

/// Save the binding's sync settings. Every id is checked against the cached Sage
/// reference data; with any invalid field nothing is saved (422 with every field error).
#[utoipa::path(put, path = "/v1/bindings/{binding_id}/settings", tag = "sync", operation_id = "put_settings",
    security(("bearer" = []), ("session" = [])),
    params(("binding_id" = BindingId, Path, description = "The binding")),
    request_body = Settings,
    responses(
        (status = 200, description = "Saved (map keys canonicalised)", body = Settings),
        (status = 404, description = "Not one of your bindings", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields (`not_in_reference`, `invalid_format`, ...)", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn put(
    State(state): State<AppState>,
    OwnedBinding {
        merchant,
        binding_id: binding,
        tenant_id: tenant,
    }: OwnedBinding,
    Json(settings): Json<Settings>,
) -> Result<axum::Json<Settings>, Problem> {
    let saved = save(&state, binding, tenant, settings, Actor::Account(merchant.account_id.0)).await?;
    Ok(axum::Json(saved))
}
