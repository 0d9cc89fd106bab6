//! Sage's own arithmetic over a document body, computed before anything is posted: a
//! line books its explicit net and tax, rounded to the cent, except that a
//! zero-percentage rate (zero, exempt, no tax) books no tax whatever is sent; shipping
//! tax is recomputed from the shipping rate × net. A body whose totals under these rules
//! differ from Magento's is never created.

use std::collections::BTreeMap;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use super::{Totals, cents};

/// The business's tax rates: Sage id → percentage (the reference cache's).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaxRates(BTreeMap<String, Decimal>);

fn number(v: &Value) -> Option<Decimal> {
    match v {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.to_string().parse().ok(),
        _ => None,
    }
}

impl TaxRates {
    pub fn new<'a>(pairs: impl IntoIterator<Item = (&'a str, Decimal)>) -> Self {
        Self(pairs.into_iter().map(|(id, p)| (id.to_owned(), p)).collect())
    }

    /// From the cached `tax_rates` list (`percentage` as Sage writes it).
    pub fn from_reference(items: &[Value]) -> Self {
        Self(
            items
                .iter()
                .filter_map(|r| Some((r["id"].as_str()?.to_owned(), number(&r["percentage"])?)))
                .collect(),
        )
    }

    pub fn percentage(&self, id: &str) -> Option<Decimal> {
        self.0.get(id).copied()
    }

    /// Whether Sage books no tax on this rate (its percentage is 0).
    pub fn is_zero(&self, id: &str) -> bool {
        self.percentage(id).is_some_and(|p| p.is_zero())
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn amount(o: &Map<String, Value>, key: &str) -> Option<Decimal> {
    o.get(key).and_then(number)
}

/// One line's net and tax as Sage books them.
pub fn line(rates: &TaxRates, l: &Map<String, Value>) -> (Decimal, Decimal) {
    let qty = amount(l, "quantity").unwrap_or(Decimal::ONE);
    let net = amount(l, "net_amount").map_or_else(
        || cents(qty * amount(l, "unit_price").unwrap_or_default() - amount(l, "discount_amount").unwrap_or_default()),
        cents,
    );
    let zero = l
        .get("tax_rate_id")
        .and_then(Value::as_str)
        .is_none_or(|id| rates.is_zero(id));
    let tax = if zero {
        Decimal::ZERO
    } else {
        cents(amount(l, "tax_amount").unwrap_or_default())
    };
    (net, tax)
}

/// The shipping's net and tax as Sage books them (tax = rate × net).
pub fn shipping(rates: &TaxRates, o: &Map<String, Value>) -> Option<(Decimal, Decimal)> {
    let net = cents(amount(o, "shipping_net_amount")?);
    let pct = o
        .get("shipping_tax_rate_id")
        .and_then(Value::as_str)
        .and_then(|id| rates.percentage(id))
        .unwrap_or_default();
    Some((net, cents(net * pct / Decimal::ONE_HUNDRED)))
}

/// The totals Sage computes for an invoice or credit note body.
pub fn totals(rates: &TaxRates, body: &Map<String, Value>, lines_key: &str) -> Totals {
    let mut t = Totals::default();
    for l in body.get(lines_key).and_then(Value::as_array).into_iter().flatten() {
        if let Some(l) = l.as_object() {
            let (net, tax) = line(rates, l);
            t.net += net;
            t.tax += tax;
        }
    }
    if let Some((net, tax)) = shipping(rates, body) {
        t.net += net;
        t.tax += tax;
    }
    t.total = t.net + t.tax;
    t
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    #[test]
    fn zero_rates_book_no_tax_and_shipping_tax_is_recomputed() {
        let rates = TaxRates::new([("GB_STANDARD", d("20")), ("GB_ZERO", d("0"))]);
        let body = json!({
            "invoice_lines": [
                { "net_amount": 10, "tax_rate_id": "GB_STANDARD", "tax_amount": 2 },
                { "net_amount": 5, "tax_rate_id": "GB_ZERO", "tax_amount": 1 },
            ],
            "shipping_net_amount": 4.15, "shipping_tax_rate_id": "GB_STANDARD", "shipping_tax_amount": 0.80,
        });
        let t = totals(&rates, body.as_object().unwrap(), "invoice_lines");
        assert_eq!((t.net, t.tax, t.total), (d("19.15"), d("2.83"), d("21.98")));
    }
}
