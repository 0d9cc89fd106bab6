//! Rule 1: the rate Magento charged on each line, fitted from its row and the place of
//! supply; the zero rates of untaxed lines.

// A part of the documents' mapping: its types, helpers and imports are this file's too.
use super::*;

pub(super) fn zero_rate(ctx: &Ctx<'_>, country: &str, what: &str) -> Result<String, Failure> {
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
pub(super) enum Mode {
    /// After discount, on prices without tax.
    ExclAfter,
    /// Before discount.
    Before,
    /// After discount, on prices with tax: the discount comes off the gross.
    InclAfter,
}

pub(super) const MODES: [Mode; 3] = [Mode::ExclAfter, Mode::Before, Mode::InclAfter];

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
pub(super) struct Taxed {
    pub(super) subtotal: Decimal,
    pub(super) discount: Decimal,
    pub(super) tax: Decimal,
    pub(super) qty: Decimal,
}

/// The mapped rate at `place` (its country's keys and the unqualified ones) whose
/// percentage explains `t` in one of `modes`, within Magento's rounding: the error,
/// whether the rate is the country's own (qualified), and the rate.
pub(super) fn best_rate(t: Taxed, place: &str, modes: &[Mode], ctx: &Ctx<'_>) -> Option<(Decimal, bool, Fit)> {
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
pub(super) fn fit_document(
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
pub(super) fn candidate_places(preferred: &str, ctx: &Ctx<'_>) -> Vec<String> {
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
pub(super) struct MemoFit {
    pub(super) place: String,
    pub(super) mode: Option<Mode>,
    pub(super) fits: Vec<Fit>,
    pub(super) shipping: Option<Fit>,
    pub(super) shipping_discount: Decimal,
}

/// The hypothesis whose figures explain the rows' taxes, the shipping's tax and the
/// memo's total (`residual`: what it holds beyond rows, shipping and adjustments as
/// sent) most exactly.
pub(super) fn fit_with_unknown_shipping(
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
pub(super) fn shipping_modes(items: Option<Mode>) -> &'static [Mode] {
    match items {
        Some(Mode::Before) => &[Mode::Before],
        Some(_) => &[Mode::ExclAfter, Mode::InclAfter],
        None => &MODES,
    }
}

pub(super) fn not_mapped(t: Taxed, what: &str) -> Failure {
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
pub(super) fn lone_rate(t: Taxed, place: &str, what: &str, ctx: &Ctx<'_>) -> Result<Fit, Failure> {
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
