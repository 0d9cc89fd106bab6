//! Webhook ingest benchmark: the real server, real Postgres, signed requests.
//!
//! `cargo bench -p ledger-gateway --bench webhook` prints, in one run:
//! 1. the floor: a bare durable single-row `INSERT` of the same event row, one commit
//!    each, `CONCURRENCY` clients each on a connection of its own; and the same through
//!    the app's pool, where sqlx's ping at each checkout and return adds two round trips;
//! 2. the HTTP exchange's own cost, through the same server and middleware: a route that
//!    answers 202 at once, and one that does the bare insert per request (no grouping,
//!    on connections kept for it, as the floor's and the committers' are);
//! 3. saturation: signed webhooks over HTTP as fast as `CONCURRENCY` clients can send,
//!    with group commit (`LEDGER_INGEST_COMMIT_WINDOW=1ms`) and with each event alone;
//! 4. a steady 1,000 events/s for `STEADY_SECS` seconds, both ways, with percentiles.
//!    At most `MAX_IN_FLIGHT` requests are open at once: a tick that finds them all open
//!    is counted as not sent (the ledger is behind), so a slow machine cannot exhaust
//!    the process's file descriptors.
//!
//! Each phase prints its line as it ends, so a run cut short still reports what it measured.
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
use tokio::sync::{Mutex, Semaphore};

const CONCURRENCY: usize = 32;
const FLOOR_EVENTS: u64 = 20_000;
const SATURATION_EVENTS: u64 = 20_000;
const STEADY_RATE: u64 = 1_000;
const STEADY_SECS: u64 = 15;
/// Open requests the steady phase allows itself; well under the 20,000 descriptors a
/// process may hold here, and far above what 1,000/s needs when the ledger keeps up.
const MAX_IN_FLIGHT: usize = 2_000;

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

/// One webhook: its latency when accepted, `None` when the ledger answered 503 (it could
/// not keep up: its request deadline passed or its pool ran dry — nothing stored) or the
/// connection failed.
async fn send(url: &str, http: &reqwest::Client, signer: &Signer, n: u64) -> Option<Duration> {
    let body = format!(
        r#"{{"magento_entity_id":{n},"website_id":1,"store_id":1,"occurred_at":"2026-11-26T12:00:00Z","payload":{{"increment_id":"{n:09}","paid":false}}}}"#
    );
    let started = Instant::now();
    let res = http
        .post(url.replace("{n}", &n.to_string()))
        .bearer_auth(signer.token())
        .header("content-type", "application/json")
        .header("idempotency-key", format!("invoice.created:{n}"))
        .body(body)
        .send()
        .await
        .ok()?;
    let status = res.status();
    let body = res.bytes().await.unwrap_or_default();
    if status == 503 {
        return None;
    }
    assert_eq!(
        status,
        202,
        "every event is accepted: {}",
        String::from_utf8_lossy(&body)
    );
    Some(started.elapsed())
}

