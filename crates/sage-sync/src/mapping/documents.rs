//! Magento invoices and credit memos → Sage sales invoices and credit notes, reconciled
//! to Magento's gross and VAT to the cent.
//!
//! The module's numbers do not always add up: its lines leave out Magento's discount tax
//! compensation (prices with tax and a discount), its header discount folds in a
//! shipping discount, and a partial document's header can round a cent apart from its
//! lines. The rules, in order (docs/sync-engine.md "Reconciling to Magento"):
//! 1. Each taxed line gets the rate Magento charged: the mapped percentage that
//!    explains its tax from its row (tax after or before discount, prices with or
//!    without tax). Lines Magento did not tax get the zero rate — and the EU
//!    goods/services type when the place of supply (the address Magento taxes by) is
//!    abroad. A taxed line never gets a zero rate.
//! 2. The invoice's header VAT is Magento's VAT; a cent the header rounds apart from the
//!    lines goes on the largest taxed line. Its header subtotal likewise for the net.
//! 3. The header discount beyond the lines' is the shipping discount: the shipping is
//!    booked net of it.
//! 4. What the grand total still holds is the discount tax compensation when it is
//!    what the lines' rates say the discounts took out of their VAT (the line's net
//!    is then its gross after discount less its VAT); a credit memo's missing shipping
//!    discount comes from its invoice's ratio. Anything else is unexplained: an
//!    adjustment line on the account set for it, or a failure that names it.
//! 5. Shipping goes in Sage's shipping panel when Sage's recomputation (rate × net)
//!    gives Magento's shipping tax, else as a line with its tax stated.
//! 6. Sage's arithmetic over the body must equal Magento's gross and VAT, or nothing
//!    is posted.

use rust_decimal::{Decimal, prelude::ToPrimitive as _};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{
    Ctx, Mapped, Totals, cents, config, decode_html, document_reference, idempotency_id, local_date, num, sage_address,
    sage_math, validation,
};
use crate::{
    outcome::{ErrorClass, Failure},
    policy::{TaxBasis, rate_key},
};
use ledger_magento_api::canonical::{Address, Contact, CreditMemo, Invoice, InvoiceLine};

/// How an invoice was booked, kept with it so its credit notes book the same way.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Treatment {
    /// The country of the address Magento taxed by.
    pub place_of_supply: String,
    /// The invoice's shipping discount over its shipping (a refund of shipping gives
    /// back that share of the discount too).
    #[serde(default)]
    pub shipping_discount_ratio: Option<Decimal>,
    /// The invoice's delivery address as sent to Sage: a credit memo carries none, and
    /// Sage judges a credit note's rates by where the goods went.
    #[serde(default)]
    pub delivery_address: Option<Value>,
}

/// A rate that explains a line's tax.
#[derive(Debug, Clone)]
struct Fit {
    id: String,
    pct: Decimal,
}

/// One line on its way to Sage.
#[derive(Debug, Clone)]
struct Row {
    description: String,
    sku: String,
    product_type: Option<String>,
    qty: Decimal,
    unit_price: Decimal,
    subtotal: Decimal,
    discount: Decimal,
    tax: Decimal,
    fit: Option<Fit>,
    /// Discount tax compensation booked back into the net.
    compensation: Decimal,
    /// A header-versus-lines rounding cent booked on this line.
    rounding: Decimal,
}

impl Row {
    fn net(&self) -> Decimal {
        self.subtotal - self.discount + self.compensation + self.rounding
    }
}

/// What the module's document gives the reconciliation.
struct Source<'a> {
    kind: &'static str,
    lines: &'a [InvoiceLine],
    shipping: Decimal,
    shipping_tax: Decimal,
    /// The invoice header's subtotal, VAT and discount (a credit memo has none).
    header: Option<(Decimal, Decimal, Decimal)>,
    /// A credit memo's invoice's shipping discount ratio: `Some(None)` when the invoice
    /// had none, `None` when the invoice is not known.
    shipping_discount_ratio: Option<Option<Decimal>>,
    /// Signed extra lines (a credit memo's adjustments).
    adjustments: Vec<(&'static str, Decimal)>,
    grand: Decimal,
    place: String,
    /// Whether `place` comes from the document (or its invoice) rather than the
    /// customer's current profile.
    place_certain: bool,
}

/// The reconciled document: Sage lines and shipping, Magento's gross and VAT.
struct Reconciled {
    lines: Vec<Value>,
    shipping: Option<(Decimal, String)>,
    gross: Decimal,
    vat: Decimal,
    notes: Vec<String>,
    shipping_discount_ratio: Option<Decimal>,
    /// Where the lines were booked as supplied (empty when nothing says).
    place: String,
}

fn zero_rate(ctx: &Ctx<'_>, country: &str, what: &str) -> Result<String, Failure> {
    let map = &ctx.settings.tax_rate_map;
    map.get(&format!("{country}:0.00"))
        .or_else(|| map.get("0.00"))
        .cloned()
        .ok_or_else(|| {
            config(
                "zero_tax_rate_not_mapped",
                format!("{what} needs a zero tax rate (0.00) in the tax-rate map."),
            )
        })
}

/// How Magento computed a row's tax (store-wide settings: "Catalog Prices" with or
/// without tax, "Apply Customer Tax" before or after discount).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// After discount, on prices without tax.
    ExclAfter,
    /// Before discount.
    Before,
    /// After discount, on prices with tax: the discount comes off the gross.
    InclAfter,
}

const MODES: [Mode; 3] = [Mode::ExclAfter, Mode::Before, Mode::InclAfter];

impl Mode {
    fn predict(self, subtotal: Decimal, discount: Decimal, pct: Decimal) -> Decimal {
        let p = pct / Decimal::ONE_HUNDRED;
        cents(match self {
            Self::ExclAfter => (subtotal - discount) * p,
            Self::Before => subtotal * p,
            Self::InclAfter => (subtotal * (Decimal::ONE + p) - discount) * p / (Decimal::ONE + p),
        })
    }
}

/// One taxed amount to explain.
#[derive(Debug, Clone, Copy)]
struct Taxed {
    subtotal: Decimal,
    discount: Decimal,
    tax: Decimal,
    qty: Decimal,
}

