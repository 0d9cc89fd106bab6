//! The demo `ledger dev` sets up: a merchant, a sandbox Magento store paired through
//! the real connect endpoint, and a trickle of store activity.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use ledger_core::{AppState, Secret};
use ledger_sandbox::{
    magento::{RunningStore, Store, StoreConfig},
    sage::{RunningSage, Sage, SageConfig},
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const DEMO_EMAIL: &str = "demo@ledger.test";
pub const DEMO_PASSWORD: &str = "demo-password";
/// The sandbox store's preferred address (stable across restarts, so re-pairing finds
/// the same binding and keeps its history).
const STORE_ADDR: &str = "127.0.0.1:8300";
const SAGE_ADDR: &str = "127.0.0.1:8400";

/// The sandbox Sage `ledger dev` uses: a real consent page and two businesses to choose from.
pub async fn start_sage() -> anyhow::Result<RunningSage> {
    let listener = match TcpListener::bind(SAGE_ADDR).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let config = SageConfig {
        auto_approve: false,
        businesses: vec![
            ("Demo Trading Ltd".to_owned(), "GB".to_owned()),
            ("Demo Trading Ireland".to_owned(), "IE".to_owned()),
        ],
        ..SageConfig::default()
    };
    Ok(RunningSage::start(
        Sage::new(config),
        listener,
        CancellationToken::new(),
    )?)
}

#[derive(Debug)]
pub struct Demo {
    pub token: Secret<String>,
    /// The store's configuration name.
    pub profile: String,
    pub store: RunningStore,
    pub binding_id: String,
    /// The sandbox Sage's URL and the business the demo binding posts to.
    pub sage_business: Option<(String, String)>,
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
pub async fn start(
    state: &AppState,
    sage: Option<&RunningSage>,
    activity_every: Duration,
    profile: ledger_sandbox::magento::catalogue::StoreProfile,
    shutdown: CancellationToken,
) -> anyhow::Result<Demo> {
    let account = demo_account(state).await?;
    let token = ledger_tenant_binding::accounts::create_api_token(
        &state.db,
        account,
        "ledger dev",
        state.settings.api_token_ttl,
    )
    .await?;

    let listener = match TcpListener::bind(STORE_ADDR).await {
        Ok(l) => l,
        Err(_) => TcpListener::bind("127.0.0.1:0").await?,
    };
    let store = Store::new(StoreConfig {
        drain_interval: Duration::from_secs(5),
        backoff_divisor: 60,
        profile: profile.clone(),
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
    let sage_business = match sage {
        Some(sage) => Some((
            sage.base_url.clone(),
            connect_sage(state, sage, account, &token, &binding_id, &profile)
                .await
                .context("connecting the demo binding to the sandbox Sage")?,
        )),
        None => None,
    };
    // One document booked a cent off by Sage, so the dashboard shows a run held as
    // `total_mismatch` with its "void and post again" and "accept" buttons.
    if let Some(sage) = sage {
        sage.sage.set_faults(ledger_sandbox::sage::SageFaults {
            skew_totals: 1,
            ..Default::default()
        });
    }

    store.simulate(3);
    tokio::spawn(activity(store, activity_every, shutdown));
    Ok(Demo {
        token,
        profile: profile.name.clone(),
        store: running,
        binding_id,
        sage_business,
    })
}

/// Walks the connect flow over HTTP as a merchant's browser would: authorize, Sage's
/// consent page ("Allow"), the callback, then the business choice.
async fn connect_sage(
    state: &AppState,
    sage: &RunningSage,
    account: ledger_core::AccountId,
    token: &Secret<String>,
    binding: &str,
    profile: &ledger_sandbox::magento::catalogue::StoreProfile,
) -> anyhow::Result<String> {
    // An Irish store posts to the Irish business; the others to the UK one.
    let (region, country) = if profile.tax.origin_country == "IE" {
        ("ie", "IE")
    } else {
        ("uk", "GB")
    };
    let public = &state.settings.public_url;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    let authorize: serde_json::Value = http
        .post(format!("{public}/v1/bindings/{binding}/sage/authorize"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({ "region": region }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let url = url::Url::parse(authorize["authorize_url"].as_str().unwrap_or_default())?;
    let mut form: Vec<(String, String)> = url.query_pairs().into_owned().collect();
    form.push(("decision".into(), "allow".into()));
    let consent = http
        .post(format!("{}/oauth2/consent", sage.base_url))
        .form(&form)
        .send()
        .await?;
    let callback = consent
        .headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // The callback needs the signed-in account that started the flow; started through
    // the API, it ends on a confirmation page, answered here as the merchant would.
    let (session, csrf) =
        ledger_tenant_binding::accounts::create_session(&state.db, account, Duration::from_secs(600)).await?;
    let cookie = format!("{}={}", ledger_tenant_binding::auth::SESSION_COOKIE, session.expose());
    let page = http.get(&callback).header("cookie", &cookie).send().await?;
    anyhow::ensure!(page.status().is_success(), "the callback answered {}", page.status());
    let grant: uuid::Uuid =
        sqlx::query_scalar("SELECT id FROM sage_pending_grants WHERE account_id = $1 ORDER BY created_at DESC LIMIT 1")
            .bind(account.0)
            .fetch_one(&state.db)
            .await
            .context("the callback held the grant for confirmation")?;
    let confirmed = http
        .post(format!("{public}/sage/callback/confirm"))
        .header("cookie", &cookie)
        .form(&[
            ("csrf_token", csrf.as_str()),
            ("grant_id", &grant.to_string()),
            ("decision", "connect"),
        ])
        .send()
        .await?;
    anyhow::ensure!(
        confirmed.status().is_success() || confirmed.status().is_redirection(),
        "confirming the connection answered {}",
        confirmed.status()
    );
    ledger_tenant_binding::accounts::end_session_value(&state.db, &session).await?;
    let business = sage
        .sage
        .businesses()
        .into_iter()
        .find(|b| b.country == country)
        .context("the sandbox has a business in the store's country")?;
    http.post(format!("{public}/v1/bindings/{binding}/sage/business"))
        .bearer_auth(token.expose())
        .json(&serde_json::json!({ "business_id": business.id }))
        .send()
        .await?
        .error_for_status()?;
    map_payment_methods(
        &http,
        &format!("{public}/v1/bindings/{binding}/settings"),
        token,
        &business,
        profile,
    )
    .await?;
    Ok(business.name)
}

/// The payment method the demo leaves unmapped, so a merchant can try the fix: map it,
/// then retry the payments it held back.
pub const UNMAPPED_METHOD: &str = "banktransfer";

/// The defaults leave payments unposted until a method is mapped to a bank account (a
/// merchant's choice); the demo merchant maps the store's active methods to the first
/// bank account, through the settings API, so payments show too — and sets what mirrors
/// the store's own configuration (tax by which address, catalogue prices with VAT, a
/// website's base currency), as a merchant would on the settings page.
async fn map_payment_methods(
    http: &reqwest::Client,
    url: &str,
    token: &Secret<String>,
    business: &ledger_sandbox::sage::Business,
    profile: &ledger_sandbox::magento::catalogue::StoreProfile,
) -> anyhow::Result<()> {
    use ledger_sandbox::magento::tax::TaxBasis;
    let bank = business
        .bank_accounts
        .first()
        .and_then(|b| b["id"].as_str())
        .context("the sandbox business has a bank account")?;
    let mut settings: serde_json::Value = http
        .get(url)
        .bearer_auth(token.expose())
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let methods: serde_json::Map<String, serde_json::Value> = ledger_sandbox::magento::catalogue::PAYMENT_METHODS
        .iter()
        // Bank transfers are left for the merchant to map: their payments wait as
        // `payment_method_not_mapped` until Settings → Payment methods and "Retry them".
        .filter(|(code, _, active)| *active && !matches!(*code, "free" | UNMAPPED_METHOD))
        .map(|(code, _, _)| ((*code).to_owned(), serde_json::json!(bank)))
        .collect();
    settings["payment_method_map"] = serde_json::Value::Object(methods);
    settings["catalog_prices_include_tax"] = serde_json::json!(profile.tax.prices_include_tax);
    settings["tax_based_on"] = serde_json::json!(match profile.tax.based_on {
        TaxBasis::Shipping => "shipping",
        TaxBasis::Billing => "billing",
        TaxBasis::Origin => "origin",
    });
    if profile.base_currency != business.base_currency() {
        settings["website_base_currencies"] = serde_json::json!({ "1": profile.base_currency });
    }
    let res = http.put(url).bearer_auth(token.expose()).json(&settings).send().await?;
    let status = res.status();
    anyhow::ensure!(
        status.is_success(),
        "saving the demo's payment-method map answered {status}: {}",
        res.text().await.unwrap_or_default()
    );
    Ok(())
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
