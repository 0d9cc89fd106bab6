//! The job queue. This crate is the only code that writes the `jobs` table: its kinds and
//! statuses are [`JobKind`] and [`JobStatus`], and every move of a job — queued at
//! ingest, claimed, renewed, finished, held while Sage needs the merchant, released,
//! cancelled at disconnect, deleted by retention — is a function here.
//!
//! A job moves with its run in one statement on the hot paths (accepting an event,
//! claiming, finishing an attempt, delivering a callback): those statements write the
//! run's state columns too, and live here so that the job's side of them is next to every
//! other job statement. Everything else about runs (the audit trail, retries chosen by a
//! merchant, the API) is `ledger-sage-sync`'s.
//!
//! Claiming takes a lease (`lease_id`, `locked_until`) in one short transaction and
//! commits it before any outbound call; no transaction is ever held across the
//! network. Bindings are served round-robin (each process's [`Turn`], whose task makes
//! the claims its workers wait on together, one statement for several), each with at most
//! `binding_concurrency` jobs running across all processes, and a binding whose Sage
//! business has spent its call budget is skipped until the budget frees (its
//! callbacks to Magento still run). Expired leases are reclaimed by any worker.

mod accept;
mod claim;
mod settle;

pub use accept::{
    INGEST_QUOTA_BUCKET, INGEST_QUOTA_WINDOW, Persisted, Received, Wake, accept, delete_events_without_run,
    forget_event_bodies, repeat,
};
pub use claim::{
    Claim, ClaimedRun, Job, Reclaimed, Turn, claim, claim_or_wait, depth, enqueue_callback, finish, heartbeat,
    reclaim_expired, release,
};
pub use settle::{Attempt, CallbackEnd, CallbackStore, Finished, Posted, finish_attempt, finish_callback};

use ledger_core::BindingId;

/// The channel `pg_notify` wakes workers on.
pub const CHANNEL: &str = "ledger_jobs";

/// An entity's key in the queue: the lease an attempt takes on it (`sync_locks.key`), what
/// a job waits on (`jobs.waits_on`) and whose store callback a job is (`jobs.entity_key`).
/// One format, `type:id` (`contact:id:currency` for a contact per currency), so that a
/// release wakes exactly the jobs waiting on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EntityKey(String);

impl EntityKey {
    /// A Magento entity: `invoice`, `creditmemo`, `customer`, `product`.
    pub fn new(entity_type: &str, id: i64) -> Self {
        Self(format!("{entity_type}:{id}"))
    }

    /// A Magento customer's Sage contact in one currency.
    pub fn contact(id: i64, currency: &str) -> Self {
        Self(format!("contact:{id}:{currency}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for EntityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// An event the module sends (contract §6.2): the webhook's last path segment and
/// `sync_runs.event_name`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum EventName {
    InvoiceCreated,
    InvoicePaid,
    CreditmemoCreated,
    CustomerUpserted,
    ProductUpserted,
    /// A name this build does not handle (the webhook refuses it; a run stored by a newer
    /// build fails).
    Unknown(String),
}

impl EventName {
    /// The events the ledger accepts, in the contract's order.
    pub const HANDLED: [EventName; 5] = [
        Self::InvoiceCreated,
        Self::InvoicePaid,
        Self::CreditmemoCreated,
        Self::CustomerUpserted,
        Self::ProductUpserted,
    ];

    pub fn parse(name: &str) -> Self {
        Self::HANDLED
            .into_iter()
            .find(|e| e.as_str() == name)
            .unwrap_or_else(|| Self::Unknown(name.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Self::InvoiceCreated => "invoice.created",
            Self::InvoicePaid => "invoice.paid",
            Self::CreditmemoCreated => "creditmemo.created",
            Self::CustomerUpserted => "customer.upserted",
            Self::ProductUpserted => "product.upserted",
            Self::Unknown(name) => name,
        }
    }

    /// The Magento entity it is about (`sync_runs.entity_type`): the name's first part.
    pub fn entity_type(&self) -> &str {
        self.as_str().split('.').next().unwrap_or_default()
    }

    /// A later event for the same entity replaces this one while it waits: customer and
    /// product updates carry the whole entity, documents are each their own.
    pub fn folds(&self) -> bool {
        matches!(self, Self::CustomerUpserted | Self::ProductUpserted)
    }
}

impl std::fmt::Display for EventName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobKind {
    /// Sync one received event to Sage (the job of a run).
    SyncEvent,
    /// Tell the store an entity's sync state (a callback; needs no Sage budget).
    SyncState,
    /// A kind this build does not know (written by a newer one): the worker ends it dead.
    Unknown(String),
}

impl JobKind {
    pub fn as_str(&self) -> &str {
        match self {
            Self::SyncEvent => "sync_event",
            Self::SyncState => "sync_state",
            Self::Unknown(other) => other,
        }
    }

    fn parse(s: String) -> Self {
        match s.as_str() {
            "sync_event" => Self::SyncEvent,
            "sync_state" => Self::SyncState,
            _ => Self::Unknown(s),
        }
    }
}

/// Where a job is. The table's CHECK constraint holds the same list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum JobStatus {
    Queued,
    Running,
    /// Held while the binding's Sage connection needs the merchant (re-authorisation, a
    /// lapsed subscription); callbacks are never held.
    Paused,
    Done,
    Dead,
    Cancelled,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Paused => "paused",
            Self::Done => "done",
            Self::Dead => "dead",
            Self::Cancelled => "cancelled",
        }
    }
}

/// Where a sync run is (`sync_runs.status`; its CHECK constraint holds the same list).
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::Type)]
#[sqlx(type_name = "text", rename_all = "snake_case")]
pub enum RunStatus {
    /// Queued, or waiting for a retry.
    Pending,
    Running,
    Synced,
    /// Skipped on purpose (a setting, or an operator): nothing to post.
    SkippedByPolicy,
    /// Cannot succeed as it is: the merchant fixes the cause and retries.
    Failed,
    /// Gave up on a transient cause after every attempt.
    Dead,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Synced => "synced",
            Self::SkippedByPolicy => "skipped_by_policy",
            Self::Failed => "failed",
            Self::Dead => "dead",
        }
    }
}