/// The mapped rate at `place` (its country's keys and the unqualified ones) whose
/// percentage explains `t` in one of `modes`, within Magento's rounding: the error,
/// whether the rate is the country's own (qualified), and the rate.
fn best_rate(t: Taxed, place: &str, modes: &[Mode], ctx: &Ctx<'_>) -> Option<(Decimal, bool, Fit)> {
    // Magento rounds per unit (unit base), carries deltas across rows (total base), and
    // a partial document's row is a rounded share of the order's: a few cents.
    let tolerance = Decimal::new(3, 2) + t.qty.abs() * Decimal::new(5, 3);
    let mut best: Option<(Decimal, bool, Fit)> = None;
    for (key, id) in &ctx.settings.tax_rate_map {
        let Some((country, pct)) = rate_key(key) else { continue };
        // A key without a country is the business's own rate: it explains a supply at
        // home only (Sage refuses it for a customer abroad), so a place guessed abroad
        // gives way to home when only home's rates fit.
        let home = place.is_empty() || place.eq_ignore_ascii_case(ctx.business_country);
        if pct <= Decimal::ZERO || country.map_or(!home, |c| !c.eq_ignore_ascii_case(place)) {
            continue;
        }
        let error = modes
            .iter()
            .map(|m| (m.predict(t.subtotal, t.discount, pct) - t.tax).abs())
            .min()
            .unwrap_or(Decimal::MAX);
        if error > tolerance {
            continue;
        }
        let qualified = country.is_some();
        if best
            .as_ref()
            .is_none_or(|(e, q, _)| error < *e || (error == *e && qualified && !*q))
        {
            best = Some((error, qualified, Fit { id: id.clone(), pct }));
        }
    }
    best
}

/// The place of supply and tax mode that explain every taxed row of a document at once
/// — one document has one of each, so a line cannot borrow another country's rate that
/// happens to fit — and, when known, the total's residual (only the tax-inclusive mode
/// leaves a compensation in it). The address-derived place is tried first, then the
/// business's country, then every country with mapped rates (the rate charged tells
/// where).
fn fit_document(
    taxed: &[Taxed],
    preferred: &str,
    certain: bool,
    residual: Option<Decimal>,
    ctx: &Ctx<'_>,
) -> Option<(String, Mode, Vec<Fit>)> {
    let places = candidate_places(preferred, ctx);
    // A place read from the document's own addresses wins when its rates explain the
    // rows; one guessed from the customer's current profile (a credit memo carries no
    // addresses) only breaks ties.
    let mut overall: Option<(Decimal, usize, String, Mode, Vec<Fit>)> = None;
    // The first place whose rates explain every row wins (the address's, then the
    // business's own, then the others); within it, the mode with the least error.
    for place in &places {
        // Least error; on a tie, the most rates that are the country's own.
        let mut best: Option<(Decimal, usize, Mode, Vec<Fit>)> = None;
        for mode in MODES {
            let mut total = Decimal::ZERO;
            let mut own = 0;
            let mut fits = Vec::with_capacity(taxed.len());
            let mut compensation = Decimal::ZERO;
            for t in taxed {
                match best_rate(*t, place, &[mode], ctx) {
                    Some((e, qualified, fit)) => {
                        total += e;
                        own += usize::from(qualified);
                        if mode == Mode::InclAfter && t.discount > Decimal::ZERO {
                            compensation +=
                                (tax_before_discount(t.subtotal, fit.pct, t.qty) - t.tax).max(Decimal::ZERO);
                        }
                        fits.push(fit);
                    }
                    None => break,
                }
            }
            if let Some(r) = residual {
                total += (r - compensation).abs();
            }
            if fits.len() == taxed.len()
                && best
                    .as_ref()
                    .is_none_or(|(e, o, ..)| total < *e || (total == *e && own > *o))
            {
                best = Some((total, own, mode, fits));
            }
        }
        if let Some((error, own, mode, fits)) = best {
            if certain {
                return Some((place.clone(), mode, fits));
            }
            if overall
                .as_ref()
                .is_none_or(|(e, o, ..)| error < *e || (error == *e && own > *o))
            {
                overall = Some((error, own, place.clone(), mode, fits));
            }
        }
    }
    overall.map(|(_, _, place, mode, fits)| (place, mode, fits))
}

/// Where a supply may have been: the address's country, the business's, then every
/// country with mapped rates.
fn candidate_places(preferred: &str, ctx: &Ctx<'_>) -> Vec<String> {
    let mut places: Vec<String> = Vec::new();
    for p in std::iter::once(preferred.to_owned())
        .chain(std::iter::once(ctx.business_country.to_owned()))
        .chain(
            ctx.settings
                .tax_rate_map
                .keys()
                .filter_map(|k| rate_key(k).and_then(|(c, _)| c.map(str::to_owned))),
        )
    {
        if !p.is_empty() && !places.iter().any(|q| q.eq_ignore_ascii_case(&p)) {
            places.push(p.to_ascii_uppercase());
        }
    }
    places
}

/// How a credit memo whose invoice is unknown, and which refunds shipping, was taxed:
/// the shipping discount it gives back is unseen, so the place, the modes, the rates and
/// that discount are chosen together.
struct MemoFit {
    place: String,
    mode: Option<Mode>,
    fits: Vec<Fit>,
    shipping: Option<Fit>,
    shipping_discount: Decimal,
}

