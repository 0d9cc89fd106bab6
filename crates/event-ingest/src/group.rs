//! Group commit for accepted webhooks: events arriving together share their writes —
//! one statement for the whole group, committed once — and each request is answered
//! only after the commit that holds its event.
//!
//! The ingest quota is counted in that statement, unless one of its bindings is busy (a
//! group of it committing or ended within 100 ms): a counter row counted in the insert's transaction stays
//! locked until that commit's WAL flush, so one busy store's groups would queue on it
//! for a disk write each (one store's webhooks at 1,000/s were answered at p50 84 ms,
//! against 5 ms so). Those groups count their quota first, in a commit of its own that
//! does not wait for the flush ([`over_quota`]).
//!
//! A group never holds two events that could affect each other (the same token, the
//! same Idempotency-Key, or two foldable updates of one entity): the later one waits for
//! the next group, so every event is stored exactly as it would be alone. A group whose
//! statement fails for a reason other than the database being unreachable is retried
//! event by event, so one bad event cannot fail its neighbours.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    sync::{Arc, Mutex, OnceLock, PoisonError},
    time::{Duration, Instant},
};

use ledger_core::BindingId;
use ledger_jobs::EventName;
use serde_json::Value;
use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tokio::sync::{Semaphore, mpsc, oneshot};

use ledger_jobs::{Persisted, Received, Wake};

/// Events in one group at most. Small enough that a burst is split over several
/// statements running at once: one group's statement runs on one core, and with 64 a
/// saturated store's 32 webhooks all went into one statement while the other core idled
/// (`--bench webhook`: 4,300 ev/s, p50 7.3 ms, against 5,000 ev/s, p50 6.1 ms, with 16;
/// 24 gave 4,700). The queue in front holds four rounds of groups, as before.
const MAX_GROUP: usize = 16;
/// Groups committing at once: enough to keep the database busy while the next group
/// gathers, few enough to leave connections to everything else.
const COMMITTERS: usize = 4;

/// One verified event, owned so it can wait for its group.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub binding_id: BindingId,
    pub event_name: EventName,
    pub idempotency_key: String,
    pub magento_entity_id: i64,
    pub website_id: i64,
    pub store_id: i64,
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub body: Value,
    pub jti: String,
    pub jti_expires_at: i64,
    /// SHA-256 of the request body's bytes (a repeat is the same key with the same bytes).
    pub body_sha256: Vec<u8>,
    pub request_id: Option<String>,
    pub traceparent: Option<String>,
    /// The binding's ingest quota per minute; 0 takes no quota.
    pub quota_per_minute: i64,
    /// See [`ledger_jobs::Received::key_check`].
    pub key_check: Option<Arc<[u8]>>,
}

/// What happened to one event.
#[derive(Debug)]
pub enum Outcome {
    Stored(Persisted),
    /// The binding's quota for this minute is spent; nothing was stored.
    OverQuota {
        hits: i64,
        retry_after: u32,
    },
}

struct Pending {
    event: Incoming,
    answer: oneshot::Sender<Result<Outcome, sqlx::Error>>,
}

/// The process's ingest group committer.
#[derive(Debug)]
pub struct Ingest {
    db: PgPool,
    window: Duration,
    queue: OnceLock<mpsc::Sender<Pending>>,
}

impl Ingest {
    /// Groups gather for `window` (zero: every event commits alone, at once).
    pub fn new(db: PgPool, window: Duration) -> Arc<Self> {
        Arc::new(Self {
            db,
            window,
            queue: OnceLock::new(),
        })
    }

    /// Stores `event` (or refuses it over quota) and returns once that is committed.
    pub async fn submit(&self, event: Incoming) -> Result<Outcome, sqlx::Error> {
        if self.window.is_zero() {
            return store_alone(&self.db, &event).await;
        }
        // Started on first use, inside the runtime; it ends when the router is dropped.
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(4 * MAX_GROUP * COMMITTERS);
            tokio::spawn(gather(self.db.clone(), self.window, rx));
            tx
        });
        let (answer, answered) = oneshot::channel();
        queue
            .send(Pending { event, answer })
            .await
            .map_err(|_| sqlx::Error::Protocol("the ingest committer stopped".into()))?;
        answered
            .await
            .map_err(|_| sqlx::Error::Protocol("the ingest committer dropped the event".into()))?
    }
}

