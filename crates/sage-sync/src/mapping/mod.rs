//! Magento canonical documents → Sage request bodies. Pure functions: no I/O, so every
//! rule is unit- and snapshot-testable, and the totals are known before posting.
//!
//! Amounts are rounded to cents once, here, with Magento's rounding (half away from
//! zero); lines carry explicit net, tax and total, and Sage's own arithmetic over the
//! body ([`sage_math`]) must give Magento's gross and VAT or nothing is posted
//! ([`documents`] reconciles the two).

pub mod documents;
pub mod sage_math;

use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value, json};

pub use self::{
    documents::{Treatment, map_credit_note, map_invoice},
    sage_math::TaxRates,
};
use crate::{
    outcome::{ErrorClass, Failure},
    policy::{NamePriority, Settings},
};
use ledger_magento_api::canonical::{Address, Contact, Product};

/// Cents, rounded as Magento rounds.
pub fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// A decimal as a JSON number with its exact text.
pub fn num(d: Decimal) -> Value {
    let text = d.normalize().to_string();
    text.parse::<serde_json::Number>()
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// The deterministic `idempotency_id` (32 hex) of one Sage write.
pub fn idempotency_id(binding: &str, kind: &str, key: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, format!("{binding}:{kind}:{key}").as_bytes());
    hex::encode(digest.as_ref())[..32].to_owned()
}