/// The hypothesis whose figures explain the rows' taxes, the shipping's tax and the
/// memo's total (`residual`: what it holds beyond rows, shipping and adjustments as
/// sent) most exactly.
fn fit_with_unknown_shipping(
    taxed: &[Taxed],
    shipping: Decimal,
    shipping_tax: Decimal,
    residual: Decimal,
    preferred: &str,
    ctx: &Ctx<'_>,
) -> Option<MemoFit> {
    let tolerance = Decimal::new(3, 2);
    let item_modes: Vec<Option<Mode>> = if taxed.is_empty() {
        vec![None]
    } else {
        MODES.iter().copied().map(Some).collect()
    };
    let mut best: Option<(Decimal, usize, MemoFit)> = None;
    let mut consider = |score: Decimal, own: usize, fit: MemoFit| {
        if best
            .as_ref()
            .is_none_or(|(s, o, _)| score < *s || (score == *s && own > *o))
        {
            best = Some((score, own, fit));
        }
    };
    for place in candidate_places(preferred, ctx) {
        for item_mode in &item_modes {
            let (mut error, mut own, mut compensation) = (Decimal::ZERO, 0, Decimal::ZERO);
            let mut fits = Vec::new();
            if let Some(m) = item_mode {
                for t in taxed {
                    let Some((e, qualified, fit)) = best_rate(*t, &place, &[*m], ctx) else {
                        break;
                    };
                    error += e;
                    own += usize::from(qualified);
                    if *m == Mode::InclAfter && t.discount > Decimal::ZERO {
                        compensation += (tax_before_discount(t.subtotal, fit.pct, t.qty) - t.tax).max(Decimal::ZERO);
                    }
                    fits.push(fit);
                }
                if fits.len() != taxed.len() {
                    continue;
                }
            }
            // The compensation estimates are a cent or two from Magento's: a "discount"
            // that small below zero is none, its size counted against the hypothesis.
            let slack = Decimal::new(2, 2) * Decimal::from(taxed.len() + 1);
            let settle = |discount: Decimal| -> Option<(Decimal, Decimal)> {
                if discount < -slack || discount > shipping {
                    None
                } else if discount < Decimal::ZERO {
                    Some((Decimal::ZERO, -discount))
                } else {
                    Some((discount, Decimal::ZERO))
                }
            };
            if shipping_tax.is_zero() {
                // Untaxed shipping: its discount is whatever the total lacks.
                if let Some((discount, off)) = settle(compensation - residual) {
                    consider(
                        error + off,
                        own,
                        MemoFit {
                            place: place.clone(),
                            mode: *item_mode,
                            fits: fits.clone(),
                            shipping: None,
                            shipping_discount: discount,
                        },
                    );
                }
                continue;
            }
            for ship_mode in shipping_modes(*item_mode) {
                for (key, id) in &ctx.settings.tax_rate_map {
                    let Some((country, pct)) = rate_key(key) else { continue };
                    if pct <= Decimal::ZERO || country.is_some_and(|c| !c.eq_ignore_ascii_case(&place)) {
                        continue;
                    }
                    // With a discount on tax-inclusive shipping, the shipping's own
                    // compensation is in the total too.
                    let shipping_compensation = match ship_mode {
                        Mode::InclAfter => {
                            (tax_before_discount(shipping, pct, Decimal::ONE) - shipping_tax).max(Decimal::ZERO)
                        }
                        _ => Decimal::ZERO,
                    };
                    let candidates = [compensation - residual, compensation + shipping_compensation - residual];
                    for candidate in candidates {
                        let Some((discount, off)) = settle(candidate) else {
                            continue;
                        };
                        let e = (ship_mode.predict(shipping, discount, pct) - shipping_tax).abs() + off;
                        if e > tolerance {
                            continue;
                        }
                        consider(
                            error + e,
                            own + usize::from(country.is_some()),
                            MemoFit {
                                place: place.clone(),
                                mode: *item_mode,
                                fits: fits.clone(),
                                shipping: Some(Fit { id: id.clone(), pct }),
                                shipping_discount: discount,
                            },
                        );
                    }
                }
            }
        }
    }
    best.map(|(_, _, fit)| fit)
}

/// The modes shipping may follow given the items': after or before discount is one
/// setting, prices with or without tax another for shipping.
fn shipping_modes(items: Option<Mode>) -> &'static [Mode] {
    match items {
        Some(Mode::Before) => &[Mode::Before],
        Some(_) => &[Mode::ExclAfter, Mode::InclAfter],
        None => &MODES,
    }
}

fn not_mapped(t: Taxed, what: &str) -> Failure {
    let base = t.subtotal - t.discount;
    let pct = if base.is_zero() {
        Decimal::ZERO
    } else {
        (t.tax / base * Decimal::ONE_HUNDRED).round_dp(2)
    };
    config(
        "tax_rate_not_mapped",
        format!(
            "{what} was taxed at about {pct}% ({} on {base}), and no mapped Sage tax rate gives that; add its percentage to the tax-rate map.",
            t.tax
        ),
    )
}

/// A taxed amount's rate on its own (any place, any mode), else the default when it is
/// a taxed rate: never a zero rate for a taxed amount.
fn lone_rate(t: Taxed, place: &str, what: &str, ctx: &Ctx<'_>) -> Result<Fit, Failure> {
    let mut places = vec![place.to_owned(), ctx.business_country.to_owned()];
    places.extend(
        ctx.settings
            .tax_rate_map
            .keys()
            .filter_map(|k| rate_key(k).and_then(|(c, _)| c.map(str::to_owned))),
    );
    if let Some((_, _, fit)) = places
        .iter()
        .filter_map(|p| best_rate(t, p, &MODES, ctx))
        .min_by_key(|(e, q, _)| (*e, !*q))
    {
        return Ok(fit);
    }
    match ctx.settings.default_tax_rate_id.as_deref() {
        Some(id) if ctx.rates.percentage(id).is_some_and(|p| p > Decimal::ZERO) => Ok(Fit {
            id: id.to_owned(),
            pct: ctx.rates.percentage(id).unwrap_or_default(),
        }),
        _ => Err(not_mapped(t, what)),
    }
}

/// Spreads `amount` (cents) over `weights`, largest first, whole cents each.
fn spread(amount: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
    let total: Decimal = weights.iter().sum();
    let mut shares: Vec<Decimal> = weights
        .iter()
        .map(|w| {
            if total.is_zero() {
                Decimal::ZERO
            } else {
                (amount * w / total).round_dp_with_strategy(2, rust_decimal::RoundingStrategy::ToZero)
            }
        })
        .collect();
    let mut left = amount - shares.iter().sum::<Decimal>();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|a, b| weights[*b].cmp(&weights[*a]));
    let cent = Decimal::new(1, 2)
        * if left < Decimal::ZERO {
            -Decimal::ONE
        } else {
            Decimal::ONE
        };
    let steps = (left / cent).floor().to_usize().unwrap_or(0);
    for i in 0..steps.min(order.len() * 1000) {
        if order.is_empty() {
            break;
        }
        shares[order[i % order.len()]] += cent;
        left -= cent;
    }
    // A sub-cent rest (never, with cent amounts) stays on the largest share.
    if let Some(first) = order.first() {
        shares[*first] += left;
    }
    shares
}

fn largest(rows: &[Row], taxed: bool) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| !taxed || r.tax > Decimal::ZERO)
        .max_by_key(|(_, r)| r.net())
        .map(|(i, _)| i)
}

fn eu_kind_of(row: &Row, ctx: &Ctx<'_>) -> String {
    row.product_type
        .as_deref()
        .and_then(|t| ctx.settings.product_type_eu_goods_map.get(t))
        .cloned()
        .unwrap_or_else(|| ctx.settings.default_eu_goods_services_type.clone())
}

