//! The HTTP stack against the real server and a real database.

use std::time::Duration;

use axum::{Router, routing::post};
use ledger_gateway::AppState;
use ledger_test_support::TestApp;
use serde_json::Value;

async fn problem(res: reqwest::Response) -> (u16, String, Value) {
    let status = res.status().as_u16();
    let content_type = res.headers()["content-type"].to_str().unwrap().to_owned();
    (status, content_type, res.json().await.unwrap())
}

#[tokio::test]
async fn healthz_and_readyz_answer() {
    let app = TestApp::spawn().await;
    let res = app.get("/healthz").await;
    assert_eq!(res.status(), 200);
    assert_eq!(res.json::<Value>().await.unwrap()["status"], "ok");

    let res = app.get("/readyz").await;
    assert_eq!(res.status(), 200);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["migrations"], "current");
}

#[tokio::test]
async fn readyz_fails_while_a_migration_is_missing() {
    let app = TestApp::spawn().await;
    sqlx::query("DELETE FROM _sqlx_migrations WHERE version = (SELECT max(version) FROM _sqlx_migrations)")
        .execute(&app.state.db)
        .await
        .unwrap();
    let (status, content_type, body) = problem(app.get("/readyz").await).await;
    assert_eq!(status, 503);
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["code"], "migrations_pending");
    assert!(body["detail"].as_str().unwrap().contains("ledger migrate"));
}

#[tokio::test]
async fn request_id_is_propagated_or_assigned() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .get(app.url("/no/such/route"))
        .header("x-request-id", "trace-me-42")
        .send()
        .await
        .unwrap();
    assert_eq!(res.headers()["x-request-id"], "trace-me-42");
    let (status, content_type, body) = problem(res).await;
    assert_eq!((status, content_type.as_str()), (404, "application/problem+json"));
    assert_eq!(body["request_id"], "trace-me-42");
    assert_eq!(body["code"], "not_found");
    assert_eq!(body["type"], "https://ledger.byte8.io/problems/not_found");
    assert!(body["detail"].as_str().unwrap().contains("/no/such/route"));

    // An id with characters unsafe for logs is replaced by a fresh UUID.
    let res = app
        .http
        .get(app.url("/healthz"))
        .header("x-request-id", "bad id\t")
        .send()
        .await
        .unwrap();
    let assigned = res.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid::Uuid::parse_str(assigned).is_ok(), "{assigned}");
}

#[tokio::test]
async fn method_not_allowed_is_a_problem() {
    let app = TestApp::spawn().await;
    let res = app.http.post(app.url("/healthz")).send().await.unwrap();
    assert_eq!(res.headers()["allow"], "GET,HEAD");
    let (status, _, body) = problem(res).await;
    assert_eq!(status, 405);
    assert_eq!(body["code"], "method_not_allowed");
    assert!(body["request_id"].is_string());
}

fn echo_routes() -> Router<AppState> {
    Router::new()
        .route("/__probe/echo", post(|body: axum::body::Bytes| async move { body }))
        .route(
            "/__probe/slow",
            post(|| async {
                tokio::time::sleep(Duration::from_millis(600)).await;
                "done"
            }),
        )
        // Far longer than any shutdown deadline under test, so giving up at the deadline
        // and waiting for the request differ by seconds, not by scheduling noise.
        .route(
            "/__probe/slower",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "done"
            }),
        )
}

#[tokio::test]
async fn oversized_bodies_get_413_with_the_limit() {
    let app = TestApp::builder()
        .configure(|s| s.body_limit_bytes = 1024)
        .extra_routes(echo_routes())
        .spawn()
        .await;
    let ok = app
        .http
        .post(app.url("/__probe/echo"))
        .body(vec![b'a'; 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);

    let (status, content_type, body) = problem(
        app.http
            .post(app.url("/__probe/echo"))
            .body(vec![b'a'; 1025])
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, content_type.as_str()), (413, "application/problem+json"));
    assert_eq!(body["code"], "body_too_large");
    assert!(body["detail"].as_str().unwrap().contains("1024-byte"));

    // Chunked bodies (no Content-Length) are cut off at the limit too.
    let status_line = raw_chunked_post(app.addr, "/__probe/echo", &[&[b'a'; 800], &[b'a'; 800]]).await;
    assert!(status_line.starts_with("HTTP/1.1 413"), "{status_line}");
}

