//! Ending an attempt: the job, its run and what follows from it in one statement.

use chrono::{DateTime, Utc};
use ledger_core::BindingId;
use serde_json::Value;

use crate::{Job, JobStatus};

/// One finished sync attempt, as [`finish_attempt`] records it.
#[derive(Debug)]
pub struct Attempt<'a> {
    pub job: &'a Job,
    pub run: uuid::Uuid,
    pub binding: BindingId,
    /// The run has its final outcome: the job is done (else queued again).
    pub finished: bool,
    /// When queued again, after how long.
    pub retry_after_secs: f64,
    /// The attempt counts against the job's attempts (a wait or an unreachable store is
    /// given back).
    pub counts: bool,
    /// Why the job waits, and the entity lease it waits on.
    pub waiting_for: Option<&'a str>,
    pub waits_on: Option<&'a crate::EntityKey>,
    pub job_error: Option<&'a str>,
    pub started: DateTime<Utc>,
    /// The run's status after this attempt, and its error and answer.
    pub run_status: crate::RunStatus,
    pub error_class: Option<&'a str>,
    pub error_code: Option<&'a str>,
    pub message: Option<&'a str>,
    pub sage_id: Option<&'a str>,
    pub sage_reference: Option<&'a str>,
    pub skip_reason: Option<&'a str>,
    /// The attempt row is written (every counted attempt, and every failure).
    pub record: bool,
    /// The attempt's call summary and the worker that made it.
    pub request: Value,
    pub worker: String,
    /// The run's attempts counted so far (the attempt row count wins when higher).
    pub run_attempts: i32,
    /// The store callback to queue for a terminal outcome, under the entity's key.
    pub callback_entity_key: &'a crate::EntityKey,
    pub callback: Option<Value>,
    /// Hand the callback over to this attempt's worker, claimed under this lease, rather
    /// than queue it (the worker delivers it at once: no claim of its own, no read of the
    /// binding). A queued older state for the entity is dropped: the latest state wins.
    pub callback_lease: Option<(uuid::Uuid, std::time::Duration)>,
    /// The attempt's last Sage call, answered by now.
    pub unsettled_call: Option<i64>,
    /// Wake jobs waiting on the entity leases this attempt held (not when it only waited).
    pub wake_waiters: bool,
    pub policy: Option<&'a Value>,
    /// The document the attempt posted, recorded `posted` in its xref here rather than
    /// in a commit of its own — whether or not the lease still holds: it is in Sage.
    pub posted: Option<&'a Posted>,
}

/// A document an attempt posted, for its `entity_xref` row (business, kind, Magento id,
/// currency): Sage's id and reference, and what its later documents need (`extra`,
/// merged into the row's).
#[derive(Debug, Clone)]
pub struct Posted {
    pub business: String,
    pub entity: &'static str,
    pub id: i64,
    pub currency: String,
    pub sage_id: String,
    pub reference: Option<String>,
    pub extra: Value,
}

/// What [`finish_attempt`] did.
#[derive(Debug)]
pub struct Finished {
    /// The attempt still held the job's lease (else nothing was written).
    pub held: bool,
    /// Jobs waiting on its leases were made due (the caller claims again).
    pub woke: bool,
    /// The store callback handed over (claimed under `callback_lease`), with the binding
    /// it goes to as the same statement read it; `None` when it was queued instead.
    pub callback: Option<(Job, Option<CallbackStore>)>,
}

/// The binding columns a store callback is delivered with (absent: the binding is gone).
#[derive(Clone)]
pub struct CallbackStore {
    pub tenant_id: ledger_core::TenantId,
    pub magento_base_url: String,
    pub status: String,
    pub api_key: Option<Vec<u8>>,
    pub magento_connection_status: String,
    pub store_clock_skew_secs: Option<i32>,
}

