//! Snapshot tests over a corpus of realistic canonical documents (`tests/corpus/*.json`):
//! each maps to the committed Sage payload (`*.sage.json`) — contact, document, totals —
//! whose totals match Magento's grand total to the cent under Sage's own arithmetic, and
//! whose bodies conform to Sage's API definition. `LEDGER_UPDATE_SNAPSHOTS=1` rewrites
//! the snapshots; review the diff before committing.

mod common;

use std::path::{Path, PathBuf};

use common::{SageDefinitions, gb_ctx, gb_settings, rates};
use ledger_magento_api::canonical::{Contact, CreditMemo, Invoice, Product};
use ledger_sage_sync::{
    mapping::{self, ContactKey, Ctx, Mapped, cents},
    outcome::Failure,
    policy::Settings,
};
use ledger_sandbox::sage::{Business, documents::document_totals};
use rust_decimal::Decimal;
use serde_json::{Value, json};

const CONTACT_ID: &str = "c0ffee00c0ffee00c0ffee00c0ffee00";

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus")
}

fn settings_for(fixture: &Value) -> Settings {
    let mut s = serde_json::to_value(gb_settings()).unwrap();
    if let Some(overrides) = fixture["settings"].as_object() {
        for (k, v) in overrides {
            s[k] = v.clone();
        }
    }
    serde_json::from_value(s).unwrap()
}

fn contact_key(c: &Contact) -> ContactKey {
    if c.is_guest() {
        ContactKey::Guest(c.email.clone())
    } else {
        ContactKey::Customer(c.magento_id)
    }
}

fn failure(f: &Failure) -> Value {
    json!({ "class": format!("{:?}", f.class), "code": f.code, "message": f.message })
}

/// Maps one fixture; returns the snapshot and checks what must hold whatever it says.
fn snapshot(name: &str, fixture: &Value, defs: &SageDefinitions) -> Value {
    let settings = settings_for(fixture);
    let rates = rates();
    let ctx = gb_ctx(&settings, &rates);
    let business = Business::new("Corpus Ltd", "GB");
    let (customer, currency, grand, result, lines_key, definition): (Contact, String, Decimal, _, _, _) =
        match fixture["kind"].as_str() {
            Some("invoice") => {
                let inv: Invoice = serde_json::from_value(fixture["document"].clone()).unwrap();
                let mapped = mapping::map_invoice(&inv, CONTACT_ID, &ctx);
                (
                    inv.customer,
                    inv.currency,
                    inv.grand_total,
                    mapped,
                    "invoice_lines",
                    "postSalesInvoices",
                )
            }
            Some("credit_memo") => {
                let memo: CreditMemo = serde_json::from_value(fixture["document"].clone()).unwrap();
                let mapped = mapping::map_credit_note(&memo, CONTACT_ID, None, &ctx);
                (
                    memo.customer,
                    memo.currency,
                    memo.grand_total,
                    mapped,
                    "credit_note_lines",
                    "postSalesCreditNotes",
                )
            }
            other => panic!("{name}: unknown kind {other:?}"),
        };
    let contact = mapping::map_contact(&customer, &contact_key(&customer), &currency, &ctx);
    let problems = defs.check("postContacts", &json!({ "contact": contact }));
    assert!(problems.is_empty(), "{name}: contact body: {problems:#?}");
    let Mapped {
        body, totals, notes, ..
    } = match result {
        Ok(m) => m,
        Err(f) => return json!({ "contact": contact, "refused": failure(&f) }),
    };
    let wrapper = if lines_key == "invoice_lines" {
        "sales_invoice"
    } else {
        "sales_credit_note"
    };
    let problems = defs.check(definition, &json!({ wrapper: body }));
    assert!(problems.is_empty(), "{name}: {wrapper} body: {problems:#?}");
    assert_eq!(
        totals.total,
        cents(grand),
        "{name}: totals against Magento's grand total"
    );
    let (net, tax, total) = document_totals(&business, body.as_object().unwrap(), lines_key);
    assert_eq!(
        (net, tax, total),
        (totals.net, totals.tax, totals.total),
        "{name}: Sage's arithmetic"
    );
    json!({ "contact": contact, wrapper: body, "totals": totals, "notes": notes })
}