/// The store's webhook URL for `invoice.created`, `{n}` left for [`send`].
fn webhook_url(app: &TestApp, signer: &Signer) -> String {
    format!("{}/webhooks/magento/{}/invoice.created", app.base_url, signer.tenant)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// A test app whose webhooks gather for `window` before sharing a commit, and a signer
/// for its one paired store.
async fn app_with(window: Duration) -> (TestApp, Signer, ledger_core::BindingId) {
    use axum::{
        extract::{Path, State},
        http::StatusCode,
        routing::post,
    };
    // The HTTP exchange without the ledger's work, through the same server and middleware:
    // answered at once, or after the bare insert of the event on a connection kept for
    // such requests (as the ledger's committers keep theirs: no pool pings).
    let kept: Arc<Mutex<Vec<sqlx::PgConnection>>> = Arc::default();
    let bare = axum::Router::new()
        .route(
            "/bench/answer/{n}",
            post(|_: axum::body::Bytes| async { StatusCode::ACCEPTED }),
        )
        .route(
            "/bench/insert/{binding}/{n}",
            post(
                move |State(state): State<ledger_core::AppState>,
                      Path((binding, n)): Path<(uuid::Uuid, u64)>,
                      _: axum::body::Bytes| async move {
                    let conn = kept.lock().await.pop();
                    let mut conn = match conn {
                        Some(conn) => conn,
                        None => sqlx::ConnectOptions::connect(&*state.db.connect_options())
                            .await
                            .expect("connection"),
                    };
                    insert_event(&mut conn, ledger_core::BindingId(binding), n).await;
                    kept.lock().await.push(conn);
                    StatusCode::ACCEPTED
                },
            ),
        );
    let app = TestApp::builder()
        .extra_routes(bare)
        .configure(move |s| {
            s.db_max_connections = 20;
            s.log_level = "warn".into();
            // One binding at full speed: the quota is counted, never reached.
            s.binding_ingest_per_minute = u32::MAX;
            s.ingest_commit_window = window;
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let signer = Signer {
        outbound: *Subkeys::derive(&paired.api_key()).outbound.expose(),
        tenant: paired.tenant(),
    };
    let binding = paired.binding_id;
    (app, signer, binding)
}

/// Stores one event row, bare: one statement, its own commit.
async fn insert_event<'e>(db: impl sqlx::PgExecutor<'e>, binding: ledger_core::BindingId, n: u64) {
    let body = serde_json::json!({"magento_entity_id": n, "website_id": 1, "store_id": 1,
        "occurred_at": "2026-11-26T12:00:00Z", "payload": {"increment_id": format!("{n:09}"), "paid": false}});
    let key = format!("invoice.created:{n}");
    sqlx::query(
        "INSERT INTO received_events (id, binding_id, event_name, idempotency_key, magento_entity_id, website_id, store_id, occurred_at, body, body_sha256)
         VALUES ($1, $2, 'invoice.created', $3, $4, 1, 1, now(), $5, $6)",
    )
    .bind(uuid::Uuid::new_v4())
    .bind(binding.0)
    .bind(&key)
    .bind(n as i64)
    .bind(&body)
    .bind(&ledger_core::crypto::sha256(key.as_bytes())[..])
    .execute(db)
    .await
    .expect("insert");
}

/// The floor: one bare durable `INSERT` of the same event row per transaction, prepared,
/// `CONCURRENCY` clients each on a connection of its own (`pooled`: through the app's
/// pool, where sqlx pings a connection at each checkout and return — two round trips
/// that are not the insert's); events/s.
async fn floor(pool: &sqlx::PgPool, binding: ledger_core::BindingId, pooled: bool, first: u64) -> f64 {
    let counter = Arc::new(AtomicU64::new(first));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CONCURRENCY {
        let (pool, counter) = (pool.clone(), counter.clone());
        let mut own = if pooled {
            None
        } else {
            Some(
                sqlx::ConnectOptions::connect(&*pool.connect_options())
                    .await
                    .expect("connection"),
            )
        };
        tasks.push(tokio::spawn(async move {
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= first + FLOOR_EVENTS {
                    return;
                }
                match own.as_mut() {
                    Some(conn) => insert_event(&mut *conn, binding, n).await,
                    None => insert_event(&pool, binding, n).await,
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    FLOOR_EVENTS as f64 / started.elapsed().as_secs_f64()
}

/// Signed webhooks over HTTP as fast as `CONCURRENCY` clients can send: events/s and
/// the sorted latencies.
async fn saturate(url: &str, signer: &Signer, http: &reqwest::Client, first: u64) -> (f64, Vec<Duration>) {
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
            url.to_owned(),
        );
        tasks.push(tokio::spawn(async move {
            let mut local = Vec::new();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= SATURATION_EVENTS {
                    break;
                }
                local.push(
                    send(&url, &http, &signer, first + n + 1)
                        .await
                        .expect("accepted (closed loop)"),
                );
            }
            latencies.lock().await.extend(local);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let rate = SATURATION_EVENTS as f64 / started.elapsed().as_secs_f64();
    let mut sorted = latencies.lock().await.clone();
    sorted.sort();
    (rate, sorted)
}

/// What one steady phase saw.
struct Steady {
    rate: f64,
    latencies: Vec<Duration>,
    /// Answered 503 or the connection failed: nothing stored.
    refused: usize,
    /// Not sent: `MAX_IN_FLIGHT` requests were already open.
    not_sent: usize,
}

/// A steady `STEADY_RATE` events/s (open loop: requests start on schedule, whatever the
/// latency, up to `MAX_IN_FLIGHT` open at once).
async fn steady(app: &TestApp, signer: &Signer, http: &reqwest::Client) -> Steady {
    let latencies = Arc::new(Mutex::new(Vec::new()));
    let open = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut not_sent = 0;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / STEADY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let url = webhook_url(app, signer);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for i in 0..STEADY_RATE * STEADY_SECS {
        tick.tick().await;
        let Ok(permit) = open.clone().try_acquire_owned() else {
            not_sent += 1;
            continue;
        };
        let (http, signer, latencies, url) = (http.clone(), signer.clone(), latencies.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let latency = send(&url, &http, &signer, 5_000_000 + i).await;
            drop(permit);
            latencies.lock().await.push(latency);
        }));
    }
    for t in tasks {
        t.await.expect("task");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let answers = latencies.lock().await.clone();
    let refused = answers.iter().filter(|l| l.is_none()).count();
    let mut sorted: Vec<Duration> = answers.into_iter().flatten().collect();
    sorted.sort();
    Steady {
        rate: sorted.len() as f64 / elapsed,
        latencies: sorted,
        refused,
        not_sent,
    }
}

fn line(label: &str, rate: f64, l: &[Duration], floor_rate: f64) {
    println!(
        "  {label:<52} {rate:>7.0} events/s  p50 {:.2} ms  p99 {:.2} ms  ({:.2} of the floor)",
        ms(percentile(l, 0.50)),
        ms(percentile(l, 0.99)),
        rate / floor_rate
    );
}

fn steady_line(label: &str, s: &Steady, floor_rate: f64) {
    line(label, s.rate, &s.latencies, floor_rate);
    println!(
        "  {:<52} answered 503 or failed {} of {}, not sent ({MAX_IN_FLIGHT} open) {}",
        "",
        s.refused,
        STEADY_RATE * STEADY_SECS,
        s.not_sent
    );
}

async fn run() {
    let window = Duration::from_millis(1);
    let (app, signer, binding) = app_with(window).await;
    let (alone, alone_signer, _) = app_with(Duration::ZERO).await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(CONCURRENCY)
        .build()
        .expect("client");

    println!(
        "webhook ingest benchmark ({CONCURRENCY} concurrent clients, pool of 20, client and server on one machine)"
    );
    let floor_rate = floor(&app.state.db, binding, false, 1_000_000).await;
    println!(
        "  floor: bare durable single-row INSERT of the event   {floor_rate:>7.0} events/s ({FLOOR_EVENTS} events, one commit each, a connection per client)"
    );
    let pooled_rate = floor(&app.state.db, binding, true, 2_000_000).await;
    println!(
        "  the same through the app's pool of 20                {pooled_rate:>7.0} events/s (sqlx pings at each checkout and return)"
    );
    // The HTTP exchange's own cost (the client signs the same token, sends the same body):
    // alone, and with the bare insert per request. What the ledger does beyond these is its own.
    let (answer_rate, answered) = saturate(
        &format!("{}/bench/answer/{{n}}", app.base_url),
        &signer,
        &http,
        3_000_000,
    )
    .await;
    line(
        "HTTP exchange alone (a route answering 202 at once)",
        answer_rate,
        &answered,
        floor_rate,
    );
    let (http_insert_rate, http_inserted) = saturate(
        &format!("{}/bench/insert/{}/{{n}}", app.base_url, binding.0),
        &signer,
        &http,
        4_000_000,
    )
    .await;
    line(
        "HTTP + the bare insert per request (own connections)",
        http_insert_rate,
        &http_inserted,
        floor_rate,
    );
    let (grouped_rate, grouped) = saturate(&webhook_url(&app, &signer), &signer, &http, 0).await;
    line(
        "webhooks over HTTP, saturated, group commit (1ms)",
        grouped_rate,
        &grouped,
        floor_rate,
    );
    let groups = sqlx::query_scalar::<_, i64>(
        "SELECT count(DISTINCT xmin::text) FROM received_events WHERE magento_entity_id < 1000000",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap_or(0);
    let ratio = grouped_rate / floor_rate;
    println!(
        "  saturated group commit: {SATURATION_EVENTS} events in {groups} commits ({:.1} per commit); goal ≥ 1.00 of the floor: {ratio:.2} ({:.2} of the pooled insert)",
        SATURATION_EVENTS as f64 / groups.max(1) as f64,
        grouped_rate / pooled_rate
    );
    println!(
        "  the same against the HTTP exchange + bare insert: {:.2}; the HTTP exchange alone takes {:.0} µs of this machine's time an event",
        grouped_rate / http_insert_rate,
        1e6 / answer_rate
    );
    let (alone_rate, alone_latencies) = saturate(&webhook_url(&alone, &alone_signer), &alone_signer, &http, 0).await;
    line(
        "webhooks over HTTP, saturated, each commit alone",
        alone_rate,
        &alone_latencies,
        floor_rate,
    );
    let grouped_steady = steady(&app, &signer, &http).await;
    steady_line(
        &format!("webhooks at {STEADY_RATE}/s for {STEADY_SECS} s, group commit"),
        &grouped_steady,
        floor_rate,
    );
    let alone_steady = steady(&alone, &alone_signer, &http).await;
    steady_line(
        &format!("webhooks at {STEADY_RATE}/s for {STEADY_SECS} s, each alone"),
        &alone_steady,
        floor_rate,
    );

    let report = serde_json::json!({
        "floor_events_per_s": floor_rate.round(),
        "floor_pooled_events_per_s": pooled_rate.round(),
        "saturated_events_per_s": grouped_rate.round(),
        "saturated_p50_ms": ms(percentile(&grouped, 0.50)),
        "saturated_p99_ms": ms(percentile(&grouped, 0.99)),
        "ratio_to_floor": ratio,
        "http_alone_events_per_s": answer_rate.round(),
        "http_bare_insert_events_per_s": http_insert_rate.round(),
        "ratio_to_http_bare_insert": grouped_rate / http_insert_rate,
        "saturated_alone_events_per_s": alone_rate.round(),
        "events_per_commit": SATURATION_EVENTS as f64 / groups.max(1) as f64,
        "steady_rate": STEADY_RATE,
        "steady_refused": grouped_steady.refused,
        "steady_not_sent": grouped_steady.not_sent,
        "steady_alone_refused": alone_steady.refused,
        "steady_alone_not_sent": alone_steady.not_sent,
        "steady_p50_ms": ms(percentile(&grouped_steady.latencies, 0.50)),
        "steady_p99_ms": ms(percentile(&grouped_steady.latencies, 0.99)),
        "steady_alone_p50_ms": ms(percentile(&alone_steady.latencies, 0.50)),
        "steady_alone_p99_ms": ms(percentile(&alone_steady.latencies, 0.99)),
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/bench");
    let _ = std::fs::create_dir_all(&dir);
    let _ = std::fs::write(
        dir.join("webhook.json"),
        serde_json::to_string_pretty(&report).expect("json"),
    );
}
