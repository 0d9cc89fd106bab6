//! Sage calls per document: a store's mixed activity (new and returning customers,
//! paid and unpaid invoices, refunds) synced to one Sage business, then each run's
//! recorded calls counted by the kind of document it posted — and what that makes of
//! Sage's budget of about 200 calls a minute per business.
//!
//! The first invoice of a new customer is told from a known customer's by the contact
//! the run created. `cargo bench -p ledger-gateway --bench sage_calls`; `BENCH_ORDERS`
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

fn orders() -> usize {
    std::env::var("BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
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
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    app.map_payments(&paired, &business).await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    store.simulate(orders());
    // The outbox sends a batch per cron run, as the module does: drain it to the end.
    loop {
        let report = store.drain_once().await;
        assert_eq!(report.dead_lettered, 0, "{report:?}");
        if report.sent == 0 {
            break;
        }
    }
    assert!(app.wait_idle(Duration::from_secs(900)).await, "the queue drains");
    workers.stop().await;

    // Each synced run's calls over all its attempts, by what it posted.
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "WITH calls AS (
           SELECT r.id, r.event_name, c
           FROM sync_runs r JOIN sync_attempts a ON a.sync_run_id = r.id
           CROSS JOIN LATERAL jsonb_array_elements(COALESCE(a.request->'sage_calls', '[]')) c
           WHERE r.status = 'synced'
         ), per_run AS (
           SELECT id, CASE
                    WHEN event_name = 'invoice.created' AND bool_or(c->>'method' = 'POST' AND c->>'route' LIKE '/contacts%')
                      THEN 'invoice, new customer'
                    WHEN event_name = 'invoice.created' THEN 'invoice, known customer'
                    WHEN event_name = 'invoice.paid' THEN 'payment'
                    WHEN event_name = 'creditmemo.created' THEN 'credit note'
                    ELSE event_name END AS kind,
                  count(*) AS calls
           FROM calls GROUP BY id, event_name
         )
         SELECT kind, count(*)::int8, sum(calls)::int8 FROM per_run GROUP BY kind ORDER BY kind",
    )
    .fetch_all(&app.state.db)
    .await
    .expect("calls");
    let goal = |kind: &str| match kind {
        "invoice, new customer" => "≤ 2",
        "invoice, known customer" | "payment" => "1",
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
            "  {kind:<26} {runs:>5} documents  {per:>5.2} calls each  (goal {})  → {:>5.0} per budget-minute",
            goal(kind),
            BUDGET_PER_MINUTE / per
        );
        json.push(
            serde_json::json!({ "kind": kind, "documents": runs, "calls_per_document": (per * 100.0).round() / 100.0 }),
        );
        documents += runs;
        calls += n;
    }
    let per = calls as f64 / documents.max(1) as f64;
    println!(
        "  all documents              {documents:>5} documents  {per:>5.2} calls each          → {:>5.0} documents per budget-minute at {BUDGET_PER_MINUTE:.0} calls/min",
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
