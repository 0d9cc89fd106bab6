//! Magento's total collectors, in order-currency amounts:
//! - the quote (`tax_subtotal` → `shipping` → `tax_shipping` → `discount` → `tax` →
//!   `grand_total`): tax before discount to price the items, the cart rule's discount
//!   (per-percent delta rounding; on prices with or without tax; optionally on the
//!   shipping), then the final tax after (or before) discount with its compensation;
//! - the invoice (`subtotal`, `discount`, `shipping`, `tax`, `grand_total`): each item's
//!   share of what the order still has to invoice, the last share taking the remainder,
//!   shipping and its discount on the first invoice, one delta-rounding "regular"
//!   rounder shared by every amount;
//! - the credit memo (`subtotal`, `discount`, `shipping`, `tax`, `grand_total` with the
//!   adjustments), from an invoice or straight from the order.
//!
//! Amounts are stored as Magento stores them: DECIMAL(20,4).

use rust_decimal::{Decimal, RoundingStrategy};

use super::tax::{Calculator, TaxClass, TaxItem, TaxSettings, round};

/// What a DECIMAL(20,4) column keeps.
pub fn stored(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero)
}

/// One row of the cart.
#[derive(Debug, Clone)]
pub struct CartLine {
    pub product_id: i64,
    pub sku: String,
    pub name: String,
    pub product_type: &'static str,
    pub class: TaxClass,
    /// Unit price in the order currency as the catalogue holds it (with tax when the
    /// store's catalogue prices include tax).
    pub price: Decimal,
    pub qty: Decimal,
    pub parent: Option<usize>,
    /// Whether the row is priced itself (false for a configurable's child and a
    /// dynamic bundle's parent: Magento's "dummy" items).
    pub calculated: bool,
}

/// A cart price rule that applied.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// "Percent of product price discount".
    pub percent: Decimal,
    /// "Apply to Shipping Amount".
    pub apply_to_shipping: bool,
    /// "Free Shipping": the carrier prices the order at 0.
    pub free_shipping: bool,
}

/// An order item's amounts (what `sales_order_item` stores).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemAmounts {
    pub price: Decimal,
    pub price_incl_tax: Decimal,
    pub row_total: Decimal,
    pub row_total_incl_tax: Decimal,
    pub tax: Decimal,
    pub tax_percent: Decimal,
    pub discount: Decimal,
    pub compensation: Decimal,
}

/// The order's totals (what `sales_order` stores).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OrderTotals {
    pub items: Vec<ItemAmounts>,
    pub subtotal: Decimal,
    /// Shipping without tax (before its discount), with tax, its tax (after discount).
    pub shipping_amount: Decimal,
    pub shipping_incl_tax: Decimal,
    pub shipping_tax: Decimal,
    pub shipping_discount: Decimal,
    pub shipping_compensation: Decimal,
    /// Items' and shipping's tax.
    pub tax: Decimal,
    /// Items' and shipping's discount, positive (Magento stores it negated).
    pub discount: Decimal,
    /// Items' discount tax compensation.
    pub compensation: Decimal,
    pub grand_total: Decimal,
}

/// SalesRule's per-percent delta rounding of discounts (`Utility::deltaRoundingFix`).
#[derive(Debug, Default)]
struct DiscountRounder(std::collections::HashMap<String, Decimal>);

impl DiscountRounder {
    fn round(&mut self, amount: Decimal, percent: Decimal) -> Decimal {
        let key = percent.normalize().to_string();
        let amount = amount + self.0.get(&key).copied().unwrap_or_default();
        let rounded = round(amount);
        self.0.insert(key, amount - rounded);
        rounded
    }
}

fn item_code(index: usize) -> String {
    format!("sequence-{}", index + 1)
}

