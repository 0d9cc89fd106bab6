//! The canonical entities the module serves (contract §8.3–§8.12), as Rust types.
//!
//! Amounts arrive as PHP floats (`12.0`, `23.990000000000002`); they are read through
//! their shortest decimal text into [`Decimal`] and never touch `f64` arithmetic.
//! Nullable getters are omitted from the JSON rather than written as null, so every
//! such field is an `Option` with a default. Field order follows the module's
//! interfaces, so serialising (as the sandbox does) produces the module's bytes.

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Serde helpers for money: JSON numbers in, JSON numbers out.
pub mod money {
    use std::str::FromStr as _;

    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let number = serde_json::Number::deserialize(d)?;
        parse(&number).map_err(serde::de::Error::custom)
    }

    pub fn serialize<S: Serializer>(value: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        // The module writes PHP floats; a whole amount keeps its `.0` like PHP's json_encode.
        let text = value.normalize().to_string();
        let text = if text.contains('.') { text } else { format!("{text}.0") };
        serde_json::Number::from_str(&text)
            .map_err(serde::ser::Error::custom)?
            .serialize(s)
    }

    pub fn parse(number: &serde_json::Number) -> Result<Decimal, String> {
        let text = number.to_string();
        Decimal::from_str(&text)
            .or_else(|_| Decimal::from_scientific(&text))
            .map_err(|_| format!("`{text}` is not a representable amount"))
    }

    /// For `Option<Decimal>` fields that the module omits when null.
    pub mod option {
        use super::*;

        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
            Option::<serde_json::Number>::deserialize(d)?
                .map(|n| parse(&n).map_err(serde::de::Error::custom))
                .transpose()
        }

        pub fn serialize<S: Serializer>(value: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
            match value {
                Some(v) => super::serialize(v, s),
                None => s.serialize_none(),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Address {
    /// `billing` or `shipping`.
    pub kind: String,
    pub street: Vec<String>,
    pub city: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub postcode: Option<String>,
    /// ISO 3166-1 alpha-2; may be empty on bad data.
    pub country_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub telephone: Option<String>,
}

/// A customer (registered, or the synthetic guest contact with `magento_id` 0).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Contact {
    pub magento_id: i64,
    pub email: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub company: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phone: Option<String>,
    pub website_id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<i64>,
    #[serde(default)]
    pub addresses: Vec<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

impl Contact {
    pub fn is_guest(&self) -> bool {
        self.magento_id == 0
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InvoiceLine {
    pub sku: String,
    /// May contain HTML entities.
    pub name: String,
    #[serde(with = "money")]
    pub qty: Decimal,
    #[serde(with = "money")]
    pub unit_price: Decimal,
    #[serde(with = "money")]
    pub line_subtotal: Decimal,
    #[serde(with = "money")]
    pub line_tax: Decimal,
    #[serde(with = "money")]
    pub line_total: Decimal,
    /// Ratio (0.2 = 20 %), present only when tax and subtotal are both positive.
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub tax_rate: Option<Decimal>,
    /// Never filled by the module; kept for completeness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_class: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_type: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Invoice {
    pub magento_id: i64,
    pub increment_id: String,
    pub order_id: i64,
    pub order_increment_id: String,
    pub website_id: i64,
    pub store_id: i64,
    pub currency: String,
    /// `open`, `paid` or `cancelled`.
    pub state: String,
    pub customer: Contact,
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "money")]
    pub subtotal: Decimal,
    #[serde(with = "money")]
    pub tax_amount: Decimal,
    #[serde(with = "money")]
    pub shipping_amount: Decimal,
    #[serde(with = "money")]
    pub shipping_tax_amount: Decimal,
    /// Negative, as Magento stores header discounts.
    #[serde(with = "money")]
    pub discount_amount: Decimal,
    #[serde(with = "money")]
    pub grand_total: Decimal,
    /// `YYYY-MM-DDTHH:MM:SSZ`, or `""` when Magento's timestamp was unusable.
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payment_method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billing_address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shipping_address: Option<Address>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub po_number: Option<String>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub base_to_order_rate: Option<Decimal>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreditMemo {
    pub magento_id: i64,
    pub increment_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_id: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_increment_id: Option<String>,
    pub website_id: i64,
    pub currency: String,
    pub customer: Contact,
    pub lines: Vec<InvoiceLine>,
    #[serde(with = "money")]
    pub adjustment_positive: Decimal,
    #[serde(with = "money")]
    pub adjustment_negative: Decimal,
    #[serde(with = "money")]
    pub grand_total: Decimal,
    #[serde(with = "money")]
    pub shipping_amount: Decimal,
    #[serde(with = "money")]
    pub shipping_tax_amount: Decimal,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub created_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invoice_created_at: Option<String>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub base_to_order_rate: Option<Decimal>,
}

/// The payment of an invoice (`magento_id` is the invoice id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Payment {
    pub magento_id: i64,
    pub invoice_id: i64,
    pub invoice_increment_id: String,
    /// Payment method code; `""` when the order has none.
    pub method: String,
    pub currency: String,
    #[serde(with = "money")]
    pub amount: Decimal,
    pub captured_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_txn_id: Option<String>,
    /// Opaque: a key-less list on the wire (contract §8.8).
    #[serde(default)]
    pub gateway_metadata: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub magento_id: i64,
    pub sku: String,
    pub name: String,
    pub product_type: String,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub price: Option<Decimal>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub special_price: Option<Decimal>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub cost: Option<Decimal>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub weight: Option<Decimal>,
    #[serde(default, with = "money::option", skip_serializing_if = "Option::is_none")]
    pub stock_qty: Option<Decimal>,
    pub manage_stock: bool,
    /// Numeric tax class id as a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tax_class: Option<String>,
    #[serde(default)]
    pub website_ids: Vec<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PaymentMethod {
    pub code: String,
    /// `null` when the method has no title.
    pub label: Option<String>,
    pub is_active: bool,
}

/// Terminal sync outcome, as `POST /V1/byte8/sync-state` takes it (contract §8.12).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncState {
    pub entity_type: String,
    pub magento_entity_id: i64,
    pub provider: String,
    /// `synced`, `skipped` or `failed`.
    pub sync_status: String,
    pub provider_entity_id: Option<String>,
    pub provider_reference: Option<String>,
    pub skip_reason: Option<String>,
    pub error_code: Option<String>,
    /// UTC `YYYY-MM-DD HH:MM:SS`: written verbatim into a MySQL TIMESTAMP column.
    pub last_sync_at: Option<String>,
}

/// Formats a time the way every supported MySQL/MariaDB TIMESTAMP accepts.
pub fn mysql_timestamp(at: chrono::DateTime<chrono::Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%S").to_string()
}

#[cfg(test)]
mod tests {
    use std::str::FromStr as _;

    use super::*;

    #[test]
    fn php_floats_become_exact_decimals() {
        let line: InvoiceLine = serde_json::from_str(
            r#"{"sku":"S","name":"N &amp; M","qty":1.0,"unit_price":23.990000000000002,"line_subtotal":23.99,
                "line_tax":4.8,"line_total":28.79,"tax_rate":0.2}"#,
        )
        .unwrap();
        assert_eq!(line.unit_price, Decimal::from_str("23.990000000000002").unwrap());
        assert_eq!(line.unit_price.round_dp(2), Decimal::from_str("23.99").unwrap());
        assert_eq!(line.tax_rate, Some(Decimal::from_str("0.2").unwrap()));
        assert_eq!(line.product_type, None, "omitted fields default");
        let back = serde_json::to_string(&line).unwrap();
        assert!(
            back.contains(r#""qty":1.0"#) && back.contains(r#""unit_price":23.990000000000002"#),
            "{back}"
        );
    }

    #[test]
    fn timestamps_for_mysql() {
        let at = chrono::DateTime::parse_from_rfc3339("2026-04-29T10:11:12Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(mysql_timestamp(at), "2026-04-29 10:11:12");
    }
}
