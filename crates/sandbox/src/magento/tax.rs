//! Magento's tax settings and its tax calculators (`Magento\Tax\Model\Calculation`):
//! unit, row and total base; prices with or without tax; tax before or after discount
//! with the discount tax compensation; the store rate backed out of a tax-inclusive
//! price unless cross-border trade is on; and Magento's delta rounding, which carries
//! each rounding's remainder into the next amount of the same rate (total base) or of
//! the same item (row and unit base).
//!
//! Amounts are decimals here; PHP computes in doubles, whose differences from exact
//! arithmetic sit ~1e-15 below the cent and never reach a rounding: the 1e-6 Magento
//! seeds every delta with decides the exact halves for both.

use std::collections::HashMap;

use rust_decimal::{Decimal, RoundingStrategy};

/// PHP's `round($x, 2)`: half away from zero.
pub fn round(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

fn dec(s: &str) -> Decimal {
    s.parse().expect("literal decimal")
}

/// "Tax Calculation Method Based On".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    Unit,
    Row,
    /// Magento's default.
    #[default]
    Total,
}

/// "Tax Calculation Based On".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TaxBasis {
    /// Magento's default.
    #[default]
    Shipping,
    Billing,
    Origin,
}

/// Product (and shipping) tax classes the sandbox's rules know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaxClass {
    /// "None": never taxed.
    None,
    /// "Taxable Goods" (Magento's class 2).
    Standard,
    /// Reduced rate (children's car seats, energy: 5 % in the UK).
    Reduced,
    /// Zero-rated at home (books in the UK), taxed abroad at that country's rate for
    /// books where one exists.
    Books,
}

impl TaxClass {
    /// The class id Magento's product getter returns.
    pub fn id(self) -> u32 {
        match self {
            Self::None => 0,
            Self::Standard => 2,
            Self::Reduced => 5,
            Self::Books => 6,
        }
    }
}

/// A store view's tax configuration (Stores → Configuration → Sales → Tax).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaxSettings {
    /// "Catalog Prices": including tax.
    pub prices_include_tax: bool,
    /// "Shipping Prices": including tax.
    pub shipping_includes_tax: bool,
    /// "Apply Customer Tax": after discount (Magento's default).
    pub apply_after_discount: bool,
    /// "Apply Discount On Prices": including tax.
    pub discount_on_incl_tax: bool,
    pub based_on: TaxBasis,
    pub algorithm: Algorithm,
    /// "Enable Cross Border Trade": a tax-inclusive price stays the same whatever the
    /// buyer's rate.
    pub cross_border_trade: bool,
    /// The shipping origin (and the merchant's VAT registration).
    pub origin_country: String,
    /// "Default Tax Destination Calculation": the country of the store rate that
    /// tax-inclusive catalogue prices contain.
    pub default_country: String,
    /// "Tax Class for Shipping".
    pub shipping_class: TaxClass,
    /// An EU seller under the One-Stop Shop charges EU consumers their country's VAT.
    pub oss: bool,
}

impl TaxSettings {
    /// A UK store with Magento's defaults: prices exclude tax, tax after discount,
    /// discount on prices excluding tax, total-based, by shipping address.
    pub fn uk() -> Self {
        Self {
            prices_include_tax: false,
            shipping_includes_tax: false,
            apply_after_discount: true,
            discount_on_incl_tax: false,
            based_on: TaxBasis::Shipping,
            algorithm: Algorithm::Total,
            cross_border_trade: false,
            origin_country: "GB".into(),
            default_country: "GB".into(),
            shipping_class: TaxClass::Standard,
            oss: false,
        }
    }

    /// The usual UK B2C set-up: prices and shipping entered with VAT, discounts on
    /// the VAT-inclusive price.
    pub fn uk_b2c() -> Self {
        Self {
            prices_include_tax: true,
            shipping_includes_tax: true,
            discount_on_incl_tax: true,
            ..Self::uk()
        }
    }

    /// An Irish store selling across the EU under OSS, prices with VAT.
    pub fn ie_oss() -> Self {
        Self {
            prices_include_tax: true,
            shipping_includes_tax: true,
            discount_on_incl_tax: true,
            origin_country: "IE".into(),
            default_country: "IE".into(),
            oss: true,
            ..Self::uk()
        }
    }
}

pub const EU: &[&str] = &[
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE", "IT", "LV", "LT", "LU", "MT",
    "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
];

