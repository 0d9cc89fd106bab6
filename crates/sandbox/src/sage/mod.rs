//! Sage Business Cloud Accounting, as the ledger sees it over HTTP: the OAuth server
//! (authorize with consent and business choice, token with PKCE and rotating refresh
//! tokens, revoke) and the API v3.1 (businesses, reference data, and the documents the
//! sync engine posts).
//!
//! Behaviour follows `sage-accounting.md`: codes single-use for 60 s, access tokens
//! 300 s, refresh tokens rotating (a used one answers `invalid_grant`) and expiring
//! after 31 days, client credentials only in the form body, `X-Business` selecting the
//! business (the lead one without it), the `$items`/`$next` envelope, Sage's error
//! array, and the "No active subscription" 401. The clock can be moved forward and
//! faults switched on.

pub mod api;
pub mod data;
pub mod documents;
pub mod oauth;

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use axum::{
    Json, Router,
    extract::State,
    routing::{get, post},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use self::data::Business;

/// How the sandbox behaves.
#[derive(Debug, Clone)]
pub struct SageConfig {
    pub client_id: String,
    pub client_secret: String,
    /// Redirect URIs the app registered; empty accepts any (development).
    pub redirect_uris: Vec<String>,
    /// Skip the consent page (tests); `ledger dev` shows it.
    pub auto_approve: bool,
    /// Businesses the sandbox user can access: (name, country).
    pub businesses: Vec<(String, String)>,
    pub access_ttl_secs: i64,
    pub refresh_ttl_secs: i64,
    pub code_ttl_secs: i64,
    /// Largest `items_per_page` honoured (Sage: 200); smaller values exercise paging.
    pub max_items_per_page: usize,
    /// Per-business rate limit: at most `.0` API calls in any `.1` milliseconds (429 beyond).
    pub rate_limit: Option<(usize, i64)>,
}

impl Default for SageConfig {
    fn default() -> Self {
        Self {
            client_id: "sandbox-client".to_owned(),
            client_secret: "sandbox-secret".to_owned(),
            redirect_uris: Vec::new(),
            auto_approve: true,
            businesses: vec![("Demo Trading Ltd".to_owned(), "GB".to_owned())],
            access_ttl_secs: 300,
            refresh_ttl_secs: 2_678_400,
            code_ttl_secs: 60,
            max_items_per_page: 200,
            rate_limit: Some((200, 60_000)),
        }
    }
}

/// Switchable failures.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SageFaults {
    /// The next `token_failures` token-endpoint calls answer `token_status` (e.g. 503).
    #[serde(default)]
    pub token_status: u16,
    #[serde(default)]
    pub token_failures: u32,
    /// Delay every token-endpoint answer (slow Sage).
    #[serde(default)]
    pub token_delay_ms: u64,
    /// The next `drop_token_responses` successful token calls take effect but the
    /// answer is dropped (the connection closes).
    #[serde(default)]
    pub drop_token_responses: u32,
    /// The next authorize is answered `error=access_denied` (the user clicked Deny).
    #[serde(default)]
    pub deny_next_authorize: bool,
    /// The next `api_failures` API calls answer `api_status`.
    #[serde(default)]
    pub api_status: u16,
    #[serde(default)]
    pub api_failures: u32,
    /// Delay every API answer (slow Sage).
    #[serde(default)]
    pub api_delay_ms: u64,
    /// The next `drop_after_commit` successful writes take effect, but the answer is
    /// dropped (the connection closes): "commit, then drop the response".
    #[serde(default)]
    pub drop_after_commit: u32,
    /// The next `reject_writes` posts of `reject_kind` (`sales_invoice`, `contact`, ...)
    /// are refused as Sage refuses invalid records (422 `RecordInvalid`).
    #[serde(default)]
    pub reject_kind: String,
    #[serde(default)]
    pub reject_writes: u32,
    /// The next `skew_totals` sales invoices or credit notes are booked with VAT and
    /// total one cent above what their lines add up to — Sage rounding a way no model
    /// predicted — so the ledger's check after posting has something to catch.
    #[serde(default)]
    pub skew_totals: u32,
}

/// Call counters, for tests to assert on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SageStats {
    pub authorizations: u64,
    pub code_exchanges: u64,
    pub refreshes: u64,
    pub invalid_grants: u64,
    pub revocations: u64,
    pub api_calls: u64,
}

#[derive(Debug, Clone)]
struct CodeGrant {
    client_id: String,
    redirect_uri: String,
    challenge: Option<(String, String)>,
    issued_at: i64,
    used: bool,
}

#[derive(Debug, Clone)]
struct AccessGrant {
    expires_at: i64,
}

#[derive(Debug, Clone)]
struct RefreshGrant {
    expires_at: i64,
    used: bool,
    revoked: bool,
}

#[derive(Debug)]
struct Inner {
    codes: HashMap<String, CodeGrant>,
    access: HashMap<String, AccessGrant>,
    refresh: HashMap<String, RefreshGrant>,
    businesses: BTreeMap<String, Business>,
    /// Business ids in creation order; the first is the lead business.
    order: Vec<String>,
    faults: SageFaults,
    stats: SageStats,
    clock_offset: i64,
}

/// The sandbox. Share it as `Arc<Sage>`.
#[derive(Debug)]
pub struct Sage {
    inner: Mutex<Inner>,
    config: SageConfig,
    base_url: Mutex<String>,
}

pub(crate) fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut buf).expect("RNG");
    hex::encode(buf)
}

