//! The demo `ledger dev` sets up: a merchant, a sandbox Magento store paired through
//! the real connect endpoint, and a trickle of store activity.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use ledger_core::{AppState, Secret};
use ledger_sandbox::magento::{RunningStore, Store, StoreConfig};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEMO_EMAIL: &str = "demo@ledger.test";
pub const DEMO_PASSWORD: &str = "demo-password";
/// The sandbox store's preferred address (stable across restarts, so re-pairing finds
/// the same binding and keeps its history).
const STORE_ADDR: &str = "127.0.0.1:8300";

#[derive(Debug)]
pub struct Demo {
    pub token: Secret<String>,
    pub store: RunningStore,
    pub binding_id: String,
}

/// The demo account's id, creating it on first use.
async fn demo_account(state: &AppState) -> anyhow::Result<ledger_core::AccountId> {
    use ledger_tenant_binding::accounts::{CreateAccountError, create_account};
    match create_account(&state.db, DEMO_EMAIL, Some(Secret::new(DEMO_PASSWORD.to_owned())), true).await {
        Ok(created) => Ok(created.account_id),
        Err(CreateAccountError::EmailTaken) => {
            let id: uuid::Uuid = sqlx::query_scalar("SELECT id FROM accounts WHERE lower(email) = $1")
                .bind(DEMO_EMAIL)
                .fetch_one(&state.db)
                .await?;
            Ok(id.into())
        }
        Err(e) => Err(anyhow::Error::new(e)),
    }
}

/// Creates the demo merchant, starts a sandbox store and pairs it over HTTP.
pub async fn start(state: &AppState, activity_every: Duration, shutdown: CancellationToken) -> anyhow::Result<Demo> {
    let account = demo_account(state).await?;
    let token = ledger_tenant_binding::accounts::create_api_token(&state.db, account, "ledger dev").await?;

    let listener = match TcpListener::bind(STORE_ADDR).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let store = Store::new(StoreConfig {
        drain_interval: Duration::from_secs(5),
        backoff_divisor: 60,
        ..StoreConfig::default()
    });
    let running = RunningStore::start(store.clone(), listener, shutdown.child_token())?;

    let code = store.generate_pairing_code();
    ledger_core::install_crypto_provider();
    let response = reqwest::Client::new()
        .post(format!("{}/v1/magento/connect", state.settings.public_url))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({ "magento_base_url": running.base_url, "pairing_code": code }))
        .send()
        .await
        .context("calling POST /v1/magento/connect")?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    if !status.is_success() {
        anyhow::bail!("pairing the sandbox store failed ({status}): {}", body["detail"]);
    }
    let binding_id = body["binding_id"].as_str().unwrap_or_default().to_owned();

    store.simulate(3);
    tokio::spawn(activity(store, activity_every, shutdown));
    Ok(Demo {
        token,
        store: running,
        binding_id,
    })
}

/// A new order (sometimes a refund, a customer or product save) every `every`.
async fn activity(store: Arc<Store>, every: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => { store.simulate(1); }
        }
    }
}