/// A tax-inclusive row's VAT before discount, from its net row total: the cent amount
/// `t` with `round((net + t) × p / (1 + p)) = t`, preferring a gross that is a whole
/// number of cents per unit (Magento prices units, then multiplies).
fn tax_before_discount(subtotal: Decimal, pct: Decimal, qty: Decimal) -> Decimal {
    let p = pct / Decimal::ONE_HUNDRED;
    let guess = cents(subtotal * p);
    let cent = Decimal::new(1, 2);
    let mut best = (i32::MIN, guess);
    for step in -2..=2_i64 {
        let t = guess + cent * Decimal::from(step);
        let gross = subtotal + t;
        let fixed = cents(gross * p / (Decimal::ONE + p)) == t;
        let whole = qty > Decimal::ZERO && (gross / qty).round_dp(2) * qty == gross;
        let score = i32::from(fixed) * 4 + i32::from(whole && fixed) * 2 - i32::try_from(step.abs()).unwrap_or(2);
        if score > best.0 || (score == best.0 && step == 0) {
            best = (score, t);
        }
    }
    best.1
}

fn reconcile(src: Source<'_>, ctx: &Ctx<'_>) -> Result<Reconciled, Failure> {
    let account = ctx.settings.default_ledger_account_id.clone().ok_or_else(|| {
        config(
            "ledger_account_not_set",
            "Choose a default sales ledger account in the binding's settings.",
        )
    })?;
    let cent = Decimal::new(1, 2);
    let place = src.place.to_ascii_uppercase();
    let mut notes = Vec::new();

    // Rows: zero-quantity rows (an adjustment-only refund lists every item at 0) and
    // the zero-amount rows of composite products carry nothing.
    let priced = src
        .lines
        .iter()
        .any(|l| !cents(l.line_subtotal).is_zero() || !cents(l.line_tax).is_zero());
    let mut rows = Vec::new();
    for line in src.lines {
        let subtotal = cents(line.line_subtotal);
        let tax = cents(line.line_tax);
        if line.qty.is_zero() || (priced && subtotal.is_zero() && tax.is_zero()) {
            continue;
        }
        if line.qty < Decimal::ZERO {
            return Err(validation(
                "invalid_quantity",
                format!("Line {} has quantity {}.", line.sku, line.qty),
            ));
        }
        // line_total = row total + tax − item discount.
        let discount = cents(line.line_subtotal + line.line_tax - line.line_total).max(Decimal::ZERO);
        let description = decode_html(&line.name);
        rows.push(Row {
            description: if description.trim().is_empty() {
                line.sku.clone()
            } else {
                description
            },
            product_type: line.product_type.clone(),
            qty: line.qty,
            unit_price: cents(line.unit_price),
            subtotal,
            discount,
            tax,
            fit: None,
            sku: line.sku.clone(),
            compensation: Decimal::ZERO,
            rounding: Decimal::ZERO,
        });
    }

    let shipping = cents(src.shipping);
    let mut shipping_tax = cents(src.shipping_tax);
    let line_discounts: Decimal = rows.iter().map(|r| r.discount).sum();

    // 2. The header's net and VAT are Magento's.
    let mut shipping_discount = Decimal::ZERO;
    if let Some((subtotal, vat, discount)) = src.header {
        let n = Decimal::from(rows.len().max(1));
        let lines_subtotal: Decimal = rows.iter().map(|r| r.subtotal).sum();
        let diff = cents(subtotal) - lines_subtotal;
        if !diff.is_zero()
            && diff.abs() <= cent * n
            && let Some(i) = largest(&rows, false)
        {
            rows[i].rounding += diff;
        }
        let lines_vat: Decimal = rows.iter().map(|r| r.tax).sum::<Decimal>() + shipping_tax;
        let diff = cents(vat) - lines_vat;
        if !diff.is_zero() {
            match largest(&rows, true) {
                Some(i) if diff.abs() <= cent * (n + Decimal::ONE) => rows[i].tax += diff,
                _ if diff.abs() <= cent && shipping_tax > Decimal::ZERO => shipping_tax += diff,
                _ => {
                    return Err(validation(
                        "total_mismatch",
                        format!(
                            "Magento's VAT on this {} is {:.2} but its lines and shipping carry {lines_vat:.2} (difference {diff:.2}): \
                             tax the module does not itemise (Fixed Product Tax, gift wrapping?). Nothing was posted.",
                            src.kind,
                            cents(vat)
                        ),
                    ));
                }
            }
        }
        // 3. The header discount beyond the lines' is the shipping's.
        let extra = cents(discount.abs()) - line_discounts;
        if extra > Decimal::ZERO && shipping > Decimal::ZERO {
            shipping_discount = extra.min(shipping);
        }
    } else if let Some(Some(ratio)) = src.shipping_discount_ratio {
        shipping_discount = cents(shipping * ratio);
    }

    // 1. The rate Magento charged each taxed row: one place and mode for the document.
    let taxed: Vec<Taxed> = rows
        .iter()
        .filter(|r| r.tax > Decimal::ZERO)
        .map(|r| Taxed {
            subtotal: r.subtotal,
            discount: r.discount,
            tax: r.tax,
            qty: r.qty,
        })
        .collect();
    let mut mode = None;
    let mut place = place;
    // What the total holds beyond the rows, shipping and adjustments as sent: the
    // compensation when the mode is "after discount on prices with tax", nothing in the
    // others — so it tells the modes apart (unless the shipping's own discount or an
    // unknown one could hold some of it).
    let adjustments: Decimal = src.adjustments.iter().map(|(_, a)| cents(*a)).sum();
    let plain = rows.iter().map(|r| r.net() + r.tax).sum::<Decimal>() + shipping - shipping_discount
        + shipping_tax
        + adjustments;
    // A credit memo whose invoice is unknown may give back an unseen shipping discount.
    let shipping_unknown = src.header.is_none() && src.shipping_discount_ratio.is_none() && shipping > Decimal::ZERO;
    let residual = Some(cents(src.grand) - plain).filter(|_| shipping_discount.is_zero() && !shipping_unknown);
    let memo_fit = shipping_unknown
        .then(|| fit_with_unknown_shipping(&taxed, shipping, shipping_tax, cents(src.grand) - plain, &place, ctx))
        .flatten();
    let document_fit = match &memo_fit {
        Some(f) => (!taxed.is_empty()).then(|| (f.place.clone(), f.mode.unwrap_or(Mode::ExclAfter), f.fits.clone())),
        None => (!taxed.is_empty())
            .then(|| fit_document(&taxed, &place, src.place_certain, residual, ctx))
            .flatten(),
    };
    if let Some(f) = &memo_fit {
        shipping_discount = f.shipping_discount;
        mode = f.mode;
        // Only the shipping was taxed: its rate says where, unless the place is certain.
        if taxed.is_empty() && (place.is_empty() || (!src.place_certain && !f.place.eq_ignore_ascii_case(&place))) {
            place.clone_from(&f.place);
        }
    }
    match document_fit {
        Some((found, m, fits)) => {
            mode = Some(m);
            // The rates charged say where the supply was; a place only guessed from the
            // customer's current profile (a credit memo without its invoice) gives way
            // to the business's own country too when its rates are what was charged.
            if place.is_empty()
                || (!found.eq_ignore_ascii_case(&place)
                    && (!found.eq_ignore_ascii_case(ctx.business_country) || !src.place_certain))
            {
                place = found;
            }
            let mut fits = fits.into_iter();
            for row in rows.iter_mut().filter(|r| r.tax > Decimal::ZERO) {
                row.fit = fits.next();
            }
        }
        None => {
            for row in rows.iter_mut().filter(|r| r.tax > Decimal::ZERO) {
                let t = Taxed {
                    subtotal: row.subtotal,
                    discount: row.discount,
                    tax: row.tax,
                    qty: row.qty,
                };
                row.fit = Some(lone_rate(t, &place, &format!("Line {}", row.sku), ctx)?);
            }
        }
    }
    let home = place.is_empty() || place.eq_ignore_ascii_case(ctx.business_country);

    // The shipping's rate (a credit memo's may need its discount found first).
    let shipping_taxed = |discount: Decimal| Taxed {
        subtotal: shipping,
        discount,
        tax: shipping_tax,
        qty: Decimal::ONE,
    };
    let ship_rate =
        |discount: Decimal| best_rate(shipping_taxed(discount), &place, shipping_modes(mode), ctx).map(|(_, _, f)| f);
    let mut shipping_fit = match &memo_fit {
        Some(f) => f.shipping.clone(),
        None if shipping_tax > Decimal::ZERO => ship_rate(shipping_discount),
        None => None,
    };

    // 4. What the grand total still holds.
    let booked = |rows: &[Row], shipping_discount: Decimal, shipping_compensation: Decimal, shipping_tax: Decimal| {
        rows.iter().map(|r| r.net() + r.tax).sum::<Decimal>() + shipping - shipping_discount
            + shipping_compensation
            + shipping_tax
            + adjustments
    };
    let gross = cents(src.grand);
    let residual = gross - booked(&rows, shipping_discount, Decimal::ZERO, shipping_tax);
    // The VAT each discount took out of a tax-inclusive price: what the rate charges
    // on the whole row less what Magento charged after the discount.
    let item_estimates: Vec<Decimal> = rows
        .iter()
        .map(|r| match &r.fit {
            Some(f) if r.discount > Decimal::ZERO => {
                (tax_before_discount(r.subtotal, f.pct, r.qty) - r.tax).max(Decimal::ZERO)
            }
            // A discount beyond the row's net (a 100 % coupon on a tax-inclusive price)
            // took all of its VAT: the excess is it.
            None if r.discount > r.subtotal => r.discount - r.subtotal,
            _ => Decimal::ZERO,
        })
        .collect();
    if shipping_tax > Decimal::ZERO && shipping_fit.is_none() {
        shipping_fit = Some(lone_rate(shipping_taxed(shipping_discount), &place, "Shipping", ctx)?);
    }
    let shipping_estimate = match &shipping_fit {
        Some(f) if shipping_discount > Decimal::ZERO => {
            (tax_before_discount(shipping, f.pct, Decimal::ONE) - shipping_tax).max(Decimal::ZERO)
        }
        _ => Decimal::ZERO,
    };
    let mut shipping_compensation = Decimal::ZERO;
    if !residual.is_zero() {
        // Magento compensates where prices include tax: catalogue prices and shipping
        // prices are two store-wide settings, so the residual is tested against the
        // items' compensation, the shipping's, or both.
        let mut best: Option<(Decimal, bool, bool)> = None;
        for (items, ship) in [(true, true), (true, false), (false, true)] {
            let used: Vec<Decimal> = item_estimates
                .iter()
                .filter(|_| items)
                .chain(std::iter::once(&shipping_estimate).filter(|_| ship))
                .copied()
                .filter(|e| !e.is_zero())
                .collect();
            let expected: Decimal = used.iter().sum();
            let error = (residual - expected).abs();
            // Each estimate is a cent or two from Magento's own (its pre-discount VAT
            // rounds per unit or carries a delta between rows).
            if expected > Decimal::ZERO
                && error <= Decimal::new(2, 2) * Decimal::from(used.len()) + Decimal::new(5, 3)
                && best.as_ref().is_none_or(|(e, _, _)| error < *e)
            {
                best = Some((error, items, ship));
            }
        }
        if let Some((_, items, ship)) = best {
            let mut weights: Vec<Decimal> = item_estimates
                .iter()
                .map(|e| if items { *e } else { Decimal::ZERO })
                .collect();
            weights.push(if ship { shipping_estimate } else { Decimal::ZERO });
            let shares = spread(residual, &weights);
            for (row, share) in rows.iter_mut().zip(&shares) {
                row.compensation = *share;
            }
            shipping_compensation = shares.last().copied().unwrap_or_default();
        } else if (src.header.is_none() || gross.is_zero()) && residual.abs() <= cent * Decimal::from(rows.len().max(1))
        {
            // A credit memo has no header to compare (and keeps an unrounded shipping
            // discount share): a cent per line its total rounds apart from its lines
            // goes on the largest, or on the shipping when it refunds nothing else. An
            // invoice's header says where instead.
            // (Magento also floors a 100 %-discounted invoice's total at zero when its
            // rows round a cent below.) The VAT stays what the document itemises.
            match largest(&rows, false) {
                Some(i) => rows[i].rounding += residual,
                None => shipping_compensation += residual,
            }
        } else {
            let unexplained = residual;
            match &ctx.settings.unexplained_difference_account_id {
                Some(_) => notes.push(format!(
                    "Magento's total holds {unexplained:.2} the module's data does not explain (a payment fee, gift card, store credit or Fixed Product Tax?); booked as a line on the account set for it."
                )),
                None => {
                    return Err(validation(
                        "total_mismatch",
                        format!(
                            "This {}'s lines, shipping and discounts add up to {:.2} but Magento's grand total is {gross:.2} (difference \
                             {unexplained:.2}): a payment fee, gift card, store credit or Fixed Product Tax the module does not itemise? \
                             Nothing was posted. Set an account for unexplained differences in the binding's settings to book it as a \
                             line, or correct the document in Magento.",
                            src.kind,
                            gross - unexplained
                        ),
                    ));
                }
            }
        }
    }
    let unexplained = gross - booked(&rows, shipping_discount, shipping_compensation, shipping_tax);

    // 1. Lines with their rates; untaxed lines abroad carry the EU goods/services type,
    // one type for the whole document.
    let abroad_kinds: Vec<String> = rows
        .iter()
        .filter(|r| r.fit.is_none())
        .map(|r| eu_kind_of(r, ctx))
        .collect();
    let eu_kind = if abroad_kinds.iter().all(|k| Some(k) == abroad_kinds.first()) {
        abroad_kinds
            .first()
            .cloned()
            .unwrap_or_else(|| ctx.settings.default_eu_goods_services_type.clone())
    } else {
        if !home {
            notes.push("mixed_eu_goods_services_coerced_to_default".to_owned());
        }
        ctx.settings.default_eu_goods_services_type.clone()
    };
    let mut lines = Vec::new();
    for row in &rows {
        let rate = match &row.fit {
            Some(f) => f.id.clone(),
            None => zero_rate(ctx, &place, if home { "An untaxed line" } else { "A line sold abroad" })?,
        };
        let net = row.net();
        let mut l = Map::new();
        l.insert("description".into(), json!(row.description));
        l.insert("ledger_account_id".into(), json!(account));
        l.insert("quantity".into(), num(row.qty.normalize()));
        l.insert("unit_price".into(), num(row.unit_price));
        l.insert("discount_amount".into(), num(row.discount - row.compensation));
        l.insert("net_amount".into(), num(net));
        l.insert("tax_rate_id".into(), json!(rate));
        l.insert("tax_amount".into(), num(row.tax));
        l.insert("total_amount".into(), num(net + row.tax));
        if row.fit.is_none() && !home {
            l.insert("eu_goods_services_type_id".into(), json!(eu_kind));
        }
        lines.push(Value::Object(l));
    }

    // 5. Shipping: the panel when Sage's recomputation agrees, else a line.
    let mut panel = None;
    let shipping_net = shipping - shipping_discount + shipping_compensation;
    if !shipping_net.is_zero() || !shipping_tax.is_zero() {
        let rate = match &shipping_fit {
            Some(f) => f.id.clone(),
            None => zero_rate(ctx, &place, "Untaxed shipping")?,
        };
        let pct = ctx
            .rates
            .percentage(&rate)
            .or_else(|| shipping_fit.as_ref().map(|f| f.pct))
            .unwrap_or_default();
        let recomputed = cents(shipping_net * pct / Decimal::ONE_HUNDRED);
        if recomputed == shipping_tax && !lines.is_empty() && shipping_net > Decimal::ZERO {
            panel = Some((shipping_net, rate));
        } else {
            let mut l = Map::new();
            l.insert("description".into(), json!("Shipping"));
            l.insert(
                "ledger_account_id".into(),
                json!(
                    ctx.settings
                        .shipping_ledger_account_id
                        .clone()
                        .unwrap_or_else(|| account.clone())
                ),
            );
            l.insert("quantity".into(), num(Decimal::ONE));
            l.insert("unit_price".into(), num(shipping_net));
            l.insert("net_amount".into(), num(shipping_net));
            l.insert("tax_rate_id".into(), json!(rate));
            l.insert("tax_amount".into(), num(shipping_tax));
            l.insert("total_amount".into(), num(shipping_net + shipping_tax));
            if shipping_fit.is_none() && !home {
                l.insert("eu_goods_services_type_id".into(), json!(eu_kind));
            }
            lines.push(Value::Object(l));
        }
    }

    // Adjustments (untaxed, as Magento books them), then anything unexplained.
    let mut extras: Vec<(&str, Decimal, String)> = src
        .adjustments
        .iter()
        .map(|(label, amount)| (*label, cents(*amount), account.clone()))
        .collect();
    if !unexplained.is_zero()
        && let Some(a) = &ctx.settings.unexplained_difference_account_id
    {
        let label = if unexplained > Decimal::ZERO {
            "Other charges in Magento's total"
        } else {
            "Other credits in Magento's total"
        };
        extras.push((label, unexplained, a.clone()));
    }
    for (label, amount, account) in extras {
        if amount.is_zero() {
            continue;
        }
        let rate = zero_rate(ctx, &place, "An adjustment")?;
        let mut l = Map::new();
        l.insert("description".into(), json!(label));
        l.insert("ledger_account_id".into(), json!(account));
        l.insert("quantity".into(), num(Decimal::ONE));
        l.insert("unit_price".into(), num(amount));
        l.insert("net_amount".into(), num(amount));
        l.insert("tax_rate_id".into(), json!(rate));
        l.insert("tax_amount".into(), num(Decimal::ZERO));
        l.insert("total_amount".into(), num(amount));
        lines.push(Value::Object(l));
    }
    if lines.is_empty() {
        return Err(validation("no_lines", "The document has no lines to post."));
    }
    let vat = rows.iter().map(|r| r.tax).sum::<Decimal>() + shipping_tax;
    Ok(Reconciled {
        lines,
        shipping: panel,
        gross,
        vat,
        notes,
        shipping_discount_ratio: (shipping > Decimal::ZERO && shipping_discount > Decimal::ZERO)
            .then(|| (shipping_discount / shipping).round_dp(6)),
        place,
    })
}

