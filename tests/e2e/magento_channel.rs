//! The Magento channel end to end: a sandbox store paired through the connect endpoint,
//! every event type delivered by its outbox, duplicates absorbed, the module's status
//! calls, disconnect and re-pairing.

use ledger_e2e::{count, event_body, module_token, post_event, send_valid};
use ledger_sandbox::magento::OutboxStatus;
use ledger_test_support::TestApp;
use serde_json::Value;

#[tokio::test]
async fn every_event_type_is_accepted_once_and_the_outbox_drains() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let store = &paired.store.store;
    assert!(store.is_connected());
    assert_eq!(
        store.ledger_base_url(),
        app.base_url,
        "the store calls the ledger's public URL"
    );

    let (_, paid_invoice) = store.place_order(true); // invoice.created + invoice.paid
    let (_, open_invoice) = store.place_order(false); // invoice.created
    store.refund(paid_invoice, true).unwrap(); // creditmemo.created
    store.save_customer(5).unwrap();
    store.save_product(3).unwrap();
    assert!(
        store.save_product(3).is_none(),
        "the module drops a repeated key at enqueue"
    );

    let report = store.drain_once().await;
    assert_eq!(
        (report.sent, report.succeeded, report.dead_lettered),
        (6, 6, 0),
        "{report:?}"
    );
    assert!(
        store
            .outbox()
            .iter()
            .all(|r| r.status == OutboxStatus::Succeeded && r.attempts == 1)
    );

    let events: Vec<(String, i64)> =
        sqlx::query_as("SELECT event_name, magento_entity_id FROM received_events ORDER BY received_at")
            .fetch_all(&app.state.db)
            .await
            .unwrap();
    let names: std::collections::BTreeSet<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        [
            "creditmemo.created",
            "customer.upserted",
            "invoice.created",
            "invoice.paid",
            "product.upserted"
        ]
    );
    assert!(events.contains(&("invoice.created".into(), open_invoice)));
    assert_eq!(
        count(&app, "SELECT count(*) FROM sync_runs WHERE status = 'pending'").await,
        6
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        6
    );

    // A requeue, a retry or the CLI's republish sends the same key and bytes again.
    let run_before: uuid::Uuid = sqlx::query_scalar(
        "SELECT r.id FROM sync_runs r JOIN received_events e ON e.id = r.event_id WHERE e.idempotency_key = $1",
    )
    .bind(format!("invoice.created:{open_invoice}"))
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    let sent = store
        .outbox()
        .into_iter()
        .find(|r| r.idempotency_key == format!("invoice.created:{open_invoice}"))
        .expect("the outbox row")
        .body;
    for _ in 0..3 {
        let token = module_token(&paired.api_key(), &paired.tenant());
        let key = format!("invoice.created:{open_invoice}");
        let res = post_event(
            &app,
            &paired.tenant(),
            "invoice.created",
            Some(&token),
            Some(&key),
            &sent,
        )
        .await;
        assert_eq!(res.status(), 202);
        let body: Value = res.json().await.unwrap();
        assert_eq!(body["duplicate"], true);
        assert_eq!(body["sync_run_id"], run_before.to_string(), "the original run");
    }
    assert_eq!(
        count(&app, "SELECT count(*) FROM received_events").await,
        6,
        "nothing new stored"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 6, "nothing new queued");
    assert_eq!(
        count(&app, "SELECT sum(duplicates)::bigint FROM received_events").await,
        3
    );

    // The module reuses a key when an entity's state changes (contract §11.6): new bytes are
    // a new event, so a later state is never swallowed as a repeat.
    let res = send_valid(&app, &paired, "invoice.created", open_invoice).await;
    assert_eq!(res.status(), 202);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["duplicate"], false);
    assert_ne!(body["sync_run_id"], run_before.to_string());
}

#[tokio::test]
async fn events_out_of_order_are_all_accepted() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    // invoice.paid can overtake invoice.created when the latter hit a transient error.
    assert_eq!(send_valid(&app, &paired, "invoice.paid", 77).await.status(), 202);
    assert_eq!(send_valid(&app, &paired, "invoice.created", 77).await.status(), 202);
    assert_eq!(
        count(&app, "SELECT count(*) FROM sync_runs WHERE magento_entity_id = 77").await,
        2
    );
}