/// What two events in one group must not share.
#[derive(Default)]
struct Keys(HashSet<(BindingId, u8, String)>);

impl Keys {
    fn of(e: &Incoming) -> [Option<(BindingId, u8, String)>; 3] {
        let foldable = e.event_name.folds();
        [
            Some((e.binding_id, 0, e.jti.clone())),
            Some((e.binding_id, 1, e.idempotency_key.clone())),
            foldable.then(|| (e.binding_id, 2, format!("{}:{}", e.event_name, e.magento_entity_id))),
        ]
    }
    /// Takes `e`'s keys if none is taken yet.
    fn take(&mut self, e: &Incoming) -> bool {
        let keys = Self::of(e);
        if keys.iter().flatten().any(|k| self.0.contains(k)) {
            return false;
        }
        self.0.extend(keys.into_iter().flatten());
        true
    }
}

/// A binding whose last group ended this recently counts its quota apart: it is busy,
/// and its next groups would queue on its counter row behind a commit's WAL flush. (A
/// second was too long: a store sending one event a second never counted in its insert.)
const QUIET_FOR: Duration = Duration::from_millis(100);
/// Bindings remembered at most; past it, those quiet for [`QUIET_FOR`] are forgotten.
const REMEMBERED: usize = 10_000;

/// Groups being committed: per binding, and when its last one ended; and in all.
#[derive(Default)]
struct InFlight(Mutex<Flights>);

#[derive(Default)]
struct Flights {
    bindings: HashMap<BindingId, (usize, Option<Instant>)>,
    groups: usize,
}

/// How a group entering its commit is to be stored.
struct Entered {
    /// None of its bindings has a group in flight or had one end within [`QUIET_FOR`]:
    /// the group counts its quota in its insert.
    quiet: bool,
    /// Alone in flight, the group may NOTIFY in its own transaction; beside another,
    /// its wake-ups go after its commit, or the two commits would queue on Postgres's
    /// notify lock for each other's WAL flush (seen as `Lock:object` waits).
    wake: Wake,
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, Flights> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `group`'s bindings.
    fn enter(&self, group: &[Pending]) -> Entered {
        let mut f = self.lock();
        if f.bindings.len() > REMEMBERED {
            f.bindings
                .retain(|_, (n, ended)| *n > 0 || ended.is_some_and(|e| e.elapsed() < QUIET_FOR));
        }
        let quiet = group.iter().all(|p| {
            f.bindings
                .get(&p.event.binding_id)
                .is_none_or(|(n, ended)| *n == 0 && ended.is_none_or(|e| e.elapsed() >= QUIET_FOR))
        });
        for p in group {
            f.bindings.entry(p.event.binding_id).or_default().0 += 1;
        }
        let wake = if f.groups == 0 {
            Wake::InTransaction
        } else {
            Wake::AfterCommit
        };
        f.groups += 1;
        Entered { quiet, wake }
    }

    fn leave(&self, bindings: &[BindingId]) {
        let mut f = self.lock();
        f.groups = f.groups.saturating_sub(1);
        let now = Instant::now();
        for b in bindings {
            if let Some((n, ended)) = f.bindings.get_mut(b) {
                *n = n.saturating_sub(1);
                *ended = Some(now);
            }
        }
    }
}

/// How long the committers keep their connections with no event arriving. A pool
/// checkout costs two round trips besides the statements (sqlx pings the connection
/// when it is taken and when it is returned): while events keep coming, each committer
/// keeps one connection for its groups' statements.
const HOLD: Duration = Duration::from_millis(100);

/// The committers' connections between groups; none are kept while ingest is quiet.
#[derive(Default)]
struct Held(Mutex<Kept>);

#[derive(Default)]
struct Kept {
    conns: Vec<PoolConnection<Postgres>>,
    quiet: bool,
}

