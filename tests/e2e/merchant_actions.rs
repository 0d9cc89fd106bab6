//! What a merchant's everyday actions mean (issue 13): Retry uses today's settings, a
//! document that does not match Magento is never "Synced", contacts never merge, a new
//! Sage business starts fresh, a lapse heals and a failed payment shows on its invoice.

use std::time::Duration;

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

async fn api(app: &TestApp, paired: &PairedStore, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = app.http.request(method, app.url(path)).bearer_auth(&paired.merchant.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn run_of(app: &TestApp, event: &str, id: i64) -> ledger_e2e::Run {
    ledger_e2e::runs(app)
        .await
        .into_iter()
        .rev()
        .find(|r| r.event_name == event && r.magento_entity_id == id)
        .unwrap_or_else(|| panic!("a run for {event} {id}"))
}

async fn settled(app: &TestApp, event: &str, id: i64) -> ledger_e2e::Run {
    ledger_e2e::wait_for(&format!("{event} {id} to finish"), Duration::from_secs(30), async || {
        ledger_e2e::runs(app)
            .await
            .iter()
            .rev()
            .find(|r| r.event_name == event && r.magento_entity_id == id)
            .is_some_and(|r| !matches!(r.status.as_str(), "pending" | "running"))
    })
    .await;
    run_of(app, event, id).await
}

fn bank_of(app: &TestApp) -> String {
    app.sage().businesses()[0].bank_accounts[0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_mapping_the_payment_method_posts_the_payment() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    let binding = paired.binding_id;
    // Two paid orders by bank transfer; the method is mapped to nothing yet.
    let (_, first) = store.place_order_by("banktransfer", true);
    let (_, second) = store.place_order_by("banktransfer", true);
    store.drain_once().await;
    for invoice in [first, second] {
        assert_eq!(settled(&app, "invoice.created", invoice).await.status, "synced");
        let payment = settled(&app, "invoice.paid", invoice).await;
        assert_eq!(payment.status, "skipped_by_policy");
    }
    let (_, fixable) = api(&app, &paired, reqwest::Method::GET, &format!("/v1/bindings/{binding}/runs/fixable"), None).await;
    assert_eq!(fixable["runs_by_code"]["payment_method_not_mapped"], 2, "{fixable}");

    // The merchant maps the method, then presses Retry on the first payment.
    let url = format!("/v1/bindings/{binding}/settings");
    let (_, mut settings) = api(&app, &paired, reqwest::Method::GET, &url, None).await;
    settings["payment_method_map"]["banktransfer"] = Value::String(bank_of(&app));
    let (status, _) = api(&app, &paired, reqwest::Method::PUT, &url, Some(settings)).await;
    assert_eq!(status, 200);
    let run = run_of(&app, "invoice.paid", first).await;
    let (status, _) = api(&app, &paired, reqwest::Method::POST, &format!("/v1/runs/{}/retry", run.id), None).await;
    assert_eq!(status, 202);
    let retried = settled(&app, "invoice.paid", first).await;
    assert_eq!(retried.status, "synced", "{:?}", retried.message);
    // The history keeps the settings each attempt ran with.
    let (_, detail) = api(&app, &paired, reqwest::Method::GET, &format!("/v1/runs/{}", run.id), None).await;
    let attempts = detail["attempts_detail"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(attempts[0]["policy"]["payment_method_map"].get("banktransfer").is_none());
    assert_eq!(attempts[1]["policy"]["payment_method_map"]["banktransfer"], bank_of(&app));

    // "Retry all the change can fix" takes the other one.
    let (status, retried) = api(
        &app,
        &paired,
        reqwest::Method::POST,
        &format!("/v1/bindings/{binding}/runs/retry-fixable"),
        Some(serde_json::json!({ "codes": ["payment_method_not_mapped"] })),
    )
    .await;
    assert_eq!((status, retried["retried"].as_u64()), (200, Some(1)));
    assert_eq!(settled(&app, "invoice.paid", second).await.status, "synced");
    let business = app.sage().businesses()[0].id.clone();
    let books = ledger_e2e::books(&app, &business).await;
    assert_eq!(books["contact_payments"].as_array().unwrap().len(), 2);
    workers.stop().await;
}
