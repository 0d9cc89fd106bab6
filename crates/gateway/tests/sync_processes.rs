//! The sync engine across real `ledger worker` processes: the shared Sage call budget,
//! and crash safety under repeated SIGKILL.
#![allow(clippy::print_stderr, reason = "the tests report what they measured")]

mod common;

use std::{collections::HashSet, process::Command, time::Duration};

use common::*;
use ledger_sandbox::sage::SageConfig;
use ledger_test_support::PairedStore;

/// The two tests each load both cores; running them side by side would measure the
/// machine, not the budget.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Sends everything the store's outbox holds.
async fn drain_all(paired: &PairedStore) {
    loop {
        let report = paired.store.store.drain_once().await;
        assert_eq!(report.dead_lettered, 0, "{report:?}");
        if report.sent == 0 {
            return;
        }
    }
}

async fn business_of(app: &TestApp, paired: &PairedStore) -> String {
    sqlx::query_scalar("SELECT business_id FROM sage_connections WHERE binding_id = $1")
        .bind(paired.binding_id.0)
        .fetch_one(&app.state.db)
        .await
        .unwrap()
}

fn kill(child: &std::process::Child, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// Two processes, two bindings on one Sage business, a backlog far larger than the
/// budget, and a Sage that answers 429 past the same limit: the budget is shared (no
/// 429 at all) and used fully (at least 95 % of it over five windows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_worker_processes_share_one_budget_and_use_it_fully() {
    let _serial = SERIAL.lock().await;
    const BUDGET: usize = 40;
    const WINDOW_MS: i64 = 4_000;
    const WINDOWS: i64 = 5;
    let (app, keys) = app_with_keys(
        SageConfig {
            rate_limit: Some((BUDGET, WINDOW_MS)),
            ..SageConfig::default()
        },
        |s| {
            s.sage_call_budget = BUDGET as u32;
            s.sage_call_window = Duration::from_millis(WINDOW_MS as u64);
        },
    )
    .await;
    let (a, b) = (app.connected_store().await, app.connected_store().await);
    let business = business_of(&app, &a).await;
    assert_eq!(
        business,
        business_of(&app, &b).await,
        "both bindings book into one business"
    );
    for paired in [&a, &b] {
        paired.store.store.simulate(60);
        drain_all(paired).await;
    }
    // Setup calls (connecting, reference data) age out of the window first.
    tokio::time::sleep(Duration::from_millis(WINDOW_MS as u64 + 200)).await;

    let since = chrono::Utc::now().timestamp_millis();
    let env = [
        ("LEDGER_SAGE_CALL_BUDGET", BUDGET.to_string()),
        ("LEDGER_SAGE_CALL_WINDOW", format!("{WINDOW_MS}ms")),
        ("LEDGER_JOB_POLL_INTERVAL", "1s".to_owned()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let first = spawn(&mut worker(&app, &keys, &env));
    let second = spawn(&mut worker(&app, &keys, &env));
    tokio::time::sleep(Duration::from_millis((WINDOW_MS * WINDOWS) as u64 + 2_500)).await;
    kill(&first, "-KILL");
    kill(&second, "-KILL");

    let sage = app.sage();
    let stats = sage.businesses().into_iter().find(|x| x.id == business).unwrap();
    assert_eq!(stats.rate_limited, 0, "no call was refused with 429");
    let calls: Vec<i64> = stats.accepted.iter().copied().filter(|t| *t >= since).collect();
    let t0 = *calls.first().expect("the workers called Sage");
    let measured = calls.iter().filter(|t| **t < t0 + WINDOW_MS * WINDOWS).count();
    let ceiling = BUDGET * WINDOWS as usize;
    // Never more than the budget in any window (Sage would have said 429, but check).
    for (i, t) in calls.iter().enumerate() {
        let in_window = calls[i..].iter().take_while(|u| **u < t + WINDOW_MS).count();
        assert!(in_window <= BUDGET, "{in_window} calls in the window starting at {t}");
    }
    let usage = measured as f64 / ceiling as f64;
    eprintln!(
        "budget usage over {WINDOWS} windows: {measured}/{ceiling} calls = {:.1} %",
        usage * 100.0
    );
    assert!(usage >= 0.95, "the backlog used {measured} of {ceiling} calls");

    let backlog: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') AND kind = 'sync_event'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert!(backlog > 0, "the backlog outlasted the measurement");
    let workers: HashSet<String> =
        sqlx::query_scalar("SELECT DISTINCT worker FROM sync_attempts WHERE worker IS NOT NULL")
            .fetch_all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert!(
        workers.contains(&first.id().to_string()) && workers.contains(&second.id().to_string()),
        "both processes worked: {workers:?}"
    );
}

/// A tiny deterministic generator (no dependency for one test's dice).
struct Dice(u64);

impl Dice {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

/// Thousands of events, two worker processes, one of them SIGKILLed every second or
/// two and replaced, Sage dropping some answers after committing: every event ends
/// terminal, Sage holds each document once, and the store's chips agree with the runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_backlog_loses_and_repeats_nothing() {
    let _serial = SERIAL.lock().await;
    let (app, keys) = app_with_keys(
        SageConfig {
            rate_limit: None,
            ..SageConfig::default()
        },
        // The sandbox drains its backlog back to back, far faster than the module's
        // 50 rows a minute: the per-binding quota is not what this test is about.
        |s| s.binding_ingest_per_minute = u32::MAX,
    )
    .await;
    let paired = app.connected_store().await;
    let business = business_of(&app, &paired).await;
    let sage = app.sage();
    app.map_payments(&paired, &business).await;

    let store = &paired.store.store;
    store.simulate(900);
    drain_all(&paired).await;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM received_events")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(events >= 1500, "thousands of events: {events}");
    sage.set_faults(ledger_sandbox::sage::SageFaults {
        drop_after_commit: 25,
        ..Default::default()
    });

    let env = [
        ("LEDGER_JOB_LEASE", "3s"),
        ("LEDGER_BINDING_CONCURRENCY", "4"),
        ("LEDGER_WORKER_CONCURRENCY", "4"),
        ("LEDGER_SAGE_CALL_BUDGET", "100000"),
        ("LEDGER_SAGE_TIMEOUT", "2s"),
    ];
    let mut workers = vec![
        spawn(&mut worker(&app, &keys, &env)),
        spawn(&mut worker(&app, &keys, &env)),
    ];
    let mut dice = Dice(u64::try_from(chrono::Utc::now().timestamp_nanos_opt().unwrap_or(7)).unwrap_or(7));
    let started = std::time::Instant::now();
    let mut kills = 0;
    loop {
        let open: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        if open == 0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(400),
            "{open} jobs still open after {kills} kills"
        );
        tokio::time::sleep(Duration::from_millis(700 + dice.below(1300))).await;
        // Kill while work is in flight, most of the time.
        if kills < 40 {
            let victim = usize::try_from(dice.below(2)).unwrap();
            kill(&workers[victim], "-KILL");
            workers[victim] = spawn(&mut worker(&app, &keys, &env));
            kills += 1;
        }
    }
    eprintln!(
        "{events} events, {kills} SIGKILLs, {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for w in &workers {
        kill(w, "-TERM");
    }

    // Every event ends terminal.
    type Open = (String, i64, String, Option<String>, Option<String>);
    let open: Vec<Open> = sqlx::query_as(
        "SELECT event_name, magento_entity_id, status, error_code, message FROM sync_runs WHERE status NOT IN ('synced', 'skipped_by_policy')",
    )
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    assert!(open.is_empty(), "runs not synced or skipped: {open:#?}");
    let orphans: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM received_events e WHERE NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.event_id = e.id)
           AND e.event_name NOT IN ('customer.upserted', 'product.upserted')",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(orphans, 0, "every document event has its run");

    // Sage holds each document exactly once.
    let books = sage.businesses().into_iter().find(|b| b.id == business).unwrap().books;
    let catalogue = store.catalogue();
    let unique = |book: &str, field: &str| {
        let docs = books.get(book).cloned().unwrap_or_default();
        let keys: HashSet<String> = docs.iter().map(|d| d[field].to_string()).collect();
        assert_eq!(keys.len(), docs.len(), "a duplicate in {book}");
        docs.len()
    };
    assert_eq!(unique("sales_invoices", "reference"), catalogue.invoices.len());
    assert_eq!(unique("sales_credit_notes", "reference"), catalogue.credit_memos.len());
    // A zero-total order is paid with nothing: no payment is posted for it.
    let paid = catalogue
        .invoices
        .iter()
        .filter(|i| i.state == ledger_sandbox::magento::catalogue::InvoiceState::Paid && !i.grand_total().is_zero())
        .count();
    assert_eq!(unique("contact_payments", "reference"), paid);

    // The store's chips agree with the ledger's runs.
    let mirror = store.mirror();
    let runs: Vec<(String, i64, Option<String>)> = sqlx::query_as(
        "SELECT entity_type, magento_entity_id, sage_id FROM sync_runs WHERE event_name IN ('invoice.created', 'creditmemo.created')",
    )
    .fetch_all(&app.state.db)
    .await
    .unwrap();
    for (entity, id, sage_id) in runs {
        let row = mirror
            .iter()
            .find(|r| r.entity_type == entity && r.magento_entity_id == id)
            .unwrap_or_else(|| panic!("{entity} {id} has a chip"));
        assert_eq!(row.sync_status, "synced", "{entity} {id}");
        assert_eq!(row.provider_entity_id, sage_id, "{entity} {id}");
    }
}