/// Decodes HTML entities (Sage refuses descriptions containing them).
pub fn decode_html(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find('&') {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find(';').filter(|e| *e <= 10) else {
            out.push('&');
            rest = &tail[1..];
            continue;
        };
        let entity = &tail[1..end];
        let decoded = match entity {
            "amp" => Some('&'),
            "lt" => Some('<'),
            "gt" => Some('>'),
            "quot" => Some('"'),
            "apos" | "#39" => Some('\''),
            "nbsp" => Some(' '),
            "trade" => Some('™'),
            "reg" => Some('®'),
            "copy" => Some('©'),
            "euro" => Some('€'),
            "pound" => Some('£'),
            "ndash" => Some('–'),
            "mdash" => Some('—'),
            "hellip" => Some('…'),
            e if e.starts_with("#x") || e.starts_with("#X") => {
                u32::from_str_radix(&e[2..], 16).ok().and_then(char::from_u32)
            }
            e if e.starts_with('#') => e[1..].parse().ok().and_then(char::from_u32),
            _ => None,
        };
        match decoded {
            Some(c) => {
                out.push(c);
                rest = &tail[end + 1..];
            }
            None => {
                out.push('&');
                rest = &tail[1..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// What the mapping needs besides the document.
#[derive(Debug, Clone)]
pub struct Ctx<'a> {
    pub settings: &'a Settings,
    /// The Sage business's country, e.g. `GB`.
    pub business_country: &'a str,
    /// The business's base currency and whether it takes others (`/financial_settings`).
    pub base_currency: &'a str,
    pub multi_currency: bool,
    /// The binding id (idempotency keys).
    pub binding: &'a str,
    /// The business's tax rates, for Sage's arithmetic.
    pub rates: &'a TaxRates,
    /// Where document dates are read (the business's time zone).
    pub time_zone: chrono_tz::Tz,
}

/// Totals of a document as Sage will compute them from our lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Totals {
    pub net: Decimal,
    pub tax: Decimal,
    pub total: Decimal,
}

/// A request body ready to post, with the totals Sage must answer with.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub body: Value,
    pub totals: Totals,
    /// Things worth telling the merchant (e.g. mixed goods and services coerced).
    pub notes: Vec<String>,
    /// How an invoice was booked (its credit notes follow it).
    pub treatment: Option<Treatment>,
}

pub(crate) fn validation(code: &str, message: impl Into<String>) -> Failure {
    Failure::new(ErrorClass::Validation, code, message)
}

pub(crate) fn config(code: &str, message: impl Into<String>) -> Failure {
    Failure::new(ErrorClass::Config, code, message)
}

/// `YYYY-MM-DD` from the canonical `YYYY-MM-DDTHH:MM:SSZ` (or `""`), in UTC.
pub fn date_of(timestamp: &str) -> Option<String> {
    (timestamp.len() >= 10 && chrono::NaiveDate::parse_from_str(&timestamp[..10], "%Y-%m-%d").is_ok())
        .then(|| timestamp[..10].to_owned())
}

/// The business's calendar date of a UTC timestamp (`…Z`): a UK invoice at 23:30Z on
/// 30 June is dated 1 July.
pub fn local_date(timestamp: &str, zone: chrono_tz::Tz) -> Option<String> {
    match chrono::DateTime::parse_from_rfc3339(timestamp) {
        Ok(t) => Some(t.with_timezone(&zone).format("%Y-%m-%d").to_string()),
        Err(_) => date_of(timestamp),
    }
}

/// The time zone of a Sage region, for businesses that set none.
pub fn region_time_zone(region: &str) -> chrono_tz::Tz {
    match region {
        "ie" => chrono_tz::Europe::Dublin,
        "ca" => chrono_tz::America::Toronto,
        "us" => chrono_tz::America::New_York,
        "es" => chrono_tz::Europe::Madrid,
        "fr" => chrono_tz::Europe::Paris,
        "de" => chrono_tz::Europe::Berlin,
        _ => chrono_tz::Europe::London,
    }
}

pub fn sage_address(a: &Address) -> Value {
    let mut o = Map::new();
    let mut lines = a.street.iter().filter(|s| !s.trim().is_empty());
    if let Some(first) = lines.next() {
        o.insert("address_line_1".into(), json!(first));
    }
    let rest: Vec<&String> = lines.collect();
    if !rest.is_empty() {
        o.insert(
            "address_line_2".into(),
            json!(rest.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")),
        );
    }
    if !a.city.is_empty() {
        o.insert("city".into(), json!(a.city));
    }
    if let Some(p) = &a.postcode {
        o.insert("postal_code".into(), json!(p));
    }
    if let Some(r) = &a.region {
        o.insert("region".into(), json!(r));
    }
    if !a.country_id.is_empty() {
        o.insert("country_id".into(), json!(a.country_id));
    }
    Value::Object(o)
}

/// The invoice's reference: the increment id with the optional prefix, never doubled.
pub fn document_reference(prefix: Option<&str>, increment_id: &str) -> String {
    match prefix.filter(|p| !p.is_empty()) {
        Some(p) if !increment_id.starts_with(p) => format!("{p}{increment_id}"),
        _ => increment_id.to_owned(),
    }
}

/// Sage's `exchange_rate` (base per foreign unit) from Magento's base-to-order rate, 10 dp.
pub fn exchange_rate(base_to_order_rate: Option<Decimal>) -> Option<Decimal> {
    base_to_order_rate
        .filter(|r| *r > Decimal::ZERO)
        .map(|r| (Decimal::ONE / r).round_dp(10))
}

/// Who a Sage contact stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContactKey {
    /// A registered customer (Magento id).
    Customer(i64),
    /// A guest, by email.
    Guest(String),
    /// The B2C consolidation contact.
    WebSales,
}

impl ContactKey {
    /// The `entity_xref` id for the contact: customer id; a negative hash for guests; 0 for web sales.
    pub fn xref_id(&self) -> i64 {
        match self {
            Self::Customer(id) => *id,
            Self::WebSales => 0,
            Self::Guest(email) => {
                let d = ring::digest::digest(&ring::digest::SHA256, email.trim().to_lowercase().as_bytes());
                let mut b = [0u8; 8];
                b.copy_from_slice(&d.as_ref()[..8]);
                -(i64::from_le_bytes(b) & i64::MAX).max(1)
            }
        }
    }
}

/// The contact's ≤ 10-character reference: `M{id}` (registered), `G` + hex of the
/// email's SHA-256 (guests), the B2C fallback's; a currency initial when not base.
pub fn contact_reference(key: &ContactKey, currency: &str, ctx: &Ctx<'_>) -> String {
    contact_reference_candidate(key, currency, ctx, 0)
}

/// How many references are tried for one contact before giving up.
pub const REFERENCE_CANDIDATES: u32 = 6;

/// The `attempt`-th reference to try for a contact. The first is the plain one; when Sage
/// already has it for another customer (another store's `M5`, a guest whose short hash
/// collides, a contact locked to another currency), the next ones carry a two-character
/// tag of this binding and the attempt, so two stores never share one.
pub fn contact_reference_candidate(key: &ContactKey, currency: &str, ctx: &Ctx<'_>, attempt: u32) -> String {
    let initial = (!currency.eq_ignore_ascii_case(ctx.base_currency))
        .then(|| currency.chars().next().unwrap_or('X').to_ascii_uppercase());
    let room = if initial.is_some() { 9 } else { 10 };
    let digest = |text: &str| ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    let guest_hash = |email: &str, salt: &str| {
        let d = digest(&format!("{}{salt}", email.trim().to_lowercase()));
        hex::encode(d.as_ref())
    };
    let stem: String = if attempt == 0 {
        match key {
            ContactKey::Customer(id) => format!("M{id}"),
            ContactKey::Guest(email) => format!("G{}", &guest_hash(email, "")[..9]),
            ContactKey::WebSales => ctx.settings.b2c.fallback_contact_reference.to_uppercase(),
        }
    } else {
        let tag: String = base36(&digest(&format!("{}#{attempt}", ctx.binding)).as_ref()[..8])
            .chars()
            .take(2)
            .collect();
        match key {
            ContactKey::Customer(id) => format!("{tag}M{}", base36(&id.unsigned_abs().to_be_bytes())),
            ContactKey::Guest(email) => {
                let hash = guest_hash(email, &format!("#{attempt}"));
                format!("{tag}G{}", base36(&hex::decode(&hash[..16]).unwrap_or_default()))
            }
            ContactKey::WebSales => format!("{tag}{}", ctx.settings.b2c.fallback_contact_reference.to_uppercase()),
        }
    };
    let mut reference: String = stem.chars().take(room).collect();
    if let Some(i) = initial {
        reference.push(i);
    }
    reference
}

/// Big-endian bytes as upper-case base 36, no leading zeros (at least one digit).
fn base36(bytes: &[u8]) -> String {
    let mut n: u128 = 0;
    for b in bytes.iter().take(16) {
        n = (n << 8) | u128::from(*b);
    }
    let digits = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    let mut out = Vec::new();
    loop {
        out.push(digits[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Display name per `customer_name_priority`, with a ` (EUR)` suffix when not base currency.
pub fn contact_name(contact: &Contact, currency: &str, ctx: &Ctx<'_>) -> String {
    let person = [contact.first_name.as_deref(), contact.last_name.as_deref()]
        .into_iter()
        .flatten()
        .filter(|s| !s.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let company = contact.company.clone().filter(|c| !c.trim().is_empty());
    let name = match (ctx.settings.customer_name_priority, company, person.is_empty()) {
        (NamePriority::Company, Some(c), _) => c,
        (NamePriority::Person, Some(c), true) => c,
        (_, _, false) => person,
        (_, None, true) => contact.email.clone(),
    };
    let name = decode_html(&name);
    if currency.eq_ignore_ascii_case(ctx.base_currency) {
        name
    } else {
        format!("{name} ({})", currency.to_uppercase())
    }
}

/// The `contact` body for a customer in one currency.
pub fn map_contact(contact: &Contact, key: &ContactKey, currency: &str, ctx: &Ctx<'_>) -> Value {
    map_contact_with(contact, key, currency, ctx, 0)
}

/// [`map_contact`] with the `attempt`-th reference candidate.
pub fn map_contact_with(contact: &Contact, key: &ContactKey, currency: &str, ctx: &Ctx<'_>, attempt: u32) -> Value {
    let mut o = Map::new();
    let name = match key {
        ContactKey::WebSales => {
            let base = ctx.settings.b2c.fallback_contact_name.clone();
            if currency.eq_ignore_ascii_case(ctx.base_currency) {
                base
            } else {
                format!("{base} ({})", currency.to_uppercase())
            }
        }
        _ => contact_name(contact, currency, ctx),
    };
    o.insert("name".into(), json!(name));
    o.insert("contact_type_ids".into(), json!(["CUSTOMER"]));
    o.insert(
        "reference".into(),
        json!(contact_reference_candidate(key, currency, ctx, attempt)),
    );
    o.insert("currency_id".into(), json!(currency.to_uppercase()));
    if !matches!(key, ContactKey::WebSales) {
        let billing = contact.addresses.iter().find(|a| a.kind == "billing");
        let shipping = contact.addresses.iter().find(|a| a.kind == "shipping").or(billing);
        if let Some(b) = billing {
            o.insert("main_address".into(), sage_address(b));
        }
        if let Some(s) = shipping {
            o.insert("delivery_address".into(), sage_address(s));
        }
        let mut person = Map::new();
        let person_name = [contact.first_name.as_deref(), contact.last_name.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        person.insert(
            "name".into(),
            json!(if person_name.is_empty() {
                contact.email.clone()
            } else {
                decode_html(&person_name)
            }),
        );
        person.insert("email".into(), json!(contact.email));
        if let Some(phone) = &contact.phone {
            person.insert("telephone".into(), json!(phone));
        }
        person.insert("is_main_contact".into(), json!(true));
        o.insert("main_contact_person".into(), Value::Object(person));
        let country = billing.map(|b| b.country_id.as_str()).unwrap_or_default();
        o.insert("tax_treatment".into(), tax_treatment(country, ctx));
    } else if let Some(email) = &ctx.settings.b2c.fallback_contact_email {
        o.insert(
            "main_contact_person".into(),
            json!({ "name": name, "email": email, "is_main_contact": true }),
        );
    }
    Value::Object(o)
}

const EU: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT",
    "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

fn tax_treatment(country: &str, ctx: &Ctx<'_>) -> Value {
    let home = country.is_empty() || country.eq_ignore_ascii_case(ctx.business_country);
    let eu = !home && EU.contains(&country.to_ascii_uppercase().as_str());
    json!({ "home_tax": home, "eu_tax_registered": false, "eu_not_tax_registered": eu, "rest_of_world_tax": !home && !eu })
}

/// A paid invoice's receipt: what Sage's `contact_payment` body is made of.
#[derive(Debug, Clone, Copy)]
pub struct Receipt<'a> {
    /// The Magento invoice (feeds the idempotency id: one receipt per invoice).
    pub invoice_id: i64,
    pub increment_id: &'a str,
    pub contact_id: &'a str,
    pub sage_invoice_id: &'a str,
    pub bank_account_id: &'a str,
    pub amount: Decimal,
    /// How much of it goes to the invoice (what it still owes); the rest stays on account.
    pub allocate: Decimal,
    pub currency: &'a str,
    /// The invoice's rate; none when Sage applied its own to the invoice.
    pub sage_rate: Option<Decimal>,
    /// The business's local date of the payment.
    pub date: &'a str,
}

/// The payment body for a paid invoice, allocated to the Sage invoice.
pub fn map_payment(receipt: &Receipt<'_>, ctx: &Ctx<'_>) -> Result<Value, Failure> {
    let &Receipt {
        invoice_id,
        increment_id,
        contact_id,
        sage_invoice_id,
        bank_account_id,
        amount,
        allocate,
        currency,
        sage_rate,
        date,
    } = receipt;
    let amount = cents(amount);
    let allocate = cents(allocate).min(amount);
    let mut o = Map::new();
    o.insert("transaction_type_id".into(), json!("CUSTOMER_RECEIPT"));
    o.insert("contact_id".into(), json!(contact_id));
    o.insert("bank_account_id".into(), json!(bank_account_id));
    o.insert("date".into(), json!(date));
    o.insert("total_amount".into(), num(amount));
    // The invoice's rate; none when Sage applied its own to the invoice.
    o.insert("currency_id".into(), json!(currency.to_uppercase()));
    if !currency.eq_ignore_ascii_case(ctx.base_currency) {
        if !ctx.multi_currency {
            return Err(config(
                "multi_currency_disabled",
                format!(
                    "The payment is in {currency} but the Sage business works in {} only: turn on multi-currency in Sage, then retry.",
                    ctx.base_currency
                ),
            ));
        }
        if let Some(rate) = sage_rate {
            o.insert("exchange_rate".into(), num(rate));
        }
    }
    let reference: String = document_reference(ctx.settings.invoice_number_prefix.as_deref(), increment_id)
        .chars()
        .take(25)
        .collect();
    o.insert("reference".into(), json!(reference));
    // Whatever the invoice no longer owes (a refund got there first) stays on account.
    if allocate > Decimal::ZERO {
        o.insert(
            "allocated_artefacts".into(),
            json!([{ "artefact_id": sage_invoice_id, "amount": num(allocate) }]),
        );
    }
    o.insert(
        "idempotency_id".into(),
        json!(idempotency_id(ctx.binding, "contact_payment", &invoice_id.to_string())),
    );
    Ok(Value::Object(o))
}

/// A product, service or stock item write: where it goes and its body.
#[derive(Debug, Clone)]
pub struct Item {
    /// `/products`, `/services` or `/stock_items`.
    pub path: &'static str,
    /// The body's wrapper key (`product`, `service`, `stock_item`).
    pub wrapper: &'static str,
    pub body: Value,
}

/// `product.upserted` → the item body for `kind` (`product`, `service`, `stock_item`),
/// at the catalogue price as Magento holds it (with tax when the store enters prices with
/// tax, and saying so). The special price is not Sage's price: the module sends it
/// without its dates, so an expired one cannot be told from a running one.
pub fn map_item(p: &Product, kind: &str, settings: &Settings) -> Result<Item, Failure> {
    let sales = settings.default_ledger_account_id.clone().ok_or_else(|| {
        config(
            "ledger_account_not_set",
            "Choose a default sales ledger account in the binding's settings.",
        )
    })?;
    let price = cents(p.price.unwrap_or_default());
    let includes_tax = settings.catalog_prices_include_tax;
    let mut body = json!({
        "item_code": p.sku,
        "description": decode_html(&p.name),
        "sales_ledger_account_id": sales,
        "active": true,
    });
    match &settings.default_purchase_ledger_account_id {
        Some(purchase) => body["purchase_ledger_account_id"] = json!(purchase),
        // Sage requires it on products and stock items, not on services.
        None if kind != "service" => {
            return Err(config(
                "purchase_ledger_account_not_set",
                "Choose a default purchase ledger account in the binding's settings to sync products.",
            ));
        }
        None => {}
    }
    if let Some(cost) = p.cost {
        body["cost_price"] = num(cents(cost));
    }
    let (path, wrapper) = match kind {
        "service" => ("/services", "service"),
        "stock_item" => ("/stock_items", "stock_item"),
        _ => ("/products", "product"),
    };
    if kind == "service" {
        body["sales_rates"] =
            json!([{ "rate_name": "Selling Price", "rate": num(price), "rate_includes_tax": includes_tax }]);
    } else {
        body["sales_prices"] =
            json!([{ "price_name": "Selling Price", "price": num(price), "price_includes_tax": includes_tax }]);
    }
    Ok(Item { path, wrapper, body })
}

/// The movement that brings a stock item's quantity to Magento's (`diff` = Magento − Sage).
pub fn map_stock_movement(p: &Product, stock_item_id: &str, diff: Decimal, date: &str, binding: &str) -> Value {
    let key = format!(
        "{}:{}:{}",
        p.magento_id,
        p.updated_at.clone().unwrap_or_default(),
        p.stock_qty.unwrap_or_default()
    );
    json!({ "stock_movement": {
        "stock_item_id": stock_item_id,
        "date": date,
        "quantity": num(diff),
        "cost_price": num(cents(p.cost.unwrap_or_default())),
        "details": "Stock level from Magento",
        "idempotency_id": idempotency_id(binding, "stock_movement", &key),
    }})
}

/// Allocates `amount` of a credit note against its invoice (both on one contact).
pub fn map_allocation(
    memo_id: i64,
    contact_id: &str,
    date: &str,
    invoice_sage_id: &str,
    note_sage_id: &str,
    amount: Decimal,
    binding: &str,
) -> Value {
    json!({ "contact_allocation": {
        "transaction_type_id": "CUSTOMER_ALLOCATION",
        "contact_id": contact_id,
        "date": date,
        "allocated_artefacts": [
            { "artefact_id": invoice_sage_id, "amount": num(amount) },
            { "artefact_id": note_sage_id, "amount": num(-amount) },
        ],
        "idempotency_id": idempotency_id(binding, "contact_allocation", &format!("{memo_id}:{amount}")),
    }})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_entities_are_decoded() {
        assert_eq!(decode_html("Desk Lamp&trade; &amp; Shade"), "Desk Lamp™ & Shade");
        assert_eq!(decode_html("T&#8209;Shirt &#x2019;s"), "T‑Shirt ’s");
        assert_eq!(decode_html("Fish & Chips &unknown; &"), "Fish & Chips &unknown; &");
    }

    #[test]
    fn references_never_double_the_prefix() {
        assert_eq!(document_reference(Some("MG-"), "000000042"), "MG-000000042");
        assert_eq!(document_reference(Some("MG-"), "MG-000000042"), "MG-000000042");
        assert_eq!(document_reference(None, "000000042"), "000000042");
    }

    #[test]
    fn dates_are_the_business_s() {
        let london = chrono_tz::Europe::London;
        assert_eq!(
            local_date("2026-06-30T23:30:00Z", london).as_deref(),
            Some("2026-07-01")
        );
        assert_eq!(
            local_date("2026-12-31T23:30:00Z", london).as_deref(),
            Some("2026-12-31")
        );
        assert_eq!(
            local_date("2026-06-30T03:30:00Z", chrono_tz::America::Toronto).as_deref(),
            Some("2026-06-29")
        );
        assert_eq!(local_date("", london), None);
    }

    #[test]
    fn exchange_rates_have_ten_places() {
        assert_eq!(
            exchange_rate(Some("1.17".parse().unwrap())).unwrap().to_string(),
            "0.8547008547"
        );
    }

    #[test]
    fn contact_references_fit_ten_characters() {
        let settings = Settings::default();
        let rates = TaxRates::default();
        let ctx = Ctx {
            settings: &settings,
            business_country: "GB",
            base_currency: "GBP",
            multi_currency: true,
            binding: "b",
            rates: &rates,
            time_zone: chrono_tz::Europe::London,
        };
        assert_eq!(contact_reference(&ContactKey::Customer(42), "GBP", &ctx), "M42");
        assert_eq!(contact_reference(&ContactKey::Customer(42), "EUR", &ctx), "M42E");
        let guest = contact_reference(&ContactKey::Guest("A@Example.com".into()), "GBP", &ctx);
        assert_eq!(guest.len(), 10);
        assert!(guest.starts_with('G'));
        assert_eq!(
            guest,
            contact_reference(&ContactKey::Guest("a@example.com ".into()), "GBP", &ctx),
            "case and spaces do not matter"
        );
        let euro_guest = contact_reference(&ContactKey::Guest("a@example.com".into()), "EUR", &ctx);
        assert_eq!(euro_guest.len(), 10);
        assert!(euro_guest.ends_with('E'));
        assert_eq!(contact_reference(&ContactKey::WebSales, "USD", &ctx), "WEBSALESU");
        // Further candidates: distinct, tagged by binding and attempt, still ≤ 10.
        let other = Ctx {
            binding: "c",
            ..ctx.clone()
        };
        for key in [
            ContactKey::Customer(42),
            ContactKey::Customer(i64::from(i32::MAX)),
            ContactKey::Guest("a@example.com".into()),
            ContactKey::WebSales,
        ] {
            for currency in ["GBP", "EUR"] {
                let mut seen = std::collections::HashSet::new();
                for attempt in 0..REFERENCE_CANDIDATES {
                    let r = contact_reference_candidate(&key, currency, &ctx, attempt);
                    assert!(r.chars().count() <= 10, "{r}");
                    assert!(
                        seen.insert(r.clone()),
                        "{key:?} {currency} attempt {attempt} repeats {r}"
                    );
                    if attempt > 0 {
                        assert_ne!(
                            r,
                            contact_reference_candidate(&key, currency, &other, attempt),
                            "per binding"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn idempotency_ids_are_32_hex_and_stable() {
        let a = idempotency_id("b1", "sales_invoice", "42");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a, idempotency_id("b1", "sales_invoice", "42"));
        assert_ne!(a, idempotency_id("b1", "sales_credit_note", "42"));
    }
}
