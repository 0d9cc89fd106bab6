//! What real stores do, through the whole pipeline (sandbox store → webhooks → workers →
//! Sage sandbox): invoices cancelled before and after posting, zero-total orders, an
//! invoice dated by the business's calendar and paid days later, a refund made from the
//! order, a business without multi-currency, and a EUR website on a GBP business.

use std::time::Duration;

use ledger_sandbox::{
    magento::{
        StoreConfig,
        catalogue::{Address, Buyer, OrderSpec, StoreProfile},
        totals::Rule,
    },
    sage::SageConfig,
};
use ledger_test_support::{PairedStore, TestApp};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn london() -> Address {
    Address {
        id: 0,
        street: vec!["12 High Street".into()],
        city: "London".into(),
        region: None,
        postcode: Some("SW1A 1AA".into()),
        country_id: "GB".into(),
        telephone: None,
        company: None,
    }
}

fn spec(n: i64, method: &str, at: &str) -> OrderSpec {
    OrderSpec {
        buyer: Buyer::Guest {
            email: format!("buyer{n}@example.net"),
            first_name: "Sam".into(),
            last_name: format!("Buyer {n}"),
        },
        billing: london(),
        shipping: Some(london()),
        currency: None,
        items: vec![(5, d("1")), (1, d("2"))],
        rule: None,
        shipping_price: d("4.99"),
        payment_method: method.into(),
        po_number: None,
        created_at: at.into(),
    }
}

/// A store of `profile` paired with the ledger, Sage connected, payment methods mapped.
async fn store(app: &TestApp, profile: StoreProfile) -> PairedStore {
    let paired = app
        .paired_store_with(StoreConfig {
            drain_interval: Duration::from_secs(3600),
            backoff_divisor: 1000,
            profile,
            ..StoreConfig::default()
        })
        .await;
    let res = app.connect_sage(&paired).await;
    assert_eq!(res.status(), 303, "Sage connect");
    let business = app.sage().businesses()[0].clone();
    let bank = business.bank_accounts[0]["id"].as_str().unwrap().to_owned();
    update_settings(app, &paired, |s| {
        s["payment_method_map"] = json!({ "checkmo": bank, "banktransfer": bank, "stripe_payments": bank });
    })
    .await;
    paired
}

async fn update_settings(app: &TestApp, paired: &PairedStore, change: impl FnOnce(&mut Value)) {
    let url = app.url(&format!("/v1/bindings/{}/settings", paired.binding_id));
    let mut s: Value = app
        .http
        .get(&url)
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    change(&mut s);
    let res = app
        .http
        .put(&url)
        .bearer_auth(&paired.merchant.token)
        .json(&s)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "{}", res.text().await.unwrap());
}

/// Places `spec`, invoices it (paid or not) and queues the module's events for it.
fn invoice(paired: &PairedStore, spec: OrderSpec, paid: bool) -> i64 {
    let store = &paired.store.store;
    let at = spec.created_at.clone();
    let (invoice, increment) = store.with_catalogue(|cat| {
        let order = cat.place(spec);
        let id = cat.invoice_order(order, false, paid).unwrap();
        (id, cat.invoice(id).unwrap().increment_id.clone())
    });
    store.enqueue_at(
        "invoice.created",
        invoice,
        1,
        1,
        json!({ "increment_id": increment, "paid": paid }),
        &at,
    );
    if paid {
        store.enqueue_at("invoice.paid", invoice, 1, 1, json!({ "increment_id": increment }), &at);
    }
    invoice
}

async fn deliver(app: &TestApp, paired: &PairedStore) {
    let report = paired.store.store.drain_once().await;
    assert_eq!(report.dead_lettered, 0, "{report:?}");
    assert!(app.wait_idle(Duration::from_secs(30)).await, "the queue drains");
}

fn run_of<'a>(runs: &'a [ledger_e2e::Run], event: &str, id: i64) -> &'a ledger_e2e::Run {
    runs.iter()
        .rev()
        .find(|r| r.event_name == event && r.magento_entity_id == id)
        .unwrap_or_else(|| panic!("a run of {event} {id}: {runs:#?}"))
}

