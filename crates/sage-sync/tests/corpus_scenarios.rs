//! The real-store corpus: documents built by the sandbox store — Magento's own total
//! collectors under a stated store configuration (VAT-inclusive prices with coupons,
//! shipping discounts, tax by shipping address, OSS, a EUR website on a GBP business,
//! refunds from the order, adjustment-only and shipping-only refunds, 100 % coupons,
//! late-evening times, partial invoices, row and unit calculation, tax before discount,
//! registered customers without saved addresses, composite products, payments) and
//! rendered as the module serialises them. Each scenario states what must be booked:
//! the date, currency, rate and contact; Magento's gross and VAT come from its totals
//! (for a credit memo, what it itemises — it sends no header VAT).
//!
//! `tests/corpus/real/*.json` are the documents (regenerated and compared, so a change
//! to the store's arithmetic shows up as a diff), `*.sage.json` what the ledger posts.
//! `LEDGER_UPDATE_SNAPSHOTS=1` rewrites both; review the diff before committing.

mod common;

use std::path::{Path, PathBuf};

use common::{SageDefinitions, ctx, gb_settings, ie_settings, rates};
use ledger_magento_api::canonical::{CreditMemo, Invoice, Payment};
use ledger_sage_sync::{
    mapping::{self, ContactKey, Treatment, cents},
    policy::{Settings, TaxBasis},
};
use ledger_sandbox::{
    magento::{
        catalogue::{
            Address, Buyer, Catalogue, OrderSpec, StoreProfile, render_credit_memo, render_invoice, render_payment,
        },
        tax::{Algorithm, TaxBasis as StoreBasis},
        totals::{Refund, Rule},
    },
    sage::{Business, documents::document_totals},
};
use rust_decimal::Decimal;
use serde_json::{Value, json};

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus/real")
}

fn addr(street: &str, city: &str, postcode: &str, country: &str) -> Address {
    Address {
        id: 0,
        street: vec![street.into()],
        city: city.into(),
        region: None,
        postcode: Some(postcode.into()),
        country_id: country.into(),
        telephone: Some("020 7946 0000".into()),
        company: None,
    }
}

fn london() -> Address {
    addr("12 High Street", "London", "SW1A 1AA", "GB")
}
fn paris() -> Address {
    addr("Rue de Rivoli 10", "Paris", "75001", "FR")
}
fn berlin() -> Address {
    addr("Hauptstraße 5", "Berlin", "10115", "DE")
}
fn dublin() -> Address {
    addr("O'Connell Street 1", "Dublin", "D01 F5P2", "IE")
}
fn new_york() -> Address {
    Address {
        region: Some("New York".into()),
        ..addr("5th Avenue 100", "New York", "10001", "US")
    }
}

fn coupon(percent: &str, shipping: bool) -> Option<Rule> {
    Some(Rule {
        percent: d(percent),
        apply_to_shipping: shipping,
        free_shipping: false,
    })
}

fn guest(n: i64) -> Buyer {
    Buyer::Guest {
        email: format!("buyer{n}@example.net"),
        first_name: "Sam".into(),
        last_name: format!("Buyer {n}"),
    }
}