/// Sends a chunked POST by hand (reqwest would need its `stream` feature) and returns
/// the status line.
async fn raw_chunked_post(addr: std::net::SocketAddr, path: &str, chunks: &[&[u8]]) -> String {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\n\r\n").into_bytes();
    for chunk in chunks {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything.
    let _ = stream.write_all(&request).await;
    let mut line = String::new();
    tokio::io::BufReader::new(stream).read_line(&mut line).await.unwrap();
    line
}

#[tokio::test]
async fn slow_requests_get_503_not_408() {
    let app = TestApp::builder()
        .configure(|s| s.request_timeout = Duration::from_millis(100))
        .extra_routes(echo_routes())
        .spawn()
        .await;
    let res = app.http.post(app.url("/__probe/slow")).send().await.unwrap();
    assert_eq!(res.headers()["retry-after"], "5");
    let (status, _, body) = problem(res).await;
    assert_eq!(
        status, 503,
        "the Magento module dead-letters any 4xx, so a timeout must be 5xx"
    );
    assert_eq!(body["code"], "request_timeout");
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let app = TestApp::builder().extra_routes(echo_routes()).spawn().await;
    let in_flight = tokio::spawn({
        let (http, url) = (app.http.clone(), app.url("/__probe/slow"));
        async move { http.post(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let addr = app.addr;
    let stopped = tokio::time::timeout(Duration::from_secs(5), app.shutdown()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "server stops cleanly: {stopped:?}");
    let res = in_flight.await.unwrap().expect("the in-flight request completed");
    assert_eq!(res.text().await.unwrap(), "done");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn shutdown_deadline_bounds_the_wait() {
    let app = TestApp::builder()
        .configure(|s| s.shutdown_deadline = Duration::from_millis(100))
        .extra_routes(echo_routes())
        .spawn()
        .await;
    let in_flight = tokio::spawn({
        let (http, url) = (app.http.clone(), app.url("/__probe/slower"));
        async move { http.post(url).send().await }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    app.shutdown().await.unwrap();
    // The request needs ~4.9 s more; the deadline is 100 ms.
    assert!(
        started.elapsed() < Duration::from_millis(2_000),
        "gave up at the deadline: {:?}",
        started.elapsed()
    );
    // In the binary, returning from `serve` ends the process and with it the straggler.
    drop(in_flight);
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let app = TestApp::spawn().await;
    let res = app
        .http
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-encoding"], "gzip");
}

#[tokio::test]
async fn metrics_count_requests_by_route_template() {
    let app = TestApp::spawn().await;
    app.get("/healthz").await;
    app.get("/definitely/missing").await;
    let text = ledger_gateway::metrics::handle().render();
    assert!(
        text.contains(r#"http_requests_total{method="GET",route="/healthz",status="200"}"#),
        "{text}"
    );
    assert!(text.contains(r#"route="unmatched",status="404""#), "{text}");
    assert!(!text.contains("/definitely/missing"), "raw paths never become labels");
    assert!(text.contains("http_request_duration_seconds_bucket"), "{text}");

    // The metrics listener adds the pool gauges.
    let router = ledger_gateway::metrics::router(app.state.db.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    let scraped = app
        .http
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(scraped.contains("db_pool_max_connections 10"), "{scraped}");
}

#[tokio::test]
async fn docs_page_and_document_are_served() {
    let app = TestApp::spawn().await;
    let doc: Value = app.get("/openapi.json").await.json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/readyz"]["get"].is_object());
    let page = app.get("/docs").await.text().await.unwrap();
    assert!(page.contains("/docs/app.js"));
    let script = app.get("/docs/app.js").await;
    assert_eq!(script.status(), 200);
}
