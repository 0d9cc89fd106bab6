//! A Magento store running the byte8 module, as the ledger sees it over HTTP.
//!
//! It keeps only the pairing code's SHA-256 (single use, 30 minutes, one generic 401),
//! stores the api_key and tenant at pairing, keeps an outbox that it drains like the
//! module's cron (batches of 50, ascending id, 2xx → succeeded, 4xx → dead-lettered at
//! once, 5xx/timeout → the backoff ladder, dead after 10 attempts, duplicate keys
//! dropped at enqueue), verifies the ledger's JWTs with the module's twelve rules
//! (replayed `jti` refused), serves canonical entities from a generated catalogue and
//! keeps the sync-state mirror behind the "Sage Status" chips.

mod actions;
pub mod catalogue;
mod control;
pub mod jwt;
mod outbox;
mod page;
pub mod php_json;
mod rest;
pub mod tax;
pub mod totals;

pub use page::tile_verdict;

use control::*;
use outbox::{encode_segment, event_body};
use rest::*;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{Html, IntoResponse, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use self::{
    catalogue::{Catalogue, StoreProfile},
    php_json::Php,
};
use crate::rng::Rng;

/// The module's retry ladder after each transient failure (contract §7), in seconds.
pub const BACKOFF_LADDER: [u64; 9] = [60, 300, 1800, 7200, 21_600, 43_200, 86_400, 86_400, 86_400];
/// Attempts after which a transient failure dead-letters the row.
pub const MAX_ATTEMPTS: u32 = 10;
/// Rows per drain run.
pub const DRAIN_BATCH: usize = 50;
const PAIRING_TTL_SECS: i64 = 1800;
const PROVIDER: &str = "sage_accounting";

/// How the simulated store behaves.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Catalogue and order generation seed.
    pub seed: u64,
    /// How often the outbox cron runs (the module: every minute).
    pub drain_interval: Duration,
    /// Divides the backoff ladder, so tests see days of retries in seconds (1 = real).
    pub backoff_divisor: u64,
    /// Added to the store's clock (tests of clock skew).
    pub clock_skew_secs: i64,
    /// Whether the sync-state endpoint refuses `last_sync_at` values a strict MySQL
    /// TIMESTAMP column refuses (e.g. with a trailing `Z`). Magento itself sets
    /// `SQL_MODE=''` on every connection and tolerates them (contract §12.12).
    pub strict_timestamps: bool,
    /// The store's tax configuration, base currency and markets.
    pub profile: StoreProfile,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            drain_interval: Duration::from_secs(60),
            backoff_divisor: 1,
            clock_skew_secs: 0,
            strict_timestamps: false,
            profile: StoreProfile::uk(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    Pending,
    Succeeded,
    DeadLettered,
}

/// A row of `byte8_outbox`.
#[derive(Debug, Clone, Serialize)]
pub struct OutboxRow {
    pub id: u64,
    pub event_name: String,
    pub idempotency_key: String,
    pub body: String,
    pub status: OutboxStatus,
    pub attempts: u32,
    pub last_status_code: Option<u16>,
    pub last_error: Option<String>,
    /// The wait the ladder chose after the last transient failure (scaled by the divisor).
    pub last_backoff_ms: Option<u64>,
    #[serde(skip)]
    next_attempt_at: Option<Instant>,
}

/// A row of the sync-state mirror (`byte8_entity_sync_state`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MirrorRow {
    pub entity_type: String,
    pub magento_entity_id: i64,
    pub provider: String,
    pub sync_status: String,
    pub provider_entity_id: Option<String>,
    pub provider_reference: Option<String>,
    pub skip_reason: Option<String>,
    pub error_code: Option<String>,
    pub last_sync_at: Option<String>,
}

#[derive(Debug, Clone, Default)]
struct Pairing {
    hash: String,
    issued_at: i64,
}

#[derive(Debug, Clone)]
struct Connection {
    tenant_id: String,
    api_key: String,
}

/// Injected failures for the ledger → store routes.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Faults {
    /// The next `count` canonical GETs and sync-state posts answer this status.
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub count: u32,
}

#[derive(Debug)]
struct Inner {
    pairing: Option<Pairing>,
    connection: Option<Connection>,
    ledger_base_url: String,
    outbox: Vec<OutboxRow>,
    next_outbox_id: u64,
    mirror: BTreeMap<(String, i64), MirrorRow>,
    sync_state_calls: u64,
    /// When each entity's latest sync-state arrived (unix ms), for latency measurements.
    synced_at: BTreeMap<(String, i64), i64>,
    replay: jwt::ReplayCache,
    catalogue: Catalogue,
    rng: Rng,
    faults: Faults,
    log: Vec<String>,
}