impl Sage {
    pub fn new(config: SageConfig) -> Arc<Self> {
        let mut businesses = BTreeMap::new();
        let mut order = Vec::new();
        for (name, country) in &config.businesses {
            let business = Business::new(name, country);
            order.push(business.id.clone());
            businesses.insert(business.id.clone(), business);
        }
        Arc::new(Self {
            inner: Mutex::new(Inner {
                codes: HashMap::new(),
                access: HashMap::new(),
                refresh: HashMap::new(),
                businesses,
                order,
                faults: SageFaults::default(),
                stats: SageStats::default(),
                clock_offset: 0,
            }),
            config,
            base_url: Mutex::new(String::new()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn config(&self) -> &SageConfig {
        &self.config
    }

    /// Sage's clock (unix seconds), movable by [`Sage::advance`].
    pub fn now(&self) -> i64 {
        chrono::Utc::now().timestamp() + self.lock().clock_offset
    }

    /// Moves Sage's clock forward (token and code expiry).
    pub fn advance(&self, secs: i64) {
        self.lock().clock_offset += secs;
    }

    pub fn base_url(&self) -> String {
        self.base_url
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn authorize_url(&self) -> String {
        format!("{}/oauth2/auth/central", self.base_url())
    }

    pub fn token_url(&self) -> String {
        format!("{}/oauth2/token", self.base_url())
    }

    pub fn revoke_url(&self) -> String {
        format!("{}/oauth2/revoke", self.base_url())
    }

    pub fn api_base(&self) -> String {
        format!("{}/v3.1", self.base_url())
    }

    pub fn stats(&self) -> SageStats {
        self.lock().stats.clone()
    }

    pub fn set_faults(&self, faults: SageFaults) {
        self.lock().faults = faults;
    }

    pub fn businesses(&self) -> Vec<Business> {
        let inner = self.lock();
        inner
            .order
            .iter()
            .filter_map(|id| inner.businesses.get(id).cloned())
            .collect()
    }

    /// Turns a business's subscription off (its API calls answer the MSE 401) or on.
    pub fn set_lapsed(&self, business_id: &str, lapsed: bool) {
        if let Some(b) = self.lock().businesses.get_mut(business_id) {
            b.lapsed = lapsed;
        }
    }

    /// Whether a refresh token is still usable (not used, revoked or expired).
    pub fn refresh_token_is_live(&self, token: &str) -> bool {
        let now = self.now();
        self.lock()
            .refresh
            .get(token)
            .is_some_and(|g| !g.used && !g.revoked && g.expires_at > now)
    }

    /// Read access to a business's books (inspection for tests).
    pub fn with_business<R>(&self, business_id: &str, f: impl FnOnce(&Business) -> R) -> Option<R> {
        self.lock().businesses.get(business_id).map(f)
    }

    pub fn with_business_mut<R>(&self, business_id: &str, f: impl FnOnce(&mut Business) -> R) -> Option<R> {
        self.lock().businesses.get_mut(business_id).map(f)
    }
}

async fn control_stats(State(sage): State<Arc<Sage>>) -> Json<SageStats> {
    Json(sage.stats())
}

async fn control_faults(State(sage): State<Arc<Sage>>, Json(faults): Json<SageFaults>) -> Json<SageFaults> {
    sage.set_faults(faults.clone());
    Json(faults)
}

#[derive(Debug, Deserialize)]
struct Advance {
    secs: i64,
}

async fn control_clock(State(sage): State<Arc<Sage>>, Json(advance): Json<Advance>) -> Json<Value> {
    sage.advance(advance.secs);
    Json(json!({ "now": sage.now() }))
}

async fn control_businesses(State(sage): State<Arc<Sage>>) -> Json<Value> {
    Json(json!(
        sage.businesses()
            .iter()
            .map(|b| json!({ "id": b.id, "name": b.name, "country": b.country, "lapsed": b.lapsed }))
            .collect::<Vec<_>>()
    ))
}

/// All routes: OAuth, API and sandbox controls.
pub fn router(sage: Arc<Sage>) -> Router {
    Router::new()
        .route("/oauth2/auth/central", get(oauth::authorize))
        .route("/oauth2/consent", post(oauth::consent))
        .route("/oauth2/token", post(oauth::token))
        .route("/oauth2/revoke", post(oauth::revoke))
        .nest("/v3.1", api::router())
        .route("/sandbox/stats", get(control_stats))
        .route("/sandbox/faults", post(control_faults))
        .route("/sandbox/clock", post(control_clock))
        .route("/sandbox/businesses", get(control_businesses))
        .route("/sandbox/businesses/{id}/books", get(documents::control_books))
        .with_state(sage)
}

/// A Sage sandbox serving on a bound listener.
#[derive(Debug)]
pub struct RunningSage {
    pub sage: Arc<Sage>,
    pub base_url: String,
    shutdown: CancellationToken,
}

impl RunningSage {
    pub fn start(sage: Arc<Sage>, listener: TcpListener, shutdown: CancellationToken) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let base_url = format!("http://{addr}");
        *sage.base_url.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = base_url.clone();
        let app = router(sage.clone());
        let token = shutdown.clone();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(token.cancelled_owned())
                .await;
        });
        Ok(Self {
            sage,
            base_url,
            shutdown,
        })
    }

    pub async fn spawn(config: SageConfig) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        Self::start(Sage::new(config), listener, CancellationToken::new())
    }
}

impl Drop for RunningSage {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub(crate) fn sleep(ms: u64) -> tokio::time::Sleep {
    tokio::time::sleep(Duration::from_millis(ms))
}
