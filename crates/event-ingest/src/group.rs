//! Group commit for accepted webhooks: events arriving together share their writes —
//! one quota statement and one insert statement for the whole group, each committed
//! once — and each request is answered only after the commit that holds its event.
//!
//! A group never holds two events that could affect each other (the same token, the
//! same Idempotency-Key, or two foldable updates of one entity): the later one waits for
//! the next group, so every event is stored exactly as it would be alone. A group whose
//! statement fails for a reason other than the database being unreachable is retried
//! event by event, so one bad event cannot fail its neighbours.

use std::{
    collections::{HashSet, VecDeque},
    sync::{Arc, OnceLock},
    time::Duration,
};

use ledger_core::BindingId;
use serde_json::Value;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::Persisted;

/// Events in one group at most.
const MAX_GROUP: usize = 64;
/// Groups committing at once: enough to keep the database busy while the next group
/// gathers, few enough to leave connections to everything else.
const COMMITTERS: usize = 4;

/// One verified event, owned so it can wait for its group.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub binding_id: BindingId,
    pub event_name: String,
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
            let mut results = store_group(&self.db, &[&event], true).await?;
            return results
                .pop()
                .ok_or_else(|| sqlx::Error::Protocol("the insert answered no row".into()));
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
        let foldable = matches!(e.event_name.as_str(), "customer.upserted" | "product.upserted");
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

async fn gather(db: PgPool, window: Duration, mut queue: mpsc::Receiver<Pending>) {
    let committers = Arc::new(Semaphore::new(COMMITTERS));
    let mut deferred: VecDeque<Pending> = VecDeque::new();
    loop {
        let first = match deferred.pop_front() {
            Some(p) => p,
            None => match queue.recv().await {
                Some(p) => p,
                None => return,
            },
        };
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
        tokio::spawn(async move {
            commit(&db, group).await;
            drop(permit);
        });
    }
}

async fn commit(db: &PgPool, group: Vec<Pending>) {
    metrics::histogram!("ingest_group_size").record(group.len() as f64);
    let events: Vec<&Incoming> = group.iter().map(|p| &p.event).collect();
    let stored = store_group(db, &events, true).await;
    drop(events);
    match stored {
        Ok(results) => {
            for (p, r) in group.into_iter().zip(results) {
                let _ = p.answer.send(Ok(r));
            }
        }
        // Nothing was stored: every request is told to come back.
        Err(e) if ledger_core::db::is_transient(&e) || group.len() == 1 => {
            let message = e.to_string();
            let mut group = group.into_iter();
            if let Some(p) = group.next() {
                let _ = p.answer.send(Err(e));
            }
            for p in group {
                let _ = p.answer.send(Err(sqlx::Error::Protocol(message.clone())));
            }
        }
        // One event's fault: each on its own, so only that one fails.
        Err(e) => {
            tracing::warn!(error = %e, events = group.len(), "a group insert failed; storing its events one by one");
            for p in group {
                let r = store_group(db, &[&p.event], false)
                    .await
                    .and_then(|mut r| r.pop().ok_or_else(|| sqlx::Error::Protocol("no row".into())));
                let _ = p.answer.send(r);
            }
        }
    }
}

/// Counts the group's hits on each binding's quota, then stores the events within it
/// with their runs and jobs: two statements, each its own commit (the insert is one
/// statement, so a group is stored whole or not at all). The quota's counter rows are
/// locked only for their own short statement, not while the events are written.
/// `count_quota` is false when a group is retried event by event (already counted).
async fn store_group(db: &PgPool, events: &[&Incoming], count_quota: bool) -> Result<Vec<Outcome>, sqlx::Error> {
    // Quota: one counter update per binding in the group, each event numbered in turn,
    // exactly as if they had come one by one.
    let mut bindings: Vec<(BindingId, i64)> = Vec::new();
    for e in events.iter().filter(|e| count_quota && e.quota_per_minute > 0) {
        match bindings.iter_mut().find(|(b, _)| *b == e.binding_id) {
            Some((_, n)) => *n += 1,
            None => bindings.push((e.binding_id, 1)),
        }
    }
    let keys: Vec<String> = bindings.iter().map(|(b, _)| b.to_string()).collect();
    let counts: Vec<i64> = bindings.iter().map(|(_, n)| *n).collect();
    let hits = ledger_core::rate::hit_many(db, "ingest:binding", &keys, &counts, Duration::from_secs(60)).await?;
    let mut seen: Vec<i64> = vec![0; bindings.len()];
    let mut over: Vec<Option<(i64, u32)>> = Vec::with_capacity(events.len());
    for e in events {
        let slot = bindings.iter().position(|(b, _)| *b == e.binding_id);
        over.push(slot.and_then(|i| {
            seen[i] += 1;
            let hit = &hits[i];
            let nth = hit.hits - counts[i] + seen[i];
            (nth > e.quota_per_minute).then(|| (nth, hit.retry_after()))
        }));
    }
    let stored: Vec<&Incoming> = events
        .iter()
        .zip(&over)
        .filter(|(_, o)| o.is_none())
        .map(|(e, _)| *e)
        .collect();
    // (One row per stored event, in order, or an error with nothing stored.)
    let mut rows = if stored.is_empty() {
        Vec::new().into_iter()
    } else {
        let mut conn = db.acquire().await?;
        crate::insert_events(&mut conn, &stored).await?.into_iter()
    };
    let mut outcomes = Vec::with_capacity(events.len());
    for o in over {
        outcomes.push(match o {
            Some((hits, retry_after)) => Outcome::OverQuota { hits, retry_after },
            None => Outcome::Stored(
                rows.next()
                    .ok_or_else(|| sqlx::Error::Protocol("a stored event has no row".into()))?,
            ),
        });
    }
    Ok(outcomes)
}
