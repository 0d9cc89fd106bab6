//! The worker runtime: `worker_concurrency` loops claiming jobs, woken at once by
//! LISTEN/NOTIFY with a polling fallback, each job's lease renewed while it runs. On
//! shutdown no new job is claimed, running ones get until the deadline, and any still
//! running then are released for another worker.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::Utc;
use ledger_core::AppState;
use sqlx::postgres::PgListener;
use tokio::sync::Notify;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    callback,
    outcome::{Next, Outcome},
    process, runs,
};
use ledger_jobs::{self as queue, JobKind, JobStatus};
use ledger_magento_callback::delivery::Delivery;

/// Jobs this process holds, for release at shutdown.
#[derive(Debug, Default)]
struct Held(Mutex<HashSet<(i64, uuid::Uuid)>>);

impl Held {
    fn add(&self, job: &queue::Job) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert((job.id, job.lease_id));
    }
    fn remove(&self, job: &queue::Job) {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&(job.id, job.lease_id));
    }
    fn all(&self) -> Vec<(i64, uuid::Uuid)> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }
}

/// Connections a worker process needs at its busiest: each running job and its lease's
/// heartbeat, LISTEN, and the housekeeping, health and upkeep loops.
pub fn pool_needed(worker_concurrency: usize) -> u32 {
    u32::try_from(worker_concurrency.saturating_mul(2).saturating_add(4)).unwrap_or(u32::MAX)
}

/// A warning when the pool is smaller than [`pool_needed`]: heartbeats would then wait
/// for connections while jobs hold them, and leases lapse under load.
pub fn pool_shortfall(settings: &ledger_core::Settings) -> Option<String> {
    let needed = pool_needed(settings.worker_concurrency);
    (settings.db_max_connections < needed).then(|| {
        format!(
            "db_max_connections is {} but worker_concurrency {} needs {needed} (a job and its heartbeat each, \
             plus LISTEN and three loops); raise LEDGER_DB_MAX_CONNECTIONS or lower LEDGER_WORKER_CONCURRENCY",
            settings.db_max_connections, settings.worker_concurrency
        )
    })
}

/// Runs the job loops until `shutdown`, then drains or releases within the deadline.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    if let Some(warning) = pool_shortfall(&state.settings) {
        tracing::warn!("{warning}");
    }
    let wake = Arc::new(Notify::new());
    let hints = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let held = Arc::new(Held::default());
    let turn = Arc::new(queue::Turn::default());
    let ticker = Arc::new(Ticker::default());
    let stop_claiming = shutdown.child_token();
    let background = TaskTracker::new();
    background.spawn(listen(state.clone(), wake.clone(), hints.clone(), shutdown.clone()));
    background.spawn(housekeeping(
        state.clone(),
        turn.clone(),
        wake.clone(),
        shutdown.clone(),
    ));
    background.spawn(
        ticker
            .clone()
            .run(state.settings.job_poll_interval, stop_claiming.clone()),
    );
    let mut workers = tokio::task::JoinSet::new();
    for n in 0..state.settings.worker_concurrency {
        workers.spawn(work(
            state.clone(),
            n,
            Wakes {
                notified: wake.clone(),
                ticker: ticker.clone(),
                hints: hints.clone(),
            },
            held.clone(),
            turn.clone(),
            stop_claiming.clone(),
        ));
    }
    background.close();
    shutdown.cancelled().await;
    let drained = tokio::time::timeout(state.settings.shutdown_deadline, async {
        while workers.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    if !drained {
        // Stop the stragglers first: a job released while its task still runs would be
        // run by another worker at the same time.
        workers.abort_all();
        while workers.join_next().await.is_some() {}
        let stragglers = held.all();
        tracing::warn!(
            jobs = stragglers.len(),
            "shutdown deadline passed; running jobs stopped and released"
        );
        for (id, lease) in stragglers {
            let _ = queue::release(&state.db, id, lease).await;
        }
    }
    background.wait().await;
}

/// Wakes idle workers when a job is queued anywhere (any process).
async fn listen(
    state: AppState,
    wake: Arc<Notify>,
    hints: Arc<std::sync::atomic::AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let listener = async {
            let mut l = PgListener::connect_with(&state.db).await?;
            l.listen(queue::CHANNEL).await?;
            Ok::<_, sqlx::Error>(l)
        };
        let mut listener = match listener.await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %e, "LISTEN failed; polling until it works");
                tokio::select! { () = shutdown.cancelled() => return, () = tokio::time::sleep(Duration::from_secs(2)) => continue }
            }
        };
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                n = listener.recv() => match n {
                    // One notification, one worker: no herd of idle workers racing to claim.
                    Ok(_) => {
                        hints.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        wake.notify_one();
                    }
                    Err(e) => { tracing::warn!(error = %e, "LISTEN connection lost"); break; }
                },
            }
        }
    }
}

