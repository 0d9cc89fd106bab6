//! Sync runs, the audit trail of sync work: recording each attempt's outcome, and the
//! operator actions (retry, retry all dead, skip) with their JSON API.

use chrono::{DateTime, Utc};
use ledger_core::{
    AppState, BindingId, Problem, TenantId,
    audit::{self, Actor},
};
use ledger_tenant_binding::auth::{Access, Merchant, OperatorAction};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};

use ledger_jobs::{EventName, RunStatus};

use crate::{
    callback,
    outcome::{ErrorClass, Next, Outcome},
    process::RunInfo,
    xref::{self, XrefKey},
};

/// How an attempt ended, for [`complete`].
#[derive(Debug)]
pub struct Ended<'a> {
    pub outcome: &'a Outcome,
    /// The document it posted, recorded `posted` with the attempt.
    pub posted: Option<&'a ledger_jobs::Posted>,
    pub started: DateTime<Utc>,
    pub calls: &'a [ledger_sage_vault::session::CallSummary],
    /// Its last Sage call's budget entry, settled with the attempt.
    pub unsettled: Option<i64>,
}

/// What [`complete`] leaves the worker to do.
#[derive(Debug, Default)]
pub struct Completed {
    /// The store callback handed over, claimed, with the binding it goes to.
    pub callback: Option<(ledger_jobs::Job, Option<ledger_jobs::CallbackStore>)>,
    /// The job is queued again after this long (a wait or a retry).
    pub retry_in: Option<std::time::Duration>,
    /// Jobs waiting on the attempt's leases are due now.
    pub woke: bool,
}

/// Records an attempt and moves run and job on, in one statement, only while the job's
/// lease is still held; ends the attempt's entity leases and settles its last Sage call's
/// budget entry. Hands the store callback for a terminal outcome over to the caller,
/// claimed and with its binding read, for delivery at once.
pub async fn complete(
    state: &AppState,
    job: &ledger_jobs::Job,
    run: &RunInfo,
    ended: Ended<'_>,
) -> Result<Completed, sqlx::Error> {
    let Ended {
        outcome,
        posted,
        started,
        calls,
        unsettled,
    } = ended;
    let attempt = u32::try_from(job.attempt).unwrap_or(1);
    let next = crate::outcome::next(outcome, attempt, state.settings.job_max_attempts);
    let (status, class, code, message, sage_id, reference, skip_reason) = match outcome {
        Outcome::Synced {
            sage_id,
            reference,
            message,
        } => (
            RunStatus::Synced,
            None,
            None,
            message.clone(),
            Some(sage_id.clone()),
            reference.clone(),
            None,
        ),
        Outcome::Skipped { reason, message } => (
            RunStatus::SkippedByPolicy,
            None,
            None,
            Some(message.clone()),
            None,
            None,
            Some(reason.clone()),
        ),
        Outcome::Failed(f) => {
            let terminal = next == Next::Done;
            let dead = terminal
                && matches!(
                    f.class,
                    ErrorClass::RateLimited | ErrorClass::Transient | ErrorClass::Internal
                );
            let status = if dead {
                RunStatus::Dead
            } else if terminal {
                RunStatus::Failed
            } else {
                RunStatus::Pending
            };
            (
                status,
                Some(f.class.as_str()),
                Some(f.code.clone()),
                Some(f.message.clone()),
                None,
                None,
                None,
            )
        }
        Outcome::Blocked { reason, .. } => (
            RunStatus::Pending,
            None,
            None,
            Some(format!("Waiting: {reason}")),
            None,
            None,
            None,
        ),
    };
    let finished = next == Next::Done;
    // The store callback for a terminal outcome (the latest state replaces a queued one).
    let callback = if finished {
        let invoice_sage = if run.event_name == EventName::InvoicePaid {
            xref::get(
                &state.db,
                &XrefKey::document(run.binding, &run.business_id, "invoice", run.entity_id),
            )
            .await?
            .and_then(|x| x.sage_id.map(|id| (id, x.sage_reference)))
        } else {
            None
        };
        callback::state_for(
            callback::Finished {
                event: &run.event_name,
                entity_type: &run.entity_type,
                entity_id: run.entity_id,
                status: status.as_str(),
                outcome,
                at: Utc::now(),
            },
            invoice_sage,
        )
        .map(|sync_state| {
            json!({
                "state": sync_state,
                "run_id": run.id,
                "finished_at": Utc::now(),
                "traceparent": ledger_core::trace::traceparent(&tracing::Span::current()).or_else(|| run.traceparent.clone()),
            })
        })
    } else {
        None
    };
    let (after, count, job_error) = match &next {
        Next::Done => (0.0, true, code.as_deref()),
        Next::Retry { after, count } => (after.as_secs_f64(), *count, message.as_deref()),
    };
    let (waiting, waits_on) = match outcome {
        Outcome::Blocked { reason, on, .. } => (Some(reason.as_str()), on.as_ref()),
        _ => (None, None),
    };
    let record = count || matches!(outcome, Outcome::Failed(_));
    let row = ledger_jobs::finish_attempt(
        &state.db,
        &ledger_jobs::Attempt {
            job,
            run: run.id,
            binding: run.binding,
            finished,
            retry_after_secs: after,
            counts: count,
            waiting_for: waiting,
            waits_on,
            job_error,
            started,
            run_status: status,
            error_class: class,
            error_code: code.as_deref(),
            message: message.as_deref(),
            sage_id: sage_id.as_deref(),
            sage_reference: reference.as_deref(),
            skip_reason: skip_reason.as_deref(),
            record,
            request: json!({ "sage_calls": calls }),
            worker: format!("{}", std::process::id()),
            // An attempt given back (a wait, an unreachable store) is not one.
            run_attempts: job.attempt - i32::from(!count),
            callback_entity_key: &ledger_jobs::EntityKey::new(&run.entity_type, run.entity_id),
            callback,
            callback_lease: Some((uuid::Uuid::new_v4(), state.settings.job_lease)),
            unsettled_call: unsettled,
            wake_waiters: !matches!(outcome, Outcome::Blocked { .. }),
            policy: run.policy.as_ref(),
            posted,
        },
    )
    .await?;
    if !row.held {
        // The lease expired and another worker owns the job now: its result counts.
        tracing::warn!(job = job.id, "lease lost before completing; result discarded");
        return Ok(Completed::default());
    }
    metrics::counter!("sync_runs_total", "status" => status.as_str(), "class" => class.unwrap_or("none")).increment(1);
    Ok(Completed {
        callback: row.callback,
        retry_in: match next {
            Next::Retry { after, .. } => Some(after),
            Next::Done => None,
        },
        woke: row.woke,
    })
}

