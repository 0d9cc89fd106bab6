//! A binding's sync settings: policy knobs, default mappings, the tax-rate and
//! payment-method maps, B2C consolidation and commercial knobs. Validated against the
//! Sage reference cache on save; snapshotted onto each sync run when its event arrives,
//! so a change applies to the next event, never to one in flight.

use std::collections::BTreeMap;

use ledger_core::{
    AppState, BindingId, FieldError, Problem,
    audit::{self, Actor},
};
use ledger_sage_vault::reference::{self, Reference};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
pub enum NamePriority {
    #[default]
    Company,
    Person,
}

/// Mirrors Magento's "Tax Calculation Based On": whose address is the place of supply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum TaxBasis {
    /// Magento's default.
    #[default]
    Shipping,
    Billing,
    /// The store's own country (origin).
    Origin,
}

/// What a cancellation seen after posting does to the Sage invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema, Default)]
#[serde(rename_all = "snake_case")]
pub enum CancelledInvoiceAction {
    /// Void it (Sage keeps it, marked void); a paid invoice gets a credit note instead.
    #[default]
    Void,
    /// Post a credit note for it and allocate the two.
    CreditNote,
}

/// B2C consolidation: small consumer orders posted to one "web sales" contact.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct B2c {
    pub enabled: bool,
    pub fallback_contact_name: String,
    pub fallback_contact_email: Option<String>,
    /// ≤ 10 characters, leaving room for a currency initial.
    pub fallback_contact_reference: String,
    /// Orders at or above this total get their own contact (0 = off).
    #[schema(value_type = String)]
    pub min_total_for_individual: Decimal,
    pub always_individual_for_b2b: bool,
}

impl Default for B2c {
    fn default() -> Self {
        Self {
            enabled: false,
            fallback_contact_name: "Magento Web Sales".to_owned(),
            fallback_contact_email: None,
            fallback_contact_reference: "WEBSALES".to_owned(),
            min_total_for_individual: Decimal::ZERO,
            always_individual_for_b2b: true,
        }
    }
}

/// Every setting, with the module's documented defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(default)]
pub struct Settings {
    pub sync_unpaid_invoices: bool,
    pub sync_zero_value_invoices: bool,
    /// Documents created before this date are skipped (`outside_sync_since`).
    pub sync_since: Option<chrono::NaiveDate>,
    /// Website ids to sync; empty = all.
    pub website_filter: Vec<i64>,
    pub store_filter: Vec<i64>,
    pub sync_products: bool,
    pub sync_stock: bool,
    pub default_tax_rate_id: Option<String>,
    /// Sales-visible ledger account for invoice and credit-note lines.
    pub default_ledger_account_id: Option<String>,
    pub default_bank_account_id: Option<String>,
    /// Expenses-visible account; required when products sync.
    pub default_purchase_ledger_account_id: Option<String>,
    /// Tax percentage as two decimals ("20.00") → Sage tax rate id.
    pub tax_rate_map: BTreeMap<String, String>,
    /// Magento payment method code → Sage bank account id, or null (leave unpaid).
    pub payment_method_map: BTreeMap<String, Option<String>>,
    pub b2c: B2c,
    /// Prefix on invoice and credit-note references, never doubled.
    pub invoice_number_prefix: Option<String>,
    pub customer_name_priority: NamePriority,
    /// Magento product type → GOODS or SERVICES, for sales outside the business's country.
    pub product_type_eu_goods_map: BTreeMap<String, String>,
    pub default_eu_goods_services_type: String,
    /// Mirrors Magento's "Tax Calculation Based On" (the place of supply of lines Magento
    /// did not tax).
    pub tax_based_on: TaxBasis,
    /// Mirrors Magento's "Catalog Prices: Including Tax" (product prices sent to Sage
    /// say they include tax).
    pub catalog_prices_include_tax: bool,
    /// The business's time zone for document dates (IANA, e.g. `Europe/London`); unset:
    /// the Sage region's.
    pub time_zone: Option<String>,
    /// Magento website id → that website's base currency, where it differs from the
    /// Sage business's (Magento's rates are relative to it).
    pub website_base_currencies: BTreeMap<String, String>,
    pub cancelled_invoice_action: CancelledInvoiceAction,
    /// Sales ledger account for what Magento's totals hold that the module's data does
    /// not explain (payment fees, gift cards, Fixed Product Tax); unset: such a
    /// document fails, naming the difference, and nothing is posted.
    pub unexplained_difference_account_id: Option<String>,
    /// Sales ledger account for shipping booked as a line (default: the sales account).
    pub shipping_ledger_account_id: Option<String>,
    /// The Sage business these settings' ids belong to (set by the ledger; connecting a
    /// different business chooses them afresh).
    pub sage_business_id: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        let goods = ["simple", "configurable", "bundle", "grouped"].map(|t| (t.to_owned(), "GOODS".to_owned()));
        let services = ["virtual", "downloadable"].map(|t| (t.to_owned(), "SERVICES".to_owned()));
        Self {
            sync_unpaid_invoices: true,
            sync_zero_value_invoices: true,
            sync_since: None,
            website_filter: Vec::new(),
            store_filter: Vec::new(),
            sync_products: false,
            sync_stock: false,
            default_tax_rate_id: None,
            default_ledger_account_id: None,
            default_bank_account_id: None,
            default_purchase_ledger_account_id: None,
            tax_rate_map: BTreeMap::new(),
            payment_method_map: BTreeMap::new(),
            b2c: B2c::default(),
            invoice_number_prefix: None,
            customer_name_priority: NamePriority::Company,
            product_type_eu_goods_map: goods.into_iter().chain(services).collect(),
            default_eu_goods_services_type: "GOODS".to_owned(),
            tax_based_on: TaxBasis::Shipping,
            catalog_prices_include_tax: false,
            time_zone: None,
            website_base_currencies: BTreeMap::new(),
            cancelled_invoice_action: CancelledInvoiceAction::Void,
            unexplained_difference_account_id: None,
            shipping_ledger_account_id: None,
            sage_business_id: None,
        }
    }
}