/// The quote's collectors for one address. `shipping_price` is the carrier's price as
/// configured (with tax when shipping prices include tax); `country` is the address
/// tax is calculated by.
pub fn collect_order(
    settings: &TaxSettings,
    lines: &[CartLine],
    rule: Option<&Rule>,
    shipping_price: Decimal,
    country: &str,
) -> OrderTotals {
    let shipping_price = if rule.is_some_and(|r| r.free_shipping) {
        Decimal::ZERO
    } else {
        shipping_price
    };
    let tax_item = |index: usize, line: &CartLine, discount: Decimal| TaxItem {
        code: item_code(index),
        unit_price: line.price,
        qty: line.qty,
        discount,
        tax_included: settings.prices_include_tax,
        rate: settings.rate(line.class, country),
        store_rate: settings.store_rate(line.class),
    };
    let shipping_item = |discount: Decimal| TaxItem {
        code: "shipping".into(),
        unit_price: shipping_price,
        qty: Decimal::ONE,
        discount,
        tax_included: settings.shipping_includes_tax,
        rate: settings.rate(settings.shipping_class, country),
        store_rate: settings.store_rate(settings.shipping_class),
    };

    // tax_subtotal: prices before any discount (what the discount is computed on).
    let mut before = Calculator::new(settings);
    let priced: Vec<Option<_>> = lines
        .iter()
        .enumerate()
        .map(|(i, l)| l.calculated.then(|| before.calculate(&tax_item(i, l, Decimal::ZERO))))
        .collect();
    // tax_shipping runs its own calculation.
    let shipping_before = Calculator::new(settings).calculate(&shipping_item(Decimal::ZERO));

    // discount: percent of the item's price (with or without tax, per configuration).
    let mut discounts = vec![Decimal::ZERO; lines.len()];
    let mut shipping_discount = Decimal::ZERO;
    if let Some(rule) = rule.filter(|r| !r.percent.is_zero()) {
        let pct = rule.percent.min(Decimal::ONE_HUNDRED);
        let mut rounder = DiscountRounder::default();
        for (i, line) in lines.iter().enumerate() {
            let Some(p) = &priced[i] else { continue };
            if p.row_total <= Decimal::ZERO {
                continue;
            }
            let unit = if settings.discount_on_incl_tax {
                p.price_incl_tax
            } else {
                p.price
            };
            let amount = rounder.round(line.qty * unit * pct / Decimal::ONE_HUNDRED, pct);
            discounts[i] = amount.min(unit * line.qty);
        }
        if rule.apply_to_shipping {
            let base = if settings.discount_on_incl_tax {
                shipping_before.row_total_incl_tax
            } else {
                shipping_before.row_total
            };
            shipping_discount = round((base * pct / Decimal::ONE_HUNDRED).min(base));
        }
    }

    // tax: the final calculation, items then shipping, one set of deltas.
    let mut calc = Calculator::new(settings);
    let mut totals = OrderTotals::default();
    for (i, line) in lines.iter().enumerate() {
        let amounts = if line.calculated {
            let d = calc.calculate(&tax_item(i, line, discounts[i]));
            ItemAmounts {
                price: d.price,
                price_incl_tax: d.price_incl_tax,
                row_total: d.row_total,
                row_total_incl_tax: d.row_total_incl_tax,
                tax: d.row_tax,
                tax_percent: d.tax_percent,
                discount: discounts[i],
                compensation: d.discount_tax_compensation,
            }
        } else {
            ItemAmounts::default()
        };
        totals.subtotal += amounts.row_total;
        totals.tax += amounts.tax;
        totals.discount += amounts.discount;
        totals.compensation += amounts.compensation;
        totals.items.push(amounts);
    }
    // A dynamic bundle's parent shows its children's price per unit (it is a dummy row).
    for (i, line) in lines.iter().enumerate() {
        if !line.calculated && lines.iter().any(|c| c.parent == Some(i)) {
            let children: Decimal = lines
                .iter()
                .enumerate()
                .filter(|(_, c)| c.parent == Some(i))
                .map(|(j, _)| totals.items[j].row_total)
                .sum();
            totals.items[i].price = round(children / line.qty);
        }
    }
    if !shipping_price.is_zero() {
        let s = calc.calculate(&shipping_item(shipping_discount));
        totals.shipping_amount = s.row_total;
        totals.shipping_incl_tax = s.row_total_incl_tax;
        totals.shipping_tax = s.row_tax;
        totals.shipping_compensation = s.discount_tax_compensation;
        totals.shipping_discount = shipping_discount;
        totals.tax += s.row_tax;
        totals.discount += shipping_discount;
    }
    totals.grand_total = (totals.subtotal + totals.shipping_amount + totals.tax + totals.compensation
        - totals.discount
        + totals.shipping_compensation)
        .max(Decimal::ZERO);
    totals
}

