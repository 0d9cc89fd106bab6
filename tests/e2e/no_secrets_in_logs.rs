//! A full run — pairing, webhooks, Sage connect, a refresh, reference data, a
//! disconnect — with every log line and span captured at TRACE, then searched for every
//! secret that run used. None may appear.

use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use ledger_core::crypto::Keyring;
use ledger_sandbox::sage::SageConfig;
use ledger_test_support::TestApp;
use tracing_subscriber::{EnvFilter, fmt::format::FmtSpan, layer::SubscriberExt as _, util::SubscriberInitExt as _};

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn no_secret_reaches_logs_or_traces() {
    let capture = Capture::default();
    tracing_subscriber::registry()
        .with(EnvFilter::new(
            "trace,hyper=debug,hyper_util=debug,h2=debug,reqwest=trace,sqlx=trace",
        ))
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_span_events(FmtSpan::FULL)
                .with_current_span(true)
                .with_span_list(true)
                .with_writer(capture.clone()),
        )
        .init();

    let master = Keyring::generate_spec("k1");
    let app = TestApp::builder()
        .sage(SageConfig {
            client_secret: "sage-client-secret-4f2b9e".into(),
            ..SageConfig::default()
        })
        .configure({
            let master = master.expose().clone();
            move |s| s.master_keys = Some(Arc::new(Keyring::parse(&master).unwrap()))
        })
        .spawn()
        .await;

    // Pairing (code, api_key) and webhooks (module JWTs).
    let paired = app.paired_store().await;
    let store = &paired.store.store;
    store.place_order(true);
    store.save_customer(2);
    store.drain_once().await;
    let api_key = paired.api_key();
    let code = store.generate_pairing_code();
    assert_eq!(
        app.connect(&paired.merchant, &paired.store.base_url, &code)
            .await
            .status(),
        201,
        "re-pair with a fresh code"
    );
    let api_key_after = store.api_key().unwrap();

    // A session cookie and its CSRF token.
    let signin = app
        .http
        .post(app.url("/v1/auth/signin"))
        .json(&serde_json::json!({ "email": paired.merchant.email, "password": paired.merchant.password }))
        .send()
        .await
        .unwrap();
    let cookie = signin.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .split_once('=')
        .unwrap()
        .1
        .to_owned();
    let csrf = signin.json::<serde_json::Value>().await.unwrap()["csrf_token"]
        .as_str()
        .unwrap()
        .to_owned();

    // Sage: state, code, PKCE verifier, tokens before and after a refresh.
    let callback = app.sage_authorize(&paired.merchant, paired.binding_id, "uk").await;
    let callback_url = url::Url::parse(&callback).unwrap();
    let sage_code = callback_url
        .query_pairs()
        .find(|(k, _)| k == "code")
        .unwrap()
        .1
        .into_owned();
    let sage_state = callback_url
        .query_pairs()
        .find(|(k, _)| k == "state")
        .unwrap()
        .1
        .into_owned();
    let verifier: Vec<u8> = sqlx::query_scalar("SELECT pkce_verifier FROM sage_oauth_states")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let verifier_hash: Vec<u8> = sqlx::query_scalar("SELECT state_hash FROM sage_oauth_states")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    let verifier = app
        .state
        .keyring
        .open_string(
            &verifier,
            &format!("sage_oauth_states.pkce_verifier:{}", hex_of(&verifier_hash)),
        )
        .unwrap();
    assert_eq!(app.finish_callback(&paired.merchant, &callback).await.status(), 303);
    let tokens_before = sage_tokens(&app, paired.binding_id).await;
    sqlx::query("UPDATE sage_connections SET access_expires_at = now()")
        .execute(&app.state.db)
        .await
        .unwrap();
    ledger_sage_vault::tokens::access_token_with(&app.state, &Default::default(), paired.binding_id, None)
        .await
        .unwrap();
    let tokens_after = sage_tokens(&app, paired.binding_id).await;
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/reference/refresh", paired.binding_id)))
        .header("cookie", format!("ledger_session={cookie}"))
        .header("x-csrf-token", &csrf)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/disconnect", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 204);

    let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
    assert!(logs.len() > 10_000, "the run was logged ({} bytes)", logs.len());
    let master_material = master.expose().split_once(':').unwrap().1.to_owned();
    let secrets: Vec<(&str, String)> = vec![
        ("api_key", api_key),
        ("api_key after re-pairing", api_key_after),
        ("pairing code", code),
        ("merchant API token", paired.merchant.token.clone()),
        ("session cookie", cookie),
        ("CSRF token", csrf),
        ("master key", master_material),
        ("Sage client secret", "sage-client-secret-4f2b9e".into()),
        ("Sage authorization code", sage_code),
        ("OAuth state", sage_state),
        ("PKCE verifier", verifier.expose().clone()),
        ("Sage access token", tokens_before.0),
        ("Sage refresh token", tokens_before.1),
        ("refreshed access token", tokens_after.0),
        ("refreshed refresh token", tokens_after.1),
        ("a signed JWT", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.".into()),
    ];
    for (name, secret) in &secrets {
        assert!(secret.len() >= 8, "{name} is a real value");
        assert!(!logs.contains(secret.as_str()), "{name} appears in the logs");
    }
}

async fn sage_tokens(app: &TestApp, binding: ledger_core::BindingId) -> (String, String) {
    let (access, refresh): (Vec<u8>, Vec<u8>) =
        sqlx::query_as("SELECT access_token, refresh_token FROM sage_connections")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    let k = &app.state.keyring;
    (
        k.open_string(&access, &format!("sage_connections.access_token:{binding}"))
            .unwrap()
            .into_inner(),
        k.open_string(&refresh, &format!("sage_connections.refresh_token:{binding}"))
            .unwrap()
            .into_inner(),
    )
}

fn hex_of(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