/// The country of the address Magento taxed by (the setting mirroring "Tax Calculation
/// Based On"); empty when the document says nothing.
pub fn place_of_supply(
    billing: Option<&Address>,
    shipping: Option<&Address>,
    contact: &Contact,
    ctx: &Ctx<'_>,
) -> String {
    let of_kind = |kind: &str| {
        contact
            .addresses
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| a.country_id.clone())
    };
    let billing = billing
        .map(|a| a.country_id.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| of_kind("billing"));
    let shipping = shipping
        .map(|a| a.country_id.clone())
        .filter(|c| !c.is_empty())
        .or_else(|| of_kind("shipping"));
    match ctx.settings.tax_based_on {
        TaxBasis::Shipping => shipping.or(billing).unwrap_or_default(),
        TaxBasis::Billing => billing.or(shipping).unwrap_or_default(),
        TaxBasis::Origin => ctx.business_country.to_owned(),
    }
}

/// Sage's `exchange_rate` and what to say about it: the document's rate when Magento's
/// base is the business's; none (Sage applies its own) when it is not — never 1.0 for a
/// foreign currency.
pub fn currency_fields(
    body: &mut Map<String, Value>,
    currency: &str,
    base_to_order_rate: Option<Decimal>,
    website_id: i64,
    ctx: &Ctx<'_>,
) -> Result<Option<String>, Failure> {
    let currency = currency.to_uppercase();
    body.insert("currency_id".into(), json!(currency));
    if currency.eq_ignore_ascii_case(ctx.base_currency) {
        return Ok(None);
    }
    if !ctx.multi_currency {
        return Err(config(
            "multi_currency_disabled",
            format!(
                "The document is in {currency} but the Sage business works in {} only: turn on multi-currency in Sage (Settings → Financial Settings), then retry.",
                ctx.base_currency
            ),
        ));
    }
    let magento_base = ctx
        .settings
        .website_base_currencies
        .get(&website_id.to_string())
        .cloned();
    let rate = base_to_order_rate.filter(|r| *r > Decimal::ZERO);
    let own_rate = |why: String| {
        Ok(Some(format!(
            "{why}; Sage applied its own {currency} rate to the {} amounts.",
            ctx.base_currency
        )))
    };
    match (magento_base, rate) {
        (Some(base), _) if !base.eq_ignore_ascii_case(ctx.base_currency) => own_rate(format!(
            "Magento's base currency for website {website_id} is {base}, not the business's {}",
            ctx.base_currency
        )),
        (None, Some(r)) if r == Decimal::ONE => own_rate(format!(
            "Magento's rate for this {currency} document is 1, so {currency} is Magento's base currency, not the business's {}",
            ctx.base_currency
        )),
        (_, Some(r)) => {
            body.insert("exchange_rate".into(), num((Decimal::ONE / r).round_dp(10)));
            Ok(None)
        }
        (_, None) => own_rate(format!("The {currency} document carries no exchange rate")),
    }
}

