//! Reliability (issue 14): a store clock off in either direction loses no event and says
//! so; a revoked binding's tile is red, not "unreachable"; a re-delivered folded event is
//! answered with its run; a job that never finishes dies; one replica pings the stores.

use std::time::Duration;

use ledger_e2e::{count, event_body, module_token, post_event};
use ledger_magento_callback::health::{self, PingOutcome};
use ledger_sandbox::magento::{OutboxStatus, StoreConfig};
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

async fn skew_of(app: &TestApp, paired: &PairedStore) -> Option<i32> {
    sqlx::query_scalar("SELECT store_clock_skew_secs FROM connector_bindings WHERE id = $1")
        .bind(paired.binding_id.0)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

async fn magento_status(app: &TestApp, paired: &PairedStore) -> String {
    sqlx::query_scalar("SELECT magento_connection_status FROM connector_bindings WHERE id = $1")
        .bind(paired.binding_id.0)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

/// Drains the outbox after its (divided) backoff; every row must have been sent.
async fn drain_after_backoff(paired: &PairedStore) -> ledger_sandbox::magento::DrainReport {
    tokio::time::sleep(Duration::from_millis(150)).await;
    paired.store.store.drain_once().await
}

#[tokio::test]
async fn a_store_clock_ahead_waits_its_events_says_so_and_then_delivers_them() {
    let app = TestApp::spawn().await;
    let paired = app
        .paired_store_with(StoreConfig {
            backoff_divisor: 1000,
            ..StoreConfig::default()
        })
        .await;
    let store = &paired.store.store;
    store.set_clock_skew(95);
    store.place_order(false);
    let report = store.drain_once().await;
    assert!(report.sent >= 1, "{report:?}");
    assert_eq!(
        (report.dead_lettered, report.succeeded),
        (0, 0),
        "a 503, retried: nothing dead-lettered ({report:?})"
    );
    assert!(
        store.outbox().iter().all(|r| r.last_status_code == Some(503)),
        "{:?}",
        store.outbox()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 0);
    let skew = skew_of(&app, &paired).await.expect("the skew is recorded");
    assert!((93..=96).contains(&skew), "{skew}");

    // The tile is red and says why; so do the dashboard and the ops console.
    let health = store.fetch_tile_health().await;
    let status = health["binding"]["status"].as_str().unwrap_or_default().to_owned();
    assert!(
        status.starts_with("store clock 9") && status.ends_with("s ahead — fix NTP"),
        "{health}"
    );
    assert_eq!(ledger_sandbox::magento::tile_verdict(true, &health)["state"], "error");
    let session = app.session(&paired.merchant).await;
    let page = app
        .http
        .get(app.url(&format!("/dashboard/bindings/{}", paired.binding_id)))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains("id=\"store-clock\"") && page.contains("s ahead — fix NTP"),
        "{page}"
    );
    sqlx::query("UPDATE accounts SET is_operator = true WHERE id = $1")
        .bind(paired.merchant.account_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    let ops = app
        .http
        .get(app.url("/ops"))
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(ops.contains("s ahead — fix NTP"), "{ops}");

    // NTP fixed: the retried events are accepted and the warning goes.
    store.set_clock_skew(0);
    let report = drain_after_backoff(&paired).await;
    assert_eq!((report.succeeded, report.dead_lettered), (report.sent, 0), "{report:?}");
    assert!(store.outbox().iter().all(|r| r.status == OutboxStatus::Succeeded));
    assert_eq!(skew_of(&app, &paired).await, None, "back in time");
    let health = store.fetch_tile_health().await;
    assert_eq!(
        health["binding"]["status"], "",
        "setup unfinished, nothing else: {health}"
    );
}

#[tokio::test]
async fn a_store_clock_behind_gets_tokens_it_accepts_and_is_never_called_revoked() {
    let app = TestApp::spawn().await;
    let paired = app
        .paired_store_with(StoreConfig {
            backoff_divisor: 1000,
            ..StoreConfig::default()
        })
        .await;
    let store = &paired.store.store;
    let tenant = paired.merchant.tenant_id;
    let url = paired.store.base_url.clone();

    // Two minutes behind: its tokens have expired by the time they arrive.
    store.set_clock_skew(-120);
    store.place_order(false);
    let report = store.drain_once().await;
    assert_eq!((report.dead_lettered, report.succeeded), (0, 0), "{report:?}");
    let skew = skew_of(&app, &paired).await.expect("the skew is recorded");
    assert!((-122..=-119).contains(&skew), "{skew}");
    let health = store.fetch_tile_health().await;
    assert!(
        health["binding"]["status"]
            .as_str()
            .is_some_and(|s| s.ends_with("s behind — fix NTP")),
        "{health}"
    );

    // The ledger's own calls are dated by the store's clock: accepted.
    assert_eq!(
        health::ping(&app.state, paired.binding_id, tenant, &url, Some(skew)).await,
        PingOutcome::Healthy
    );
    assert_eq!(magento_status(&app, &paired).await, "active");

    // Not knowing the skew yet, the store's refusal is told apart from a revoked key by
    // its Date header: the binding is not marked token_revoked, and the skew is learnt.
    sqlx::query("UPDATE connector_bindings SET store_clock_skew_secs = NULL WHERE id = $1")
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    assert_eq!(
        health::ping(&app.state, paired.binding_id, tenant, &url, None).await,
        PingOutcome::Unreachable
    );
    assert_eq!(magento_status(&app, &paired).await, "active", "not token_revoked");
    let learnt = skew_of(&app, &paired).await.expect("learnt from the Date header");
    assert!((-122..=-119).contains(&learnt), "{learnt}");

    store.set_clock_skew(0);
    let report = drain_after_backoff(&paired).await;
    assert_eq!((report.succeeded, report.dead_lettered), (report.sent, 0), "{report:?}");
    assert!(count(&app, "SELECT count(*) FROM received_events").await >= 1);
}

#[tokio::test]
async fn a_revoked_bindings_tile_shows_the_revoked_state() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let store = &paired.store.store;
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/disconnect", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
    // The module still holds its key (the ledger disconnected it, not the admin).
    assert!(store.is_connected());
    let health = store.fetch_tile_health().await;
    assert_eq!(
        health["tenant"]["magento_connection_status"], "token_revoked",
        "{health}"
    );
    assert_eq!(health["binding"]["status"], "revoked");
    let verdict = ledger_sandbox::magento::tile_verdict(true, &health);
    assert_eq!(verdict["state"], "error", "{verdict}");
    assert_ne!(verdict["headline"], "Ledger unreachable", "{verdict}");
}

#[tokio::test]
async fn a_redelivered_folded_event_is_answered_with_the_run_it_joined() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let send = |key: &'static str| {
        let token = module_token(&paired.api_key(), &paired.tenant());
        let app = &app;
        let tenant = paired.tenant();
        async move {
            let res = post_event(
                app,
                &tenant,
                "customer.upserted",
                Some(&token),
                Some(key),
                &event_body(5),
            )
            .await;
            let status = res.status().as_u16();
            (status, res.json::<Value>().await.unwrap_or_default())
        }
    };
    let (status, first) = send("customer.upserted:5:first").await;
    assert_eq!(status, 202, "{first}");
    let (status, folded) = send("customer.upserted:5:second").await;
    assert_eq!(status, 202, "{folded}");
    assert_eq!(
        folded["sync_run_id"], first["sync_run_id"],
        "folded into the waiting run"
    );
    // Its 202 was lost: the module sends it again.
    let (status, again) = send("customer.upserted:5:second").await;
    assert_eq!(status, 202, "never 500 for an event the ledger holds: {again}");
    assert_eq!(again["sync_run_id"], first["sync_run_id"]);
    assert_eq!(again["duplicate"], true);
    assert_eq!(count(&app, "SELECT count(*) FROM sync_runs").await, 1);
}