/// What a scenario produces for the ledger.
enum Doc {
    Invoice(i64),
    /// A credit memo, and the invoice whose booking it follows (when the ledger knows
    /// it: linked, or found among the customer's invoices).
    Memo(i64, Option<i64>),
    /// A payment: the invoice, and when it was captured (the event's time).
    Payment(i64, &'static str),
}

/// What must be booked.
struct Expect {
    date: &'static str,
    currency: &'static str,
    /// Sage's `exchange_rate`; `None` also where Sage applies its own.
    exchange_rate: Option<&'static str>,
    contact: &'static str,
}

struct Scenario {
    name: &'static str,
    category: &'static str,
    description: &'static str,
    profile: StoreProfile,
    build: fn(&mut Catalogue) -> Doc,
    expect: Expect,
}

fn order(
    cat: &mut Catalogue,
    buyer: Buyer,
    billing: Address,
    shipping: Option<Address>,
    items: &[(i64, &str)],
    rule: Option<Rule>,
    at: &str,
) -> i64 {
    cat.place(OrderSpec {
        buyer,
        billing,
        shipping,
        currency: None,
        items: items.iter().map(|(p, q)| (*p, d(q))).collect(),
        rule,
        shipping_price: d("4.99"),
        payment_method: "stripe_payments".into(),
        po_number: None,
        created_at: at.into(),
    })
}

fn invoiced(cat: &mut Catalogue, order: i64) -> i64 {
    cat.invoice_order(order, false, true).expect("an invoice")
}

fn with<T>(mut p: StoreProfile, f: impl FnOnce(&mut StoreProfile) -> T) -> StoreProfile {
    f(&mut p);
    p
}

/// A customer the generator made with a default billing address in `country`.
fn customer_in(cat: &Catalogue, country: &str) -> i64 {
    cat.customers
        .iter()
        .find(|c| {
            c.default_billing
                .and_then(|id| c.addresses.iter().find(|a| a.id == id))
                .is_some_and(|a| a.country_id == country)
        })
        .map(|c| c.id)
        .unwrap_or(1)
}

fn scenarios() -> Vec<Scenario> {
    let b2c = StoreProfile::uk_b2c;
    let uk = StoreProfile::uk;
    vec![
        // --- VAT-inclusive prices with a coupon: the compensation -----------------------
        Scenario {
            name: "vat_inclusive_coupon",
            category: "vat_inclusive_discount",
            description: "UK B2C store (prices and shipping with VAT), 10 % off a lamp and a book: Magento's total holds the VAT the discount took out",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(1),
                    london(),
                    Some(london()),
                    &[(5, "1"), (3, "1")],
                    coupon("10", false),
                    "2026-10-05T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-05",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "vat_inclusive_coupon_three_rates",
            category: "vat_inclusive_discount",
            description: "VAT-inclusive basket at 20 %, 5 % and 0 % with a 15 % coupon, three of each",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(2),
                    london(),
                    Some(london()),
                    &[(1, "3"), (4, "1"), (3, "2")],
                    coupon("15", false),
                    "2026-10-06T09:30:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-06",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "vat_inclusive_coupon_refund",
            category: "vat_inclusive_discount",
            description: "A card refund of one of three discounted mugs: the credit note takes the invoice's rates and its compensation",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(3),
                    london(),
                    Some(london()),
                    &[(1, "3")],
                    coupon("15", false),
                    "2026-10-07T09:30:00Z",
                );
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        Some("Chipped".into()),
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-10",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- a rule on the shipping -------------------------------------------------------
        Scenario {
            name: "shipping_discount_prices_without_vat",
            category: "shipping_discount",
            description: "Magento's default tax settings, 20 % off including shipping: the header discount folds in the shipping's, whose VAT is on the discounted shipping",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(4),
                    london(),
                    Some(london()),
                    &[(1, "2"), (2, "1")],
                    coupon("20", true),
                    "2026-10-08T12:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-08",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "shipping_discount_vat_inclusive",
            category: "shipping_discount",
            description: "VAT-inclusive prices and shipping, 12.5 % off including shipping: the shipping's own compensation too",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(5),
                    london(),
                    Some(london()),
                    &[(5, "1"), (1, "1")],
                    coupon("12.5", true),
                    "2026-10-08T13:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-08",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "shipping_discount_refunded",
            category: "shipping_discount",
            description: "The shipping of a 20 %-off-shipping order refunded: the credit note gives back the shipping net of its discount",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(6),
                    london(),
                    Some(london()),
                    &[(1, "2")],
                    coupon("20", true),
                    "2026-10-09T12:00:00Z",
                );
                let inv = invoiced(cat, o);
                Doc::Memo(cat.refund_shipping(inv).unwrap(), Some(inv))
            },
            expect: Expect {
                date: "2026-10-12",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- free shipping ----------------------------------------------------------------
        Scenario {
            name: "free_shipping_coupon_vat_inclusive",
            category: "free_shipping",
            description: "A free-shipping coupon prices the carrier at 0: no shipping to book",
            profile: b2c(),
            build: |cat| {
                let rule = Some(Rule {
                    percent: d("0"),
                    apply_to_shipping: false,
                    free_shipping: true,
                });
                let o = order(
                    cat,
                    guest(7),
                    london(),
                    Some(london()),
                    &[(2, "2")],
                    rule,
                    "2026-10-10T08:15:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-10",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "free_shipping_with_percent_off",
            category: "free_shipping",
            description: "10 % off and free shipping on prices without VAT",
            profile: uk(),
            build: |cat| {
                let rule = Some(Rule {
                    percent: d("10"),
                    apply_to_shipping: false,
                    free_shipping: true,
                });
                let o = order(
                    cat,
                    guest(8),
                    london(),
                    Some(london()),
                    &[(5, "1"), (12, "4")],
                    rule,
                    "2026-10-10T08:20:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-10",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- tax by shipping address ------------------------------------------------------
        Scenario {
            name: "billed_abroad_shipped_home",
            category: "tax_by_shipping_address",
            description: "Billed in Paris, shipped to London: Magento charges UK VAT (tax by shipping address), and so does Sage",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(9),
                    paris(),
                    Some(london()),
                    &[(5, "1"), (3, "1")],
                    None,
                    "2026-10-11T15:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-11",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "billed_home_shipped_abroad",
            category: "tax_by_shipping_address",
            description: "Billed in London, shipped to Berlin: an export Magento did not tax — zero rate and the EU goods type",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(10),
                    london(),
                    Some(berlin()),
                    &[(5, "1"), (1, "2")],
                    None,
                    "2026-10-11T16:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-11",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "billed_abroad_shipped_home_refund",
            category: "tax_by_shipping_address",
            description: "The credit note for the Paris-billed, London-shipped order takes the invoice's UK VAT, not the billing country",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(11),
                    paris(),
                    Some(london()),
                    &[(5, "2")],
                    None,
                    "2026-10-11T17:00:00Z",
                );
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-14",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "export_outside_the_eu",
            category: "tax_by_shipping_address",
            description: "Shipped to New York from a VAT-inclusive UK store: the UK VAT backed out of the price, zero-rated",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(12),
                    new_york(),
                    Some(new_york()),
                    &[(5, "1"), (7, "1")],
                    None,
                    "2026-10-12T18:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-12",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- OSS: destination VAT ---------------------------------------------------------
        Scenario {
            name: "oss_to_germany",
            category: "oss_destination_vat",
            description: "An Irish OSS seller ships to Berlin: German 19 % on the goods and shipping, mapped to Sage's destination rate",
            profile: StoreProfile::ie_oss(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(13),
                    berlin(),
                    Some(berlin()),
                    &[(5, "1"), (1, "2")],
                    None,
                    "2026-10-13T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-13",
                currency: "EUR",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "oss_to_france_with_coupon",
            category: "oss_destination_vat",
            description: "Irish OSS seller to Paris, 10 % coupon on VAT-inclusive prices: French 20 % and 5.5 % (books)",
            profile: StoreProfile::ie_oss(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(14),
                    paris(),
                    Some(paris()),
                    &[(5, "1"), (3, "1")],
                    coupon("10", false),
                    "2026-10-13T11:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-13",
                currency: "EUR",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "oss_refund_to_germany",
            category: "oss_destination_vat",
            description: "A refund on the German OSS order: German VAT again",
            profile: StoreProfile::ie_oss(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(15),
                    berlin(),
                    Some(berlin()),
                    &[(5, "2")],
                    None,
                    "2026-10-13T12:00:00Z",
                );
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-16",
                currency: "EUR",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- a EUR website on a GBP business ---------------------------------------------
        Scenario {
            name: "eur_website_order",
            category: "eur_website_on_gbp_business",
            description: "A EUR website (Magento base EUR, rate 1) on a GBP business: never booked at 1.0 — Sage applies its own EUR rate",
            profile: StoreProfile::eur_website(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(16),
                    paris(),
                    Some(paris()),
                    &[(5, "1")],
                    None,
                    "2026-10-14T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-14",
                currency: "EUR",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "eur_website_usd_order",
            category: "eur_website_on_gbp_business",
            description: "USD order on the EUR website: Magento's rate is EUR→USD, not GBP's — Sage applies its own USD rate",
            profile: StoreProfile::eur_website(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    currency: Some("USD".into()),
                    ..spec(guest(17), new_york(), &[(2, "1")], "2026-10-14T10:00:00Z")
                });
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-14",
                currency: "USD",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "eur_website_refund",
            category: "eur_website_on_gbp_business",
            description: "A refund on the EUR website: Sage's own rate again",
            profile: StoreProfile::eur_website(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(18),
                    paris(),
                    Some(paris()),
                    &[(1, "2")],
                    None,
                    "2026-10-14T11:00:00Z",
                );
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-17",
                currency: "EUR",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- a foreign currency on the business's base ------------------------------------
        Scenario {
            name: "eur_order_on_gbp_base",
            category: "foreign_currency",
            description: "A EUR order on a GBP website (rate 1.17): Sage's rate is 1/1.17",
            profile: uk(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    currency: Some("EUR".into()),
                    ..spec(guest(19), dublin(), &[(5, "1")], "2026-10-15T09:00:00Z")
                });
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-15",
                currency: "EUR",
                exchange_rate: Some("0.8547008547"),
                contact: "G",
            },
        },
        Scenario {
            name: "usd_refund_on_gbp_base",
            category: "foreign_currency",
            description: "A USD refund of a UK store's US order (rate 1.27)",
            profile: uk(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    currency: Some("USD".into()),
                    ..spec(guest(20), new_york(), &[(5, "2")], "2026-10-15T10:00:00Z")
                });
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-18",
                currency: "USD",
                exchange_rate: Some("0.7874015748"),
                contact: "G",
            },
        },
        // --- refunds from the order (offline methods) --------------------------------------
        Scenario {
            name: "offline_refund_found",
            category: "refund_from_order",
            description: "A check/money order refund made from the order names no invoice; the ledger found the customer's one invoice that fits",
            profile: b2c(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    payment_method: "checkmo".into(),
                    ..spec(guest(21), london(), &[(5, "2")], "2026-10-16T09:00:00Z")
                });
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-19",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "offline_refund_not_identified",
            category: "refund_from_order",
            description: "A bank-transfer refund from the order of a customer with several fitting invoices: booked on the customer's contact without its invoice's treatment",
            profile: b2c(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    payment_method: "banktransfer".into(),
                    ..spec(guest(22), london(), &[(1, "3")], "2026-10-16T10:00:00Z")
                });
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("2")],
                            shipping: None,
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, None)
            },
            expect: Expect {
                date: "2026-10-19",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- adjustment-only refunds ------------------------------------------------------
        Scenario {
            name: "goodwill_refund",
            category: "adjustment_only",
            description: "Every item at 0 and a £5 adjustment refund: an adjustment line only",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(23),
                    london(),
                    Some(london()),
                    &[(5, "1")],
                    None,
                    "2026-10-17T09:00:00Z",
                );
                let inv = invoiced(cat, o);
                Doc::Memo(cat.refund_adjustment(inv, d("5")).unwrap(), Some(inv))
            },
            expect: Expect {
                date: "2026-10-20",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "goodwill_refund_offline",
            category: "adjustment_only",
            description: "A goodwill adjustment refunded from the order (no invoice named)",
            profile: uk(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    payment_method: "checkmo".into(),
                    ..spec(guest(24), london(), &[(2, "1")], "2026-10-17T10:00:00Z")
                });
                let inv = invoiced(cat, o);
                Doc::Memo(cat.refund_adjustment(inv, d("3.50")).unwrap(), None)
            },
            expect: Expect {
                date: "2026-10-20",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- shipping-only refunds --------------------------------------------------------
        Scenario {
            name: "shipping_refund_vat_inclusive",
            category: "shipping_only",
            description: "Late delivery: the VAT-inclusive shipping refunded, nothing else — a shipping line",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(25),
                    london(),
                    Some(london()),
                    &[(5, "1")],
                    None,
                    "2026-10-18T09:00:00Z",
                );
                let inv = invoiced(cat, o);
                Doc::Memo(cat.refund_shipping(inv).unwrap(), Some(inv))
            },
            expect: Expect {
                date: "2026-10-21",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "shipping_refund_offline_export",
            category: "shipping_only",
            description: "The untaxed shipping of an export refunded from the order",
            profile: uk(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    payment_method: "banktransfer".into(),
                    ..spec(guest(26), new_york(), &[(1, "1")], "2026-10-18T10:00:00Z")
                });
                let inv = invoiced(cat, o);
                Doc::Memo(cat.refund_shipping(inv).unwrap(), None)
            },
            expect: Expect {
                date: "2026-10-21",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- zero-total orders ------------------------------------------------------------
        Scenario {
            name: "hundred_percent_coupon_vat_inclusive",
            category: "zero_total",
            description: "A 100 % coupon including shipping on VAT-inclusive prices: a zero invoice (method free)",
            profile: b2c(),
            build: |cat| {
                let rule = Some(Rule {
                    percent: d("100"),
                    apply_to_shipping: true,
                    free_shipping: true,
                });
                let o = order(
                    cat,
                    guest(27),
                    london(),
                    Some(london()),
                    &[(5, "1"), (3, "1")],
                    rule,
                    "2026-10-19T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-19",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "hundred_percent_coupon",
            category: "zero_total",
            description: "A 100 % coupon on prices without VAT",
            profile: uk(),
            build: |cat| {
                let rule = Some(Rule {
                    percent: d("100"),
                    apply_to_shipping: true,
                    free_shipping: true,
                });
                let o = order(
                    cat,
                    guest(28),
                    london(),
                    Some(london()),
                    &[(1, "2")],
                    rule,
                    "2026-10-19T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-19",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- times --------------------------------------------------------------------------
        Scenario {
            name: "late_evening_in_summer",
            category: "dates",
            description: "Invoiced at 23:30Z on 30 June: 1 July in London (BST)",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(29),
                    london(),
                    Some(london()),
                    &[(1, "1")],
                    None,
                    "2026-06-30T23:30:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-07-01",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "late_evening_in_winter",
            category: "dates",
            description: "Invoiced at 23:30Z on 31 December: still 31 December in London (GMT)",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(30),
                    london(),
                    Some(london()),
                    &[(1, "1")],
                    None,
                    "2026-12-31T23:30:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-12-31",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "payment_captured_next_day",
            category: "payments",
            description: "Invoiced 30 June 23:30Z, captured 2 July 09:00Z: the payment is dated when the money arrived, not the module's captured_at",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(31),
                    london(),
                    Some(london()),
                    &[(2, "1")],
                    None,
                    "2026-06-30T23:30:00Z",
                );
                let inv = cat.invoice_order(o, false, false).unwrap();
                cat.pay(inv, "2026-07-02T09:00:00Z");
                Doc::Payment(inv, "2026-07-02T09:00:00Z")
            },
            expect: Expect {
                date: "2026-07-02",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "payment_in_euros",
            category: "payments",
            description: "A EUR payment takes its invoice's rate",
            profile: uk(),
            build: |cat| {
                let o = cat.place(OrderSpec {
                    currency: Some("EUR".into()),
                    ..spec(guest(32), dublin(), &[(5, "1")], "2026-10-20T09:00:00Z")
                });
                let inv = invoiced(cat, o);
                Doc::Payment(inv, "2026-10-20T09:00:00Z")
            },
            expect: Expect {
                date: "2026-10-20",
                currency: "EUR",
                exchange_rate: Some("0.8547008547"),
                contact: "G",
            },
        },
        // --- partial invoices -------------------------------------------------------------
        Scenario {
            name: "partial_invoice_first",
            category: "partial_invoice",
            description: "The first of two invoices of a discounted VAT-inclusive order: shares of its rows, shipping on the first",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(33),
                    london(),
                    Some(london()),
                    &[(12, "3"), (1, "3")],
                    coupon("15", true),
                    "2026-10-21T09:00:00Z",
                );
                Doc::Invoice(cat.invoice_order(o, true, true).unwrap())
            },
            expect: Expect {
                date: "2026-10-21",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "partial_invoice_last",
            category: "partial_invoice",
            description: "The last invoice of such an order, two days later: the remainders",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(34),
                    london(),
                    Some(london()),
                    &[(12, "3"), (1, "3")],
                    coupon("15", true),
                    "2026-10-21T10:00:00Z",
                );
                cat.invoice_order(o, true, true).unwrap();
                Doc::Invoice(cat.invoice_order(o, false, true).unwrap())
            },
            expect: Expect {
                date: "2026-10-23",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- calculation methods and tax before discount ---------------------------------------
        Scenario {
            name: "unit_based_calculation",
            category: "calculation_method",
            description: "Tax calculated per unit (five 99p pens and three mugs), 10 % off",
            profile: with(uk(), |p| p.tax.algorithm = Algorithm::Unit),
            build: |cat| {
                let o = order(
                    cat,
                    guest(35),
                    london(),
                    Some(london()),
                    &[(12, "5"), (1, "3")],
                    coupon("10", false),
                    "2026-10-22T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-22",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "row_based_calculation_vat_inclusive",
            category: "calculation_method",
            description: "Tax calculated per row on VAT-inclusive prices, 15 % off",
            profile: with(b2c(), |p| p.tax.algorithm = Algorithm::Row),
            build: |cat| {
                let o = order(
                    cat,
                    guest(36),
                    london(),
                    Some(london()),
                    &[(12, "5"), (2, "3")],
                    coupon("15", false),
                    "2026-10-22T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-22",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "tax_before_discount",
            category: "tax_before_discount",
            description: "\"Apply Customer Tax: Before Discount\": VAT on the full price, the discount off the gross",
            profile: with(uk(), |p| p.tax.apply_after_discount = false),
            build: |cat| {
                let o = order(
                    cat,
                    guest(37),
                    london(),
                    Some(london()),
                    &[(5, "1"), (1, "2")],
                    coupon("20", true),
                    "2026-10-23T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-23",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "tax_before_discount_vat_inclusive",
            category: "tax_before_discount",
            description: "Tax before discount on VAT-inclusive prices: no compensation",
            profile: with(b2c(), |p| p.tax.apply_after_discount = false),
            build: |cat| {
                let o = order(
                    cat,
                    guest(38),
                    london(),
                    Some(london()),
                    &[(5, "1"), (4, "1")],
                    coupon("10", false),
                    "2026-10-23T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-23",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "tax_by_billing_address",
            category: "tax_by_shipping_address",
            description: "\"Tax Calculation Based On: Billing Address\": billed in London, shipped to Paris — UK VAT",
            profile: with(uk(), |p| p.tax.based_on = StoreBasis::Billing),
            build: |cat| {
                let o = order(
                    cat,
                    guest(39),
                    london(),
                    Some(paris()),
                    &[(5, "1")],
                    None,
                    "2026-10-23T11:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-23",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        // --- customers ----------------------------------------------------------------------
        Scenario {
            name: "registered_without_saved_addresses",
            category: "customers",
            description: "A registered customer with no saved address: the invoice copies the order's addresses into the contact",
            profile: b2c(),
            build: |cat| {
                let id = cat.customers.iter().find(|c| c.default_billing.is_none()).unwrap().id;
                let o = order(
                    cat,
                    Buyer::Registered(id),
                    london(),
                    Some(london()),
                    &[(5, "1")],
                    None,
                    "2026-10-24T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-24",
                currency: "GBP",
                exchange_rate: None,
                contact: "M",
            },
        },
        Scenario {
            name: "registered_refund_without_addresses",
            category: "customers",
            description: "That customer's refund: a credit memo carries no addresses at all",
            profile: b2c(),
            build: |cat| {
                let id = cat.customers.iter().find(|c| c.default_billing.is_none()).unwrap().id;
                let o = order(
                    cat,
                    Buyer::Registered(id),
                    london(),
                    Some(london()),
                    &[(5, "2")],
                    None,
                    "2026-10-24T10:00:00Z",
                );
                let inv = invoiced(cat, o);
                let memo = cat
                    .refund(
                        inv,
                        Refund {
                            qtys: vec![d("1")],
                            shipping: Some(d("0")),
                            ..Refund::default()
                        },
                        None,
                    )
                    .unwrap();
                Doc::Memo(memo, Some(inv))
            },
            expect: Expect {
                date: "2026-10-27",
                currency: "GBP",
                exchange_rate: None,
                contact: "M",
            },
        },
        Scenario {
            name: "guest_company_order",
            category: "customers",
            description: "A guest buying for a company: the billing company is the contact's",
            profile: uk(),
            build: |cat| {
                let billing = Address {
                    company: Some("Northwind Traders Ltd".into()),
                    ..london()
                };
                let o = order(
                    cat,
                    guest(40),
                    billing,
                    Some(london()),
                    &[(4, "1")],
                    None,
                    "2026-10-24T11:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-24",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "registered_customer_abroad",
            category: "customers",
            description: "A registered customer whose saved address is in Dublin: an export",
            profile: uk(),
            build: |cat| {
                let id = customer_in(cat, "IE");
                let o = order(
                    cat,
                    Buyer::Registered(id),
                    dublin(),
                    Some(dublin()),
                    &[(7, "1"), (1, "1")],
                    None,
                    "2026-10-24T12:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-24",
                currency: "GBP",
                exchange_rate: None,
                contact: "M",
            },
        },
        // --- composite products -------------------------------------------------------------
        Scenario {
            name: "configurable_product",
            category: "composite",
            description: "A configurable hoodie: the parent row carries the amounts, its child none",
            profile: b2c(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(41),
                    london(),
                    Some(london()),
                    &[(10, "2")],
                    coupon("10", false),
                    "2026-10-25T09:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-25",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
        Scenario {
            name: "dynamic_bundle",
            category: "composite",
            description: "A dynamic bundle: the parent row is zero, its children priced",
            profile: uk(),
            build: |cat| {
                let o = order(
                    cat,
                    guest(42),
                    london(),
                    Some(london()),
                    &[(11, "1")],
                    coupon("15", true),
                    "2026-10-25T10:00:00Z",
                );
                Doc::Invoice(invoiced(cat, o))
            },
            expect: Expect {
                date: "2026-10-25",
                currency: "GBP",
                exchange_rate: None,
                contact: "G",
            },
        },
    ]
}

fn spec(buyer: Buyer, address: Address, items: &[(i64, &str)], at: &str) -> OrderSpec {
    OrderSpec {
        buyer,
        billing: address.clone(),
        shipping: Some(address),
        currency: None,
        items: items.iter().map(|(p, q)| (*p, d(q))).collect(),
        rule: None,
        shipping_price: d("4.99"),
        payment_method: "stripe_payments".into(),
        po_number: None,
        created_at: at.into(),
    }
}

/// The business a store posts to, with settings mirroring the store's.
fn business_for(profile: &StoreProfile) -> (&'static str, &'static str, Settings) {
    let (country, base, mut settings) = if profile.tax.origin_country == "IE" {
        ("IE", "EUR", ie_settings())
    } else {
        ("GB", "GBP", gb_settings())
    };
    settings.tax_based_on = match profile.tax.based_on {
        StoreBasis::Shipping => TaxBasis::Shipping,
        StoreBasis::Billing => TaxBasis::Billing,
        StoreBasis::Origin => TaxBasis::Origin,
    };
    if profile.base_currency != base {
        settings
            .website_base_currencies
            .insert("1".into(), profile.base_currency.clone());
    }
    (country, base, settings)
}

/// The fixture of a scenario, as the module would serve it.
fn fixture(s: &Scenario) -> Value {
    let mut cat = Catalogue::generate(11, s.profile.clone());
    let doc = (s.build)(&mut cat);
    let (country, base, settings) = business_for(&s.profile);
    let rates = rates();
    let ctx = ctx(&settings, &rates, country, base);
    let treatment_of = |cat: &Catalogue, invoice: i64| -> Option<Treatment> {
        let v = render_invoice(cat, cat.invoice(invoice).unwrap()).unwrap().to_value();
        let inv: Invoice = serde_json::from_value(v).unwrap();
        mapping::map_invoice(&inv, "CONTACT", &ctx)
            .ok()
            .and_then(|m| m.treatment)
    };
    let (kind, document, magento, extra) = match doc {
        Doc::Invoice(id) => {
            let inv = cat.invoice(id).unwrap();
            (
                "invoice",
                render_invoice(&cat, inv).unwrap().to_value(),
                json!({ "grand_total": inv.totals.grand_total.to_string(), "tax": inv.totals.tax.to_string() }),
                json!({}),
            )
        }
        Doc::Memo(id, invoice) => {
            let memo = cat.credit_memo(id).unwrap();
            (
                "credit_memo",
                render_credit_memo(&cat, memo).unwrap().to_value(),
                json!({ "grand_total": memo.totals.grand_total.to_string(), "tax": memo.totals.tax.to_string() }),
                json!({ "treatment": invoice.and_then(|i| treatment_of(&cat, i)) }),
            )
        }
        Doc::Payment(id, at) => {
            let inv = cat.invoice(id).unwrap();
            (
                "payment",
                render_payment(&cat, inv).unwrap().to_value(),
                json!({ "grand_total": inv.totals.grand_total.to_string(), "tax": "0" }),
                json!({ "occurred_at": at }),
            )
        }
    };
    json!({
        "description": s.description,
        "category": s.category,
        "store": {
            "profile": s.profile.name, "prices_include_tax": s.profile.tax.prices_include_tax,
            "shipping_includes_tax": s.profile.tax.shipping_includes_tax, "apply_after_discount": s.profile.tax.apply_after_discount,
            "discount_on_incl_tax": s.profile.tax.discount_on_incl_tax, "based_on": format!("{:?}", s.profile.tax.based_on),
            "algorithm": format!("{:?}", s.profile.tax.algorithm), "base_currency": s.profile.base_currency,
        },
        "business": { "country": country, "base_currency": base },
        "kind": kind,
        "document": document,
        "magento": magento,
        "expect": {
            "date": s.expect.date, "currency": s.expect.currency, "exchange_rate": s.expect.exchange_rate,
            "contact": s.expect.contact,
        },
        "context": extra,
    })
}

fn amount(v: &Value) -> Decimal {
    match v {
        Value::String(s) => s.parse().unwrap(),
        other => other.to_string().parse().unwrap(),
    }
}

/// Maps a fixture; checks what must hold whatever the snapshot says; returns the snapshot.
fn book(name: &str, fixture: &Value, defs: &SageDefinitions) -> Value {
    let country = fixture["business"]["country"].as_str().unwrap();
    let base = fixture["business"]["base_currency"].as_str().unwrap();
    let profile = StoreProfile::named(fixture["store"]["profile"].as_str().unwrap()).unwrap_or_else(StoreProfile::uk);
    let (_, _, mut settings) = business_for(&profile);
    settings.tax_based_on = match fixture["store"]["based_on"].as_str() {
        Some("Billing") => TaxBasis::Billing,
        Some("Origin") => TaxBasis::Origin,
        _ => TaxBasis::Shipping,
    };
    let rates = rates();
    let ctx = ctx(&settings, &rates, country, base);
    let business = Business::new("Corpus Ltd", country);
    let expect = &fixture["expect"];
    let gross = cents(amount(&fixture["magento"]["grand_total"]));
    let reference_ok = |contact: &ledger_magento_api::canonical::Contact, currency: &str| {
        let key = if contact.is_guest() {
            ContactKey::Guest(contact.email.clone())
        } else {
            ContactKey::Customer(contact.magento_id)
        };
        let reference = mapping::contact_reference(&key, currency, &ctx);
        assert!(
            reference.starts_with(expect["contact"].as_str().unwrap()),
            "{name}: contact {reference}"
        );
        reference
    };
    let (body, wrapper, lines_key, reference) = match fixture["kind"].as_str().unwrap() {
        "invoice" => {
            let inv: Invoice = serde_json::from_value(fixture["document"].clone()).unwrap();
            let mapped =
                mapping::map_invoice(&inv, "CONTACT", &ctx).unwrap_or_else(|f| panic!("{name}: refused: {f:?}"));
            let vat = cents(amount(&fixture["magento"]["tax"]));
            let (net, tax, total) = document_totals(&business, mapped.body.as_object().unwrap(), "invoice_lines");
            assert_eq!(
                (total, tax, net),
                (gross, vat, gross - vat),
                "{name}: gross, VAT and net"
            );
            (
                mapped.body,
                "sales_invoice",
                "invoice_lines",
                reference_ok(&inv.customer, &inv.currency),
            )
        }
        "credit_memo" => {
            let memo: CreditMemo = serde_json::from_value(fixture["document"].clone()).unwrap();
            let treatment: Option<Treatment> = serde_json::from_value(fixture["context"]["treatment"].clone()).unwrap();
            let mapped = mapping::map_credit_note(&memo, "CONTACT", treatment.as_ref(), &ctx)
                .unwrap_or_else(|f| panic!("{name}: refused: {f:?}"));
            let itemised: Decimal =
                memo.lines.iter().map(|l| cents(l.line_tax)).sum::<Decimal>() + cents(memo.shipping_tax_amount);
            let (net, tax, total) = document_totals(&business, mapped.body.as_object().unwrap(), "credit_note_lines");
            assert_eq!(
                (total, tax, net),
                (gross, itemised, gross - itemised),
                "{name}: gross, VAT and net"
            );
            let magento_vat = cents(amount(&fixture["magento"]["tax"]));
            assert_eq!(tax, magento_vat, "{name}: Magento's own VAT");
            (
                mapped.body,
                "sales_credit_note",
                "credit_note_lines",
                reference_ok(&memo.customer, &memo.currency),
            )
        }
        "payment" => {
            let payment: Payment = serde_json::from_value(fixture["document"].clone()).unwrap();
            let at = fixture["context"]["occurred_at"].as_str().unwrap();
            let rate = expect["exchange_rate"].as_str().map(|r| r.parse().unwrap());
            let body = mapping::map_payment(
                &mapping::Receipt {
                    invoice_id: payment.invoice_id,
                    increment_id: &payment.invoice_increment_id,
                    contact_id: "CONTACT",
                    sage_invoice_id: "SAGEINVOICE",
                    bank_account_id: "BA_1200",
                    amount: payment.amount,
                    allocate: payment.amount,
                    currency: &payment.currency,
                    sage_rate: rate,
                    date: &mapping::local_date(at, ctx.time_zone).unwrap(),
                },
                &ctx,
            )
            .unwrap();
            assert_eq!(amount(&body["total_amount"]), gross, "{name}: the invoice's total");
            (body, "contact_payment", "", String::new())
        }
        other => panic!("{name}: kind {other}"),
    };
    assert_eq!(body["date"], expect["date"], "{name}: date");
    assert_eq!(body["currency_id"], expect["currency"], "{name}: currency");
    match expect["exchange_rate"].as_str() {
        Some(r) => assert_eq!(body["exchange_rate"].to_string(), r, "{name}: rate"),
        None => assert!(body.get("exchange_rate").is_none(), "{name}: Sage's own rate or none"),
    }
    let definition = match wrapper {
        "sales_invoice" => "postSalesInvoices",
        "sales_credit_note" => "postSalesCreditNotes",
        _ => "postContactPayments",
    };
    let problems = defs.check(definition, &json!({ wrapper: body }));
    assert!(problems.is_empty(), "{name}: {problems:#?}");
    let totals = (!lines_key.is_empty()).then(|| {
        let (net, tax, total) = document_totals(&business, body.as_object().unwrap(), lines_key);
        json!({ "net": net.to_string(), "tax": tax.to_string(), "total": total.to_string() })
    });
    json!({ wrapper: body, "contact_reference": reference, "sage_totals": totals })
}

#[test]
fn every_real_store_document_books_exactly() {
    let defs = SageDefinitions::load();
    let update = std::env::var_os("LEDGER_UPDATE_SNAPSHOTS").is_some();
    std::fs::create_dir_all(corpus()).unwrap();
    let mut problems = Vec::new();
    let mut categories = std::collections::BTreeMap::<&str, usize>::new();
    let all = scenarios();
    for s in &all {
        *categories.entry(s.category).or_default() += 1;
        let path = corpus().join(format!("{}.json", s.name));
        let built = fixture(s);
        let text = serde_json::to_string_pretty(&built).unwrap() + "\n";
        if update {
            std::fs::write(&path, &text).unwrap();
        }
        let committed: Value = serde_json::from_str(
            &std::fs::read_to_string(&path)
                .unwrap_or_else(|_| panic!("{}: no fixture; run with LEDGER_UPDATE_SNAPSHOTS=1", s.name)),
        )
        .unwrap();
        if committed != built {
            problems.push(format!(
                "{}: the store now builds a different document:\n{text}",
                s.name
            ));
        }
        let got = book(s.name, &committed, &defs);
        let snap = path.with_extension("sage.json");
        let rendered = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if update {
            std::fs::write(&snap, &rendered).unwrap();
            continue;
        }
        let want: Value = serde_json::from_str(&std::fs::read_to_string(&snap).unwrap()).unwrap();
        if want != got {
            problems.push(format!("{}: the posted body changed:\n{rendered}", s.name));
        }
    }
    assert!(all.len() >= 40, "{} documents", all.len());
    for (category, n) in &categories {
        assert!(*n >= 2, "category {category} has {n} document(s)");
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