/// Checks Sage's arithmetic over `body` against Magento's gross and VAT.
fn check_before_posting(
    body: &Map<String, Value>,
    lines_key: &str,
    r: &Reconciled,
    kind: &str,
    ctx: &Ctx<'_>,
) -> Result<Totals, Failure> {
    let t = sage_math::totals(ctx.rates, body, lines_key);
    if t.total != r.gross || t.tax != r.vat {
        return Err(Failure::new(
            ErrorClass::Validation,
            "total_mismatch",
            format!(
                "Sage would book this {kind} at net {:.2} + VAT {:.2} = {:.2}, but Magento's figures are VAT {:.2}, total {:.2} \
                 (difference {:.2}). Nothing was posted. Check the tax-rate map: a taxed percentage mapped to a zero Sage rate loses its VAT.",
                t.net,
                t.tax,
                t.total,
                r.vat,
                r.gross,
                r.gross - t.total
            ),
        ));
    }
    Ok(t)
}

fn insert_shipping(body: &mut Map<String, Value>, r: &Reconciled, ctx: &Ctx<'_>) {
    if let Some((net, rate)) = &r.shipping {
        let tax = cents(*net * ctx.rates.percentage(rate).unwrap_or_default() / Decimal::ONE_HUNDRED);
        body.insert("shipping_net_amount".into(), num(*net));
        body.insert("shipping_tax_rate_id".into(), json!(rate));
        body.insert("shipping_tax_amount".into(), num(tax));
        body.insert("shipping_total_amount".into(), num(*net + tax));
    }
}

