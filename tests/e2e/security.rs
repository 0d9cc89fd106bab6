//! Attacks beyond the webhook suite (issue 12): planting Sage consent on someone else's
//! binding, exhausting a pod, acting beyond a role. Each test is an attack over real
//! HTTP that the code before the fix let through.

use ledger_e2e::count;
use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

/// The attacker starts a flow on their own binding through the API and gets the consent URL.
async fn attackers_consent_url(app: &TestApp, attacker: &PairedStore) -> String {
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/authorize", attacker.binding_id)))
        .bearer_auth(&attacker.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json::<Value>().await.unwrap()["authorize_url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The victim opens the URL: Sage (auto-approving) sends their browser back with a code.
async fn victim_consents(app: &TestApp, url: &str) -> String {
    let res = app.http.get(url).send().await.unwrap();
    assert!(res.status().is_redirection());
    res.headers()["location"].to_str().unwrap().to_owned()
}

#[tokio::test]
async fn a_forwarded_consent_link_never_lands_the_victims_tokens_on_the_attackers_binding() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let attacker = app.paired_store().await;
    let victim = app.paired_store().await;
    let victim_session = app.session(&victim.merchant).await;

    // The victim is signed in to the ledger as themselves.
    let callback = victim_consents(&app, &attackers_consent_url(&app, &attacker).await).await;
    let res = app
        .http
        .get(&callback)
        .header("cookie", &victim_session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    let page = res.text().await.unwrap();
    assert!(page.contains("different ledger account"), "{page}");
    assert!(
        !page.contains(&attacker.binding_id.to_string()),
        "nothing about the attacker's binding"
    );

    // The victim is not signed in at all.
    let callback = victim_consents(&app, &attackers_consent_url(&app, &attacker).await).await;
    let res = app.http.get(&callback).send().await.unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("Sign in to the ledger"));

    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_pending_grants").await, 0);
    assert_eq!(app.sage().stats().code_exchanges, 0, "no code was ever exchanged");
}

#[tokio::test]
async fn an_api_started_flow_asks_before_storing_tokens_and_cancel_revokes_them() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;
    let session = app.session(&paired.merchant).await;
    let callback = app.sage_authorize(&paired.merchant, paired.binding_id, "uk").await;
    let res = app
        .http
        .get(&callback)
        .header("cookie", &session.cookie)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let page = res.text().await.unwrap();
    assert!(
        page.contains(&format!(
            "Connect Sage business “Demo Trading Ltd” to store {}?",
            paired.store.base_url
        )),
        "{page}"
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM sage_connections").await,
        0,
        "nothing stored yet"
    );
    let grant: uuid::Uuid = sqlx::query_scalar("SELECT id FROM sage_pending_grants")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let confirm = |csrf: String, decision: &'static str, cookie: Option<String>| {
        let mut request = app.http.post(app.url("/sage/callback/confirm")).form(&[
            ("csrf_token", csrf),
            ("grant_id", grant.to_string()),
            ("decision", decision.to_owned()),
        ]);
        if let Some(cookie) = cookie {
            request = request.header("cookie", cookie);
        }
        request.send()
    };

    // A cross-site form post: no session, or the session without its CSRF token.
    assert_eq!(confirm(String::new(), "connect", None).await.unwrap().status(), 400);
    assert_eq!(
        confirm("forged".into(), "connect", Some(session.cookie.clone()))
            .await
            .unwrap()
            .status(),
        403
    );
    // Another account cannot answer it.
    let stranger = app.merchant().await;
    let other = app.session(&stranger).await;
    let res = confirm(other.csrf_token.clone(), "connect", Some(other.cookie.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);

    // The owner cancels: the grant is revoked at Sage and forgotten.
    let res = confirm(session.csrf_token.clone(), "cancel", Some(session.cookie.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(app.sage().stats().revocations, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_pending_grants").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);
    // Answered once only.
    let res = confirm(session.csrf_token.clone(), "connect", Some(session.cookie.clone()))
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert!(res.text().await.unwrap().contains("already answered"));
}

#[tokio::test]
async fn a_dashboard_flow_completes_only_in_the_browser_that_started_it() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;
    let session = app.session(&paired.merchant).await;
    let start = app
        .http
        .post(app.url(&format!("/dashboard/bindings/{}/sage/connect", paired.binding_id)))
        .header("cookie", &session.cookie)
        .form(&[("csrf_token", session.csrf_token.as_str()), ("region", "uk")])
        .send()
        .await
        .unwrap();
    assert_eq!(start.status(), 303);
    let set_cookie = start
        .headers()
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap().to_owned())
        .find(|c| c.starts_with("ledger_sage_flow="))
        .expect("a flow cookie");
    assert!(
        set_cookie.contains("HttpOnly")
            && set_cookie.contains("SameSite=Lax")
            && set_cookie.contains("Path=/sage/callback"),
        "{set_cookie}"
    );
    let flow = set_cookie.split(';').next().unwrap().to_owned();
    let consent = start.headers()["location"].to_str().unwrap().to_owned();
    let callback = victim_consents(&app, &consent).await;

    // Same account, another browser (no flow cookie, or a different one).
    for cookie in [
        session.cookie.clone(),
        format!("{}; ledger_sage_flow=someone-elses", session.cookie),
    ] {
        let res = app.http.get(&callback).header("cookie", cookie).send().await.unwrap();
        assert_eq!(res.status(), 400);
        assert!(res.text().await.unwrap().contains("different browser"));
    }
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);

    // The browser that started it connects straight away, and the flow cookie is cleared.
    let res = app
        .http
        .get(&callback)
        .header("cookie", format!("{}; {flow}", session.cookie))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303, "{}", res.text().await.unwrap_or_default());
    assert!(
        res.headers()
            .get_all("set-cookie")
            .iter()
            .any(|c| c.to_str().unwrap().starts_with("ledger_sage_flow=;"))
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM sage_connections WHERE status = 'connected'").await,
        1
    );
}
