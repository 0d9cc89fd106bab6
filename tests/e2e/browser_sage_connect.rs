//! Real headless Chromium walks the Sage connect flow: sign in, binding page, region,
//! Sage's consent page, business choice, and back on the binding page with the
//! business name. Screenshots of each page land in `test-output/screenshots/`.

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{TestApp, browser::Browser};

#[tokio::test]
async fn chromium_connects_sage_from_the_binding_page() -> anyhow::Result<()> {
    let app = TestApp::builder()
        .sage(SageConfig {
            auto_approve: false,
            businesses: vec![
                ("Acme UK Ltd".into(), "GB".into()),
                ("Acme Retail Ltd".into(), "GB".into()),
            ],
            ..SageConfig::default()
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let browser = Browser::start("sage_connect").await?;
    let binding_page = app.url(&format!("/dashboard/bindings/{}", paired.binding_id));

    // Not signed in: the page sends us to sign-in, and back afterwards.
    browser.goto(&binding_page).await?;
    browser.wait_for_url("/signin").await?;
    browser.screenshot("signin").await?;
    browser.fill("#email", &paired.merchant.email).await?;
    browser.fill("#password", &paired.merchant.password).await?;
    // Keyboard only: Enter submits the form.
    browser.keys("#password", "\u{E007}").await?;
    browser
        .wait_for_url(&format!("/dashboard/bindings/{}", paired.binding_id))
        .await?;
    assert!(browser.text("#sage-status").await?.contains("Not connected"));
    browser.screenshot("binding-not-connected").await?;

    browser.click("#connect-sage").await?;
    browser.wait_for_url("/sage/connect").await?;
    browser.click("#region-uk").await?;
    browser.screenshot("choose-region").await?;
    browser.click("#continue").await?;

    // Sage's own consent page (another origin).
    browser.wait_for_url("/oauth2/auth/central").await?;
    assert!(browser.source().await?.contains("Acme Retail Ltd"));
    browser.screenshot("sage-consent").await?;
    browser.click("#allow").await?;

    // Two businesses: the ledger asks which one.
    browser.wait_for_url("/sage/callback").await?;
    browser.screenshot("choose-business").await?;
    browser.click("#business-2").await?;
    browser.click("#use-business").await?;

    browser.wait_for_url("connected=1").await?;
    assert_eq!(browser.text("#sage-business").await?, "Acme Retail Ltd");
    assert_eq!(browser.text("#binding-status").await?, "active");
    let shot = browser.screenshot("binding-connected").await?;
    assert!(std::fs::metadata(&shot)?.len() > 1000, "a real PNG");
    // The URL never kept Sage's code.
    assert!(!browser.url().await?.contains("code="));
    Ok(())
}

#[tokio::test]
async fn chromium_sees_a_clear_page_when_access_is_denied() -> anyhow::Result<()> {
    let app = TestApp::builder()
        .sage(SageConfig {
            auto_approve: false,
            ..SageConfig::default()
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let browser = Browser::start("sage_denied").await?;
    browser.goto(&app.url("/signin")).await?;
    browser.fill("#email", &paired.merchant.email).await?;
    browser.fill("#password", &paired.merchant.password).await?;
    browser.click("#signin").await?;
    browser.wait_for_url("/dashboard").await?;
    browser
        .goto(&app.url(&format!("/dashboard/bindings/{}/sage/connect", paired.binding_id)))
        .await?;
    browser.click("#continue").await?;
    browser.wait_for_url("/oauth2/auth/central").await?;
    browser.click("#deny").await?;
    browser.wait_for_url("/sage/callback").await?;
    assert!(browser.text("#message").await?.contains("chose not to give"));
    browser.screenshot("denied").await?;
    browser.click("#retry").await?;
    browser.wait_for_url("/sage/connect").await?;
    Ok(())
}
