//! What a merchant's everyday actions mean (issue 13): Retry uses today's settings, a
//! document that does not match Magento is never "Synced", contacts never merge, a new
//! Sage business starts fresh, a lapse heals and a failed payment shows on its invoice.

use std::time::Duration;

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::{PairedStore, TestApp};
use serde_json::Value;

async fn api(
    app: &TestApp,
    paired: &PairedStore,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = app
        .http
        .request(method, app.url(path))
        .bearer_auth(&paired.merchant.token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let res = request.send().await.expect("request");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn run_of(app: &TestApp, event: &str, id: i64) -> ledger_e2e::Run {
    ledger_e2e::runs(app)
        .await
        .into_iter()
        .rev()
        .find(|r| r.event_name == event && r.magento_entity_id == id)
        .unwrap_or_else(|| panic!("a run for {event} {id}"))
}

async fn settled(app: &TestApp, event: &str, id: i64) -> ledger_e2e::Run {
    ledger_e2e::wait_for(
        &format!("{event} {id} to finish"),
        Duration::from_secs(30),
        async || {
            ledger_e2e::runs(app)
                .await
                .iter()
                .rev()
                .find(|r| r.event_name == event && r.magento_entity_id == id)
                .is_some_and(|r| !matches!(r.status.as_str(), "pending" | "running"))
        },
    )
    .await;
    run_of(app, event, id).await
}

fn bank_of(app: &TestApp) -> String {
    app.sage().businesses()[0].bank_accounts[0]["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_mapping_the_payment_method_posts_the_payment() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    let binding = paired.binding_id;
    // Two paid orders by bank transfer; the method is mapped to nothing yet.
    let (_, first) = store.place_order_by("banktransfer", true);
    let (_, second) = store.place_order_by("banktransfer", true);
    store.drain_once().await;
    for invoice in [first, second] {
        assert_eq!(settled(&app, "invoice.created", invoice).await.status, "synced");
        let payment = settled(&app, "invoice.paid", invoice).await;
        assert_eq!(payment.status, "skipped_by_policy");
    }
    let (_, fixable) = api(
        &app,
        &paired,
        reqwest::Method::GET,
        &format!("/v1/bindings/{binding}/runs/fixable"),
        None,
    )
    .await;
    assert_eq!(fixable["runs_by_code"]["payment_method_not_mapped"], 2, "{fixable}");

    // The merchant maps the method, then presses Retry on the first payment.
    let url = format!("/v1/bindings/{binding}/settings");
    let (_, mut settings) = api(&app, &paired, reqwest::Method::GET, &url, None).await;
    settings["payment_method_map"]["banktransfer"] = Value::String(bank_of(&app));
    let (status, _) = api(&app, &paired, reqwest::Method::PUT, &url, Some(settings)).await;
    assert_eq!(status, 200);
    let run = run_of(&app, "invoice.paid", first).await;
    let (status, _) = api(
        &app,
        &paired,
        reqwest::Method::POST,
        &format!("/v1/runs/{}/retry", run.id),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let retried = settled(&app, "invoice.paid", first).await;
    assert_eq!(retried.status, "synced", "{:?}", retried.message);
    // The history keeps the settings each attempt ran with.
    let (_, detail) = api(
        &app,
        &paired,
        reqwest::Method::GET,
        &format!("/v1/runs/{}", run.id),
        None,
    )
    .await;
    let attempts = detail["attempts_detail"].as_array().unwrap();
    assert_eq!(attempts.len(), 2);
    assert!(
        attempts[0]["policy"]["payment_method_map"]
            .get("banktransfer")
            .is_none()
    );
    assert_eq!(
        attempts[1]["policy"]["payment_method_map"]["banktransfer"],
        bank_of(&app)
    );

    // "Retry all the change can fix" takes the other one.
    let (status, retried) = api(
        &app,
        &paired,
        reqwest::Method::POST,
        &format!("/v1/bindings/{binding}/runs/retry-fixable"),
        Some(serde_json::json!({ "codes": ["payment_method_not_mapped"] })),
    )
    .await;
    assert_eq!((status, retried["retried"].as_u64()), (200, Some(1)));
    assert_eq!(settled(&app, "invoice.paid", second).await.status, "synced");
    let business = app.sage().businesses()[0].id.clone();
    let books = ledger_e2e::books(&app, &business).await;
    assert_eq!(books["contact_payments"].as_array().unwrap().len(), 2);
    workers.stop().await;
}

/// The module's CLI republish (a new `occurred_at`, so a new event: the store's clock
/// moves on a second first).
async fn republish(store: &ledger_sandbox::magento::Store, invoice: i64) {
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(store.republish_invoice(invoice).await, Some(202));
}

fn two_businesses() -> SageConfig {
    SageConfig {
        businesses: vec![
            ("Acme UK Ltd".into(), "GB".into()),
            ("Acme Retail Ltd".into(), "GB".into()),
        ],
        ..SageConfig::default()
    }
}

fn business_id(app: &TestApp, name: &str) -> String {
    app.sage().businesses().into_iter().find(|b| b.name == name).unwrap().id
}

fn count_of(books: &Value, kind: &str) -> usize {
    books[kind].as_array().map_or(0, Vec::len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_sage_business_starts_fresh_and_the_same_one_never_duplicates() {
    let app = TestApp::builder().sage(two_businesses()).spawn().await;
    let paired = app.paired_store().await;
    app.connect_to_business(&paired, "Acme UK Ltd").await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    let (_, invoice) = store.place_order(false);
    store.drain_once().await;
    assert_eq!(settled(&app, "invoice.created", invoice).await.status, "synced");
    let (uk, retail) = (business_id(&app, "Acme UK Ltd"), business_id(&app, "Acme Retail Ltd"));
    assert_eq!(count_of(&ledger_e2e::books(&app, &uk).await, "sales_invoices"), 1);

    // "Connect a different business": the settings' Sage ids are the new business's.
    app.connect_to_business(&paired, "Acme Retail Ltd").await;
    let (_, settings) = api(
        &app,
        &paired,
        reqwest::Method::GET,
        &format!("/v1/bindings/{}/settings", paired.binding_id),
        None,
    )
    .await;
    assert_eq!(settings["sage_business_id"], retail);
    let retail_accounts: Vec<String> = app
        .sage()
        .businesses()
        .into_iter()
        .find(|b| b.id == retail)
        .unwrap()
        .ledger_accounts
        .iter()
        .map(|a| a["id"].as_str().unwrap().to_owned())
        .collect();
    assert!(
        retail_accounts.contains(&settings["default_ledger_account_id"].as_str().unwrap().to_owned()),
        "{settings}"
    );
    // The same invoice, published again, is booked in the new business with its own contact.
    republish(store, invoice).await;
    let run = settled(&app, "invoice.created", invoice).await;
    assert_eq!(run.status, "synced", "{:?}", run.message);
    assert_ne!(run.message.as_deref(), Some("Already in Sage; nothing posted again."));
    let books = ledger_e2e::books(&app, &retail).await;
    let all = ledger_e2e::runs(&app).await;
    let uk_books = ledger_e2e::books(&app, &uk).await;
    assert_eq!(
        (count_of(&books, "sales_invoices"), count_of(&books, "contacts")),
        (1, 1),
        "{books} {all:#?} {}",
        count_of(&uk_books, "sales_invoices")
    );
    assert_eq!(count_of(&ledger_e2e::books(&app, &uk).await, "sales_invoices"), 1);

    // Back to the first business: everything is found again, nothing is duplicated.
    app.connect_to_business(&paired, "Acme UK Ltd").await;
    republish(store, invoice).await;
    let run = settled(&app, "invoice.created", invoice).await;
    let all = ledger_e2e::runs(&app).await;
    let books = ledger_e2e::books(&app, &uk).await;
    assert_eq!(
        run.message.as_deref(),
        Some("Already in Sage; nothing posted again."),
        "{all:#?} {books}"
    );
    assert_eq!(count_of(&ledger_e2e::books(&app, &uk).await, "sales_invoices"), 1);
    workers.stop().await;
}

fn chip(paired: &PairedStore, entity: &str, id: i64) -> Option<(String, Option<String>)> {
    paired
        .store
        .store
        .mirror()
        .into_iter()
        .find(|r| r.entity_type == entity && r.magento_entity_id == id)
        .map(|r| (r.sync_status, r.error_code))
}

fn skew_next(app: &TestApp, n: u32) {
    app.sage().set_faults(ledger_sandbox::sage::SageFaults {
        skew_totals: n,
        ..Default::default()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_document_sage_books_differently_stays_failed_until_reposted_or_accepted() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    let business = app.sage().businesses()[0].id.clone();

    // Sage books the invoice a cent off: the run fails, naming both totals and the Sage id.
    skew_next(&app, 1);
    let (_, invoice) = store.place_order(false);
    store.drain_once().await;
    let run = settled(&app, "invoice.created", invoice).await;
    assert_eq!(
        (run.status.as_str(), run.error_code.as_deref()),
        ("failed", Some("total_mismatch"))
    );
    let message = run.message.clone().unwrap();
    let books = ledger_e2e::books(&app, &business).await;
    let first = books["sales_invoices"][0]["id"].as_str().unwrap().to_owned();
    assert!(
        message.contains(&first) && message.contains("difference 0.01"),
        "{message}"
    );
    ledger_e2e::wait_for("the chip", Duration::from_secs(10), async || {
        paired.store.store.drain_once().await;
        chip(&paired, "invoice", invoice).is_some_and(|(s, _)| s == "failed")
    })
    .await;

    // A plain retry does not turn it green.
    let (status, _) = api(
        &app,
        &paired,
        reqwest::Method::POST,
        &format!("/v1/runs/{}/retry", run.id),
        None,
    )
    .await;
    assert_eq!(status, 202);
    let again = settled(&app, "invoice.created", invoice).await;
    assert_eq!(
        again.error_code.as_deref(),
        Some("total_mismatch"),
        "{:?}",
        again.message
    );

    // Void and post again: the first is void in Sage, the second matches Magento.
    let resolve = |action: &'static str, run: uuid::Uuid| {
        let app = &app;
        let paired = &paired;
        async move {
            api(
                app,
                paired,
                reqwest::Method::POST,
                &format!("/v1/runs/{run}/resolve"),
                Some(serde_json::json!({ "action": action })),
            )
            .await
        }
    };
    assert_eq!(resolve("repost", run.id).await.0, 202);
    let reposted = settled(&app, "invoice.created", invoice).await;
    assert_eq!(reposted.status, "synced", "{:?}", reposted.message);
    let books = ledger_e2e::books(&app, &business).await;
    let invoices = books["sales_invoices"].as_array().unwrap();
    assert_eq!(invoices.len(), 2);
    assert_eq!(invoices[0]["status"]["id"], "VOID");
    assert_ne!(invoices[1]["status"]["id"], "VOID");
    assert_eq!(resolve("repost", run.id).await.0, 409, "nothing left to resolve");

    // Accepting keeps Sage's document, audited, and says so.
    skew_next(&app, 1);
    let (_, second) = store.place_order(false);
    store.drain_once().await;
    let run = settled(&app, "invoice.created", second).await;
    assert_eq!(run.error_code.as_deref(), Some("total_mismatch"));
    assert_eq!(resolve("accept", run.id).await.0, 202);
    let accepted = settled(&app, "invoice.created", second).await;
    assert_eq!(accepted.status, "synced");
    assert!(accepted.message.unwrap().contains("accepted by account:"));
    assert_eq!(
        ledger_e2e::count(
            &app,
            "SELECT count(*) FROM audit_log WHERE action = 'run.mismatch_accepted'"
        )
        .await,
        1
    );
    assert_eq!(
        ledger_e2e::books(&app, &business).await["sales_invoices"]
            .as_array()
            .unwrap()
            .len(),
        3
    );

    // The same for a credit note: held, then voided and posted again.
    skew_next(&app, 1);
    let memo = store.refund(second, false).unwrap();
    store.drain_once().await;
    let run = settled(&app, "creditmemo.created", memo).await;
    assert_eq!(run.error_code.as_deref(), Some("total_mismatch"), "{:?}", run.message);
    assert_eq!(resolve("repost", run.id).await.0, 202);
    assert_eq!(settled(&app, "creditmemo.created", memo).await.status, "synced");
    let books = ledger_e2e::books(&app, &business).await;
    let notes = books["sales_credit_notes"].as_array().unwrap();
    assert_eq!(notes.len(), 2);
    assert_eq!(notes[0]["status"]["id"], "VOID");
    assert_eq!(
        notes[1]["sent"], false,
        "reading a credit note back never marks it sent"
    );
    workers.stop().await;
}

/// Puts a contact straight into the sandbox business (one the ledger never made).
fn plant_contact(app: &TestApp, business: &str, reference: &str, email: &str, currency: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let contact = serde_json::json!({
        "id": id, "displayed_as": format!("Someone else ({reference})"), "name": "Someone else",
        "reference": reference, "contact_types": ["CUSTOMER"], "currency": { "id": currency },
        "email": email, "main_contact_person": { "name": "Someone else", "email": email },
        "balance": "0.00", "deleted_at": null,
    });
    app.sage()
        .with_business_mut(business, |b| b.book_mut("contacts").push(contact))
        .unwrap();
    id
}

/// The order behind `invoice`: its customer id (None for a guest) and email.
fn buyer_of(paired: &PairedStore, invoice: i64) -> (Option<i64>, String) {
    let cat = paired.store.store.catalogue();
    let inv = cat.invoices.iter().find(|i| i.id == invoice).unwrap();
    let order = cat.orders.iter().find(|o| o.id == inv.order_id).unwrap();
    (order.customer_id, order.email.clone())
}

fn guest_reference(email: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, email.trim().to_lowercase().as_bytes());
    let hex: String = d.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("G{}", &hex[..9])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_customers_look_up_is_answered_by_the_contact_index_which_sees_contacts_made_by_hand() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    let _workers = app.start_workers();
    let store = &paired.store.store;
    // The first new customer loads the business's contact index (one list of its contacts).
    let (_, first) = store.place_order(false);
    store.drain_once().await;
    let run = settled(&app, "invoice.created", first).await;
    assert_eq!(run.status, "synced", "{:?}", run.message);
    assert_eq!(
        ledger_e2e::sage_calls(&app, run.id).await,
        ["GET /contacts", "POST /contacts", "POST /sales_invoices"]
    );
    let (_, first_email) = buyer_of(&paired, first);
    // An order by someone else, whom the merchant has just keyed into Sage by hand (in
    // both currencies the store sells in).
    let next_new = |seen: Vec<String>| {
        let mut invoices = Vec::new();
        loop {
            let (_, invoice) = store.place_order(false);
            invoices.push(invoice);
            let (_, email) = buyer_of(&paired, invoice);
            if !seen.contains(&email) {
                return (invoice, email, invoices);
            }
        }
    };
    let (second, second_email, _) = next_new(vec![first_email.clone()]);
    let by_hand = [
        plant_contact(&app, &business, "HAND1", &second_email, "GBP"),
        plant_contact(&app, &business, "HAND2", &second_email, "EUR"),
    ];
    // A minute on, the look-up first reads what changed in Sage since the index was loaded.
    sqlx::query("UPDATE sage_contact_index_state SET refreshed_at = now() - interval '2 minutes'")
        .execute(&app.state.db)
        .await
        .unwrap();
    store.drain_once().await;
    let run = settled(&app, "invoice.created", second).await;
    assert_eq!(run.status, "synced", "{:?}", run.message);
    assert_eq!(
        ledger_e2e::sage_calls(&app, run.id).await,
        ["GET /contacts", "GET /contacts/{id}", "POST /sales_invoices"],
        "found by the index's refresh, confirmed, and adopted: no contact created"
    );
    let books = ledger_e2e::books(&app, &business).await;
    let invoice = books["sales_invoices"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| !i["contact"]["id"].is_null() && by_hand.iter().any(|h| i["contact"]["id"] == h.as_str()))
        .cloned();
    assert!(invoice.is_some(), "the invoice is on the contact made by hand");
    // Within the minute, a new customer costs the contact and the invoice: two calls.
    let (third, _, _) = next_new(vec![first_email, second_email]);
    store.drain_once().await;
    let run = settled(&app, "invoice.created", third).await;
    assert_eq!(run.status, "synced", "{:?}", run.message);
    assert_eq!(
        ledger_e2e::sage_calls(&app, run.id).await,
        ["POST /contacts", "POST /sales_invoices"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contacts_never_merge_different_customers() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    let workers = app.start_workers();
    let store = &paired.store.store;
    // Orders until there is one by a registered customer and one by a guest.
    let (mut registered, mut guest) = (None, None);
    while registered.is_none() || guest.is_none() {
        let (_, invoice) = store.place_order(false);
        match buyer_of(&paired, invoice) {
            (Some(id), email) if registered.is_none() => registered = Some((invoice, id, email)),
            (None, email) if guest.is_none() => guest = Some((invoice, email)),
            _ => {}
        }
    }
    let (registered_invoice, customer, email) = registered.unwrap();
    let (guest_invoice, guest_email) = guest.unwrap();
    // Sage already holds contacts with the references the ledger would pick, for other
    // people: another store's customer with the same Magento id, a guest whose short hash
    // collides, and this very customer's email in another currency.
    let other_store = plant_contact(
        &app,
        &business,
        &format!("M{customer}"),
        "someone@elsewhere.example",
        "GBP",
    );
    let collision = plant_contact(
        &app,
        &business,
        &guest_reference(&guest_email),
        "other@guest.example",
        "GBP",
    );
    let euro = plant_contact(&app, &business, "EURO1", &email, "EUR");
    store.drain_once().await;
    for invoice in [registered_invoice, guest_invoice] {
        let run = settled(&app, "invoice.created", invoice).await;
        assert_eq!(run.status, "synced", "{:?}", run.message);
    }
    let books = ledger_e2e::books(&app, &business).await;
    let contacts = books["contacts"].as_array().unwrap();
    let invoices = books["sales_invoices"].as_array().unwrap();
    let contact_of = |invoice: &Value| {
        let id = invoice["contact"]["id"].as_str().unwrap();
        contacts.iter().find(|c| c["id"] == id).unwrap().clone()
    };
    for invoice in invoices {
        let c = contact_of(invoice);
        assert!(
            ![&other_store, &collision, &euro].contains(&&c["id"].as_str().unwrap().to_owned()),
            "{c}"
        );
        assert_eq!(
            c["currency"]["id"], invoice["currency"]["id"],
            "a contact in the invoice's currency"
        );
        assert!(c["reference"].as_str().unwrap().len() <= 10);
    }
    let mine: Vec<String> = invoices
        .iter()
        .map(|i| contact_of(i)["email"].as_str().unwrap_or_default().to_lowercase())
        .collect();
    assert!(
        mine.contains(&email.to_lowercase()) && mine.contains(&guest_email.to_lowercase()),
        "{mine:?}"
    );
    // The planted contacts were never written over.
    for (id, email) in [
        (&other_store, "someone@elsewhere.example"),
        (&collision, "other@guest.example"),
    ] {
        let c = contacts.iter().find(|c| c["id"] == id.as_str()).unwrap();
        assert_eq!(c["email"], email);
        assert_eq!(c["name"], "Someone else");
    }
    // Every contact the ledger made is in its cross-references, once; nothing else changed.
    let made = ledger_e2e::count(
        &app,
        "SELECT count(DISTINCT sage_id) FROM entity_xref WHERE entity_type = 'contact'",
    )
    .await;
    assert_eq!(
        contacts.len() as i64,
        made + 3,
        "the ledger's contacts plus the three planted ones"
    );
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_subscription_resumes_syncing_by_itself() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let business = app.sage().businesses()[0].id.clone();
    let workers = app.start_workers();
    let store = &paired.store.store;
    app.sage().set_lapsed(&business, true);
    let (_, invoice) = store.place_order(false);
    store.drain_once().await;
    ledger_e2e::wait_for("the lapse to pause the binding", Duration::from_secs(30), async || {
        ledger_e2e::count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'paused'").await == 1
    })
    .await;
    // The binding page says what happened and offers "Check again".
    let session = app.session(&paired.merchant).await;
    let page = |path: String| {
        let app = &app;
        let cookie = session.cookie.clone();
        async move {
            app.http
                .get(app.url(&path))
                .header("cookie", cookie)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    let binding_page = format!("/dashboard/bindings/{}", paired.binding_id);
    let html = page(binding_page.clone()).await;
    assert!(
        html.contains("no active subscription") && html.contains("id=\"check-again\""),
        "{html}"
    );
    let check = app
        .http
        .post(app.url(&format!("{binding_page}/sage/check")))
        .header("cookie", &session.cookie)
        .form(&[("csrf_token", session.csrf_token.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(check.status(), 303);
    assert!(
        page(check.headers()["location"].to_str().unwrap().to_owned())
            .await
            .contains("still reports no active subscription")
    );

    // Renewed in Sage: the workers' next look (every few minutes) revives it by itself.
    app.sage().set_lapsed(&business, false);
    ledger_sage_vault::reference::refresh_stale(&app.state).await.unwrap();
    let run = settled(&app, "invoice.created", invoice).await;
    assert_eq!(run.status, "synced", "{:?}", run.message);
    assert_eq!(
        ledger_e2e::count(&app, "SELECT count(*) FROM connector_bindings WHERE status = 'active'").await,
        1
    );
    workers.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_payment_shows_on_its_invoice_chip_until_it_syncs() {
    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let binding = paired.binding_id;
    let url = format!("/v1/bindings/{binding}/settings");
    let (_, mut settings) = api(&app, &paired, reqwest::Method::GET, &url, None).await;
    settings["payment_method_map"] = serde_json::json!({ "checkmo": bank_of(&app), "stripe_payments": null });
    assert_eq!(
        api(&app, &paired, reqwest::Method::PUT, &url, Some(settings)).await.0,
        200
    );
    let workers = app.start_workers();
    let store = &paired.store.store;
    // The chip once the store has taken the latest callback (or what it shows after 10 s).
    let chip_after = |invoice: i64, expected: (&'static str, Option<&'static str>)| {
        let paired = &paired;
        async move {
            let started = std::time::Instant::now();
            loop {
                paired.store.store.drain_once().await;
                let now = chip(paired, "invoice", invoice);
                let wanted = Some((expected.0.to_owned(), expected.1.map(str::to_owned)));
                if now == wanted || started.elapsed() > Duration::from_secs(10) {
                    return now.unwrap();
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    // Sage refuses the payment: the invoice is unpaid there, and its chip says so.
    app.sage().set_faults(ledger_sandbox::sage::SageFaults {
        reject_kind: "contact_payment".into(),
        reject_writes: 1,
        ..Default::default()
    });
    let (_, refused) = store.place_order_by("checkmo", true);
    store.drain_once().await;
    assert_eq!(settled(&app, "invoice.paid", refused).await.status, "failed");
    assert_eq!(
        chip_after(refused, ("failed", Some("payment_validation"))).await,
        ("failed".to_owned(), Some("payment_validation".to_owned()))
    );
    // Retried, it syncs, and the chip is Synced again.
    let run = run_of(&app, "invoice.paid", refused).await;
    api(
        &app,
        &paired,
        reqwest::Method::POST,
        &format!("/v1/runs/{}/retry", run.id),
        None,
    )
    .await;
    assert_eq!(settled(&app, "invoice.paid", refused).await.status, "synced");
    assert_eq!(chip_after(refused, ("synced", None)).await, ("synced".to_owned(), None));

    // A method nobody mapped: Failed too; one mapped to "leave unpaid" on purpose: unchanged.
    let (_, unmapped) = store.place_order_by("banktransfer", true);
    let (_, chosen) = store.place_order_by("stripe_payments", true);
    store.drain_once().await;
    settled(&app, "invoice.paid", unmapped).await;
    settled(&app, "invoice.paid", chosen).await;
    assert_eq!(
        chip_after(unmapped, ("failed", Some("payment_method_not_mapped"))).await,
        ("failed".to_owned(), Some("payment_method_not_mapped".to_owned()))
    );
    // Unchanged: still the invoice's Synced (give a wrong callback time to arrive).
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(chip_after(chosen, ("synced", None)).await, ("synced".to_owned(), None));
    workers.stop().await;
}
