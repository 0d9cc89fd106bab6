//! The whole pipeline: store events → webhooks → workers → Sage sandbox → sync-state
//! callbacks → the store's chips.

use std::{collections::HashMap, time::Duration};

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use rust_decimal::Decimal;
use serde_json::Value;

async fn settings(app: &TestApp, paired: &PairedStore) -> Value {
    app.http
        .get(app.url(&format!("/v1/bindings/{}/settings", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn put_settings(app: &TestApp, paired: &PairedStore, body: &Value) -> reqwest::Response {
    app.http
        .put(app.url(&format!("/v1/bindings/{}/settings", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .json(body)
        .send()
        .await
        .unwrap()
}

fn dec(v: &Value) -> Decimal {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.to_string().parse().unwrap(),
    }
}

#[tokio::test]
async fn store_activity_lands_in_sage_once_and_chips_turn_synced() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].clone();
    // Map the store's payment methods to a bank account.
    let mut s = settings(&app, &paired).await;
    let bank = business.bank_accounts[0]["id"].as_str().unwrap().to_owned();
    s["payment_method_map"] = serde_json::json!({ "checkmo": bank, "banktransfer": bank, "stripe_payments": bank });
    let res = put_settings(&app, &paired, &s).await;
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());

    let workers = app.start_workers();
    let store = &paired.store.store;
    store.simulate(25);
    let report = store.drain_once().await;
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(app.wait_idle(Duration::from_secs(60)).await, "the queue drains");

    let runs = ledger_e2e::runs(&app).await;
    let failed: Vec<_> = runs
        .iter()
        .filter(|r| r.status != "synced" && r.status != "skipped_by_policy")
        .collect();
    assert!(failed.is_empty(), "every run synced or skipped: {failed:#?}");
    assert!(
        runs.iter()
            .filter(|r| r.event_name == "invoice.created")
            .all(|r| r.status == "synced")
    );

    // Sage's books: one document per Magento document, totals to the cent.
    let books = ledger_e2e::books(&app, &business.id).await;
    let invoices = books["sales_invoices"].as_array().cloned().unwrap_or_default();
    let catalogue = store.catalogue();
    assert_eq!(invoices.len(), catalogue.invoices.len());
    let mut references = std::collections::HashSet::new();
    for inv in &invoices {
        assert!(
            references.insert(inv["reference"].as_str().unwrap().to_owned()),
            "no duplicate document"
        );
        let magento = catalogue
            .invoices
            .iter()
            .find(|i| i.increment_id == inv["reference"].as_str().unwrap())
            .unwrap();
        assert_eq!(dec(&inv["total_amount"]), magento.grand_total(), "{}", inv["reference"]);
        assert!(
            !inv["sent"].as_bool().unwrap(),
            "the ledger never marked a document sent"
        );
    }
    let payments = books["contact_payments"].as_array().map_or(0, Vec::len);
    // A zero-total order is paid with nothing: no payment is posted for it.
    let paid = catalogue
        .invoices
        .iter()
        .filter(|i| i.state == ledger_sandbox::magento::catalogue::InvoiceState::Paid && !i.grand_total().is_zero())
        .count();
    assert_eq!(payments, paid);
    let notes = books["sales_credit_notes"].as_array().map_or(0, Vec::len);
    assert_eq!(notes, catalogue.credit_memos.len());

    // The store's chips.
    let mirror: HashMap<(String, i64), _> = store
        .mirror()
        .into_iter()
        .map(|r| ((r.entity_type.clone(), r.magento_entity_id), r))
        .collect();
    for inv in &catalogue.invoices {
        let row = &mirror[&("invoice".to_owned(), inv.id)];
        assert_eq!(row.sync_status, "synced", "invoice {}", inv.id);
        assert!(row.provider_reference.as_deref().is_some_and(|r| r.starts_with("SI-")));
        assert!(
            row.last_sync_at
                .as_deref()
                .is_some_and(|t| t.len() == 19 && !t.contains('T')),
            "MySQL TIMESTAMP text"
        );
    }
    for memo in &catalogue.credit_memos {
        assert_eq!(mirror[&("creditmemo".to_owned(), memo.id)].sync_status, "synced");
    }

    // Re-publishing an invoice (new occurred_at) changes nothing in Sage.
    let first = &catalogue.invoices[0];
    let before = invoices.len();
    let token = ledger_e2e::module_token(&paired.api_key(), &paired.tenant());
    let body = format!(
        r#"{{"magento_entity_id":{},"website_id":1,"store_id":1,"occurred_at":"2026-12-01T00:00:00Z","payload":{{}}}}"#,
        first.id
    );
    let res = ledger_e2e::post_event(
        &app,
        &paired.tenant(),
        "invoice.created",
        Some(&token),
        Some(&format!("invoice.created:{}", first.id)),
        &body,
    )
    .await;
    assert_eq!(res.status(), 202);
    assert_eq!(
        res.json::<Value>().await.unwrap()["duplicate"],
        false,
        "a republish is a new event"
    );
    assert!(app.wait_idle(Duration::from_secs(20)).await);
    let books = ledger_e2e::books(&app, &business.id).await;
    assert_eq!(books["sales_invoices"].as_array().unwrap().len(), before);
    workers.stop().await;
}
