//! Job queue benchmark: the ledger's claim + complete against a bare `SKIP LOCKED`
//! loop, same database, same jobs, same concurrency, in one run.
//!
//! `cargo bench -p ledger-gateway --bench queue`. The ledger's claim does more than the
//! bare loop: it takes the next binding in turn after the last one served (fairness), checks the
//! binding's concurrency limit and its Sage business's budget, takes a lease and
//! counts the attempt; completing checks the lease is still held. Results are also
//! written to `target/bench/queue.json`.

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a benchmark prints its figures and computes rates"
)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ledger_test_support::TestApp;

const BINDINGS: usize = 100;
const JOBS: i64 = 20_000;
const CONCURRENCY: usize = 8;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn seed(db: &sqlx::PgPool, tenant: uuid::Uuid) {
    sqlx::query("DELETE FROM jobs").execute(db).await.expect("clear");
    sqlx::query(
        "INSERT INTO jobs (binding_id, kind, payload)
         SELECT b.id, 'bench', '{}' FROM generate_series(1, $1) g
         JOIN (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n FROM connector_bindings WHERE tenant_id = $2) b
           ON b.n = g % $3",
    )
    .bind(JOBS)
    .bind(tenant)
    .bind(BINDINGS as i64)
    .execute(db)
    .await
    .expect("seed jobs");
    sqlx::query("VACUUM ANALYZE jobs").execute(db).await.expect("analyze");
    sqlx::query("ANALYZE connector_bindings")
        .execute(db)
        .await
        .expect("analyze");
}

/// Runs `CONCURRENCY` loops of `step` until it reports no work; jobs/s.
async fn drive<F, Fut>(step: F) -> f64
where
    F: Fn() -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (step, done) = (step.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while step().await {
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let n = done.load(Ordering::Relaxed);
    assert_eq!(n, JOBS as u64, "every job was processed once");
    n as f64 / started.elapsed().as_secs_f64()
}

async fn run() {
    let app = TestApp::builder()
        .configure(|s| {
            s.db_max_connections = 20;
            s.log_level = "warn".into();
        })
        .spawn()
        .await;
    let merchant = app.merchant().await;
    let tenant = merchant.tenant_id.0;
    sqlx::query(
        "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status)
         SELECT gen_random_uuid(), $1, 'https://shop' || g || '.example', 'active' FROM generate_series(1, $2) g",
    )
    .bind(tenant)
    .bind(BINDINGS as i64)
    .execute(&app.state.db)
    .await
    .expect("bindings");
    let db = app.state.db.clone();

    // 1. The bare loop: claim the lowest queued id, then mark it done, with the index
    //    that makes it fast (dropped before the ledger's turn).
    sqlx::query("CREATE INDEX bench_bare ON jobs (id) WHERE status = 'queued'")
        .execute(&db)
        .await
        .expect("index");
    seed(&db, tenant).await;
    let bare = drive({
        let db = db.clone();
        move || {
            let db = db.clone();
            async move {
                let id: Option<i64> = sqlx::query_scalar(
                    "UPDATE jobs SET status = 'running' WHERE id = (
                       SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
                     ) RETURNING id",
                )
                .fetch_optional(&db)
                .await
                .expect("claim");
                let Some(id) = id else { return false };
                sqlx::query("UPDATE jobs SET status = 'done' WHERE id = $1")
                    .bind(id)
                    .execute(&db)
                    .await
                    .expect("done");
                true
            }
        }
    })
    .await;

    // 2. The ledger's queue: fair, leased, limited, budget-aware.
    sqlx::query("DROP INDEX bench_bare").execute(&db).await.expect("index");
    seed(&db, tenant).await;
    let lease = Duration::from_secs(60);
    // One process: its loops share the turn.
    let turn = Arc::new(ledger_sage_sync::queue::Turn::default());
    let ledger = drive({
        let db = db.clone();
        move || {
            let (db, turn) = (db.clone(), turn.clone());
            async move {
                let Some(job) = ledger_sage_sync::queue::claim(&db, &turn, 2, lease)
                    .await
                    .expect("claim")
                else {
                    return false;
                };
                let mut conn = db.acquire().await.expect("connection");
                assert!(
                    ledger_sage_sync::queue::finish(&mut conn, &job, "done", None)
                        .await
                        .expect("finish")
                );
                true
            }
        }
    })
    .await;

    let ratio = ledger / bare;
    println!("job queue benchmark ({JOBS} jobs over {BINDINGS} bindings, {CONCURRENCY} workers, one database)");
    println!("  bare SKIP LOCKED loop (claim, done)          {bare:>8.0} jobs/s");
    println!("  ledger claim + complete (fair, leased)       {ledger:>8.0} jobs/s  ({ratio:.2} of the bare loop)");
    let report = serde_json::json!({
        "jobs": JOBS, "bindings": BINDINGS, "concurrency": CONCURRENCY,
        "bare_jobs_per_s": bare.round(), "ledger_jobs_per_s": ledger.round(), "ratio": (ratio * 100.0).round() / 100.0,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("queue.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
}
