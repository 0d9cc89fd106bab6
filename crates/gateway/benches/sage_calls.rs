//! Sage calls per document: a store's mixed activity (new and returning customers,
//! paid and unpaid invoices, refunds) synced to one Sage business, then each run's
//! recorded calls counted by the kind of document it posted — and what that makes of
//! Sage's budget of about 200 calls a minute per business.
//!
//! The first invoice of a new customer is told from a known customer's by the contact
//! the run created, a known customer whose data changed by the contact it refreshed. `cargo bench -p ledger-gateway --bench sage_calls`; `BENCH_ORDERS`
//! (300) changes the size. Calls are counted, not timed: the figures do not drift with
//! the machine, so a debug build measures them as well
//! (`cargo build -p ledger-gateway --bench sage_calls`, then run the binary with `--bench`).

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a benchmark prints its figures and computes rates"
)]

use std::time::Duration;

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::TestApp;

const BUDGET_PER_MINUTE: f64 = 200.0;

/// Each synced run's calls over all its attempts (`calls`), and the kind of document it
/// posted with its number of calls (`per_run`).
const PER_RUN: &str = "WITH calls AS (
       SELECT r.id, r.event_name, c
       FROM sync_runs r JOIN sync_attempts a ON a.sync_run_id = r.id
       CROSS JOIN LATERAL jsonb_array_elements(COALESCE(a.request->'sage_calls', '[]')) c
       WHERE r.status = 'synced'
     ), per_run AS (
       SELECT id, CASE
                WHEN event_name = 'invoice.created' AND bool_or(c->>'method' = 'POST' AND c->>'route' LIKE '/contacts%')
                  THEN 'invoice, new customer'
                WHEN event_name = 'invoice.created' AND bool_or(c->>'method' = 'PUT' AND c->>'route' LIKE '/contacts%')
                  THEN 'invoice, known, data changed'
                WHEN event_name = 'invoice.created' THEN 'invoice, known customer'
                WHEN event_name = 'invoice.paid' THEN 'payment'
                WHEN event_name = 'creditmemo.created' THEN 'credit note'
                ELSE event_name END AS kind,
              count(*) AS calls
       FROM calls GROUP BY id, event_name
     )";