/// The invoice's and credit memo's `roundPrice($x, 'regular', $negative)`: one delta for
/// every amount of the document.
#[derive(Debug, Default)]
pub struct Rounder {
    delta: Decimal,
}

impl Rounder {
    pub fn round_price(&mut self, price: Decimal, negative: bool) -> Decimal {
        if price.is_zero() {
            return price;
        }
        if negative {
            self.delta = -self.delta;
        }
        let price = price + self.delta;
        let rounded = round(price);
        self.delta = price - rounded;
        if negative {
            self.delta = -self.delta;
        }
        rounded
    }
}

/// What an order item has been invoiced and refunded so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ItemProgress {
    pub qty_invoiced: Decimal,
    pub row_invoiced: Decimal,
    pub tax_invoiced: Decimal,
    pub discount_invoiced: Decimal,
    pub compensation_invoiced: Decimal,
    pub qty_refunded: Decimal,
    pub amount_refunded: Decimal,
    pub tax_refunded: Decimal,
    pub discount_refunded: Decimal,
    pub compensation_refunded: Decimal,
}

/// The order's running invoiced/refunded totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Progress {
    pub items: Vec<ItemProgress>,
    pub subtotal_invoiced: Decimal,
    pub tax_invoiced: Decimal,
    pub compensation_invoiced: Decimal,
    pub shipping_invoiced: bool,
    pub discount_invoiced: bool,
    pub shipping_refunded: Decimal,
    pub shipping_tax_refunded: Decimal,
    pub shipping_compensation_refunded: Decimal,
    pub tax_refunded: Decimal,
    pub compensation_refunded: Decimal,
}

impl Progress {
    pub fn new(items: usize) -> Self {
        Self {
            items: vec![ItemProgress::default(); items],
            ..Self::default()
        }
    }
}

/// One row of an invoice or credit memo.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocItem {
    /// The order item.
    pub item: usize,
    pub qty: Decimal,
    pub price: Decimal,
    pub row_total: Decimal,
    pub tax: Decimal,
    pub discount: Decimal,
    pub compensation: Decimal,
}

/// An invoice's or credit memo's totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocTotals {
    pub items: Vec<DocItem>,
    pub subtotal: Decimal,
    /// Positive; Magento stores the header discount negated.
    pub discount: Decimal,
    pub shipping_amount: Decimal,
    pub shipping_tax: Decimal,
    pub shipping_compensation: Decimal,
    /// Items' and shipping's tax.
    pub tax: Decimal,
    /// Items' and shipping's compensation.
    pub compensation: Decimal,
    pub adjustment_positive: Decimal,
    pub adjustment_negative: Decimal,
    pub grand_total: Decimal,
}