/// How often the lease sweep is considered.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Reclaims expired leases, prunes the budget log, publishes queue depth.
async fn housekeeping(state: AppState, turn: Arc<queue::Turn>, wake: Arc<Notify>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    // An idle process's claims look at the leases once a poll interval (the ticker's
    // look); a look older than that and a tick means the workers were busy.
    let fresh = state.settings.job_poll_interval + SWEEP_EVERY;
    let mut n: u64 = 0;
    loop {
        tokio::select! { () = shutdown.cancelled() => return, _ = tick.tick() => {} }
        n += 1;
        let swept = if turn.leases_may_have_ended(fresh, state.settings.job_lease) {
            queue::reclaim_expired(&state.db, state.settings.job_max_attempts).await
        } else {
            Ok(queue::Reclaimed::default())
        };
        match swept {
            Ok(r) => {
                if r.requeued > 0 {
                    tracing::info!(reclaimed = r.requeued, "jobs with expired leases returned to the queue");
                    wake.notify_waiters();
                }
                if r.poisoned > 0 {
                    metrics::counter!("jobs_poisoned_total").increment(r.poisoned);
                    tracing::error!(
                        jobs = r.poisoned,
                        "jobs that ended every attempt without an answer are dead (job_lease_lost)"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "reclaiming leases failed"),
        }
        if n.is_multiple_of(15)
            && let Ok(depths) = queue::depth(&state.db).await
        {
            for (binding, count, age) in depths {
                metrics::gauge!("queue_depth", "binding" => binding.to_string()).set(count as f64);
                metrics::gauge!("queue_oldest_age_seconds", "binding" => binding.to_string()).set(age);
            }
        }
        if n.is_multiple_of(60) {
            let _ = ledger_sage_vault::session::Budget::from_settings(&state.settings)
                .prune(&state.db)
                .await;
        }
    }
}

/// When a process's idle workers look for work without being told of any: once per
/// poll interval for the whole process (not once per worker), or sooner when an idle
/// claim said a job falls due earlier. Each look wakes one idle worker; one that then
/// finds a job passes the look on, so jobs falling due together are all taken.
#[derive(Debug, Default)]
struct Ticker {
    look: Notify,
    /// The earliest time an idle claim said something falls due.
    due: Mutex<Option<tokio::time::Instant>>,
    rearm: Notify,
}

impl Ticker {
    fn due_at(&self, at: tokio::time::Instant) {
        let mut due = self.due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if due.is_none_or(|d| at < d) {
            *due = Some(at);
            self.rearm.notify_one();
        }
    }

    async fn run(self: Arc<Self>, interval: Duration, stop: CancellationToken) {
        let mut next_look = tokio::time::Instant::now() + interval;
        loop {
            let due = *self.due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let at = due.map_or(next_look, |d| d.min(next_look));
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.rearm.notified() => continue,
                () = tokio::time::sleep_until(at) => {}
            }
            let now = tokio::time::Instant::now();
            {
                let mut due = self.due.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                if due.is_some_and(|d| d <= now) {
                    *due = None;
                }
            }
            if at >= next_look {
                next_look = now + interval;
            }
            self.look.notify_one();
        }
    }
}

/// What wakes an idle worker: a job queued anywhere (LISTEN), or the ticker's look.
struct Wakes {
    notified: Arc<Notify>,
    ticker: Arc<Ticker>,
    /// Jobs notified and not yet looked for: a worker finishing a job claims again while
    /// any are left (notifications that came while every worker was busy), or when its
    /// claim said more was due; else it waits to be told instead of asking in vain.
    hints: Arc<std::sync::atomic::AtomicUsize>,
}

impl Wakes {
    /// Takes one hint, if any is left.
    fn take_hint(&self) -> bool {
        self.hints
            .fetch_update(
                std::sync::atomic::Ordering::AcqRel,
                std::sync::atomic::Ordering::Acquire,
                |h| h.checked_sub(1),
            )
            .is_ok()
    }
}

async fn work(
    state: AppState,
    n: usize,
    wakes: Wakes,
    held: Arc<Held>,
    turn: Arc<queue::Turn>,
    stop: CancellationToken,
) {
    let name = format!("{}-{n}", std::process::id());
    // Whether this claim follows the ticker's look (rather than a notification).
    let mut looking = false;
    loop {
        if stop.is_cancelled() {
            return;
        }
        // Register for a wake-up before looking, so a notification in between is not lost.
        let notified = wakes.notified.notified();
        wakes.take_hint();
        let claimed = queue::claim_or_wait(
            &state.db,
            &turn,
            state.settings.binding_concurrency,
            state.settings.job_lease,
        )
        .await;
        match claimed {
            Ok(queue::Claim::Job(job)) => {
                if std::mem::take(&mut looking) {
                    // More may have fallen due at once: another idle worker looks too.
                    wakes.ticker.look.notify_one();
                }
                let mut more = job.more_due;
                // A finished sync hands over its store callback, claimed and with its
                // binding read, delivered at once.
                let mut next = Some((job, None));
                while let Some((job, store)) = next.take() {
                    held.add(&job);
                    let done = execute(&state, &job, store, &name).await;
                    held.remove(&job);
                    more |= done.woke;
                    if let Some(d) = done.retry_in {
                        // Its own backoff: looked at when it ends, not at the next poll.
                        wakes
                            .ticker
                            .due_at(tokio::time::Instant::now() + d + Duration::from_millis(2));
                    }
                    if let Some((callback, store)) = done.callback {
                        if stop.is_cancelled() {
                            // Back to the queue for whichever worker runs next.
                            if let Err(e) = queue::release(&state.db, callback.id, callback.lease_id).await {
                                tracing::warn!(job = callback.id, error = %e, "giving back a store callback failed; its lease expires");
                            }
                        } else {
                            next = Some((callback, Some(store)));
                        }
                    }
                }
                if !more && wakes.hints.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    // Nothing was due besides this job, and nothing was queued since that
                    // another worker has not looked for: wait to be told (a stored
                    // notification or look ends this at once).
                    let notified = wakes.notified.notified();
                    looking = tokio::select! {
                        () = stop.cancelled() => return,
                        () = notified => false,
                        () = wakes.ticker.look.notified() => true,
                    };
                }
            }
            Ok(queue::Claim::Idle { due_in }) => {
                // What was hinted is taken (by another process, or not due yet).
                wakes.hints.store(0, std::sync::atomic::Ordering::Release);
                // Sleep until a notification or the ticker's next look: at the next job's
                // due time (a backoff ends, a budget frees) or the polling fallback,
                // whichever comes first. A job due now that could not be claimed waits on
                // a busy binding, whose own workers claim it when they finish: no need to
                // spin.
                if let Some(d) = due_in.filter(|d| *d > Duration::from_millis(5)) {
                    wakes
                        .ticker
                        .due_at(tokio::time::Instant::now() + d + Duration::from_millis(2));
                }
                looking = tokio::select! {
                    () = stop.cancelled() => return,
                    () = notified => false,
                    () = wakes.ticker.look.notified() => true,
                };
            }
            Err(e) => {
                tracing::warn!(error = %e, "claiming a job failed");
                tokio::select! { () = stop.cancelled() => return, () = tokio::time::sleep(Duration::from_secs(1)) => {} }
            }
        }
    }
}