fn orders() -> usize {
    std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

/// Orders in the backlog drained at the budget (`BENCH_DRAIN_ORDERS`, 0 skips it).
fn drain_orders() -> usize {
    std::env::var("BENCH_DRAIN_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

/// Sage's window for its 200 calls, scaled down so the drain takes minutes, not hours
/// (`BENCH_WINDOW_SECS`, 6): the ledger's budget and the sandbox's limit share it.
fn window_secs() -> u64 {
    std::env::var("BENCH_WINDOW_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
    if drain_orders() > 0 {
        runtime.block_on(drain());
    }
}

/// A store catching up after an outage: its whole backlog accepted first, then drained
/// with Sage's limit (200 calls a window) and the ledger's budget (the default 200 in
/// the same window) both on. Reports the share of the budget used and Sage's 429s.
async fn drain() {
    let window = Duration::from_secs(window_secs());
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    let app = TestApp::builder()
        .sage(SageConfig {
            rate_limit: Some((200, window_ms)),
            ..SageConfig::default()
        })
        .configure(move |s| {
            s.log_level = "error".into();
            s.sage_call_budget = 200;
            s.sage_call_window = window;
            s.binding_ingest_per_minute = u32::MAX;
        })
        .spawn()
        .await;
    let (_paired, business) = backlog(&app, drain_orders()).await; // the store stays up
    let before = app.sage().with_business(&business, |b| b.accepted.len()).unwrap_or(0);
    let started = std::time::Instant::now();
    let workers = app.start_workers();
    assert!(app.wait_idle(Duration::from_secs(7_200)).await, "the backlog drains");
    let elapsed = started.elapsed();
    workers.stop().await;
    let (calls, limited) = app
        .sage()
        .with_business(&business, |b| (b.accepted.len() - before, b.rate_limited))
        .unwrap_or_default();
    let (documents, invoices, failed): (i64, i64, i64) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'synced'), count(*) FILTER (WHERE status = 'synced' AND event_name = 'invoice.created'),
                count(*) FILTER (WHERE status NOT IN ('synced', 'skipped_by_policy'))
         FROM sync_runs",
    )
    .fetch_one(&app.state.db)
    .await
    .expect("runs");
    // At most 200 calls in any window: what the budget allowed over the drain.
    let allowed = 200.0 * (elapsed.as_secs_f64() / window.as_secs_f64()).ceil();
    let used = calls as f64 / allowed;
    println!(
        "Backlog drain ({} orders: {invoices} invoices, {documents} documents synced, {failed} not; Sage's 200 calls a minute scaled to 200 per {} s)",
        drain_orders(),
        window.as_secs()
    );
    println!(
        "  {calls} Sage calls in {:.1} s = {:.0}% of the budget (goal ≥ 95%), {limited} answered 429 (goal 0) → {:.0} documents per budget-minute",
        elapsed.as_secs_f64(),
        used * 100.0,
        documents as f64 / (elapsed.as_secs_f64() / window.as_secs_f64())
    );
}

/// A connected store with its payment methods mapped, `orders` of activity simulated and
/// its outbox sent to the end (a batch per cron run, as the module does); the store and
/// its Sage business.
async fn backlog(app: &TestApp, orders: usize) -> (ledger_test_support::PairedStore, String) {
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    app.map_payments(&paired, &business).await;
    let store = &paired.store.store;
    store.simulate(orders);
    loop {
        let report = store.drain_once().await;
        assert_eq!(report.dead_lettered, 0, "{report:?}");
        if report.sent == 0 {
            break;
        }
    }
    (paired, business)
}

async fn run() {
    // Calls are counted, not waited for: Sage's limit and the ledger's budget are lifted.
    let app = TestApp::builder()
        .sage(SageConfig {
            rate_limit: None,
            ..SageConfig::default()
        })
        .configure(|s| {
            s.log_level = "error".into();
            s.sage_call_budget = 1_000_000;
            s.binding_ingest_per_minute = u32::MAX;
        })
        .spawn()
        .await;
    let workers = app.start_workers();
    // Kept to the end: the store answers the workers' reads and callbacks.
    let (_paired, _) = backlog(&app, orders()).await;
    assert!(app.wait_idle(Duration::from_secs(900)).await, "the queue drains");
    workers.stop().await;

    // Each synced run's calls over all its attempts, by what it posted.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PER_RUN} SELECT kind, count(*)::int8, sum(calls)::int8 FROM per_run GROUP BY kind ORDER BY kind"
    )))
    .fetch_all(&app.state.db)
    .await
    .expect("calls");
    // Which calls make up each kind's figure.
    let parts: Vec<(String, String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "{PER_RUN} SELECT p.kind, (k.c->>'method') || ' ' || (k.c->>'route'), count(*)::int8
         FROM per_run p JOIN calls k ON k.id = p.id GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2"
    )))
    .fetch_all(&app.state.db)
    .await
    .expect("calls by route");
    let goal = |kind: &str| match kind {
        "invoice, new customer" => "≤ 2",
        "invoice, known customer" | "payment" => "1",
        // The customer's name or address differs from their contact's: refreshed first.
        "invoice, known, data changed" => "2",
        "credit note" => "≤ 2",
        _ => "-",
    };
    let (mut documents, mut calls) = (0_i64, 0_i64);
    println!(
        "Sage calls per document ({} orders simulated on one store and one Sage business)",
        orders()
    );
    let mut json = Vec::new();
    for (kind, runs, n) in &rows {
        let per = *n as f64 / (*runs).max(1) as f64;
        println!(
            "  {kind:<28} {runs:>5} documents  {per:>5.2} calls each  (goal {})  → {:>5.0} per budget-minute",
            goal(kind),
            BUDGET_PER_MINUTE / per
        );
        let of: Vec<String> = parts
            .iter()
            .filter(|(k, _, _)| k == kind)
            .map(|(_, call, n)| format!("{call} {:.2}", *n as f64 / (*runs).max(1) as f64))
            .collect();
        println!("      {}", of.join(", "));
        json.push(
            serde_json::json!({ "kind": kind, "documents": runs, "calls_per_document": (per * 100.0).round() / 100.0 }),
        );
        documents += runs;
        calls += n;
    }
    let per = calls as f64 / documents.max(1) as f64;
    println!(
        "  all documents                {documents:>5} documents  {per:>5.2} calls each          → {:>5.0} documents per budget-minute at {BUDGET_PER_MINUTE:.0} calls/min",
        BUDGET_PER_MINUTE / per
    );
    let report = serde_json::json!({ "kinds": json, "documents_per_budget_minute": (BUDGET_PER_MINUTE / per).round() });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("sage_calls.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
}
