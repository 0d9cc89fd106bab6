//! `POST /v1/magento/connect`: the exact request the store receives, and every way it
//! can fail — each specific, and none leaving a live binding behind.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{Router, http::StatusCode, response::IntoResponse, routing::post};
use ledger_e2e::count;
use ledger_sandbox::magento::RunningStore;
use ledger_test_support::TestApp;
use serde_json::Value;

/// A stand-in store answering the pairing route with a fixed response, recording bodies.
async fn fake_store(answer: fn() -> axum::response::Response) -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = Router::new().route(
        "/rest/V1/byte8/setup/pair",
        post(move |body: axum::body::Bytes| {
            let record = record.clone();
            async move {
                record
                    .lock()
                    .unwrap()
                    .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                answer()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, seen)
}

async fn problem(res: reqwest::Response) -> (u16, Value) {
    (res.status().as_u16(), res.json().await.unwrap())
}

async fn no_bindings(app: &TestApp) {
    assert_eq!(
        count(app, "SELECT count(*) FROM connector_bindings").await,
        0,
        "no binding left behind"
    );
}

#[tokio::test]
async fn the_store_receives_exactly_the_contract_body() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let (url, seen) = fake_store(|| (StatusCode::OK, axum::Json(serde_json::json!([]))).into_response()).await;
    let res = app
        .connect(&merchant, &format!("{url}/"), "deadbeefcafef00d0123456789abcdef")
        .await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["tenant_id"], merchant.tenant_id.to_string());
    assert_eq!(body["magento_base_url"], url, "trailing slash removed");
    let sent = seen.lock().unwrap()[0].clone();
    let keys: Vec<&str> = sent.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["byte8_api_key", "ledger_base_url", "pairing_code", "tenant_id"]);
    assert_eq!(sent["pairing_code"], "deadbeefcafef00d0123456789abcdef");
    assert_eq!(sent["tenant_id"], merchant.tenant_id.to_string());
    assert_eq!(sent["ledger_base_url"], app.base_url);
    let key = sent["byte8_api_key"].as_str().unwrap();
    let secret = key.strip_prefix("byte8_lk_").unwrap();
    assert!(
        secret.len() == 64 && secret.bytes().all(|b| b.is_ascii_hexdigit()),
        "256 bits in hex: {key}"
    );
    assert!(!body.to_string().contains(secret), "the key is never in an API answer");
}

#[tokio::test]
async fn wrong_used_and_expired_codes_say_so() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let store = RunningStore::spawn(Default::default()).await.unwrap();
    let code = store.store.generate_pairing_code();

    let (status, body) = problem(
        app.connect(&merchant, &store.base_url, "00000000000000000000000000000000")
            .await,
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (422, Some("pairing_code_rejected")));
    assert!(body["detail"].as_str().unwrap().contains("Generate pairing code"));
    assert_eq!(body["errors"][0]["field"], "pairing_code");
    no_bindings(&app).await;

    // A pasted code in the docs' old format also gets a format hint.
    let (_, body) = problem(app.connect(&merchant, &store.base_url, "J3K7-XQ9F-RP2M").await).await;
    assert!(body["detail"].as_str().unwrap().contains("32 lower-case hexadecimal"));

    // Older than 30 minutes.
    store.store.age_pairing_code(1801);
    let (status, _) = problem(app.connect(&merchant, &store.base_url, &code).await).await;
    assert_eq!(status, 422);
    no_bindings(&app).await;

    // Single use.
    let code = store.store.generate_pairing_code();
    assert_eq!(app.connect(&merchant, &store.base_url, &code).await.status(), 201);
    let other = app.merchant().await;
    let (status, body) = problem(app.connect(&other, &store.base_url, &code).await).await;
    assert_eq!((status, body["code"].as_str()), (422, Some("pairing_code_rejected")));
    assert_eq!(count(&app, "SELECT count(*) FROM connector_bindings").await, 1);
}

