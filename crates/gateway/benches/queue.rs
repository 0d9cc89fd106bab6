//! Job queue benchmark: the ledger's claim + complete against a bare `SKIP LOCKED`
//! loop, same database, same jobs, same concurrency, in one run — with every binding
//! active (100 bindings), and with 10,000 bindings of which 100, then 10, have work (the
//! claim must not pay for idle tenants). Then the cost of an idle worker's poll (a claim
//! finding nothing, which says when the next job falls due) at 100 and at 10,000
//! bindings, against a bare `SELECT 1` on a connection of its own.
//!
//! Each worker runs on a connection of its own — the bare loop's statements, the
//! ledger's finish (its claims go through the process's claim task, which keeps a
//! connection while claims keep coming): through sqlx's pool, each checkout and each
//! return pings the connection (a round trip each), which is not the statement's cost.
//! Both loops through the pool are printed beside them, comparable with figures from
//! before 2026-12-07.
//!
//! `cargo bench -p ledger-gateway --bench queue`. The ledger's claim does more than the
//! bare loop: it takes the next binding in turn after the last one served (fairness), checks the
//! binding's concurrency limit and its Sage business's budget, takes a lease and
//! counts the attempt; completing checks the lease is still held. `BENCH_SCENARIOS`
//! (`bindings:active,…`, default `100:100,10000:100,10000:10`) changes the cases.
//! Results are also written to `target/bench/queue.json`.

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

const JOBS: i64 = 20_000;
const CONCURRENCY: usize = 8;
const GOAL: f64 = 0.8;
const GOAL_IDLE_TENANTS: f64 = 0.7;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn scenarios() -> Vec<(i64, i64)> {
    std::env::var("BENCH_SCENARIOS")
        .unwrap_or_else(|_| "100:100,10000:100,10000:10".into())
        .split(',')
        .filter_map(|s| {
            let (b, a) = s.split_once(':')?;
            Some((b.trim().parse().ok()?, a.trim().parse().ok()?))
        })
        .collect()
}

/// Queues `JOBS` jobs spread over `active` of the tenant's bindings, picked across the
/// id range (so the idle ones lie between them).
async fn seed(db: &sqlx::PgPool, tenant: uuid::Uuid, active: i64) {
    sqlx::query("DELETE FROM jobs").execute(db).await.expect("clear");
    sqlx::query(
        "WITH all_b AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS n, count(*) OVER () AS total
                        FROM connector_bindings WHERE tenant_id = $2),
              b AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM all_b WHERE n % GREATEST(total / $3, 1) = 0 LIMIT $3)
         INSERT INTO jobs (binding_id, kind, payload)
         SELECT b.id, 'bench', '{}' FROM generate_series(1, $1) g JOIN b ON b.k = g % $3",
    )
    .bind(JOBS)
    .bind(tenant)
    .bind(active)
    .execute(db)
    .await
    .expect("seed jobs");
    sqlx::query("VACUUM ANALYZE jobs").execute(db).await.expect("analyze");
    sqlx::query("ANALYZE connector_bindings")
        .execute(db)
        .await
        .expect("analyze");
}

/// Runs `CONCURRENCY` loops of `step` until it reports no work; jobs/s, and when each
/// loop stopped (as a share of the run: a loop finding no job it may take while others
/// still run leaves fewer loops for the rest).
async fn drive<F, Fut>(step: F) -> (f64, Vec<f64>)
where
    F: Fn(usize) -> Fut + Send + Sync + Clone + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..CONCURRENCY {
        let (step, done) = (step.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            while step(i).await {
                done.fetch_add(1, Ordering::Relaxed);
            }
            started.elapsed().as_secs_f64()
        }));
    }
    let mut ends = Vec::new();
    for t in tasks {
        ends.push(t.await.expect("task"));
    }
    let n = done.load(Ordering::Relaxed);
    assert_eq!(n, JOBS as u64, "every job was processed once");
    let total = started.elapsed().as_secs_f64();
    ends.sort_by(f64::total_cmp);
    (n as f64 / total, ends.into_iter().map(|e| e / total).collect())
}

const BARE_CLAIM: &str = "UPDATE jobs SET status = 'running' WHERE id = (
       SELECT id FROM jobs WHERE status = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED
     ) RETURNING id";
const BARE_DONE: &str = "UPDATE jobs SET status = 'done' WHERE id = $1";

