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

/// POSTs `body` to `path` `n` times at once, the i-th from address `address(i)`
/// (the test app trusts one proxy hop); the statuses and bodies in completion order.
async fn in_parallel(
    app: &TestApp,
    path: &str,
    n: usize,
    address: impl Fn(usize) -> String,
    body: impl Fn(usize) -> Value,
) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let request = app
            .http
            .post(app.url(path))
            .header("x-forwarded-for", address(i))
            .json(&body(i));
        set.spawn(async move {
            let res = request.send().await.unwrap();
            let status = res.status().as_u16();
            let retry_after = res.headers().get("retry-after").is_some();
            let mut body: Value = res.json().await.unwrap_or(Value::Null);
            body["has_retry_after"] = retry_after.into();
            (status, body)
        });
    }
    set.join_all().await
}

async fn signin_from(app: &TestApp, email: &str, password: &str, address: &str) -> reqwest::Response {
    app.http
        .post(app.url("/v1/auth/signin"))
        .header("x-forwarded-for", address)
        .json(&serde_json::json!({ "email": email, "password": password }))
        .send()
        .await
        .unwrap()
}

async fn behind_one_proxy() -> TestApp {
    TestApp::builder().configure(|s| s.trusted_proxy_hops = 1).spawn().await
}

#[tokio::test]
async fn parallel_guesses_all_count_against_the_limit() {
    let app = behind_one_proxy().await;
    let victim = app.merchant().await;
    let email = victim.email.clone();
    let answers = in_parallel(
        &app,
        "/v1/auth/signin",
        30,
        |_| "198.51.100.7".to_owned(),
        |i| serde_json::json!({ "email": email, "password": format!("wrong-guess-{i:04}") }),
    )
    .await;
    let checked = answers.iter().filter(|(s, _)| *s == 401).count();
    let refused = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b["has_retry_after"] == true)
        .count();
    assert_eq!(checked + refused, 30, "{answers:?}");
    assert!(checked <= 5, "at most 5 guesses were checked, not {checked}");
}

#[tokio::test]
async fn a_flood_of_signups_is_answered_503_beyond_the_hashing_bound() {
    let app = TestApp::builder()
        .configure(|s| {
            s.trusted_proxy_hops = 1;
            s.password_hash_concurrency = 1;
            s.password_hash_wait = std::time::Duration::from_millis(20);
        })
        .spawn()
        .await;
    let answers = in_parallel(
        &app,
        "/v1/auth/signup",
        150,
        |i| format!("203.0.113.{}", i % 250),
        |i| serde_json::json!({ "email": format!("flood{i}@example.com"), "password": "correct-horse-battery" }),
    )
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let busy = answers
        .iter()
        .filter(|(s, b)| *s == 503 && b["code"] == "busy" && b["has_retry_after"] == true)
        .count();
    assert_eq!(created + busy, 150, "only 201 or 503 busy: {answers:?}");
    assert!(busy > 0, "beyond the bound the ledger says busy ({created} created)");
    assert_eq!(
        count(&app, "SELECT count(*) FROM accounts WHERE email LIKE 'flood%'").await,
        created as i64
    );
}