/// Wakes idle workers (delivered at commit when called in a transaction).
pub async fn notify(conn: &mut sqlx::PgConnection, payload: &str) -> Result<(), sqlx::Error> {
    sqlx::query!("SELECT pg_notify($1, $2)", CHANNEL, payload)
        .execute(conn)
        .await?;
    Ok(())
}

/// Sends wake-ups in a transaction of their own that does not wait for the WAL flush
/// (a wake-up is a hint; the jobs it names are durable already), so it holds Postgres's
/// notify lock for microseconds rather than a disk write ([`Wake::AfterCommit`]). Run
/// it on the pool or on a connection outside any transaction: inside one, it would make
/// that transaction's commit lazy too.
pub async fn notify_unflushed<'e>(db: impl sqlx::PgExecutor<'e>, payloads: &[String]) -> Result<(), sqlx::Error> {
    if payloads.is_empty() {
        return Ok(());
    }
    sqlx::query!(
        r#"SELECT set_config('synchronous_commit', 'off', true) AS lazy,
                  (SELECT count(pg_notify($1, p)) FROM unnest($2::text[]) AS t(p)) AS n"#,
        CHANNEL,
        payloads
    )
    .fetch_one(db)
    .await?;
    Ok(())
}

/// Holds a binding's queued sync jobs (Sage needs the merchant first); its callbacks to
/// the store still go.
pub async fn hold_binding(conn: &mut sqlx::PgConnection, binding: BindingId) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE jobs SET status = 'paused', updated_at = now() WHERE binding_id = $1 AND status = 'queued' AND kind = 'sync_event'",
        binding.0
    )
    .execute(conn)
    .await?
    .rows_affected())
}

/// Releases a binding's held work — jobs paused while Sage needed re-authorisation or the
/// subscription lapsed, and sync jobs waiting out a backoff — to run now, and wakes the
/// workers. Used whenever a binding becomes active again (Sage reconnected, subscription
/// restored, an operator's resume).
pub async fn release_binding(conn: &mut sqlx::PgConnection, binding: BindingId) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = 'queued', run_at = LEAST(run_at, now()), updated_at = now()
         WHERE binding_id = $1 AND (status = 'paused' OR (status = 'queued' AND kind = 'sync_event'))",
        binding.0
    )
    .execute(&mut *conn)
    .await?;
    notify(conn, &binding.0.to_string()).await
}

/// Cancels every job of a binding not yet started (a disconnect). Returns how many.
pub async fn cancel_binding(conn: &mut sqlx::PgConnection, binding: BindingId) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE jobs SET status = 'cancelled', updated_at = now()
         WHERE binding_id = $1 AND status IN ('queued', 'paused')",
        binding.0
    )
    .execute(conn)
    .await?
    .rows_affected())
}

/// Cancels a run's job not yet started.
pub async fn cancel_run(conn: &mut sqlx::PgConnection, run: uuid::Uuid) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE jobs SET status = 'cancelled', updated_at = now() WHERE sync_run_id = $1 AND status IN ('queued', 'paused')",
        run
    )
    .execute(conn)
    .await?;
    Ok(())
}

/// Queues a run's sync job again (a retry), in the caller's transaction: its job, when it
/// still has one, becomes due now with its attempts counted afresh; otherwise a new job
/// is queued. Wakes the workers.
pub async fn requeue_run(
    conn: &mut sqlx::PgConnection,
    binding: BindingId,
    run: uuid::Uuid,
) -> Result<(), sqlx::Error> {
    let requeued = sqlx::query!(
        "UPDATE jobs SET status = 'queued', attempts = 0, run_at = now(), lease_id = NULL, updated_at = now()
         WHERE sync_run_id = $1 AND kind = 'sync_event' AND status IN ('done', 'dead', 'cancelled', 'paused')",
        run
    )
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if requeued == 0 {
        sqlx::query!(
            "INSERT INTO jobs (binding_id, kind, sync_run_id) VALUES ($1, 'sync_event', $2)",
            binding.0,
            run
        )
        .execute(&mut *conn)
        .await?;
    }
    notify(conn, &binding.0.to_string()).await
}

/// Deletes up to `batch` done or cancelled jobs last moved more than `older_than_secs`
/// ago (dead ones stay with their run). Returns how many.
pub async fn delete_finished(db: &sqlx::PgPool, older_than_secs: f64, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM jobs WHERE id IN (
           SELECT id FROM jobs WHERE status IN ('done', 'cancelled') AND updated_at < now() - make_interval(secs => $1)
           LIMIT $2)",
        older_than_secs,
        batch
    )
    .execute(db)
    .await?
    .rows_affected())
}
