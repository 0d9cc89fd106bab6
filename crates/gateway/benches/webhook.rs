//! Webhook ingest benchmark: the real server, real Postgres, signed requests.
//!
//! `cargo bench -p ledger-gateway --bench webhook` prints, in one run:
//! 1. the floor: the very insert statement the handler runs (`event_ingest::persist`),
//!    called directly on a pool with the same concurrency;
//! 2. saturation: signed webhooks over HTTP as fast as `CONCURRENCY` clients can send;
//! 3. a steady 1,000 events/s for `STEADY_SECS` seconds, with latency percentiles.
//!
//! Client and server share the machine, so the HTTP figures include the load
//! generator's own cost. Results are also written to `target/bench/webhook.json`.

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

use ledger_magento_api::auth::{self, Claims, Subkeys};
use ledger_test_support::TestApp;
use tokio::sync::Mutex;

const CONCURRENCY: usize = 32;
const FLOOR_EVENTS: u64 = 20_000;
const SATURATION_EVENTS: u64 = 20_000;
const STEADY_RATE: u64 = 1_000;
const STEADY_SECS: u64 = 15;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[derive(Debug, Clone)]
struct Signer {
    outbound: [u8; 32],
    tenant: String,
}

impl Signer {
    fn token(&self) -> String {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            iss: "magento".into(),
            sub: self.tenant.clone(),
            aud: "byte8-ledger".into(),
            iat: now,
            nbf: now,
            exp: now + 60,
            jti: uuid::Uuid::new_v4().to_string(),
        };
        auth::sign(&self.outbound, &claims)
    }
}

async fn send(app_url: &str, http: &reqwest::Client, signer: &Signer, n: u64) -> Duration {
    let body = format!(
        r#"{{"magento_entity_id":{n},"website_id":1,"store_id":1,"occurred_at":"2026-11-26T12:00:00Z","payload":{{"increment_id":"{n:09}","paid":false}}}}"#
    );
    let started = Instant::now();
    let res = http
        .post(format!("{app_url}/webhooks/magento/{}/invoice.created", signer.tenant))
        .bearer_auth(signer.token())
        .header("content-type", "application/json")
        .header("idempotency-key", format!("invoice.created:{n}"))
        .body(body)
        .send()
        .await
        .expect("request");
    let status = res.status();
    let _ = res.bytes().await;
    assert_eq!(status, 202, "every event is accepted");
    started.elapsed()
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let app = TestApp::builder()
        .configure(|s| {
            s.db_max_connections = 20;
            s.log_level = "warn".into();
            // One binding at full speed: the quota is counted, never reached.
            s.binding_ingest_per_minute = u32::MAX;
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let signer = Signer {
        outbound: *Subkeys::derive(&paired.api_key()).outbound.expose(),
        tenant: paired.tenant(),
    };
    let counter = Arc::new(AtomicU64::new(1_000_000));

    // 1. The floor: the handler's own statement, prepared, on a pool of the same size.
    let pool = app.state.db.clone();
    let body = serde_json::json!({"magento_entity_id": 1, "website_id": 1, "store_id": 1, "occurred_at": "2026-11-26T12:00:00Z", "payload": {}});
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (pool, counter, body, binding) = (pool.clone(), counter.clone(), body.clone(), paired.binding_id);
        tasks.push(tokio::spawn(async move {
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= 1_000_000 + FLOOR_EVENTS {
                    return;
                }
                let key = format!("invoice.created:{n}");
                let jti = uuid::Uuid::new_v4().to_string();
                let event = ledger_event_ingest::NewEvent {
                    binding_id: binding,
                    event_name: "invoice.created",
                    idempotency_key: &key,
                    magento_entity_id: n as i64,
                    website_id: 1,
                    store_id: 1,
                    occurred_at: None,
                    body: &body,
                    jti: &jti,
                    jti_expires_at: chrono::Utc::now().timestamp() + 90,
                    raw: key.as_bytes(),
                    request_id: None,
                    traceparent: None,
                };
                let stored = ledger_event_ingest::persist(&pool, &event).await.expect("insert");
                assert!(stored.run_id.is_some());
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let floor_rate = FLOOR_EVENTS as f64 / started.elapsed().as_secs_f64();

    // 2. Saturation over HTTP.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");
    let counter = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(SATURATION_EVENTS as usize)));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (http, signer, counter, latencies, url) = (
            http.clone(),
            signer.clone(),
            counter.clone(),
            latencies.clone(),
            app.base_url.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= SATURATION_EVENTS {
                    break;
                }
                local.push(send(&url, &http, &signer, n + 1).await);
            }
            latencies.lock().await.extend(local);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let saturation_rate = SATURATION_EVENTS as f64 / started.elapsed().as_secs_f64();
    let mut saturation = latencies.lock().await.clone();
    saturation.sort();

    // 3. A steady 1,000 events/s (open loop: requests start on schedule, whatever the latency).
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / STEADY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STEADY_RATE * STEADY_SECS {
        tick.tick().await;
        let (http, signer, latencies, url) = (http.clone(), signer.clone(), latencies.clone(), app.base_url.clone());
        tasks.push(tokio::spawn(async move {
            let latency = send(&url, &http, &signer, 5_000_000 + i).await;
            latencies.lock().await.push(latency);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let steady_elapsed = started.elapsed().as_secs_f64();
    let mut steady = latencies.lock().await.clone();
    steady.sort();

    let ratio = saturation_rate / floor_rate;
    println!(
        "webhook ingest benchmark ({CONCURRENCY} concurrent clients, pool of 20, client and server on one machine)"
    );
    println!("  floor: handler's insert statement direct   {floor_rate:>8.0} events/s ({FLOOR_EVENTS} events)");
    println!(
        "  webhooks over HTTP, saturated             {saturation_rate:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  ({:.2} of the floor)",
        ms(percentile(&saturation, 0.50)),
        ms(percentile(&saturation, 0.99)),
        ratio
    );
    println!(
        "  webhooks at {STEADY_RATE}/s for {STEADY_SECS} s              {:>8.0} events/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        steady.len() as f64 / steady_elapsed,
        ms(percentile(&steady, 0.50)),
        ms(percentile(&steady, 0.99)),
        ms(*steady.last().unwrap_or(&Duration::ZERO)),
    );
    let report = serde_json::json!({
        "floor_events_per_s": floor_rate.round(),
        "saturated_events_per_s": saturation_rate.round(),
        "saturated_p50_ms": ms(percentile(&saturation, 0.50)),
        "saturated_p99_ms": ms(percentile(&saturation, 0.99)),
        "ratio_to_floor": ratio,
        "steady_rate": STEADY_RATE,
        "steady_p50_ms": ms(percentile(&steady, 0.50)),
        "steady_p99_ms": ms(percentile(&steady, 0.99)),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("webhook.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    );
}
