//! A Magento store running the byte8 module, as the ledger sees it over HTTP.
//!
//! It keeps only the pairing code's SHA-256 (single use, 30 minutes, one generic 401),
//! stores the api_key and tenant at pairing, keeps an outbox that it drains like the
//! module's cron (batches of 50, ascending id, 2xx → succeeded, 4xx → dead-lettered at
//! once, 5xx/timeout → the backoff ladder, dead after 10 attempts, duplicate keys
//! dropped at enqueue), verifies the ledger's JWTs with the module's twelve rules
//! (replayed `jti` refused), serves canonical entities from a generated catalogue and
//! keeps the sync-state mirror behind the "Sage Status" chips.

pub mod catalogue;
pub mod jwt;
mod page;
pub mod php_json;
pub mod tax;
pub mod totals;

pub use page::tile_verdict;

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

    /// Enqueues an event as the module's observers do: dropped when the key already
    /// exists in the outbox (whatever its status), plus a `pending` mirror row when none exists.
    pub fn enqueue(
        &self,
        event_name: &str,
        entity_id: i64,
        website_id: i64,
        store_id: i64,
        payload: Value,
    ) -> Option<u64> {
        self.enqueue_at(event_name, entity_id, website_id, store_id, payload, &self.now_text())
    }

    /// [`Self::enqueue`] as an observer that ran at `occurred_at` (UTC, `…Z`).
    pub fn enqueue_at(
        &self,
        event_name: &str,
        entity_id: i64,
        website_id: i64,
        store_id: i64,
        payload: Value,
        occurred_at: &str,
    ) -> Option<u64> {
        let key = format!("{event_name}:{entity_id}");
        let body = event_body(entity_id, website_id, store_id, occurred_at, &payload);
        let mut inner = self.lock();
        if inner.outbox.iter().any(|r| r.idempotency_key == key) {
            inner.log.push(format!("outbox: dropped duplicate key {key}"));
            return None;
        }
        let id = inner.next_outbox_id;
        inner.next_outbox_id += 1;
        inner.outbox.push(OutboxRow {
            id,
            event_name: event_name.to_owned(),
            idempotency_key: key,
            body,
            status: OutboxStatus::Pending,
            attempts: 0,
            last_status_code: None,
            last_error: None,
            last_backoff_ms: None,
            next_attempt_at: None,
        });
        let entity_type = event_name.split('.').next().unwrap_or_default().to_owned();
        if entity_id > 0 && ["invoice", "creditmemo", "customer", "product"].contains(&entity_type.as_str()) {
            inner
                .mirror
                .entry((entity_type.clone(), entity_id))
                .or_insert(MirrorRow {
                    entity_type,
                    magento_entity_id: entity_id,
                    provider: PROVIDER.to_owned(),
                    sync_status: "pending".to_owned(),
                    provider_entity_id: None,
                    provider_reference: None,
                    skip_reason: None,
                    error_code: None,
                    last_sync_at: None,
                });
        }
        Some(id)
    }

    /// A customer places an order that is invoiced (captured online when `paid`, which
    /// queues `invoice.created` then `invoice.paid`). Returns (order id, invoice id).
    pub fn place_order(&self, paid: bool) -> (i64, i64) {
        self.place_order_paying(None, paid)
    }

    /// [`Self::place_order`] paid with `method` (an online method's refunds name their
    /// invoice; an offline one's are made from the order).
    pub fn place_order_by(&self, method: &str, paid: bool) -> (i64, i64) {
        self.place_order_paying(Some(method), paid)
    }

    fn place_order_paying(&self, method: Option<&str>, paid: bool) -> (i64, i64) {
        let now = self.now_text();
        let (order_id, invoice_id, increment_id) = {
            let mut inner = self.lock();
            let mut rng = inner.rng.clone();
            let order_id = inner.catalogue.random_order_at(&mut rng, Some(&now));
            if let Some(method) = method
                && let Some(order) = inner.catalogue.orders.iter_mut().find(|o| o.id == order_id)
                && order.payment_method != "free"
            {
                method.clone_into(&mut order.payment_method);
            }
            let partial = rng.chance(15);
            inner.rng = rng;
            let invoice_id = inner
                .catalogue
                .invoice_order(order_id, partial, paid)
                .expect("a new order has lines to invoice");
            let increment = inner
                .catalogue
                .invoice(invoice_id)
                .expect("invoice")
                .increment_id
                .clone();
            (order_id, invoice_id, increment)
        };
        self.enqueue(
            "invoice.created",
            invoice_id,
            1,
            1,
            json!({ "increment_id": increment_id, "paid": paid }),
        );
        if paid {
            self.enqueue(
                "invoice.paid",
                invoice_id,
                1,
                1,
                json!({ "increment_id": increment_id }),
            );
        }
        (order_id, invoice_id)
    }

    /// Marks an open invoice paid (offline capture), queueing `invoice.paid`.
    pub fn pay_invoice(&self, invoice_id: i64) -> bool {
        let now = self.now_text();
        let increment = {
            let mut inner = self.lock();
            if !inner.catalogue.pay(invoice_id, &now) {
                return false;
            }
            inner.catalogue.invoice(invoice_id).expect("paid").increment_id.clone()
        };
        self.enqueue("invoice.paid", invoice_id, 1, 1, json!({ "increment_id": increment }))
            .is_some()
    }

    /// Refunds an invoice (partially, with an adjustment fee, when `partial`).
    /// Refunds an invoice (partially, with an adjustment fee, when `partial`). Offline
    /// methods refund from the order: the memo then names no invoice.
    pub fn refund(&self, invoice_id: i64, partial: bool) -> Option<i64> {
        self.record_memo(|cat| {
            let fee = if partial {
                rust_decimal::Decimal::new(250, 2)
            } else {
                rust_decimal::Decimal::ZERO
            };
            cat.refund_invoice(invoice_id, partial, fee, rust_decimal::Decimal::ZERO)
        })
    }

    /// Refunds only the shipping of an invoice's order.
    pub fn refund_shipping(&self, invoice_id: i64) -> Option<i64> {
        self.record_memo(|cat| cat.refund_shipping(invoice_id))
    }

    /// A goodwill refund: every item at 0, an adjustment refund of `amount`.
    pub fn refund_adjustment(&self, invoice_id: i64, amount: rust_decimal::Decimal) -> Option<i64> {
        self.record_memo(|cat| cat.refund_adjustment(invoice_id, amount))
    }

    fn record_memo(&self, make: impl FnOnce(&mut Catalogue) -> Option<i64>) -> Option<i64> {
        let (memo_id, increment) = {
            let mut inner = self.lock();
            let memo = make(&mut inner.catalogue)?;
            (
                memo,
                inner.catalogue.credit_memo(memo).expect("memo").increment_id.clone(),
            )
        };
        self.enqueue(
            "creditmemo.created",
            memo_id,
            1,
            1,
            json!({ "increment_id": increment }),
        );
        Some(memo_id)
    }

    /// Cancels an open invoice. The module sends nothing for it (its observers fire on
    /// an invoice's first save and on its payment).
    pub fn cancel_invoice(&self, invoice_id: i64) -> bool {
        self.lock().catalogue.cancel(invoice_id)
    }

    /// `bin/magento byte8:sage:invoice:sync --id N --event=created`: posts
    /// `invoice.created` straight to the ledger with the same key and a fresh
    /// `occurred_at`, bypassing the outbox. Returns the ledger's status.
    pub async fn republish_invoice(&self, invoice_id: i64) -> Option<u16> {
        let connection = self.lock().connection.clone()?;
        let (increment, paid) = {
            let inner = self.lock();
            let inv = inner.catalogue.invoice(invoice_id)?;
            (inv.increment_id.clone(), inv.state == catalogue::InvoiceState::Paid)
        };
        let body = event_body(
            invoice_id,
            1,
            1,
            &self.now_text(),
            &json!({ "increment_id": increment, "paid": paid }),
        );
        let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
        let url = format!(
            "{}/webhooks/magento/{}/invoice.created",
            self.ledger_base_url(),
            encode_segment(&connection.tenant_id)
        );
        self.http
            .post(url)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", format!("invoice.created:{invoice_id}"))
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn save_customer(&self, customer_id: i64) -> Option<u64> {
        self.enqueue("customer.upserted", customer_id, 1, 0, json!({}))
    }

    pub fn save_product(&self, product_id: i64) -> Option<u64> {
        self.enqueue("product.upserted", product_id, 0, 0, json!({}))
    }

    /// A mix of store activity: orders (paid and unpaid), refunds, customer and product saves.
    pub fn simulate(&self, orders: usize) -> Vec<u64> {
        let before = self.lock().next_outbox_id;
        for _ in 0..orders {
            let roll = {
                let mut inner = self.lock();
                inner.rng.below(100)
            };
            let paid = roll % 2 == 0;
            let (_, invoice) = self.place_order(paid);
            if roll < 15 {
                self.refund(invoice, roll < 8);
            }
            if roll == 15 {
                self.refund_shipping(invoice);
            }
            if roll == 16 {
                self.refund_adjustment(invoice, rust_decimal::Decimal::new(500, 2));
            }
            if (15..25).contains(&roll) {
                self.save_customer(1 + (roll as i64 % 24));
            }
            if (25..30).contains(&roll) {
                self.save_product(1 + (roll as i64 % 12));
            }
            if !paid && roll > 90 {
                self.pay_invoice(invoice);
            }
        }
        let after = self.lock().next_outbox_id;
        (before..after).collect()
    }

    /// Lets time pass for the outbox: every waiting row becomes due now.
    pub fn make_due(&self) {
        for row in self.lock().outbox.iter_mut() {
            row.next_attempt_at = None;
        }
    }

    /// Requeues dead-lettered rows (the module's `outbox:requeue`): pending, attempts 0.
    pub fn requeue(&self, id: Option<u64>) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for row in inner
            .outbox
            .iter_mut()
            .filter(|r| r.status == OutboxStatus::DeadLettered && id.is_none_or(|i| i == r.id))
        {
            row.status = OutboxStatus::Pending;
            row.attempts = 0;
            row.next_attempt_at = None;
            n += 1;
        }
        n
    }

    /// One run of the outbox cron.
    pub async fn drain_once(&self) -> DrainReport {
        let _running = self.drain_lock.lock().await;
        let (connection, ledger, batch) = {
            let inner = self.lock();
            let Some(connection) = inner.connection.clone() else {
                return DrainReport::default(); // not connected: rows stay pending
            };
            let now = Instant::now();
            let mut due: Vec<OutboxRow> = inner
                .outbox
                .iter()
                .filter(|r| r.status == OutboxStatus::Pending && r.next_attempt_at.is_none_or(|t| t <= now))
                .cloned()
                .collect();
            due.sort_by_key(|r| r.id);
            due.truncate(DRAIN_BATCH);
            (connection, inner.ledger_base_url.clone(), due)
        };
        let mut report = DrainReport::default();
        for row in batch {
            report.sent += 1;
            let url = format!(
                "{ledger}/webhooks/magento/{}/{}",
                encode_segment(&connection.tenant_id),
                encode_segment(&row.event_name)
            );
            let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
            let result = self
                .http
                .post(&url)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &row.idempotency_key)
                .body(row.body.clone())
                .send()
                .await;
            let (status, body) = match result {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (Some(status), r.text().await.unwrap_or_default())
                }
                Err(e) => (None, e.to_string()),
            };
            self.answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((Instant::now(), status));
            let mut inner = self.lock();
            let Some(stored) = inner.outbox.iter_mut().find(|r| r.id == row.id) else {
                continue;
            };
            stored.attempts += 1;
            stored.last_status_code = status;
            match status {
                Some(s) if (200..300).contains(&s) => {
                    stored.status = OutboxStatus::Succeeded;
                    stored.last_error = None;
                    report.succeeded += 1;
                }
                Some(s) if (400..500).contains(&s) => {
                    stored.status = OutboxStatus::DeadLettered;
                    let cut: String = body.chars().take(8192).collect();
                    stored.last_error = Some(format!("HTTP {s}: {cut}"));
                    report.dead_lettered += 1;
                }
                _ => {
                    let reason = match status {
                        Some(s) => format!("HTTP {s}: {}", body.chars().take(200).collect::<String>()),
                        None => body,
                    };
                    if stored.attempts >= MAX_ATTEMPTS {
                        stored.status = OutboxStatus::DeadLettered;
                        stored.last_status_code = None;
                        stored.last_error = Some(format!("transient_exhausted: {reason}"));
                        report.dead_lettered += 1;
                    } else {
                        let wait = BACKOFF_LADDER[(stored.attempts as usize - 1).min(BACKOFF_LADDER.len() - 1)];
                        let wait_ms = wait * 1000 / self.config.backoff_divisor.max(1);
                        stored.last_backoff_ms = Some(wait_ms);
                        stored.next_attempt_at = Some(Instant::now() + Duration::from_millis(wait_ms));
                        stored.last_error = Some(reason);
                        report.retrying += 1;
                    }
                }
            }
        }
        report
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