/// A reconnect to another Sage business, made through the API while a `ledger worker`
/// process holds the old business's access token in memory: the worker's very next
/// document goes to the new business (its cached token is of an older version).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_to_another_business_reaches_a_running_worker_process_at_once() {
    let _serial = SERIAL.lock().await;
    let (app, keys) = app_with_keys(
        SageConfig {
            businesses: vec![
                ("Acme UK Ltd".into(), "GB".into()),
                ("Acme Retail Ltd".into(), "GB".into()),
            ],
            ..SageConfig::default()
        },
        |_| {},
    )
    .await;
    let paired = app.paired_store().await;
    app.connect_to_business(&paired, "Acme UK Ltd").await;
    let id_of = |name: &str| app.sage().businesses().into_iter().find(|b| b.name == name).unwrap().id;
    let (uk, retail) = (id_of("Acme UK Ltd"), id_of("Acme Retail Ltd"));
    let invoices = |business: String| {
        let app = &app;
        async move {
            ledger_e2e_books(app, &business).await["sales_invoices"]
                .as_array()
                .map_or(0, Vec::len)
        }
    };
    let mut worker = spawn(&mut worker(&app, &keys, &[]));
    let store = &paired.store.store;
    store.place_order(false);
    drain_all(&paired).await;
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(
        invoices(uk.clone()).await,
        1,
        "the worker posted (and cached its token)"
    );

    app.connect_to_business(&paired, "Acme Retail Ltd").await;
    store.place_order(false);
    drain_all(&paired).await;
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    assert_eq!(invoices(retail).await, 1, "the next invoice is in the new business");
    assert_eq!(invoices(uk).await, 1, "nothing more in the old one");
    kill(&worker, "-TERM");
    let _ = worker.wait();
}