/// Processes one job while a heartbeat keeps its lease; the store callback it queued, if
/// any, handed over with its binding. `store`: a callback's binding, when already read
/// (`Some(None)`: the binding is gone). A job whose lease is lost (another worker
/// reclaimed it) is stopped at once.
async fn execute(
    state: &AppState,
    job: &queue::Job,
    store: Option<Option<queue::CallbackStore>>,
    worker: &str,
) -> runs::Completed {
    let stop_beat = CancellationToken::new();
    let lost = CancellationToken::new();
    let beat = tokio::spawn(keep_lease(
        state.db.clone(),
        job.clone(),
        state.settings.job_lease,
        stop_beat.clone(),
        lost.clone(),
    ));
    let work = async {
        match &job.kind {
            JobKind::SyncEvent => sync_event(state, job, worker).await,
            JobKind::SyncState => sync_state(state, job, store).await.map(|retry_in| runs::Completed {
                retry_in,
                ..Default::default()
            }),
            JobKind::Unknown(other) => {
                tracing::error!(kind = other, "unknown job kind");
                match state.db.acquire().await {
                    Ok(mut conn) => queue::finish(&mut conn, job, JobStatus::Dead, Some("unknown job kind"))
                        .await
                        .map(|_| runs::Completed::default()),
                    Err(e) => Err(e),
                }
            }
        }
    };
    let result = tokio::select! {
        r = work => Some(r),
        () = lost.cancelled() => None,
    };
    stop_beat.cancel();
    let _ = beat.await;
    let Some(result) = result else {
        metrics::counter!("jobs_lease_lost_total").increment(1);
        tracing::warn!(
            job = job.id,
            "the job's lease was lost; stopped it (its new holder runs it)"
        );
        return runs::Completed::default();
    };
    result.unwrap_or_else(|e| {
        // The lease expires and another worker retries the job.
        tracing::warn!(job = job.id, error = %e, "recording a job's result failed");
        runs::Completed::default()
    })
}