#[tokio::test]
async fn tile_reports_setup_then_connected_per_the_modules_decision_order() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let store = &paired.store.store;

    // Paired, Sage not connected yet: "Finish setup".
    let health = store.fetch_tile_health().await;
    assert_eq!(health["tenant"]["magento_connection_status"], "active");
    assert_eq!(health["binding"]["status"], "");
    assert_eq!(health["sync"]["pending_count"], 0);
    assert_eq!(health["sync"]["failed_24h"], 0);
    assert!(health["sync"]["last_run_at"].is_null());
    let verdict = ledger_sandbox::magento::tile_verdict(true, &health);
    assert_eq!(verdict["headline"], "Finish setup at ledger.byte8.io");

    // Once Sage is connected (the next issue's flow), the binding is active with a region.
    sqlx::query("UPDATE connector_bindings SET status = 'active', region = 'uk' WHERE id = $1")
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    let health = store.fetch_tile_health().await;
    assert_eq!(health["binding"]["status"], "active");
    assert_eq!(health["binding"]["region"], "uk");
    assert_eq!(
        ledger_sandbox::magento::tile_verdict(true, &health)["headline"],
        "Connected to Sage (UK)"
    );

    // A finished run shows as last_run_at (RFC 3339, Z); a failure turns the tile red.
    store.place_order(false);
    store.drain_once().await;
    sqlx::query("UPDATE sync_runs SET status = 'failed', finished_at = now()")
        .execute(&app.state.db)
        .await
        .unwrap();
    let health = store.fetch_tile_health().await;
    assert_eq!(health["sync"]["failed_24h"], 1);
    let last = health["sync"]["last_run_at"].as_str().unwrap();
    assert!(
        last.ends_with('Z') && chrono::DateTime::parse_from_rfc3339(last).is_ok(),
        "{last}"
    );
    assert_eq!(ledger_sandbox::magento::tile_verdict(true, &health)["state"], "error");

    // The store answering 401 to the ledger shows as token_revoked.
    ledger_tenant_binding_record_401(&app, paired.binding_id).await;
    let health = store.fetch_tile_health().await;
    assert_eq!(health["tenant"]["magento_connection_status"], "token_revoked");
}

async fn ledger_tenant_binding_record_401(app: &TestApp, binding: ledger_core::BindingId) {
    sqlx::query("UPDATE connector_bindings SET magento_connection_status = 'token_revoked' WHERE id = $1")
        .bind(binding.0)
        .execute(&app.state.db)
        .await
        .unwrap();
}

#[tokio::test]
async fn entity_status_answers_for_the_calling_binding() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    send_valid(&app, &paired, "invoice.created", 42).await;
    let get = |query: &'static str| {
        let token = module_token(&paired.api_key(), &paired.tenant());
        app.http
            .get(app.url(&format!("/v1/status?{query}")))
            .bearer_auth(token)
            .send()
    };
    let body: Value = get("entity_type=invoice&entity_id=42")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        (body["status"].as_str(), body["entity_id"].as_i64()),
        (Some("pending"), Some(42))
    );
    assert!(body["sync_run_id"].is_string());
    let body: Value = get("entity_type=invoice&entity_id=43")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["status"], "unknown");
    let res = get("entity_type=order&entity_id=x").await.unwrap();
    assert_eq!(res.status(), 422);
    let body: Value = res.json().await.unwrap();
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["entity_type", "entity_id"]);
}

