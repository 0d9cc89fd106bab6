//! Sandbox controls (not part of the module): drive the store from tests and the page.

// A part of the store: its types and helpers are this file's too.
use super::*;

#[derive(Debug, Deserialize)]
pub(super) struct SimulateRequest {
    #[serde(default = "one")]
    orders: usize,
}

pub(super) fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
pub(super) struct RequeueRequest {
    id: Option<u64>,
}

pub(super) async fn control_pairing_code(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(json!({ "pairing_code": store.generate_pairing_code(), "magento_base_url": store.base_url() }))
}

pub(super) async fn control_state(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(state_summary(&store))
}

pub(super) fn state_summary(store: &Store) -> Value {
    let outbox = store.outbox();
    let count = |s: OutboxStatus| outbox.iter().filter(|r| r.status == s).count();
    json!({
        "magento_base_url": store.base_url(),
        "connected": store.is_connected(),
        "tenant_id": store.tenant_id(),
        "ledger_base_url": store.ledger_base_url(),
        "outbox": { "pending": count(OutboxStatus::Pending), "succeeded": count(OutboxStatus::Succeeded), "dead_lettered": count(OutboxStatus::DeadLettered) },
        "mirror": store.mirror().len(),
    })
}

pub(super) async fn control_simulate(State(store): State<Arc<Store>>, Json(req): Json<SimulateRequest>) -> Json<Value> {
    let ids = store.simulate(req.orders.min(10_000));
    Json(json!({ "queued": ids.len() }))
}

pub(super) async fn control_drain(State(store): State<Arc<Store>>) -> Json<DrainReport> {
    Json(store.drain_once().await)
}

pub(super) async fn control_requeue(State(store): State<Arc<Store>>, Json(req): Json<RequeueRequest>) -> Json<Value> {
    Json(json!({ "requeued": store.requeue(req.id) }))
}

pub(super) async fn control_disconnect(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(json!({ "ledger_acknowledged": store.disconnect().await }))
}

pub(super) async fn control_faults(State(store): State<Arc<Store>>, Json(faults): Json<Faults>) -> Json<Faults> {
    store.set_faults(faults.clone());
    Json(faults)
}

#[derive(Debug, Deserialize)]
pub(super) struct ClockControl {
    skew_secs: i64,
}

pub(super) async fn control_clock(State(store): State<Arc<Store>>, Json(c): Json<ClockControl>) -> Json<Value> {
    store.set_clock_skew(c.skew_secs);
    Json(json!({ "skew_secs": c.skew_secs }))
}

/// Web servers date every answer by the server's clock (RFC 9110 §6.6.1), so a store
/// whose clock is off says so in its `Date` header.
pub(super) async fn date_by_store_clock(
    State(store): State<Arc<Store>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let mut response = next.run(request).await;
    let at = chrono::DateTime::from_timestamp(store.now(), 0).unwrap_or_default();
    if let Ok(v) = at.format("%a, %d %b %Y %H:%M:%S GMT").to_string().parse() {
        response.headers_mut().insert(axum::http::header::DATE, v);
    }
    response
}

pub(super) async fn control_tile(State(store): State<Arc<Store>>) -> Json<Value> {
    let health = store.fetch_tile_health().await;
    let verdict = page::tile_verdict(store.is_connected(), &health);
    Json(json!({ "health": health, "tile": verdict }))
}

pub(super) async fn admin_page(State(store): State<Arc<Store>>) -> Html<String> {
    Html(page::render(&store, &state_summary(&store)))
}

/// The admin's "Sage Sync" page (contract §9): a plain iframe of
/// `{ledger}/embed/{tenant}` with no credential, `referrerpolicy="no-referrer"`, under
/// `frame-src {ledger base}`.
pub(super) async fn admin_sync_page(State(store): State<Arc<Store>>) -> Response {
    let Some(tenant) = store.tenant_id() else {
        return Html("<!doctype html><p>Not connected to ledger.</p>".to_owned()).into_response();
    };
    let ledger = store.ledger_base_url();
    let ledger = ledger.trim_end_matches('/');
    let encoded = encode_segment(&tenant);
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Sage Sync / Magento Admin</title></head>\
         <body><h1>Sage Sync</h1><iframe id=\"ledger-embed\" src=\"{ledger}/embed/{encoded}\" referrerpolicy=\"no-referrer\" \
         style=\"width:100%;height:600px;border:0\" title=\"ledger\"></iframe></body></html>"
    );
    let mut response = Html(html).into_response();
    if let Ok(v) = format!("frame-src {ledger};").parse() {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}