/// `Invoice::collectTotals` for the quantities `qtys` (one per order item; a dummy row
/// follows its parent). Records what was invoiced in `progress`.
pub fn collect_invoice(
    lines: &[CartLine],
    order: &OrderTotals,
    progress: &mut Progress,
    qtys: &[Decimal],
) -> DocTotals {
    let mut r = Rounder::default();
    let mut doc = DocTotals::default();
    let is_last = |i: usize, qty: Decimal, p: &Progress| qty + p.items[i].qty_invoiced >= lines[i].qty;
    let rows: Vec<usize> = (0..lines.len()).filter(|i| qtys[*i] > Decimal::ZERO).collect();
    let invoice_is_last = rows
        .iter()
        .filter(|i| lines[**i].calculated)
        .all(|i| is_last(*i, qtys[*i], progress))
        && (0..lines.len())
            .filter(|i| lines[*i].calculated && qtys[*i].is_zero())
            .all(|i| progress.items[i].qty_invoiced >= lines[i].qty);
    for &i in &rows {
        doc.items.push(DocItem {
            item: i,
            qty: qtys[i],
            price: order.items[i].price,
            ..DocItem::default()
        });
    }
    // subtotal
    let mut subtotal = Decimal::ZERO;
    for d in doc.items.iter_mut().filter(|d| lines[d.item].calculated) {
        let (oi, p) = (&order.items[d.item], &progress.items[d.item]);
        let mut row = oi.row_total - p.row_invoiced;
        if !is_last(d.item, d.qty, progress) {
            row = r.round_price(row / (lines[d.item].qty - p.qty_invoiced) * d.qty, false);
        }
        d.row_total = row;
        subtotal += row;
    }
    let allowed = order.subtotal - progress.subtotal_invoiced;
    doc.subtotal = if invoice_is_last {
        allowed
    } else {
        allowed.min(subtotal)
    };
    // discount (the shipping's on the first invoice to carry a discount)
    let mut discount = Decimal::ZERO;
    if !progress.discount_invoiced {
        discount += order.shipping_discount;
    }
    for d in doc.items.iter_mut().filter(|d| lines[d.item].calculated) {
        let (oi, p) = (&order.items[d.item], &progress.items[d.item]);
        if oi.discount.is_zero() {
            continue;
        }
        let mut amount = oi.discount - p.discount_invoiced;
        if !is_last(d.item, d.qty, progress) {
            amount = r.round_price(amount / (lines[d.item].qty - p.qty_invoiced) * d.qty, true);
        }
        d.discount = amount;
        discount += amount;
    }
    doc.discount = discount;
    // shipping (the first invoice)
    let ships = !progress.shipping_invoiced && !order.shipping_amount.is_zero();
    if ships {
        doc.shipping_amount = order.shipping_amount;
    }
    // tax
    let (mut tax, mut compensation) = (Decimal::ZERO, Decimal::ZERO);
    for d in doc.items.iter_mut().filter(|d| lines[d.item].calculated) {
        let (oi, p) = (&order.items[d.item], &progress.items[d.item]);
        if oi.tax.is_zero() && oi.compensation.is_zero() {
            continue;
        }
        let mut t = oi.tax - p.tax_invoiced;
        let mut c = oi.compensation - p.compensation_invoiced;
        if !is_last(d.item, d.qty, progress) {
            let available = lines[d.item].qty - p.qty_invoiced;
            t = r.round_price(t / available * d.qty, false);
            c = r.round_price(c / available * d.qty, false);
        }
        d.tax = t;
        d.compensation = c;
        tax += t;
        compensation += c;
    }
    if !progress.shipping_invoiced {
        tax += order.shipping_tax;
        compensation += order.shipping_compensation;
        doc.shipping_tax = order.shipping_tax;
        doc.shipping_compensation = order.shipping_compensation;
    }
    let allowed_tax = order.tax - progress.tax_invoiced;
    let allowed_compensation = order.compensation + order.shipping_compensation - progress.compensation_invoiced;
    if invoice_is_last {
        tax = allowed_tax;
        compensation = allowed_compensation;
    } else {
        tax = tax.min(allowed_tax);
        compensation = compensation.min(allowed_compensation);
    }
    doc.tax = tax;
    doc.compensation = compensation;
    doc.grand_total =
        (doc.subtotal - doc.discount + doc.shipping_amount + doc.tax + doc.compensation).max(Decimal::ZERO);

    // register
    for d in &doc.items {
        let p = &mut progress.items[d.item];
        p.qty_invoiced += d.qty;
        p.row_invoiced += d.row_total;
        p.tax_invoiced += d.tax;
        p.discount_invoiced += d.discount;
        p.compensation_invoiced += d.compensation;
    }
    progress.subtotal_invoiced += doc.subtotal;
    progress.tax_invoiced += doc.tax;
    progress.compensation_invoiced += doc.compensation;
    // Only the first invoice carries shipping and its tax.
    progress.shipping_invoiced = true;
    progress.discount_invoiced |= !doc.discount.is_zero();
    doc
}

/// What the admin asked to refund.
#[derive(Debug, Clone, Default)]
pub struct Refund {
    /// Per order item (0 refunds nothing of it; an adjustment-only refund has all 0).
    pub qtys: Vec<Decimal>,
    /// Shipping to refund (without tax); `None` = what is left.
    pub shipping: Option<Decimal>,
    pub adjustment_positive: Decimal,
    pub adjustment_negative: Decimal,
}