#[tokio::test]
async fn disconnect_revokes_and_repairing_keeps_the_history() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let store = &paired.store.store;
    let old_key = paired.api_key();
    send_valid(&app, &paired, "invoice.created", 1).await;
    // A document already posted to Sage for this binding.
    sqlx::query("INSERT INTO entity_xref (binding_id, entity_type, magento_entity_id, sage_id) VALUES ($1, 'invoice', 1, 'SI-1')")
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();

    assert!(store.disconnect().await, "the ledger acknowledged with 2xx");
    assert!(!store.is_connected());
    let (status,): (String,) = sqlx::query_as("SELECT status FROM connector_bindings WHERE id = $1")
        .bind(paired.binding_id.0)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(status, "revoked");
    assert_eq!(
        count(&app, "SELECT count(*) FROM jobs WHERE status = 'queued'").await,
        0,
        "queued work stopped"
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM audit_log WHERE action = 'binding.disconnected'"
        )
        .await,
        1
    );

    // The disconnect is idempotent.
    let again = app
        .http
        .post(app.url("/v1/tenant/disconnect"))
        .bearer_auth(module_token(&old_key, &paired.tenant()))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 204);

    // Webhooks with the old key now answer 401 binding_revoked.
    let token = module_token(&old_key, &paired.tenant());
    let res = post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&token),
        Some("invoice.created:2"),
        &event_body(2),
    )
    .await;
    assert_eq!(res.status(), 401);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "binding_revoked");
    assert!(body["detail"].as_str().unwrap().contains("pairing code"));

    // Re-pairing the same store: same binding, new key, history kept.
    let code = store.generate_pairing_code();
    let res = app.connect(&paired.merchant, &paired.store.base_url, &code).await;
    assert_eq!(res.status(), 201);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["binding_id"], paired.binding_id.to_string());
    assert_eq!(body["repaired"], true);
    assert_eq!(body["status"], "paired");
    assert_ne!(store.api_key().unwrap(), old_key, "a new key");
    assert_eq!(count(&app, "SELECT count(*) FROM entity_xref").await, 1);
    assert_eq!(send_valid(&app, &paired, "invoice.created", 3).await.status(), 202);
    let token = module_token(&old_key, &paired.tenant());
    let res = post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&token),
        Some("invoice.created:4"),
        &event_body(4),
    )
    .await;
    assert_eq!(res.status(), 401, "the old key no longer works");
}