/// "20", " 20.0 ", "20.00" → "20.00"; a country-qualified key (a destination rate under
/// OSS) keeps its country: "de:19" → "DE:19.00".
pub fn canonical_percentage(key: &str) -> Option<String> {
    let (country, pct) = match key.trim().split_once(':') {
        Some((c, p)) => {
            let c = c.trim().to_ascii_uppercase();
            (c.len() == 2 && c.chars().all(|ch| ch.is_ascii_uppercase())).then_some(())?;
            (Some(c), p)
        }
        None => (None, key),
    };
    let d: Decimal = pct.trim().trim_end_matches('%').parse().ok()?;
    let pct = (d >= Decimal::ZERO && d <= Decimal::ONE_HUNDRED).then(|| format!("{:.2}", d.round_dp(2)))?;
    Some(match country {
        Some(c) => format!("{c}:{pct}"),
        None => pct,
    })
}

/// A tax-rate map key's parts: (country, percentage).
pub fn rate_key(key: &str) -> Option<(Option<&str>, Decimal)> {
    match key.split_once(':') {
        Some((c, p)) => Some((Some(c), p.parse().ok()?)),
        None => Some((None, key.parse().ok()?)),
    }
}

fn ids(reference: &Reference, kind: &str) -> Vec<String> {
    reference
        .kinds
        .get(kind)
        .map(|l| {
            l.items
                .iter()
                .filter_map(|i| i["id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn field(name: &str, code: &str, message: impl Into<String>) -> FieldError {
    FieldError {
        field: name.into(),
        code: code.into(),
        message: message.into(),
    }
}

/// Canonicalises map keys and checks every id against the reference cache. Returns the
/// settings to store, or every problem at once (nothing is saved then).
pub fn validate(mut s: Settings, reference: &Reference) -> Result<Settings, Vec<FieldError>> {
    let mut errors = Vec::new();
    let tax = ids(reference, "tax_rates");
    let sales = ids(reference, "ledger_accounts_sales");
    let expenses = ids(reference, "ledger_accounts_expenses");
    let banks = ids(reference, "bank_accounts");
    let check = |errors: &mut Vec<FieldError>, name: &str, value: &Option<String>, known: &[String], what: &str| {
        if let Some(v) = value
            && !known.contains(v)
        {
            errors.push(field(
                name,
                "not_in_reference",
                format!("({v}) is not one of the business's {what}; refresh the reference data or pick another"),
            ));
        }
    };
    check(
        &mut errors,
        "default_tax_rate_id",
        &s.default_tax_rate_id,
        &tax,
        "tax rates",
    );
    check(
        &mut errors,
        "default_ledger_account_id",
        &s.default_ledger_account_id,
        &sales,
        "sales ledger accounts",
    );
    check(
        &mut errors,
        "default_bank_account_id",
        &s.default_bank_account_id,
        &banks,
        "bank accounts",
    );
    check(
        &mut errors,
        "default_purchase_ledger_account_id",
        &s.default_purchase_ledger_account_id,
        &expenses,
        "expense ledger accounts",
    );

    let mut canonical = BTreeMap::new();
    for (key, rate) in std::mem::take(&mut s.tax_rate_map) {
        match canonical_percentage(&key) {
            None => errors.push(field(
                &format!("tax_rate_map.{key}"),
                "invalid_format",
                "keys are percentages such as 20.00, or a country and a percentage such as DE:19.00",
            )),
            Some(k) => {
                if !tax.contains(&rate) {
                    errors.push(field(
                        &format!("tax_rate_map.{k}"),
                        "not_in_reference",
                        format!("({rate}) is not one of the business's tax rates"),
                    ));
                }
                canonical.insert(k, rate);
            }
        }
    }
    s.tax_rate_map = canonical;
    for (method, account) in &s.payment_method_map {
        if method.trim().is_empty() {
            errors.push(field(
                "payment_method_map",
                "invalid_format",
                "payment method codes cannot be empty",
            ));
        }
        if let Some(a) = account
            && !banks.contains(a)
        {
            errors.push(field(
                &format!("payment_method_map.{method}"),
                "not_in_reference",
                format!("({a}) is not one of the business's bank accounts"),
            ));
        }
    }
    if s.sync_products && s.default_purchase_ledger_account_id.is_none() {
        errors.push(field(
            "default_purchase_ledger_account_id",
            "required",
            "syncing products needs an expense ledger account",
        ));
    }
    check(
        &mut errors,
        "unexplained_difference_account_id",
        &s.unexplained_difference_account_id,
        &sales,
        "sales ledger accounts",
    );
    check(
        &mut errors,
        "shipping_ledger_account_id",
        &s.shipping_ledger_account_id,
        &sales,
        "sales ledger accounts",
    );
    if let Some(zone) = s.time_zone.as_deref().map(str::trim).filter(|z| !z.is_empty()) {
        if zone.parse::<chrono_tz::Tz>().is_err() {
            errors.push(field(
                "time_zone",
                "invalid_format",
                "an IANA time zone such as Europe/London",
            ));
        }
    } else {
        s.time_zone = None;
    }
    let mut currencies = BTreeMap::new();
    for (website, currency) in std::mem::take(&mut s.website_base_currencies) {
        let code = currency.trim().to_ascii_uppercase();
        if website.trim().parse::<u32>().is_err() {
            errors.push(field(
                &format!("website_base_currencies.{website}"),
                "invalid_format",
                "keys are Magento website ids such as 1",
            ));
        } else if code.len() != 3 || !code.chars().all(|c| c.is_ascii_uppercase()) {
            errors.push(field(
                &format!("website_base_currencies.{website}"),
                "invalid_format",
                "a three-letter currency code such as EUR",
            ));
        } else {
            currencies.insert(website.trim().to_owned(), code);
        }
    }
    s.website_base_currencies = currencies;
    if s.sync_stock && !s.sync_products {
        errors.push(field(
            "sync_stock",
            "invalid",
            "stock syncs only together with products",
        ));
    }
    let reference_len = s.b2c.fallback_contact_reference.chars().count();
    if s.b2c.enabled && !(1..=9).contains(&reference_len) {
        errors.push(field(
            "b2c.fallback_contact_reference",
            "invalid_format",
            "1 to 9 characters (one is kept for the currency initial)",
        ));
    }
    if s.b2c.min_total_for_individual < Decimal::ZERO {
        errors.push(field(
            "b2c.min_total_for_individual",
            "invalid_format",
            "cannot be negative",
        ));
    }
    if let Some(prefix) = &s.invoice_number_prefix
        && (prefix.len() > 10 || prefix.chars().any(char::is_whitespace))
    {
        errors.push(field(
            "invoice_number_prefix",
            "invalid_format",
            "up to 10 characters, no spaces",
        ));
    }
    for (name, kind) in s.product_type_eu_goods_map.iter().chain(std::iter::once((
        &"default".to_owned(),
        &s.default_eu_goods_services_type,
    ))) {
        if kind != "GOODS" && kind != "SERVICES" {
            errors.push(field(
                &format!("product_type_eu_goods_map.{name}"),
                "invalid_format",
                "GOODS or SERVICES",
            ));
        }
    }
    if errors.is_empty() { Ok(s) } else { Err(errors) }
}

fn percentage(item: &Value) -> Option<Decimal> {
    match &item["percentage"] {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

/// The happy path needs no configuration: defaults chosen from the reference cache —
/// the business's standard sales account (nominal 4000, else the first sales account),
/// tax rates matched by percentage, the first expense account, no bank account.
pub fn defaults_from(reference: &Reference) -> Settings {
    let mut s = Settings::default();
    let items = |kind: &str| reference.kinds.get(kind).map(|l| l.items.clone()).unwrap_or_default();
    let sales = items("ledger_accounts_sales");
    s.default_ledger_account_id = sales
        .iter()
        .find(|a| a["nominal_code"].as_i64() == Some(4000))
        .or_else(|| sales.first())
        .and_then(|a| a["id"].as_str().map(str::to_owned));
    s.default_purchase_ledger_account_id = items("ledger_accounts_expenses")
        .first()
        .and_then(|a| a["id"].as_str().map(str::to_owned));
    let mut standard: Option<(Decimal, String)> = None;
    for rate in items("tax_rates") {
        let (Some(pct), Some(id)) = (percentage(&rate), rate["id"].as_str()) else {
            continue;
        };
        // Exempt/no-tax rates are not "a 0 % rate": prefer the zero rate for 0.00. A
        // destination (OSS) rate is keyed by its country: "DE:19.00".
        let key = match rate["country"]["id"].as_str().filter(|c| c.len() == 2) {
            Some(country) => format!("{}:{:.2}", country.to_ascii_uppercase(), pct.round_dp(2)),
            None => format!("{:.2}", pct.round_dp(2)),
        };
        let destination = key.contains(':');
        let preferred = !id.contains("EXEMPT") && !id.contains("NO_TAX");
        if preferred && (!s.tax_rate_map.contains_key(&key) || id.ends_with("_ZERO") || id.ends_with("_STANDARD")) {
            s.tax_rate_map.insert(key, id.to_owned());
        }
        if preferred && !destination && standard.as_ref().is_none_or(|(p, _)| pct > *p) {
            standard = Some((pct, id.to_owned()));
        }
    }
    s.default_tax_rate_id = standard.map(|(_, id)| id);
    s
}

/// Every code (error code or skip reason) a settings change can fix, by the settings
/// that address it.
pub const FIXABLE_CODES: &[&str] = &[
    "payment_method_not_mapped",
    "payment_left_unposted",
    "tax_rate_not_mapped",
    "zero_tax_rate_not_mapped",
    "ledger_account_not_set",
    "purchase_ledger_account_not_set",
    "total_mismatch",
    "outside_website_filter",
    "outside_store_filter",
    "outside_sync_since",
    "unpaid_invoice",
    "zero_value_invoice",
    "products_not_synced",
    "multi_currency_disabled",
];

/// The codes a change from `before` to `after` addresses: runs held back by them may
/// now go through.
pub fn fixable_codes(before: &Settings, after: &Settings) -> Vec<&'static str> {
    let mut codes = Vec::new();
    let mut add = |changed: bool, these: &[&'static str]| {
        if changed {
            codes.extend(these.iter().copied().filter(|c| !codes.contains(c)).collect::<Vec<_>>());
        }
    };
    add(
        before.payment_method_map != after.payment_method_map
            || before.default_bank_account_id != after.default_bank_account_id,
        &["payment_method_not_mapped"],
    );
    add(
        before.tax_rate_map != after.tax_rate_map || before.default_tax_rate_id != after.default_tax_rate_id,
        &["tax_rate_not_mapped", "zero_tax_rate_not_mapped", "total_mismatch"],
    );
    add(
        before.default_ledger_account_id != after.default_ledger_account_id,
        &["ledger_account_not_set"],
    );
    add(
        before.default_purchase_ledger_account_id != after.default_purchase_ledger_account_id,
        &["purchase_ledger_account_not_set"],
    );
    add(
        before.unexplained_difference_account_id != after.unexplained_difference_account_id
            || before.shipping_ledger_account_id != after.shipping_ledger_account_id
            || before.tax_based_on != after.tax_based_on
            || before.catalog_prices_include_tax != after.catalog_prices_include_tax,
        &["total_mismatch", "tax_rate_not_mapped"],
    );
    add(
        before.website_filter != after.website_filter,
        &["outside_website_filter"],
    );
    add(before.store_filter != after.store_filter, &["outside_store_filter"]);
    add(before.sync_since != after.sync_since, &["outside_sync_since"]);
    add(
        before.sync_unpaid_invoices != after.sync_unpaid_invoices,
        &["unpaid_invoice"],
    );
    add(
        before.sync_zero_value_invoices != after.sync_zero_value_invoices,
        &["zero_value_invoice"],
    );
    add(before.sync_products != after.sync_products, &["products_not_synced"]);
    add(
        before.website_base_currencies != after.website_base_currencies,
        &["multi_currency_disabled"],
    );
    codes
}

/// The binding's settings; on first use, defaults from the reference cache (recorded).
/// Settings chosen for another Sage business than the one connected now have their
/// Sage ids (accounts, tax rates, bank accounts) chosen afresh from the new business's
/// reference data, recorded in the audit trail; the merchant's other choices stay.
pub async fn load(state: &AppState, binding: BindingId) -> Result<Settings, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT s.settings AS "settings?", c.business_id AS "business_id?"
           FROM (SELECT 1) one
           LEFT JOIN binding_settings s ON s.binding_id = $1
           LEFT JOIN sage_connections c ON c.binding_id = $1"#,
        binding.0
    )
    .fetch_one(&state.db)
    .await?;
    let business = row.business_id.filter(|b| !b.is_empty());
    if let Some(v) = row.settings {
        let settings: Settings = serde_json::from_value(v).unwrap_or_default();
        return match (&settings.sage_business_id, &business) {
            (Some(chosen_for), Some(now)) if chosen_for != now => rebase(state, binding, settings, now).await,
            (None, Some(now)) => {
                // Settings from before they recorded their business: theirs is the current one.
                let settings = Settings {
                    sage_business_id: Some(now.clone()),
                    ..settings
                };
                store(state, binding, &settings, "system:business").await?;
                Ok(settings)
            }
            _ => Ok(settings),
        };
    }
    let reference = reference::load(&state.db, binding).await?;
    if reference.kinds.is_empty() {
        return Ok(Settings::default());
    }
    let settings = Settings {
        sage_business_id: business,
        ..defaults_from(&reference)
    };
    sqlx::query!(
        "INSERT INTO binding_settings (binding_id, settings, updated_by) VALUES ($1, $2, 'system:defaults') ON CONFLICT DO NOTHING",
        binding.0,
        serde_json::to_value(&settings).unwrap_or_default()
    )
    .execute(&state.db)
    .await?;
    Ok(settings)
}

async fn store(state: &AppState, binding: BindingId, settings: &Settings, by: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE binding_settings SET settings = $2, updated_at = now(), updated_by = $3 WHERE binding_id = $1",
        binding.0,
        serde_json::to_value(settings).unwrap_or_default(),
        by
    )
    .execute(&state.db)
    .await?;
    Ok(())
}

/// Settings made for another business, moved to `business`: every Sage id is chosen
/// again from its reference data (payment methods are unmapped, so their payments say
/// so rather than go to a bank account of the old business).
async fn rebase(state: &AppState, binding: BindingId, old: Settings, business: &str) -> Result<Settings, sqlx::Error> {
    let reference = reference::load(&state.db, binding).await?;
    let fresh = defaults_from(&reference);
    let settings = Settings {
        sage_business_id: Some(business.to_owned()),
        default_tax_rate_id: fresh.default_tax_rate_id,
        default_ledger_account_id: fresh.default_ledger_account_id,
        default_bank_account_id: fresh.default_bank_account_id,
        default_purchase_ledger_account_id: fresh.default_purchase_ledger_account_id,
        tax_rate_map: fresh.tax_rate_map,
        payment_method_map: BTreeMap::new(),
        unexplained_difference_account_id: None,
        shipping_ledger_account_id: None,
        ..old.clone()
    };
    let mut tx = state.db.begin().await?;
    sqlx::query!(
        "UPDATE binding_settings SET settings = $2, updated_at = now(), updated_by = 'system:new_business' WHERE binding_id = $1",
        binding.0,
        serde_json::to_value(&settings).unwrap_or_default()
    )
    .execute(&mut *tx)
    .await?;
    let tenant = sqlx::query_scalar!(
        r#"SELECT tenant_id AS "tenant_id: ledger_core::TenantId" FROM connector_bindings WHERE id = $1"#,
        binding.0
    )
    .fetch_one(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor: Actor::System,
            tenant_id: Some(tenant),
            binding_id: Some(binding),
            action: "settings.rebased",
            details: serde_json::json!({
                "from_business": old.sage_business_id,
                "to_business": business,
                "unmapped_payment_methods": old.payment_method_map.keys().collect::<Vec<_>>(),
            }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(settings)
}

/// Why settings were not saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    /// The settings are refused field by field; nothing was saved.
    #[error("the settings are refused ({} field errors)", .0.len())]
    Invalid(Vec<FieldError>),
    #[error(transparent)]
    Database(#[from] sqlx::Error),
}

impl From<SaveError> for Problem {
    fn from(err: SaveError) -> Self {
        match err {
            SaveError::Invalid(errors) => Problem::validation(errors),
            SaveError::Database(e) => e.into(),
        }
    }
}

/// Validates and stores settings, recording the change in the audit trail.
pub async fn save(
    state: &AppState,
    binding: BindingId,
    tenant: ledger_core::TenantId,
    settings: Settings,
    actor: Actor,
) -> Result<Settings, SaveError> {
    let reference = reference::load(&state.db, binding).await?;
    let before = load(state, binding).await?;
    let mut settings = validate(settings, &reference).map_err(SaveError::Invalid)?;
    // Whose ids these are is the ledger's to say, not the form's.
    settings.sage_business_id.clone_from(&before.sage_business_id);
    let mut tx = state.db.begin().await?;
    let value = serde_json::to_value(&settings).unwrap_or_default();
    sqlx::query!(
        "INSERT INTO binding_settings (binding_id, settings, updated_by) VALUES ($1, $2, $3)
         ON CONFLICT (binding_id) DO UPDATE SET settings = $2, updated_at = now(), updated_by = $3",
        binding.0,
        value,
        actor.as_text()
    )
    .execute(&mut *tx)
    .await?;
    audit::record(
        &mut tx,
        audit::Entry {
            actor,
            tenant_id: Some(tenant),
            binding_id: Some(binding),
            action: "settings.updated",
            details: serde_json::json!({ "before": before, "after": settings }),
            request_id: None,
        },
    )
    .await?;
    tx.commit().await?;
    Ok(settings)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference() -> Reference {
        let list = |items: Value| ledger_sage_vault::reference::ReferenceList {
            items: serde_json::from_value(items).unwrap(),
            fetched_at: chrono::Utc::now(),
        };
        Reference {
            kinds: [
                (
                    "tax_rates".to_owned(),
                    list(serde_json::json!([
                    {"id": "GB_STANDARD", "percentage": "20.0"}, {"id": "GB_LOWER", "percentage": "5.0"},
                    {"id": "GB_ZERO", "percentage": "0.0"}, {"id": "GB_EXEMPT", "percentage": "0.0"},
                    {"id": "DE_DEST_STANDARD", "percentage": "19.0", "country": {"id": "DE"}}])),
                ),
                (
                    "ledger_accounts_sales".to_owned(),
                    list(serde_json::json!([{"id": "s1", "nominal_code": 4010}, {"id": "s0", "nominal_code": 4000}])),
                ),
                (
                    "ledger_accounts_expenses".to_owned(),
                    list(serde_json::json!([{"id": "e1", "nominal_code": 5000}])),
                ),
                ("bank_accounts".to_owned(), list(serde_json::json!([{"id": "b1"}]))),
            ]
            .into_iter()
            .collect(),
            fetched_at: Some(chrono::Utc::now()),
        }
    }

    #[test]
    fn defaults_come_from_the_reference_cache() {
        let s = defaults_from(&reference());
        assert_eq!(s.default_ledger_account_id.as_deref(), Some("s0"));
        assert_eq!(s.default_tax_rate_id.as_deref(), Some("GB_STANDARD"));
        assert_eq!(s.tax_rate_map.get("20.00").map(String::as_str), Some("GB_STANDARD"));
        assert_eq!(s.tax_rate_map.get("0.00").map(String::as_str), Some("GB_ZERO"));
        assert_eq!(
            s.tax_rate_map.get("DE:19.00").map(String::as_str),
            Some("DE_DEST_STANDARD"),
            "a destination rate is keyed by its country"
        );
        assert_eq!(
            s.default_bank_account_id, None,
            "payments stay unpaid until a method is mapped"
        );
    }

    #[test]
    fn keys_are_canonicalised_and_stale_ids_refused() {
        let mut s = Settings::default();
        s.tax_rate_map.insert(" 20.0 ".into(), "GB_STANDARD".into());
        s.tax_rate_map.insert("5".into(), "GB_LOWER".into());
        s.tax_rate_map.insert("de:19".into(), "DE_DEST_STANDARD".into());
        s.time_zone = Some("Europe/Dublin".into());
        s.website_base_currencies.insert("1".into(), "eur".into());
        let ok = validate(s.clone(), &reference()).unwrap();
        assert_eq!(
            ok.tax_rate_map.keys().collect::<Vec<_>>(),
            ["20.00", "5.00", "DE:19.00"]
        );
        assert_eq!(ok.website_base_currencies.get("1").map(String::as_str), Some("EUR"));

        let mut bad = s.clone();
        bad.time_zone = Some("Mars/Olympus".into());
        bad.website_base_currencies.insert("main".into(), "EUR".into());
        bad.tax_rate_map.insert("Germany:19".into(), "DE_DEST_STANDARD".into());
        let codes: Vec<String> = validate(bad, &reference())
            .unwrap_err()
            .iter()
            .map(|e| format!("{}:{}", e.field, e.code))
            .collect();
        assert!(codes.contains(&"time_zone:invalid_format".to_owned()), "{codes:?}");
        assert!(
            codes.contains(&"website_base_currencies.main:invalid_format".to_owned()),
            "{codes:?}"
        );
        assert!(
            codes.contains(&"tax_rate_map.Germany:19:invalid_format".to_owned()),
            "{codes:?}"
        );

        s.tax_rate_map.insert("twenty".into(), "GB_STANDARD".into());
        s.default_bank_account_id = Some("gone".into());
        s.sync_products = true;
        let errors = validate(s, &reference()).unwrap_err();
        let codes: Vec<(&str, &str)> = errors.iter().map(|e| (e.field.as_str(), e.code.as_str())).collect();
        assert!(
            codes.contains(&("default_bank_account_id", "not_in_reference")),
            "{codes:?}"
        );
        assert!(codes.contains(&("tax_rate_map.twenty", "invalid_format")), "{codes:?}");
        assert!(
            codes.contains(&("default_purchase_ledger_account_id", "required")),
            "{codes:?}"
        );
    }
}
