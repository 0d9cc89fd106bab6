//! A store's tax and currency configuration, and the profiles the sandbox ships.

// A part of the catalogue: its types and helpers are this file's too.
use super::*;

/// A store's configuration: its tax settings, its website's base currency and the
/// currencies it sells in (with Magento's base-to-order rate).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreProfile {
    pub name: String,
    pub tax: TaxSettings,
    /// The website's base currency (Magento's base; amounts convert from it).
    pub base_currency: String,
    /// Display currencies other than the base: (code, base-to-order rate).
    pub currencies: Vec<(String, Decimal)>,
    /// Where customers live (ISO country, weight).
    pub countries: Vec<(String, u64)>,
    /// Chance (percent) of a cart price rule on an order.
    pub coupon_percent: u64,
}

impl StoreProfile {
    /// The names `ledger dev --store-profile` takes.
    pub const NAMES: &'static [&'static str] = &["uk", "uk-b2c", "ie-oss", "eur-website"];

    /// A UK store with Magento's default tax settings (prices without VAT).
    pub fn uk() -> Self {
        Self {
            name: "uk".into(),
            tax: TaxSettings::uk(),
            base_currency: "GBP".into(),
            currencies: vec![("EUR".into(), dec("1.1700")), ("USD".into(), dec("1.2700"))],
            countries: vec![
                ("GB".into(), 70),
                ("FR".into(), 6),
                ("DE".into(), 6),
                ("IE".into(), 6),
                ("ES".into(), 4),
                ("US".into(), 8),
            ],
            coupon_percent: 25,
        }
    }

    /// A UK consumer store: prices and shipping with VAT, discounts on VAT-inclusive
    /// prices, coupons (some on shipping, some free shipping).
    pub fn uk_b2c() -> Self {
        Self {
            name: "uk-b2c".into(),
            tax: TaxSettings::uk_b2c(),
            coupon_percent: 45,
            ..Self::uk()
        }
    }

    /// An Irish store selling across the EU under OSS (destination VAT), prices with VAT.
    pub fn ie_oss() -> Self {
        Self {
            name: "ie-oss".into(),
            tax: TaxSettings::ie_oss(),
            base_currency: "EUR".into(),
            currencies: vec![("GBP".into(), dec("0.8600"))],
            countries: vec![
                ("IE".into(), 50),
                ("DE".into(), 15),
                ("FR".into(), 15),
                ("NL".into(), 10),
                ("GB".into(), 5),
                ("US".into(), 5),
            ],
            coupon_percent: 35,
        }
    }

    /// A EUR website on a UK merchant's Magento (posting to a GBP business): the
    /// website's base is EUR, so a EUR order's base-to-order rate is 1.
    pub fn eur_website() -> Self {
        Self {
            name: "eur-website".into(),
            base_currency: "EUR".into(),
            currencies: vec![("USD".into(), dec("1.0900"))],
            countries: vec![
                ("FR".into(), 40),
                ("DE".into(), 30),
                ("IE".into(), 20),
                ("GB".into(), 10),
            ],
            ..Self::uk()
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "uk" => Self::uk(),
            "uk-b2c" => Self::uk_b2c(),
            "ie-oss" => Self::ie_oss(),
            "eur-website" => Self::eur_website(),
            _ => return None,
        })
    }

    /// A store drawn at random: every tax setting, the base currency and the currencies
    /// (property tests).
    pub fn random(rng: &mut Rng) -> Self {
        let mut p = match rng.below(4) {
            0 => Self::uk(),
            1 => Self::uk_b2c(),
            2 => Self::ie_oss(),
            _ => Self::eur_website(),
        };
        let t = &mut p.tax;
        t.prices_include_tax = rng.chance(50);
        t.shipping_includes_tax = rng.chance(50);
        t.apply_after_discount = rng.chance(80);
        t.discount_on_incl_tax = rng.chance(50);
        t.cross_border_trade = rng.chance(20);
        t.based_on = *rng.pick(&[
            TaxBasis::Shipping,
            TaxBasis::Shipping,
            TaxBasis::Billing,
            TaxBasis::Origin,
        ]);
        t.algorithm = *rng.pick(&[Algorithm::Total, Algorithm::Total, Algorithm::Row, Algorithm::Unit]);
        p.name = format!("random-{}", rng.below(1_000_000));
        p
    }

    /// The country whose rules tax an order (Magento's "Tax Calculation Based On"; a
    /// virtual order has no shipping address and is taxed by its billing address).
    pub fn tax_country<'a>(&'a self, billing: &'a Address, shipping: Option<&'a Address>) -> &'a str {
        match self.tax.based_on {
            TaxBasis::Shipping => shipping.unwrap_or(billing).country_id.as_str(),
            TaxBasis::Billing => billing.country_id.as_str(),
            TaxBasis::Origin => self.tax.origin_country.as_str(),
        }
    }
}