#[tokio::test]
async fn a_tenant_with_two_stores_routes_each_webhook_to_the_binding_whose_key_verifies() {
    let app = TestApp::spawn().await;
    let production = app.paired_store().await;
    // A staging store paired into the same tenant.
    let staging = ledger_sandbox::magento::RunningStore::spawn(Default::default())
        .await
        .unwrap();
    let code = staging.store.generate_pairing_code();
    let res = app
        .http
        .post(app.url("/v1/magento/connect"))
        .bearer_auth(&production.merchant.token)
        .json(&serde_json::json!({ "magento_base_url": staging.base_url, "pairing_code": code, "tenant_id": production.merchant.tenant_id }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 201);
    let staging_binding: String = res.json::<Value>().await.unwrap()["binding_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let token = module_token(&staging.store.api_key().unwrap(), &production.tenant());
    let res = post_event(
        &app,
        &production.tenant(),
        "customer.upserted",
        Some(&token),
        Some("customer.upserted:9"),
        &event_body(9),
    )
    .await;
    assert_eq!(res.status(), 202);
    let (binding,): (uuid::Uuid,) =
        sqlx::query_as("SELECT binding_id FROM received_events WHERE idempotency_key = 'customer.upserted:9'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(binding.to_string(), staging_binding);
    assert_eq!(
        send_valid(&app, &production, "customer.upserted", 9).await.status(),
        202,
        "same key, other binding: not a duplicate"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 2);
}

#[tokio::test]
async fn a_pending_key_is_confirmed_by_the_stores_first_signed_request() {
    // The pairing answer was lost (timeout) but the store did keep the key: its first
    // webhook proves it, and the binding goes live then.
    let app = TestApp::spawn().await;
    let merchant = app.merchant().await;
    let binding = ledger_core::BindingId::new();
    let api_key = "byte8_lk_pending_secret_for_test";
    let sealed = app.state.keyring.seal(
        api_key.as_bytes(),
        &format!("connector_bindings.pending_api_key:{binding}"),
    );
    sqlx::query(
        "INSERT INTO connector_bindings (id, tenant_id, magento_base_url, status, pending_api_key, pending_since)
         VALUES ($1, $2, 'http://store.example', 'pairing', $3, now())",
    )
    .bind(binding.0)
    .bind(merchant.tenant_id.0)
    .bind(sealed)
    .execute(&app.state.db)
    .await
    .unwrap();
    let list: Value = app
        .http
        .get(app.url("/v1/bindings"))
        .bearer_auth(&merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list.as_array().unwrap().len(), 0, "an unconfirmed pairing is not live");

    let tenant = merchant.tenant_id.to_string();
    let token = module_token(api_key, &tenant);
    let res = post_event(
        &app,
        &tenant,
        "invoice.created",
        Some(&token),
        Some("invoice.created:1"),
        &event_body(1),
    )
    .await;
    assert_eq!(res.status(), 202);
    let (status, has_key, pending): (String, bool, bool) = sqlx::query_as(
        "SELECT status, api_key IS NOT NULL, pending_api_key IS NOT NULL FROM connector_bindings WHERE id = $1",
    )
    .bind(binding.0)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!((status.as_str(), has_key, pending), ("paired", true, false));
}

#[tokio::test]
async fn the_api_key_is_stored_sealed_never_in_plain_text() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let key = paired.api_key();
    let (sealed, key_id): (Vec<u8>, String) =
        sqlx::query_as("SELECT api_key, api_key_key_id FROM connector_bindings WHERE id = $1")
            .bind(paired.binding_id.0)
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(key_id, "test1");
    assert!(!sealed.windows(key.len()).any(|w| w == key.as_bytes()));
    let dump: String = sqlx::query_scalar("SELECT string_agg(t::text, ' ') FROM connector_bindings t")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(!dump.contains(&key));
    let audit: String = sqlx::query_scalar("SELECT coalesce(string_agg(details::text, ' '), '') FROM audit_log")
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert!(!audit.contains(&key));
}

#[tokio::test]
async fn the_health_ping_records_a_store_that_stopped_accepting_our_key() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    use ledger_magento_callback::health::{PingOutcome, ping};
    let tenant = paired.merchant.tenant_id;
    assert_eq!(
        ping(&app.state, paired.binding_id, tenant, &paired.store.base_url, None).await,
        PingOutcome::Healthy
    );

    // The store is re-paired elsewhere: it now holds another key and answers 401.
    let code = paired.store.store.generate_pairing_code();
    let other = app.merchant().await;
    assert_eq!(app.connect(&other, &paired.store.base_url, &code).await.status(), 201);
    assert_eq!(
        ping(&app.state, paired.binding_id, tenant, &paired.store.base_url, None).await,
        PingOutcome::Unauthorized
    );
    let status: String = sqlx::query_scalar("SELECT magento_connection_status FROM connector_bindings WHERE id = $1")
        .bind(paired.binding_id.0)
        .fetch_one(&app.state.db)
        .await
        .unwrap();
    assert_eq!(status, "token_revoked");

    // An unreachable store changes nothing (it may be down for a moment).
    paired.store.stop().await;
    assert_eq!(
        ping(&app.state, paired.binding_id, tenant, "http://127.0.0.1:1", None).await,
        PingOutcome::Unreachable
    );
}

/// Sends every `(event, key, token, body)` at once; the answers in the same order.
/// `invoice.created` requests for `ids`, each with its own token.
fn invoice_requests(key: &str, tenant: &str, ids: impl Iterator<Item = i64>) -> Vec<(String, String, String, String)> {
    ids.map(|id| {
        (
            "invoice.created".to_owned(),
            format!("invoice.created:{id}"),
            module_token(key, tenant),
            event_body(id),
        )
    })
    .collect()
}

async fn all_at_once(
    app: &TestApp,
    tenant: &str,
    requests: Vec<(String, String, String, String)>,
) -> Vec<(u16, Value)> {
    let mut set = tokio::task::JoinSet::new();
    for (i, (event, key, token, body)) in requests.into_iter().enumerate() {
        let (http, url) = (
            app.http.clone(),
            app.url(&format!("/webhooks/magento/{tenant}/{event}")),
        );
        set.spawn(async move {
            let res = http
                .post(url)
                .header("content-type", "application/json")
                .header("idempotency-key", key)
                .bearer_auth(token)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            (i, status, res.json::<Value>().await.unwrap_or(Value::Null))
        });
    }
    let mut answers = Vec::new();
    while let Some(r) = set.join_next().await {
        answers.push(r.unwrap());
    }
    answers.sort_by_key(|(i, ..)| *i);
    answers.into_iter().map(|(_, s, v)| (s, v)).collect()
}

#[tokio::test]
async fn concurrent_webhooks_share_commits_and_each_is_stored_as_if_alone() {
    let app = TestApp::builder()
        .configure(|s| s.ingest_commit_window = std::time::Duration::from_millis(20))
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let (key, tenant) = (paired.api_key(), paired.tenant());
    let invoice = |id: i64| {
        (
            "invoice.created".to_owned(),
            format!("invoice.created:{id}"),
            module_token(&key, &tenant),
            event_body(id),
        )
    };
    let mut requests: Vec<_> = (1..=30).map(invoice).collect();
    // The same event twice (a retry racing its original), one token used twice, and
    // three updates of one customer.
    requests.push(invoice(99));
    requests.push(invoice(99));
    let reused = module_token(&key, &tenant);
    for id in [201, 202] {
        requests.push((
            "invoice.created".into(),
            format!("invoice.created:{id}"),
            reused.clone(),
            event_body(id),
        ));
    }
    for n in 0..3 {
        requests.push((
            "customer.upserted".into(),
            format!("customer.upserted:7:{n}"),
            module_token(&key, &tenant),
            event_body(7),
        ));
    }
    let answers = all_at_once(&app, &tenant, requests).await;

    let mut runs = std::collections::HashSet::new();
    for (status, body) in &answers[..30] {
        assert_eq!(*status, 202, "{body}");
        assert_eq!(body["duplicate"], false);
        assert!(
            runs.insert(body["sync_run_id"].as_str().unwrap().to_owned()),
            "a run each"
        );
    }
    let (a, b) = (&answers[30], &answers[31]);
    assert_eq!((a.0, b.0), (202, 202), "{a:?} {b:?}");
    assert_eq!(
        a.1["sync_run_id"], b.1["sync_run_id"],
        "the repeat answers with the original run"
    );
    assert_eq!(
        [&a.1["duplicate"], &b.1["duplicate"]]
            .iter()
            .filter(|d| ***d == true)
            .count(),
        1
    );
    let mut reuse: Vec<u16> = answers[32..34].iter().map(|(s, _)| *s).collect();
    reuse.sort_unstable();
    assert_eq!(reuse, [202, 401], "a token counts once: {:?}", &answers[32..34]);
    assert!(answers[32..34].iter().any(|(_, b)| b["code"] == "token_replayed"));
    assert!(answers[34..].iter().all(|(s, _)| *s == 202), "{:?}", &answers[34..]);
    // Every accepted event is held once, with one run and one job each (the customer's
    // updates fold into a waiting run or have their own).
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 35);
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sync_runs WHERE event_name = 'invoice.created'"
        )
        .await,
        32
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) + COALESCE(sum(coalesced), 0) FROM sync_runs WHERE event_name = 'customer.upserted'"
        )
        .await,
        3
    );
    assert_eq!(
        count(
            &app,
            "SELECT count(*) FROM sync_runs r WHERE NOT EXISTS (SELECT 1 FROM jobs j WHERE j.sync_run_id = r.id)"
        )
        .await,
        0
    );
    // ... in fewer commits than events.
    let commits = count(&app, "SELECT count(DISTINCT xmin::text) FROM received_events").await;
    assert!(commits <= 20, "35 events in {commits} commits");
}

