use std::net::SocketAddr;

use axum::Router;
use ledger_core::{Secret, Settings, config::Layers};
use ledger_gateway::{AppState, http, server};
use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::TestDb;

type Configure = Box<dyn FnOnce(&mut Settings) + Send>;

/// Points Sage settings at a sandbox.
pub fn point_at_sage(settings: &mut Settings, sage: &ledger_sandbox::sage::RunningSage) {
    settings.sage_authorize_url = sage.sage.authorize_url().parse().expect("url");
    settings.sage_token_url = sage.sage.token_url().parse().expect("url");
    settings.sage_revoke_url = sage.sage.revoke_url().parse().expect("url");
    settings.sage_api_base = sage.sage.api_base();
    settings.sage_client_id = sage.sage.config().client_id.clone();
    settings.sage_client_secret = Secret::new(sage.sage.config().client_secret.clone());
}

/// Settings from the built-in defaults only: tests never read the developer's environment.
pub fn test_settings(db: &TestDb) -> Settings {
    let layers = Layers::collect(None, &|_| None).expect("defaults load");
    let mut settings = Settings::from_layers(&layers).expect("defaults are valid");
    settings.database_url = Secret::new(db.url().to_owned());
    settings.http_addr = "127.0.0.1:0".parse().expect("address");
    settings.metrics_addr = None;
    // Dozens of apps share one Postgres (100 connections) while a test binary runs.
    settings.db_max_connections = 10;
    settings.migrate_on_start = false; // the template is already migrated
    let keys = ledger_core::crypto::Keyring::generate_spec("test1");
    settings.master_keys = Some(std::sync::Arc::new(
        ledger_core::crypto::Keyring::parse(keys.expose()).expect("key"),
    ));
    settings.allow_insecure_magento = true;
    settings.allow_private_magento = true;
    settings
}

/// Builds a [`TestApp`].
#[derive(Default)]
pub struct TestAppBuilder {
    configure: Vec<Configure>,
    extra_routes: Option<Router<AppState>>,
    sage: Option<ledger_sandbox::sage::SageConfig>,
}

impl std::fmt::Debug for TestAppBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestAppBuilder").finish_non_exhaustive()
    }
}

impl TestAppBuilder {
    /// Adjusts settings before the app starts.
    pub fn configure(mut self, f: impl FnOnce(&mut Settings) + Send + 'static) -> Self {
        self.configure.push(Box::new(f));
        self
    }

    /// Starts a sandbox Sage and points the app's Sage settings at it.
    pub fn sage(mut self, config: ledger_sandbox::sage::SageConfig) -> Self {
        self.sage = Some(config);
        self
    }

    /// Routes merged in front of the application's middleware (for probing it).
    pub fn extra_routes(mut self, routes: Router<AppState>) -> Self {
        self.extra_routes = Some(routes);
        self
    }

    pub async fn spawn(self) -> TestApp {
        let db = TestDb::new().await;
        let mut settings = test_settings(&db);
        let sage = match self.sage {
            Some(config) => {
                let running = ledger_sandbox::sage::RunningSage::spawn(config)
                    .await
                    .expect("sandbox Sage");
                point_at_sage(&mut settings, &running);
                Some(running)
            }
            None => None,
        };
        for f in self.configure {
            f(&mut settings);
        }
        // Bind first: the port is known and accepting before the test sends anything.
        let listener = TcpListener::bind(settings.http_addr)
            .await
            .expect("binding 127.0.0.1:0");
        let addr = listener.local_addr().expect("bound address");
        settings.public_url = format!("http://{addr}");
        let state = AppState::connect(settings).await.expect("connecting the app");
        let router = match self.extra_routes {
            Some(extra) => http::router_with(state.clone(), extra),
            None => http::router(state.clone()),
        };
        let shutdown = CancellationToken::new();
        let deadline = state.settings.shutdown_deadline;
        let server = tokio::spawn(server::serve_with(
            listener,
            router,
            shutdown.clone(),
            deadline,
            state.settings.header_read_timeout,
        ));
        TestApp {
            addr,
            base_url: format!("http://{addr}"),
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("client"),
            state,
            db,
            sage,
            shutdown,
            server: Some(server),
        }
    }
}

