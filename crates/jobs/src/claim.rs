//! Claiming, renewing and ending jobs.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use ledger_core::BindingId;
use tokio::sync::{mpsc, oneshot};

use crate::{JobKind, JobStatus};
use serde_json::Value;
use sqlx::{PgPool, Postgres, pool::PoolConnection};

/// A claimed job.
#[derive(Debug, Clone)]
pub struct Job {
    pub id: i64,
    pub binding_id: BindingId,
    pub kind: JobKind,
    pub sync_run_id: Option<uuid::Uuid>,
    /// This attempt's number (1 for the first).
    pub attempt: i32,
    pub lease_id: uuid::Uuid,
    pub payload: Value,
    pub entity_key: Option<String>,
    /// A sync job's run as the claim read it (what the attempt needs of it, its binding
    /// and Sage connection): no read of its own before the attempt starts.
    pub run: Option<Box<ClaimedRun>>,
    /// When claimed, more was due (another job of the binding, or another binding with
    /// due work): the worker claims again when done, else it waits to be told.
    pub more_due: bool,
}

/// A claimed job's run, with its binding's and Sage connection's columns the attempt
/// needs (see `ledger_sage_sync::process::RunInfo`).
#[derive(Clone)]
pub struct ClaimedRun {
    pub tenant_id: ledger_core::TenantId,
    pub event_name: String,
    pub entity_type: String,
    pub magento_entity_id: i64,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub policy: Option<Value>,
    pub magento_base_url: String,
    pub traceparent: Option<String>,
    /// The store's api_key, sealed (never printed).
    pub api_key: Option<Vec<u8>>,
    pub region: Option<String>,
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub business_id: String,
    pub token_version: Option<i64>,
    pub store_clock_skew_secs: Option<i32>,
    pub reference: Option<Value>,
}

impl std::fmt::Debug for ClaimedRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClaimedRun")
            .field("event_name", &self.event_name)
            .field("entity_type", &self.entity_type)
            .field("magento_entity_id", &self.magento_entity_id)
            .finish_non_exhaustive()
    }
}

/// One claimed row.
struct Claimed {
    id: i64,
    binding_id: BindingId,
    kind: String,
    sync_run_id: Option<uuid::Uuid>,
    attempts: i32,
    payload: Value,
    entity_key: Option<String>,
}

impl Claimed {
    fn into_job(self, lease_id: uuid::Uuid) -> Job {
        Job {
            id: self.id,
            binding_id: self.binding_id,
            kind: JobKind::parse(self.kind),
            sync_run_id: self.sync_run_id,
            attempt: self.attempts,
            lease_id,
            payload: self.payload,
            entity_key: self.entity_key,
            run: None,
            // Unknown: claim again when done.
            more_due: true,
        }
    }
}

/// Where a process's claims go round its bindings, and the claims its workers are
/// waiting on. Claims walk bindings in id order from just after the last one served, so
/// every binding with work is served once per round however deep another's backlog, and
/// nothing is written to take a turn. Workers claiming at the same moment share one
/// statement — one walk and one commit for several jobs, each from its own binding —
/// made by a task of the process's own, so a worker that stops waiting loses nothing (a
/// job claimed for it goes back to the queue).
#[derive(Debug, Default)]
pub struct Turn {
    last: Arc<Mutex<uuid::Uuid>>,
    claims: Mutex<Option<mpsc::UnboundedSender<Request>>>,
    leases: Arc<Mutex<Option<LeaseCheck>>>,
}

/// What the last idle claim saw of running jobs' leases: when it looked, and when the
/// earliest lease it saw ends (none: no job was running).
#[derive(Debug, Clone, Copy)]
struct LeaseCheck {
    at: Instant,
    earliest_end: Option<Instant>,
}

impl LeaseCheck {
    /// Whether a lease may have ended by `now`, judged from a look at most `fresh` old. A
    /// job claimed after the look (or by a statement it did not see) holds its lease for
    /// `lease` from then on, so none ends before `at + lease`.
    fn may_have_ended(check: Option<Self>, now: Instant, fresh: Duration, lease: Duration) -> bool {
        let Some(c) = check else { return true };
        if now.saturating_duration_since(c.at) > fresh {
            return true;
        }
        let unseen = c.at + lease;
        now >= c.earliest_end.map_or(unseen, |e| e.min(unseen))
    }
}

/// One worker's claim, waiting for a statement.
struct Request {
    binding_concurrency: u32,
    lease: Duration,
    answer: oneshot::Sender<Result<Claim, sqlx::Error>>,
}

/// Claims one statement makes at most.
const MAX_BATCH: usize = 16;

/// Statements in a row that lost a race and claimed nothing before the claims waiting
/// are told nothing can be claimed.
const RACE_TRIES: u32 = 4;

