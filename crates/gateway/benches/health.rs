//! Health-pass benchmark: one pass of the store health loop over 10,000 bindings — most
//! stores answering in 20 ms, 0.5 % accepting the connection and never answering (the
//! request timeout ends those) — against the floor of the same 10,000 bare GETs made
//! with the same concurrency and timeout, in one run. The pass must finish inside the
//! loop's 60 s interval.
//!
//! `cargo bench -p ledger-gateway --bench health`. `BENCH_BINDINGS` changes the size.

#![allow(
    clippy::print_stdout,
    clippy::float_arithmetic,
    reason = "a benchmark prints its figures and computes rates"
)]

use std::time::{Duration, Instant};

use ledger_magento_callback::health;
use ledger_test_support::TestApp;

const ANSWER: Duration = Duration::from_millis(20);
const INTERVAL: Duration = Duration::from_secs(60);

fn bindings() -> usize {
    std::env::var("BENCH_BINDINGS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(run());
}

/// A store that answers every request after [`ANSWER`].
async fn answering_store() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(ANSWER).await;
        "[]"
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// A store that accepts connections and never answers.
async fn silent_store() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket);
        }
    });
    addr
}

async fn run() {
    let app = TestApp::builder()
        .configure(|s| {
            s.log_level = "error".into();
            // The production default pool.
            s.db_max_connections = 20;
        })
        .spawn()
        .await;
    let db = app.state.db.clone();
    let merchant = app.merchant().await;
    let (answering, silent) = (answering_store().await, silent_store().await);
    let n = bindings();
    let silent_every = 200; // 0.5 %
    let (mut ids, mut urls, mut keys) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let id = ledger_core::BindingId(uuid::Uuid::new_v4());
        let addr = if i % silent_every == 0 { silent } else { answering };
        ids.push(id.0);
        urls.push(format!("http://{addr}/shop{i}/"));
        keys.push(app.state.keyring.seal(
            format!("key-{i}").as_bytes(),
            &ledger_tenant_binding::bindings::api_key_context(id),
        ));
    }
    sqlx::query(
        "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status, magento_connection_status, api_key)
         SELECT id, $1, url, 'active', 'pending', key FROM unnest($2::uuid[], $3::text[], $4::bytea[]) AS t(id, url, key)",
    )
    .bind(merchant.tenant_id.0)
    .bind(&ids)
    .bind(&urls)
    .bind(&keys)
    .execute(&db)
    .await
    .expect("bindings");

    // The floor: the same GETs, as many at once, with the same timeout, and nothing else.
    let client = reqwest::Client::builder()
        .timeout(app.state.settings.magento_request_timeout)
        .build()
        .expect("client");
    let started = Instant::now();
    let mut gets = tokio::task::JoinSet::new();
    for url in urls {
        if gets.len() >= health::PING_CONCURRENCY {
            gets.join_next().await;
        }
        let client = client.clone();
        gets.spawn(async move {
            let _ = client.get(format!("{url}rest/V1/byte8/ping")).send().await;
        });
    }
    while gets.join_next().await.is_some() {}
    let floor = started.elapsed();

    let started = Instant::now();
    let pinged = health::ping_all(&app.state).await.expect("pass");
    let pass = started.elapsed();
    assert_eq!(pinged, n, "every binding pinged");
    let healthy: i64 =
        sqlx::query_scalar("SELECT count(*) FROM connector_bindings WHERE magento_connection_status = 'active'")
            .fetch_one(&db)
            .await
            .unwrap_or(-1);
    assert_eq!(
        usize::try_from(healthy).unwrap_or(0),
        n - n.div_ceil(silent_every),
        "every answering store recorded"
    );
    println!(
        "health pass over {n} bindings ({} silent, {} s timeout, {} at once): {:.1} s · floor (bare GETs) {:.1} s · ratio {:.2} · {:.0} % of the {} s interval · {healthy} recorded healthy",
        n.div_ceil(silent_every),
        app.state.settings.magento_request_timeout.as_secs(),
        health::PING_CONCURRENCY,
        pass.as_secs_f64(),
        floor.as_secs_f64(),
        floor.as_secs_f64() / pass.as_secs_f64(),
        100.0 * pass.as_secs_f64() / INTERVAL.as_secs_f64(),
        INTERVAL.as_secs(),
    );
}