/// The real server on an ephemeral port with its own database.
#[derive(Debug)]
pub struct TestApp {
    pub addr: SocketAddr,
    pub base_url: String,
    pub http: reqwest::Client,
    pub state: AppState,
    pub db: TestDb,
    /// The sandbox Sage, when the builder asked for one.
    pub sage: Option<ledger_sandbox::sage::RunningSage>,
    shutdown: CancellationToken,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        ledger_gateway::install_crypto_provider();
        TestAppBuilder::default()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .send()
            .await
            .expect("request reaches the test server")
    }

    /// Signals shutdown and waits for the server to stop.
    pub async fn shutdown(mut self) -> std::io::Result<()> {
        self.shutdown.cancel();
        match self.server.take() {
            Some(handle) => handle.await.expect("server task"),
            None => Ok(()),
        }
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A merchant created directly in the database, with an API token.
#[derive(Debug, Clone)]
pub struct TestMerchant {
    pub email: String,
    /// The account's password (the same for every test merchant).
    pub password: String,
    pub account_id: ledger_core::AccountId,
    pub tenant_id: ledger_core::TenantId,
    pub token: String,
}

/// A dashboard session: the `Cookie` header to send and the session's CSRF token.
#[derive(Debug, Clone)]
pub struct TestSession {
    pub cookie: String,
    pub csrf_token: String,
}

/// A sandbox store paired with a [`TestApp`] through `POST /v1/magento/connect`.
#[derive(Debug)]
pub struct PairedStore {
    pub store: ledger_sandbox::magento::RunningStore,
    pub binding_id: ledger_core::BindingId,
    pub merchant: TestMerchant,
    /// The api_key the store received when it was paired.
    pub paired_key: String,
}

impl PairedStore {
    pub fn tenant(&self) -> String {
        self.merchant.tenant_id.to_string()
    }

    pub fn api_key(&self) -> String {
        self.store.store.api_key().expect("the store is paired")
    }

    /// The key from pairing, still known after the store disconnected.
    pub fn api_key_before_disconnect(&self) -> String {
        self.paired_key.clone()
    }
}

impl TestApp {
    /// A new merchant account (email unique per call) and its API token.
    pub async fn merchant(&self) -> TestMerchant {
        let email = format!("m{}@example.com", uuid::Uuid::new_v4().simple());
        let created = ledger_tenant_binding::accounts::create_account(
            &self.state.db,
            &email,
            Some(Secret::new("correct-horse-battery".to_owned())),
            false,
        )
        .await
        .expect("account");
        let token = ledger_tenant_binding::accounts::create_api_token(
            &self.state.db,
            created.account_id,
            "test",
            self.state.settings.api_token_ttl,
        )
        .await
        .expect("token");
        TestMerchant {
            email,
            password: "correct-horse-battery".to_owned(),
            account_id: created.account_id,
            tenant_id: created.tenant_id,
            token: token.into_inner(),
        }
    }

    /// `POST /v1/magento/connect` as `merchant`.
    pub async fn connect(&self, merchant: &TestMerchant, base_url: &str, code: &str) -> reqwest::Response {
        self.http
            .post(self.url("/v1/magento/connect"))
            .bearer_auth(&merchant.token)
            .json(&serde_json::json!({ "magento_base_url": base_url, "pairing_code": code }))
            .send()
            .await
            .expect("request reaches the test server")
    }

    /// Starts a sandbox store (manual drain: its cron interval is an hour) and pairs it.
    pub async fn paired_store(&self) -> PairedStore {
        let config = ledger_sandbox::magento::StoreConfig {
            drain_interval: std::time::Duration::from_secs(3600),
            backoff_divisor: 1000,
            ..Default::default()
        };
        self.paired_store_with(config).await
    }

    pub async fn paired_store_with(&self, config: ledger_sandbox::magento::StoreConfig) -> PairedStore {
        let merchant = self.merchant().await;
        let store = ledger_sandbox::magento::RunningStore::spawn(config)
            .await
            .expect("sandbox store");
        let code = store.store.generate_pairing_code();
        let response = self.connect(&merchant, &store.base_url, &code).await;
        assert_eq!(
            response.status(),
            201,
            "pairing failed: {}",
            response.text().await.unwrap_or_default()
        );
        let body: serde_json::Value = response.json().await.expect("json");
        let binding_id = body["binding_id"].as_str().expect("binding_id").parse().expect("uuid");
        let paired_key = store.store.api_key().expect("paired");
        PairedStore {
            store,
            binding_id,
            merchant,
            paired_key,
        }
    }
}

impl TestApp {
    /// The sandbox Sage (panics when the app was built without one).
    pub fn sage(&self) -> &std::sync::Arc<ledger_sandbox::sage::Sage> {
        &self.sage.as_ref().expect("built with .sage(...)").sage
    }

    /// Starts the Sage connect flow for `binding` and returns the callback URL Sage
    /// redirected to (auto-approving sandboxes redirect at once).
    pub async fn sage_authorize(
        &self,
        merchant: &TestMerchant,
        binding: ledger_core::BindingId,
        region: &str,
    ) -> String {
        let res = self
            .http
            .post(self.url(&format!("/v1/bindings/{binding}/sage/authorize")))
            .bearer_auth(&merchant.token)
            .json(&serde_json::json!({ "region": region }))
            .send()
            .await
            .expect("authorize");
        assert_eq!(res.status(), 200, "authorize: {}", res.text().await.unwrap_or_default());
        let body: serde_json::Value = res.json().await.expect("json");
        let url = body["authorize_url"].as_str().expect("authorize_url").to_owned();
        let res = self.http.get(&url).send().await.expect("Sage authorize page");
        assert!(res.status().is_redirection(), "Sage redirects back: {}", res.status());
        res.headers()["location"].to_str().expect("location").to_owned()
    }

    /// Runs the whole connect flow (auto-approving sandbox) and returns the callback's answer.
    pub async fn connect_sage(&self, paired: &PairedStore) -> reqwest::Response {
        let callback = self.sage_authorize(&paired.merchant, paired.binding_id, "uk").await;
        self.finish_callback(&paired.merchant, &callback).await
    }

    /// Connects (or reconnects) `paired` to the sandbox business named `name` (the
    /// sandbox offers several): the whole flow, then the business choice.
    pub async fn connect_to_business(&self, paired: &PairedStore, name: &str) {
        let res = self.connect_sage(paired).await;
        assert!(
            res.status().is_success() || res.status().is_redirection(),
            "connect: {}",
            res.status()
        );
        let business = self
            .sage()
            .businesses()
            .into_iter()
            .find(|b| b.name == name)
            .unwrap_or_else(|| panic!("the sandbox has a business named {name}"));
        let res = self
            .http
            .post(self.url(&format!("/v1/bindings/{}/sage/business", paired.binding_id)))
            .bearer_auth(&paired.merchant.token)
            .json(&serde_json::json!({ "business_id": business.id }))
            .send()
            .await
            .expect("choose business");
        assert_eq!(
            res.status(),
            200,
            "choose {name}: {}",
            res.text().await.unwrap_or_default()
        );
    }

    /// A sign-in session for `merchant` (made directly, without the password's hashing cost).
    pub async fn session(&self, merchant: &TestMerchant) -> TestSession {
        let (cookie, csrf_token) = ledger_tenant_binding::accounts::create_session(
            &self.state.db,
            merchant.account_id,
            std::time::Duration::from_secs(3600),
        )
        .await
        .expect("session");
        TestSession {
            cookie: format!("{}={}", ledger_tenant_binding::auth::SESSION_COOKIE, cookie.expose()),
            csrf_token,
        }
    }

    /// Opens Sage's redirect back in `merchant`'s signed-in browser and, when the flow was
    /// started through the API, answers the confirmation page with "Connect". Returns the
    /// last answer.
    pub async fn finish_callback(&self, merchant: &TestMerchant, callback: &str) -> reqwest::Response {
        let session = self.session(merchant).await;
        let page = self
            .http
            .get(callback)
            .header("cookie", &session.cookie)
            .send()
            .await
            .expect("callback");
        let grant: Option<uuid::Uuid> = sqlx::query_scalar(
            "SELECT id FROM sage_pending_grants WHERE account_id = $1 ORDER BY created_at DESC LIMIT 1",
        )
        .bind(merchant.account_id.0)
        .fetch_optional(&self.state.db)
        .await
        .expect("pending grants");
        let Some(grant) = grant.filter(|_| page.status() == 200) else {
            return page;
        };
        let html = page.text().await.expect("confirmation page");
        assert!(html.contains("id=\"confirm-connect\""), "a confirmation page: {html}");
        self.http
            .post(self.url("/sage/callback/confirm"))
            .header("cookie", &session.cookie)
            .form(&[
                ("csrf_token", session.csrf_token.as_str()),
                ("grant_id", &grant.to_string()),
                ("decision", "connect"),
            ])
            .send()
            .await
            .expect("confirm")
    }
}

/// The background workers of a [`TestApp`], stopped when dropped.
#[derive(Debug)]
pub struct Workers {
    token: CancellationToken,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
}

impl Workers {
    pub async fn stop(mut self) {
        self.token.cancel();
        if let Some(h) = self.handle.take() {
            let _ = h.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.token.cancel();
    }
}

impl TestApp {
    /// Runs the worker process's loops in-process against this app's database.
    pub fn start_workers(&self) -> Workers {
        let token = CancellationToken::new();
        let handle = tokio::spawn(ledger_gateway::worker::run(self.state.clone(), token.clone()));
        Workers {
            token,
            handle: Some(handle),
        }
    }

    /// Waits until no job is queued, running or waiting (up to `limit`).
    pub async fn wait_idle(&self, limit: std::time::Duration) -> bool {
        let started = std::time::Instant::now();
        loop {
            let busy: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')")
                .fetch_one(&self.state.db)
                .await
                .unwrap_or(1);
            if busy == 0 {
                return true;
            }
            if started.elapsed() > limit {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Reads the binding's settings, lets `change` edit them and saves them, as the
    /// dashboard's API clients do; panics unless the ledger accepts them.
    pub async fn update_settings(&self, paired: &PairedStore, change: impl FnOnce(&mut serde_json::Value)) {
        let url = self.url(&format!("/v1/bindings/{}/settings", paired.binding_id));
        let mut settings: serde_json::Value = self
            .http
            .get(&url)
            .bearer_auth(&paired.merchant.token)
            .send()
            .await
            .expect("settings")
            .json()
            .await
            .expect("settings body");
        change(&mut settings);
        let res = self
            .http
            .put(&url)
            .bearer_auth(&paired.merchant.token)
            .json(&settings)
            .send()
            .await
            .expect("save settings");
        let status = res.status();
        assert_eq!(status, 200, "settings saved: {}", res.text().await.unwrap_or_default());
    }

    /// Maps the sandbox store's payment methods to `business`'s first bank account.
    pub async fn map_payments(&self, paired: &PairedStore, business: &str) {
        let bank = self
            .sage()
            .businesses()
            .into_iter()
            .find(|b| b.id == business)
            .expect("the business")
            .bank_accounts[0]["id"]
            .as_str()
            .expect("a bank account")
            .to_owned();
        self.update_settings(paired, |s| {
            s["payment_method_map"] =
                serde_json::json!({ "checkmo": bank, "banktransfer": bank, "stripe_payments": bank });
        })
        .await;
    }

    /// A paired store with Sage connected (the app must have a sandbox Sage).
    pub async fn connected_store(&self) -> PairedStore {
        let paired = self.paired_store().await;
        let res = self.connect_sage(&paired).await;
        assert_eq!(res.status(), 303, "Sage connect");
        paired
    }
}