impl Turn {
    /// Hands `request` to the process's claim task, starting it if it is not running.
    fn submit(&self, db: &PgPool, request: Request) -> Result<(), sqlx::Error> {
        let mut claims = self.claims.lock().unwrap_or_else(PoisonError::into_inner);
        let request = match claims.as_ref() {
            Some(tx) => match tx.send(request) {
                Ok(()) => return Ok(()),
                // The task ended (it panicked): start another.
                Err(mpsc::error::SendError(request)) => request,
            },
            None => request,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(gather(db.clone(), self.last.clone(), self.leases.clone(), rx));
        tx.send(request)
            .map_err(|_| sqlx::Error::Protocol("the claim task stopped at once".into()))?;
        *claims = Some(tx);
        Ok(())
    }

    /// Whether a sweep for expired leases ([`reclaim_expired`]) could find one: false
    /// only when one of this process's idle claims looked within `fresh` and saw no lease
    /// ending by now. An idle process's workers claim once a poll interval, and each such
    /// claim looks in the round trip it makes anyway, so an idle process sweeps only when
    /// a lease is due to end; a busy one's claims take jobs rather than look, and it
    /// sweeps every time. `lease`: how long a job claimed since the look holds its lease.
    pub fn leases_may_have_ended(&self, fresh: Duration, lease: Duration) -> bool {
        let check = *self.leases.lock().unwrap_or_else(PoisonError::into_inner);
        LeaseCheck::may_have_ended(check, Instant::now(), fresh, lease)
    }
}

/// What a worker's claim found.
#[derive(Debug)]
pub enum Claim {
    Job(Job),
    /// Nothing it may take now; how long until something queued falls due (a backoff
    /// ends, a budget frees), when anything will.
    Idle {
        due_in: Option<Duration>,
    },
}

/// Claims the next job: any kind for bindings with budget left, callbacks otherwise;
/// from the binding after the last one served, wrapping round once.
pub async fn claim(
    db: &PgPool,
    turn: &Turn,
    binding_concurrency: u32,
    lease: Duration,
) -> Result<Option<Job>, sqlx::Error> {
    Ok(match claim_or_wait(db, turn, binding_concurrency, lease).await? {
        Claim::Job(job) => Some(job),
        Claim::Idle { .. } => None,
    })
}

/// [`claim`], or when nothing can be claimed, how long to wait: an idle worker's poll
/// in one statement, or two when store callbacks are due (they are claimed apart, as
/// they run while a business waits for its budget).
pub async fn claim_or_wait(
    db: &PgPool,
    turn: &Turn,
    binding_concurrency: u32,
    lease: Duration,
) -> Result<Claim, sqlx::Error> {
    let (answer, answered) = oneshot::channel();
    turn.submit(
        db,
        Request {
            binding_concurrency,
            lease,
            answer,
        },
    )?;
    answered
        .await
        .map_err(|_| sqlx::Error::Protocol("the claim task dropped the claim".into()))?
}

/// The process's claim task: takes the claims waiting (all that came while its last
/// statement ran, up to [`MAX_BATCH`]) and makes them in one statement. Claims left
/// over when the statement took jobs and says more is due (a binding with a second
/// free slot, a binding another process held) go into the next statement rather than
/// being told to wait; so do all of them after a lost race.
async fn gather(
    db: PgPool,
    last: Arc<Mutex<uuid::Uuid>>,
    leases: Arc<Mutex<Option<LeaseCheck>>>,
    mut rx: mpsc::UnboundedReceiver<Request>,
) {
    let mut waiting: VecDeque<Request> = VecDeque::new();
    let mut races = 0;
    let mut conn: Option<PoolConnection<Postgres>> = None;
    loop {
        if waiting.is_empty() {
            let next = match tokio::time::timeout(HOLD, rx.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    // Quiet: the connection goes back to the pool until claims come again.
                    conn = None;
                    rx.recv().await
                }
            };
            match next {
                Some(r) => waiting.push_back(r),
                None => return,
            }
        }
        while let Ok(r) = rx.try_recv() {
            waiting.push_back(r);
        }
        // A worker that stopped waiting (shut down) is not claimed for.
        waiting.retain(|r| !r.answer.is_closed());
        let Some(first) = waiting.front() else { continue };
        let (concurrency, lease) = (first.binding_concurrency, first.lease);
        let mut batch = Vec::new();
        while batch.len() < MAX_BATCH
            && let Some(r) = waiting.pop_front_if(|r| (r.binding_concurrency, r.lease) == (concurrency, lease))
        {
            batch.push(r);
        }
        let after = *last.lock().unwrap_or_else(PoisonError::into_inner);
        let made = match held(&db, &mut conn).await {
            Ok(c) => claim_batch(c, after, concurrency, lease, batch.len()).await,
            Err(e) => Err(e),
        };
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                // Whatever went wrong, the next statement starts from a checked connection.
                conn = None;
                let shown = e.to_string();
                let mut error = Some(e);
                for r in batch {
                    let e = error.take().unwrap_or_else(|| sqlx::Error::Protocol(shown.clone()));
                    let _ = r.answer.send(Err(e));
                }
                continue;
            }
        };
        if let Some(served) = made.served(after) {
            *last.lock().unwrap_or_else(PoisonError::into_inner) = served;
        }
        if let Some(check) = made.leases {
            *leases.lock().unwrap_or_else(PoisonError::into_inner) = Some(check);
        }
        let more = made.jobs.iter().any(|j| j.more_due);
        let mut batch = batch.into_iter();
        for job in made.jobs {
            hand_over(&db, batch.next(), job).await;
        }
        let left: Vec<Request> = batch.collect();
        if left.is_empty() {
            races = 0;
            continue;
        }
        races = if made.raced { races + 1 } else { 0 };
        if (made.taken > 0 && more) || (made.raced && races < RACE_TRIES) {
            // Claimed next, before anything that came since.
            for r in left.into_iter().rev() {
                waiting.push_front(r);
            }
            continue;
        }
        races = 0;
        let mut left = left.into_iter();
        if made.callbacks_due
            && let Some(r) = left.next()
        {
            let claimed = match held(&db, &mut conn).await {
                Ok(c) => claim_callback(c, after, concurrency, lease).await,
                Err(e) => Err(e),
            };
            if claimed.is_err() {
                conn = None;
            }
            if let Ok(Some(job)) = claimed {
                *last.lock().unwrap_or_else(PoisonError::into_inner) = job.binding_id.0;
                hand_over(&db, Some(r), job).await;
            } else {
                let _ = r.answer.send(claimed.map(|_| Claim::Idle { due_in: made.due_in }));
            }
        }
        for r in left {
            let _ = r.answer.send(Ok(Claim::Idle { due_in: made.due_in }));
        }
    }
}

