//! The sandbox store's outbox behaves like the module's cron (contract §7): 2xx →
//! succeeded, 4xx → dead-lettered at once with the body kept, 5xx/timeout → the backoff
//! ladder and dead after 10 attempts, nothing sent while unpaired.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU16, AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Router, http::StatusCode, routing::post};
use ledger_sandbox::magento::{OutboxStatus, RunningStore, StoreConfig};

/// A stand-in ledger answering every webhook with `status`.
async fn fake_ledger(status: Arc<AtomicU16>, hits: Arc<AtomicUsize>) -> String {
    let app = Router::new().route(
        "/webhooks/magento/{tenant}/{event}",
        post(move || {
            let (status, hits) = (status.clone(), hits.clone());
            async move {
                hits.fetch_add(1, Ordering::SeqCst);
                let s = StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap();
                (s, r#"{"code":"x","detail":"what to fix"}"#)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    url
}

async fn pair(running: &RunningStore, ledger: &str) {
    let code = running.store.generate_pairing_code();
    let res = reqwest::Client::new()
        .post(format!("{}/rest/V1/byte8/setup/pair", running.base_url))
        .json(&serde_json::json!({ "pairing_code": code, "tenant_id": "tenant-1", "byte8_api_key": "byte8_lk_x", "ledger_base_url": format!("{ledger}/") }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.text().await.unwrap(), "[]");
}

#[tokio::test]
async fn outbox_follows_the_modules_delivery_rules() {
    let status = Arc::new(AtomicU16::new(503));
    let hits = Arc::new(AtomicUsize::new(0));
    let ledger = fake_ledger(status.clone(), hits.clone()).await;
    // 1000x faster ladder: 60 s → 60 ms.
    let running = RunningStore::spawn(StoreConfig {
        drain_interval: Duration::from_secs(3600),
        backoff_divisor: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    running.store.save_customer(1);
    assert_eq!(
        running.store.drain_once().await.sent,
        0,
        "unpaired: rows stay pending, nothing sent"
    );
    pair(&running, &ledger).await;
    assert_eq!(running.store.ledger_base_url(), ledger, "trailing slash stripped");

    // Transient: retried along the ladder (scaled 1000x), never before each wait.
    let report = running.store.drain_once().await;
    assert_eq!(report.retrying, 1);
    assert_eq!(running.store.drain_once().await.sent, 0, "not due yet");
    let mut waits = vec![running.store.outbox()[0].last_backoff_ms.unwrap()];
    for _ in 0..9 {
        running.store.make_due();
        assert_eq!(running.store.drain_once().await.sent, 1);
        waits.push(running.store.outbox()[0].last_backoff_ms.unwrap());
    }
    let ladder: Vec<u64> = ledger_sandbox::magento::BACKOFF_LADDER
        .iter()
        .map(|s| s * 1000 / 1000)
        .collect();
    assert_eq!(&waits[..9], &ladder[..], "60 s, 300 s, 1800 s, ... 86400 s");
    let row = running.store.outbox()[0].clone();
    assert_eq!((row.status, row.attempts), (OutboxStatus::DeadLettered, 10), "{row:?}");
    assert!(row.last_error.as_deref().unwrap().starts_with("transient_exhausted:"));
    assert_eq!(row.last_status_code, None);

    // 4xx: dead-lettered at once, body kept for the merchant.
    status.store(422, Ordering::SeqCst);
    running.store.save_product(2);
    let report = running.store.drain_once().await;
    assert_eq!(report.dead_lettered, 1);
    let row = running.store.outbox()[1].clone();
    assert_eq!(row.attempts, 1);
    assert_eq!(
        row.last_error.as_deref(),
        Some(r#"HTTP 422: {"code":"x","detail":"what to fix"}"#)
    );

    // Requeue (operator) re-sends the same key and body; 2xx → succeeded.
    status.store(202, Ordering::SeqCst);
    assert_eq!(running.store.requeue(None), 2);
    let report = running.store.drain_once().await;
    assert_eq!(report.succeeded, 2);
    assert_eq!(hits.load(Ordering::SeqCst), 10 + 1 + 2);
}

#[tokio::test]
async fn a_drain_takes_at_most_fifty_rows_in_id_order() {
    let status = Arc::new(AtomicU16::new(202));
    let hits = Arc::new(AtomicUsize::new(0));
    let ledger = fake_ledger(status, hits.clone()).await;
    let running = RunningStore::spawn(StoreConfig {
        drain_interval: Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    pair(&running, &ledger).await;
    for id in 1..=60 {
        running
            .store
            .enqueue("customer.upserted", id, 1, 0, serde_json::json!({}));
    }
    assert_eq!(running.store.drain_once().await.succeeded, 50);
    let outbox = running.store.outbox();
    assert!(outbox[..50].iter().all(|r| r.status == OutboxStatus::Succeeded));
    assert!(outbox[50..].iter().all(|r| r.status == OutboxStatus::Pending));
    assert_eq!(running.store.drain_once().await.succeeded, 10);
}
