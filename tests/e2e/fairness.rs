//! Fairness: one tenant's backlog of 100,000 jobs does not hold back another tenant's
//! fresh event.
#![allow(clippy::print_stderr, reason = "the test reports what it measured")]

use std::time::Duration;

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::TestApp;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_event_overtakes_another_tenants_backlog_of_100k() {
    let app = TestApp::builder()
        .sage(SageConfig {
            rate_limit: None,
            ..SageConfig::default()
        })
        .configure(|s| s.sage_call_budget = 100_000)
        .spawn()
        .await;
    let (a, b) = (app.connected_store().await, app.connected_store().await);

    // Tenant A: 100,000 accepted invoice events waiting (for invoices its store no
    // longer has, so each one costs a store round trip and fails: a busy queue).
    let backlog = sqlx::query_scalar::<_, i64>(
        "WITH ev AS (
           INSERT INTO received_events (id, binding_id, event_name, idempotency_key, magento_entity_id, website_id, store_id, body, body_sha256)
           SELECT gen_random_uuid(), $1, 'invoice.created', 'invoice.created:' || g, 1000000 + g, 1, 1, '{}', sha256(g::text::bytea)
           FROM generate_series(1, 100000) g RETURNING id, magento_entity_id
         ), r AS (
           INSERT INTO sync_runs (id, binding_id, event_id, event_name, entity_type, magento_entity_id)
           SELECT gen_random_uuid(), $1, ev.id, 'invoice.created', 'invoice', ev.magento_entity_id FROM ev RETURNING id
         ), j AS (
           INSERT INTO jobs (binding_id, kind, sync_run_id) SELECT $1, 'sync_event', id FROM r RETURNING 1
         ) SELECT count(*) FROM j",
    )
    .bind(a.binding_id.0)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(backlog, 100_000);
    sqlx::query("ANALYZE jobs").execute(&app.state.db).await.unwrap();

    let workers = app.start_workers();
    tokio::time::sleep(Duration::from_secs(2)).await; // A's backlog is being worked

    // Tenant B: fresh invoices, one at a time; each must finish within a second.
    let mut lags = Vec::new();
    for _ in 0..15 {
        let (_, invoice) = b.store.store.place_order(false);
        let report = b.store.store.drain_once().await;
        assert_eq!(report.succeeded, 1);
        let lag = loop {
            let row: Option<(String, f64)> = sqlx::query_as(
                "SELECT status, EXTRACT(EPOCH FROM finished_at - created_at)::float8 FROM sync_runs
                 WHERE binding_id = $1 AND magento_entity_id = $2 AND finished_at IS NOT NULL",
            )
            .bind(b.binding_id.0)
            .bind(invoice)
            .fetch_optional(&app.state.db)
            .await
            .unwrap();
            if let Some((status, lag)) = row {
                assert_eq!(status, "synced");
                break lag;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        lags.push(lag);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_done: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE binding_id = $1 AND finished_at IS NOT NULL")
            .bind(a.binding_id.0)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    workers.stop().await;
    lags.sort_by(f64::total_cmp);
    let p50 = lags[lags.len() / 2];
    let max = lags[lags.len() - 1];
    eprintln!(
        "tenant B behind a 100k backlog: p50 {:.0} ms, max {:.0} ms over {} events; tenant A finished {a_done} meanwhile",
        p50 * 1000.0,
        max * 1000.0,
        lags.len()
    );
    assert!(a_done > 0, "tenant A's backlog was being worked");
    assert!(a_done < 100_000, "the backlog lasted the whole measurement");
    assert!(max < 1.0, "tenant B waited {max:.3} s behind the backlog");
}

/// Claims go round the bindings with work in id order, one job each, and after the last
/// one start again from the first (in the same statement); a store callback waiting on
/// a binding before the last one served is found the same way.
#[tokio::test]
async fn claims_go_round_the_bindings_and_wrap_after_the_last() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let bindings = bindings(&app, &["active", "active", "active"]).await;
    let mut in_order = bindings.clone();
    in_order.sort();
    // Two jobs on each binding.
    sqlx::query("INSERT INTO jobs (binding_id, kind, payload) SELECT b, 'sync_event', '{}' FROM unnest($1::uuid[]) b, generate_series(1, 2)")
        .bind(&bindings)
        .execute(db)
        .await
        .unwrap();
    let turn = ledger_jobs::Turn::default();
    let lease = Duration::from_secs(60);
    let mut served = Vec::new();
    while let Some(job) = ledger_jobs::claim(db, &turn, 4, lease).await.unwrap() {
        served.push(job.binding_id.0);
    }
    let round: Vec<uuid::Uuid> = in_order.iter().chain(&in_order).copied().collect();
    assert_eq!(
        served, round,
        "one job per binding per round, in id order, then round again"
    );

    // Only a callback left, on the first binding: found by wrapping round from the last.
    sqlx::query(
        "INSERT INTO jobs (binding_id, kind, entity_key, payload) VALUES ($1, 'sync_state', 'invoice:1', '{}')",
    )
    .bind(in_order[0])
    .execute(db)
    .await
    .unwrap();
    let job = ledger_jobs::claim(db, &turn, 4, lease)
        .await
        .unwrap()
        .expect("the callback");
    assert_eq!((job.binding_id.0, job.kind.as_str()), (in_order[0], "sync_state"));
    assert!(ledger_jobs::claim(db, &turn, 4, lease).await.unwrap().is_none());

    // The claim task keeps its connection while claims keep coming, and gives it back to
    // the pool once they stop (after 100 ms): an idle worker holds none between polls.
    ledger_e2e::all_connections_back(db, "the last claim").await;
}

/// A claim never comes back empty while it could have taken a job: a binding whose last
/// job was claimed by another worker between this claim's snapshot and its lock on the
/// binding (most likely when workers share a turn and each binding has one job) is a
/// lost race, and the claim looks again rather than reporting the queue idle.
#[tokio::test]
async fn a_claim_that_loses_a_race_looks_again() {
    const WORKERS: usize = 8;
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let ids = bindings(&app, &["active"; 100]).await;
    sqlx::query("INSERT INTO jobs (binding_id, kind, payload) SELECT b, 'bench', '{}' FROM unnest($1::uuid[]) b")
        .bind(&ids)
        .execute(db)
        .await
        .unwrap();
    let turn = std::sync::Arc::new(ledger_jobs::Turn::default());
    let lease = Duration::from_secs(60);
    let mut workers = Vec::new();
    for _ in 0..WORKERS {
        let (db, turn) = (db.clone(), turn.clone());
        workers.push(tokio::spawn(async move {
            let mut claimed = 0;
            while let Some(job) = ledger_jobs::claim(&db, &turn, 2, lease).await.unwrap() {
                let mut conn = db.acquire().await.unwrap();
                assert!(
                    ledger_jobs::finish(&mut conn, &job, ledger_jobs::JobStatus::Done, None)
                        .await
                        .unwrap()
                );
                claimed += 1;
            }
            // Idle: what is still queued can only be jobs other workers are claiming now.
            let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status = 'queued'")
                .fetch_one(&db)
                .await
                .unwrap();
            (claimed, queued)
        }));
    }
    let mut total = 0;
    for w in workers {
        let (claimed, queued) = w.await.unwrap();
        assert!(
            queued < WORKERS as i64,
            "a worker found nothing to claim while {queued} jobs were queued"
        );
        total += claimed;
    }
    assert_eq!(total, 100, "every job claimed once");
}

/// A binding whose Sage connection needs the merchant (needs_reauth) keeps its documents
/// queued but still has its store callbacks claimed; a revoked one has neither.
#[tokio::test]
async fn a_held_binding_gets_its_callbacks_claimed_and_nothing_else() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let held = bindings(&app, &["needs_reauth", "revoked"]).await;
    for b in &held {
        sqlx::query(
            "INSERT INTO jobs (binding_id, kind, entity_key, payload, run_at) VALUES
               ($1, 'sync_event', NULL, '{}', now() - interval '1 minute'),
               ($1, 'sync_state', 'invoice:7', '{}', now())",
        )
        .bind(b)
        .execute(db)
        .await
        .unwrap();
    }
    let turn = ledger_jobs::Turn::default();
    let lease = Duration::from_secs(60);
    let job = ledger_jobs::claim(db, &turn, 4, lease)
        .await
        .unwrap()
        .expect("the callback");
    assert_eq!((job.binding_id.0, job.kind.as_str()), (held[0], "sync_state"));
    assert!(
        ledger_jobs::claim(db, &turn, 4, lease).await.unwrap().is_none(),
        "the held binding's document and the revoked binding's jobs stay queued"
    );
}