/// The committers keep their connections while events keep coming, and give them back
/// to the pool once ingest is quiet: an idle API process holds none.
#[tokio::test]
async fn a_quiet_ingest_gives_its_connections_back_to_the_pool() {
    let app = TestApp::builder()
        .configure(|s| s.ingest_commit_window = std::time::Duration::from_millis(5))
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let (key, tenant) = (paired.api_key(), paired.tenant());
    // Three bursts one after another: each committer keeps its connection for the next group.
    for burst in 0..3 {
        let answers = all_at_once(
            &app,
            &tenant,
            invoice_requests(&key, &tenant, burst * 40 + 1..=burst * 40 + 40),
        )
        .await;
        assert!(answers.iter().all(|(s, _)| *s == 202), "{answers:?}");
    }
    // After the hold (100 ms) with nothing arriving, every connection is back.
    ledger_e2e::all_connections_back(&app.state.db, "the last event").await;
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 120);
}

#[tokio::test]
async fn a_group_counts_the_quota_as_one_by_one_and_one_bad_event_fails_alone() {
    let app = TestApp::builder()
        .configure(|s| {
            s.ingest_commit_window = std::time::Duration::from_millis(20);
            s.binding_ingest_per_minute = 8;
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let (key, tenant) = (paired.api_key(), paired.tenant());
    // One event the database refuses (as a constraint would).
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_13() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.idempotency_key = 'invoice.created:13' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_13 BEFORE INSERT ON received_events FOR EACH ROW EXECUTE FUNCTION refuse_13();",
    )
    .execute(&app.state.db)
    .await
    .unwrap();
    let requests = invoice_requests(&key, &tenant, 10..=15);
    let answers = all_at_once(&app, &tenant, requests).await;
    let statuses: Vec<u16> = answers.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, [202, 202, 202, 500, 202, 202], "{answers:?}");
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 5);

    // 6 hits counted so far (the refused event's too, as when alone); 2 left of 8,
    // taken in turn within the next group.
    let requests = invoice_requests(&key, &tenant, 20..25);
    let answers = all_at_once(&app, &tenant, requests).await;
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s == 503).collect();
    assert_eq!((accepted, refused.len()), (2, 3), "{answers:?}");
    assert!(refused.iter().all(|(_, b)| b["code"] == "ingest_quota_reached"));
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 7);
}