// ---- API ----------------------------------------------------------------------

/// One sync run as the history shows it.
#[derive(Debug, Serialize, ToSchema)]
pub struct Run {
    pub sync_run_id: uuid::Uuid,
    pub binding_id: BindingId,
    pub event_name: String,
    pub entity_type: String,
    pub magento_entity_id: i64,
    /// pending, running, synced, skipped_by_policy, failed or dead.
    pub status: String,
    pub skip_reason: Option<String>,
    pub error_class: Option<String>,
    pub error_code: Option<String>,
    /// What happened, and what to do when it failed.
    pub message: Option<String>,
    pub sage_id: Option<String>,
    pub sage_reference: Option<String>,
    pub attempts: i32,
    /// Events folded into this run (repeated customer or product updates).
    pub coalesced: i32,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    /// Whether the store was told (delivered, rejected) and when.
    pub callback_status: Option<String>,
    pub trace_id: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Attempt {
    pub attempt: i32,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    pub outcome: String,
    pub error_class: Option<String>,
    pub error_code: Option<String>,
    pub message: Option<String>,
    /// What was asked of Sage: method, route, outcome, timing and each POST/PUT body with
    /// personal data blanked (`sage_calls`).
    #[schema(value_type = Object)]
    pub request: Option<Value>,
    /// The worker process that made the attempt.
    pub worker: Option<String>,
    /// The binding's settings this attempt ran with (a retry takes them afresh).
    #[schema(value_type = Object)]
    pub policy: Option<Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    pub run: Run,
    pub attempts_detail: Vec<Attempt>,
    /// The event as the store sent it.
    pub event: Option<Value>,
}

#[derive(Debug, Default, Deserialize, IntoParams)]
pub struct RunFilter {
    /// pending, running, synced, skipped_by_policy, failed or dead.
    pub status: Option<String>,
    /// A skip reason or error code.
    pub reason: Option<String>,
    /// The Magento entity id.
    pub entity_id: Option<i64>,
    /// Runs created on or after this time.
    pub since: Option<DateTime<Utc>>,
    /// At most this many (default 100, at most 500).
    pub limit: Option<i64>,
}

pub async fn list(db: &sqlx::PgPool, binding: BindingId, f: &RunFilter) -> Result<Vec<Run>, sqlx::Error> {
    sqlx::query_as!(
        Run,
        r#"SELECT id AS "sync_run_id!", binding_id AS "binding_id!: BindingId", event_name AS "event_name!", entity_type AS "entity_type!",
           magento_entity_id AS "magento_entity_id!", status AS "status!", skip_reason, error_class, error_code, message,
           sage_id, sage_reference, attempts AS "attempts!", coalesced AS "coalesced!", created_at AS "created_at!",
           started_at, finished_at, callback_status, trace_id FROM sync_runs
         WHERE binding_id = $1 AND ($2::text IS NULL OR status = $2)
           AND ($3::text IS NULL OR skip_reason = $3 OR error_code = $3 OR error_class = $3)
           AND ($4::bigint IS NULL OR magento_entity_id = $4) AND ($5::timestamptz IS NULL OR created_at >= $5)
         ORDER BY created_at DESC, id LIMIT $6"#,
        binding.0,
        f.status,
        f.reason,
        f.entity_id,
        f.since,
        f.limit.unwrap_or(100).clamp(1, 500),
    )
    .fetch_all(db)
    .await
}

pub async fn detail(db: &sqlx::PgPool, run: uuid::Uuid) -> Result<Option<RunDetail>, sqlx::Error> {
    let Some(r) = sqlx::query_as!(Run, r#"SELECT id AS "sync_run_id!", binding_id AS "binding_id!: BindingId", event_name AS "event_name!", entity_type AS "entity_type!",
           magento_entity_id AS "magento_entity_id!", status AS "status!", skip_reason, error_class, error_code, message,
           sage_id, sage_reference, attempts AS "attempts!", coalesced AS "coalesced!", created_at AS "created_at!",
           started_at, finished_at, callback_status, trace_id FROM sync_runs WHERE id = $1"#, run).fetch_optional(db).await? else {
        return Ok(None);
    };
    let attempts = sqlx::query_as!(
        Attempt,
        "SELECT attempt, started_at, finished_at, outcome, error_class, error_code, message, request, worker, policy FROM sync_attempts WHERE sync_run_id = $1 ORDER BY id",
        run
    )
    .fetch_all(db)
    .await?;
    let event = sqlx::query_scalar!(
        "SELECT e.body FROM received_events e JOIN sync_runs r ON r.event_id = e.id WHERE r.id = $1",
        run
    )
    .fetch_optional(db)
    .await?;
    Ok(Some(RunDetail {
        run: r,
        attempts_detail: attempts,
        event,
    }))
}

pub(crate) async fn owned_run(
    state: &AppState,
    merchant: &Merchant,
    run: uuid::Uuid,
    action: OperatorAction,
) -> Result<(BindingId, Access), Problem> {
    let binding = sqlx::query_scalar!(
        r#"SELECT binding_id AS "binding_id: BindingId" FROM sync_runs WHERE id = $1"#,
        run
    )
    .fetch_optional(&state.db)
    .await?
    .ok_or_else(|| Problem::not_found("run_not_found", format!("There is no sync run {run}.")))?;
    let access = merchant
        .binding_access(&state.db, binding, action)
        .await
        .map_err(|_| Problem::not_found("run_not_found", format!("There is no sync run {run}.")))?;
    Ok((binding, access))
}

/// Puts a finished run back in the queue (after the merchant fixed the cause), with the
/// binding's settings as they are now: a fixed mapping applies to the retry.
pub async fn retry(state: &AppState, run: uuid::Uuid, actor: Actor) -> Result<bool, sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let row = sqlx::query!(
        r#"UPDATE sync_runs SET status = 'pending', error_class = NULL, error_code = NULL, skip_reason = NULL,
                  message = 'Retry requested', finished_at = NULL, updated_at = now(),
                  policy = COALESCE((SELECT settings FROM binding_settings s WHERE s.binding_id = sync_runs.binding_id), policy)
           WHERE id = $1 AND status IN ('failed', 'dead', 'skipped_by_policy')
           RETURNING binding_id AS "binding_id: BindingId""#,
        run
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(false) };
    ledger_jobs::requeue_run(&mut tx, row.binding_id, run).await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: None,
            binding_id: Some(row.binding_id),
            action: "run.retried",
            details: json!({ "sync_run_id": run }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Retries every dead (and failed) run of a binding; returns how many.
pub async fn retry_dead(state: &AppState, binding: BindingId, actor: Actor) -> Result<u64, sqlx::Error> {
    let runs = sqlx::query_scalar!(
        "SELECT id FROM sync_runs WHERE binding_id = $1 AND status IN ('dead', 'failed')",
        binding.0
    )
    .fetch_all(&state.db)
    .await?;
    let mut n = 0;
    for run in runs {
        if retry(state, run, actor.clone()).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// The latest run of each entity that is failed, dead or skipped with one of `codes`
/// (error code or skip reason): the runs a settings change addressing those codes can fix.
async fn fixable_runs(
    db: &sqlx::PgPool,
    binding: BindingId,
    codes: &[String],
) -> Result<Vec<(uuid::Uuid, String)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT r.id, COALESCE(r.error_code, r.skip_reason) AS "code!" FROM sync_runs r
           WHERE r.binding_id = $1 AND r.status IN ('failed', 'dead', 'skipped_by_policy')
             AND COALESCE(r.error_code, r.skip_reason) = ANY($2)
             AND NOT EXISTS (SELECT 1 FROM sync_runs n WHERE n.binding_id = r.binding_id AND n.event_name = r.event_name
                             AND n.magento_entity_id = r.magento_entity_id AND n.created_at > r.created_at)"#,
        binding.0,
        codes
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.id, r.code)).collect())
}

