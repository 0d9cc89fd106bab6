//! Failure classes, dead letters and the operators' actions on runs, through the API:
//! a transient failure is retried with backoff and then dies; a refusal fails at once
//! and stays failed; retry, retry-dead and skip move runs on and tell the store.

use std::time::{Duration, Instant};

use ledger_sandbox::{
    magento::Faults,
    sage::{SageConfig, SageFaults},
};
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

async fn invoice_run(app: &TestApp, invoice: i64) -> ledger_e2e::Run {
    ledger_e2e::runs(app)
        .await
        .into_iter()
        .find(|r| r.event_name == "invoice.created" && r.magento_entity_id == invoice)
        .expect("the invoice's run")
}

fn chip(paired: &PairedStore, invoice: i64) -> Option<(String, Option<String>)> {
    paired
        .store
        .store
        .mirror()
        .into_iter()
        .find(|r| r.entity_type == "invoice" && r.magento_entity_id == invoice)
        .map(|r| (r.sync_status, r.error_code))
}

async fn post(app: &TestApp, paired: &PairedStore, path: &str) -> (u16, Value) {
    let res = app
        .http
        .post(app.url(path))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn audited(app: &TestApp, action: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = $1")
        .bind(action)
        .fetch_one(&app.state.db)
        .await
        .expect("audit")
}

/// An app whose jobs get `attempts` attempts, a connected store with workers running,
/// and one unpaid invoice placed in the store (its event not sent yet).
async fn one_unpaid_invoice(attempts: u32) -> (TestApp, PairedStore, ledger_test_support::Workers, i64) {
    let app = TestApp::builder()
        .sage(SageConfig::default())
        .configure(move |s| s.job_max_attempts = attempts)
        .spawn()
        .await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let (_, invoice) = paired.store.store.place_order(false);
    (app, paired, workers, invoice)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transient_failure_is_retried_then_dead_and_retry_dead_brings_it_back() {
    let (app, paired, workers, invoice) = one_unpaid_invoice(2).await;
    let store = &paired.store.store;
    // The store answers 500 to both reads: a transient failure, retried after a backoff
    // (about 2 s), then dead at the second attempt.
    store.set_faults(Faults { status: 500, count: 2 });
    let started = Instant::now();
    store.drain_once().await;
    ledger_e2e::wait_for("the run to die", Duration::from_secs(30), async || {
        invoice_run(&app, invoice).await.status == "dead"
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(1500), "the retry waited");
    let run = invoice_run(&app, invoice).await;
    assert_eq!(run.attempts, 2);
    assert_eq!(run.error_code.as_deref(), Some("magento_error"));
    ledger_e2e::wait_for("the store's chip", Duration::from_secs(10), async || {
        chip(&paired, invoice) == Some(("failed".into(), Some("provider".into())))
    })
    .await;
    let business = app.sage().businesses()[0].id.clone();
    let books = ledger_e2e::books(&app, &business).await;
    assert_eq!(books["sales_invoices"].as_array().map_or(0, Vec::len), 0);

    // The merchant retries the binding's dead runs: it syncs, the chip turns Synced.
    let (status, body) = post(
        &app,
        &paired,
        &format!("/v1/bindings/{}/runs/retry-dead", paired.binding_id),
    )
    .await;
    assert_eq!((status, body["retried"].as_u64()), (200, Some(1)), "{body}");
    ledger_e2e::wait_for("the retried run to sync", Duration::from_secs(30), async || {
        invoice_run(&app, invoice).await.status == "synced"
    })
    .await;
    ledger_e2e::wait_for("the chip to turn synced", Duration::from_secs(10), async || {
        chip(&paired, invoice).is_some_and(|c| c.0 == "synced")
    })
    .await;
    let books = ledger_e2e::books(&app, &business).await;
    assert_eq!(books["sales_invoices"].as_array().map_or(0, Vec::len), 1);
    assert_eq!(audited(&app, "run.retried").await, 1);
    // Nothing is dead any more.
    let (status, body) = post(
        &app,
        &paired,
        &format!("/v1/bindings/{}/runs/retry-dead", paired.binding_id),
    )
    .await;
    assert_eq!((status, body["retried"].as_u64()), (200, Some(0)));
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_document_fails_once_and_an_operator_skips_it() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    app.sage().set_faults(SageFaults {
        reject_kind: "sales_invoice".into(),
        reject_writes: 1,
        ..SageFaults::default()
    });
    let (_, invoice) = store.place_order(false);
    store.drain_once().await;
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    let run = invoice_run(&app, invoice).await;
    assert_eq!(run.status, "failed", "{run:?}");
    assert_eq!(
        run.attempts, 1,
        "a refusal is not retried until someone changes something"
    );
    assert!(
        run.error_code.as_deref().is_some_and(|c| c.starts_with("sage_")),
        "{run:?}"
    );
    assert!(
        run.message.as_deref().is_some_and(|m| m.contains("Sage refused")),
        "{run:?}"
    );
    let job: (String, i32) = sqlx::query_as("SELECT status, attempts FROM jobs WHERE sync_run_id = $1")
        .bind(run.id)
        .fetch_one(&app.state.db)
        .await
        .expect("job");
    assert_eq!(job, ("done".to_owned(), 1));
    ledger_e2e::wait_for("the failed chip", Duration::from_secs(10), async || {
        chip(&paired, invoice) == Some(("failed".into(), Some("validation".into())))
    })
    .await;

    // A failed run cannot be skipped twice, and a synced one cannot be retried.
    let (status, _) = post(&app, &paired, &format!("/v1/runs/{}/skip", run.id)).await;
    assert_eq!(status, 204);
    let skipped = invoice_run(&app, invoice).await;
    assert_eq!(skipped.status, "skipped_by_policy");
    let reason: Option<String> = sqlx::query_scalar("SELECT skip_reason FROM sync_runs WHERE id = $1")
        .bind(run.id)
        .fetch_one(&app.state.db)
        .await
        .expect("reason");
    assert_eq!(reason.as_deref(), Some("skipped_by_operator"));
    ledger_e2e::wait_for("the skipped chip", Duration::from_secs(10), async || {
        chip(&paired, invoice).is_some_and(|c| c.0 == "skipped")
    })
    .await;
    let (status, body) = post(&app, &paired, &format!("/v1/runs/{}/skip", run.id)).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("run_finished")), "{body}");
    assert_eq!(audited(&app, "run.skipped").await, 1);

    let (_, second) = store.place_order(false);
    store.drain_once().await;
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    let synced = invoice_run(&app, second).await;
    assert_eq!(synced.status, "synced");
    let (status, body) = post(&app, &paired, &format!("/v1/runs/{}/retry", synced.id)).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("run_not_finished")),
        "{body}"
    );
    let (status, body) = post(&app, &paired, &format!("/v1/runs/{}/retry", uuid::Uuid::new_v4())).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("run_not_found")), "{body}");

    // Another merchant cannot act on this tenant's runs.
    let other = app.merchant().await;
    let res = app
        .http
        .post(app.url(&format!("/v1/runs/{}/retry", run.id)))
        .bearer_auth(&other.token)
        .send()
        .await
        .expect("request");
    assert_eq!(res.status(), 404, "another tenant's run does not exist for them");
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_payment_waits_for_its_invoice_and_customer_updates_coalesce() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].clone();
    let bank = business.bank_accounts[0]["id"].as_str().expect("bank").to_owned();
    let path = format!("/v1/bindings/{}/settings", paired.binding_id);
    let mut settings: Value = app
        .http
        .get(app.url(&path))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .expect("settings")
        .json()
        .await
        .expect("json");
    settings["payment_method_map"] =
        serde_json::json!({ "checkmo": bank, "banktransfer": bank, "stripe_payments": bank });
    let res = app
        .http
        .put(app.url(&path))
        .bearer_auth(&paired.merchant.token)
        .json(&settings)
        .send()
        .await
        .expect("save");
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap_or_default());
    let store = &paired.store.store;
    // Paid by card: its refund names the invoice (an offline method's would not).
    let (_, invoice) = store.place_order_by("stripe_payments", true);
    let memo = store.refund(invoice, true).expect("a partial refund");

    // The payment's and the credit memo's events arrive before their invoice's: they
    // wait, using no attempt, and do not wake each other.
    let res = ledger_e2e::send_valid(&app, &paired, "invoice.paid", invoice).await;
    assert_eq!(res.status(), 202);
    let res = ledger_e2e::send_valid(&app, &paired, "creditmemo.created", memo).await;
    assert_eq!(res.status(), 202);
    let workers = app.start_workers();
    let waiting_sql = "SELECT count(*) FROM jobs WHERE kind = 'sync_event' AND status = 'queued' \
                       AND waiting_for = 'waiting_for_invoice' AND attempts = 0 AND run_at > now() + interval '15 seconds'";
    ledger_e2e::wait_for("both to wait", Duration::from_secs(10), async || {
        ledger_e2e::count(&app, waiting_sql).await == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        ledger_e2e::count(&app, waiting_sql).await,
        2,
        "they wait for the invoice, not for each other"
    );
    assert_eq!(ledger_e2e::count(&app, "SELECT count(*) FROM sync_attempts").await, 0);
    let waiting = ledger_e2e::runs(&app).await;
    assert!(
        waiting.iter().all(|r| r.status == "pending" && r.attempts == 0),
        "{waiting:?}"
    );
    // The invoice arrives and syncs; the payment and the credit note follow at once, not
    // at their next look (30 s on): the invoice's attempt wakes them as it ends.
    let res = ledger_e2e::send_valid(&app, &paired, "invoice.created", invoice).await;
    assert_eq!(res.status(), 202);
    ledger_e2e::wait_for(
        "the payment and the credit note to sync",
        Duration::from_secs(10),
        async || {
            let runs = ledger_e2e::runs(&app).await;
            runs.len() == 3 && runs.iter().all(|r| r.status == "synced")
        },
    )
    .await;
    let books = ledger_e2e::books(&app, &business.id).await;
    assert_eq!(books["sales_invoices"].as_array().map_or(0, Vec::len), 1);
    assert_eq!(books["contact_payments"].as_array().map_or(0, Vec::len), 1);
    assert_eq!(books["sales_credit_notes"].as_array().map_or(0, Vec::len), 1);
    workers.stop().await;

    // Three updates of one customer while no worker runs: one run, on the latest state.
    let customer = store.catalogue().customers[0].id;
    let token = || ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
    let mut run_ids = Vec::new();
    for n in 0..3 {
        let res = ledger_e2e::post_event(
            &app,
            &paired.tenant(),
            "customer.upserted",
            Some(&token()),
            Some(&format!("customer.upserted:{customer}:{n}")),
            &ledger_e2e::event_body(customer),
        )
        .await;
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.expect("json");
        run_ids.push(body["sync_run_id"].as_str().expect("run id").to_owned());
    }
    assert!(run_ids.iter().all(|r| *r == run_ids[0]), "{run_ids:?}");
    let workers = app.start_workers();
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    let (status, coalesced): (String, i32) = sqlx::query_as(
        "SELECT status, coalesced FROM sync_runs WHERE event_name = 'customer.upserted' AND magento_entity_id = $1",
    )
    .bind(customer)
    .fetch_one(&app.state.db)
    .await
    .expect("one run");
    assert_eq!((status.as_str(), coalesced), ("synced", 2));
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_in_maintenance_is_waited_for_without_using_attempts() {
    let (app, paired, workers, invoice) = one_unpaid_invoice(1).await;
    let store = &paired.store.store;
    // Magento's maintenance mode answers 503 (a deploy): even with one attempt allowed,
    // the run is not dead; it waits for the store.
    store.set_faults(Faults { status: 503, count: 1 });
    store.drain_once().await;
    ledger_e2e::wait_for("the run to wait", Duration::from_secs(10), async || {
        invoice_run(&app, invoice).await.error_code.as_deref() == Some("magento_unreachable")
    })
    .await;
    let run = invoice_run(&app, invoice).await;
    assert_eq!(run.status, "pending", "{run:?}");
    let (attempts, later): (i32, bool) =
        sqlx::query_as("SELECT attempts, run_at > now() + interval '20 seconds' FROM jobs WHERE sync_run_id = $1")
            .bind(run.id)
            .fetch_one(&app.state.db)
            .await
            .expect("job");
    assert_eq!((attempts, later), (0, true), "no attempt used; backs off");
    // The store is back (the backoff brought forward here): the invoice syncs.
    ledger_e2e::end_backoffs(&app).await;
    ledger_e2e::wait_for("the invoice to sync", Duration::from_secs(10), async || {
        invoice_run(&app, invoice).await.status == "synced"
    })
    .await;
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_settings_snapshot_cannot_be_read_fails_and_posts_nothing() {
    let app = TestApp::builder()
        .sage(SageConfig::default())
        .configure(|s| s.job_max_attempts = 1)
        .spawn()
        .await;
    let paired = app.connected_store().await;
    let store = &paired.store.store;
    let (_, invoice) = store.place_order(false);
    // Accepted with the binding's settings as its snapshot, then the snapshot is damaged
    // before any worker reads it (a field of the wrong type).
    store.drain_once().await;
    sqlx::query(
        r#"UPDATE sync_runs SET policy = jsonb_set(COALESCE(policy, '{}'), '{sync_unpaid_invoices}', '"yes"')
           WHERE magento_entity_id = $1"#,
    )
    .bind(invoice)
    .execute(&app.state.db)
    .await
    .expect("damage the snapshot");
    let _workers = app.start_workers();
    ledger_e2e::wait_for("the run to end", Duration::from_secs(30), async || {
        matches!(invoice_run(&app, invoice).await.status.as_str(), "dead" | "failed")
    })
    .await;
    let run = invoice_run(&app, invoice).await;
    assert_eq!(
        run.error_code.as_deref(),
        Some("settings_snapshot_unreadable"),
        "{run:?}"
    );
    assert!(
        run.message.as_deref().unwrap_or_default().contains("Retry the run"),
        "{:?}",
        run.message
    );
    let business = app.sage().businesses()[0].id.clone();
    let books = ledger_e2e::books(&app, &business).await;
    assert_eq!(
        books["sales_invoices"].as_array().map_or(0, Vec::len),
        0,
        "nothing posted with the defaults"
    );
}