#[tokio::test]
async fn a_job_whose_worker_never_answers_dies_after_its_attempts() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let max = i32::try_from(app.state.settings.job_max_attempts).unwrap();
    for id in [1, 2] {
        assert_eq!(
            ledger_e2e::send_valid(&app, &paired, "invoice.created", id)
                .await
                .status(),
            202
        );
    }
    // Both claimed and lost (the worker crashed, or held them past the lease): the first
    // on its last attempt, the second with attempts to spare.
    sqlx::query(
        "UPDATE jobs SET status = 'running', lease_id = gen_random_uuid(), locked_until = now() - interval '1 second',
                attempts = CASE WHEN sync_run_id = (SELECT id FROM sync_runs WHERE magento_entity_id = 1) THEN $1 ELSE 1 END",
    )
    .bind(max)
    .execute(&app.state.db)
    .await
    .unwrap();
    let reclaimed = ledger_sage_sync::queue::reclaim_expired(&app.state.db, app.state.settings.job_max_attempts)
        .await
        .unwrap();
    assert_eq!((reclaimed.requeued, reclaimed.poisoned), (1, 1));
    let runs = ledger_e2e::runs(&app).await;
    let poisoned = runs.iter().find(|r| r.magento_entity_id == 1).unwrap();
    assert_eq!(
        (poisoned.status.as_str(), poisoned.error_code.as_deref()),
        ("dead", Some("job_lease_lost"))
    );
    assert!(
        poisoned.message.as_deref().unwrap_or_default().contains("Retry"),
        "{poisoned:?}"
    );
    let other = runs.iter().find(|r| r.magento_entity_id == 2).unwrap();
    assert_ne!(other.status, "dead");
    let jobs: Vec<String> = sqlx::query_scalar("SELECT status FROM jobs ORDER BY id")
        .fetch_all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(jobs, ["dead", "queued"]);
    // The run's history says what happened, and a second pass finds nothing to do.
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sync_attempts WHERE error_code = 'job_lease_lost'"
        )
        .await,
        1
    );
    let again = ledger_sage_sync::queue::reclaim_expired(&app.state.db, app.state.settings.job_max_attempts)
        .await
        .unwrap();
    assert_eq!((again.requeued, again.poisoned), (0, 0));
    // The merchant can retry it once the cause is fixed.
    let res = app
        .http
        .post(app.url(&format!("/v1/runs/{}/retry", poisoned.id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success(), "{}", res.status());
}

#[tokio::test]
async fn one_replica_leads_each_health_pass() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    // Another replica's pass holds the lock: this one pings nobody.
    let mut other = app.state.db.acquire().await.unwrap().detach();
    let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(health::HEALTH_LEADER_LOCK)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(led);
    assert_eq!(health::ping_all(&app.state).await.unwrap(), 0);
    // Its pass over: this replica leads the next one and pings the store.
    sqlx::Connection::close(other).await.unwrap();
    assert_eq!(health::ping_all(&app.state).await.unwrap(), 1);
    assert_eq!(magento_status(&app, &paired).await, "active");
}