/// How many runs each code holds back (for the codes given).
pub async fn fixable_counts(
    db: &sqlx::PgPool,
    binding: BindingId,
    codes: &[String],
) -> Result<std::collections::BTreeMap<String, u64>, sqlx::Error> {
    let mut counts = std::collections::BTreeMap::new();
    for (_, code) in fixable_runs(db, binding, codes).await? {
        *counts.entry(code).or_insert(0) += 1;
    }
    Ok(counts)
}

/// Retries the runs [`fixable_runs`] finds for `codes`; returns how many.
pub async fn retry_fixable(
    state: &AppState,
    binding: BindingId,
    codes: &[String],
    actor: Actor,
) -> Result<u64, sqlx::Error> {
    let mut n = 0;
    for (run, _) in fixable_runs(&state.db, binding, codes).await? {
        if retry(state, run, actor.clone()).await? {
            n += 1;
        }
    }
    Ok(n)
}

/// An operator's pause: the binding's sync jobs are held where they are (callbacks to
/// the store still go out). Only an active binding can be paused; true when it was.
pub async fn pause_binding(state: &AppState, binding: BindingId, actor: Actor) -> Result<bool, sqlx::Error> {
    set_paused(state, binding, actor, true).await
}

/// Resumes a paused binding: held jobs become due at once and the workers are woken.
pub async fn resume_binding(state: &AppState, binding: BindingId, actor: Actor) -> Result<bool, sqlx::Error> {
    set_paused(state, binding, actor, false).await
}

