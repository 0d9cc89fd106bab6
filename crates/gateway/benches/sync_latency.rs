//! End-to-end sync latency: a store's webhook → the ledger → the Sage sandbox → the
//! sync-state callback arriving back at the store, at a steady 100 events/s spread
//! over 100 bindings (each with its own store and its own Sage business).
//!
//! The bench measures the ledger, not Sage's rate limit: 100 events/s over 100
//! bindings is one invoice per second per business, which needs about 180-240 Sage calls
//! a minute per business — at or over Sage's 200 per minute — so the sandbox's limit and
//! the ledger's call budget are lifted here (with them in place, the backlog simply
//! drains at the budget, which `sync_processes.rs` measures). Each order is an unpaid
//! invoice: one `invoice.created` event.
//!
//! `cargo bench -p ledger-gateway --bench sync_latency`. Everything runs in one process
//! on one machine: the 100 sandbox stores, the sandbox Sage, the ledger's HTTP server
//! and its workers, plus Postgres beside them. Results are also written to
//! `target/bench/sync_latency.json`.

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a benchmark prints its figures and computes rates"
)]

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use tokio::sync::Mutex;

const BINDINGS: usize = 100;
const RATE: u64 = 100;
const SECS: u64 = 30;
/// Jobs the (one, in-process) worker runs at once (`BENCH_WORKERS` overrides; 32 is
/// slower on 2 cores: the machine is saturated already).
const WORKERS: usize = 16;