fn by_reference<'a>(docs: &'a Value, reference: &str) -> Option<&'a Value> {
    docs.as_array()?
        .iter()
        .find(|d| d["reference"].as_str() == Some(reference))
}

#[tokio::test]
async fn cancellations_zero_totals_dates_and_refunds_from_the_order() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = store(&app, StoreProfile::uk_b2c()).await;
    let business = app.sage().businesses()[0].id.clone();
    let store = &paired.store.store;
    let workers = app.start_workers();

    // Cancelled before it reached Sage: skipped, nothing posted.
    let cancelled = {
        let id = store.with_catalogue(|cat| {
            let order = cat.place(spec(1, "stripe_payments", "2026-10-01T10:00:00Z"));
            let id = cat.invoice_order(order, false, false).unwrap();
            cat.cancel(id);
            id
        });
        store.enqueue(
            "invoice.created",
            id,
            1,
            1,
            json!({ "increment_id": "x", "paid": false }),
        );
        id
    };
    // Posted, then cancelled and republished from the CLI: voided in Sage.
    let voided = invoice(&paired, spec(2, "stripe_payments", "2026-10-01T11:00:00Z"), false);
    // A 100 % coupon (shipping included): a zero invoice, and no 0.00 payment.
    let free = invoice(
        &paired,
        OrderSpec {
            rule: Some(Rule {
                percent: d("100"),
                apply_to_shipping: true,
                free_shipping: true,
            }),
            ..spec(3, "stripe_payments", "2026-10-01T12:00:00Z")
        },
        true,
    );
    // Invoiced at 23:30Z on 30 June (1 July in London), paid on 2 July.
    let late = invoice(&paired, spec(4, "banktransfer", "2026-06-30T23:30:00Z"), false);
    // Paid by cheque, refunded from the order: the memo names no invoice.
    let offline = invoice(&paired, spec(5, "checkmo", "2026-10-02T09:00:00Z"), true);
    deliver(&app, &paired).await;

    store.with_catalogue(|cat| cat.cancel(voided));
    assert_eq!(store.republish_invoice(voided).await, Some(202));
    let increment = store.with_catalogue(|cat| {
        assert!(cat.pay(late, "2026-07-02T09:00:00Z"));
        cat.invoice(late).unwrap().increment_id.clone()
    });
    store.enqueue_at(
        "invoice.paid",
        late,
        1,
        1,
        json!({ "increment_id": increment }),
        "2026-07-02T09:00:00Z",
    );
    let memo = store.refund(offline, true).expect("a partial refund");
    assert!(
        store.catalogue().credit_memo(memo).unwrap().invoice_id.is_none(),
        "an offline refund names no invoice"
    );
    deliver(&app, &paired).await;
    workers.stop().await;

    let runs = ledger_e2e::runs(&app).await;
    let books = ledger_e2e::books(&app, &business).await;
    let cat = store.catalogue();
    let reference = |id: i64| cat.invoice(id).unwrap().increment_id.clone();

    let skipped = run_of(&runs, "invoice.created", cancelled);
    assert_eq!(skipped.status, "skipped_by_policy", "{skipped:?}");
    assert!(by_reference(&books["sales_invoices"], &reference(cancelled)).is_none());

    let void = by_reference(&books["sales_invoices"], &reference(voided)).expect("posted before");
    assert_eq!(void["status"]["id"], "VOID", "{void:#}");
    let republished = run_of(&runs, "invoice.created", voided);
    assert_eq!(republished.status, "synced");
    assert!(
        republished.message.as_deref().is_some_and(|m| m.contains("voided")),
        "{republished:?}"
    );

    let zero = by_reference(&books["sales_invoices"], &reference(free)).expect("a zero invoice");
    assert_eq!(zero["total_amount"], "0.00");
    let payment = run_of(&runs, "invoice.paid", free);
    assert_eq!(payment.status, "skipped_by_policy", "{payment:?}");
    assert!(
        books["contact_payments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["reference"].as_str() != Some(reference(free).as_str())),
        "no 0.00 payment"
    );

    let dated = by_reference(&books["sales_invoices"], &reference(late)).unwrap();
    assert_eq!(dated["date"], "2026-07-01", "the business's calendar");
    let paid = by_reference(&books["contact_payments"], &reference(late)).expect("the payment");
    assert_eq!(paid["date"], "2026-07-02", "when the money arrived");

    let credit = books["sales_credit_notes"].as_array().unwrap();
    assert_eq!(credit.len(), 1);
    let refunded = run_of(&runs, "creditmemo.created", memo);
    assert_eq!(refunded.status, "synced", "{refunded:?}");
    assert!(
        refunded
            .message
            .as_deref()
            .is_some_and(|m| m.contains(&format!("matched to invoice {offline}"))),
        "{refunded:?}"
    );
    let original = by_reference(&books["sales_invoices"], &reference(offline)).unwrap();
    assert_eq!(
        credit[0]["contact"]["id"], original["contact"]["id"],
        "on the invoice's contact"
    );
    // The invoice was paid in full, so nothing is left on it to allocate against; the
    // credit note remembers its invoice.
    let linked: Option<i64> = sqlx::query_scalar(
        "SELECT (extra->>'invoice_id')::bigint FROM entity_xref WHERE entity_type = 'creditmemo' AND magento_entity_id = $1",
    )
    .bind(memo)
    .fetch_one(&app.state.db)
    .await
    .unwrap();
    assert_eq!(linked, Some(offline));
    assert!(
        runs.iter()
            .all(|r| r.status == "synced" || r.status == "skipped_by_policy"),
        "{runs:#?}"
    );
}

