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
    let reclaimed = ledger_jobs::reclaim_expired(&app.state.db, app.state.settings.job_max_attempts)
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
    let again = ledger_jobs::reclaim_expired(&app.state.db, app.state.settings.job_max_attempts)
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
    let business = app.sage().businesses()[0].id.clone();
    app.map_payments(&paired, &business).await;
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
async fn an_invoice_balance_is_known_from_what_the_ledger_booked_and_read_when_the_merchant_booked_by_hand() {
    let app = TestApp::builder()
        .sage(ledger_sandbox::sage::SageConfig::default())
        .spawn()
        .await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    app.map_payments(&paired, &business).await;
    let _workers = app.start_workers();
    let store = &paired.store.store;
    let drain = || async {
        while paired.store.store.drain_once().await.sent > 0 {}
        ledger_e2e::wait_for("the queue to drain", Duration::from_secs(60), async || {
            ledger_e2e::end_backoffs(&app).await;
            app.wait_idle(Duration::from_millis(500)).await
        })
        .await;
    };
    let run_of = |event: &'static str, id: i64| {
        let app = &app;
        async move {
            ledger_e2e::runs(app)
                .await
                .into_iter()
                .find(|r| r.event_name == event && r.magento_entity_id == id)
                .unwrap_or_else(|| panic!("a run of {event} {id}"))
        }
    };
    let invoice_in_sage = |increment: String| {
        let app = &app;
        let business = business.clone();
        async move {
            let books = ledger_e2e::books(app, &business).await;
            books["sales_invoices"]
                .as_array()
                .unwrap()
                .iter()
                .find(|i| i["reference"].as_str().is_some_and(|r| r.ends_with(&increment)))
                .cloned()
                .expect("the invoice in Sage")
        }
    };
    let increment = |id: i64| store.with_catalogue(|c| c.invoice(id).expect("invoice").increment_id.clone());

    // A refund then the payment: each allocates what the ledger knows the invoice still
    // owes, in the call that books it — no read of the invoice first.
    let (_, first) = store.place_order(false);
    drain().await;
    assert!(store.refund(first, true).is_some());
    drain().await;
    assert!(store.pay_invoice(first));
    drain().await;
    let memo = ledger_e2e::runs(&app)
        .await
        .into_iter()
        .find(|r| r.event_name == "creditmemo.created")
        .expect("a credit memo run");
    assert_eq!(memo.status, "synced", "{memo:?}");
    assert_eq!(
        ledger_e2e::sage_calls(&app, memo.id).await,
        ["POST /sales_credit_notes", "POST /contact_allocations"]
    );
    let paid = run_of("invoice.paid", first).await;
    assert_eq!(paid.status, "synced", "{paid:?}");
    assert_eq!(ledger_e2e::sage_calls(&app, paid.id).await, ["POST /contact_payments"]);
    let sage_first = invoice_in_sage(increment(first)).await;
    assert_eq!(sage_first["outstanding_amount"], "0.00", "{sage_first}");

    // The merchant books 10.00 of the next invoice by hand in Sage: the payment's
    // allocation of the full amount is refused, the invoice is read, and the payment
    // is booked once with what it still owes; the rest is held on account.
    let (_, second) = store.place_order(false);
    drain().await;
    let sage_second = invoice_in_sage(increment(second)).await;
    let id = sage_second["id"].as_str().unwrap().to_owned();
    app.sage().with_business_mut(&business, |b| {
        let invoice = b
            .books
            .get_mut("sales_invoices")
            .unwrap()
            .iter_mut()
            .find(|i| i["id"] == id.as_str())
            .unwrap();
        let open: rust_decimal::Decimal = invoice["outstanding_amount"].as_str().unwrap().parse().unwrap();
        invoice["outstanding_amount"] = serde_json::json!(format!("{:.2}", open - rust_decimal::Decimal::TEN));
        invoice["status"] = serde_json::json!({ "id": "PART_PAID" });
    });
    assert!(store.pay_invoice(second));
    drain().await;
    let paid = run_of("invoice.paid", second).await;
    assert_eq!(paid.status, "synced", "{paid:?}");
    assert_eq!(
        paid.message.as_deref(),
        Some("10.00 was more than the invoice still owed and is held on account.")
    );
    assert_eq!(
        ledger_e2e::sage_calls(&app, paid.id).await,
        [
            "POST /contact_payments",
            "GET /sales_invoices/{id}",
            "POST /contact_payments"
        ]
    );
    assert_eq!(invoice_in_sage(increment(second)).await["outstanding_amount"], "0.00");
    let books = ledger_e2e::books(&app, &business).await;
    let payments = books["contact_payments"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["allocated_artefacts"][0]["artefact_id"] == id.as_str())
        .count();
    assert_eq!(payments, 1, "the refused payment was not booked");
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