/// An event body in the module's key order, as its outbox stores it.
fn event_body(entity_id: i64, website_id: i64, store_id: i64, occurred_at: &str, payload: &Value) -> String {
    fn php(v: &Value) -> Php {
        match v {
            Value::Null => Php::Null,
            Value::Bool(b) => Php::Bool(*b),
            Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Php::Float(n.as_f64().unwrap_or_default()), Php::Int),
            Value::String(s) => Php::Str(s.clone()),
            Value::Array(a) => Php::List(a.iter().map(php).collect()),
            Value::Object(o) => Php::Obj(o.iter().map(|(k, v)| (k.clone(), php(v))).collect()),
        }
    }
    Php::obj()
        .put("magento_entity_id", entity_id)
        .put("website_id", website_id)
        .put("store_id", store_id)
        .put("occurred_at", occurred_at)
        .put("payload", php(payload))
        .build()
        .encode_event()
}

/// RFC 3986 percent-encoding of a path segment (unreserved characters kept).
fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------
// The module's REST routes.

async fn setup_pair(State(store): State<Arc<Store>>, body: Bytes) -> Response {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Decoding error: the request body is not valid JSON.",
            json!([]),
        );
    };
    let get = |snake: &str, camel: &str| {
        fields
            .get(snake)
            .or_else(|| fields.get(camel))
            .map(|v| v.as_str().unwrap_or_default().trim().to_owned())
    };
    let names = [
        ("pairing_code", "pairingCode"),
        ("tenant_id", "tenantId"),
        ("byte8_api_key", "byte8ApiKey"),
        ("ledger_base_url", "ledgerBaseUrl"),
    ];
    let mut values = Vec::new();
    for (snake, camel) in names {
        match get(snake, camel) {
            Some(v) => values.push(v),
            None => {
                return magento_error(
                    StatusCode::BAD_REQUEST,
                    "\"%fieldName\" is required. Enter and try again.",
                    json!({ "fieldName": snake }),
                );
            }
        }
    }
    let (code, tenant, key) = (values[0].clone(), values[1].clone(), values[2].clone());
    let ledger = values[3].trim_end_matches('/').to_owned();
    if code.is_empty() || tenant.is_empty() || key.is_empty() || ledger.is_empty() {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "pairing_code, tenant_id, byte8_api_key and ledger_base_url are all required.",
            json!([]),
        );
    }
    let absolute = ledger
        .strip_prefix("https://")
        .or_else(|| ledger.strip_prefix("http://"))
        .is_some_and(|rest| rest.chars().next().is_some_and(|c| c != '/'));
    if !absolute {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "ledger_base_url must be an absolute http(s) URL.",
            json!([]),
        );
    }
    let now = store.now();
    let mut inner = store.lock();
    let valid = inner
        .pairing
        .as_ref()
        .is_some_and(|p| now - p.issued_at <= PAIRING_TTL_SECS && sha256_hex(&code) == p.hash);
    if !valid {
        inner.log.push("pair: invalid or expired pairing code".to_owned());
        return magento_error(StatusCode::UNAUTHORIZED, "Invalid or expired pairing code.", json!([]));
    }
    inner.connection = Some(Connection {
        tenant_id: tenant,
        api_key: key,
    });
    inner.ledger_base_url = ledger;
    inner.pairing = None; // single use
    inner.log.push("pair: paired".to_owned());
    empty_ok()
}