/// How long the claim task keeps its connection with no claim waiting. A pool checkout
/// costs two round trips besides the statement (sqlx pings the connection when it is
/// taken and when it is returned): a process whose workers keep claiming keeps one
/// connection for its claims rather than paying them on every statement.
const HOLD: Duration = Duration::from_millis(100);

/// The claim task's connection, taken from the pool if it holds none.
async fn held<'c>(
    db: &PgPool,
    conn: &'c mut Option<PoolConnection<Postgres>>,
) -> Result<&'c mut sqlx::PgConnection, sqlx::Error> {
    let kept = match conn.take() {
        Some(kept) => kept,
        None => db.acquire().await?,
    };
    Ok(conn.insert(kept))
}

/// Gives `job` to the worker that asked; back to the queue when none is waiting for it.
async fn hand_over(db: &PgPool, to: Option<Request>, job: Job) {
    let (id, lease) = (job.id, job.lease_id);
    let unclaimed = match to {
        Some(r) => r.answer.send(Ok(Claim::Job(job))).is_err(),
        None => true,
    };
    if unclaimed {
        // Should this fail too, its lease expires and it is reclaimed then.
        let _ = release(db, id, lease).await;
    }
}

/// What one claim statement did.
struct Batch {
    jobs: Vec<Job>,
    /// Bindings locked that had no due job left (claimed by a statement that committed
    /// after this one's snapshot): a lost race, not a sign that nothing is due.
    raced: bool,
    taken: usize,
    /// When fewer jobs were taken than asked for: whether store callbacks are due
    /// (claimed apart), and when the next queued job falls due.
    callbacks_due: bool,
    due_in: Option<Duration>,
    /// When the statement looked (it took fewer jobs than asked for): the running jobs'
    /// leases as it saw them.
    leases: Option<LeaseCheck>,
}

impl Batch {
    /// The binding the turn moves to: the last one served in the walk's order (bindings
    /// after `after` first, then those wrapped round to).
    fn served(&self, after: uuid::Uuid) -> Option<uuid::Uuid> {
        let ids = self.jobs.iter().map(|j| j.binding_id.0);
        ids.clone().filter(|id| *id > after).max().or_else(|| ids.max())
    }
}