#[tokio::test]
async fn an_uncertain_payment_is_found_without_reading_the_contacts_whole_history() {
    let app = TestApp::builder()
        .sage(ledger_sandbox::sage::SageConfig::default())
        .spawn()
        .await;
    let paired = app.connected_store().await;
    // Every method the store offers posts to the business's bank account.
    let bank = app.sage().businesses()[0].bank_accounts[0]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let url = app.url(&format!("/v1/bindings/{}/settings", paired.binding_id));
    let mut settings: Value = app
        .http
        .get(&url)
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    settings["payment_method_map"] =
        serde_json::json!({ "checkmo": bank, "banktransfer": bank, "stripe_payments": bank });
    let res = app
        .http
        .put(&url)
        .bearer_auth(&paired.merchant.token)
        .json(&settings)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let _workers = app.start_workers();
    let store = &paired.store.store;
    let drain = || async {
        while paired.store.store.drain_once().await.sent > 0 {}
        assert!(app.wait_idle(Duration::from_secs(30)).await);
    };
    let (_, invoice) = store.place_order(false);
    drain().await;
    let business = app.sage().businesses()[0].id.clone();
    let books = ledger_e2e::books(&app, &business).await;
    let contact = books["sales_invoices"][0]["contact"]["id"].as_str().unwrap().to_owned();
    // Years of the contact's payments already in Sage (a Web Sales contact has thousands).
    let long_ago = chrono::Utc::now().timestamp() - 400 * 86_400;
    app.sage().with_business_mut(&business, |b| {
        let book = b.books.entry("contact_payments".into()).or_default();
        for n in 0..2_000 {
            book.push(serde_json::json!({
                "id": format!("old-{n}"), "reference": format!("OLD-{n}"), "date": "2025-10-27",
                "contact": { "id": contact }, "contact_id": contact, "total_amount": "1.00",
                "created_at": long_ago, "updated_at": long_ago, "deleted_at": null,
            }));
        }
    });
    // The payment is booked, but Sage's answer never arrives.
    app.sage().set_faults(ledger_sandbox::sage::SageFaults {
        drop_after_commit: 1,
        ..Default::default()
    });
    assert!(store.pay_invoice(invoice));
    while store.drain_once().await.sent > 0 {}
    ledger_e2e::wait_for("the payment to sync", Duration::from_secs(60), async || {
        ledger_e2e::end_backoffs(&app).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        ledger_e2e::runs(&app)
            .await
            .iter()
            .any(|r| r.event_name == "invoice.paid" && !matches!(r.status.as_str(), "pending" | "running"))
    })
    .await;
    let run = ledger_e2e::runs(&app)
        .await
        .into_iter()
        .find(|r| r.event_name == "invoice.paid")
        .expect("a payment run");
    assert_eq!(run.status, "synced", "{run:?}");
    let books = ledger_e2e::books(&app, &business).await;
    let ours = books["contact_payments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| !p["id"].as_str().unwrap_or_default().starts_with("old-"))
        .count();
    assert_eq!(ours, 1, "posted once, found again after the lost answer");
    let lookups: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_attempts a, jsonb_array_elements(a.request->'sage_calls') c
         WHERE a.sync_run_id = $1 AND c->>'method' = 'GET' AND c->>'route' LIKE '/contact_payments%'",
    )
    .bind(run.id)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(lookups, 1, "one narrow page, not the contact's 2,000 payments");
}

