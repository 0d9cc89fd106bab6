//! What the mapping tests share: a GB business's settings as the happy path chooses them.

use ledger_sage_sync::{mapping::Ctx, policy::Settings};

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

pub fn gb_ctx(settings: &Settings) -> Ctx<'_> {
    Ctx {
        settings,
        business_country: "GB",
        base_currency: "GBP",
        binding: BINDING,
    }
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