#[tokio::test]
async fn signups_from_one_address_are_limited_before_hashing() {
    let app = behind_one_proxy().await;
    let answers = in_parallel(
        &app,
        "/v1/auth/signup",
        12,
        |_| "192.0.2.44".to_owned(),
        |i| serde_json::json!({ "email": format!("one-address{i}@example.com"), "password": "correct-horse-battery" }),
    )
    .await;
    let created = answers.iter().filter(|(s, _)| *s == 201).count();
    let limited = answers
        .iter()
        .filter(|(s, b)| *s == 429 && b["code"] == "too_many_signups" && b["has_retry_after"] == true)
        .count();
    assert_eq!((created, limited), (5, 7), "{answers:?}");
    // Another address is not affected.
    let res = app
        .http
        .post(app.url("/v1/auth/signup"))
        .header("x-forwarded-for", "192.0.2.45")
        .json(&serde_json::json!({ "email": "elsewhere@example.com", "password": "correct-horse-battery" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
}

#[tokio::test]
async fn behind_an_ingress_one_attacker_locks_out_neither_everyone_nor_the_victim() {
    let app = behind_one_proxy().await;
    let victim = app.merchant().await;
    let bystander = app.merchant().await;
    // 25 failures from one address, on the victim's and on made-up emails.
    for i in 0..25 {
        let email = if i < 6 {
            victim.email.clone()
        } else {
            format!("nobody{i}@example.com")
        };
        let res = signin_from(&app, &email, "wrong-password", "198.51.100.66").await;
        assert!(matches!(res.status().as_u16(), 401 | 429));
    }
    assert_eq!(
        signin_from(&app, &victim.email, &victim.password, "198.51.100.66")
            .await
            .status(),
        429,
        "the attacker's address is throttled"
    );
    // Everyone else behind the same ingress signs in, the victim included.
    assert_eq!(
        signin_from(&app, &bystander.email, &bystander.password, "203.0.113.5")
            .await
            .status(),
        200
    );
    assert_eq!(
        signin_from(&app, &victim.email, &victim.password, "203.0.113.9")
            .await
            .status(),
        200
    );
    // Guessing the victim's email from many addresses slows it down, never locks it.
    for i in 0..12 {
        signin_from(
            &app,
            &victim.email,
            "wrong-password",
            &format!("198.51.100.{}", 100 + i),
        )
        .await;
    }
    let res = signin_from(&app, &victim.email, &victim.password, "203.0.113.9").await;
    assert_eq!(res.status(), 429);
    let wait: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(wait <= 4, "a short wait, not a lock-out: {wait} s");
    tokio::time::sleep(std::time::Duration::from_secs(wait)).await;
    assert_eq!(
        signin_from(&app, &victim.email, &victim.password, "203.0.113.9")
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn a_disconnect_from_magento_revokes_the_sage_refresh_token_too() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
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
    // The merchant presses Disconnect in the Magento admin.
    assert!(paired.store.store.disconnect().await);
    assert!(!app.sage().refresh_token_is_live(refresh.expose()), "revoked at Sage");
    assert_eq!(count(&app, "SELECT count(*) FROM sage_connections").await, 0);
    assert_eq!(count(&app, "SELECT count(*) FROM sage_reference").await, 0);
    // Nothing keeps a revoked binding's connection alive either.
    assert_eq!(ledger_sage_vault::tokens::keep_alive(&app.state).await.unwrap(), 0);
}

#[tokio::test]
async fn a_flooding_store_is_answered_503_with_retry_after_beyond_its_quota() {
    let app = TestApp::builder()
        .configure(|s| s.binding_ingest_per_minute = 5)
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let other = app.paired_store().await;
    let mut statuses = Vec::new();
    for id in 1..=8 {
        let token = ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
        let res = ledger_e2e::post_event(
            &app,
            &paired.tenant(),
            "customer.upserted",
            Some(&token),
            Some(&format!("customer.upserted:{id}")),
            &ledger_e2e::event_body(id),
        )
        .await;
        let retry = res.headers().get("retry-after").is_some();
        let status = res.status().as_u16();
        let body: Value = res.json().await.unwrap();
        statuses.push((status, body["code"].as_str().unwrap_or_default().to_owned(), retry));
    }
    let accepted = statuses.iter().filter(|(s, ..)| *s == 202).count();
    let deferred = statuses
        .iter()
        .filter(|(s, c, r)| *s == 503 && c == "ingest_quota_reached" && *r)
        .count();
    assert_eq!((accepted, deferred), (5, 3), "{statuses:?}");
    assert_eq!(
        count(&app, "SELECT count(*) FROM received_events").await,
        5,
        "refused ones change nothing"
    );
    // Another store is not held back by its neighbour.
    let token = ledger_e2e::module_token(&other.api_key(), &other.tenant());
    let res = ledger_e2e::post_event(
        &app,
        &other.tenant(),
        "customer.upserted",
        Some(&token),
        Some("customer.upserted:1"),
        &ledger_e2e::event_body(1),
    )
    .await;
    assert_eq!(res.status(), 202);
}

#[tokio::test]
async fn the_reference_cache_keeps_no_bank_account_numbers() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let cached: String = sqlx::query_scalar("SELECT items::text FROM sage_reference WHERE kind = 'bank_accounts'")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(cached.contains("displayed_as"), "{cached}");
    for secret in ["31926819", "40-47-84", "GB29NWBK", "bank_account_details", "balance"] {
        assert!(!cached.contains(secret), "{secret} cached: {cached}");
    }
    let _ = paired;
}

// ---- Medium and low ------------------------------------------------------------------

#[tokio::test]
async fn sign_in_never_redirects_off_the_ledger() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    for next in [
        "/\t/evil.example",
        "/%09/evil.example",
        "//evil.example",
        "/\\evil.example",
        "/\n/evil.example",
        "https://evil.example/",
        "/dashboard/bindings?x=1",
    ] {
        let res = app
            .http
            .post(app.url("/signin"))
            .form(&[
                ("email", merchant.email.as_str()),
                ("password", merchant.password.as_str()),
                ("next", next),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 303, "{next:?}");
        let location = res.headers()["location"].to_str().unwrap().to_owned();
        let resolved = url::Url::parse(&app.base_url).unwrap().join(&location).unwrap();
        assert_eq!(
            resolved.origin(),
            url::Url::parse(&app.base_url).unwrap().origin(),
            "{next:?} went to {location:?}"
        );
        assert!(!location.contains(['\t', '\n', '\\']), "{location:?}");
    }
}

#[tokio::test]
async fn a_cross_site_form_cannot_sign_anyone_in_or_up() {
    let app = TestApp::spawn().await;
    let attacker = app.merchant().await;
    for (header, value) in [("origin", "https://evil.example"), ("sec-fetch-site", "cross-site")] {
        for (path, form) in [
            (
                "/signin",
                vec![
                    ("email", attacker.email.clone()),
                    ("password", attacker.password.clone()),
                ],
            ),
            (
                "/signup",
                vec![
                    ("email", format!("csrf-{}@example.com", header)),
                    ("password", "correct-horse-battery".to_owned()),
                ],
            ),
        ] {
            let res = app
                .http
                .post(app.url(path))
                .header(header, value)
                .form(&form)
                .send()
                .await
                .unwrap();
            assert_eq!(res.status(), 403, "{path} with {header}: {value}");
            assert!(res.headers().get("set-cookie").is_none(), "no session is set");
        }
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM accounts WHERE email LIKE 'csrf-%'").await,
        0
    );
    // The ledger's own page posting to itself is fine.
    let res = app
        .http
        .post(app.url("/signin"))
        .header("origin", &app.base_url)
        .header("sec-fetch-site", "same-origin")
        .form(&[
            ("email", attacker.email.as_str()),
            ("password", attacker.password.as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 303);
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let app = TestApp::builder()
        .configure(|s| s.header_read_timeout = std::time::Duration::from_secs(1))
        .spawn()
        .await;
    let mut socket = tokio::net::TcpStream::connect(app.addr).await.unwrap();
    socket
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 512];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), socket.read(&mut buf))
        .await
        .expect("the server hung up instead of waiting for ever");
    assert!(matches!(read, Ok(0) | Err(_)) || String::from_utf8_lossy(&buf).contains("408"));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
}

#[tokio::test]
async fn a_runaway_statement_is_cancelled_by_the_database() {
    let app = TestApp::builder()
        .configure(|s| s.db_statement_timeout = std::time::Duration::from_secs(1))
        .spawn()
        .await;
    let err = sqlx::query("SELECT pg_sleep(5)")
        .execute(&app.state.db)
        .await
        .expect_err("cancelled");
    assert!(err.to_string().contains("statement timeout"), "{err}");
    let idle: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(idle, "1s");
}

#[tokio::test]
async fn sessions_end_at_their_absolute_lifetime_and_are_replaced_at_sign_in() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let session = app.session(&merchant).await;
    let me = |cookie: String| app.http.get(app.url("/v1/me")).header("cookie", cookie).send();
    assert_eq!(me(session.cookie.clone()).await.unwrap().status(), 200);
    // Active all along, but signed in eight days ago (the lifetime is 7 days).
    sqlx::query("UPDATE sessions SET created_at = now() - interval '8 days'")
        .execute(&app.state.db)
        .await
        .unwrap();
    assert_eq!(me(session.cookie.clone()).await.unwrap().status(), 401);

    // Signing in with an old session cookie ends that session.
    let planted = app.session(&merchant).await;
    let res = app
        .http
        .post(app.url("/v1/auth/signin"))
        .header("cookie", &planted.cookie)
        .json(&serde_json::json!({ "email": merchant.email, "password": merchant.password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        me(planted.cookie.clone()).await.unwrap().status(),
        401,
        "the old session is gone"
    );
}

#[tokio::test]
async fn the_embed_page_echoes_no_path_and_frames_only_for_its_tenant() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let csp = |res: &reqwest::Response| res.headers()["content-security-policy"].to_str().unwrap().to_owned();
    let res = app.http.get(app.url("/embed/%22%3E%3Cb%3Ehi")).send().await.unwrap();
    assert_eq!(res.status(), 404);
    assert!(csp(&res).contains("frame-ancestors 'none'"));
    let body = res.text().await.unwrap();
    assert!(
        !body.contains("<b>hi") && !body.contains("&lt;b&gt;hi"),
        "not echoed: {body}"
    );
    // Someone else's tenant id names no store of this one.
    let res = app
        .http
        .get(app.url(&format!("/embed/{}", uuid::Uuid::new_v4())))
        .send()
        .await
        .unwrap();
    assert!(csp(&res).contains("frame-ancestors 'none'"));
    assert!(!csp(&res).contains(&paired.store.base_url));
}

#[tokio::test]
async fn a_stranger_asking_for_a_run_learns_nothing_about_its_binding() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let token = ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
    let res = ledger_e2e::post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&token),
        Some("invoice.created:5"),
        &ledger_e2e::event_body(5),
    )
    .await;
    let run = res.json::<Value>().await.unwrap()["sync_run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let stranger = app.merchant().await;
    let session = app.session(&stranger).await;
    for path in [format!("/dashboard/runs/{run}"), format!("/v1/runs/{run}")] {
        let res = app
            .http
            .get(app.url(&path))
            .header("cookie", &session.cookie)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 404, "{path}");
        let body = res.text().await.unwrap();
        assert!(!body.contains(&paired.binding_id.to_string()), "{path}: {body}");
    }
}