async fn set_paused(state: &AppState, binding: BindingId, actor: Actor, pause: bool) -> Result<bool, sqlx::Error> {
    use ledger_tenant_binding::bindings::{Move, transition};
    let mv = if pause {
        Move::OperatorPause
    } else {
        Move::OperatorResume
    };
    let mut tx = state.db.begin().await?;
    let Some(tenant) = transition(&mut tx, binding, mv).await? else {
        return Ok(false);
    };
    if !pause {
        // Also jobs a lapse paused, should the operator resume a lapsed binding.
        ledger_jobs::release_binding(&mut tx, binding).await?;
    }
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: Some(tenant),
            binding_id: Some(binding),
            action: if pause { "binding.paused" } else { "binding.resumed" },
            details: serde_json::json!({}),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

/// Gives up on a run on purpose: skipped (reason `skipped_by_operator`), its job cancelled.
pub async fn skip(state: &AppState, run: uuid::Uuid, actor: Actor) -> Result<bool, sqlx::Error> {
    let mut tx = state.db.begin().await?;
    let row = sqlx::query!(
        r#"UPDATE sync_runs SET status = 'skipped_by_policy', skip_reason = 'skipped_by_operator', message = 'Skipped by an operator',
                  finished_at = now(), updated_at = now()
           WHERE id = $1 AND status IN ('pending', 'failed', 'dead')
           RETURNING binding_id AS "binding_id: BindingId", event_name, entity_type, magento_entity_id"#,
        run
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(false) };
    ledger_jobs::cancel_run(&mut tx, run).await?;
    let outcome = Outcome::Skipped {
        reason: "skipped_by_operator".into(),
        message: String::new(),
    };
    if let Some(s) = callback::state_for(
        callback::Finished {
            event: &EventName::parse(&row.event_name),
            entity_type: &row.entity_type,
            entity_id: row.magento_entity_id,
            status: "skipped_by_policy",
            outcome: &outcome,
            at: Utc::now(),
        },
        None,
    ) {
        let payload = json!({ "state": s, "run_id": run, "finished_at": Utc::now() });
        ledger_jobs::enqueue_callback(
            &mut tx,
            row.binding_id,
            &ledger_jobs::EntityKey::new(&row.entity_type, row.magento_entity_id),
            &payload,
            true,
        )
        .await?;
    }
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: None,
            binding_id: Some(row.binding_id),
            action: "run.skipped",
            details: json!({ "sync_run_id": run }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(true)
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Retried {
    pub retried: u64,
}

#[derive(Debug, Default, Serialize, Deserialize, ToSchema)]
pub struct FixableCodes {
    /// Error codes or skip reasons, from `GET …/runs/fixable`.
    pub codes: Vec<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Fixable {
    /// For each code a settings change can address, how many runs it holds back (the
    /// latest run of each entity that is failed, dead or skipped with it).
    pub runs_by_code: std::collections::BTreeMap<String, u64>,
}

/// Checks codes against the ones a settings change can fix.
pub fn known_fixable(codes: &[String]) -> Result<Vec<String>, ledger_core::FieldError> {
    let unknown: Vec<&String> = codes
        .iter()
        .filter(|c| !crate::policy::FIXABLE_CODES.contains(&c.as_str()))
        .collect();
    if !unknown.is_empty() || codes.is_empty() {
        return Err(ledger_core::FieldError {
            field: "codes".into(),
            code: "invalid".into(),
            message: format!(
                "give one or more of {}{}",
                crate::policy::FIXABLE_CODES.join(", "),
                if unknown.is_empty() {
                    String::new()
                } else {
                    format!(
                        " (not: {})",
                        unknown.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
                    )
                }
            ),
        });
    }
    Ok(codes.to_vec())
}

/// How a held document (booked in Sage with other totals than Magento's) is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    /// Void it in Sage and post it again (after fixing what caused the difference).
    Repost,
    /// Keep it as it is in Sage; the run turns Synced, saying so.
    Accept,
}

/// Resolves a run held failed as `total_mismatch` (or `void_refused`), then retries it.
/// `Ok(false)` when the run holds no such document.
pub async fn resolve(
    state: &AppState,
    run: uuid::Uuid,
    resolution: Resolution,
    actor: Actor,
) -> Result<bool, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT r.binding_id AS "binding_id: BindingId", r.entity_type, r.magento_entity_id,
                  COALESCE(c.business_id, '') AS "business!", b.tenant_id AS "tenant_id: TenantId"
           FROM sync_runs r JOIN connector_bindings b ON b.id = r.binding_id
           LEFT JOIN sage_connections c ON c.binding_id = r.binding_id
           WHERE r.id = $1 AND r.status IN ('failed', 'dead') AND r.error_code IN ('total_mismatch', 'void_refused')
             AND r.entity_type IN ('invoice', 'creditmemo')"#,
        run
    )
    .fetch_optional(&state.db)
    .await?;
    let Some(row) = row else { return Ok(false) };
    let mark = match resolution {
        Resolution::Accept => {
            json!({ "mismatch_accepted": { "by": actor.as_text(), "at": Utc::now() }, "repost_requested": false })
        }
        Resolution::Repost => json!({ "repost_requested": true }),
    };
    let mut tx = state.db.begin().await?;
    let mismatch = sqlx::query_scalar!(
        "UPDATE entity_xref SET extra = extra || $6, updated_at = now()
         WHERE binding_id = $1 AND sage_business_id = $2 AND entity_type = $3 AND magento_entity_id = $4 AND currency = $5
           AND state = 'posted' AND extra ? 'mismatch'
         RETURNING extra->'mismatch'",
        row.binding_id.0,
        row.business,
        row.entity_type,
        row.magento_entity_id,
        "",
        mark
    )
    .fetch_optional(&mut *tx)
    .await?;
    let Some(mismatch) = mismatch else { return Ok(false) };
    audit::record(
        &mut tx,
        audit::Entry {
            actor: actor.clone(),
            tenant_id: Some(row.tenant_id),
            binding_id: Some(row.binding_id),
            action: match resolution {
                Resolution::Accept => "run.mismatch_accepted",
                Resolution::Repost => "run.repost_requested",
            },
            details: json!({ "sync_run_id": run, "entity_type": row.entity_type, "magento_entity_id": row.magento_entity_id, "mismatch": mismatch }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    retry(state, run, actor).await
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct ResolveRequest {
    pub action: Resolution,
}