async fn ping(State(store): State<Arc<Store>>, headers: HeaderMap) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    // Stock Magento serialises the associative array as a list.
    let now = chrono::DateTime::from_timestamp(store.now(), 0)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string();
    Json(json!([true, store.tenant_id(), now])).into_response()
}

async fn payment_methods(State(store): State<Arc<Store>>, headers: HeaderMap) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    let methods: Vec<Value> = catalogue::PAYMENT_METHODS
        .iter()
        .map(|(code, label, active)| json!({ "code": code, "label": label, "is_active": active }))
        .collect();
    Json(methods).into_response()
}

async fn entity(
    State(store): State<Arc<Store>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    if let Some(fault) = store.take_fault() {
        return fault;
    }
    let Ok(id) = id.parse::<i64>() else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Invalid type for value: \"%value\". Expected Type: \"int\".",
            json!({ "value": id }),
        );
    };
    let found = {
        let inner = store.lock();
        let cat = &inner.catalogue;
        match kind.as_str() {
            "invoice" => cat.invoice(id).and_then(|i| catalogue::render_invoice(cat, i)),
            "creditmemo" => cat.credit_memo(id).and_then(|m| catalogue::render_credit_memo(cat, m)),
            "payment" => cat.invoice(id).and_then(|i| catalogue::render_payment(cat, i)),
            "customer" => cat.customer(id).map(catalogue::render_customer),
            "product" => cat.product(id).map(catalogue::render_product),
            _ => return magento_error(StatusCode::NOT_FOUND, "Request does not match any route.", json!([])),
        }
    };
    match found {
        Some(v) => magento_json(&v),
        None if kind == "payment" => magento_error(
            StatusCode::NOT_FOUND,
            "Invoice %1 has no associated order payment.",
            json!([id.to_string()]),
        ),
        None => magento_error(
            StatusCode::NOT_FOUND,
            "The entity that was requested doesn't exist. Verify the entity and try again.",
            json!([]),
        ),
    }
}