/// The store. Share it as `Arc<Store>`.
#[derive(Debug)]
pub struct Store {
    inner: Mutex<Inner>,
    config: StoreConfig,
    http: reqwest::Client,
    base_url: Mutex<String>,
    drain_lock: tokio::sync::Mutex<()>,
    /// Seconds added to the real clock: starts at `config.clock_skew_secs`, changeable
    /// while running (`/sandbox/clock`), like a server whose NTP stopped or jumped.
    clock_skew: std::sync::atomic::AtomicI64,
    /// Every answer the outbox got: when, and its status (`None`: no answer at all).
    answers: Mutex<Vec<(Instant, Option<u16>)>>,
}

/// What one drain run did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct DrainReport {
    pub sent: usize,
    pub succeeded: usize,
    pub dead_lettered: usize,
    pub retrying: usize,
}

fn sha256_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, text.as_bytes()))
}

fn sha1_hex(text: &str) -> String {
    hex::encode(ring::digest::digest(
        &ring::digest::SHA1_FOR_LEGACY_USE_ONLY,
        text.as_bytes(),
    ))
}

/// A Magento web API error body: `parameters` only when the message has arguments
/// (contract §12.11).
fn magento_error(status: StatusCode, message: &str, parameters: Value) -> Response {
    let empty = match &parameters {
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        _ => parameters.is_null(),
    };
    let body = if empty {
        json!({ "message": message })
    } else {
        json!({ "message": message, "parameters": parameters })
    };
    (status, Json(body)).into_response()
}

/// An answer body encoded as Magento's web API encodes it.
fn magento_json(body: &Php) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.encode(),
    )
        .into_response()
}

fn unauthorized() -> Response {
    magento_error(
        StatusCode::UNAUTHORIZED,
        "The consumer isn't authorized to access %resources.",
        json!({ "resources": "Byte8_Client::byte8_webapi" }),
    )
}

/// Stock Magento's answer for a handler that returns nothing.
fn empty_ok() -> Response {
    (StatusCode::OK, Json(json!([]))).into_response()
}

