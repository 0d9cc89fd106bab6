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
    /// `/financial_settings`: whether documents in other currencies are allowed.
    pub multi_currency: bool,
    /// `/financial_settings.destination_vat`: EU destination (OSS) rates on sales.
    pub destination_vat: bool,
    /// The business's own exchange rates: base-currency units per foreign unit, what
    /// Sage applies when a document sends no `exchange_rate`.
    pub exchange_rates: std::collections::BTreeMap<String, rust_decimal::Decimal>,
    pub tax_rates: Vec<Value>,
    /// Destination VAT rates (listed with `include_destination_vat_rates=true`).
    pub destination_rates: Vec<Value>,
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

fn destination_rate(id: &str, country: &str, name: &str, percentage: &str) -> Value {
    let mut rate = tax_rate(id, &format!("{country} {name}"), percentage);
    rate["country"] = json!({ "id": country });
    rate
}

fn tax_rate(id: &str, name: &str, percentage: &str) -> Value {
    json!({
        "id": id, "displayed_as": format!("{name} {percentage}%"), "$path": format!("/tax_rates/{id}"),
        "name": name, "agency": null, "percentage": percentage, "percentages": [{ "percentage": percentage, "from_date": "2011-01-04", "to_date": null }],
        "is_visible": true, "retailer": false, "editable": false, "deletable": false, "is_combined_rate": false, "component_tax_rates": [],
    })
}

fn ledger_account(code: &str, name: &str, kind: &str, sales: bool, expenses: bool) -> Value {
    // Each business has its own chart: Sage's ledger account ids are unique per business
    // (unlike UK tax rate ids such as GB_STANDARD, which every UK business shares).
    let id = random_hex(16);
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
        // As Sage returns them with attributes=all: the account's own numbers included.
        "bank_account_details": {
            "account_name": name, "account_number": "31926819", "sort_code": "40-47-84",
            "bic": "MIDLGB22", "iban": "GB29NWBK60161331926819",
        },
        "nominal_code": code.parse::<u32>().unwrap_or(0),
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
        // OSS: the other EU countries' rates, for a business that charges destination VAT.
        let destination_rates = [
            ("DE", "19.0", "7.0"),
            ("FR", "20.0", "5.5"),
            ("NL", "21.0", "9.0"),
            ("ES", "21.0", "10.0"),
            ("IT", "22.0", "10.0"),
            ("BE", "21.0", "6.0"),
            ("AT", "20.0", "10.0"),
        ]
        .iter()
        .filter(|(c, _, _)| *c != country)
        .flat_map(|(c, standard, reduced)| {
            [
                destination_rate(&format!("{c}_DEST_STANDARD"), c, "Standard", standard),
                destination_rate(&format!("{c}_DEST_REDUCED"), c, "Reduced", reduced),
            ]
        })
        .collect();
        let destination_vat = country == "IE";
        let base = match country.as_str() {
            "GB" => "GBP",
            "US" => "USD",
            "CA" => "CAD",
            _ => "EUR",
        };
        // Sage's own rates (base per unit), from one GBP table.
        let per_gbp = [
            ("GBP", "1"),
            ("EUR", "1.17"),
            ("USD", "1.27"),
            ("CAD", "1.74"),
            ("CHF", "1.12"),
        ];
        let in_gbp = |code: &str| -> rust_decimal::Decimal {
            per_gbp
                .iter()
                .find(|(c, _)| *c == code)
                .map_or(rust_decimal::Decimal::ONE, |(_, r)| r.parse().expect("rate"))
        };
        let exchange_rates = per_gbp
            .iter()
            .filter(|(c, _)| *c != base)
            .map(|(c, _)| ((*c).to_owned(), (in_gbp(base) / in_gbp(c)).round_dp(6)))
            .collect();
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
            multi_currency: true,
            destination_vat,
            exchange_rates,
            tax_rates,
            destination_rates,
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
    pub fn book_mut(&mut self, kind: &str) -> &mut Vec<Value> {
        self.books.entry(kind.to_owned()).or_default()
    }

    pub fn book(&self, kind: &str) -> &[Value] {
        self.books.get(kind).map_or(&[], Vec::as_slice)
    }

    pub fn tax_rate_percentage(&self, id: &str) -> Option<rust_decimal::Decimal> {
        self.tax_rates
            .iter()
            .chain(self.destination_rates.iter().filter(|_| self.destination_vat))
            .find(|r| r["id"] == id)
            .and_then(|r| r["percentage"].as_str())
            .and_then(|p| p.parse().ok())
    }

    /// `GET /financial_settings`.
    pub fn financial_settings(&self) -> Value {
        json!({
            "$path": "/financial_settings",
            "year_end_date": "2027-03-31",
            "accounting_type": "accrual",
            "base_currency": { "id": self.base_currency(), "displayed_as": self.base_currency(), "$path": format!("/currencies/{}", self.base_currency()) },
            "multi_currency_enabled": self.multi_currency,
            "use_live_exchange_rates": false,
            "destination_vat": self.destination_vat,
            "sales_tax_calculation": "invoice",
        })
    }

    /// `GET /business_settings`.
    pub fn business_settings(&self) -> Value {
        json!({
            "$path": "/business_settings",
            "country_of_registration": { "id": self.country, "displayed_as": self.country },
            "business_type": { "id": "SOLE_TRADER" },
        })
    }
}