/// Events per second (`BENCH_RATE` overrides, to see the latency below saturation).
fn rate() -> u64 {
    std::env::var("BENCH_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(RATE)
}

fn worker_count() -> usize {
    std::env::var("BENCH_WORKERS")
        .ok()
        .and_then(|w| w.parse().ok())
        .unwrap_or(WORKERS)
}

/// Transactions committed or rolled back in the bench's database so far. Backends report
/// their counts at most every second and, when idle, within ten: wait that out first.
async fn commits(db: &sqlx::PgPool) -> i64 {
    tokio::time::sleep(Duration::from_secs(11)).await;
    sqlx::query_scalar("SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = current_database()")
        .fetch_one(db)
        .await
        .expect("pg_stat_database")
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Places an unpaid order in `store` and sends its event; (invoice id, send time in ms).
async fn event(paired: &PairedStore) -> (i64, i64) {
    let (_, invoice) = paired.store.store.place_order(false);
    let sent = chrono::Utc::now().timestamp_millis();
    let report = paired.store.store.drain_once().await;
    assert_eq!(report.dead_lettered, 0);
    (invoice, sent)
}

async fn run() {
    let businesses = (0..BINDINGS)
        .map(|i| (format!("Shop {i} Ltd"), "GB".to_owned()))
        .collect();
    let app = TestApp::builder()
        .sage(SageConfig {
            businesses,
            rate_limit: None,
            ..SageConfig::default()
        })
        .configure(|s| {
            s.log_level = "warn".into();
            s.db_max_connections = u32::try_from(worker_count() + 8).unwrap_or(40);
            s.sage_call_budget = 1_000_000;
            s.binding_ingest_per_minute = u32::MAX;
            s.worker_concurrency = worker_count();
        })
        .spawn()
        .await;
    let ids: Vec<String> = app.sage().businesses().into_iter().map(|b| b.id).collect();
    let mut stores = Vec::new();
    for business in &ids {
        // All 100 stores pair from one address, past the per-address connect limit (60 an
        // hour) meant for the internet: the bench forgets its own connects.
        sqlx::query("DELETE FROM rate_counters WHERE bucket LIKE 'connect:%'")
            .execute(&app.state.db)
            .await
            .expect("connect counters");
        let paired = app.paired_store().await;
        app.connect_sage(&paired).await;
        let res = app
            .http
            .post(app.url(&format!("/v1/bindings/{}/sage/business", paired.binding_id)))
            .bearer_auth(&paired.merchant.token)
            .json(&serde_json::json!({ "business_id": business }))
            .send()
            .await
            .expect("choose business");
        assert!(res.status().is_success(), "choose business: {}", res.status());
        stores.push(Arc::new(paired));
    }
    let workers = app.start_workers();

    // Warm-up: one event per binding (reference data, first contacts).
    for paired in &stores {
        event(paired).await;
    }
    assert!(app.wait_idle(Duration::from_secs(120)).await, "warm-up drains");
    // Steady state: the planner has statistics, as autovacuum leaves a live database
    // (a fresh test database has none for the tables the setup just filled).
    sqlx::query("ANALYZE").execute(&app.state.db).await.expect("analyze");
    let commits_before = commits(&app.state.db).await;

    // Open loop: events start on schedule whatever the latency.
    let sent = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let measured_from = chrono::Utc::now();
    let mut tasks = Vec::new();
    for n in 0..(rate() * SECS) as usize {
        tick.tick().await;
        let (paired, sent) = (stores[n % BINDINGS].clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let (invoice, at) = event(&paired).await;
            sent.lock().await.push((n % BINDINGS, invoice, at));
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let offered = (rate() * SECS) as f64 / started.elapsed().as_secs_f64();
    assert!(app.wait_idle(Duration::from_secs(300)).await, "the run drains");
    workers.stop().await;
    let per_event = (commits(&app.state.db).await - commits_before) as f64 / (rate() * SECS) as f64;

    let mut latencies = Vec::new();
    let mut missing = 0;
    for (store, invoice, at) in sent.lock().await.iter() {
        match stores[*store].store.store.sync_state_received_at("invoice", *invoice) {
            Some(received) => latencies.push(received - at),
            None => missing += 1,
        }
    }
    latencies.sort_unstable();
    let failed: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE status NOT IN ('synced', 'skipped_by_policy')")
            .fetch_one(&app.state.db)
            .await
            .expect("count");
    // Where the time went, from the runs' own timestamps: waiting in the queue, the attempt
    // (store read, Sage calls, bookkeeping), and the callback job behind it.
    let phases: (f64, f64, f64, f64, f64, f64, i64) = sqlx::query_as(
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY q), percentile_cont(0.99) WITHIN GROUP (ORDER BY q),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY w), percentile_cont(0.99) WITHIN GROUP (ORDER BY w),
                percentile_cont(0.5) WITHIN GROUP (ORDER BY c), percentile_cont(0.99) WITHIN GROUP (ORDER BY c),
                count(*) FILTER (WHERE attempts > 1)
         FROM (SELECT 1000 * EXTRACT(EPOCH FROM started_at - created_at)::float8 AS q,
                      1000 * EXTRACT(EPOCH FROM finished_at - started_at)::float8 AS w,
                      1000 * EXTRACT(EPOCH FROM callback_at - finished_at)::float8 AS c, attempts
               FROM sync_runs WHERE created_at > $1) r",
    )
    .bind(measured_from)
    .fetch_one(&app.state.db)
    .await
    .expect("phases");
    let waits: Vec<(String, i64)> = sqlx::query_as(
        "SELECT waiting_for, count(*) FROM jobs WHERE kind = 'sync_event' AND waiting_for IS NOT NULL GROUP BY 1 ORDER BY 2 DESC",
    )
    .fetch_all(&app.state.db)
    .await
    .expect("waits");
    let (p50, p99, max) = (
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or(0),
    );
    println!("sync latency benchmark: webhook → ledger → Sage sandbox → sync-state at the store");
    println!(
        "  {BINDINGS} bindings, {} invoice events/s offered ({offered:.0}/s achieved) for {SECS} s, {} concurrent jobs",
        rate(),
        worker_count()
    );
    println!(
        "  invoice latency  p50 {p50} ms  p99 {p99} ms  max {max} ms  ({} measured, {missing} without a callback, {failed} runs not synced)",
        latencies.len()
    );
    println!(
        "  phases (ms, p50/p99): queued {:.0}/{:.0}  attempt {:.0}/{:.0}  callback queued+sent {:.0}/{:.0}  ({} runs took more than one attempt; waits {waits:?})",
        phases.0, phases.1, phases.2, phases.3, phases.4, phases.5, phases.6
    );
    println!(
        "  Postgres transactions per event (webhook to callback, idle polling included): {per_event:.1} (goal ≤ 8)"
    );
    let report = serde_json::json!({
        "bindings": BINDINGS, "rate": rate(), "secs": SECS, "workers": worker_count(), "p50_ms": p50, "p99_ms": p99, "max_ms": max,
        "measured": latencies.len(), "missing": missing, "failed_runs": failed,
        "queued_p50_ms": phases.0, "attempt_p50_ms": phases.2, "callback_p50_ms": phases.4, "transactions_per_event": per_event,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("sync_latency.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
}