impl Store {
    pub fn new(config: StoreConfig) -> Arc<Self> {
        crate::install_crypto_provider();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("HTTP client");
        Arc::new(Self {
            inner: Mutex::new(Inner {
                pairing: None,
                connection: None,
                ledger_base_url: "https://ledger.byte8.io".to_owned(),
                outbox: Vec::new(),
                next_outbox_id: 1,
                mirror: BTreeMap::new(),
                sync_state_calls: 0,
                synced_at: BTreeMap::new(),
                replay: jwt::ReplayCache::default(),
                catalogue: Catalogue::generate(config.seed, config.profile.clone()),
                rng: Rng::new(config.seed ^ 0x5eed),
                faults: Faults::default(),
                log: Vec::new(),
            }),
            clock_skew: std::sync::atomic::AtomicI64::new(config.clock_skew_secs),
            answers: Mutex::new(Vec::new()),
            config,
            http,
            base_url: Mutex::new(String::new()),
            drain_lock: tokio::sync::Mutex::new(()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The store's clock (unix seconds), skew included.
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.clock_skew()
    }

    /// The outbox's answers from `from` to `to`, by status (`"none"`: no answer).
    pub fn answers_between(&self, from: Instant, to: Instant) -> BTreeMap<String, u64> {
        let mut by_status = BTreeMap::new();
        for (at, status) in self
            .answers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            if *at >= from && *at <= to {
                let key = status.map_or_else(|| "none".to_owned(), |s| s.to_string());
                *by_status.entry(key).or_insert(0) += 1;
            }
        }
        by_status
    }

    /// Seconds the store's clock is ahead of the real one (negative: behind).
    pub fn clock_skew(&self) -> i64 {
        self.clock_skew.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Moves the store's clock: `secs` ahead of the real one (negative: behind).
    pub fn set_clock_skew(&self, secs: i64) {
        self.clock_skew.store(secs, std::sync::atomic::Ordering::Relaxed);
    }

    /// The storefront base URL the admin shows for pairing (no trailing `/`).
    pub fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// "Generate pairing code": 16 random bytes as 32 lower-case hex characters; only the
    /// hash is kept; generating again invalidates the previous code.
    pub fn generate_pairing_code(&self) -> String {
        let mut bytes = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).expect("RNG");
        let code = hex::encode(bytes);
        self.lock().pairing = Some(Pairing {
            hash: sha256_hex(&code),
            issued_at: self.now(),
        });
        code
    }

    /// Ages the current pairing code by `secs` (tests of the 30-minute expiry).
    pub fn age_pairing_code(&self, secs: i64) {
        if let Some(p) = self.lock().pairing.as_mut() {
            p.issued_at -= secs;
        }
    }

    pub fn is_connected(&self) -> bool {
        self.lock()
            .connection
            .as_ref()
            .is_some_and(|c| !c.tenant_id.is_empty() && !c.api_key.is_empty())
    }

    pub fn tenant_id(&self) -> Option<String> {
        self.lock().connection.as_ref().map(|c| c.tenant_id.clone())
    }

    /// The api_key the store holds (tests use it to act as the store).
    pub fn api_key(&self) -> Option<String> {
        self.lock().connection.as_ref().map(|c| c.api_key.clone())
    }

    pub fn ledger_base_url(&self) -> String {
        self.lock().ledger_base_url.clone()
    }

    pub fn outbox(&self) -> Vec<OutboxRow> {
        self.lock().outbox.clone()
    }

    pub fn mirror(&self) -> Vec<MirrorRow> {
        self.lock().mirror.values().cloned().collect()
    }

    /// When the latest sync-state for `entity_type` `id` arrived (unix ms).
    pub fn sync_state_received_at(&self, entity_type: &str, id: i64) -> Option<i64> {
        self.lock().synced_at.get(&(entity_type.to_owned(), id)).copied()
    }

    pub fn sync_state_calls(&self) -> u64 {
        self.lock().sync_state_calls
    }

    /// Lines of the module's own log (`var/log/byte8/client.log`).
    pub fn log(&self) -> Vec<String> {
        self.lock().log.clone()
    }

    pub fn set_faults(&self, faults: Faults) {
        self.lock().faults = faults;
    }

    pub fn catalogue(&self) -> Catalogue {
        self.lock().catalogue.clone()
    }

    /// Changes the store's data directly (tests placing exact orders).
    pub fn with_catalogue<T>(&self, f: impl FnOnce(&mut Catalogue) -> T) -> T {
        f(&mut self.lock().catalogue)
    }

    /// The store's clock as Magento formats timestamps (`YYYY-MM-DDTHH:MM:SSZ`).
    pub fn now_text(&self) -> String {
        chrono::DateTime::from_timestamp(self.now(), 0)
            .expect("time")
            .format("%Y-%m-%dT%H:%M:%SZ")
            .to_string()
    }

    /// The admin's Disconnect button: tell the ledger (best effort), then forget the keys.
    /// Keeps the ledger base URL, as the module does.
    pub async fn disconnect(&self) -> bool {
        let Some(connection) = self.lock().connection.clone() else {
            return true;
        };
        let ledger = self.ledger_base_url();
        let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
        let acknowledged = self
            .http
            .post(format!("{ledger}/v1/tenant/disconnect"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header(
                "Idempotency-Key",
                format!("disconnect:{}", sha1_hex(&connection.tenant_id)),
            )
            .body("{}")
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let mut inner = self.lock();
        inner.connection = None;
        inner.pairing = None;
        acknowledged
    }

    /// `GET {ledger}/v1/tile/health` with the module's token; `{}` on any failure.
    pub async fn fetch_tile_health(&self) -> Value {
        let Some(connection) = self.lock().connection.clone() else {
            return json!({});
        };
        let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
        let response = self
            .http
            .get(format!("{}/v1/tile/health", self.ledger_base_url()))
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::ACCEPT, "application/json")
            .send()
            .await;
        match response {
            Ok(r) if r.status().is_success() => r.json().await.unwrap_or_else(|_| json!({})),
            _ => json!({}),
        }
    }

    /// Checks the ledger's token on a request to a `Byte8_Client::byte8_webapi` route.
    fn authorize(&self, headers: &HeaderMap) -> Result<(), Box<Response>> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.get(..7)
                    .filter(|p| p.eq_ignore_ascii_case("bearer "))
                    .map(|_| &v[7..])
            })
            .ok_or_else(|| Box::new(unauthorized()))?;
        let now = self.now();
        let mut inner = self.lock();
        let Some(connection) = inner.connection.clone() else {
            inner.log.push("auth: module not paired".to_owned());
            return Err(Box::new(unauthorized()));
        };
        match jwt::verify_inbound(
            token,
            &connection.api_key,
            &connection.tenant_id,
            now,
            &mut inner.replay,
        ) {
            Ok(()) => Ok(()),
            Err(reason) => {
                inner.log.push(format!("auth: rejected ({reason:?})"));
                Err(Box::new(unauthorized()))
            }
        }
    }