/// Renews `job`'s lease every third of it. A failed renewal (a pool timeout, a blip) is
/// retried every second while the lease may still hold; `lost` is cancelled when it
/// is really gone — another worker holds the job, or no renewal succeeded for a lease.
pub async fn keep_lease(
    db: sqlx::PgPool,
    job: queue::Job,
    lease: Duration,
    stop: CancellationToken,
    lost: CancellationToken,
) {
    let mut renewed = tokio::time::Instant::now();
    let mut failing = false;
    loop {
        let wait = if failing {
            Duration::from_secs(1).min(lease / 10)
        } else {
            lease / 3
        };
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(wait) => {}
        }
        match queue::heartbeat(&db, &job, lease).await {
            Ok(true) => {
                renewed = tokio::time::Instant::now();
                failing = false;
            }
            Ok(false) => {
                lost.cancel();
                return;
            }
            Err(e) => {
                failing = true;
                if renewed.elapsed() >= lease {
                    tracing::warn!(job = job.id, error = %e, "no heartbeat succeeded for a whole lease");
                    lost.cancel();
                    return;
                }
                tracing::warn!(job = job.id, error = %e, "heartbeat failed; trying again");
            }
        }
    }
}

async fn sync_event(state: &AppState, job: &queue::Job, worker: &str) -> Result<runs::Completed, sqlx::Error> {
    let started = Utc::now();
    let Some(run_id) = job.sync_run_id else {
        let mut conn = state.db.acquire().await?;
        return queue::finish(&mut conn, job, JobStatus::Dead, Some("no sync run"))
            .await
            .map(|_| runs::Completed::default());
    };
    // Read by the claim (nothing there: the run is gone).
    let Some(run) = job
        .run
        .as_deref()
        .map(|claimed| process::RunInfo::claimed(run_id, job.binding_id, claimed))
    else {
        let mut conn = state.db.acquire().await?;
        return queue::finish(&mut conn, job, JobStatus::Dead, Some("sync run deleted"))
            .await
            .map(|_| runs::Completed::default());
    };
    // (The claim has marked the run running.)
    let span = tracing::info_span!(
        "sync",
        otel.name = %format!("sync {}", run.event_name),
        run = %run.id,
        event = %run.event_name,
        entity = run.entity_id,
        binding = %run.binding,
        worker
    );
    ledger_core::trace::continue_from(&span, run.traceparent.as_deref());
    let log = ledger_sage_vault::session::CallLog::default();
    let process::Attempted { outcome, posted } =
        tracing::Instrument::instrument(process::sync_event(state, &run, &log, job.lease_id), span.clone()).await;
    match &outcome {
        Outcome::Failed(f) => {
            tracing::info!(run = %run.id, class = f.class.as_str(), code = %f.code, "sync attempt failed")
        }
        Outcome::Blocked { reason, .. } => tracing::debug!(run = %run.id, reason, "sync waiting"),
        _ => tracing::info!(run = %run.id, "sync finished"),
    }
    // Entity leases end with the attempt (or expire with the job's lease if this fails).
    tracing::Instrument::instrument(
        runs::complete(
            state,
            job,
            &run,
            runs::Ended {
                outcome: &outcome,
                posted: posted.as_ref(),
                started,
                calls: &log.take(),
                unsettled: log.take_unsettled(),
            },
        ),
        span,
    )
    .await
}