/// VAT rates (standard, reduced, books) of the countries the sandbox sells to.
fn country_rates(country: &str) -> Option<(Decimal, Decimal, Decimal)> {
    Some(match country {
        "GB" => (dec("20"), dec("5"), dec("0")),
        "IE" => (dec("23"), dec("13.5"), dec("0")),
        "DE" => (dec("19"), dec("7"), dec("7")),
        "FR" => (dec("20"), dec("5.5"), dec("5.5")),
        "NL" => (dec("21"), dec("9"), dec("9")),
        "ES" => (dec("21"), dec("10"), dec("4")),
        "IT" => (dec("22"), dec("10"), dec("4")),
        "BE" => (dec("21"), dec("6"), dec("6")),
        "AT" => (dec("20"), dec("10"), dec("10")),
        _ => return None,
    })
}

impl TaxSettings {
    /// The percentage the store's tax rules charge a product of `class` sent to
    /// `country`: the origin's rates at home, the destination's under OSS within the
    /// EU, nothing elsewhere (exports).
    pub fn rate(&self, class: TaxClass, country: &str) -> Decimal {
        let home = country == self.origin_country;
        let oss = self.oss && EU.contains(&self.origin_country.as_str()) && EU.contains(&country);
        if !(home || oss) {
            return Decimal::ZERO;
        }
        let Some((standard, reduced, books)) = country_rates(country) else {
            return Decimal::ZERO;
        };
        match class {
            TaxClass::None => Decimal::ZERO,
            TaxClass::Standard => standard,
            TaxClass::Reduced => reduced,
            TaxClass::Books => books,
        }
    }

    /// The rate a tax-inclusive catalogue price already contains.
    pub fn store_rate(&self, class: TaxClass) -> Decimal {
        self.rate(class, &self.default_country.clone())
    }
}

/// One taxable item handed to a calculator (a product row or the shipping).
#[derive(Debug, Clone)]
pub struct TaxItem {
    /// `sequence-1`, `shipping`: the key of row- and unit-based delta rounding.
    pub code: String,
    pub unit_price: Decimal,
    pub qty: Decimal,
    pub discount: Decimal,
    pub tax_included: bool,
    /// The buyer's rate and the store's rate (percentages).
    pub rate: Decimal,
    pub store_rate: Decimal,
}

/// What the calculator says about an item.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaxDetails {
    pub price: Decimal,
    pub price_incl_tax: Decimal,
    pub row_total: Decimal,
    pub row_total_incl_tax: Decimal,
    /// Tax after discount when tax applies after discount.
    pub row_tax: Decimal,
    pub discount_tax_compensation: Decimal,
    pub tax_percent: Decimal,
}

const REGULAR: &str = "regular";
const BEFORE_DISCOUNT: &str = "tax_before_discount";

/// One `calculateTax` call: the rounding deltas live as long as it does.
#[derive(Debug)]
pub struct Calculator<'a> {
    settings: &'a TaxSettings,
    deltas: HashMap<String, Decimal>,
}

/// `Calculation::calcTaxAmount` without rounding.
fn tax_of(price: Decimal, percent: Decimal, included: bool) -> Decimal {
    let rate = percent / Decimal::ONE_HUNDRED;
    if included {
        price * (Decimal::ONE - Decimal::ONE / (Decimal::ONE + rate))
    } else {
        price * rate
    }
}

impl<'a> Calculator<'a> {
    pub fn new(settings: &'a TaxSettings) -> Self {
        Self {
            settings,
            deltas: HashMap::new(),
        }
    }

    /// `AbstractCalculator::deltaRound`.
    fn delta_round(&mut self, amount: Decimal, rate: Decimal, included: bool, kind: &str) -> Decimal {
        if amount.is_zero() {
            return amount;
        }
        let key = format!("{kind}{}|{}", if included { "1" } else { "" }, rate.normalize());
        let delta = self.deltas.get(&key).copied().unwrap_or(Decimal::new(1, 6));
        let price = amount + delta;
        let rounded = round(price);
        self.deltas.insert(key, price - rounded);
        rounded
    }

    /// `roundAmount`: total base shares deltas across items; row and unit base keep
    /// one per item.
    fn round_amount(&mut self, amount: Decimal, item: &TaxItem, included: bool, kind: &str) -> Decimal {
        let kind = match self.settings.algorithm {
            Algorithm::Total => kind.to_owned(),
            Algorithm::Row | Algorithm::Unit => format!("{kind}{}", item.code),
        };
        self.delta_round(amount, item.rate, included, &kind)
    }

    fn same_rate_as_store(&self, item: &TaxItem) -> bool {
        self.settings.cross_border_trade || (item.rate - item.store_rate).abs() < Decimal::new(1, 5)
    }

