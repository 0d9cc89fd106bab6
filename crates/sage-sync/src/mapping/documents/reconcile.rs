//! Rules 2–5: the header's VAT and net, the shipping discount, the discount tax
//! compensation and the shipping's booking, reconciled to Magento's totals.

// A part of the documents' mapping: its types, helpers and imports are this file's too.
use super::*;

/// Spreads `amount` (cents) over `weights`, largest first, whole cents each.
pub(super) fn spread(amount: Decimal, weights: &[Decimal]) -> Vec<Decimal> {
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

pub(super) fn largest(rows: &[Row], taxed: bool) -> Option<usize> {
    rows.iter()
        .enumerate()
        .filter(|(_, r)| !taxed || r.tax > Decimal::ZERO)
        .max_by_key(|(_, r)| r.net())
        .map(|(i, _)| i)
}

pub(super) fn eu_kind_of(row: &Row, ctx: &Ctx<'_>) -> String {
    row.product_type
        .as_deref()
        .and_then(|t| ctx.settings.product_type_eu_goods_map.get(t))
        .cloned()
        .unwrap_or_else(|| ctx.settings.default_eu_goods_services_type.clone())
}

/// A tax-inclusive row's VAT before discount, from its net row total: the cent amount
/// `t` with `round((net + t) × p / (1 + p)) = t`, preferring a gross that is a whole
/// number of cents per unit (Magento prices units, then multiplies).
pub(super) fn tax_before_discount(subtotal: Decimal, pct: Decimal, qty: Decimal) -> Decimal {
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

pub(super) fn reconcile(src: Source<'_>, ctx: &Ctx<'_>) -> Result<Reconciled, Failure> {
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
