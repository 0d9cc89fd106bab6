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

/// A "store" that answers every request with `declared` (a Content-Length, or chunked
/// when `None`) and then streams junk until the reader hangs up. Counts bytes written.
async fn flooding_server(declared: Option<u64>) -> (String, std::sync::Arc<std::sync::atomic::AtomicU64>) {
    use std::sync::{Arc, atomic::AtomicU64, atomic::Ordering};
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let sent = Arc::new(AtomicU64::new(0));
    let counter = sent.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut request = [0u8; 8192];
                let _ = socket.read(&mut request).await;
                let head = match declared {
                    Some(n) => {
                        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {n}\r\n\r\n")
                    }
                    None => "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
                        .to_owned(),
                };
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let junk = vec![b' '; 64 << 10];
                let chunk = match declared {
                    Some(_) => junk.clone(),
                    None => [
                        format!("{:x}\r\n", junk.len()).into_bytes(),
                        junk.clone(),
                        b"\r\n".to_vec(),
                    ]
                    .concat(),
                };
                // Up to 512 MiB, as fast as the reader takes it.
                for _ in 0..8192 {
                    if socket.write_all(&chunk).await.is_err() {
                        return;
                    }
                    counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (url, sent)
}

#[tokio::test]
async fn a_store_streaming_hundreds_of_mib_at_pairing_is_cut_off_early() {
    use std::sync::atomic::Ordering;
    let app = TestApp::spawn().await;
    for declared in [None, Some(1u64 << 30)] {
        let merchant = app.merchant().await;
        let (url, sent) = flooding_server(declared).await;
        let started = std::time::Instant::now();
        let res = app.connect(&merchant, &url, "ABCD-EFGH-JKLM").await;
        let status = res.status();
        let body: Value = res.json().await.unwrap();
        assert!(status.is_client_error() || status.is_server_error(), "{status} {body}");
        assert!(
            body["detail"].as_str().unwrap().contains("larger than 64 KiB"),
            "says why: {body}"
        );
        let sent = sent.load(Ordering::Relaxed);
        assert!(
            sent < 8 << 20,
            "read stopped early ({sent} bytes written by the store, declared {declared:?})"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        assert_eq!(
            count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'paired'").await,
            0
        );
    }
}

#[tokio::test]
async fn an_entity_of_hundreds_of_mib_fails_its_run_and_the_worker_carries_on() {
    use std::sync::atomic::Ordering;
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let (url, sent) = flooding_server(None).await;
    // The store's host now floods every read-back.
    sqlx::query("UPDATE connector_bindings SET magento_base_url = $1 WHERE id = $2")
        .bind(&url)
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    let workers = app.start_workers();
    let token = ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
    let res = ledger_e2e::post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&token),
        Some("invoice.created:7"),
        &ledger_e2e::event_body(7),
    )
    .await;
    assert_eq!(res.status(), 202);
    let message = run_message_eventually(&app, 7).await;
    assert!(message.contains("larger than 4096 KiB"), "{message}");
    let sent = sent.load(Ordering::Relaxed);
    assert!(sent < 32 << 20, "{sent} bytes: the ledger read a few MiB at most");
    // The worker is still there: a second event is handled too.
    let res = ledger_e2e::post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&ledger_e2e::module_token(&paired.api_key(), &paired.tenant())),
        Some("invoice.created:8"),
        &ledger_e2e::event_body(8),
    )
    .await;
    assert_eq!(res.status(), 202);
    assert!(run_message_eventually(&app, 8).await.contains("larger than 4096 KiB"));
    workers.stop().await;
}

/// The message of the run for entity `id`, once a worker has tried it.
async fn run_message_eventually(app: &TestApp, id: i64) -> String {
    for _ in 0..600 {
        let message: Option<Option<String>> =
            sqlx::query_scalar("SELECT message FROM sync_runs WHERE magento_entity_id = $1")
                .bind(id)
                .fetch_optional(&app.state.db)
                .await
                .unwrap();
        if let Some(Some(m)) = message {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("no worker tried entity {id}");
}

#[tokio::test]
async fn sage_or_its_oauth_server_flooding_the_callback_is_cut_off_early() {
    use std::sync::atomic::Ordering;
    for flood_api in [true, false] {
        let (flood, sent) = flooding_server(None).await;
        let target = flood.clone();
        let app = TestApp::builder()
            .sage(SageConfig::default())
            .configure(move |s| {
                if flood_api {
                    s.sage_api_base = format!("{target}/v3.1");
                } else {
                    s.sage_token_url = format!("{target}/oauth2/token").parse().unwrap();
                }
            })
            .spawn()
            .await;
        let paired = app.paired_store().await;
        let res = app.connect_sage(&paired).await;
        assert_eq!(res.status(), 400);
        let page = res.text().await.unwrap();
        assert!(page.contains("Sage"), "{page}");
        let sent = sent.load(Ordering::Relaxed);
        let cap = if flood_api { 16 << 20 } else { 4 << 20 };
        assert!(
            sent < cap,
            "flooding the {} sent {sent} bytes",
            if flood_api { "API" } else { "token endpoint" }
        );
        assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);
    }
}