/// The sandbox Sage's books for `business`.
async fn ledger_e2e_books(app: &TestApp, business: &str) -> serde_json::Value {
    let sage = app.sage.as_ref().expect("a Sage sandbox");
    let body: serde_json::Value = reqwest::get(format!("{}/sandbox/businesses/{business}/books", sage.base_url))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["books"].clone()
}

/// The spans OTLP/HTTP requests carried: (trace id, name) of each. A protobuf walk of
/// ExportTraceServiceRequest → resource_spans (1) → scope_spans (2) → spans (2) →
/// trace_id (1), name (5); everything else is skipped.
fn otlp_spans(bodies: &[Vec<u8>]) -> Vec<(String, String)> {
    fn varint(b: &[u8], i: &mut usize) -> u64 {
        let (mut v, mut shift) = (0u64, 0);
        while *i < b.len() {
            let byte = b[*i];
            *i += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                break;
            }
            shift += 7;
        }
        v
    }
    /// The length-delimited fields of one message, as (field number, bytes).
    fn fields(b: &[u8]) -> Vec<(u64, &[u8])> {
        let (mut out, mut i) = (Vec::new(), 0);
        while i < b.len() {
            let key = varint(b, &mut i);
            match key & 7 {
                0 => {
                    varint(b, &mut i);
                }
                1 => i += 8,
                5 => i += 4,
                2 => {
                    let len = usize::try_from(varint(b, &mut i)).unwrap();
                    out.push((key >> 3, &b[i..i + len]));
                    i += len;
                }
                other => panic!("unexpected wire type {other}"),
            }
        }
        out
    }
    let mut spans = Vec::new();
    for body in bodies {
        for (_, resource) in fields(body).into_iter().filter(|(n, _)| *n == 1) {
            for (_, scope) in fields(resource).into_iter().filter(|(n, _)| *n == 2) {
                for (_, span) in fields(scope).into_iter().filter(|(n, _)| *n == 2) {
                    let f = fields(span);
                    let get = |n| f.iter().find(|(k, _)| *k == n).map(|(_, v)| *v).unwrap_or_default();
                    spans.push((hex(get(1)), String::from_utf8_lossy(get(5)).into_owned()));
                }
            }
        }
    }
    spans
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// A local OTLP/HTTP receiver keeping every body posted to /v1/traces.
async fn otlp_receiver() -> (String, std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>) {
    let bodies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let kept = kept.clone();
            async move {
                kept.lock().unwrap().push(body.to_vec());
                ([("content-type", "application/x-protobuf")], Vec::<u8>::new())
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, bodies)
}