/// A claim statement's row: a job claimed (all NULL when none was), with what the
/// statement as a whole found.
struct Polled {
    id: Option<i64>,
    binding_id: Option<BindingId>,
    kind: Option<String>,
    sync_run_id: Option<uuid::Uuid>,
    attempts: Option<i32>,
    payload: Option<Value>,
    entity_key: Option<String>,
    locked: i64,
    taken: i64,
    callbacks_due: Option<bool>,
    due_in: Option<f64>,
    lease_ends_in: Option<f64>,
    run_tenant_id: Option<ledger_core::TenantId>,
    run_event_name: Option<String>,
    run_entity_type: Option<String>,
    run_entity_id: Option<i64>,
    run_created_at: Option<chrono::DateTime<chrono::Utc>>,
    run_policy: Option<Value>,
    run_base_url: Option<String>,
    run_traceparent: Option<String>,
    run_api_key: Option<Vec<u8>>,
    run_region: Option<String>,
    run_occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    run_business_id: Option<String>,
    run_token_version: Option<i64>,
    run_clock_skew: Option<i32>,
    run_reference: Option<Value>,
    more_due: Option<bool>,
}

impl Polled {
    fn into_job(self, lease_id: uuid::Uuid) -> Option<Job> {
        let (Some(id), Some(binding_id), Some(kind), Some(attempts), Some(payload)) =
            (self.id, self.binding_id, self.kind, self.attempts, self.payload)
        else {
            return None;
        };
        let run = match (
            self.run_tenant_id,
            self.run_event_name,
            self.run_entity_type,
            self.run_entity_id,
            self.run_created_at,
            self.run_base_url,
        ) {
            (
                Some(tenant_id),
                Some(event_name),
                Some(entity_type),
                Some(magento_entity_id),
                Some(created_at),
                Some(magento_base_url),
            ) => Some(Box::new(ClaimedRun {
                tenant_id,
                event_name,
                entity_type,
                magento_entity_id,
                created_at,
                policy: self.run_policy,
                magento_base_url,
                traceparent: self.run_traceparent,
                api_key: self.run_api_key,
                region: self.run_region,
                occurred_at: self.run_occurred_at,
                business_id: self.run_business_id.unwrap_or_default(),
                token_version: self.run_token_version,
                store_clock_skew_secs: self.run_clock_skew,
                reference: self.run_reference,
            })),
            _ => None,
        };
        let mut job = Claimed {
            id,
            binding_id,
            kind,
            sync_run_id: self.sync_run_id,
            attempts,
            payload,
            entity_key: self.entity_key,
        }
        .into_job(lease_id);
        job.run = run;
        job.more_due = self.more_due.unwrap_or(true);
        Some(job)
    }
}