/// The bare loop's claim and completion of one job on `conn`, or through the pool (a
/// checkout each, as the ledger's statements take); false when none is left.
async fn bare_step(db: &sqlx::PgPool, conn: Option<&mut sqlx::PgConnection>) -> bool {
    let claim = sqlx::query_scalar::<_, i64>(BARE_CLAIM);
    let Some(conn) = conn else {
        let Some(id) = claim.fetch_optional(db).await.expect("claim") else {
            return false;
        };
        sqlx::query(BARE_DONE).bind(id).execute(db).await.expect("done");
        return true;
    };
    let Some(id) = claim.fetch_optional(&mut *conn).await.expect("claim") else {
        return false;
    };
    sqlx::query(BARE_DONE).bind(id).execute(&mut *conn).await.expect("done");
    true
}

/// A connection of its own for each worker (none when `pooled`).
async fn own_connections(db: &sqlx::PgPool, pooled: bool) -> Vec<tokio::sync::Mutex<sqlx::PgConnection>> {
    let mut own = Vec::new();
    if !pooled {
        for _ in 0..CONCURRENCY {
            let conn = sqlx::ConnectOptions::connect(&*db.connect_options())
                .await
                .expect("connection");
            own.push(tokio::sync::Mutex::new(conn));
        }
    }
    own
}

/// The bare loop, each worker on a connection of its own (the floor), or through the
/// pool (sqlx pings a connection at each checkout and return: two round trips more a
/// statement).
async fn bare_loop(db: &sqlx::PgPool, pooled: bool) -> (f64, Vec<f64>) {
    // With the index that makes it fast (dropped before the ledger's turn).
    sqlx::query("CREATE INDEX bench_bare ON jobs (id) WHERE status = 'queued'")
        .execute(db)
        .await
        .expect("index");
    let own = Arc::new(own_connections(db, pooled).await);
    let rate = drive({
        let db = db.clone();
        move |i| {
            let (db, own) = (db.clone(), own.clone());
            async move {
                match own.get(i) {
                    Some(conn) => bare_step(&db, Some(&mut *conn.lock().await)).await,
                    None => bare_step(&db, None).await,
                }
            }
        }
    })
    .await;
    sqlx::query("DROP INDEX bench_bare").execute(db).await.expect("index");
    rate
}

/// The ledger's claim (through the process's claim task) and finish, each worker
/// finishing on a connection of its own as the bare loop does, or through the pool.
async fn ledger_loop(db: &sqlx::PgPool, pooled: bool) -> (f64, Vec<f64>) {
    let lease = Duration::from_secs(60);
    // One process: its loops share the turn.
    let turn = Arc::new(ledger_jobs::Turn::default());
    let own = Arc::new(own_connections(db, pooled).await);
    drive({
        let db = db.clone();
        move |i| {
            let (db, turn, own) = (db.clone(), turn.clone(), own.clone());
            async move {
                let Some(job) = ledger_jobs::claim(&db, &turn, 2, lease).await.expect("claim") else {
                    return false;
                };
                let done = ledger_jobs::JobStatus::Done;
                let finished = match own.get(i) {
                    Some(conn) => ledger_jobs::finish(&mut *conn.lock().await, &job, done, None).await,
                    None => ledger_jobs::finish(&mut db.acquire().await.expect("connection"), &job, done, None).await,
                };
                assert!(finished.expect("finish"));
                true
            }
        }
    })
    .await
}

