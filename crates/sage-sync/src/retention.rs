//! Retention: nothing written per event or per request grows for ever. One pass, led by
//! one worker across replicas, applies each rule in batches of [`BATCH`] rows (each its
//! own short statement, so no lock is held long and the queue keeps moving):
//!
//! - received event bodies (customers' personal data) are emptied after
//!   `retain_event_bodies`; the event's key, ids and times stay, so a late re-delivery is
//!   still recognised and a payment still knows when the money arrived;
//! - finished runs (synced, skipped, failed, dead) are deleted after `retain_sync_runs`,
//!   with their attempts and jobs (cascade) and their received events;
//! - done or cancelled jobs after `retain_finished_jobs` (dead ones stay with their run,
//!   for Retry);
//! - the audit trail after `retain_audit`, kept longest.
//!
//! Cross-references (`entity_xref`) are never deleted: they are what keeps a document from
//! being posted twice.

use std::time::Duration;

use ledger_core::Settings;
use sqlx::PgPool;

/// Rows per statement.
pub const BATCH: i64 = 5_000;

/// The session advisory lock whose holder runs a pass.
pub const RETENTION_LEADER_LOCK: i64 = 0x6c65_6467_6572_0002;

/// What one pass removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub event_bodies: u64,
    pub runs: u64,
    pub events: u64,
    pub jobs: u64,
    pub audit: u64,
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Repeats `step` (one batch) until a batch comes back short; the total.
async fn batches<F, Fut>(mut step: F) -> Result<u64, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<u64, sqlx::Error>>,
{
    let mut total = 0;
    loop {
        let n = step().await?;
        total += n;
        if n < u64::try_from(BATCH).unwrap_or(u64::MAX) {
            return Ok(total);
        }
        // Let the queue's statements in between batches.
        tokio::task::yield_now().await;
    }
}

/// One retention pass, if this process leads it (another replica's pass in progress:
/// `None`).
pub async fn run_pass(db: &PgPool, settings: &Settings) -> Result<Option<Pruned>, sqlx::Error> {
    // A connection of its own: closing it (even when the pass is dropped at shutdown)
    // releases the lock.
    let mut leader = db.acquire().await?.detach();
    let led = sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "led!""#, RETENTION_LEADER_LOCK)
        .fetch_one(&mut leader)
        .await?;
    if !led {
        return Ok(None);
    }
    let pruned = prune(db, settings).await;
    let _ = sqlx::Connection::close(leader).await;
    pruned.map(Some)
}

/// Applies every rule (see the module docs), whoever leads.
pub async fn prune(db: &PgPool, settings: &Settings) -> Result<Pruned, sqlx::Error> {
    let bodies = secs(settings.retain_event_bodies);
    let event_bodies = batches(|| async { ledger_jobs::forget_event_bodies(db, bodies, BATCH).await }).await?;

    let runs_after = secs(settings.retain_sync_runs);
    let (mut runs, mut events) = (0, 0);
    loop {
        let row = sqlx::query!(
            r#"WITH doomed AS (
                 SELECT id, event_id FROM sync_runs
                 WHERE finished_at < now() - make_interval(secs => $1)
                   AND status IN ('synced', 'skipped_by_policy', 'failed', 'dead')
                 ORDER BY finished_at LIMIT $2
               ), gone AS (
                 DELETE FROM sync_runs r USING doomed WHERE r.id = doomed.id RETURNING r.event_id
               ), events AS (
                 DELETE FROM received_events e USING gone WHERE e.id = gone.event_id RETURNING 1 AS one
               )
               SELECT (SELECT count(*) FROM gone) AS "runs!", (SELECT count(*) FROM events) AS "events!""#,
            runs_after,
            BATCH
        )
        .fetch_one(db)
        .await?;
        runs += u64::try_from(row.runs).unwrap_or_default();
        events += u64::try_from(row.events).unwrap_or_default();
        if row.runs < BATCH {
            break;
        }
        tokio::task::yield_now().await;
    }
    // Events without a run of their own (folded into another, or whose run went first).
    events += batches(|| async { ledger_jobs::delete_events_without_run(db, runs_after, BATCH).await }).await?;

    let jobs_after = secs(settings.retain_finished_jobs);
    let jobs = batches(|| async { ledger_jobs::delete_finished(db, jobs_after, BATCH).await }).await?;

    let audit_after = secs(settings.retain_audit);
    let audit = batches(|| async { ledger_core::audit::delete_older(db, audit_after, BATCH).await }).await?;

    Ok(Pruned {
        event_bodies,
        runs,
        events,
        jobs,
        audit,
    })
}
