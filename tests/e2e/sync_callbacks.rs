//! The sync-state callback to the store: retried while the store is down, the latest
//! state winning per entity, and a callback whose worker died never blocking the queue.

use std::time::Duration;

use ledger_sandbox::{magento::Faults, sage::SageConfig};
use ledger_test_support::{PairedStore, TestApp};

/// The store-callback jobs of an entity: (status, attempts, waiting_for, run_at in the future).
async fn callback_jobs(app: &TestApp, key: &str) -> Vec<(String, i32, Option<String>, bool)> {
    sqlx::query_as(
        "SELECT status, attempts, waiting_for, run_at > now() + interval '20 seconds' FROM jobs
         WHERE kind = 'sync_state' AND entity_key = $1 ORDER BY id",
    )
    .bind(key)
    .fetch_all(&app.state.db)
    .await
    .expect("jobs")
}

fn mirror_status(paired: &PairedStore, id: i64) -> Option<String> {
    paired
        .store
        .store
        .mirror()
        .into_iter()
        .find(|r| r.entity_type == "product" && r.magento_entity_id == id)
        .map(|r| r.sync_status)
}

/// Sends a product event (product sync is off by default: the run is skipped without
/// reading the store, so only the callback meets a fault).
async fn product_event(app: &TestApp, paired: &PairedStore, id: i64, key: &str) {
    let token = ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
    let res = ledger_e2e::post_event(
        app,
        &paired.tenant(),
        "product.upserted",
        Some(&token),
        Some(key),
        &ledger_e2e::event_body(id),
    )
    .await;
    assert_eq!(res.status(), 202);
}

async fn refused_and_waiting(app: &TestApp, paired: &PairedStore, key: &str) {
    ledger_e2e::wait_for(
        "the refused callback to be queued again",
        Duration::from_secs(20),
        async || {
            callback_jobs(app, key)
                .await
                .first()
                .is_some_and(|j| j.0 == "queued" && j.2.is_some())
        },
    )
    .await;
    let jobs = callback_jobs(app, key).await;
    assert_eq!(jobs.len(), 1, "{jobs:?}");
    let (_, attempts, waiting, later) = &jobs[0];
    assert_eq!(waiting.as_deref(), Some("store_unreachable"));
    assert!(later, "an unreachable store is retried after a backoff, not at once");
    assert_eq!(*attempts, 1);
    let id: i64 = key.trim_start_matches("product:").parse().expect("id");
    assert_eq!(mirror_status(paired, id), None, "the store has no state yet");
}

async fn delivered_runs(app: &TestApp, id: i64) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT callback_status FROM sync_runs WHERE magento_entity_id = $1 ORDER BY created_at")
        .bind(id)
        .fetch_all(&app.state.db)
        .await
        .expect("runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_callback_waits_for_a_store_that_is_down_and_the_latest_state_wins() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();

    // The store is down for one call: the callback backs off, the run is not told.
    paired.store.store.set_faults(Faults { status: 503, count: 1 });
    product_event(&app, &paired, 41, "product.upserted:41").await;
    refused_and_waiting(&app, &paired, "product:41").await;
    assert_eq!(delivered_runs(&app, 41).await, [None]);
    // The backoff ends (brought forward here): the store gets the state, the run says so.
    ledger_e2e::end_backoffs(&app).await;
    ledger_e2e::wait_for("the callback to arrive", Duration::from_secs(20), async || {
        delivered_runs(&app, 41).await == [Some("delivered".to_owned())]
    })
    .await;
    assert_eq!(mirror_status(&paired, 41).as_deref(), Some("skipped"));
    assert_eq!(callback_jobs(&app, "product:41").await[0].0, "done");

    // Down again; a newer outcome for the same product arrives while the first state
    // waits: it replaces the waiting one and goes at once. One state reaches the store.
    let calls = paired.store.store.sync_state_calls();
    paired.store.store.set_faults(Faults { status: 503, count: 1 });
    product_event(&app, &paired, 42, "product.upserted:42").await;
    refused_and_waiting(&app, &paired, "product:42").await;
    product_event(&app, &paired, 42, "product.upserted:42:again").await;
    ledger_e2e::wait_for("the newer state to arrive", Duration::from_secs(20), async || {
        delivered_runs(&app, 42).await == [None, Some("delivered".to_owned())]
    })
    .await;
    let jobs = callback_jobs(&app, "product:42").await;
    assert_eq!(jobs.len(), 1, "the newer state replaced the waiting one: {jobs:?}");
    assert_eq!(jobs[0].0, "done");
    assert_eq!(mirror_status(&paired, 42).as_deref(), Some("skipped"));
    assert_eq!(
        paired.store.store.sync_state_calls() - calls,
        1,
        "the store accepted one state: the older one was never sent again"
    );
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_callback_behind_a_newer_state_is_dropped_not_requeued() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    // A worker died delivering an old state (its lease expired) while a newer state for
    // the same invoice was queued, and two more died on another invoice.
    let ids: Vec<i64> = sqlx::query_scalar(
        "INSERT INTO jobs (binding_id, kind, entity_key, payload, status, lease_id, locked_until, attempts)
         VALUES ($1, 'sync_state', 'invoice:1', '{}', 'running', gen_random_uuid(), now() - interval '1 minute', 1),
                ($1, 'sync_state', 'invoice:1', '{}', 'queued', NULL, NULL, 0),
                ($1, 'sync_state', 'invoice:2', '{}', 'running', gen_random_uuid(), now() - interval '1 minute', 1),
                ($1, 'sync_state', 'invoice:2', '{}', 'running', gen_random_uuid(), now() - interval '1 minute', 1),
                ($1, 'sync_event', NULL, '{}', 'running', gen_random_uuid(), now() - interval '1 minute', 1)
         RETURNING id",
    )
    .bind(paired.binding_id.0)
    .fetch_all(&app.state.db)
    .await
    .expect("jobs");
    // Requeueing both old callbacks would break "one queued state per entity" (a unique
    // index): the whole reclaim would fail, and no expired job would ever run again.
    let reclaimed = ledger_jobs::reclaim_expired(&app.state.db, app.state.settings.job_max_attempts)
        .await
        .expect("the reclaim succeeds");
    assert_eq!(reclaimed.requeued, 4);
    let statuses: Vec<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ANY($1) ORDER BY id")
        .bind(&ids)
        .fetch_all(&app.state.db)
        .await
        .expect("statuses");
    assert_eq!(statuses, ["done", "queued", "done", "queued", "queued"]);
}