/// Median time of `f` over 200 calls, in µs, after 400 to warm up: each pooled
/// connection plans a prepared statement afresh for its first five runs before Postgres
/// settles on a generic plan, which a long-running worker always has.
async fn median_us<F, Fut>(f: F) -> f64
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..400 {
        f().await;
    }
    let mut samples: Vec<f64> = Vec::new();
    for _ in 0..200 {
        let started = Instant::now();
        f().await;
        samples.push(started.elapsed().as_secs_f64() * 1e6);
    }
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// An idle worker's poll (a claim finding nothing, and when the next job falls due),
/// and a bare `SELECT 1` on a connection of its own (the polls come back to back, so
/// the claim task keeps its connection too) and through the pool, in µs.
async fn idle_poll(db: &sqlx::PgPool) -> (f64, f64, f64) {
    sqlx::query("DELETE FROM jobs").execute(db).await.expect("clear");
    // Idle, not empty: a few jobs wait out a backoff.
    sqlx::query(
        "INSERT INTO jobs (binding_id, kind, payload, run_at)
         SELECT id, 'bench', '{}', now() + interval '1 hour' FROM connector_bindings ORDER BY id LIMIT 3",
    )
    .execute(db)
    .await
    .expect("backoffs");
    sqlx::query("VACUUM ANALYZE jobs").execute(db).await.expect("analyze");
    let turn = ledger_jobs::Turn::default();
    let poll = median_us(|| async {
        let claim = ledger_jobs::claim_or_wait(db, &turn, 2, Duration::from_secs(60))
            .await
            .expect("claim");
        assert!(
            matches!(claim, ledger_jobs::Claim::Idle { due_in: Some(_) }),
            "{claim:?}"
        );
    })
    .await;
    let own = own_connections(db, false).await.remove(0);
    let floor = median_us(|| async {
        let _: i32 = sqlx::query_scalar("SELECT 1")
            .fetch_one(&mut *own.lock().await)
            .await
            .expect("floor");
    })
    .await;
    let pooled = median_us(|| async {
        let _: i32 = sqlx::query_scalar("SELECT 1").fetch_one(db).await.expect("floor");
    })
    .await;
    (poll, floor, pooled)
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
    let db = app.state.db.clone();
    let mut bindings = 0_i64;
    let mut cases = Vec::new();
    let mut idle = Vec::new();
    println!("job queue benchmark ({JOBS} jobs per case, {CONCURRENCY} workers, one database)");
    for (want, active) in scenarios() {
        if want > bindings {
            sqlx::query(
                "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status)
                 SELECT gen_random_uuid(), $1, 'https://shop' || g || '.example', 'active' FROM generate_series($3 + 1, $2) g",
            )
            .bind(tenant)
            .bind(want)
            .bind(bindings)
            .execute(&db)
            .await
            .expect("bindings");
            bindings = want;
            let (poll, floor, pooled) = idle_poll(&db).await;
            println!(
                "  idle poll at {bindings:>6} bindings: {poll:>7.0} µs · bare SELECT 1 {floor:>5.0} µs · {:.1}× the floor (SELECT 1 through the pool {pooled:.0} µs)",
                poll / floor
            );
            idle.push(serde_json::json!({ "bindings": bindings, "poll_us": poll.round(), "floor_us": floor.round(), "times_floor": (poll / floor * 10.0).round() / 10.0, "floor_pooled_us": pooled.round() }));
        }
        seed(&db, tenant, active).await;
        let (bare, bare_ends) = bare_loop(&db, false).await;
        seed(&db, tenant, active).await;
        let (pooled, _) = bare_loop(&db, true).await;
        seed(&db, tenant, active).await;
        let (ledger, ledger_ends) = ledger_loop(&db, false).await;
        seed(&db, tenant, active).await;
        let (ledger_pooled, _) = ledger_loop(&db, true).await;
        let ratio = ledger / bare;
        let ends = |e: &[f64]| {
            e.iter()
                .map(|x| format!("{:.0}%", x * 100.0))
                .collect::<Vec<_>>()
                .join(" ")
        };
        println!(
            "      loops stopped at (share of the run): bare {} · ledger {}",
            ends(&bare_ends),
            ends(&ledger_ends)
        );
        let goal = if active == bindings { GOAL } else { GOAL_IDLE_TENANTS };
        println!(
            "      through the pool (a checkout a statement): bare {pooled:>6.0} jobs/s · ledger {ledger_pooled:>6.0} jobs/s · ratio {:.2}",
            ledger_pooled / pooled
        );
        println!(
            "  {bindings:>6} bindings, {active:>5} with work: bare SKIP LOCKED loop {bare:>6.0} jobs/s · ledger claim + complete {ledger:>6.0} jobs/s · ratio {ratio:.2} (goal ≥ {goal})"
        );
        cases.push(serde_json::json!({
            "bindings": bindings, "active": active, "bare_jobs_per_s": bare.round(), "ledger_jobs_per_s": ledger.round(),
            "ratio": (ratio * 100.0).round() / 100.0, "goal": goal,
            "bare_pooled_jobs_per_s": pooled.round(), "ledger_pooled_jobs_per_s": ledger_pooled.round(),
            "pooled_ratio": (ledger_pooled / pooled * 100.0).round() / 100.0,
        }));
    }
    let report = serde_json::json!({ "jobs": JOBS, "concurrency": CONCURRENCY, "cases": cases, "idle_poll": idle });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("queue.json"),
        serde_json::to_vec_pretty(&report).unwrap_or_default(),
    );
}
