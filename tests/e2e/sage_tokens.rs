//! The token vault under pressure: single-flight refresh across many "processes",
//! refresh after a token 401, needs_reauth after invalid_grant, lapsed subscriptions,
//! Sage outages, keep-alive, and master-key rotation while traffic flows.

use std::{sync::Arc, time::Duration};

use ledger_core::{BindingId, crypto::Keyring};
use ledger_e2e::count;
use ledger_sage_vault::tokens::{self, TokenCache, VaultError};
use ledger_sandbox::sage::{SageConfig, SageFaults};
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

async fn connected() -> (TestApp, PairedStore) {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.paired_store().await;
    assert_eq!(app.connect_sage(&paired).await.status(), 303);
    (app, paired)
}

/// Makes the stored access token look about to expire (inside the refresh margin).
async fn expire_soon(app: &TestApp, binding: BindingId) {
    sqlx::query("UPDATE sage_connections SET access_expires_at = now() + interval '10 seconds' WHERE binding_id = $1")
        .bind(binding.0)
        .execute(&app.state.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn fifty_workers_across_an_expiry_cause_exactly_one_refresh() {
    let (app, paired) = connected().await;
    expire_soon(&app, paired.binding_id).await;
    let before = app.sage().stats();
    let first_version: i64 = sqlx::query_scalar("SELECT token_version FROM sage_connections")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    // Fifty independent in-memory caches: fifty processes as far as the vault can tell.
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (state, binding) = (app.state.clone(), paired.binding_id);
        tasks.push(tokio::spawn(async move {
            let cache = TokenCache::default();
            tokens::access_token_with(&state, &cache, binding, None).await
        }));
    }
    let mut seen = std::collections::HashSet::new();
    for t in tasks {
        let token = t.await.unwrap().expect("every worker gets a token");
        seen.insert(token.token.expose().clone());
    }
    let after = app.sage().stats();
    assert_eq!(
        after.refreshes - before.refreshes,
        1,
        "exactly one refresh call to Sage"
    );
    assert_eq!(after.invalid_grants, 0, "no invalid_grant");
    assert_eq!(seen.len(), 1, "everyone uses the refreshed token");
    let version: i64 = sqlx::query_scalar("SELECT token_version FROM sage_connections")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(version, first_version + 1, "one refresh, one new version");
}

#[tokio::test]
async fn a_token_401_refreshes_once_and_the_call_succeeds() {
    let (app, paired) = connected().await;
    let stale = tokens::access_token(&app.state, paired.binding_id).await.unwrap();
    // Sage's clock passes the access token's 300 s while ours still trusts it.
    app.sage().advance(301);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/reference/refresh", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
    assert_eq!(app.sage().stats().refreshes, 1);
    let fresh = tokens::access_token(&app.state, paired.binding_id).await.unwrap();
    assert_ne!(fresh.token.expose(), stale.token.expose());
    // A second caller reporting the same stale token does not refresh again.
    let again = tokens::after_unauthorized(&app.state, paired.binding_id, &stale)
        .await
        .unwrap();
    assert_eq!(again.token.expose(), fresh.token.expose());
    assert_eq!(app.sage().stats().refreshes, 1);
}

#[tokio::test]
async fn a_dead_refresh_token_pauses_the_binding_until_reconnected() {
    let (app, paired) = connected().await;
    sqlx::query("INSERT INTO jobs (binding_id, kind) VALUES ($1, 'sync_event')")
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    // 31 days without a refresh: Sage's refresh token has expired.
    app.sage().advance(31 * 86_400 + 60);
    expire_soon(&app, paired.binding_id).await;
    // Another process (its own cache) needs a token.
    let err = tokens::access_token_with(&app.state, &TokenCache::default(), paired.binding_id, None)
        .await
        .unwrap_err();
    assert_eq!(err, VaultError::NeedsReauth);
    assert_eq!(app.sage().stats().invalid_grants, 1);

    let c: Value = app
        .http
        .get(app.url(&format!("/v1/bindings/{}/sage", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(c["status"], "needs_reauth");
    assert_eq!(
        count(&app, "SELECT count(*) FROM jobs WHERE status = 'paused'").await,
        1,
        "paused, not failed"
    );
    let tile = paired.store.store.fetch_tile_health().await;
    assert_eq!(tile["binding"]["status"], "needs_reauth");
    assert_eq!(ledger_sandbox::magento::tile_verdict(true, &tile)["state"], "error");
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE action = 'sage.needs_reauth'"
        )
        .await,
        1
    );
    // Repeated requests do not hammer Sage.
    assert_eq!(
        tokens::access_token(&app.state, paired.binding_id).await.unwrap_err(),
        VaultError::NeedsReauth
    );
    assert_eq!(app.sage().stats().invalid_grants, 1);

    // Connecting again resumes everything.
    assert_eq!(app.connect_sage(&paired).await.status(), 303);
    assert!(tokens::access_token(&app.state, paired.binding_id).await.is_ok());
    assert_eq!(
        count(&app, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        1
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'active'").await,
        1
    );
}

#[tokio::test]
async fn a_lapsed_subscription_pauses_without_refreshing() {
    let (app, paired) = connected().await;
    let business = app.sage().businesses()[0].id.clone();
    app.sage().set_lapsed(&business, true);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/reference/refresh", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 409);
    assert_eq!(res.json::<Value>().await.unwrap()["code"], "sage_subscription_lapsed");
    assert_eq!(app.sage().stats().refreshes, 0, "the MSE 401 is not a token problem");
    assert_eq!(
        count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'paused'").await,
        1
    );
    // Renewed: the next successful call clears it.
    app.sage().set_lapsed(&business, false);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/reference/refresh", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        count(&app, "SELECT count(*) FROM sage_connections WHERE status = 'connected'").await,
        1
    );
}

#[tokio::test]
async fn sage_outages_are_transient_and_release_the_lease() {
    let (app, paired) = connected().await;
    expire_soon(&app, paired.binding_id).await;
    app.sage().set_faults(SageFaults {
        token_status: 503,
        token_failures: 1,
        ..Default::default()
    });
    let err = tokens::access_token_with(&app.state, &TokenCache::default(), paired.binding_id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Transient(_)), "{err:?}");
    let lease: Option<uuid::Uuid> = sqlx::query_scalar("SELECT refresh_lease FROM sage_connections")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(lease.is_none(), "the lease is released for the next attempt");
    assert!(
        tokens::access_token_with(&app.state, &TokenCache::default(), paired.binding_id, None)
            .await
            .is_ok()
    );
    assert_eq!(app.sage().stats().refreshes, 1);
}

#[tokio::test]
async fn a_response_lost_after_sage_rotated_is_detected_not_hidden() {
    // Sage rotates the refresh token but the answer never arrives. With no grace period
    // for the old token, the connection cannot recover by itself: it must say so.
    let (app, paired) = connected().await;
    expire_soon(&app, paired.binding_id).await;
    app.sage().set_faults(SageFaults {
        drop_token_responses: 1,
        ..Default::default()
    });
    let err = tokens::access_token_with(&app.state, &TokenCache::default(), paired.binding_id, None)
        .await
        .unwrap_err();
    assert!(matches!(err, VaultError::Transient(_)), "{err:?}");
    let err = tokens::access_token_with(&app.state, &TokenCache::default(), paired.binding_id, None)
        .await
        .unwrap_err();
    assert_eq!(err, VaultError::NeedsReauth);
}

#[tokio::test]
async fn keep_alive_refreshes_idle_connections() {
    let app = TestApp::builder()
        .sage(SageConfig::default())
        .configure(|s| s.sage_keepalive_after = Duration::from_secs(3600))
        .spawn()
        .await;
    let paired = app.paired_store().await;
    app.connect_sage(&paired).await;
    assert_eq!(
        tokens::keep_alive(&app.state).await.unwrap(),
        0,
        "fresh connections are left alone"
    );
    sqlx::query("UPDATE sage_connections SET last_refreshed_at = now() - interval '2 hours'")
        .execute(&app.state.db)
        .await
        .unwrap();
    assert_eq!(tokens::keep_alive(&app.state).await.unwrap(), 1);
    assert_eq!(app.sage().stats().refreshes, 1);
    assert_eq!(tokens::keep_alive(&app.state).await.unwrap(), 0);
}

#[tokio::test]
async fn master_key_rotation_under_load_loses_nothing() {
    // Old key k1 in use for every secret.
    let k1 = Keyring::generate_spec("k1");
    let k2 = Keyring::generate_spec("k2");
    let app = TestApp::builder()
        .sage(SageConfig::default())
        .configure({
            let k1 = k1.expose().clone();
            move |s| s.master_keys = Some(Arc::new(Keyring::parse(&k1).unwrap()))
        })
        .spawn()
        .await;
    let mut stores = Vec::new();
    for _ in 0..6 {
        let paired = app.paired_store().await;
        app.connect_sage(&paired).await;
        stores.push(paired);
    }
    // Restart with k2 active and k1 still readable, on the same database.
    let db_url = app.db.url().to_owned();
    let keys = format!("{},{}", k2.expose(), k1.expose());
    let mut settings = ledger_test_support::test_settings(&app.db);
    settings.database_url = ledger_core::Secret::new(db_url);
    settings.master_keys = Some(Arc::new(Keyring::parse(&keys).unwrap()));
    ledger_test_support::point_at_sage(&mut settings, app.sage.as_ref().unwrap());
    let rotated = ledger_core::AppState::connect(settings).await.unwrap();

    // A server process on the new keyring takes the traffic while rotation runs.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server_url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = tokio_util_token();
    tokio::spawn(ledger_gateway::server::serve(
        listener,
        ledger_gateway::http::router(rotated.clone()),
        shutdown.clone(),
        Duration::from_secs(1),
    ));

    // Traffic while rotating: webhooks (api_keys) and token refreshes (Sage tokens).
    let traffic = {
        let http = app.http.clone();
        let stores: Vec<(String, String)> = stores.iter().map(|p| (p.tenant(), p.api_key())).collect();
        let server_url = server_url.clone();
        tokio::spawn(async move {
            let (mut ok, mut failures) = (0, 0);
            for round in 0..30 {
                for (i, (tenant, key)) in stores.iter().enumerate() {
                    let token = ledger_e2e::module_token(key, tenant);
                    let n = round * 10 + i as i64 + 1;
                    let res = http
                        .post(format!("{server_url}/webhooks/magento/{tenant}/customer.upserted"))
                        .bearer_auth(token)
                        .header("content-type", "application/json")
                        .header("idempotency-key", format!("customer.upserted:{n}"))
                        .body(ledger_e2e::event_body(n))
                        .send()
                        .await
                        .unwrap();
                    if res.status() == 202 { ok += 1 } else { failures += 1 }
                }
            }
            (ok, failures)
        })
    };
    let refreshes = {
        let state = rotated.clone();
        let bindings: Vec<BindingId> = stores.iter().map(|p| p.binding_id).collect();
        tokio::spawn(async move {
            let mut failures = 0;
            for _ in 0..5 {
                for b in &bindings {
                    sqlx::query("UPDATE sage_connections SET access_expires_at = now() WHERE binding_id = $1")
                        .bind(b.0)
                        .execute(&state.db)
                        .await
                        .unwrap();
                    if tokens::access_token_with(&state, &TokenCache::default(), *b, None)
                        .await
                        .is_err()
                    {
                        failures += 1;
                    }
                }
            }
            failures
        })
    };
    let report = ledger_sage_vault::rotation::rotate_all(&rotated, 2, |_| {})
        .await
        .unwrap();
    let (ok, webhook_failures) = traffic.await.unwrap();
    let refresh_failures = refreshes.await.unwrap();
    assert_eq!(webhook_failures, 0, "no failed decrypt for api_keys");
    assert_eq!(ok, 180);
    assert_eq!(refresh_failures, 0, "no failed decrypt for Sage tokens");
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    // Api keys are rewritten by the rotation; Sage tokens partly by live refreshes (which
    // seal under the active key), the rest by the rotation.
    assert!(report.rewritten >= 6, "{report:?}");

    // Everything is on k2; k1 can go.
    let left: i64 = ledger_sage_vault::rotation::remaining(&rotated.db, &rotated.keyring)
        .await
        .unwrap()
        .iter()
        .map(|(_, n)| n)
        .sum();
    assert_eq!(left, 0);
    let only_k2 = Keyring::parse(k2.expose()).unwrap();
    assert!(
        ledger_sage_vault::rotation::unknown_keys_in_use(&rotated.db, &only_k2)
            .await
            .unwrap()
            .is_empty()
    );
    shutdown.cancel();
    for p in &stores {
        let sealed: Vec<u8> = sqlx::query_scalar("SELECT api_key FROM connector_bindings WHERE id = $1")
            .bind(p.binding_id.0)
            .fetch_one(&rotated.db)
            .await
            .unwrap();
        assert!(
            only_k2
                .open(&sealed, &format!("connector_bindings.api_key:{}", p.binding_id))
                .is_ok()
        );
    }
}

fn tokio_util_token() -> tokio_util::sync::CancellationToken {
    tokio_util::sync::CancellationToken::new()
}
