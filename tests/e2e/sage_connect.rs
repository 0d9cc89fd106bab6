//! Connecting a binding to Sage: the authorize → consent → callback → business flow,
//! its failure pages, the reference cache and the ledger-side disconnect.

use ledger_e2e::count;
use ledger_sandbox::sage::{SageConfig, SageFaults};
use ledger_test_support::TestApp;
use serde_json::Value;

fn two_businesses() -> SageConfig {
    SageConfig {
        businesses: vec![
            ("Acme UK Ltd".into(), "GB".into()),
            ("Acme Ireland".into(), "IE".into()),
        ],
        ..SageConfig::default()
    }
}

async fn connection(app: &TestApp, token: &str, binding: ledger_core::BindingId) -> Value {
    app.http
        .get(app.url(&format!("/v1/bindings/{binding}/sage")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn one_business_connects_straight_away_and_fills_the_reference_cache() {
    // Small pages, so the reference fetch must follow $next.
    let app = TestApp::builder()
        .sage(SageConfig {
            max_items_per_page: 5,
            ..SageConfig::default()
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;

    let authorize: Value = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/authorize", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let url = url_of(&authorize["authorize_url"]);
    let q: std::collections::HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!(q["filter"], "apiv3.1");
    assert_eq!(q["scope"], "full_access");
    assert_eq!(q["country"], "gb", "region uk by default");
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["redirect_uri"], format!("{}/sage/callback", app.base_url));
    assert!(q["state"].len() >= 32, "high-entropy state");

    let res = app.connect_sage(&paired).await;
    assert_eq!(res.status(), 303);
    assert_eq!(
        res.headers()["location"],
        format!("/dashboard/bindings/{}?connected=1", paired.binding_id)
    );

    let c = connection(&app, &paired.merchant.token, paired.binding_id).await;
    assert_eq!(
        (c["status"].as_str(), c["business_name"].as_str(), c["region"].as_str()),
        (Some("connected"), Some("Demo Trading Ltd"), Some("uk"))
    );
    let business = app.sage().businesses()[0].id.clone();
    assert_eq!(c["business_id"], business);
    assert!(!c.to_string().contains("sbx_"), "no token in the answer");

    let (status, region): (String, Option<String>) =
        sqlx::query_as("SELECT status, region FROM connector_bindings WHERE id = $1")
            .bind(paired.binding_id.0)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!((status.as_str(), region.as_deref()), ("active", Some("uk")));
    let tile = paired.store.store.fetch_tile_health().await;
    assert_eq!(
        ledger_sandbox::magento::tile_verdict(true, &tile)["headline"],
        "Connected to Sage (UK)"
    );

    let reference: Value = app
        .http
        .get(app.url(&format!("/v1/bindings/{}/sage/reference", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds = &reference["kinds"];
    assert_eq!(kinds["tax_rates"]["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        kinds["tax_rates"]["items"][0]["percentage"], "20.0",
        "full records (attributes=all)"
    );
    assert_eq!(kinds["ledger_accounts_sales"]["items"].as_array().unwrap().len(), 5);
    assert_eq!(
        kinds["ledger_accounts_expenses"]["items"].as_array().unwrap().len(),
        17,
        "four pages of five"
    );
    assert_eq!(kinds["bank_accounts"]["items"].as_array().unwrap().len(), 4);
    assert!(reference["fetched_at"].is_string());
    assert_eq!(
        count(&app, "SELECT count(*) FROM audit_log WHERE action = 'sage.connected'").await,
        1
    );

    // Tokens are sealed, never stored in plain text.
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM sage_connections t")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(!dump.contains("sbx_at_") && !dump.contains("sbx_rt_"));
}

fn url_of(v: &Value) -> url::Url {
    url::Url::parse(v.as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn several_businesses_offer_a_choice() {
    let app = TestApp::builder().sage(two_businesses()).spawn().await;
    let paired = app.paired_store().await;
    let res = app.connect_sage(&paired).await;
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(page.contains("Acme UK Ltd") && page.contains("Acme Ireland"), "{page}");
    let c = connection(&app, &paired.merchant.token, paired.binding_id).await;
    assert_eq!(c["status"], "choosing_business");
    assert_eq!(c["businesses"].as_array().unwrap().len(), 2);

    let choose = |id: String| {
        app.http
            .post(app.url(&format!("/v1/bindings/{}/sage/business", paired.binding_id)))
            .bearer_auth(&paired.merchant.token)
            .json(&serde_json::json!({ "business_id": id }))
            .send()
    };
    let res = choose("0000".into()).await.unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(res.json::<Value>().await.unwrap()["errors"][0]["code"], "not_offered");
    let ireland = app.sage().businesses()[1].id.clone();
    let c: Value = choose(ireland.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(
        (c["status"].as_str(), c["business_name"].as_str()),
        (Some("connected"), Some("Acme Ireland"))
    );
    // Later calls send X-Business: the reference data is the Irish business's.
    let reference: Value = app
        .http
        .get(app.url(&format!("/v1/bindings/{}/sage/reference", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(reference["kinds"]["tax_rates"]["items"][0]["id"], "IE_STANDARD");
}

#[tokio::test]
async fn refusals_and_broken_callbacks_explain_what_happened() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;

    // The user clicks Deny.
    app.sage().set_faults(SageFaults {
        deny_next_authorize: true,
        ..Default::default()
    });
    let res = app.connect_sage(&paired).await;
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("chose not to give the ledger access"), "{page}");
    assert!(
        page.contains(&format!("/dashboard/bindings/{}/sage/connect", paired.binding_id)),
        "offers a retry"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);

    // A state is single-use.
    let callback = app.sage_authorize(&paired.merchant, paired.binding_id, "uk").await;
    assert_eq!(app.finish_callback(&paired.merchant, &callback).await.status(), 303);
    let again = app.finish_callback(&paired.merchant, &callback).await;
    assert_eq!(again.status(), 400);
    assert!(again.text().await.unwrap().contains("already used"));

    // No state at all, or an unknown one.
    let res = app
        .http
        .get(app.url("/sage/callback?code=GB%2Fabc"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let res = app
        .http
        .get(app.url("/sage/callback?code=GB%2Fabc&state=forged"))
        .send()
        .await
        .unwrap();
    assert!(res.text().await.unwrap().contains("expired"));

    // Sage's code lives 60 s.
    let callback = app.sage_authorize(&paired.merchant, paired.binding_id, "uk").await;
    app.sage().advance(61);
    let res = app.finish_callback(&paired.merchant, &callback).await;
    let page = res.text().await.unwrap();
    assert!(page.contains("60 seconds"), "{page}");
    assert!(!page.contains("GB/"), "the page never shows the code");

    // A bad region; a region with no business (Sage refuses the country).
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/authorize", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .json(&serde_json::json!({ "region": "mars" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 422);
    assert_eq!(res.json::<Value>().await.unwrap()["errors"][0]["field"], "region");
    let callback = app.sage_authorize(&paired.merchant, paired.binding_id, "ca").await;
    let page = app
        .finish_callback(&paired.merchant, &callback)
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("No business in the selected country"), "{page}");

    // Someone else's binding.
    let stranger = app.merchant().await;
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/authorize", paired.binding_id)))
        .bearer_auth(&stranger.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

#[tokio::test]
async fn a_second_connect_replaces_the_tokens() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;
    app.connect_sage(&paired).await;
    let (first, first_version): (Vec<u8>, i64) =
        sqlx::query_as("SELECT refresh_token, token_version FROM sage_connections")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    app.connect_sage(&paired).await;
    let (second, version): (Vec<u8>, i64) = sqlx::query_as("SELECT refresh_token, token_version FROM sage_connections")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_ne!(first, second);
    // New tokens, and the business chosen again: each bumps the version other processes'
    // caches are checked against.
    assert_eq!(version, first_version + 2);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 1);
}

#[tokio::test]
async fn disconnecting_from_the_ledger_revokes_at_sage_and_deletes_the_tokens() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;
    app.connect_sage(&paired).await;
    let sealed: Vec<u8> = sqlx::query_scalar("SELECT refresh_token FROM sage_connections")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let refresh = app
        .state
        .keyring
        .open_string(
            &sealed,
            &format!("sage_connections.refresh_token:{}", paired.binding_id),
        )
        .unwrap();
    assert!(app.sage().refresh_token_is_live(refresh.expose()));

    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/disconnect", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert!(!app.sage().refresh_token_is_live(refresh.expose()), "revoked at Sage");
    assert_eq!(app.sage().stats().revocations, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_reference").await, 0);
    assert_eq!(
        count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'revoked'").await,
        1
    );
    // The store's later events get the specific 401.
    let res = ledger_e2e::send_valid(&app, &paired, "invoice.created", 5).await;
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "binding_revoked");
}