#[tokio::test]
async fn the_ops_console_charts_the_queue_as_it_stood_each_five_minutes() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    for id in 1..=4 {
        assert_eq!(
            ledger_e2e::send_valid(&app, &paired, "invoice.created", id)
                .await
                .status(),
            202
        );
    }
    // 1: waiting since 52 min ago; 2: waited from 33 to 17 min ago; 3: a day old, long
    // finished (history never counts); 4: created just now, finished at once.
    sqlx::query(
        "UPDATE sync_runs SET
           created_at = now() - CASE magento_entity_id WHEN 1 THEN interval '52 minutes' WHEN 2 THEN interval '33 minutes'
                                      WHEN 3 THEN interval '2 days' ELSE interval '0' END,
           finished_at = CASE magento_entity_id WHEN 2 THEN now() - interval '17 minutes'
                                      WHEN 3 THEN now() - interval '1 day' WHEN 4 THEN now() END,
           status = CASE WHEN magento_entity_id = 1 THEN status ELSE 'synced' END",
    )
    .execute(&app.state.db)
    .await
    .unwrap();
    sqlx::query("UPDATE accounts SET is_operator = true WHERE id = $1")
        .bind(paired.merchant.account_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    let session = app.session(&paired.merchant).await;
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
    let depth: Vec<&str> = ops
        .split("<title>")
        .skip(1)
        .filter_map(|t| t.split("</title>").next())
        .filter(|t| t.contains(" waiting ") && !t.starts_with("oldest"))
        .collect();
    assert_eq!(
        depth,
        [
            "0 waiting 55 min ago",
            "1 waiting 50 min ago",
            "1 waiting 45 min ago",
            "1 waiting 40 min ago",
            "1 waiting 35 min ago",
            "2 waiting 30 min ago",
            "2 waiting 25 min ago",
            "2 waiting 20 min ago",
            "1 waiting 15 min ago",
            "1 waiting 10 min ago",
            "1 waiting 5 min ago",
            "1 waiting 0 min ago",
        ],
        "{ops}"
    );
    // The oldest waiting run, now: 52 minutes.
    let now_age = ops
        .split("<title>oldest waiting ")
        .filter_map(|t| t.split_once(" s, 0 min ago</title>"))
        .map(|(age, _)| age.parse::<i64>().unwrap())
        .next()
        .expect("an age bar for now");
    assert!((3120..3130).contains(&now_age), "{now_age}");
}

#[tokio::test]
async fn a_heartbeat_outlasts_a_pool_timeout_and_gives_up_only_after_a_whole_lease() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    assert_eq!(
        ledger_e2e::send_valid(&app, &paired, "invoice.created", 1)
            .await
            .status(),
        202
    );
    // (Claimable as if Sage were connected.)
    sqlx::query("UPDATE connector_bindings SET status = 'active'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let lease = Duration::from_secs(3);
    let job = ledger_jobs::claim(&app.state.db, &Default::default(), 4, lease)
        .await
        .unwrap()
        .expect("the job");
    // A pool of one connection, which the test holds: every heartbeat times out.
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_millis(200))
        .connect(app.state.settings.database_url.expose())
        .await
        .unwrap();
    let remaining = || async {
        sqlx::query_scalar::<_, f64>("SELECT extract(epoch FROM locked_until - now())::float8 FROM jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(&app.state.db)
            .await
            .unwrap()
    };

    // The pool is busy past the first renewal (at a third of the lease), then frees.
    let held = pool.acquire().await.unwrap();
    let (stop, lost) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let beat = tokio::spawn(ledger_sage_sync::worker::keep_lease(
        pool.clone(),
        job.clone(),
        lease,
        stop.clone(),
        lost.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    drop(held);
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(!lost.is_cancelled(), "one timeout does not lose the lease");
    let left = remaining().await;
    assert!(left > 1.0, "the lease was renewed after the pool freed: {left} s left");
    stop.cancel();
    beat.await.unwrap();

    // A pool busy for longer than a whole lease: the job is stopped, not run twice.
    let held = pool.acquire().await.unwrap();
    let started = std::time::Instant::now();
    let (stop, lost) = (
        tokio_util::sync::CancellationToken::new(),
        tokio_util::sync::CancellationToken::new(),
    );
    let beat = tokio::spawn(ledger_sage_sync::worker::keep_lease(
        pool.clone(),
        job.clone(),
        lease,
        stop.clone(),
        lost.clone(),
    ));
    tokio::time::timeout(Duration::from_secs(6), lost.cancelled())
        .await
        .expect("the lease is given up once no renewal succeeded for a lease");
    assert!(started.elapsed() >= lease, "not before: {:?}", started.elapsed());
    beat.await.unwrap();
    drop(held);
}

#[tokio::test]
async fn shutdown_stops_a_straggling_job_before_releasing_it() {
    let app = TestApp::builder()
        .sage(ledger_sandbox::sage::SageConfig::default())
        .configure(|s| s.shutdown_deadline = Duration::from_millis(300))
        .spawn()
        .await;
    let paired = app.connected_store().await;
    let store = &paired.store.store;
    store.simulate(1);
    assert_eq!(store.drain_once().await.dead_lettered, 0);
    // Sage answers every call after a second: the job is mid-sync at shutdown.
    app.sage().set_faults(ledger_sandbox::sage::SageFaults {
        api_delay_ms: 1000,
        ..Default::default()
    });
    let workers = app.start_workers();
    let started = std::time::Instant::now();
    while count(&app, "SELECT count(*) FROM jobs WHERE status = 'running'").await == 0 {
        assert!(started.elapsed() < Duration::from_secs(20), "a job starts");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopping = std::time::Instant::now();
    workers.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(2),
        "stopped within the deadline: {:?}",
        stopping.elapsed()
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM jobs WHERE status = 'running' OR lease_id IS NOT NULL"
        )
        .await,
        0,
        "every job released"
    );
    // Nothing of the stopped job goes on: at most the call in flight is answered, and no
    // new one is made (released while still running, it would go on calling every second).
    let calls = app.sage().stats().api_calls;
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let after = app.sage().stats().api_calls;
    assert!(after <= calls + 1, "{calls} calls at shutdown, {after} after");
}

#[tokio::test]
async fn a_health_pass_stops_at_shutdown_however_many_stores_it_waits_for() {
    let app = TestApp::builder()
        .configure(|s| s.magento_request_timeout = Duration::from_secs(30))
        .spawn()
        .await;
    // Stores that accept a connection and never answer.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = hole.local_addr().unwrap();
    let accepted = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = accepted.clone();
    let _hole = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = hole.accept().await {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            open.push(socket);
        }
    });
    for _ in 0..3 {
        let paired = app.paired_store().await;
        sqlx::query("UPDATE connector_bindings SET magento_base_url = $2 WHERE id = $1")
            .bind(paired.binding_id.0)
            .bind(format!("http://{addr}/"))
            .execute(&app.state.db)
            .await
            .unwrap();
    }
    let workers = app.start_workers();
    let started = std::time::Instant::now();
    while accepted.load(std::sync::atomic::Ordering::SeqCst) < 3 {
        assert!(started.elapsed() < Duration::from_secs(10), "the pass pings the stores");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopping = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(3), workers.stop())
        .await
        .expect("shutdown does not wait for the pass's 30 s pings");
    assert!(stopping.elapsed() < Duration::from_secs(3));
}

