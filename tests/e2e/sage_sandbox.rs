//! The Sage sandbox behaves like Sage where the ledger depends on it — its error array,
//! required fields, and the documented quirks: 10-character contact references that stay
//! reserved after deletion, HTML entities refused, contacts locked to one currency, the
//! zero-rate rule for goods delivered outside the business's country, the delivery
//! address copied when omitted, a missing line tax becoming 0 and an explicit one on a
//! zero-percentage rate ignored, shipping tax recomputed from rate × net, foreign
//! currencies only with multi-currency on (at the business's own rate when none is
//! sent, base-currency amounts = amount × rate), `/financial_settings`, voiding by
//! DELETE, `idempotency_id` replay and `IdempotencyResourceMismatch`, GET marking
//! documents sent unless `mark_as_sent=false`, and the per-business rate limit
//! answering 429.

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::TestApp;
use serde_json::{Value, json};

struct Api {
    http: reqwest::Client,
    base: String,
    token: String,
    business: String,
}

impl Api {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("X-Business", &self.business);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }
}

fn source(error: &Value) -> &str {
    error[0]["$source"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn the_sandbox_keeps_sages_documented_behaviour() {
    let app = TestApp::builder()
        .sage(SageConfig {
            rate_limit: Some((60, 60_000)),
            ..SageConfig::default()
        })
        .spawn()
        .await;
    let paired = app.connected_store().await;
    let token = ledger_sage_vault::tokens::access_token(&app.state, paired.binding_id)
        .await
        .unwrap();
    let api = Api {
        http: app.http.clone(),
        base: app
            .state
            .settings
            .sage_api_base
            .to_string()
            .trim_end_matches('/')
            .to_owned(),
        token: token.token.expose().clone(),
        business: token.business_id.clone().unwrap(),
    };
    let business = app.sage().businesses()[0].clone();
    let sales = business
        .ledger_accounts
        .iter()
        .find(|a| a["nominal_code"] == 4000)
        .unwrap()["id"]
        .clone();

    // Contacts: references of at most 10 characters, unique even after deletion.
    let contact = |reference: &str, currency: &str, country: &str| {
        json!({ "contact": { "name": "Ann Lee", "contact_type_ids": ["CUSTOMER"], "reference": reference,
                             "currency_id": currency, "main_address": { "address_line_1": "1 High St", "country_id": country } } })
    };
    let (status, err) = api.post("/contacts", contact("ABCDEFGHIJK", "GBP", "GB")).await;
    assert_eq!((status, source(&err)), (422, "reference"), "{err}");
    assert_eq!(err[0]["$dataCode"], "RecordInvalid");
    let (status, _) = api.post("/contacts", json!({ "contact": { "name": "No type" } })).await;
    assert_eq!(status, 422, "contact_type_ids is required");
    let (status, doomed) = api.post("/contacts", contact("GONE1", "GBP", "GB")).await;
    assert_eq!(status, 201);
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/contacts/{}", doomed["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert!((200..300).contains(&status));
    let (status, err) = api.post("/contacts", contact("GONE1", "GBP", "GB")).await;
    assert_eq!(
        (status, source(&err)),
        (422, "reference"),
        "deleted references stay reserved"
    );
    let (_, gbp) = api.post("/contacts", contact("ANN1", "GBP", "GB")).await;
    let (_, french) = api.post("/contacts", contact("ANN2", "GBP", "FR")).await;
    let gbp_id = gbp["id"].as_str().unwrap().to_owned();

    let line = |description: &str, rate: &str, tax: Option<&str>| {
        let mut l = json!({ "description": description, "ledger_account_id": sales, "quantity": 2,
                            "unit_price": 10, "net_amount": 20, "tax_rate_id": rate });
        if let Some(t) = tax {
            l["tax_amount"] = json!(t);
        }
        l
    };
    let invoice = |contact: &str, lines: Vec<Value>| {
        json!({ "sales_invoice": { "contact_id": contact, "date": "2026-04-29", "invoice_lines": lines,
                                   "main_address": { "address_line_1": "1 High St", "country_id": "GB" } } })
    };

    // HTML entities are refused where they appear.
    let (status, err) = api
        .post(
            "/sales_invoices",
            invoice(&gbp_id, vec![line("Lamp&trade;", "GB_STANDARD", Some("4"))]),
        )
        .await;
    assert_eq!((status, source(&err)), (422, "invoice_lines[0].description"), "{err}");

    // Arithmetic: a missing line tax on a non-zero rate is 0; shipping tax is rate × net
    // whatever was sent; the delivery address is copied from the main one.
    let mut body = invoice(
        &gbp_id,
        vec![
            line("Lamp", "GB_STANDARD", Some("4")),
            line("Shade", "GB_STANDARD", None),
        ],
    );
    body["sales_invoice"]["shipping_net_amount"] = json!(10);
    body["sales_invoice"]["shipping_tax_rate_id"] = json!("GB_STANDARD");
    body["sales_invoice"]["shipping_tax_amount"] = json!(0);
    body["sales_invoice"]["idempotency_id"] = json!("0123456789abcdef0123456789abcdef");
    let (status, created) = api.post("/sales_invoices", body.clone()).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["invoice_lines"][1]["tax_amount"], "0.00");
    assert_eq!(created["shipping_tax_amount"], "2.00");
    assert_eq!(
        (
            created["net_amount"].as_str(),
            created["tax_amount"].as_str(),
            created["total_amount"].as_str()
        ),
        (Some("50.00"), Some("6.00"), Some("56.00"))
    );
    assert_eq!(created["delivery_address"], created["main_address"]);

    // A zero-percentage rate books no tax, whatever the line says.
    let (status, zero) = api
        .post(
            "/sales_invoices",
            invoice(&gbp_id, vec![line("Book", "GB_ZERO", Some("4"))]),
        )
        .await;
    assert_eq!(status, 201, "{zero}");
    assert_eq!(
        (zero["tax_amount"].as_str(), zero["total_amount"].as_str()),
        (Some("0.00"), Some("20.00"))
    );

    // Voiding: a reason is required; the invoice stays, void.
    let zero_id = zero["id"].as_str().unwrap();
    let (status, err) = api
        .call(reqwest::Method::DELETE, &format!("/sales_invoices/{zero_id}"), None)
        .await;
    assert_eq!((status, source(&err)), (422, "void_reason"), "{err}");
    let (status, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/sales_invoices/{zero_id}?void_reason=Cancelled"),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (_, void) = api.get(&format!("/sales_invoices/{zero_id}?mark_as_sent=false")).await;
    assert_eq!(void["status"]["id"], "VOID");

    // Financial settings: the base currency and whether others are allowed.
    let (status, financial) = api.get("/financial_settings").await;
    assert_eq!(status, 200);
    assert_eq!(financial["base_currency"]["id"], "GBP");
    assert_eq!(financial["multi_currency_enabled"], true);

    // A foreign document: at its rate, else the business's own; base amounts = amount × rate.
    let (_, euro_contact) = api.post("/contacts", contact("ANN4", "EUR", "IE")).await;
    let euro_id = euro_contact["id"].as_str().unwrap().to_owned();
    let mut at_rate = invoice(&euro_id, vec![line("Lamp", "GB_ZERO", None)]);
    at_rate["sales_invoice"]["currency_id"] = json!("EUR");
    at_rate["sales_invoice"]["exchange_rate"] = json!(0.8);
    let (status, booked) = api.post("/sales_invoices", at_rate.clone()).await;
    assert_eq!(status, 201, "{booked}");
    assert_eq!(booked["base_currency_total_amount"], "16.00");
    at_rate["sales_invoice"]
        .as_object_mut()
        .unwrap()
        .remove("exchange_rate");
    let (status, own) = api.post("/sales_invoices", at_rate.clone()).await;
    assert_eq!(status, 201, "{own}");
    assert_eq!(own["exchange_rate"], "0.854701", "the business's own EUR rate");
    assert_eq!(own["base_currency_total_amount"], "17.09");
    app.sage().with_business_mut(&business.id, |b| b.multi_currency = false);
    let (status, err) = api.post("/sales_invoices", at_rate).await;
    assert_eq!(
        (status, source(&err)),
        (422, "currency_id"),
        "multi-currency off: {err}"
    );
    let (_, financial) = api.get("/financial_settings").await;
    assert_eq!(financial["multi_currency_enabled"], false);
    app.sage().with_business_mut(&business.id, |b| b.multi_currency = true);

    // Idempotency: the same id answers the first document; on another resource, refused.
    let (status, again) = api.post("/sales_invoices", body).await;
    assert_eq!((status, &again["id"]), (201, &created["id"]));
    let mut reused = contact("ANN3", "GBP", "GB");
    reused["contact"]["idempotency_id"] = json!("0123456789abcdef0123456789abcdef");
    let (status, err) = api.post("/contacts", reused).await;
    assert_eq!(
        (status, err[0]["$dataCode"].as_str()),
        (422, Some("IdempotencyResourceMismatch"))
    );

    // GET marks the invoice sent, unless mark_as_sent=false.
    let id = created["id"].as_str().unwrap();
    let (_, peek) = api.get(&format!("/sales_invoices/{id}?mark_as_sent=false")).await;
    assert_eq!(peek["sent"], false);
    api.get(&format!("/sales_invoices/{id}")).await;
    let (_, after) = api.get(&format!("/sales_invoices/{id}?mark_as_sent=false")).await;
    assert_eq!(after["sent"], true);

    // Contacts are locked to their currency.
    let mut euro = invoice(&gbp_id, vec![line("Lamp", "GB_STANDARD", Some("4"))]);
    euro["sales_invoice"]["currency_id"] = json!("EUR");
    euro["sales_invoice"]["exchange_rate"] = json!(0.85);
    let (status, err) = api.post("/sales_invoices", euro).await;
    assert_eq!((status, source(&err)), (422, "currency_id"), "{err}");

    // Goods delivered outside the UK take only zero rates; billed abroad but delivered
    // in the UK, UK VAT is valid.
    let french_id = french["id"].as_str().unwrap();
    let mut abroad = invoice(french_id, vec![line("Lamp", "GB_STANDARD", Some("4"))]);
    abroad["sales_invoice"]["main_address"]["country_id"] = json!("FR");
    let (status, err) = api.post("/sales_invoices", abroad.clone()).await;
    assert_eq!((status, source(&err)), (422, "invoice_lines[0].tax_rate_id"), "{err}");
    let mut delivered_home = abroad.clone();
    delivered_home["sales_invoice"]["delivery_address"] = json!({ "address_line_1": "1 High St", "country_id": "GB" });
    let (status, created) = api.post("/sales_invoices", delivered_home).await;
    assert_eq!(status, 201, "{created}");
    abroad["sales_invoice"]["invoice_lines"] = json!([line("Lamp", "GB_ZERO", Some("0"))]);
    let (status, _) = api.post("/sales_invoices", abroad).await;
    assert_eq!(status, 201);

    // The per-business rate limit answers 429 with Retry-After.
    let mut limited = None;
    for _ in 0..80 {
        let res = api
            .http
            .get(format!("{}/contacts", api.base))
            .bearer_auth(&api.token)
            .header("X-Business", &api.business)
            .send()
            .await
            .unwrap();
        if res.status() == 429 {
            limited = Some(res);
            break;
        }
    }
    let limited = limited.expect("the limit of 60 calls a minute is enforced");
    assert!(limited.headers().contains_key("retry-after"));
}