#[tokio::test]
async fn pages_are_not_compressed_next_to_their_csrf_token() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let session = app.session(&merchant).await;
    let page = app
        .http
        .get(app.url("/dashboard/account"))
        .header("cookie", &session.cookie)
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.headers().get("content-encoding").is_none(), "{:?}", page.headers());
    let json = app
        .http
        .get(app.url("/openapi.json"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(json.headers()["content-encoding"], "gzip", "JSON still is");
}

#[tokio::test]
async fn an_operator_may_only_do_what_operators_do_on_other_merchants_bindings() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let operator = ledger_tenant_binding::accounts::create_account(&app.state.db, "ops@example.com", None, true)
        .await
        .unwrap();
    let token = ledger_tenant_binding::accounts::create_api_token(
        &app.state.db,
        operator.account_id,
        "ops",
        std::time::Duration::from_secs(3600),
    )
    .await
    .unwrap();
    let token = token.expose().clone();
    let binding = paired.binding_id;
    // Not the operator's to change: settings, disconnect, Sage connect.
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{binding}/disconnect")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .http
        .get(app.url(&format!("/v1/bindings/{binding}/settings")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{binding}/sage/authorize")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
    // An operator's own actions: the runs, retried in the operator's name.
    let res = app
        .http
        .get(app.url(&format!("/v1/bindings/{binding}/runs")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{binding}/runs/retry-dead")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'revoked'").await,
        0
    );
}

#[tokio::test]
async fn api_tokens_expire_are_listed_and_revoked_and_cannot_mint_successors() {
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let me = |token: String| app.http.get(app.url("/v1/me")).bearer_auth(token).send();
    assert_eq!(me(merchant.token.clone()).await.unwrap().status(), 200);
    // A token cannot issue the next one; a signed-in person can.
    let res = app
        .http
        .post(app.url("/v1/tokens"))
        .bearer_auth(&merchant.token)
        .json(&serde_json::json!({ "name": "successor" }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 403);
    let session = app.session(&merchant).await;
    let res = app
        .http
        .post(app.url("/v1/tokens"))
        .header("cookie", &session.cookie)
        .header("x-csrf-token", &session.csrf_token)
        .json(&serde_json::json!({ "name": "deploy", "ttl_days": 30 }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let issued: Value = res.json().await.unwrap();
    let deploy = issued["token"].as_str().unwrap().to_owned();
    assert_eq!(me(deploy.clone()).await.unwrap().status(), 200);
    let listed: Value = app
        .http
        .get(app.url("/v1/tokens"))
        .bearer_auth(&deploy)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed.as_array().unwrap().len(), 2);
    assert!(!listed.to_string().contains("lgr_"), "never the tokens themselves");
    // Revoked: refused at once.
    let res = app
        .http
        .delete(app.url(&format!("/v1/tokens/{}", issued["id"].as_str().unwrap())))
        .bearer_auth(&merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(me(deploy).await.unwrap().status(), 401);
    // Expired: refused, saying how to get a new one.
    sqlx::query("UPDATE api_tokens SET expires_at = now() - interval '1 second'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let res = me(merchant.token.clone()).await.unwrap();
    assert_eq!(res.status(), 401);
    assert!(res.text().await.unwrap().contains("expired"));
}

#[tokio::test]
async fn transport_errors_never_carry_the_url_and_its_customer_email() {
    // A "Sage" that hangs up on every request.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            drop(socket);
        }
    });
    let api = ledger_sage_api::SageApi::new(&base, std::time::Duration::from_secs(2));
    let token = ledger_core::Secret::new("sbx_at_x".to_owned());
    let err = api
        .get::<Value>(
            ledger_sage_api::Auth {
                access_token: &token,
                business_id: None,
            },
            "/contacts?email=jane.doe%40example.com&attributes=all",
        )
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(!text.contains("jane") && !text.contains("contacts?"), "{text}");
}

#[tokio::test]
async fn connect_cannot_be_used_as_a_request_generator() {
    let app = behind_one_proxy().await;
    let merchant = app.merchant().await;
    let attempt = |address: &'static str| {
        app.http
            .post(app.url("/v1/magento/connect"))
            .bearer_auth(&merchant.token)
            .header("x-forwarded-for", address)
            .json(&serde_json::json!({ "magento_base_url": "http://127.0.0.1:9/", "pairing_code": "x" }))
            .send()
    };
    for _ in 0..30 {
        assert_ne!(attempt("198.51.100.20").await.unwrap().status(), 429);
    }
    let res = attempt("198.51.100.21").await.unwrap();
    assert_eq!(
        res.status(),
        429,
        "the account's hourly allowance is spent, whatever the address"
    );
    assert!(res.headers().get("retry-after").is_some());
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "too_many_connects");
}