fn today(ctx: &Ctx<'_>) -> String {
    chrono::Utc::now()
        .with_timezone(&ctx.time_zone)
        .format("%Y-%m-%d")
        .to_string()
}

/// `invoice.created` → the `sales_invoice` body.
pub fn map_invoice(inv: &Invoice, contact_id: &str, ctx: &Ctx<'_>) -> Result<Mapped, Failure> {
    let place = place_of_supply(
        inv.billing_address.as_ref(),
        inv.shipping_address.as_ref(),
        &inv.customer,
        ctx,
    );
    let r = reconcile(
        Source {
            kind: "invoice",
            lines: &inv.lines,
            shipping: inv.shipping_amount,
            shipping_tax: inv.shipping_tax_amount,
            header: Some((inv.subtotal, inv.tax_amount, inv.discount_amount)),
            shipping_discount_ratio: None,
            adjustments: Vec::new(),
            grand: inv.grand_total,
            place: place.clone(),
            place_certain: true,
        },
        ctx,
    )?;
    let mut body = Map::new();
    body.insert("contact_id".into(), json!(contact_id));
    let date = local_date(&inv.created_at, ctx.time_zone).unwrap_or_else(|| today(ctx));
    body.insert("date".into(), json!(date));
    body.insert("due_date".into(), json!(date));
    body.insert(
        "reference".into(),
        json!(document_reference(
            ctx.settings.invoice_number_prefix.as_deref(),
            &inv.increment_id
        )),
    );
    body.insert("invoice_lines".into(), Value::Array(r.lines.clone()));
    let billing = inv
        .billing_address
        .as_ref()
        .or_else(|| inv.customer.addresses.iter().find(|a| a.kind == "billing"));
    let delivery = inv.shipping_address.as_ref().or(billing);
    // Always both: without a delivery address Sage copies the billing one.
    if let Some(b) = billing {
        body.insert("main_address".into(), sage_address(b));
    }
    if let Some(d) = delivery {
        body.insert("delivery_address".into(), sage_address(d));
    }
    insert_shipping(&mut body, &r, ctx);
    let mut notes = r.notes.clone();
    if let Some(note) = currency_fields(&mut body, &inv.currency, inv.base_to_order_rate, inv.website_id, ctx)? {
        notes.push(note);
    }
    let mut text = vec![format!(
        "Magento invoice {} (order {})",
        inv.increment_id, inv.order_increment_id
    )];
    if let Some(po) = inv.po_number.as_deref().filter(|p| !p.is_empty()) {
        text.push(format!("Purchase order: {po}"));
    }
    body.insert("notes".into(), json!(text.join("\n")));
    body.insert(
        "idempotency_id".into(),
        json!(idempotency_id(
            ctx.binding,
            "sales_invoice",
            &inv.magento_id.to_string()
        )),
    );
    let totals = check_before_posting(&body, "invoice_lines", &r, "invoice", ctx)?;
    let delivery_address = body.get("delivery_address").cloned();
    Ok(Mapped {
        body: Value::Object(body),
        totals,
        notes,
        treatment: Some(Treatment {
            place_of_supply: place,
            shipping_discount_ratio: r.shipping_discount_ratio,
            delivery_address,
        }),
    })
}