#[tokio::test]
async fn retention_empties_old_bodies_and_deletes_old_history_in_batches_led_by_one_worker() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    for id in [1, 2, 3] {
        assert_eq!(
            ledger_e2e::send_valid(&app, &paired, "invoice.created", id)
                .await
                .status(),
            202
        );
    }
    let db = &app.state.db;
    let exec = |sql: &'static str| async move { sqlx::query(sql).execute(db).await.unwrap() };
    // Invoice 1: synced 500 days ago. Invoice 2: synced 40 days ago. Invoice 3: waiting.
    exec("UPDATE received_events SET received_at = now() - interval '500 days' WHERE magento_entity_id = 1").await;
    exec("UPDATE received_events SET received_at = now() - interval '40 days' WHERE magento_entity_id = 2").await;
    exec(
        "UPDATE sync_runs SET status = 'synced', finished_at = now() - (CASE magento_entity_id WHEN 1 THEN 500 ELSE 40 END) * interval '1 day'
         WHERE magento_entity_id IN (1, 2)",
    )
    .await;
    exec(
        "UPDATE jobs SET status = 'done', updated_at = now() - interval '10 days'
         WHERE sync_run_id IN (SELECT id FROM sync_runs WHERE magento_entity_id = 2)",
    )
    .await;
    exec("INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, sage_id) SELECT id, 'invoice', 1, 'SI-1' FROM connector_bindings").await;
    exec("INSERT INTO audit_log (at, actor, action) VALUES (now() - interval '4 years', 'system', 'old'), (now(), 'system', 'new')").await;

    // Another worker's pass in progress: this one does nothing.
    let mut other = db.acquire().await.unwrap().detach();
    let led: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(ledger_sage_sync::retention::RETENTION_LEADER_LOCK)
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert!(led);
    let pass = ledger_sage_sync::retention::run_pass(db, &app.state.settings)
        .await
        .unwrap();
    assert_eq!(pass, None);
    sqlx::Connection::close(other).await.unwrap();

    let pruned = ledger_sage_sync::retention::run_pass(db, &app.state.settings)
        .await
        .unwrap()
        .expect("this worker leads");
    assert_eq!(
        (
            pruned.runs,
            pruned.events,
            pruned.event_bodies,
            pruned.jobs,
            pruned.audit
        ),
        (1, 1, 2, 1, 1),
        "both old bodies emptied (the older one's run and event then deleted): {pruned:?}"
    );
    let left: Vec<i64> = sqlx::query_scalar("SELECT magento_entity_id FROM sync_runs ORDER BY 1")
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(left, [2, 3], "the history inside the retention period stays");
    let bodies: Vec<(i64, Value)> = sqlx::query_as("SELECT magento_entity_id, body FROM received_events ORDER BY 1")
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(
        bodies[0],
        (2, serde_json::json!({})),
        "personal data emptied after 30 days"
    );
    assert_ne!(bodies[1].1, serde_json::json!({}), "a recent body stays");
    assert_eq!(
        count(&app, "SELECT count(*) FROM entity_xref").await,
        1,
        "cross-references are never deleted"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM jobs").await,
        1,
        "the waiting job stays"
    );
    let audit: Vec<String> = sqlx::query_scalar("SELECT action FROM audit_log WHERE actor = 'system' ORDER BY id")
        .fetch_all(db)
        .await
        .unwrap();
    assert_eq!(audit, ["new"]);
    // A second pass finds nothing more.
    let again = ledger_sage_sync::retention::run_pass(db, &app.state.settings)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again, ledger_sage_sync::retention::Pruned::default());
}
