//! What the mapping tests share: a GB business's settings as the happy path chooses them,
//! the business's tax rates, and Sage's API definition.
#![allow(dead_code, reason = "each test crate uses some of these")]

use ledger_sage_sync::{
    mapping::{Ctx, TaxRates},
    policy::Settings,
};
use rust_decimal::Decimal;

pub const BINDING: &str = "7d0c1a52-5f4e-4c59-9a39-0b8f4f0f2a11";

/// Tax rates mapped by percentage to the sandbox's GB rates, the sales account `4000`.
pub fn gb_settings() -> Settings {
    let mut s = Settings {
        default_ledger_account_id: Some("LA_4000".to_owned()),
        default_bank_account_id: Some("BA_1200".to_owned()),
        ..Settings::default()
    };
    for (pct, id) in [("20.00", "GB_STANDARD"), ("5.00", "GB_LOWER"), ("0.00", "GB_ZERO")] {
        s.tax_rate_map.insert(pct.to_owned(), id.to_owned());
    }
    s
}

/// An Irish business under OSS: home rates, and destination rates by country.
pub fn ie_settings() -> Settings {
    let mut s = Settings {
        default_ledger_account_id: Some("LA_4000".to_owned()),
        default_bank_account_id: Some("BA_1200".to_owned()),
        ..Settings::default()
    };
    for (pct, id) in [
        ("23.00", "IE_STANDARD"),
        ("13.50", "IE_REDUCED"),
        ("0.00", "IE_ZERO"),
        ("DE:19.00", "DE_DEST_STANDARD"),
        ("DE:7.00", "DE_DEST_REDUCED"),
        ("FR:20.00", "FR_DEST_STANDARD"),
        ("FR:5.50", "FR_DEST_REDUCED"),
        ("NL:21.00", "NL_DEST_STANDARD"),
        ("NL:9.00", "NL_DEST_REDUCED"),
    ] {
        s.tax_rate_map.insert(pct.to_owned(), id.to_owned());
    }
    s
}

fn d(s: &str) -> Decimal {
    s.parse().unwrap()
}

/// The sandbox's GB and IE businesses' rates (what the reference cache would hold).
pub fn rates() -> TaxRates {
    TaxRates::new([
        ("GB_STANDARD", d("20")),
        ("GB_LOWER", d("5")),
        ("GB_ZERO", d("0")),
        ("GB_EXEMPT", d("0")),
        ("GB_NO_TAX", d("0")),
        ("IE_STANDARD", d("23")),
        ("IE_REDUCED", d("13.5")),
        ("IE_ZERO", d("0")),
        ("DE_DEST_STANDARD", d("19")),
        ("DE_DEST_REDUCED", d("7")),
        ("FR_DEST_STANDARD", d("20")),
        ("FR_DEST_REDUCED", d("5.5")),
        ("NL_DEST_STANDARD", d("21")),
        ("NL_DEST_REDUCED", d("9")),
    ])
}

/// The context of a business in `country` with `base` currency.
pub fn ctx<'a>(settings: &'a Settings, rates: &'a TaxRates, country: &'a str, base: &'a str) -> Ctx<'a> {
    Ctx {
        settings,
        business_country: country,
        base_currency: base,
        multi_currency: true,
        binding: BINDING,
        rates,
        time_zone: if country == "IE" {
            chrono_tz::Europe::Dublin
        } else {
            chrono_tz::Europe::London
        },
    }
}

pub fn gb_ctx<'a>(settings: &'a Settings, rates: &'a TaxRates) -> Ctx<'a> {
    ctx(settings, rates, "GB", "GBP")
}

/// Validates request bodies against Sage's API definition (swagger 2.0): required fields,
/// JSON types, enums and date formats, and — stricter than Sage, which silently drops
/// them — fields the definition does not know. `idempotency_id` is the one field Sage
/// accepts that its definition omits.
pub struct SageDefinitions(serde_json::Value);

impl SageDefinitions {
    pub fn load() -> Self {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/sage-request-definitions.json");
        let text = std::fs::read_to_string(path).expect("the Sage request definitions");
        Self(serde_json::from_str(&text).expect("valid JSON"))
    }

    /// Every problem with `body` against definition `name` (e.g. `postSalesInvoices`).
    pub fn check(&self, name: &str, body: &serde_json::Value) -> Vec<String> {
        let mut problems = Vec::new();
        let schema = &self.0["definitions"][name];
        assert!(schema.is_object(), "no definition {name}");
        self.walk(schema, body, "", &mut problems);
        problems
    }

    fn resolve<'a>(&'a self, schema: &'a serde_json::Value) -> &'a serde_json::Value {
        match schema.get("$ref").and_then(serde_json::Value::as_str) {
            Some(r) => &self.0["definitions"][r.rsplit('/').next().unwrap_or_default()],
            None => schema,
        }
    }

    fn walk(&self, schema: &serde_json::Value, value: &serde_json::Value, at: &str, out: &mut Vec<String>) {
        use serde_json::Value;
        let schema = self.resolve(schema);
        let kind = schema.get("type").and_then(Value::as_str).unwrap_or("object");
        let ok = match kind {
            "object" => value.is_object(),
            "array" => value.is_array(),
            "string" => value.is_string(),
            "number" => value.is_number(),
            "integer" => value.is_i64() || value.is_u64(),
            "boolean" => value.is_boolean(),
            _ => true,
        };
        if !ok {
            out.push(format!("{at}: expected {kind}, got {value}"));
            return;
        }
        if let Some(options) = schema.get("enum").and_then(Value::as_array)
            && !options.contains(value)
        {
            out.push(format!("{at}: {value} is not one of {options:?}"));
        }
        if schema.get("format").and_then(Value::as_str) == Some("date")
            && let Some(s) = value.as_str()
            && chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").is_err()
        {
            out.push(format!("{at}: `{s}` is not a YYYY-MM-DD date"));
        }
        match value {
            Value::Object(o) => {
                let properties = schema.get("properties").and_then(Value::as_object);
                for required in schema.get("required").and_then(Value::as_array).into_iter().flatten() {
                    let name = required.as_str().unwrap_or_default();
                    if o.get(name).is_none_or(Value::is_null) {
                        out.push(format!("{at}.{name}: required"));
                    }
                }
                for (k, v) in o {
                    match properties.and_then(|p| p.get(k)) {
                        Some(s) => self.walk(s, v, &format!("{at}.{k}"), out),
                        None if k == "idempotency_id" => {}
                        None => out.push(format!("{at}.{k}: not in Sage's definition (Sage would drop it)")),
                    }
                }
            }
            Value::Array(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, v) in items.iter().enumerate() {
                        self.walk(item_schema, v, &format!("{at}[{i}]"), out);
                    }
                }
            }
            _ => {}
        }
    }
}