/// The country whose VAT a reconciled document charges: that of the first taxed rate
/// used (lines, then shipping), the business's own for a rate keyed without a country.
fn charged_country(r: &Reconciled, ctx: &Ctx<'_>) -> Option<String> {
    let ids = r
        .lines
        .iter()
        .filter(|l| {
            l["tax_amount"]
                .to_string()
                .trim_matches('"')
                .parse::<Decimal>()
                .is_ok_and(|t| !t.is_zero())
        })
        .filter_map(|l| l["tax_rate_id"].as_str().map(str::to_owned))
        .chain(r.shipping.as_ref().map(|(_, id)| id.clone()));
    for id in ids {
        for (key, mapped) in &ctx.settings.tax_rate_map {
            if *mapped != id {
                continue;
            }
            if let Some((country, pct)) = rate_key(key)
                && pct > Decimal::ZERO
            {
                return Some(country.unwrap_or(ctx.business_country).to_ascii_uppercase());
            }
        }
    }
    None
}

/// `creditmemo.created` → the `sales_credit_note` body (adjustment lines included).
/// `invoice` is how its invoice was booked, when the memo's invoice is known.
pub fn map_credit_note(
    memo: &CreditMemo,
    contact_id: &str,
    invoice: Option<&Treatment>,
    ctx: &Ctx<'_>,
) -> Result<Mapped, Failure> {
    // Credit notes take their invoice's treatment, not the customer's current country.
    let place = match invoice {
        Some(t) => t.place_of_supply.clone(),
        None => place_of_supply(None, None, &memo.customer, ctx),
    };
    let r = reconcile(
        Source {
            kind: "credit memo",
            lines: &memo.lines,
            shipping: memo.shipping_amount,
            shipping_tax: memo.shipping_tax_amount,
            header: None,
            // Likewise its shipping discount: a guessed invoice's may not be this memo's.
            shipping_discount_ratio: invoice
                .filter(|_| memo.invoice_id.is_some())
                .map(|t| t.shipping_discount_ratio),
            adjustments: vec![
                ("Adjustment refund", memo.adjustment_positive),
                ("Adjustment fee", -memo.adjustment_negative),
            ],
            grand: memo.grand_total,
            place: place.clone(),
            // An invoice matched to a refund made from the order is a guess (the customer's
            // one fitting invoice): the VAT charged has the last word on the place.
            place_certain: invoice.is_some() && memo.invoice_id.is_some(),
        },
        ctx,
    )?;
    let mut body = Map::new();
    body.insert("contact_id".into(), json!(contact_id));
    let date = local_date(&memo.created_at, ctx.time_zone).unwrap_or_else(|| today(ctx));
    body.insert("date".into(), json!(date));
    if let Some(original) = memo
        .invoice_created_at
        .as_deref()
        .and_then(|t| local_date(t, ctx.time_zone))
    {
        body.insert("original_invoice_date".into(), json!(original));
    }
    body.insert(
        "reference".into(),
        json!(document_reference(
            ctx.settings.invoice_number_prefix.as_deref(),
            &memo.increment_id
        )),
    );
    body.insert("credit_note_lines".into(), Value::Array(r.lines.clone()));
    // A memo's addresses are the customer's as they are now (contract §12), not where the
    // goods went; Sage judges a credit note's rates by its delivery address. So the
    // delivery address is the invoice's, else the place the VAT charged says.
    let billing = memo.customer.addresses.iter().find(|a| a.kind == "billing");
    if let Some(b) = billing {
        body.insert("main_address".into(), sage_address(b));
    }
    let memo_delivery = memo
        .customer
        .addresses
        .iter()
        .find(|a| a.kind == "shipping")
        .or(billing)
        .map(sage_address);
    // Where the VAT was charged: the country of the rates used (the business's own when a
    // rate has no country), else the place chosen.
    let charged = charged_country(&r, ctx).unwrap_or_else(|| r.place.clone());
    let in_charged = |a: &Value| {
        charged.is_empty()
            || a["country_id"]
                .as_str()
                .is_some_and(|c| c.eq_ignore_ascii_case(&charged))
    };
    let delivery = invoice
        .and_then(|t| t.delivery_address.clone())
        // A guessed invoice's address may be elsewhere than where this VAT was charged.
        .filter(|a| in_charged(a))
        .or_else(|| match memo_delivery {
            Some(a) if in_charged(&a) => Some(a),
            _ => (!charged.is_empty()).then(|| json!({ "country_id": charged })),
        });
    if let Some(address) = delivery {
        body.insert("delivery_address".into(), address);
    }
    insert_shipping(&mut body, &r, ctx);
    let mut notes = r.notes.clone();
    if let Some(note) = currency_fields(&mut body, &memo.currency, memo.base_to_order_rate, memo.website_id, ctx)? {
        notes.push(note);
    }
    let mut text = vec![format!("Magento credit memo {}", memo.increment_id)];
    if let Some(inv) = &memo.invoice_increment_id {
        text.push(format!("for invoice {inv}"));
    }
    if let Some(reason) = memo.reason.as_deref().filter(|r| !r.is_empty()) {
        text.push(format!("Reason: {reason}"));
    }
    body.insert("notes".into(), json!(text.join("\n")));
    body.insert(
        "idempotency_id".into(),
        json!(idempotency_id(
            ctx.binding,
            "sales_credit_note",
            &memo.magento_id.to_string()
        )),
    );
    let totals = check_before_posting(&body, "credit_note_lines", &r, "credit memo", ctx)?;
    Ok(Mapped {
        body: Value::Object(body),
        totals,
        notes,
        treatment: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pennies_are_spread_by_weight() {
        let d = |s: &str| s.parse::<Decimal>().unwrap();
        assert_eq!(
            spread(d("0.05"), &[d("0.20"), d("0.10"), d("0")]),
            [d("0.04"), d("0.01"), d("0")]
        );
        assert_eq!(
            spread(d("0.03"), &[d("0.01"), d("0.01"), d("0.01")])
                .iter()
                .sum::<Decimal>(),
            d("0.03")
        );
    }
}
