//! Real headless Chromium through the merchant dashboard and the ops console: sign up,
//! connect a sandbox Magento store by URL and pairing code, connect the sandbox Sage
//! business, change a setting with a validation error and fix it, see a synced invoice
//! in the sync history, force a failure in the Sage sandbox, see it, retry it, see it
//! synced, and — as an operator — find the tenant on the ops console and pause and
//! resume its binding. Screenshots of every page land in `test-output/screenshots/`.

use std::time::Duration;

use ledger_sandbox::{
    magento::{RunningStore, StoreConfig},
    sage::{SageConfig, SageFaults},
};
use ledger_test_support::{TestApp, browser::Browser};

#[tokio::test]
async fn chromium_walks_the_dashboard_and_the_ops_console() -> anyhow::Result<()> {
    let app = TestApp::builder()
        .sage(SageConfig {
            auto_approve: false,
            businesses: vec![("Harbour Goods Ltd".into(), "GB".into())],
            ..SageConfig::default()
        })
        .spawn()
        .await;
    let _workers = app.start_workers();
    let store = RunningStore::spawn(StoreConfig {
        drain_interval: Duration::from_secs(3600),
        backoff_divisor: 1000,
        ..StoreConfig::default()
    })
    .await?;
    let browser = Browser::start("dashboard").await?;

    // Sign up.
    browser.goto(&app.url("/signin")).await?;
    browser.click("#signup-link").await?;
    browser.wait_for_url("/signup").await?;
    browser.fill("#email", "owner@harbour.example").await?;
    browser.fill("#password", "short").await?;
    browser.click("#create-account").await?;
    assert!(
        browser.text("#password-error").await?.contains("10"),
        "too short a password is named"
    );
    browser.screenshot("signup-error").await?;
    browser.fill("#password", "a-long-enough-password").await?;
    browser.click("#create-account").await?;
    browser.wait_for_url("/dashboard").await?;
    assert!(browser.text("#no-stores").await?.contains("pairing code"));
    browser.screenshot("dashboard-empty").await?;

    // Connect the store: a wrong code first, then the real one.
    browser.fill("#magento_base_url", &store.base_url).await?;
    browser
        .fill("#pairing_code", "0123456789abcdef0123456789abcdef")
        .await?;
    browser.click("#connect-magento").await?;
    let error = browser.text("#connect-error").await?;
    assert!(error.contains("pairing code"), "{error}");
    browser.screenshot("connect-store-error").await?;
    let code = store.store.generate_pairing_code();
    browser.fill("#pairing_code", &code).await?;
    browser.click("#connect-magento").await?;
    let binding_url = browser.wait_for_url("/dashboard/bindings/").await?;
    let binding_id = binding_url.rsplit('/').next().unwrap_or_default().to_owned();
    assert!(store.store.is_connected(), "the store was paired");
    browser.screenshot("binding-paired").await?;

    // Connect Sage through the sandbox's consent page.
    browser.click("#connect-sage").await?;
    browser.wait_for_url("/sage/connect").await?;
    browser.click("#continue").await?;
    browser.wait_for_url("/oauth2/auth/central").await?;
    browser.click("#allow").await?;
    browser.wait_for_url("connected=1").await?;
    assert_eq!(browser.text("#sage-business").await?, "Harbour Goods Ltd");
    browser.screenshot("binding-connected").await?;

    // Settings: an invalid prefix is refused inline and nothing is saved; then fixed.
    browser.click("#settings-link").await?;
    browser.wait_for_url("/settings").await?;
    assert!(
        browser.source().await?.contains("Standard 20.0%"),
        "the tax-rate dropdowns come from the reference cache"
    );
    browser.screenshot("settings").await?;
    browser.fill("#invoice_number_prefix", "MAGENTO INV").await?;
    // How the store computes tax: a time zone that is not one is named inline too.
    browser.fill("#time_zone", "Mars/Olympus").await?;
    browser.click("#save").await?;
    assert!(browser.text("#time_zone-error").await?.contains("IANA time zone"));
    browser.fill("#time_zone", "Europe/Dublin").await?;
    browser.fill("#website_base_currencies", "2=eur").await?;
    assert!(browser.text("#form-error").await?.contains("Nothing was saved"));
    assert!(
        browser
            .text("#invoice_number_prefix-error")
            .await?
            .contains("invalid_format")
    );
    browser.screenshot("settings-invalid").await?;
    let saved_prefix: Option<String> = sqlx::query_scalar(
        "SELECT settings->>'invoice_number_prefix' FROM binding_settings WHERE binding_id = $1::uuid",
    )
    .bind(&binding_id)
    .fetch_optional(&app.state.db)
    .await?
    .flatten();
    assert_eq!(saved_prefix, None, "the invalid value was not saved");
    browser.fill("#invoice_number_prefix", "MG-").await?;
    browser.click("#save").await?;
    browser.wait_for_url("saved=1").await?;
    assert!(browser.text("#notice").await?.contains("saved"));
    let (zone, currencies): (Option<String>, Option<String>) = sqlx::query_as(
        "SELECT settings->>'time_zone', settings->'website_base_currencies'->>'2' FROM binding_settings WHERE binding_id = $1::uuid",
    )
    .bind(&binding_id)
    .fetch_one(&app.state.db)
    .await?;
    assert_eq!(
        (zone.as_deref(), currencies.as_deref()),
        (Some("Europe/Dublin"), Some("EUR")),
        "saved, canonicalised"
    );
    browser.screenshot("settings-saved").await?;

    // An invoice syncs and shows in the history.
    store.store.place_order(false);
    store.store.drain_once().await;
    assert!(app.wait_idle(Duration::from_secs(30)).await, "the queue drains");
    browser
        .goto(&app.url(&format!("/dashboard/bindings/{binding_id}/runs?status=synced")))
        .await?;
    let history = browser.text("#runs").await?;
    assert!(
        history.contains("invoice.created") && history.contains("synced"),
        "{history}"
    );
    browser.screenshot("history-synced").await?;

    // Force a failure in the Sage sandbox: the next invoice is refused (422).
    app.sage().set_faults(SageFaults {
        reject_kind: "sales_invoice".into(),
        reject_writes: 1,
        ..SageFaults::default()
    });
    store.store.place_order(false);
    store.store.drain_once().await;
    assert!(app.wait_idle(Duration::from_secs(30)).await, "the queue drains");
    browser
        .goto(&app.url(&format!("/dashboard/bindings/{binding_id}/runs")))
        .await?;
    browser.click("tr.status-failed a").await?;
    browser.wait_for_url("/dashboard/runs/").await?;
    assert_eq!(browser.text("#run-status").await?, "failed");
    assert!(!browser.text("#run-message").await?.is_empty(), "an actionable message");
    browser.screenshot("run-failed").await?;
    browser.click("#retry").await?;
    browser.wait_for_url("retried=1").await?;
    assert!(app.wait_idle(Duration::from_secs(30)).await, "the retry drains");
    browser.goto(&browser.url().await?).await?;
    assert_eq!(browser.text("#run-status").await?, "synced");
    // The payload diff: the refused invoice and the one that went through, compared. The
    // refusal was definite, so the retry carries a new idempotency id and nothing else new.
    let sent = browser.text("#sent").await?;
    assert!(
        sent.contains("Attempt 1") && sent.contains("Attempt 2") && sent.contains("POST /sales_invoices"),
        "{sent}"
    );
    assert!(sent.contains("Changed since attempt 1"), "{sent}");
    let added = browser.text(".diff .added").await?;
    assert!(added.contains("idempotency_id"), "the changed line: {added}");
    assert!(
        sent.contains("[redacted]") && !sent.contains('@'),
        "addresses blanked, no email on the page: {sent}"
    );
    browser.screenshot("run-retried").await?;

    // The audit trail shows the merchant's changes.
    browser.goto(&app.url("/dashboard/audit")).await?;
    let audit = browser.text("#audit").await?;
    assert!(
        audit.contains("settings.updated") && audit.contains("run.retried"),
        "{audit}"
    );
    assert!(audit.contains("invoice_number_prefix"), "the change itself: {audit}");
    browser.screenshot("audit").await?;

    // The Magento admin's "Sage Sync" page frames /embed/{tenant} with no credential:
    // framing is allowed to this store only, and the frame shows nothing until the
    // viewer signs in inside it.
    let tenant: String = sqlx::query_scalar("SELECT tenant_id::text FROM connector_bindings WHERE id = $1::uuid")
        .bind(&binding_id)
        .fetch_one(&app.state.db)
        .await?;
    let csp = |res: &reqwest::Response| {
        res.headers()
            .get("content-security-policy")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let embed = app.get(&format!("/embed/{tenant}")).await;
    let store_origin = store.base_url.trim_end_matches('/').to_owned();
    assert!(
        csp(&embed).contains(&format!("frame-ancestors {store_origin}")),
        "{}",
        csp(&embed)
    );
    let not_a_tenant = app.get("/embed/%3Cscript%3Ex").await;
    assert_eq!(not_a_tenant.status(), 404);
    assert!(
        !not_a_tenant.text().await?.contains("script"),
        "the segment is not echoed"
    );
    let anonymous = embed.text().await?;
    assert!(!anonymous.contains("invoice.created"), "no data without a session");
    let unknown = app.get(&format!("/embed/{}", uuid::Uuid::new_v4())).await;
    assert!(csp(&unknown).contains("frame-ancestors 'none'"));
    assert!(csp(&app.get("/dashboard").await).contains("frame-ancestors 'none'"));
    browser.goto(&format!("{store_origin}/admin/sync")).await?;
    browser.frame(Some("#ledger-embed")).await?;
    browser.fill("#email", "owner@harbour.example").await?;
    browser.fill("#password", "a-long-enough-password").await?;
    browser.click("#embed-signin").await?;
    let runs = browser.text("#embed-runs").await?;
    assert!(runs.contains("invoice.created") && runs.contains("synced"), "{runs}");
    browser.frame(None).await?;
    browser.screenshot("magento-admin-embed").await?;

    // Tenants: a second one starts empty; switching back shows the store again.
    browser.goto(&app.url("/dashboard")).await?;
    browser.click(".tenants summary").await?;
    browser.fill("#tenant-name", "Harbour Wholesale").await?;
    browser.click("#create-tenant").await?;
    assert!(browser.text("#no-stores").await?.contains("pairing code"));
    browser.screenshot("second-tenant").await?;
    let first_tenant = format!("#tenant_id option[value='{tenant}']");
    browser.click(&first_tenant).await?;
    browser.click("#switch-tenant").await?;
    assert!(browser.text("#bindings").await?.contains(&store_origin));

    // Password change: the wrong current password is named; then it changes.
    browser.goto(&app.url("/dashboard/account")).await?;
    browser.fill("#current_password", "not-my-password").await?;
    browser.fill("#new_password", "an-even-longer-password").await?;
    browser.click("#change-password").await?;
    assert!(browser.text("#current-error").await?.contains("current password"));
    browser.fill("#current_password", "a-long-enough-password").await?;
    browser.fill("#new_password", "an-even-longer-password").await?;
    browser.click("#change-password").await?;
    browser.wait_for_url("changed=1").await?;
    browser.screenshot("password-changed").await?;

    // A merchant cannot open the ops console.
    browser.goto(&app.url("/ops")).await?;
    assert!(browser.source().await?.contains("Not found"));
    assert!(!browser.source().await?.contains("Ops console</h1>"));
    browser.goto(&app.url("/dashboard")).await?;

    // As an operator: the tenant is on the console; pause and resume its binding.
    browser.click("#signout").await?;
    browser.wait_for_url("/signin").await?;
    let operator = app.merchant().await;
    sqlx::query("UPDATE accounts SET is_operator = true WHERE email = $1")
        .bind(&operator.email)
        .execute(&app.state.db)
        .await?;
    browser.goto(&app.url("/ops")).await?;
    browser.wait_for_url("/signin").await?;
    browser.fill("#email", &operator.email).await?;
    browser.fill("#password", &operator.password).await?;
    browser.click("#signin").await?;
    browser.wait_for_url("/ops").await?;
    browser.fill("#q", "owner@harbour").await?;
    browser.click("#search").await?;
    browser.wait_for_url("q=owner").await?;
    let row = browser.text(&format!("#binding-{binding_id}")).await?;
    assert!(row.contains("owner@harbour.example") && row.contains("active"), "{row}");
    browser.screenshot("ops-console").await?;
    browser
        .click(&format!("#binding-{binding_id} form[action$='/pause'] button"))
        .await?;
    browser.wait_for_url("done=paused").await?;
    assert!(
        browser
            .text(&format!("#binding-{binding_id}"))
            .await?
            .contains("paused")
    );
    browser.screenshot("ops-paused").await?;
    browser
        .click(&format!("#binding-{binding_id} form[action$='/resume'] button"))
        .await?;
    browser.wait_for_url("done=resumed").await?;
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action FROM audit_log WHERE binding_id = $1::uuid AND action IN ('binding.paused', 'binding.resumed') ORDER BY id",
    )
    .bind(&binding_id)
    .fetch_all(&app.state.db)
    .await?;
    assert_eq!(actions, ["binding.paused", "binding.resumed"], "both recorded");

    // Back as the merchant (new password): disconnect the store from the binding page.
    browser.click("#signout").await?;
    // Signed out first (the click returns before its navigation ends), then the binding
    // page sends the visitor to sign in and back.
    browser.wait_for_url("/signin").await?;
    browser
        .goto(&app.url(&format!("/dashboard/bindings/{binding_id}")))
        .await?;
    browser.wait_for_url("/signin?next=").await?;
    browser.fill("#email", "owner@harbour.example").await?;
    browser.fill("#password", "an-even-longer-password").await?;
    browser.click("#signin").await?;
    browser
        .wait_for_url(&format!("/dashboard/bindings/{binding_id}"))
        .await?;
    browser.click("#confirm-disconnect").await?;
    browser.click("#disconnect-button").await?;
    browser.wait_for_url("disconnected=1").await?;
    assert_eq!(browser.text("#binding-status").await?, "revoked");
    browser.screenshot("disconnected").await?;
    // The store's next event is refused (and dead-letters in the store).
    store.store.place_order(false);
    let report = store.store.drain_once().await;
    assert!(report.dead_lettered > 0, "{report:?}");
    Ok(())
}