/// A claim that finds nothing says how long until something queued falls due: a
/// backoff on any binding (one at its concurrency limit included), or a business's
/// budget freeing; a store callback due on a held binding is claimed instead.
#[tokio::test]
async fn an_idle_claim_says_when_the_next_job_falls_due() {
    let app = TestApp::spawn().await;
    let db = &app.state.db;
    let b = bindings(&app, &["active", "active", "needs_reauth"]).await;
    let turn = ledger_jobs::Turn::default();
    let lease = Duration::from_secs(60);
    let due_in = || async {
        match ledger_jobs::claim_or_wait(db, &turn, 2, lease).await.unwrap() {
            ledger_jobs::Claim::Idle { due_in } => due_in.map(|d| d.as_secs()),
            ledger_jobs::Claim::Job(job) => panic!("claimed {job:?}"),
        }
    };
    assert_eq!(due_in().await, None, "nothing queued");

    let jobs = |sql: &'static str, binding: uuid::Uuid| async move {
        sqlx::query(sql).bind(binding).execute(db).await.unwrap();
    };
    // A retry in an hour, and a held binding's document (never claimed, never due).
    jobs("INSERT INTO jobs (binding_id, kind, payload, run_at) VALUES ($1, 'sync_event', '{}', now() + interval '1 hour')", b[0]).await;
    jobs(
        "INSERT INTO jobs (binding_id, kind, payload) VALUES ($1, 'sync_event', '{}')",
        b[2],
    )
    .await;
    assert!((3590..=3600).contains(&due_in().await.unwrap()), "the retry in an hour");
    // A binding at its limit of 2 with a job due now and one in ten minutes.
    jobs(
        "INSERT INTO jobs (binding_id, kind, payload, status, run_at) VALUES
           ($1, 'sync_event', '{}', 'running', now()), ($1, 'sync_event', '{}', 'running', now()),
           ($1, 'sync_event', '{}', 'queued', now()), ($1, 'sync_event', '{}', 'queued', now() + interval '10 minutes')",
        b[1],
    )
    .await;
    assert!(
        (590..=600).contains(&due_in().await.unwrap()),
        "the busy binding's later job"
    );
    sqlx::query("INSERT INTO sage_budgets (business_id, blocked_until) VALUES ('biz', now() + interval '5 minutes')")
        .execute(db)
        .await
        .unwrap();
    assert!((290..=300).contains(&due_in().await.unwrap()), "the budget freeing");

    // A store callback due on the held binding: claimed by the same call.
    jobs(
        "INSERT INTO jobs (binding_id, kind, entity_key, payload) VALUES ($1, 'sync_state', 'invoice:9', '{}')",
        b[2],
    )
    .await;
    match ledger_jobs::claim_or_wait(db, &turn, 2, lease).await.unwrap() {
        ledger_jobs::Claim::Job(job) => assert_eq!((job.binding_id.0, job.kind.as_str()), (b[2], "sync_state")),
        idle => panic!("the callback was not claimed: {idle:?}"),
    }
    assert!((290..=300).contains(&due_in().await.unwrap()), "idle again");
}

/// Bindings of one new merchant with the given statuses (no store behind them: the
/// claim reads only the queue), their ids in the same order.
async fn bindings(app: &TestApp, statuses: &[&str]) -> Vec<uuid::Uuid> {
    let merchant = app.merchant().await;
    let mut ids = Vec::new();
    for (n, status) in statuses.iter().enumerate() {
        ids.push(
            sqlx::query_scalar(
                "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status)
                 VALUES (gen_random_uuid(), $1, $2, $3) RETURNING id",
            )
            .bind(merchant.tenant_id.0)
            .bind(format!("https://shop{n}.example"))
            .bind(status)
            .fetch_one(&app.state.db)
            .await
            .unwrap(),
        );
    }
    ids
}