#[tokio::test]
async fn a_group_retried_one_by_one_still_refuses_what_was_over_its_quota() {
    let app = TestApp::builder()
        .configure(|s| {
            s.ingest_commit_window = std::time::Duration::from_millis(20);
            s.binding_ingest_per_minute = 3;
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let (key, tenant) = (paired.api_key(), paired.tenant());
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_31() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN IF NEW.idempotency_key = 'invoice.created:31' THEN RAISE EXCEPTION 'refused'; END IF; RETURN NEW; END $$;
         CREATE TRIGGER refuse_31 BEFORE INSERT ON received_events FOR EACH ROW EXECUTE FUNCTION refuse_31();",
    )
    .execute(&app.state.db)
    .await
    .unwrap();
    let requests = invoice_requests(&key, &tenant, 30..35);
    let answers = all_at_once(&app, &tenant, requests).await;
    let of = |status: u16| answers.iter().filter(|(s, _)| *s == status).count();
    // Three within the quota (the refused one among them, or not), two beyond it.
    assert_eq!(of(503), 2, "{answers:?}");
    assert_eq!(of(202) + of(500), 3, "{answers:?}");
    let stored = count(&app, "SELECT count(*) FROM received_events").await;
    assert_eq!(
        usize::try_from(stored).unwrap(),
        of(202),
        "only what was answered 202 is held"
    );
}

/// A webhook verified with a key this process cached is stored only if the binding still
/// holds that key and is not revoked — checked in the statement that stores it — so a
/// re-pairing or a disconnect made through another process counts at once.
#[tokio::test]
async fn a_cached_key_is_checked_again_by_the_statement_that_stores_the_event() {
    let app = TestApp::spawn().await;
    let paired = app.paired_store().await;
    let tenant = paired.tenant();
    let old_key = paired.api_key();
    assert_eq!(
        send_valid(&app, &paired, "invoice.created", 1).await.status(),
        202,
        "verified from a read; fills the cache"
    );
    assert_eq!(send_valid(&app, &paired, "invoice.created", 2).await.status(), 202);

    // Another process re-pairs the store: the binding now holds a new key.
    let new_key = "byte8_lk_rotated_by_another_process";
    let sealed = app.state.keyring.seal(
        new_key.as_bytes(),
        &ledger_tenant_binding::bindings::api_key_context(paired.binding_id),
    );
    sqlx::query("UPDATE connector_bindings SET api_key = $2 WHERE id = $1")
        .bind(paired.binding_id.0)
        .bind(&sealed)
        .execute(&app.state.db)
        .await
        .unwrap();
    let post = |key: &str, id: i64| {
        let token = module_token(key, &tenant);
        let (app, tenant) = (&app, tenant.clone());
        async move {
            let res = post_event(
                app,
                &tenant,
                "invoice.created",
                Some(&token),
                Some(&format!("invoice.created:{id}")),
                &event_body(id),
            )
            .await;
            let status = res.status().as_u16();
            let body: Value = res.json().await.unwrap_or_default();
            (status, body["code"].as_str().unwrap_or_default().to_owned())
        }
    };
    assert_eq!(
        post(&old_key, 3).await,
        (401, "token_signature_invalid".to_owned()),
        "the old key verifies against the cache, but the binding no longer holds it"
    );
    assert_eq!(post(new_key, 4).await.0, 202, "the new key is read and accepted");
    assert_eq!(post(new_key, 5).await.0, 202, "and then served from the cache");

    // Another process disconnects the store.
    sqlx::query("UPDATE connector_bindings SET status = 'revoked' WHERE id = $1")
        .bind(paired.binding_id.0)
        .execute(&app.state.db)
        .await
        .unwrap();
    assert_eq!(post(new_key, 6).await, (401, "binding_revoked".to_owned()));
    assert_eq!(post(new_key, 7).await, (401, "binding_revoked".to_owned()));

    let keys: Vec<(String,)> = sqlx::query_as("SELECT idempotency_key FROM received_events ORDER BY idempotency_key")
        .fetch_all(&app.state.db)
        .await
        .unwrap();
    let keys: Vec<&str> = keys.iter().map(|(k,)| k.as_str()).collect();
    assert_eq!(
        keys,
        [
            "invoice.created:1",
            "invoice.created:2",
            "invoice.created:4",
            "invoice.created:5"
        ]
    );
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 4);
}

