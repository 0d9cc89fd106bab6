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

mod fit;
mod reconcile;

use fit::*;
use reconcile::*;

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