    /// `calculatePriceInclTax`: the store's tax backed out, the buyer's added.
    fn price_incl_for_buyer(store_price: Decimal, store_rate: Decimal, rate: Decimal) -> Decimal {
        let excl = store_price - tax_of(store_price, store_rate, true);
        round(excl + tax_of(excl, rate, false))
    }

    pub fn calculate(&mut self, item: &TaxItem) -> TaxDetails {
        match (self.settings.algorithm, item.tax_included) {
            (Algorithm::Unit, true) => self.unit_in_price(item),
            (Algorithm::Unit, false) => self.unit_not_in_price(item),
            (_, true) => self.aggregate_in_price(item),
            (_, false) => self.aggregate_not_in_price(item),
        }
    }

    fn aggregate_in_price(&mut self, item: &TaxItem) -> TaxDetails {
        let after_discount = self.settings.apply_after_discount;
        let qty = item.qty;
        let mut price_incl = round(item.unit_price);
        if !self.same_rate_as_store(item) {
            price_incl = Self::price_incl_for_buyer(price_incl, item.store_rate, item.rate);
        }
        let row_incl = price_incl * qty;
        let kind = if after_discount { BEFORE_DISCOUNT } else { REGULAR };
        let mut row_tax = self.round_amount(tax_of(row_incl, item.rate, true), item, true, kind);
        let row_total = row_incl - row_tax;
        let price = round(row_total / qty);
        let mut compensation = Decimal::ZERO;
        if after_discount {
            let taxable = (row_incl - item.discount).max(Decimal::ZERO);
            let after = self.round_amount(tax_of(taxable, item.rate, true), item, true, REGULAR);
            compensation = row_tax - after;
            row_tax = after;
        }
        TaxDetails {
            price,
            price_incl_tax: price_incl,
            row_total,
            row_total_incl_tax: row_incl,
            row_tax,
            discount_tax_compensation: compensation,
            tax_percent: item.rate,
        }
    }

    fn aggregate_not_in_price(&mut self, item: &TaxItem) -> TaxDetails {
        let after_discount = self.settings.apply_after_discount;
        let price = round(item.unit_price);
        let row_total = price * item.qty;
        let kind = if after_discount { BEFORE_DISCOUNT } else { REGULAR };
        let before = self.round_amount(tax_of(row_total, item.rate, false), item, false, kind);
        let mut after = before;
        if after_discount {
            let taxable = (row_total - item.discount).max(Decimal::ZERO);
            after = self.round_amount(tax_of(taxable, item.rate, false), item, false, REGULAR);
        }
        let row_incl = row_total + before;
        TaxDetails {
            price,
            price_incl_tax: round(row_incl / item.qty),
            row_total,
            row_total_incl_tax: row_incl,
            row_tax: after,
            discount_tax_compensation: Decimal::ZERO,
            tax_percent: item.rate,
        }
    }

    fn unit_in_price(&mut self, item: &TaxItem) -> TaxDetails {
        let qty = item.qty;
        let mut price_incl = round(item.unit_price);
        if !self.same_rate_as_store(item) {
            price_incl = Self::price_incl_for_buyer(price_incl, item.store_rate, item.rate);
        }
        let mut unit_tax = round(tax_of(price_incl, item.rate, true));
        let price = price_incl - unit_tax;
        let mut compensation = Decimal::ZERO;
        if !item.discount.is_zero() && self.settings.apply_after_discount {
            let taxable = (price_incl - item.discount / qty).max(Decimal::ZERO);
            let after = round(tax_of(taxable, item.rate, true));
            compensation = (unit_tax - after) * qty;
            unit_tax = after;
        }
        TaxDetails {
            price,
            price_incl_tax: price_incl,
            row_total: price * qty,
            row_total_incl_tax: price_incl * qty,
            row_tax: unit_tax * qty,
            discount_tax_compensation: compensation,
            tax_percent: item.rate,
        }
    }