impl Held {
    fn lock(&self) -> std::sync::MutexGuard<'_, Kept> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn take(&self, db: &PgPool) -> Result<PoolConnection<Postgres>, sqlx::Error> {
        let kept = self.lock().conns.pop();
        match kept {
            Some(conn) => Ok(conn),
            None => db.acquire().await,
        }
    }

    /// Keeps `conn` for the next group, unless ingest went quiet meanwhile (then it goes
    /// back to the pool, as the others did).
    fn keep(&self, conn: PoolConnection<Postgres>) {
        let mut kept = self.lock();
        if !kept.quiet {
            kept.conns.push(conn);
        }
    }

    /// Marks ingest quiet (returning the connections to the pool) or busy.
    fn set_quiet(&self, quiet: bool) {
        let mut kept = self.lock();
        kept.quiet = quiet;
        if quiet {
            kept.conns.clear();
        }
    }
}

async fn gather(db: PgPool, window: Duration, mut queue: mpsc::Receiver<Pending>) {
    let committers = Arc::new(Semaphore::new(COMMITTERS));
    let in_flight = Arc::new(InFlight::default());
    let held = Arc::new(Held::default());
    let mut deferred: VecDeque<Pending> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(p) => Some(p),
            None => match tokio::time::timeout(HOLD, queue.recv()).await {
                Ok(next) => next,
                Err(_) => {
                    // Quiet: the connections go back to the pool until events come again.
                    held.set_quiet(true);
                    let next = queue.recv().await;
                    held.set_quiet(false);
                    next
                }
            },
        };
        let Some(first) = first else { return };
        let deadline = tokio::time::Instant::now() + window;
        let mut keys = Keys::default();
        keys.take(&first.event);
        let mut group = vec![first];
        let mut later = VecDeque::new();
        // Those waiting from the last group first, then whatever arrives in the window.
        while group.len() < MAX_GROUP {
            let next = match deferred.pop_front() {
                Some(p) => p,
                None => match tokio::time::timeout_at(deadline, queue.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => break,
                },
            };
            if keys.take(&next.event) {
                group.push(next);
            } else {
                later.push_back(next);
            }
        }
        later.extend(deferred.drain(..));
        deferred = later;
        let Ok(permit) = committers.clone().acquire_owned().await else {
            return;
        };
        let db = db.clone();
        let (in_flight, held) = (in_flight.clone(), held.clone());
        let entered = in_flight.enter(&group);
        let bindings: Vec<BindingId> = group.iter().map(|p| p.event.binding_id).collect();
        tokio::spawn(async move {
            match held.take(&db).await {
                Ok(mut conn) => {
                    let (wakes, mut sound) = if entered.quiet {
                        commit_counted(&db, &mut conn, group, entered.wake).await
                    } else {
                        commit(&db, &mut conn, group, entered.wake).await
                    };
                    // After the answers: the events are durable, a wake-up only hurries a
                    // worker (they poll anyway, so a failure here loses nothing).
                    if let Err(e) = ledger_jobs::notify_unflushed(&mut *conn, &wakes).await {
                        tracing::warn!(error = %e, jobs = wakes.len(), "waking workers after an ingest commit failed; they will poll");
                        sound = false;
                    }
                    // A connection that saw an error goes back to the pool, which checks it.
                    if sound {
                        held.keep(conn);
                    }
                }
                Err(e) => refuse_all(group.into_iter(), e),
            }
            in_flight.leave(&bindings);
            drop(permit);
        });
    }
}

