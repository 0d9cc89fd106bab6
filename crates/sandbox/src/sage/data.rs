//! A Sage business's books: reference data (tax rates, ledger accounts, bank accounts,
//! currencies) and, with the posting work, contacts and documents.

use serde_json::{Value, json};

use super::random_hex;

/// One business and everything in it.
#[derive(Debug, Clone)]
pub struct Business {
    /// 32 hex characters, like Sage's.
    pub id: String,
    pub name: String,
    /// ISO country (GB, IE, CA, US, ...).
    pub country: String,
    pub lapsed: bool,
    pub tax_rates: Vec<Value>,
    pub ledger_accounts: Vec<Value>,
    pub bank_accounts: Vec<Value>,
    pub currencies: Vec<Value>,
    /// Documents posted to the business, by endpoint (`contacts`, `sales_invoices`, ...).
    pub books: std::collections::BTreeMap<String, Vec<Value>>,
    /// `idempotency_id` → (resource type, first response, unix time).
    pub idempotency: std::collections::HashMap<String, (String, Value, i64)>,
    /// Recent API call times (unix ms), for the rate limit.
    pub calls: std::collections::VecDeque<i64>,
    /// Every API call let through the rate limit (unix ms), for tests measuring usage.
    pub accepted: Vec<i64>,
    /// Requests refused with 429.
    pub rate_limited: u64,
    pub counters: std::collections::HashMap<String, u64>,
}

fn tax_rate(id: &str, name: &str, percentage: &str) -> Value {
    json!({
        "id": id, "displayed_as": format!("{name} {percentage}%"), "$path": format!("/tax_rates/{id}"),
        "name": name, "agency": null, "percentage": percentage, "percentages": [{ "percentage": percentage, "from_date": "2011-01-04", "to_date": null }],
        "is_visible": true, "retailer": false, "editable": false, "deletable": false, "is_combined_rate": false, "component_tax_rates": [],
    })
}

fn ledger_account(code: &str, name: &str, kind: &str, sales: bool, expenses: bool) -> Value {
    let id = format!(
        "{:0>32}",
        format!("{code}{}", hex::encode(name.as_bytes()))
            .chars()
            .take(32)
            .collect::<String>()
    );
    json!({
        "id": id, "displayed_as": format!("{name} ({code})"), "$path": format!("/ledger_accounts/{id}"),
        "nominal_code": code.parse::<u32>().unwrap_or(0), "name": name, "display_name": name,
        "ledger_account_type": { "id": kind, "displayed_as": kind },
        "visible_in_sales": sales, "visible_in_expenses": expenses, "visible_in_banking": false,
        "visible_in_other_payments": false, "visible_in_other_receipts": false, "visible_in_reporting": true, "visible_in_journals": true,
        "included_in_chart": true, "is_control_account": false,
    })
}

fn bank_account(name: &str, code: &str, kind: &str) -> Value {
    let id = random_hex(16);
    json!({
        "id": id, "displayed_as": format!("{name} ({code})"), "$path": format!("/bank_accounts/{id}"),
        "bank_account_details": { "account_name": name }, "nominal_code": code.parse::<u32>().unwrap_or(0),
        "bank_account_type": { "id": kind, "displayed_as": kind }, "balance": "0.0", "currency": { "id": "GBP" },
        "editable": true, "deletable": true, "main_address": null, "is_active": true,
    })
}

fn currency(code: &str, name: &str) -> Value {
    json!({ "id": code, "displayed_as": format!("{name} ({code})"), "$path": format!("/currencies/{code}"), "name": name, "code": code })
}

impl Business {
    pub fn new(name: &str, country: &str) -> Self {
        let country = country.to_ascii_uppercase();
        let tax_rates = match country.as_str() {
            "GB" => vec![
                tax_rate("GB_STANDARD", "Standard", "20.0"),
                tax_rate("GB_LOWER", "Lower", "5.0"),
                tax_rate("GB_ZERO", "Zero", "0.0"),
                tax_rate("GB_EXEMPT", "Exempt", "0.0"),
                tax_rate("GB_NO_TAX", "No Tax", "0.0"),
            ],
            "IE" => vec![
                tax_rate("IE_STANDARD", "Standard", "23.0"),
                tax_rate("IE_REDUCED", "Reduced", "13.5"),
                tax_rate("IE_ZERO", "Zero", "0.0"),
            ],
            _ => vec![tax_rate(&format!("{country}_ZERO"), "Zero", "0.0")],
        };
        let mut ledger_accounts = vec![
            ledger_account("4000", "Sales Type A", "SALES", true, false),
            ledger_account("4010", "Sales Type B", "SALES", true, false),
            ledger_account("4020", "Sales Type C", "SALES", true, false),
            ledger_account("4900", "Other Income", "OTHER_INCOME", true, false),
            ledger_account("4905", "Carriage on Sales", "SALES", true, false),
            ledger_account("5000", "Cost of Sales - Goods", "DIRECT_EXPENSES", false, true),
            ledger_account("5010", "Cost of Sales - Materials", "DIRECT_EXPENSES", false, true),
        ];
        for (i, name) in [
            "Rent",
            "Rates",
            "Electricity",
            "Gas",
            "Office Costs",
            "Telephone",
            "Postage",
            "Advertising",
            "Travel",
            "Subscriptions",
            "Insurance",
            "Bank Charges",
            "Repairs",
            "Software",
            "Accountancy",
        ]
        .iter()
        .enumerate()
        {
            ledger_accounts.push(ledger_account(
                &format!("{}", 7100 + i * 10),
                name,
                "OVERHEADS",
                false,
                true,
            ));
        }
        Self {
            id: random_hex(16),
            name: name.to_owned(),
            country,
            lapsed: false,
            tax_rates,
            ledger_accounts,
            bank_accounts: vec![
                bank_account("Current Account", "1200", "CHECKING"),
                bank_account("Stripe", "1210", "CHECKING"),
                bank_account("PayPal", "1220", "CHECKING"),
                bank_account("Cash in Hand", "1230", "CASH_IN_HAND"),
            ],
            currencies: vec![
                currency("GBP", "Pound Sterling"),
                currency("EUR", "Euro"),
                currency("USD", "US Dollar"),
                currency("CAD", "Canadian Dollar"),
            ],
            books: Default::default(),
            idempotency: Default::default(),
            calls: Default::default(),
            accepted: Vec::new(),
            rate_limited: 0,
            counters: Default::default(),
        }
    }
}

impl Business {
    /// The business's base currency.
    pub fn base_currency(&self) -> &'static str {
        match self.country.as_str() {
            "GB" => "GBP",
            "US" => "USD",
            "CA" => "CAD",
            _ => "EUR",
        }
    }

    /// Documents of one kind (`sales_invoices`, `contacts`, ...).
    pub fn book(&self, kind: &str) -> &[Value] {
        self.books.get(kind).map_or(&[], Vec::as_slice)
    }

    pub fn tax_rate_percentage(&self, id: &str) -> Option<rust_decimal::Decimal> {
        self.tax_rates
            .iter()
            .find(|r| r["id"] == id)
            .and_then(|r| r["percentage"].as_str())
            .and_then(|p| p.parse().ok())
    }
}