/// MySQL TIMESTAMP in strict mode takes `YYYY-MM-DD HH:MM:SS`.
fn mysql_accepts(value: &str, strict: bool) -> bool {
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").is_ok()
        || (!strict && chrono::DateTime::parse_from_rfc3339(value).is_ok())
}

async fn sync_state(State(store): State<Arc<Store>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    if let Some(fault) = store.take_fault() {
        return fault;
    }
    let Ok(Value::Object(f)) = serde_json::from_slice::<Value>(&body) else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Decoding error: the request body is not valid JSON.",
            json!([]),
        );
    };
    let text = |k: &str, camel: &str| {
        f.get(k)
            .or_else(|| f.get(camel))
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    for (snake, camel) in [
        ("entity_type", "entityType"),
        ("magento_entity_id", "magentoEntityId"),
        ("provider", "provider"),
        ("sync_status", "syncStatus"),
    ] {
        if text(snake, camel).is_none() {
            return magento_error(
                StatusCode::BAD_REQUEST,
                "\"%fieldName\" is required. Enter and try again.",
                json!({ "fieldName": snake }),
            );
        }
    }
    let entity_type = text("entity_type", "entityType").unwrap_or_default();
    if !["invoice", "creditmemo", "customer", "product"].contains(&entity_type.as_str()) {
        return magento_error(StatusCode::BAD_REQUEST, "Unknown entity_type %1", json!([entity_type]));
    }
    let Some(id) = text("magento_entity_id", "magentoEntityId")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|i| *i > 0)
    else {
        return magento_error(StatusCode::BAD_REQUEST, "magento_entity_id must be positive", json!([]));
    };
    let provider = text("provider", "provider").unwrap_or_default();
    if provider.is_empty() || provider.len() > 32 {
        return magento_error(StatusCode::BAD_REQUEST, "provider must be non-empty", json!([]));
    }
    let status = text("sync_status", "syncStatus").unwrap_or_default();
    if !["synced", "skipped", "failed"].contains(&status.as_str()) {
        return magento_error(StatusCode::BAD_REQUEST, "Invalid sync_status %1", json!([status]));
    }
    let optional = |k: &str, camel: &str| text(k, camel).map(|v| v.chars().take(64).collect::<String>());
    let last_sync_at = text("last_sync_at", "lastSyncAt");
    if let Some(at) = &last_sync_at
        && !mysql_accepts(at, store.config.strict_timestamps)
    {
        // A database error surfaces as a localized exception: HTTP 400.
        return magento_error(
            StatusCode::BAD_REQUEST,
            "SQLSTATE[22007]: Invalid datetime format: 1292 Incorrect datetime value: '%1' for column 'last_sync_at'",
            json!([at]),
        );
    }
    let row = MirrorRow {
        entity_type: entity_type.clone(),
        magento_entity_id: id,
        provider,
        sync_status: status,
        provider_entity_id: optional("provider_entity_id", "providerEntityId"),
        provider_reference: optional("provider_reference", "providerReference"),
        skip_reason: optional("skip_reason", "skipReason"),
        error_code: optional("error_code", "errorCode"),
        last_sync_at: Some(last_sync_at.unwrap_or_else(|| {
            chrono::DateTime::from_timestamp(store.now(), 0)
                .expect("time")
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })),
    };
    let mut inner = store.lock();
    inner.sync_state_calls += 1;
    // Upsert that overwrites every column.
    inner
        .synced_at
        .insert((entity_type.clone(), id), chrono::Utc::now().timestamp_millis());
    inner.mirror.insert((entity_type, id), row);
    empty_ok()
}