    fn unit_not_in_price(&mut self, item: &TaxItem) -> TaxDetails {
        let after_discount = self.settings.apply_after_discount;
        let qty = item.qty;
        let price = round(item.unit_price);
        let kind = if after_discount { BEFORE_DISCOUNT } else { REGULAR };
        let before = self.round_amount(tax_of(price, item.rate, false), item, false, kind);
        let mut after = before;
        if after_discount {
            let taxable = (price - item.discount / qty).max(Decimal::ZERO);
            after = self.round_amount(tax_of(taxable, item.rate, false), item, false, REGULAR);
        }
        let price_incl = price + before;
        TaxDetails {
            price,
            price_incl_tax: price_incl,
            row_total: price * qty,
            row_total_incl_tax: price_incl * qty,
            row_tax: after * qty,
            discount_tax_compensation: Decimal::ZERO,
            tax_percent: item.rate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(code: &str, price: &str, qty: &str, discount: &str, included: bool, rate: &str) -> TaxItem {
        TaxItem {
            code: code.into(),
            unit_price: dec(price),
            qty: dec(qty),
            discount: dec(discount),
            tax_included: included,
            rate: dec(rate),
            store_rate: dec("20"),
        }
    }

    #[test]
    fn tax_inclusive_price_with_a_discount_leaves_a_compensation() {
        // £12.00 with VAT, 10 % off the VAT-inclusive price (£1.20): Magento charges
        // £10.80 of which £1.80 VAT; the £0.20 VAT the discount removed is compensated.
        let settings = TaxSettings::uk_b2c();
        let d = Calculator::new(&settings).calculate(&item("1", "12.00", "1", "1.20", true, "20"));
        assert_eq!(d.row_total, dec("10.00"));
        assert_eq!(d.row_tax, dec("1.80"));
        assert_eq!(d.discount_tax_compensation, dec("0.20"));
        assert_eq!(d.row_total_incl_tax, dec("12.00"));
    }

    #[test]
    fn total_base_carries_the_rounding_across_rows() {
        // Three £0.99 rows at 20 %: 0.198 each. Row by row 0.20 + 0.20 + 0.20; total
        // base carries the remainder: 0.20, 0.20, 0.19 (= round(0.594)).
        let settings = TaxSettings::uk();
        let mut total = Calculator::new(&settings);
        let taxes: Vec<Decimal> = (1..=3)
            .map(|i| {
                total
                    .calculate(&item(&i.to_string(), "0.99", "1", "0", false, "20"))
                    .row_tax
            })
            .collect();
        assert_eq!(taxes, [dec("0.20"), dec("0.20"), dec("0.19")]);
        let row = TaxSettings {
            algorithm: Algorithm::Row,
            ..TaxSettings::uk()
        };
        let mut rows = Calculator::new(&row);
        let taxes: Vec<Decimal> = (1..=3)
            .map(|i| {
                rows.calculate(&item(&i.to_string(), "0.99", "1", "0", false, "20"))
                    .row_tax
            })
            .collect();
        assert_eq!(taxes, [dec("0.20"), dec("0.20"), dec("0.20")]);
    }

    #[test]
    fn unit_base_rounds_each_unit() {
        // 3 × £0.99 at 20 %: 0.198 per unit → 0.20 × 3 = 0.60 (row base: 0.59).
        let settings = TaxSettings {
            algorithm: Algorithm::Unit,
            ..TaxSettings::uk()
        };
        let d = Calculator::new(&settings).calculate(&item("1", "0.99", "3", "0", false, "20"));
        assert_eq!(d.row_tax, dec("0.60"));
        let row = TaxSettings {
            algorithm: Algorithm::Row,
            ..TaxSettings::uk()
        };
        assert_eq!(
            Calculator::new(&row)
                .calculate(&item("1", "0.99", "3", "0", false, "20"))
                .row_tax,
            dec("0.59")
        );
    }

    #[test]
    fn an_export_backs_the_store_rate_out_of_an_inclusive_price() {
        // £12.00 including 20 % UK VAT shipped to the US: £10.00, no tax; with
        // cross-border trade the buyer pays £12.00, still untaxed.
        let settings = TaxSettings::uk_b2c();
        let d = Calculator::new(&settings).calculate(&item("1", "12.00", "1", "0", true, "0"));
        assert_eq!((d.row_total, d.row_tax), (dec("10.00"), dec("0")));
        let trade = TaxSettings {
            cross_border_trade: true,
            ..TaxSettings::uk_b2c()
        };
        let d = Calculator::new(&trade).calculate(&item("1", "12.00", "1", "0", true, "0"));
        assert_eq!((d.row_total, d.row_tax), (dec("12.00"), dec("0")));
    }

    #[test]
    fn rules_follow_the_destination() {
        let uk = TaxSettings::uk();
        assert_eq!(uk.rate(TaxClass::Standard, "GB"), dec("20"));
        assert_eq!(uk.rate(TaxClass::Standard, "FR"), dec("0"), "an export");
        assert_eq!(uk.rate(TaxClass::Books, "GB"), dec("0"));
        let ie = TaxSettings::ie_oss();
        assert_eq!(ie.rate(TaxClass::Standard, "DE"), dec("19"), "OSS: the buyer's VAT");
        assert_eq!(ie.rate(TaxClass::Standard, "US"), dec("0"));
        assert_eq!(ie.store_rate(TaxClass::Standard), dec("23"));
    }
}