#[tokio::test]
async fn a_url_without_the_module_unreachable_stores_and_bad_answers_are_explained() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let code = "deadbeefcafef00d0123456789abcdef";

    // The ledger itself answers 404 on Magento's route: no module there.
    let (status, body) = problem(app.connect(&merchant, &app.base_url, code).await).await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (422, Some("module_not_found"))
    );
    assert!(body["detail"].as_str().unwrap().contains("/rest/V1/byte8/setup/pair"));

    // Nothing listening.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (status, body) = problem(app.connect(&merchant, &format!("http://{free}"), code).await).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("magento_unreachable")));
    assert!(
        body["detail"].as_str().unwrap().contains(&free.to_string()),
        "names the URL"
    );

    no_bindings(&app).await;

    // A 5xx may come after the store saved the key: the key stays pending (not live).
    let (url, _) = fake_store(|| (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response()).await;
    let (status, body) = problem(app.connect(&merchant, &url, code).await).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("magento_error")));
    assert!(body["detail"].as_str().unwrap().contains("HTTP 503"));
    assert_eq!(
        count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'pairing'").await,
        1
    );
    sqlx::query("DELETE FROM connector_bindings")
        .execute(&app.state.db)
        .await
        .unwrap();

    let (url, _) = fake_store(|| {
        (
            StatusCode::MOVED_PERMANENTLY,
            [("location", "https://www.shop.example/")],
        )
            .into_response()
    })
    .await;
    let (status, body) = problem(app.connect(&merchant, &url, code).await).await;
    assert_eq!((status, body["errors"][0]["code"].as_str()), (422, Some("redirected")));
    assert!(body["detail"].as_str().unwrap().contains("https://www.shop.example/"));

    let (url, _) = fake_store(|| (StatusCode::OK, "<html>Welcome to our shop</html>").into_response()).await;
    let (status, body) = problem(app.connect(&merchant, &url, code).await).await;
    assert_eq!((status, body["code"].as_str()), (502, Some("magento_bad_response")));
    no_bindings(&app).await;
}

#[tokio::test]
async fn a_timeout_is_reported_and_leaves_the_key_pending_not_live() {
    let app = TestApp::builder()
        .configure(|s| s.magento_request_timeout = Duration::from_millis(300))
        .spawn()
        .await;
    let merchant = app.merchant().await;
    // Accepts the connection, never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let (status, body) = problem(app.connect(&merchant, &url, "deadbeefcafef00d0123456789abcdef").await).await;
    assert_eq!((status, body["code"].as_str()), (504, Some("magento_timeout")));
    assert!(body["detail"].as_str().unwrap().contains("300 ms"));
    let (state, pending): (String, bool) =
        sqlx::query_as("SELECT status, pending_api_key IS NOT NULL FROM connector_bindings")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), pending),
        ("pairing", true),
        "kept pending: the store may have stored the key"
    );
    let list: Value = app
        .http
        .get(app.url("/v1/bindings"))
        .bearer_auth(&merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list, serde_json::json!([]), "but not live");
}

#[tokio::test]
async fn url_safety_rules_apply_before_anything_is_stored() {
    let app = TestApp::builder()
        .configure(|s| {
            s.allow_insecure_magento = false;
            s.allow_private_magento = false;
        })
        .spawn()
        .await;
    let merchant = app.merchant().await;
    let code = "deadbeefcafef00d0123456789abcdef";
    for (url, field_code) in [
        ("http://shop.example.com", "https_required"),
        ("https://127.0.0.1:9", "address_not_allowed"),
        ("https://169.254.169.254", "address_not_allowed"),
        ("https://[::1]", "address_not_allowed"),
        ("https://localhost", "address_not_allowed"),
        ("https://user:pw@shop.example.com", "invalid_format"),
        ("ftp://shop.example.com", "invalid_format"),
        ("shop.example.com", "invalid_format"),
    ] {
        let (status, body) = problem(app.connect(&merchant, url, code).await).await;
        assert_eq!(
            (status, body["errors"][0]["code"].as_str()),
            (422, Some(field_code)),
            "{url}: {body}"
        );
        assert_eq!(body["errors"][0]["field"], "magento_base_url");
    }
    no_bindings(&app).await;
}

#[tokio::test]
async fn bad_requests_and_other_tenants_are_refused() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let res = app
        .http
        .post(app.url("/v1/magento/connect"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 401, "merchant authentication first");

    let send = |body: Value| {
        app.http
            .post(app.url("/v1/magento/connect"))
            .bearer_auth(&merchant.token)
            .json(&body)
            .send()
    };
    let (status, body) = problem(
        send(serde_json::json!({ "magento_base_url": "https://x.example" }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["errors"][0]["field"].as_str()),
        (422, Some("pairing_code"))
    );
    let (status, body) = problem(
        send(serde_json::json!({ "magento_base_url": "https://x.example", "pairing_code": "a b" }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, body["errors"][0]["code"].as_str()),
        (422, Some("invalid_format"))
    );
    let other = app.merchant().await;
    let (status, body) = problem(
        send(serde_json::json!({ "magento_base_url": "https://x.example", "pairing_code": "abc", "tenant_id": other.tenant_id }))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((status, body["code"].as_str()), (404, Some("tenant_not_found")));
    no_bindings(&app).await;
}