/// Commits a group whose quota is counted first, on `conn`; returns the wake-ups left
/// to send, and false when a statement failed on `conn`.
async fn commit(db: &PgPool, conn: &mut PgConnection, group: Vec<Pending>, wake: Wake) -> (Vec<String>, bool) {
    metrics::histogram!("ingest_group_size").record(group.len() as f64);
    let events: Vec<&Incoming> = group.iter().map(|p| &p.event).collect();
    let over = match over_quota(&mut *conn, &events).await {
        Ok(over) => over,
        Err(e) => {
            refuse_all(group.into_iter(), e);
            return (Vec::new(), false);
        }
    };
    let within: Vec<&Incoming> = events
        .iter()
        .zip(&over)
        .filter(|(_, o)| o.is_none())
        .map(|(e, _)| *e)
        .collect();
    let inserted = insert(conn, &within, false, wake).await;
    drop((events, within));
    let (over_quota, within): (Vec<_>, Vec<_>) = group.into_iter().zip(over).partition(|(_, o)| o.is_some());
    for (p, o) in over_quota {
        if let Some((hits, retry_after)) = o {
            let _ = p.answer.send(Ok(Outcome::OverQuota { hits, retry_after }));
        }
    }
    let within = within.into_iter().map(|(p, _)| p);
    match inserted {
        Ok(mut rows) => {
            let wakes = take_wakes(&mut rows);
            for (p, row) in within.zip(rows) {
                let _ = p.answer.send(Ok(Outcome::Stored(row)));
            }
            return (wakes, true);
        }
        // Nothing was stored: every request is told to come back.
        Err(e) if ledger_core::db::is_transient(&e) || within.len() == 1 => refuse_all(within, e),
        // One event's fault: each on its own (its quota already counted, as when alone),
        // so only that one fails.
        Err(e) => {
            tracing::warn!(error = %e, events = within.len(), "a group insert failed; storing its events one by one");
            for p in within {
                let r = insert_alone(db, &p.event).await;
                let _ = p.answer.send(r);
            }
        }
    }
    (Vec::new(), false)
}

/// A group whose quota is counted in its insert statement, on `conn`; as [`commit`].
async fn commit_counted(db: &PgPool, conn: &mut PgConnection, group: Vec<Pending>, wake: Wake) -> (Vec<String>, bool) {
    metrics::histogram!("ingest_group_size").record(group.len() as f64);
    let events: Vec<&Incoming> = group.iter().map(|p| &p.event).collect();
    let inserted = insert(conn, &events, true, wake).await;
    drop(events);
    match inserted {
        Ok(mut rows) => {
            let wakes = take_wakes(&mut rows);
            for (p, row) in group.into_iter().zip(rows) {
                let _ = p.answer.send(Ok(stored(row)));
            }
            return (wakes, true);
        }
        Err(e) if ledger_core::db::is_transient(&e) || group.len() == 1 => refuse_all(group.into_iter(), e),
        // One event's fault, and the statement counted nothing: each on its own, its
        // quota counted as when alone (so the failing one's hit counts, as it would have).
        Err(e) => {
            tracing::warn!(error = %e, events = group.len(), "a group insert failed; storing its events one by one");
            for p in group {
                let r = store_alone(db, &p.event).await;
                let _ = p.answer.send(r);
            }
        }
    }
    (Vec::new(), false)
}

fn take_wakes(rows: &mut [Persisted]) -> Vec<String> {
    rows.iter_mut().filter_map(|r| r.wake.take()).collect()
}

fn stored(row: Persisted) -> Outcome {
    match row.over_quota {
        Some((hits, retry_after)) => Outcome::OverQuota { hits, retry_after },
        None => Outcome::Stored(row),
    }
}

/// Answers every request with `e` (the first with `e` itself).
fn refuse_all(group: impl Iterator<Item = Pending>, e: sqlx::Error) {
    let message = e.to_string();
    let mut first = Some(e);
    for p in group {
        let e = first.take().unwrap_or_else(|| sqlx::Error::Protocol(message.clone()));
        let _ = p.answer.send(Err(e));
    }
}

/// Stores one event or refuses it over quota (`LEDGER_INGEST_COMMIT_WINDOW=0ms`).
async fn store_alone(db: &PgPool, event: &Incoming) -> Result<Outcome, sqlx::Error> {
    let mut conn = db.acquire().await?;
    if let Some(Some((hits, retry_after))) = over_quota(&mut conn, &[event]).await?.pop() {
        return Ok(Outcome::OverQuota { hits, retry_after });
    }
    insert_one(&mut conn, event).await
}

async fn insert_alone(db: &PgPool, event: &Incoming) -> Result<Outcome, sqlx::Error> {
    insert_one(&mut *db.acquire().await?, event).await
}

async fn insert_one(conn: &mut PgConnection, event: &Incoming) -> Result<Outcome, sqlx::Error> {
    insert(conn, &[event], false, Wake::InTransaction)
        .await?
        .pop()
        .map(Outcome::Stored)
        .ok_or_else(|| sqlx::Error::Protocol("the insert answered no row".into()))
}