    fn take_fault(&self) -> Option<Response> {
        let mut inner = self.lock();
        if inner.faults.count == 0 {
            return None;
        }
        inner.faults.count -= 1;
        let status = StatusCode::from_u16(inner.faults.status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
        Some(magento_error(status, "Injected fault", json!([])))
    }
}

/// The store's HTTP routes: the module's REST API and the sandbox controls.
pub fn router(store: Arc<Store>) -> Router {
    Router::new()
        .route("/rest/V1/byte8/setup/pair", post(setup_pair))
        .route("/rest/V1/byte8/ping", get(ping))
        .route("/rest/V1/byte8/payment-methods", get(payment_methods))
        .route("/rest/V1/byte8/sync-state", post(sync_state))
        .route("/rest/V1/byte8/{kind}/{id}", get(entity))
        .route("/", get(admin_page))
        .route("/admin/sync", get(admin_sync_page))
        .route("/sandbox/pairing-code", post(control_pairing_code))
        .route("/sandbox/state", get(control_state))
        .route(
            "/sandbox/outbox",
            get(|State(s): State<Arc<Store>>| async move { Json(s.outbox()) }),
        )
        .route(
            "/sandbox/mirror",
            get(|State(s): State<Arc<Store>>| async move { Json(s.mirror()) }),
        )
        .route("/sandbox/simulate", post(control_simulate))
        .route("/sandbox/drain", post(control_drain))
        .route("/sandbox/requeue", post(control_requeue))
        .route("/sandbox/disconnect", post(control_disconnect))
        .route("/sandbox/faults", post(control_faults))
        .route("/sandbox/tile", get(control_tile))
        .route("/sandbox/clock", post(control_clock))
        .layer(axum::middleware::from_fn_with_state(store.clone(), date_by_store_clock))
        .with_state(store)
}

/// A store serving on a bound listener, with its outbox cron running.
#[derive(Debug)]
pub struct RunningStore {
    pub store: Arc<Store>,
    pub base_url: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningStore {
    /// Serves `store` on `listener` and runs its drain cron every `drain_interval`.
    pub fn start(store: Arc<Store>, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        *store.base_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = base_url.clone();
        let server = {
            let (app, token) = (router(store.clone()), shutdown.clone());
            tokio::spawn(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(token.cancelled_owned())
                    .await;
            })
        };
        let cron = {
            let (store, token) = (store.clone(), shutdown.clone());
            tokio::spawn(async move {
                // The first run comes one interval after start, like a cron.
                let period = store.config.drain_interval;
                let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        () = token.cancelled() => return,
                        _ = tick.tick() => { store.drain_once().await; }
                    }
                }
            })
        };
        Ok(Self {
            store,
            base_url,
            shutdown,
            tasks: vec![server, cron],
        })
    }

    /// Binds `127.0.0.1:0` and starts a fresh store.
    pub async fn spawn(config: StoreConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(Store::new(config), listener, CancellationToken::new())
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        for t in std::mem::take(&mut self.tasks) {
            let _ = t.await;
        }
    }
}

impl Drop for RunningStore {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_encoding_keeps_uuids_and_event_names() {
        assert_eq!(
            encode_segment("a8d4e2e0-1c4e-11ef-9262-0242ac120002"),
            "a8d4e2e0-1c4e-11ef-9262-0242ac120002"
        );
        assert_eq!(encode_segment("invoice.paid"), "invoice.paid");
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
    }

    #[test]
    fn derived_strings_match_the_contract() {
        assert_eq!(
            sha256_hex("deadbeefcafef00d0123456789abcdef"),
            "420cad0343a05510fff1d785801161008a91d671944f89a6abeb3be72b1da9e7"
        );
        assert_eq!(sha1_hex("tenant-1"), "f5f977ba2f5ef19b07cb48c65b179747e39a177d");
    }

    #[test]
    fn enqueue_drops_duplicate_keys_and_adds_pending_mirror_rows() {
        let store = Store::new(StoreConfig::default());
        assert!(store.save_customer(3).is_some());
        assert!(
            store.save_customer(3).is_none(),
            "same key within the outbox's lifetime sends nothing"
        );
        let mirror = store.mirror();
        assert_eq!(
            (mirror[0].entity_type.as_str(), mirror[0].sync_status.as_str()),
            ("customer", "pending")
        );
    }

    #[test]
    fn mysql_timestamp_rules() {
        assert!(mysql_accepts("2026-04-29 10:11:12", true));
        assert!(!mysql_accepts("2026-04-29T10:11:12Z", true));
        assert!(mysql_accepts("2026-04-29T10:11:12Z", false));
    }
}