#[tokio::test]
async fn currencies_follow_the_business() {
    // A GBP business without multi-currency refuses a EUR order with a code that says so.
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = store(&app, StoreProfile::uk()).await;
    let business = app.sage().businesses()[0].id.clone();
    app.sage().with_business_mut(&business, |b| b.multi_currency = false);
    let res = app
        .http
        .post(app.url(&format!("/v1/bindings/{}/sage/reference/refresh", paired.binding_id)))
        .bearer_auth(&paired.merchant.token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let workers = app.start_workers();
    let euro = invoice(
        &paired,
        OrderSpec {
            currency: Some("EUR".into()),
            ..spec(6, "stripe_payments", "2026-10-03T09:00:00Z")
        },
        false,
    );
    let pounds = invoice(&paired, spec(7, "stripe_payments", "2026-10-03T10:00:00Z"), false);
    deliver(&app, &paired).await;
    let runs = ledger_e2e::runs(&app).await;
    let refused = run_of(&runs, "invoice.created", euro);
    assert_eq!(refused.status, "failed", "{refused:?}");
    assert_eq!(refused.error_code.as_deref(), Some("multi_currency_disabled"));
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("EUR") && m.contains("GBP")),
        "{refused:?}"
    );
    assert_eq!(run_of(&runs, "invoice.created", pounds).status, "synced");
    workers.stop().await;

    // A EUR website (Magento's base EUR, rate 1) on a GBP business: Sage's own rate, never 1.0.
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = store(&app, StoreProfile::eur_website()).await;
    update_settings(&app, &paired, |s| s["website_base_currencies"] = json!({ "1": "EUR" })).await;
    let business = app.sage().businesses()[0].id.clone();
    let workers = app.start_workers();
    let id = invoice(&paired, spec(8, "stripe_payments", "2026-10-04T09:00:00Z"), true);
    deliver(&app, &paired).await;
    workers.stop().await;
    let runs = ledger_e2e::runs(&app).await;
    let synced = run_of(&runs, "invoice.created", id);
    assert_eq!(synced.status, "synced", "{synced:?}");
    assert!(
        synced.message.as_deref().is_some_and(|m| m.contains("own EUR rate")),
        "{synced:?}"
    );
    let books = ledger_e2e::books(&app, &business).await;
    let reference = paired.store.store.catalogue().invoice(id).unwrap().increment_id.clone();
    let booked = by_reference(&books["sales_invoices"], &reference).unwrap();
    assert_eq!(booked["currency"]["id"], "EUR");
    assert_eq!(booked["exchange_rate"], "0.854701", "the business's own rate, not 1.0");
    let payment = by_reference(&books["contact_payments"], &reference).expect("paid");
    assert_eq!(payment["exchange_rate"], "0.854701");
}