/// `ledger serve` and `ledger worker`, each exporting to a local OTLP receiver: the
/// event's webhook span (serve), its sync span with the store read and the Sage call,
/// and the store callback (worker) all arrive under the one trace id stored on its run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_and_worker_processes_export_one_trace_per_event_over_otlp() {
    let _serial = SERIAL.lock().await;
    let (receiver, bodies) = otlp_receiver().await;
    let (app, keys) = app_with_keys(SageConfig::default(), |_| {}).await;
    let paired = app.connected_store().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let addr = format!("127.0.0.1:{port}");
    let otlp = [("LEDGER_OTLP_ENDPOINT", receiver.as_str())];
    let mut serve = spawn(&mut process(
        &app,
        &keys,
        "serve",
        &[otlp[0], ("LEDGER_HTTP_ADDR", &addr)],
    ));
    let mut worker = spawn(&mut worker(&app, &keys, &otlp));
    let ready = async {
        loop {
            if reqwest::get(format!("http://{addr}/readyz"))
                .await
                .is_ok_and(|r| r.status() == 200)
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), ready)
        .await
        .expect("serve is ready");

    // The store's invoice event, delivered to the serve process as the module sends it.
    let store = &paired.store.store;
    store.place_order(false);
    let row = store
        .outbox()
        .into_iter()
        .find(|r| r.event_name == "invoice.created")
        .expect("an invoice event");
    let claims = ledger_magento_api::auth::Claims {
        iss: "magento".into(),
        sub: paired.tenant(),
        aud: "byte8-ledger".into(),
        iat: chrono::Utc::now().timestamp(),
        nbf: chrono::Utc::now().timestamp(),
        exp: chrono::Utc::now().timestamp() + 60,
        jti: uuid::Uuid::new_v4().to_string(),
    };
    let token = ledger_magento_api::auth::sign(
        ledger_magento_api::auth::Subkeys::derive(&paired.api_key())
            .outbound
            .expose(),
        &claims,
    );
    let res = reqwest::Client::new()
        .post(format!(
            "http://{addr}/webhooks/magento/{}/invoice.created",
            paired.tenant()
        ))
        .bearer_auth(token)
        .header("content-type", "application/json")
        .header("idempotency-key", &row.idempotency_key)
        .body(row.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 202);
    assert!(app.wait_idle(Duration::from_secs(30)).await, "the worker finished");
    let (status, trace_id): (String, Option<String>) =
        sqlx::query_as("SELECT status, trace_id FROM sync_runs WHERE event_name = 'invoice.created'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(status, "synced");
    let trace_id = trace_id.expect("the run keeps its trace id");

    // Both processes flush their spans as they stop.
    terminate(&serve);
    terminate(&worker);
    assert_eq!(wait_with_timeout(&mut serve, Duration::from_secs(10)).code(), Some(0));
    assert_eq!(wait_with_timeout(&mut worker, Duration::from_secs(10)).code(), Some(0));
    let spans = otlp_spans(&bodies.lock().unwrap());
    let names: Vec<&str> = spans
        .iter()
        .filter(|(t, _)| *t == trace_id)
        .map(|(_, n)| n.as_str())
        .collect();
    for wanted in [
        "POST /webhooks/magento/{tenant_id}/{event_name}",
        "sync invoice.created",
        "magento GET /rest/V1/byte8/invoice/{id}",
        "magento POST /rest/V1/byte8/sync-state",
    ] {
        assert!(names.contains(&wanted), "{wanted} in trace {trace_id}: {names:?}");
    }
    assert!(
        names.iter().any(|n| n.starts_with("sage POST")),
        "a Sage call in the trace: {names:?}"
    );
}