/// Counts the events' hits on their bindings' quotas in one statement (one counter
/// update per binding), each event numbered in turn exactly as if they had come one by
/// one; `Some((hits, retry_after))` for each event beyond its quota. Its own commit,
/// not waiting for the WAL flush (see the module's note); a quota guards load, so a
/// crash forgetting the last hits costs nothing that matters.
async fn over_quota(conn: &mut PgConnection, events: &[&Incoming]) -> Result<Vec<Option<(i64, u32)>>, sqlx::Error> {
    let mut bindings: Vec<(BindingId, i64)> = Vec::new();
    for e in events.iter().filter(|e| e.quota_per_minute > 0) {
        match bindings.iter_mut().find(|(b, _)| *b == e.binding_id) {
            Some((_, n)) => *n += 1,
            None => bindings.push((e.binding_id, 1)),
        }
    }
    let keys: Vec<String> = bindings.iter().map(|(b, _)| b.to_string()).collect();
    let counts: Vec<i64> = bindings.iter().map(|(_, n)| *n).collect();
    let hits = ledger_core::rate::hit_many_unflushed(
        conn,
        ledger_jobs::INGEST_QUOTA_BUCKET,
        &keys,
        &counts,
        ledger_jobs::INGEST_QUOTA_WINDOW,
    )
    .await?;
    let mut seen: Vec<i64> = vec![0; bindings.len()];
    Ok(events
        .iter()
        .map(|e| {
            let i = bindings.iter().position(|(b, _)| *b == e.binding_id)?;
            seen[i] += 1;
            let nth = hits[i].hits - counts[i] + seen[i];
            (nth > e.quota_per_minute).then(|| (nth, hits[i].retry_after()))
        })
        .collect())
}

/// Stores the events with their runs and jobs in one statement (one commit: all of
/// them or none), one row back per event in order; with `count_quota`, the statement
/// counts their quota too (and stores only those within it).
async fn insert(
    conn: &mut PgConnection,
    events: &[&Incoming],
    count_quota: bool,
    wake: Wake,
) -> Result<Vec<Persisted>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let received: Vec<Received<'_>> = events
        .iter()
        .map(|e| Received {
            binding_id: e.binding_id,
            event_name: &e.event_name,
            idempotency_key: &e.idempotency_key,
            magento_entity_id: e.magento_entity_id,
            website_id: e.website_id,
            store_id: e.store_id,
            occurred_at: e.occurred_at,
            body: &e.body,
            jti: &e.jti,
            jti_expires_at: e.jti_expires_at,
            body_sha256: &e.body_sha256,
            request_id: e.request_id.as_deref(),
            traceparent: e.traceparent.as_deref(),
            key_check: e.key_check.as_deref(),
            quota_per_minute: if count_quota { e.quota_per_minute } else { 0 },
        })
        .collect();
    ledger_jobs::accept(conn, &received, wake).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(binding: BindingId) -> Pending {
        let (answer, _) = oneshot::channel();
        let event = Incoming {
            binding_id: binding,
            event_name: EventName::parse("invoice.created"),
            idempotency_key: "invoice.created:1".into(),
            magento_entity_id: 1,
            website_id: 1,
            store_id: 1,
            occurred_at: None,
            body: Value::Null,
            jti: "j".into(),
            jti_expires_at: 0,
            body_sha256: Vec::new(),
            request_id: None,
            traceparent: None,
            quota_per_minute: 0,
            key_check: None,
        };
        Pending { event, answer }
    }

    #[test]
    fn a_group_notifies_in_its_transaction_only_when_alone_in_flight() {
        let (a, b) = (BindingId(uuid::Uuid::new_v4()), BindingId(uuid::Uuid::new_v4()));
        let flights = InFlight::default();
        let first = flights.enter(&[pending(a)]);
        assert!(first.quiet);
        assert_eq!(first.wake, Wake::InTransaction);
        // Another binding's group while the first commits: still quiet, but not alone.
        let second = flights.enter(&[pending(b)]);
        assert!(second.quiet);
        assert_eq!(second.wake, Wake::AfterCommit);
        flights.leave(&[a]);
        flights.leave(&[b]);
        // Nothing in flight: alone again, but `a` ended just now, so it is busy.
        let third = flights.enter(&[pending(a)]);
        assert!(!third.quiet);
        assert_eq!(third.wake, Wake::InTransaction);
    }
}