/// A quiet binding's group counts its quota in the statement that stores it: the events
/// within it are stored, those beyond it are answered 503 and store nothing, and every
/// one is counted, as one by one.
#[tokio::test]
async fn a_quiet_bindings_group_counts_its_quota_where_it_is_stored() {
    let app = TestApp::builder()
        .configure(|s| {
            // Long enough that the requests below share one group.
            s.ingest_commit_window = std::time::Duration::from_millis(300);
            s.binding_ingest_per_minute = 3;
        })
        .spawn()
        .await;
    let paired = app.paired_store().await;
    let (key, tenant) = (paired.api_key(), paired.tenant());
    // One event first (its key is then cached), and a pause: the binding is quiet again.
    assert_eq!(send_valid(&app, &paired, "invoice.created", 39).await.status(), 202);
    tokio::time::sleep(std::time::Duration::from_millis(1_200)).await;
    let jti_before = count(&app, "SELECT count(*) FROM magento_jti").await;
    let requests = invoice_requests(&key, &tenant, 40..44);
    let answers = all_at_once(&app, &tenant, requests).await;
    let of = |status: u16| answers.iter().filter(|(s, _)| *s == status).count();
    assert_eq!((of(202), of(503)), (2, 2), "{answers:?}");
    assert!(
        answers
            .iter()
            .filter(|(s, _)| *s == 503)
            .all(|(_, b)| b["code"] == "ingest_quota_reached"),
        "{answers:?}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM received_events").await, 3);
    assert_eq!(count(&app, "SELECT count(*) FROM jobs").await, 3);
    assert_eq!(
        count(&app, "SELECT count(*) FROM magento_jti").await - jti_before,
        2,
        "a refused event's token is not consumed: its retry is a new request anyway"
    );
    assert_eq!(
        count(
            &app,
            "SELECT COALESCE(sum(hits), 0)::int8 FROM rate_counters WHERE bucket = 'ingest:binding'"
        )
        .await,
        5,
        "every event counted, the refused ones too"
    );
}

/// Every stored event wakes the workers once, whether its group notified in its own
/// transaction (alone in flight) or after its commit (beside another group): a burst
/// from two stores at once, heard by a listener of its own.
#[tokio::test]
async fn every_stored_event_wakes_the_workers_whichever_way_its_group_committed() {
    let app = TestApp::builder()
        .configure(|s| s.binding_ingest_per_minute = 1_000)
        .spawn()
        .await;
    let (first, second) = (app.paired_store().await, app.paired_store().await);
    let mut listener = sqlx::postgres::PgListener::connect_with(&app.state.db).await.unwrap();
    listener.listen(ledger_jobs::CHANNEL).await.unwrap();
    let burst = |paired: &ledger_test_support::PairedStore, from: i64| {
        let (key, tenant) = (paired.api_key(), paired.tenant());
        let requests = invoice_requests(&key, &tenant, from..from + 24);
        (tenant, requests)
    };
    let ((t1, r1), (t2, r2)) = (burst(&first, 100), burst(&second, 200));
    let (a1, a2) = tokio::join!(all_at_once(&app, &t1, r1), all_at_once(&app, &t2, r2));
    assert!(a1.iter().chain(&a2).all(|(s, _)| *s == 202), "{a1:?} {a2:?}");
    let jobs = count(&app, "SELECT count(*) FROM jobs WHERE kind = 'sync_event'").await;
    assert_eq!(jobs, 48);
    let mut heard = std::collections::HashSet::new();
    while heard.len() < 48 {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), listener.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of 48 wake-ups arrived", heard.len()))
            .unwrap();
        heard.insert(n.payload().to_owned());
    }
    let ids: std::collections::HashSet<String> =
        sqlx::query_scalar::<_, String>("SELECT binding_id::text || ':' || id FROM jobs WHERE kind = 'sync_event'")
            .fetch_all(&app.state.db)
            .await
            .unwrap()
            .into_iter()
            .collect();
    assert_eq!(heard, ids, "one wake-up per job, naming it");
}