#[test]
fn every_corpus_document_maps_to_its_snapshot() {
    let defs = SageDefinitions::load();
    let update = std::env::var_os("LEDGER_UPDATE_SNAPSHOTS").is_some();
    let mut names: Vec<PathBuf> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json") && !p.to_string_lossy().ends_with(".sage.json"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "the corpus has {} documents", names.len());
    let mut mismatched = Vec::new();
    for path in &names {
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let fixture: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let got = snapshot(&name, &fixture, &defs);
        let snap_path = path.with_extension("sage.json");
        let rendered = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&snap_path, &rendered).unwrap();
            continue;
        }
        let want = std::fs::read_to_string(&snap_path)
            .unwrap_or_else(|_| panic!("{name}: no snapshot; run with LEDGER_UPDATE_SNAPSHOTS=1 and review it"));
        if serde_json::from_str::<Value>(&want).unwrap() != got {
            mismatched.push(format!("{name}:\n--- want\n{want}\n--- got\n{rendered}"));
        }
    }
    assert!(mismatched.is_empty(), "snapshots differ:\n{}", mismatched.join("\n"));
}

/// The documents the corpus pins beyond its snapshots: the rules the product promises.
#[test]
fn corpus_rules_hold() {
    let defs = SageDefinitions::load();
    let load = |name: &str| -> Value {
        let path = corpus().join(format!("{name}.json"));
        snapshot(
            name,
            &serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap(),
            &defs,
        )
    };
    let uk = load("uk_domestic");
    let inv = &uk["sales_invoice"];
    assert_eq!(
        inv["invoice_lines"][0]["description"], "Desk Lamp™ & Shade",
        "HTML decoded"
    );
    assert_eq!(inv["shipping_tax_rate_id"], "GB_STANDARD");
    assert!(inv["delivery_address"].is_object() && inv["main_address"].is_object());
    assert_eq!(inv["currency_id"], "GBP");
    assert!(inv.get("exchange_rate").is_none(), "no rate in the base currency");

    let eur = load("eur_on_gbp_business");
    assert_eq!(eur["sales_invoice"]["exchange_rate"], json!(0.8547008547));
    assert_eq!(eur["sales_invoice"]["invoice_lines"][0]["tax_rate_id"], "GB_ZERO");
    assert_eq!(eur["contact"]["reference"], "M77E", "one contact per currency");
    assert_eq!(eur["contact"]["currency_id"], "EUR");

    let untaxed = load("untaxed_shipping_on_taxed_goods");
    assert_eq!(
        untaxed["sales_invoice"]["shipping_tax_rate_id"], "GB_ZERO",
        "zero-tax shipping carries the zero rate"
    );
    assert_eq!(
        untaxed["sales_invoice"]["invoice_lines"][0]["description"],
        "Kettle \"Classic\""
    );

    let mixed = load("cross_border_mixed_goods_services");
    assert_eq!(mixed["notes"], json!(["mixed_eu_goods_services_coerced_to_default"]));

    let b2b = load("b2b_company_po");
    assert_eq!(b2b["sales_invoice"]["reference"], "MG-000000123");
    assert!(
        b2b["sales_invoice"]["notes"]
            .as_str()
            .unwrap()
            .contains("Purchase order: PO-88412")
    );
    assert_eq!(b2b["contact"]["name"], "Northwind Traders Ltd");

    let guest = load("guest_checkout");
    let reference = guest["contact"]["reference"].as_str().unwrap();
    assert!(reference.starts_with('G') && reference.len() == 10, "{reference}");

    let kids = load("configurable_and_bundle_children");
    let skus: Vec<&str> = kids["sales_invoice"]["invoice_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["description"].as_str().unwrap())
        .collect();
    assert_eq!(
        skus,
        ["Organic T-Shirt", "Candle", "Soap Bar"],
        "zero-priced children and parents dropped"
    );

    let refund = load("partial_refund_with_adjustments");
    let lines = refund["sales_credit_note"]["credit_note_lines"].as_array().unwrap();
    let labels: Vec<&str> = lines.iter().map(|l| l["description"].as_str().unwrap()).collect();
    assert_eq!(labels, ["Three-seat Sofa, Grey", "Adjustment refund", "Adjustment fee"]);
    assert_eq!(refund["sales_credit_note"]["original_invoice_date"], "2026-04-29");

    let mismatch = load("total_mismatch");
    assert_eq!(mismatch["refused"]["code"], "total_mismatch");
    assert_eq!(mismatch["refused"]["class"], "Validation");
    let message = mismatch["refused"]["message"].as_str().unwrap();
    assert!(
        message.contains("24.00") && message.contains("24.01") && message.contains("difference 0.01"),
        "both amounts and the difference: {message}"
    );
}

/// Payments, allocations, products, services, stock items and stock movements conform too.
#[test]
fn the_other_writes_conform_to_sage_definitions() {
    let defs = SageDefinitions::load();
    let mut settings = gb_settings();
    settings.default_purchase_ledger_account_id = Some("LA_5000".to_owned());
    let rates = rates();
    let ctx: Ctx<'_> = gb_ctx(&settings, &rates);
    let payment = mapping::map_payment(
        &mapping::Receipt {
            invoice_id: 311,
            increment_id: "000000123",
            contact_id: CONTACT_ID,
            sage_invoice_id: "5a1e5a1e5a1e5a1e5a1e5a1e5a1e5a1e",
            bank_account_id: "BA_1200",
            amount: "240.39".parse().unwrap(),
            allocate: "240.39".parse().unwrap(),
            currency: "EUR",
            sage_rate: Some("0.8547008547".parse().unwrap()),
            date: "2026-04-29",
        },
        &ctx,
    )
    .unwrap();
    assert_eq!(payment["transaction_type_id"], "CUSTOMER_RECEIPT");
    assert_eq!(payment["allocated_artefacts"][0]["amount"], json!(240.39));
    let problems = defs.check("postContactPayments", &json!({ "contact_payment": payment }));
    assert!(problems.is_empty(), "{problems:#?}");

    let allocation = mapping::map_allocation(
        58,
        CONTACT_ID,
        "2026-05-06",
        "5a1e",
        "c4ed",
        "10.50".parse().unwrap(),
        common::BINDING,
    );
    let problems = defs.check("postContactAllocations", &allocation);
    assert!(problems.is_empty(), "{problems:#?}");

    // The module's PHP floats, as text.
    let product: Product = serde_json::from_str(
        r#"{"magento_id": 12, "sku": "MUG-01", "name": "Mug &amp; Saucer", "product_type": "simple",
            "price": 9.99, "special_price": 7.4900000000000002, "cost": 3.1, "stock_qty": 40.0,
            "manage_stock": true, "tax_class": "2", "website_ids": [1], "updated_at": "2026-04-01T10:00:00Z"}"#,
    )
    .unwrap();
    for (kind, definition) in [
        ("product", "postProducts"),
        ("service", "postServices"),
        ("stock_item", "postStockItems"),
    ] {
        let item = mapping::map_item(&product, kind, &settings).unwrap();
        assert_eq!(item.body["description"], "Mug & Saucer");
        let price = if kind == "service" {
            &item.body["sales_rates"][0]["rate"]
        } else {
            &item.body["sales_prices"][0]["price"]
        };
        // The catalogue price, not the special price (sent without its dates).
        assert_eq!(*price, json!(9.99), "{kind}: the catalogue price");
        let includes = if kind == "service" {
            &item.body["sales_rates"][0]["rate_includes_tax"]
        } else {
            &item.body["sales_prices"][0]["price_includes_tax"]
        };
        assert_eq!(*includes, json!(false), "{kind}: prices without tax by default");
        let problems = defs.check(definition, &json!({ item.wrapper: item.body }));
        assert!(problems.is_empty(), "{kind}: {problems:#?}");
    }
    let mut vat_inclusive = settings.clone();
    vat_inclusive.catalog_prices_include_tax = true;
    let item = mapping::map_item(&product, "product", &vat_inclusive).unwrap();
    assert_eq!(
        item.body["sales_prices"][0],
        json!({ "price_name": "Selling Price", "price": 9.99, "price_includes_tax": true }),
        "a store whose catalogue prices include VAT says so"
    );
    let movement = mapping::map_stock_movement(&product, "57ac", Decimal::from(-3), "2026-04-01", common::BINDING);
    let problems = defs.check("postStockMovements", &movement);
    assert!(problems.is_empty(), "{problems:#?}");
}