async fn sync_state(
    state: &AppState,
    job: &queue::Job,
    store: Option<Option<queue::CallbackStore>>,
) -> Result<Option<Duration>, sqlx::Error> {
    use ledger_magento_callback::delivery;
    let span =
        tracing::info_span!("sync_state", otel.name = "sync-state callback", job = job.id, binding = %job.binding_id);
    ledger_core::trace::continue_from(&span, job.payload["traceparent"].as_str());
    let delivering = async {
        match store {
            Some(store) => delivery::deliver_to(state, job.binding_id, store.as_ref(), &job.payload).await,
            None => delivery::deliver(state, job.binding_id, &job.payload).await,
        }
    };
    let delivery = tracing::Instrument::instrument(delivering, span).await;
    let run_id = job.payload["run_id"]
        .as_str()
        .and_then(|r| r.parse::<uuid::Uuid>().ok());
    let (job_status, run_status, after, error) = match &delivery {
        Delivery::Delivered => (JobStatus::Done, Some("delivered"), 0.0, None),
        Delivery::Rejected(reason) => {
            tracing::warn!(job = job.id, reason, "the store refused a sync-state callback");
            (JobStatus::Dead, Some("rejected"), 0.0, Some(reason.as_str()))
        }
        Delivery::Retry(retry) => {
            let attempt = u32::try_from(job.attempt).unwrap_or(1);
            let failure = callback::retry_failure(retry);
            let Next::Retry { after, .. } = crate::outcome::next(&Outcome::Failed(failure), attempt, u32::MAX) else {
                unreachable!()
            };
            (
                JobStatus::Queued,
                None,
                after.as_secs_f64(),
                Some(retry.message.as_str()),
            )
        }
    };
    queue::finish_callback(
        &state.db,
        job,
        queue::CallbackEnd {
            status: job_status,
            retry_after_secs: after,
            error,
            run_status,
            run: run_id,
        },
    )
    .await?;
    if let (Delivery::Delivered, Some(finished)) = (
        &delivery,
        job.payload["finished_at"]
            .as_str()
            .and_then(|f| chrono::DateTime::parse_from_rfc3339(f).ok()),
    ) {
        let lag = (Utc::now() - finished.with_timezone(&Utc)).to_std().unwrap_or_default();
        metrics::histogram!("callback_lag_seconds").record(lag.as_secs_f64());
    }
    Ok((job_status == JobStatus::Queued).then(|| Duration::from_secs_f64(after)))
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{
            Arc,
            atomic::{AtomicU32, Ordering},
        },
        time::Duration,
    };

    use tokio_util::sync::CancellationToken;

    use super::Ticker;

    /// Idle workers waiting for the ticker's looks: how many looks they got in `run_for`.
    async fn looks(ticker: &Arc<Ticker>, workers: usize, run_for: Duration) -> u32 {
        let woken = Arc::new(AtomicU32::new(0));
        let stop = CancellationToken::new();
        let mut waiting = Vec::new();
        for _ in 0..workers {
            let (ticker, woken, stop) = (ticker.clone(), woken.clone(), stop.clone());
            waiting.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        () = ticker.look.notified() => { woken.fetch_add(1, Ordering::Relaxed); }
                    }
                }
            }));
        }
        tokio::time::sleep(run_for).await;
        stop.cancel();
        for w in waiting {
            w.await.unwrap();
        }
        woken.load(Ordering::Relaxed)
    }

    #[tokio::test]
    async fn idle_workers_look_once_per_interval_between_them_not_once_each() {
        let ticker = Arc::new(Ticker::default());
        let stop = CancellationToken::new();
        let run = tokio::spawn(ticker.clone().run(Duration::from_millis(100), stop.clone()));
        let n = looks(&ticker, 8, Duration::from_millis(1050)).await;
        stop.cancel();
        run.await.unwrap();
        // Ten intervals: ten looks (fewer if the machine is slow), not eighty.
        assert!((3..=11).contains(&n), "{n} looks");
    }

    #[tokio::test]
    async fn a_job_falling_due_before_the_next_interval_gets_a_look_then() {
        let ticker = Arc::new(Ticker::default());
        let stop = CancellationToken::new();
        let run = tokio::spawn(ticker.clone().run(Duration::from_secs(60), stop.clone()));
        assert_eq!(
            looks(&ticker, 4, Duration::from_millis(200)).await,
            0,
            "no look before the interval"
        );
        ticker.due_at(tokio::time::Instant::now() + Duration::from_millis(100));
        ticker.due_at(tokio::time::Instant::now() + Duration::from_secs(30)); // later: changes nothing
        assert_eq!(
            looks(&ticker, 4, Duration::from_millis(600)).await,
            1,
            "one look, when it fell due"
        );
        stop.cancel();
        run.await.unwrap();
    }

    #[test]
    fn the_default_pool_fits_the_default_concurrency_and_a_small_one_is_named() {
        let layers = ledger_core::config::Layers::collect(None, &|_| None).unwrap();
        let mut settings = ledger_core::Settings::from_layers(&layers).unwrap();
        assert_eq!(super::pool_shortfall(&settings), None, "the defaults fit");
        settings.db_max_connections = 10;
        let warning = super::pool_shortfall(&settings).unwrap();
        assert!(warning.contains("needs 20"), "{warning}");
    }
}
