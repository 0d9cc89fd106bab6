//! Sync settings over the API: zero-configuration defaults from the Sage reference
//! cache, validation on save (every field error at once, nothing saved), canonical map
//! keys, the audit trail, and the snapshot taken when an event arrives.

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use serde_json::{Value, json};

async fn get(app: &TestApp, paired: &PairedStore) -> Value {
    let res = app
        .http
        .get(app.url(&format!("/v1/bindings/{}/settings", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    res.json().await.unwrap()
}

async fn put(app: &TestApp, paired: &PairedStore, body: &Value) -> (u16, Value) {
    let res = app
        .http
        .put(app.url(&format!("/v1/bindings/{}/settings", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .json(body)
        .send()
        .await
        .unwrap();
    (res.status().as_u16(), res.json().await.unwrap())
}

#[tokio::test]
async fn defaults_need_no_configuration_and_bad_saves_change_nothing() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].clone();

    // Defaults chosen from the reference cache: the 4000 sales account, rates by
    // percentage (the zero rate, not exempt, for 0.00), no bank account.
    let defaults = get(&app, &paired).await;
    let sales_4000 = business
        .ledger_accounts
        .iter()
        .find(|a| a["nominal_code"] == 4000)
        .unwrap()["id"]
        .clone();
    assert_eq!(defaults["default_ledger_account_id"], sales_4000);
    assert_eq!(
        defaults["tax_rate_map"],
        json!({ "0.00": "GB_ZERO", "5.00": "GB_LOWER", "20.00": "GB_STANDARD" })
    );
    assert_eq!(defaults["default_tax_rate_id"], "GB_STANDARD");
    assert_eq!(defaults["default_bank_account_id"], Value::Null);
    assert_eq!(defaults["payment_method_map"], json!({}));

    // Several mistakes at once: each named with its code; nothing saved.
    let mut bad = defaults.clone();
    bad["default_ledger_account_id"] = json!("not-an-account");
    bad["tax_rate_map"] = json!({ "twenty": "GB_STANDARD", "17.5": "GB_OLD" });
    bad["payment_method_map"] = json!({ "checkmo": "no-such-bank" });
    bad["invoice_number_prefix"] = json!("MAGENTO INV");
    bad["sync_stock"] = json!(true);
    let (status, problem) = put(&app, &paired, &bad).await;
    assert_eq!(status, 422, "{problem}");
    let errors: Vec<(String, String)> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["field"].as_str().unwrap().to_owned(),
                e["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for expected in [
        ("default_ledger_account_id", "not_in_reference"),
        ("tax_rate_map.twenty", "invalid_format"),
        ("tax_rate_map.17.50", "not_in_reference"),
        ("payment_method_map.checkmo", "not_in_reference"),
        ("invoice_number_prefix", "invalid_format"),
        ("sync_stock", "invalid"),
    ] {
        assert!(
            errors.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} missing from {errors:?}"
        );
    }
    let detail = problem["errors"][0]["message"].as_str().unwrap();
    assert!(!detail.is_empty());
    assert_eq!(get(&app, &paired).await, defaults, "nothing was saved");

    // Fixed: keys are canonicalised, the change is audited with before and after.
    let bank = business.bank_accounts[0]["id"].clone();
    let mut good = defaults.clone();
    good["tax_rate_map"] = json!({ " 20 ": "GB_STANDARD", "5": "GB_LOWER", "0": "GB_ZERO" });
    good["payment_method_map"] = json!({ "checkmo": bank, "free": null });
    good["invoice_number_prefix"] = json!("MG-");
    let (status, saved) = put(&app, &paired, &good).await;
    assert_eq!(status, 200, "{saved}");
    assert_eq!(
        saved["tax_rate_map"],
        json!({ "0.00": "GB_ZERO", "5.00": "GB_LOWER", "20.00": "GB_STANDARD" })
    );
    assert_eq!(get(&app, &paired).await, saved);
    let (actor, details): (String, Value) = sqlx::query_as(
        "SELECT actor, details FROM audit_log WHERE action = 'settings.updated' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert!(actor.starts_with("account:"), "{actor}");
    assert_eq!(details["before"]["invoice_number_prefix"], Value::Null);
    assert_eq!(details["after"]["invoice_number_prefix"], "MG-");

    // Another merchant cannot read or write them.
    let stranger = app.merchant().await;
    let res = app
        .http
        .put(app.url(&format!("/v1/bindings/{}/settings", paired.binding_id)))
        .bearer_auth(&stranger.token)
        .json(&good)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404);
}

/// An operator's pause holds until they resume it: the daily reference refresh (which
/// ends a lapsed subscription's pause) leaves it alone, and resuming releases the work.
#[tokio::test]
async fn an_operator_pause_survives_a_reference_refresh() {
    use ledger_core::audit::Actor;
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let status = |app: &TestApp| {
        let db = app.state.db.clone();
        let id = paired.binding_id;
        async move {
            sqlx::query_scalar::<_, String>("SELECT status FROM connector_bindings WHERE id = $1")
                .bind(id.0)
                .fetch_one(&db)
                .await
                .unwrap()
        }
    };
    assert!(
        ledger_sage_sync::runs::pause_binding(&app.state, paired.binding_id, Actor::System)
            .await
            .unwrap()
    );
    ledger_sage_vault::reference::refresh(&app.state, paired.binding_id)
        .await
        .unwrap();
    assert_eq!(status(&app).await, "paused");
    assert!(
        ledger_sage_sync::runs::resume_binding(&app.state, paired.binding_id, Actor::System)
            .await
            .unwrap()
    );
    assert_eq!(status(&app).await, "active");
}