/// An idle worker process makes no query of its own to sweep for expired leases: its
/// idle claims (one a poll interval between its workers) say when the earliest running
/// lease ends, and the sweep runs only once it may have. A job whose worker died is
/// still taken back within a second or two of its lease ending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_worker_sweeps_for_expired_leases_only_once_one_may_have_ended() {
    let app = TestApp::builder()
        .configure(|s| s.job_poll_interval = Duration::from_millis(500))
        .spawn()
        .await;
    let db = &app.state.db;
    // Every statement that updates jobs, as sent (a statement-level trigger fires
    // whether or not a row changed): the claims and the sweeps.
    sqlx::raw_sql(
        "CREATE TABLE seen (q text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp());
         CREATE FUNCTION see() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO seen (q) VALUES (current_query()); RETURN NULL; END $$;
         CREATE TRIGGER see AFTER UPDATE ON jobs FOR EACH STATEMENT EXECUTE FUNCTION see();",
    )
    .execute(db)
    .await
    .unwrap();
    let workers = app.start_workers();
    // The loops' first passes (each sweeps once at start), then four quiet seconds.
    tokio::time::sleep(Duration::from_secs(2)).await;
    sqlx::query("TRUNCATE seen").execute(db).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (claims, sweeps) = sqlx::query_as::<_, (i64, i64)>(
        "SELECT count(*) FILTER (WHERE q LIKE '%WITH RECURSIVE walk%'), count(*) FILTER (WHERE q LIKE '%expired AS%')
         FROM seen",
    )
    .fetch_one(db)
    .await
    .unwrap();
    assert!(
        (4..=16).contains(&claims),
        "the idle process claims about once a poll interval, not once per worker: {claims} claims in 4 s"
    );
    assert_eq!(
        sweeps, 0,
        "an idle process swept for expired leases {sweeps} times in 4 s with none running"
    );

    // A job claimed by a worker that died, its lease ending in a second (on a paused
    // binding, so nothing claims it again once it is back in the queue).
    let merchant = app.merchant().await;
    let (job, ends): (i64, chrono::DateTime<chrono::Utc>) = sqlx::query_as(
        "WITH b AS (INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status)
                    VALUES (gen_random_uuid(), $1, 'https://gone.example', 'paused') RETURNING id)
         INSERT INTO jobs (binding_id, kind, payload, status, lease_id, locked_until, attempts)
         SELECT id, 'sync_event', '{}', 'running', gen_random_uuid(), now() + interval '1 second', 1 FROM b
         RETURNING id, locked_until",
    )
    .bind(merchant.tenant_id.0)
    .fetch_one(db)
    .await
    .unwrap();
    let started = std::time::Instant::now();
    loop {
        let status: String = sqlx::query_scalar("SELECT status FROM jobs WHERE id = $1")
            .bind(job)
            .fetch_one(db)
            .await
            .unwrap();
        if status == "queued" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the dead worker's job is still {status} 5 s later (its lease ended after 1 s)"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let early: i64 = sqlx::query_scalar("SELECT count(*) FROM seen WHERE q LIKE '%expired AS%' AND at < $1")
        .bind(ends)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(early, 0, "no sweep before the lease could end");
    workers.stop().await;
}