/// Claims up to `wanted` jobs, one per binding, in one statement: from the bindings with
/// due work in turn after `after`, each under its concurrency limit and with budget
/// left, its earliest due job.
async fn claim_batch(
    conn: &mut sqlx::PgConnection,
    after: uuid::Uuid,
    binding_concurrency: u32,
    lease: Duration,
    wanted: usize,
) -> Result<Batch, sqlx::Error> {
    let lease_id = uuid::Uuid::new_v4();
    let (limit, secs) = (i64::from(binding_concurrency), lease.as_secs_f64());
    let wanted = i64::try_from(wanted).unwrap_or(1);
    let rows = sqlx::query_as!(
        Polled,
        r#"WITH RECURSIVE walk(id, run_at) AS (
             -- The bindings with queued jobs, in id order from after the last one served,
             -- with each one's earliest queued job: one index probe per binding (a loose
             -- index scan), so bindings with nothing queued — most tenants, most of the
             -- time — are never visited. Evaluated lazily: the walk ends once enough
             -- eligible bindings are found. (Ordered as the partial index
             -- `jobs_ready_per_binding`, so that index serves it, not `jobs_binding` with
             -- its finished jobs.)
             (SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.binding_id > $4
              ORDER BY j.binding_id, j.run_at, j.id LIMIT 1)
             UNION ALL
             SELECT n.binding_id, n.run_at FROM walk w CROSS JOIN LATERAL (
               SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.binding_id > w.id
               ORDER BY j.binding_id, j.run_at, j.id LIMIT 1) n
           ), wrapped(id, run_at) AS (
             -- Then round again from the first binding up to the last one served: the
             -- same statement, so a claim that finds nothing costs one round trip.
             (SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.binding_id <= $4
              ORDER BY j.binding_id, j.run_at, j.id LIMIT 1)
             UNION ALL
             SELECT n.binding_id, n.run_at FROM wrapped w CROSS JOIN LATERAL (
               SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.binding_id > w.id AND j.binding_id <= $4
               ORDER BY j.binding_id, j.run_at, j.id LIMIT 1) n
           ), ring AS (
             SELECT id, run_at FROM walk UNION ALL SELECT id, run_at FROM wrapped
           ), b AS (
             -- Conditions as subqueries, checked binding by binding in the ring's order.
             SELECT cb.id FROM ring JOIN connector_bindings cb ON cb.id = ring.id
             WHERE ring.run_at <= now() AND cb.status = 'active'
               AND NOT EXISTS (SELECT 1 FROM sage_connections sc JOIN sage_budgets sb ON sb.business_id = sc.business_id
                               WHERE sc.binding_id = cb.id AND sb.blocked_until > now())
               AND (SELECT count(*) FROM jobs r WHERE r.binding_id = cb.id AND r.status = 'running') < $1
             LIMIT $5
             -- The lock keeps two claims from counting one binding's running jobs at
             -- once. NO KEY: a plain FOR UPDATE would skip every binding whose rows are
             -- being inserted (foreign keys take KEY SHARE on it) and block those inserts.
             FOR NO KEY UPDATE OF cb SKIP LOCKED
           ), picked AS (
             -- Each binding's earliest due job (the binding id a lateral outer value, so
             -- the partial index serves the order).
             SELECT p.id FROM b CROSS JOIN LATERAL (
               SELECT j.id FROM jobs j
               WHERE j.binding_id = b.id AND j.status = 'queued' AND j.run_at <= now()
               ORDER BY j.run_at, j.id
               LIMIT 1
               FOR UPDATE OF j SKIP LOCKED) p
           ), claimed AS (
             UPDATE jobs SET status = 'running', lease_id = $2, locked_until = now() + make_interval(secs => $3),
                    attempts = attempts + 1, updated_at = now()
             FROM picked WHERE jobs.id = picked.id
             RETURNING jobs.id, jobs.binding_id, jobs.kind, jobs.sync_run_id, jobs.attempts, jobs.payload, jobs.entity_key,
                       jobs.run_at
           ), started AS (
             -- The run shows as running from the claim on (one commit fewer per attempt).
             -- An array of ids, so the primary key finds the runs whatever the statistics say.
             UPDATE sync_runs SET status = 'running', started_at = COALESCE(started_at, now()), updated_at = now()
             WHERE sync_runs.id = ANY (ARRAY(SELECT sync_run_id FROM claimed)) AND sync_runs.status = 'pending'
           ), tally AS (
             SELECT (SELECT count(*) FROM b) AS locked, (SELECT count(*) FROM claimed) AS taken
           )
           -- At least one row (all job columns NULL when nothing was claimed). What only
           -- some claims need is called, not joined: a plan's every node is set up on each
           -- run, called or not (migration 20261205000001). When fewer jobs were taken
           -- than asked for (and no race was lost), whether callbacks are due (claimed
           -- apart) and when the next queued job falls due, from the bindings the walk
           -- has already visited; and when the earliest running lease ends (migration
           -- 20261207000001).
           SELECT c.id AS "id?", c.binding_id AS "binding_id?: BindingId", c.kind AS "kind?", c.sync_run_id,
                  c.attempts AS "attempts?", c.payload AS "payload?", c.entity_key,
                  t.locked AS "locked!", t.taken AS "taken!", i.callbacks_due, i.due_in, i.lease_ends_in,
                  -- A sync job's run, as the attempt needs it (its own read saved).
                  r.tenant_id AS "run_tenant_id?: ledger_core::TenantId", r.event_name AS "run_event_name?",
                  r.entity_type AS "run_entity_type?", r.magento_entity_id AS "run_entity_id?",
                  r.created_at AS "run_created_at?", r.policy AS run_policy, r.magento_base_url AS "run_base_url?",
                  r.traceparent AS run_traceparent, r.api_key AS run_api_key, r.region AS "run_region?",
                  r.occurred_at AS "run_occurred_at?", r.business_id AS run_business_id,
                  r.token_version AS "run_token_version?", r.store_clock_skew_secs AS run_clock_skew,
                  r.reference AS run_reference,
                  -- Whether more was due: a binding with due work on the ring beyond those
                  -- served, or another of the job's binding's jobs after the one claimed
                  -- (a row bound, so the probe starts past it, not at the binding's
                  -- finished jobs). Scalar ids and a LIMIT, not EXISTS, so the partial
                  -- index serves it: an EXISTS here was planned as a sequential scan.
                  CASE WHEN c.id IS NOT NULL THEN
                    (SELECT count(*) FROM (SELECT 1 FROM ring WHERE ring.run_at <= now() LIMIT $5 + 1) due) > t.taken
                    OR (SELECT q.id FROM jobs q WHERE q.binding_id = c.binding_id AND q.status = 'queued'
                          AND q.run_at <= now() AND (q.run_at, q.id) > (c.run_at, c.id)
                        ORDER BY q.run_at, q.id LIMIT 1) IS NOT NULL
                  END AS more_due
           FROM tally t
           -- The ring's arrays inside CASE, so a claim that took what it asked for neither
           -- walks the whole ring to build them nor calls the (STRICT) function.
           CROSS JOIN LATERAL ledger_claim_idle(
             CASE WHEN t.taken < $5 AND t.taken = t.locked THEN COALESCE((SELECT array_agg(ring.id) FROM ring), '{}') END,
             CASE WHEN t.taken < $5 AND t.taken = t.locked THEN COALESCE((SELECT array_agg(ring.run_at) FROM ring), '{}') END) i
           LEFT JOIN claimed c ON true
           LEFT JOIN LATERAL ledger_claimed_run(c.sync_run_id) r ON true"#,
        limit,
        lease_id,
        secs,
        after,
        wanted,
    )
    .fetch_all(&mut *conn)
    .await?;
    let Some(first) = rows.first() else {
        return Err(sqlx::Error::RowNotFound);
    };
    let (locked, taken) = (first.locked, first.taken);
    let callbacks_due = first.callbacks_due == Some(true);
    let due_in = first.due_in.map(|s| Duration::from_secs_f64(s.max(0.0)));
    // The look ran when its EXISTS answered; an ended lease counts as ending now.
    let leases = first.callbacks_due.map(|_| {
        let at = Instant::now();
        LeaseCheck {
            at,
            earliest_end: first
                .lease_ends_in
                .map(|s| at + Duration::from_secs_f64(s.clamp(0.0, 1e9))),
        }
    });
    let jobs: Vec<Job> = rows.into_iter().filter_map(|r| r.into_job(lease_id)).collect();
    Ok(Batch {
        raced: locked > taken,
        taken: usize::try_from(taken).unwrap_or_default(),
        callbacks_due,
        due_in,
        leases,
        jobs,
    })
}