/// `Creditmemo::collectTotals`. `invoice` is the invoice refunded (online refunds and
/// the invoice page), `None` for a refund from the order. Records what was refunded.
pub fn collect_credit_memo(
    lines: &[CartLine],
    order: &OrderTotals,
    progress: &mut Progress,
    invoice: Option<&DocTotals>,
    refund: &Refund,
) -> DocTotals {
    let mut r = Rounder::default();
    let mut doc = DocTotals::default();
    let left = |i: usize, p: &Progress| p.items[i].qty_invoiced - p.items[i].qty_refunded;
    let is_last = |i: usize, qty: Decimal, p: &Progress| qty >= left(i, p);
    for (i, qty) in refund.qtys.iter().enumerate() {
        // The module lists every row the admin saw, refunded or not.
        if progress.items[i].qty_invoiced > Decimal::ZERO {
            doc.items.push(DocItem {
                item: i,
                qty: *qty,
                price: order.items[i].price,
                ..DocItem::default()
            });
        }
    }
    let memo_is_last = (0..lines.len())
        .filter(|i| lines[*i].calculated && progress.items[*i].qty_invoiced > Decimal::ZERO)
        .all(|i| is_last(i, refund.qtys[i], progress));
    // subtotal
    for d in doc.items.iter_mut().filter(|d| lines[d.item].calculated) {
        let p = &progress.items[d.item];
        let mut row = p.row_invoiced - p.amount_refunded;
        if !is_last(d.item, d.qty, progress) {
            row = r.round_price(row / left(d.item, progress) * d.qty, false);
        }
        d.row_total = row;
        doc.subtotal += row;
    }
    // shipping
    let shipping_left = order.shipping_amount - progress.shipping_refunded;
    doc.shipping_amount = refund.shipping.unwrap_or(shipping_left).min(shipping_left);
    // discount: the shipping's share unrounded, as Magento computes it
    if !doc.shipping_amount.is_zero() && !order.shipping_amount.is_zero() {
        doc.discount += doc.shipping_amount * order.shipping_discount / order.shipping_amount;
    }
    for d in doc.items.iter_mut().filter(|d| lines[d.item].calculated) {
        let p = &progress.items[d.item];
        if p.discount_invoiced.is_zero() {
            continue;
        }
        let mut amount = p.discount_invoiced - p.discount_refunded;
        if !is_last(d.item, d.qty, progress) {
            amount = r.round_price(amount / left(d.item, progress) * d.qty, true);
        }
        d.discount = amount;
        doc.discount += amount;
    }
    // tax
    let (mut tax, mut compensation) = (Decimal::ZERO, Decimal::ZERO);
    for d in doc
        .items
        .iter_mut()
        .filter(|d| lines[d.item].calculated && d.qty > Decimal::ZERO)
    {
        let p = &progress.items[d.item];
        let mut t = p.tax_invoiced - p.tax_refunded;
        let mut c = p.compensation_invoiced - p.compensation_refunded;
        if !is_last(d.item, d.qty, progress) {
            let available = left(d.item, progress);
            t = r.round_price(t / available * d.qty, false);
            c = r.round_price(c / available * d.qty, false);
        }
        d.tax = t;
        d.compensation = c;
        tax += t;
        compensation += c;
    }
    let mut partial_shipping = false;
    let (mut shipping_tax, mut shipping_compensation) = (Decimal::ZERO, Decimal::ZERO);
    match invoice {
        Some(inv) => {
            if !order.shipping_amount.is_zero() {
                let factor = doc.shipping_amount / order.shipping_amount;
                shipping_tax = r.round_price(inv.shipping_tax * factor, false);
                compensation = r.round_price(compensation + inv.shipping_compensation * factor, false);
                partial_shipping = factor < Decimal::ONE && inv.shipping_tax > Decimal::ZERO;
            }
        }
        None => {
            if shipping_left > doc.shipping_amount {
                let part = doc.shipping_amount / order.shipping_amount;
                shipping_tax = r.round_price(order.shipping_tax * part, false);
                shipping_compensation = r.round_price(order.shipping_compensation * part, false);
                partial_shipping = part < Decimal::ONE && order.shipping_tax > Decimal::ZERO;
            } else if shipping_left == doc.shipping_amount && !shipping_left.is_zero() {
                shipping_tax = order.shipping_tax - progress.shipping_tax_refunded;
                shipping_compensation = order.shipping_compensation - progress.shipping_compensation_refunded;
            }
            compensation += shipping_compensation;
        }
    }
    tax += shipping_tax;
    let allowed_tax = progress.tax_invoiced - progress.tax_refunded;
    let allowed_compensation = progress.compensation_invoiced - progress.compensation_refunded;
    if memo_is_last && !partial_shipping {
        tax = allowed_tax;
        compensation = allowed_compensation;
    } else {
        tax = tax.min(allowed_tax);
        compensation = compensation.min(allowed_compensation);
    }
    doc.shipping_tax = shipping_tax;
    doc.shipping_compensation = shipping_compensation;
    doc.tax = tax;
    doc.compensation = compensation;
    doc.adjustment_positive = refund.adjustment_positive;
    doc.adjustment_negative = refund.adjustment_negative;
    doc.grand_total = stored(
        doc.subtotal - doc.discount + doc.shipping_amount + doc.tax + doc.compensation + doc.adjustment_positive
            - doc.adjustment_negative,
    );
    doc.discount = stored(doc.discount);

    for d in &doc.items {
        let p = &mut progress.items[d.item];
        p.qty_refunded += d.qty;
        p.amount_refunded += d.row_total;
        p.tax_refunded += d.tax;
        p.discount_refunded += d.discount;
        p.compensation_refunded += d.compensation;
    }
    progress.shipping_refunded += doc.shipping_amount;
    progress.shipping_tax_refunded += doc.shipping_tax;
    progress.shipping_compensation_refunded += doc.shipping_compensation;
    progress.tax_refunded += doc.tax;
    progress.compensation_refunded += doc.compensation;
    doc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dec(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn line(sku: &str, price: &str, qty: &str, class: TaxClass) -> CartLine {
        CartLine {
            product_id: 1,
            sku: sku.into(),
            name: sku.into(),
            product_type: "simple",
            class,
            price: dec(price),
            qty: dec(qty),
            parent: None,
            calculated: true,
        }
    }

    fn percent(p: &str, shipping: bool) -> Rule {
        Rule {
            percent: dec(p),
            apply_to_shipping: shipping,
            free_shipping: false,
        }
    }

    /// A UK B2C store (prices with VAT), a £24.00 lamp and a £12.00 book... the figures
    /// Magento's admin shows for the order.
    #[test]
    fn vat_inclusive_basket_with_a_coupon() {
        let s = TaxSettings::uk_b2c();
        let lines = [
            line("LAMP", "24.00", "1", TaxClass::Standard),
            line("BOOK", "12.00", "1", TaxClass::Books),
        ];
        let o = collect_order(&s, &lines, Some(&percent("10", false)), dec("4.80"), "GB");
        // Lamp: £20.00 + £4.00 VAT; 10 % of £24.00 = £2.40 off; VAT after discount on
        // £21.60 = £3.60; the £0.40 VAT the discount took is compensated.
        assert_eq!(o.items[0].row_total, dec("20.00"));
        assert_eq!(o.items[0].discount, dec("2.40"));
        assert_eq!(o.items[0].tax, dec("3.60"));
        assert_eq!(o.items[0].compensation, dec("0.40"));
        // Book: zero-rated, £1.20 off.
        assert_eq!((o.items[1].tax, o.items[1].discount), (dec("0"), dec("1.20")));
        // Shipping £4.80 with VAT = £4.00 + £0.80.
        assert_eq!((o.shipping_amount, o.shipping_tax), (dec("4.00"), dec("0.80")));
        assert_eq!(o.subtotal, dec("32.00"));
        assert_eq!(o.tax, dec("4.40"));
        assert_eq!(o.discount, dec("3.60"));
        // What the buyer pays: 24 + 12 + 4.80 − 3.60.
        assert_eq!(o.grand_total, dec("37.20"));
        // The module's lines leave the compensation out: they add to 36.80.
        let module_sum: Decimal = o
            .items
            .iter()
            .map(|i| i.row_total + i.tax - i.discount)
            .sum::<Decimal>()
            + o.shipping_amount
            + o.shipping_tax;
        assert_eq!(o.grand_total - module_sum, dec("0.40"));
    }

    /// Prices without tax, 20 % off including shipping, tax after discount: the
    /// shipping tax is on the discounted shipping.
    #[test]
    fn a_rule_applied_to_shipping() {
        let s = TaxSettings::uk();
        let lines = [line("MUG", "10.00", "2", TaxClass::Standard)];
        let o = collect_order(&s, &lines, Some(&percent("20", true)), dec("5.00"), "GB");
        assert_eq!(o.items[0].discount, dec("4.00"));
        assert_eq!(o.items[0].tax, dec("3.20"));
        assert_eq!(o.shipping_discount, dec("1.00"));
        assert_eq!(o.shipping_amount, dec("5.00"), "the full charge");
        assert_eq!(o.shipping_tax, dec("0.80"), "20 % of £4.00");
        assert_eq!(o.discount, dec("5.00"));
        assert_eq!(o.grand_total, dec("24.00"));
    }

    #[test]
    fn tax_by_shipping_address_and_exports() {
        let s = TaxSettings::uk();
        let lines = [line("MUG", "10.00", "1", TaxClass::Standard)];
        assert_eq!(collect_order(&s, &lines, None, dec("0"), "GB").tax, dec("2.00"));
        assert_eq!(collect_order(&s, &lines, None, dec("0"), "FR").tax, dec("0"));
        let free = Rule {
            percent: dec("100"),
            apply_to_shipping: true,
            free_shipping: true,
        };
        let o = collect_order(&s, &lines, Some(&free), dec("4.99"), "GB");
        assert_eq!(o.grand_total, dec("0"), "a 100 % coupon");
        assert_eq!(o.shipping_amount, dec("0"));
    }

    #[test]
    fn two_invoices_share_the_order_to_the_cent() {
        let s = TaxSettings::uk_b2c();
        let lines = [line("TEA", "3.99", "3", TaxClass::Standard)];
        let o = collect_order(&s, &lines, Some(&percent("15", false)), dec("3.60"), "GB");
        let mut p = Progress::new(1);
        let first = collect_invoice(&lines, &o, &mut p, &[dec("1")]);
        let second = collect_invoice(&lines, &o, &mut p, &[dec("2")]);
        assert_eq!(first.grand_total + second.grand_total, o.grand_total);
        assert_eq!(first.tax + second.tax, o.tax);
        assert_eq!(first.shipping_amount, o.shipping_amount, "shipping on the first");
        assert!(second.shipping_amount.is_zero());
        // Refund all of it from the order (an offline method): the memos give it back.
        let memo = collect_credit_memo(
            &lines,
            &o,
            &mut p,
            None,
            &Refund {
                qtys: vec![dec("3")],
                ..Refund::default()
            },
        );
        assert_eq!(memo.grand_total, o.grand_total);
        assert_eq!(memo.tax, o.tax);
    }

    #[test]
    fn adjustment_only_and_shipping_only_refunds() {
        let s = TaxSettings::uk();
        let lines = [line("MUG", "10.00", "1", TaxClass::Standard)];
        let o = collect_order(&s, &lines, None, dec("5.00"), "GB");
        let mut p = Progress::new(1);
        let invoice = collect_invoice(&lines, &o, &mut p, &[dec("1")]);
        let goodwill = collect_credit_memo(
            &lines,
            &o,
            &mut p,
            Some(&invoice),
            &Refund {
                qtys: vec![dec("0")],
                shipping: Some(dec("0")),
                adjustment_positive: dec("5.00"),
                adjustment_negative: dec("0"),
            },
        );
        assert_eq!(goodwill.grand_total, dec("5.00"));
        assert!(goodwill.tax.is_zero());
        let shipping = collect_credit_memo(
            &lines,
            &o,
            &mut p,
            Some(&invoice),
            &Refund {
                qtys: vec![dec("0")],
                shipping: None,
                ..Refund::default()
            },
        );
        assert_eq!(
            (shipping.shipping_amount, shipping.shipping_tax),
            (dec("5.00"), dec("1.00"))
        );
        assert_eq!(shipping.grand_total, dec("6.00"));
    }
}