// ---------------------------------------------------------------------------------
// Sandbox controls (not part of the module): drive the store from tests and the page.

#[derive(Debug, Deserialize)]
struct SimulateRequest {
    #[serde(default = "one")]
    orders: usize,
}

fn one() -> usize {
    1
}

#[derive(Debug, Deserialize)]
struct RequeueRequest {
    id: Option<u64>,
}

async fn control_pairing_code(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(json!({ "pairing_code": store.generate_pairing_code(), "magento_base_url": store.base_url() }))
}

async fn control_state(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(state_summary(&store))
}

fn state_summary(store: &Store) -> Value {
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

async fn control_simulate(State(store): State<Arc<Store>>, Json(req): Json<SimulateRequest>) -> Json<Value> {
    let ids = store.simulate(req.orders.min(10_000));
    Json(json!({ "queued": ids.len() }))
}

async fn control_drain(State(store): State<Arc<Store>>) -> Json<DrainReport> {
    Json(store.drain_once().await)
}

async fn control_requeue(State(store): State<Arc<Store>>, Json(req): Json<RequeueRequest>) -> Json<Value> {
    Json(json!({ "requeued": store.requeue(req.id) }))
}

async fn control_disconnect(State(store): State<Arc<Store>>) -> Json<Value> {
    Json(json!({ "ledger_acknowledged": store.disconnect().await }))
}

async fn control_faults(State(store): State<Arc<Store>>, Json(faults): Json<Faults>) -> Json<Faults> {
    store.set_faults(faults.clone());
    Json(faults)
}

#[derive(Debug, Deserialize)]
struct ClockControl {
    skew_secs: i64,
}

async fn control_clock(State(store): State<Arc<Store>>, Json(c): Json<ClockControl>) -> Json<Value> {
    store.set_clock_skew(c.skew_secs);
    Json(json!({ "skew_secs": c.skew_secs }))
}

/// Web servers date every answer by the server's clock (RFC 9110 §6.6.1), so a store
/// whose clock is off says so in its `Date` header.
async fn date_by_store_clock(
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

async fn control_tile(State(store): State<Arc<Store>>) -> Json<Value> {
    let health = store.fetch_tile_health().await;
    let verdict = page::tile_verdict(store.is_connected(), &health);
    Json(json!({ "health": health, "tile": verdict }))
}

async fn admin_page(State(store): State<Arc<Store>>) -> Html<String> {
    Html(page::render(&store, &state_summary(&store)))
}

/// The admin's "Sage Sync" page (contract §9): a plain iframe of
/// `{ledger}/embed/{tenant}` with no credential, `referrerpolicy="no-referrer"`, under
/// `frame-src {ledger base}`.
async fn admin_sync_page(State(store): State<Arc<Store>>) -> Response {
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