/// Claims a store callback: they need no Sage budget, so they run while a business
/// waits for it, and on bindings held for the merchant.
async fn claim_callback(
    conn: &mut sqlx::PgConnection,
    after: uuid::Uuid,
    binding_concurrency: u32,
    lease: Duration,
) -> Result<Option<Job>, sqlx::Error> {
    let lease_id = uuid::Uuid::new_v4();
    let (limit, secs) = (i64::from(binding_concurrency), lease.as_secs_f64());
    let row = sqlx::query_as!(
            Claimed,
            r#"WITH RECURSIVE walk(id, run_at) AS (
             -- The bindings with queued callbacks, as above (index `jobs_callbacks`).
             (SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.kind = 'sync_state' AND j.binding_id > $4
              ORDER BY j.binding_id, j.run_at LIMIT 1)
             UNION ALL
             SELECT n.binding_id, n.run_at FROM walk w CROSS JOIN LATERAL (
               SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.kind = 'sync_state' AND j.binding_id > w.id
               ORDER BY j.binding_id, j.run_at LIMIT 1) n
           ), wrapped(id, run_at) AS (
             (SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.kind = 'sync_state' AND j.binding_id <= $4
              ORDER BY j.binding_id, j.run_at LIMIT 1)
             UNION ALL
             SELECT n.binding_id, n.run_at FROM wrapped w CROSS JOIN LATERAL (
               SELECT j.binding_id, j.run_at FROM jobs j WHERE j.status = 'queued' AND j.kind = 'sync_state' AND j.binding_id > w.id
                 AND j.binding_id <= $4
               ORDER BY j.binding_id, j.run_at LIMIT 1) n
           ), ring AS (
             SELECT id, run_at FROM walk UNION ALL SELECT id, run_at FROM wrapped
           ), b AS (
             SELECT cb.id FROM ring JOIN connector_bindings cb ON cb.id = ring.id
             -- Callbacks still go to stores whose Sage connection is held (needs_reauth, paused).
             WHERE ring.run_at <= now() AND cb.status IN ('active', 'needs_reauth', 'paused')
               AND (SELECT count(*) FROM jobs r WHERE r.binding_id = cb.id AND r.status = 'running') < $1
             LIMIT 1
             FOR NO KEY UPDATE OF cb SKIP LOCKED
           ), picked AS (
             -- A scalar binding id, so the partial index serves the order.
             SELECT j.id FROM jobs j
             WHERE j.binding_id = (SELECT id FROM b) AND j.status = 'queued' AND j.run_at <= now() AND j.kind = 'sync_state'
             ORDER BY j.run_at, j.id
             LIMIT 1
             FOR UPDATE OF j SKIP LOCKED
           ), claimed AS (
             UPDATE jobs SET status = 'running', lease_id = $2, locked_until = now() + make_interval(secs => $3),
                    attempts = attempts + 1, updated_at = now()
             FROM picked WHERE jobs.id = picked.id
             RETURNING jobs.id, jobs.binding_id, jobs.kind, jobs.sync_run_id, jobs.attempts, jobs.payload, jobs.entity_key
           )
           SELECT id AS "id!", binding_id AS "binding_id!: BindingId", kind AS "kind!", sync_run_id, attempts AS "attempts!",
                  payload AS "payload!", entity_key FROM claimed"#,
            limit,
            lease_id,
            secs,
            after,
        )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(row.map(|r| r.into_job(lease_id)))
}

