//! Helpers shared by the end-to-end tests in `e2e/`: acting as the Magento module on
//! the wire, with exactly the requests it sends.

use ledger_magento_api::auth::{self, Claims, Subkeys};
use ledger_test_support::{PairedStore, TestApp};

/// The module's claims for `tenant` at `iat` (exp = iat + 60, nbf = iat).
pub fn module_claims(tenant: &str, iat: i64) -> Claims {
    Claims {
        iss: "magento".into(),
        sub: tenant.into(),
        aud: "byte8-ledger".into(),
        iat,
        nbf: iat,
        exp: iat + 60,
        jti: uuid::Uuid::new_v4().to_string(),
    }
}

pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// A token exactly as the module signs it, with the store's api_key.
pub fn module_token(api_key: &str, tenant: &str) -> String {
    auth::sign(
        Subkeys::derive(api_key).outbound.expose(),
        &module_claims(tenant, now()),
    )
}

/// Posts a webhook as the module does (token, content type, idempotency key, body).
pub async fn post_event(
    app: &TestApp,
    tenant: &str,
    event: &str,
    token: Option<&str>,
    key: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut request = app
        .http
        .post(app.url(&format!("/webhooks/magento/{tenant}/{event}")))
        .header("content-type", "application/json")
        .body(body.to_owned());
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(key) = key {
        request = request.header("idempotency-key", key);
    }
    request.send().await.expect("request reaches the test server")
}

/// A valid event body for entity `id`.
pub fn event_body(id: i64) -> String {
    format!(
        r#"{{"magento_entity_id":{id},"website_id":1,"store_id":1,"occurred_at":"2026-04-29T12:11:12Z","payload":{{}}}}"#
    )
}

/// Sends a valid webhook for the paired store with a fresh token.
pub async fn send_valid(app: &TestApp, paired: &PairedStore, event: &str, id: i64) -> reqwest::Response {
    let token = module_token(&paired.api_key(), &paired.tenant());
    post_event(
        app,
        &paired.tenant(),
        event,
        Some(&token),
        Some(&format!("{event}:{id}")),
        &event_body(id),
    )
    .await
}

pub async fn count(app: &TestApp, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(&app.state.db)
        .await
        .expect("count query")
}

/// Waits until every connection of `db` is back in the pool; fails after 2 s, naming
/// what should have let go of them (`after`: "the last event", …).
pub async fn all_connections_back(db: &sqlx::PgPool, after: &str) {
    let checked_out = || db.size() as usize - db.num_idle();
    let limit = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while checked_out() > 0 {
        assert!(
            tokio::time::Instant::now() < limit,
            "{} connections still checked out 2 s after {after}",
            checked_out()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// One sync run as the tests inspect it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Run {
    pub id: uuid::Uuid,
    pub event_name: String,
    pub status: String,
    pub magento_entity_id: i64,
    pub error_code: Option<String>,
    pub message: Option<String>,
    pub attempts: i32,
}

/// Every run, oldest first.
pub async fn runs(app: &TestApp) -> Vec<Run> {
    sqlx::query_as(
        "SELECT id, event_name, status, magento_entity_id, error_code, message, attempts FROM sync_runs ORDER BY created_at, id",
    )
    .fetch_all(&app.state.db)
    .await
    .expect("runs")
}

/// Each Sage call the attempts of `run` made, oldest first, as "METHOD route".
pub async fn sage_calls(app: &TestApp, run: uuid::Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT (c->>'method') || ' ' || (c->>'route') FROM sync_attempts a, jsonb_array_elements(a.request->'sage_calls') c
         WHERE a.sync_run_id = $1 ORDER BY a.started_at",
    )
    .bind(run)
    .fetch_all(&app.state.db)
    .await
    .expect("sage calls")
}

/// The sandbox Sage's books for `business` (every document, deleted ones included).
pub async fn books(app: &TestApp, business: &str) -> serde_json::Value {
    let sage = app.sage.as_ref().expect("the app runs a Sage sandbox");
    let body: serde_json::Value = app
        .http
        .get(format!("{}/sandbox/businesses/{business}/books", sage.base_url))
        .send()
        .await
        .expect("books")
        .json()
        .await
        .expect("books json");
    body["books"].clone()
}

/// Polls `check` every 50 ms until it holds; fails the test naming `what` after `limit`.
pub async fn wait_for(what: &str, limit: std::time::Duration, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// Makes every queued job due now and wakes the workers: a backoff ended, without the
/// test waiting it out.
pub async fn end_backoffs(app: &TestApp) {
    sqlx::query("UPDATE jobs SET run_at = now() WHERE status = 'queued'")
        .execute(&app.state.db)
        .await
        .expect("bring forward");
    sqlx::query("SELECT pg_notify('ledger_jobs', 'test')")
        .execute(&app.state.db)
        .await
        .expect("notify");
}
