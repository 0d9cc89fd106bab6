//! History benchmark: the ops console and the audit page on a year of data — 1,000,000
//! sync runs (with their received events) over 365 days across 200 bindings, 1 % failed,
//! and 200,000 audit rows — against the floor of one bare indexed statement, in one run.
//! Then the same pages without the retention migration's indexes, to show what they
//! carry, and one retention pass over the year with a 30-day run retention.
//!
//! `cargo bench -p ledger-gateway --bench history` (seeding takes a minute or two).
//! `BENCH_RUNS` changes the size.

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a benchmark prints its figures and computes rates"
)]

use std::time::{Duration, Instant};

use ledger_test_support::TestApp;

const BINDINGS: i64 = 200;
const AUDIT: i64 = 200_000;
const SAMPLES: usize = 15;

fn runs() -> i64 {
    std::env::var("BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

async fn time_get(app: &TestApp, path: &str, cookie: &str) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..SAMPLES {
        let started = Instant::now();
        let res = app
            .http
            .get(app.url(path))
            .header("cookie", cookie)
            .send()
            .await
            .expect("page");
        assert_eq!(res.status(), 200, "{path}");
        let _ = res.bytes().await.expect("body");
        samples.push(started.elapsed());
    }
    median(samples)
}

async fn floor(db: &sqlx::PgPool) -> Duration {
    let mut samples = Vec::new();
    for _ in 0..SAMPLES * 4 {
        let started = Instant::now();
        let _: Option<uuid::Uuid> = sqlx::query_scalar("SELECT id FROM sync_runs WHERE id = $1")
            .bind(uuid::Uuid::new_v4())
            .fetch_optional(db)
            .await
            .expect("floor");
        samples.push(started.elapsed());
    }
    median(samples)
}

async fn run() {
    let app = TestApp::builder()
        .configure(|s| {
            s.log_level = "warn".into();
            s.db_statement_timeout = Duration::from_secs(600);
        })
        .spawn()
        .await;
    let db = app.state.db.clone();
    let merchant = app.merchant().await;
    sqlx::query("UPDATE accounts SET is_operator = true WHERE id = $1")
        .bind(merchant.account_id.0)
        .execute(&db)
        .await
        .expect("operator");
    let session = app.session(&merchant).await;
    let n = runs();
    let seeding = Instant::now();
    sqlx::query(
        "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status, magento_connection_status)
         SELECT gen_random_uuid(), $1, 'https://shop' || g || '.example', 'active', 'active' FROM generate_series(1, $2) g",
    )
    .bind(merchant.tenant_id.0)
    .bind(BINDINGS)
    .execute(&db)
    .await
    .expect("bindings");
    // A year of events and runs, oldest first, spread over the bindings; 1 % failed.
    sqlx::query(
        "WITH b AS (SELECT id, row_number() OVER (ORDER BY id) - 1 AS k FROM connector_bindings)
         INSERT INTO received_events (id, binding_id, event_name, idempotency_key, magento_entity_id, website_id, store_id, body, body_sha256, received_at)
         SELECT md5('e' || g)::uuid, b.id, 'invoice.created', 'invoice.created:' || g, g, 1, 1, '{\"magento_entity_id\": 1}', sha256(g::text::bytea),
                now() - (g * (31536000.0 / $1)) * interval '1 second'
         FROM generate_series(1, $1) g JOIN b ON b.k = g % $2",
    )
    .bind(n)
    .bind(BINDINGS)
    .execute(&db)
    .await
    .expect("events");
    sqlx::query(
        "INSERT INTO sync_runs (id, binding_id, event_id, event_name, entity_type, magento_entity_id, status, error_code, attempts, created_at, started_at, finished_at, updated_at)
         SELECT md5('r' || e.magento_entity_id)::uuid, e.binding_id, e.id, e.event_name, 'invoice', e.magento_entity_id,
                CASE WHEN e.magento_entity_id % 100 = 0 THEN 'failed' ELSE 'synced' END,
                CASE WHEN e.magento_entity_id % 100 = 0 THEN 'sage_record_invalid' END, 1,
                e.received_at, e.received_at, e.received_at + interval '40 milliseconds', e.received_at + interval '40 milliseconds'
         FROM received_events e",
    )
    .execute(&db)
    .await
    .expect("runs");
    sqlx::query(
        "INSERT INTO audit_log (at, actor, tenant_id, binding_id, action, details)
         SELECT now() - (g * (31536000.0 / $1)) * interval '1 second', 'account:' || gen_random_uuid(),
                CASE WHEN g % 50 = 0 THEN $2 ELSE gen_random_uuid() END, NULL, 'settings.updated', '{}'
         FROM generate_series(1, $1) g",
    )
    .bind(AUDIT)
    .bind(merchant.tenant_id.0)
    .execute(&db)
    .await
    .expect("audit");
    sqlx::query("VACUUM ANALYZE").execute(&db).await.expect("analyze");
    println!(
        "seeded {n} runs and events over 365 days, {BINDINGS} bindings, {AUDIT} audit rows in {:.0} s",
        seeding.elapsed().as_secs_f64()
    );

    let measure = |label: &'static str| {
        let (app, db, cookie) = (&app, db.clone(), session.cookie.clone());
        async move {
            let bare = floor(&db).await;
            let ops = time_get(app, "/ops", &cookie).await;
            let audit = time_get(app, "/dashboard/audit", &cookie).await;
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            println!(
                "{label}: bare indexed statement {:.2} ms · ops console {:.1} ms ({:.0}× the floor) · audit page {:.1} ms ({:.0}× the floor)",
                ms(bare),
                ms(ops),
                ms(ops) / ms(bare),
                ms(audit),
                ms(audit) / ms(bare)
            );
        }
    };
    measure("with the indexes").await;
    for index in [
        "sync_runs_finished",
        "sync_runs_failed_recent",
        "audit_log_binding",
        "audit_log_actor",
    ] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP INDEX {index}")))
            .execute(&db)
            .await
            .expect("drop");
    }
    measure("without the retention migration's indexes").await;
    for sql in [
        "CREATE INDEX sync_runs_finished ON sync_runs (finished_at)",
        "CREATE INDEX sync_runs_failed_recent ON sync_runs (updated_at DESC) WHERE status IN ('failed', 'dead')",
    ] {
        sqlx::query(sql).execute(&db).await.expect("recreate");
    }

    // One retention pass keeping 30 days: ~92 % of the year goes, in 5,000-row batches.
    let mut settings = (*app.state.settings).clone();
    settings.retain_sync_runs = Duration::from_secs(30 * 86_400);
    let started = Instant::now();
    let pruned = ledger_sage_sync::retention::prune(&db, &settings).await.expect("prune");
    let secs = started.elapsed().as_secs_f64();
    println!(
        "retention pass: {} runs and {} events deleted, {} bodies emptied, {} audit rows in {secs:.1} s ({:.0} runs/s)",
        pruned.runs,
        pruned.events,
        pruned.event_bodies,
        pruned.audit,
        pruned.runs as f64 / secs
    );
}