/// Extends a running job's lease; false when the lease was lost (reclaimed).
pub async fn heartbeat(db: &PgPool, job: &Job, lease: Duration) -> Result<bool, sqlx::Error> {
    let held = sqlx::query!(
        "UPDATE jobs SET locked_until = now() + make_interval(secs => $3) WHERE id = $1 AND lease_id = $2 AND status = 'running'",
        job.id,
        job.lease_id,
        lease.as_secs_f64()
    )
    .execute(db)
    .await?
    .rows_affected()
        == 1;
    if held {
        // The entity leases the attempt took live as long as the job's.
        sqlx::query!(
            "UPDATE sync_locks SET until = now() + make_interval(secs => $2) WHERE holder = $1",
            job.lease_id,
            lease.as_secs_f64()
        )
        .execute(db)
        .await?;
    }
    Ok(held)
}

/// What [`reclaim_expired`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Reclaimed {
    /// Jobs put back in the queue.
    pub requeued: u64,
    /// Jobs that had used every attempt, each ended by a crash or an outlived lease:
    /// dead, with their run, rather than claimed again for ever.
    pub poisoned: u64,
}

/// Puts jobs whose lease expired (their worker died) back in the queue. A store callback
/// whose entity has a newer state queued or running is dropped instead: the latest state
/// wins, and the queue holds one queued callback per entity. A job that has used
/// `max_attempts` claims is dead instead — a job that kills its worker would otherwise
/// kill the next one for ever — and so is its run, which says why.
pub async fn reclaim_expired(db: &PgPool, max_attempts: u32) -> Result<Reclaimed, sqlx::Error> {
    let max = i32::try_from(max_attempts).unwrap_or(i32::MAX);
    let row = sqlx::query!(
        r#"WITH expired AS (
             SELECT id, attempts >= $1 AS poisoned FROM jobs
             WHERE status = 'running' AND locked_until < now()
             FOR UPDATE SKIP LOCKED
           ), dead AS (
             UPDATE jobs SET status = 'dead', lease_id = NULL, locked_until = NULL, updated_at = now(),
                    last_error = 'job_lease_lost: every attempt ended without an answer (the worker crashed or outlived its lease)'
             FROM expired WHERE jobs.id = expired.id AND expired.poisoned
             RETURNING jobs.id, jobs.sync_run_id, jobs.attempts
           ), attempt AS (
             INSERT INTO sync_attempts (sync_run_id, attempt, started_at, finished_at, outcome, error_class, error_code, message, request, worker)
             SELECT d.sync_run_id, (SELECT COALESCE(max(a.attempt), 0) + 1 FROM sync_attempts a WHERE a.sync_run_id = d.sync_run_id),
                    now(), now(), 'dead', 'internal', 'job_lease_lost',
                    format('The job was claimed %s times and each time its worker stopped (crashed, or held it beyond its lease) before recording an outcome.', d.attempts),
                    '{}'::jsonb, 'reclaim'
             FROM dead d WHERE d.sync_run_id IS NOT NULL
           ), run AS (
             UPDATE sync_runs SET status = 'dead', error_class = 'internal', error_code = 'job_lease_lost',
                    message = format('The job was claimed %s times and each time its worker stopped before recording an outcome: it is not retried by itself. Retry it once the cause is fixed.', dead.attempts),
                    finished_at = now(), updated_at = now()
             FROM dead WHERE sync_runs.id = dead.sync_run_id AND sync_runs.status IN ('pending', 'running')
           ), requeued AS (
             UPDATE jobs SET status = CASE WHEN kind = 'sync_state' AND EXISTS (
                       SELECT 1 FROM jobs q WHERE q.binding_id = jobs.binding_id AND q.entity_key = jobs.entity_key
                         AND q.kind = 'sync_state' AND q.id <> jobs.id
                         AND (q.status = 'queued' OR (q.status = 'running' AND q.id > jobs.id))) THEN 'done' ELSE 'queued' END,
                    lease_id = NULL, run_at = now(), updated_at = now()
             FROM expired WHERE jobs.id = expired.id AND NOT expired.poisoned
             RETURNING 1 AS one
           )
           SELECT (SELECT count(*) FROM requeued) AS "requeued!", (SELECT count(*) FROM dead) AS "poisoned!""#,
        max
    )
    .fetch_one(db)
    .await?;
    let done = Reclaimed {
        requeued: u64::try_from(row.requeued).unwrap_or_default(),
        poisoned: u64::try_from(row.poisoned).unwrap_or_default(),
    };
    if done.requeued > 0 {
        crate::notify(&mut *db.acquire().await?, "reclaimed").await?;
    }
    Ok(done)
}