impl std::fmt::Debug for CallbackStore {
    // The sealed api_key is never printed, even encrypted.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackStore")
            .field("tenant_id", &self.tenant_id)
            .field("magento_base_url", &self.magento_base_url)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

/// Records an attempt and moves run and job on, in one statement, only while the job's
/// lease is still held; ends the attempt's entity leases, settles its last Sage call's
/// budget entry, wakes the jobs waiting on its leases and queues the store callback.
pub async fn finish_attempt(db: &sqlx::PgPool, a: &Attempt<'_>) -> Result<Finished, sqlx::Error> {
    // One statement, one commit: the job moves on only while this attempt still holds its
    // lease, and with it the attempt, the run, the callback and the end of the entity
    // leases (which end with the attempt whatever happens to the job).
    let row = sqlx::query!(
        r#"WITH fin AS (
             UPDATE jobs SET status = CASE WHEN $3 THEN 'done' ELSE 'queued' END, lease_id = NULL, locked_until = NULL,
                    run_at = CASE WHEN $3 THEN run_at ELSE now() + make_interval(secs => $4) END,
                    attempts = attempts - CASE WHEN $3 OR $5 THEN 0 ELSE 1 END,
                    waiting_for = CASE WHEN $3 THEN waiting_for ELSE $6 END,
                    waits_on = CASE WHEN $3 THEN NULL ELSE $25 END,
                    last_error = $7, updated_at = now()
             WHERE id = $1 AND lease_id = $2
             RETURNING id
           ), attempt AS (
             -- Numbered across the run: a retried run's job counts its attempts afresh.
             INSERT INTO sync_attempts (sync_run_id, attempt, started_at, outcome, error_class, error_code, message, request, worker, policy)
             SELECT $8::uuid, (SELECT COALESCE(max(attempt), 0) + 1 FROM sync_attempts WHERE sync_run_id = $8::uuid),
                    $9::timestamptz, $10::text, $11::text, $12::text, $13::text, $14::jsonb, $15::text, $27::jsonb
             FROM fin WHERE $16::bool
             RETURNING 1 AS one
           ), run AS (
             UPDATE sync_runs SET status = $10, error_class = $11, error_code = $12, message = $13,
                    sage_id = COALESCE($17, sage_id), sage_reference = COALESCE($18, sage_reference), skip_reason = $19,
                    attempts = GREATEST($20, ((SELECT count(*) FROM sync_attempts WHERE sync_run_id = $8) + (SELECT count(*) FROM attempt))::int),
                    started_at = COALESCE(started_at, $9), finished_at = CASE WHEN $3 THEN now() END, updated_at = now()
             WHERE id = $8 AND EXISTS (SELECT 1 FROM fin)
           ), unlocked AS (
             DELETE FROM sync_locks WHERE holder = $2
             RETURNING key
           ), settled AS (
             -- The attempt's last Sage call, answered by now (see CallLog::take_unsettled).
             UPDATE sage_calls SET at = clock_timestamp() WHERE id = $24
           ), woken AS (
             -- Jobs waiting on a lease this attempt held (a payment or credit note on its
             -- invoice, another event for the entity) go now rather than at their next look.
             -- Not when this attempt only waited too: waiters would wake each other forever.
             -- By the binding and the partial index's own predicate: a few rows at most.
             UPDATE jobs SET run_at = now(), updated_at = now()
             WHERE $26::bool AND jobs.binding_id = $21 AND jobs.status = 'queued' AND jobs.waits_on IS NOT NULL
               AND jobs.waits_on IN (SELECT key FROM unlocked) AND jobs.run_at > now()
             RETURNING 1 AS one
           ), replaced AS (
             -- Handed over: a queued older state for the entity takes the new one and is
             -- claimed under the worker's lease (the queue keeps one row per entity)...
             UPDATE jobs SET payload = $23::jsonb, status = 'running', lease_id = $28::uuid,
                    locked_until = now() + make_interval(secs => $29), attempts = 1, run_at = now(), updated_at = now()
             WHERE $28::uuid IS NOT NULL AND $23::jsonb IS NOT NULL AND EXISTS (SELECT 1 FROM fin)
               AND jobs.binding_id = $21 AND jobs.entity_key = $22 AND jobs.kind = 'sync_state' AND jobs.status = 'queued'
             RETURNING id, attempts
           ), inserted AS (
             -- ...else it is inserted running, which the queued-callback index does not
             -- cover. Not handed over: queued, replacing a queued older state.
             INSERT INTO jobs (binding_id, kind, entity_key, payload, status, lease_id, locked_until, attempts)
             SELECT $21::uuid, 'sync_state', $22::text, $23::jsonb,
                    CASE WHEN $28::uuid IS NULL THEN 'queued' ELSE 'running' END, $28::uuid,
                    CASE WHEN $28::uuid IS NOT NULL THEN now() + make_interval(secs => $29) END,
                    CASE WHEN $28::uuid IS NULL THEN 0 ELSE 1 END
             FROM fin WHERE $23::jsonb IS NOT NULL AND NOT EXISTS (SELECT 1 FROM replaced)
             ON CONFLICT (binding_id, entity_key) WHERE status = 'queued' AND kind = 'sync_state'
             DO UPDATE SET payload = EXCLUDED.payload, run_at = now(), attempts = 0, updated_at = now()
             RETURNING id, attempts
           ), callback AS (
             SELECT id, attempts FROM replaced UNION ALL SELECT id, attempts FROM inserted
           ), posted AS (
             -- Not gated on the lease: the document is in Sage either way. Committed with
             -- the release of the entity's lease, so its next holder sees it posted.
             INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, currency, state, sage_id, sage_reference,
                                      sage_business_id, extra)
             SELECT $21, $30::text, $31::bigint, $32::text, 'posted', $33::text, $34::text, $35::text, $36::jsonb
             WHERE $30::text IS NOT NULL
             ON CONFLICT (binding_id, sage_business_id, entity_type, magento_entity_id, currency)
             DO UPDATE SET state = 'posted', sage_id = EXCLUDED.sage_id, sage_reference = EXCLUDED.sage_reference,
                           extra = entity_xref.extra || EXCLUDED.extra, updated_at = now()
           )
           SELECT EXISTS (SELECT 1 FROM fin) AS "held!", EXISTS (SELECT 1 FROM woken) AS "woke!", c.id AS "callback_id?", c.attempts AS "callback_attempts?",
                  b.tenant_id AS "tenant_id?: ledger_core::TenantId", b.magento_base_url AS "magento_base_url?",
                  b.status AS "binding_status?", b.api_key, b.magento_connection_status AS "magento_connection_status?",
                  b.store_clock_skew_secs
           FROM (VALUES (1)) one(x) LEFT JOIN callback c ON $28::uuid IS NOT NULL
           LEFT JOIN connector_bindings b ON c.id IS NOT NULL AND b.id = $21"#,
        a.job.id,
        a.job.lease_id,
        a.finished,
        a.retry_after_secs,
        a.counts,
        a.waiting_for,
        a.job_error,
        a.run,
        a.started,
        a.run_status.as_str(),
        a.error_class,
        a.error_code,
        a.message,
        a.request,
        a.worker,
        a.record,
        a.sage_id,
        a.sage_reference,
        a.skip_reason,
        a.run_attempts,
        a.binding.0,
        a.callback_entity_key.as_str(),
        a.callback,
        a.unsettled_call,
        a.waits_on.map(crate::EntityKey::as_str),
        a.wake_waiters,
        a.policy,
        a.callback_lease.map(|(lease, _)| lease),
        a.callback_lease.map_or(0.0, |(_, ttl)| ttl.as_secs_f64()),
        a.posted.map(|p| p.entity),
        a.posted.map(|p| p.id),
        a.posted.map(|p| p.currency.as_str()),
        a.posted.map(|p| p.sage_id.as_str()),
        a.posted.and_then(|p| p.reference.as_deref()),
        a.posted.map(|p| p.business.as_str()),
        a.posted.map(|p| &p.extra),
    )
    .fetch_one(db)
    .await?;
    let callback = match (row.callback_id, a.callback_lease, &a.callback) {
        (Some(id), Some((lease_id, _)), Some(payload)) => {
            let store = match (
                row.tenant_id,
                row.magento_base_url,
                row.binding_status,
                row.magento_connection_status,
            ) {
                (Some(tenant_id), Some(magento_base_url), Some(status), Some(magento_connection_status)) => {
                    Some(CallbackStore {
                        tenant_id,
                        magento_base_url,
                        status,
                        api_key: row.api_key,
                        magento_connection_status,
                        store_clock_skew_secs: row.store_clock_skew_secs,
                    })
                }
                _ => None,
            };
            let job = Job {
                id,
                binding_id: a.binding,
                kind: crate::JobKind::SyncState,
                sync_run_id: None,
                attempt: row.callback_attempts.unwrap_or(1),
                lease_id,
                payload: payload.clone(),
                entity_key: Some(a.callback_entity_key.as_str().to_owned()),
                run: None,
                more_due: false,
            };
            Some((job, store))
        }
        _ => None,
    };
    Ok(Finished {
        held: row.held,
        woke: row.woke,
        callback,
    })
}