/// Gives a running job back to the queue unfinished (shutdown), its attempt not counted;
/// a store callback superseded by a newer queued state is dropped instead.
pub async fn release(db: &PgPool, id: i64, lease: uuid::Uuid) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE jobs SET status = CASE WHEN kind = 'sync_state' AND EXISTS (
                   SELECT 1 FROM jobs q WHERE q.binding_id = jobs.binding_id AND q.entity_key = jobs.entity_key
                     AND q.kind = 'sync_state' AND q.status = 'queued' AND q.id <> jobs.id) THEN 'done' ELSE 'queued' END,
                lease_id = NULL, locked_until = NULL, attempts = attempts - 1, run_at = now(), updated_at = now()
         WHERE id = $1 AND lease_id = $2",
        id,
        lease
    )
    .execute(db)
    .await?
    .rows_affected()
        == 1)
}

/// Finishes a job in the caller's transaction (only while it still holds the lease).
pub async fn finish(
    conn: &mut sqlx::PgConnection,
    job: &Job,
    status: JobStatus,
    error: Option<&str>,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE jobs SET status = $3, lease_id = NULL, locked_until = NULL, last_error = $4, updated_at = now()
         WHERE id = $1 AND lease_id = $2",
        job.id,
        job.lease_id,
        status.as_str(),
        error
    )
    .execute(conn)
    .await?
    .rows_affected()
        == 1)
}

/// Queues the sync-state callback for an entity; a queued one not yet sent is replaced
/// (the latest state wins). Returns the job's id. `notify` wakes idle workers; a caller
/// that delivers the callback itself right after committing passes false (should it
/// die first, the polling fallback finds the job).
pub async fn enqueue_callback(
    conn: &mut sqlx::PgConnection,
    binding: BindingId,
    entity_key: &crate::EntityKey,
    payload: &Value,
    notify: bool,
) -> Result<i64, sqlx::Error> {
    let id = sqlx::query_scalar!(
        "INSERT INTO jobs (binding_id, kind, entity_key, payload) VALUES ($1, 'sync_state', $2, $3)
         ON CONFLICT (binding_id, entity_key) WHERE status = 'queued' AND kind = 'sync_state'
         DO UPDATE SET payload = EXCLUDED.payload, run_at = now(), attempts = 0, updated_at = now()
         RETURNING id",
        binding.0,
        entity_key.as_str(),
        payload
    )
    .fetch_one(&mut *conn)
    .await?;
    if notify {
        crate::notify(conn, &binding.0.to_string()).await?;
    }
    Ok(id)
}

/// Queued jobs and the age of the oldest, per binding (for metrics).
pub async fn depth(db: &PgPool) -> Result<Vec<(BindingId, i64, f64)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT binding_id AS "binding_id: BindingId", count(*) AS "n!",
                  COALESCE(EXTRACT(EPOCH FROM now() - min(created_at))::float8, 0) AS "age!"
           FROM jobs WHERE status = 'queued' GROUP BY binding_id"#
    )
    .fetch_all(db)
    .await?;
    Ok(rows.into_iter().map(|r| (r.binding_id, r.n, r.age)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRESH: Duration = Duration::from_secs(2);
    const LEASE: Duration = Duration::from_secs(60);

    fn ended(check: Option<LeaseCheck>, now: Instant) -> bool {
        LeaseCheck::may_have_ended(check, now, FRESH, LEASE)
    }

    #[test]
    fn a_sweep_is_skipped_only_after_a_recent_look_that_saw_no_lease_ending() {
        let at = Instant::now();
        let s = Duration::from_secs;
        assert!(ended(None, at), "never looked: sweep");
        let nothing_running = Some(LeaseCheck { at, earliest_end: None });
        assert!(!ended(nothing_running, at + s(1)), "nothing was running a second ago");
        assert!(ended(nothing_running, at + s(3)), "the look is older than `fresh`");
        let ends_soon = Some(LeaseCheck {
            at,
            earliest_end: Some(at + s(1)),
        });
        assert!(!ended(ends_soon, at), "the earliest lease has not ended yet");
        assert!(ended(ends_soon, at + s(1)), "it has now");
        let ended_already = Some(LeaseCheck {
            at,
            earliest_end: Some(at),
        });
        assert!(ended(ended_already, at), "a lease had already ended when looked");
        // A lease seen ending later than one claimed just after the look could: the
        // unseen one bounds it.
        let short = LeaseCheck::may_have_ended(
            Some(LeaseCheck {
                at,
                earliest_end: Some(at + s(50)),
            }),
            at + Duration::from_millis(1500),
            FRESH,
            s(1),
        );
        assert!(short, "a job claimed after the look with a 1 s lease may have lapsed");
    }
}