/// How a store callback ended, as [`finish_callback`] records it.
#[derive(Debug, Clone, Copy)]
pub struct CallbackEnd<'a> {
    /// `Done` (delivered), `Dead` (refused) or `Queued` (retried after `retry_after_secs`).
    pub status: JobStatus,
    pub retry_after_secs: f64,
    pub error: Option<&'a str>,
    /// The run's callback state (`delivered`, `rejected`), when it has one.
    pub run_status: Option<&'a str>,
    pub run: Option<uuid::Uuid>,
}

/// Ends a callback job (only while this lease holds it) and records the run's callback
/// state, in one statement. A callback due for a retry is dropped when a newer state for
/// its entity is already queued: the latest state wins (and the queue holds one per
/// entity).
pub async fn finish_callback(db: &sqlx::PgPool, job: &Job, end: CallbackEnd<'_>) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH fin AS (
           UPDATE jobs SET status = CASE WHEN $3 = 'queued' AND EXISTS (
                      SELECT 1 FROM jobs q WHERE q.binding_id = jobs.binding_id AND q.entity_key = jobs.entity_key
                        AND q.kind = 'sync_state' AND q.status = 'queued' AND q.id <> jobs.id) THEN 'done' ELSE $3 END,
                  lease_id = NULL, locked_until = NULL,
                  run_at = CASE WHEN $3 = 'queued' THEN now() + make_interval(secs => $4) ELSE run_at END,
                  waiting_for = CASE WHEN $3 = 'queued' THEN 'store_unreachable' ELSE waiting_for END,
                  last_error = $5, updated_at = now()
           WHERE id = $1 AND lease_id = $2
           RETURNING id
         )
         UPDATE sync_runs SET callback_status = $6, callback_at = now()
         WHERE id = $7 AND $6::text IS NOT NULL AND EXISTS (SELECT 1 FROM fin)",
        job.id,
        job.lease_id,
        end.status.as_str(),
        end.retry_after_secs,
        end.error,
        end.run_status,
        end.run,
    )
    .execute(db)
    .await?;
    Ok(())
}
