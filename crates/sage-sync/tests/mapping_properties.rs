//! Property: for every invoice and credit memo the sandbox store generates (random
//! catalogues, carts, discounts, currencies, partial invoices and refunds, PHP-float
//! amounts), the mapping posts lines whose Sage-computed total (Sage's own arithmetic,
//! shipping tax recomputed from rate × net) equals Magento's grand total to the cent,
//! and every body conforms to Sage's API definition.

mod common;

use common::{SageDefinitions, gb_ctx, gb_settings};
use ledger_magento_api::canonical::{CreditMemo, Invoice};
use ledger_sage_sync::mapping::{cents, map_credit_note, map_invoice};
use ledger_sandbox::{
    magento::catalogue::{Catalogue, render_credit_memo, render_invoice},
    rng::Rng,
    sage::{Business, documents::document_totals},
};
use rust_decimal::Decimal;

const CATALOGUES: u64 = 25;
const ORDERS_PER_CATALOGUE: usize = 40;

#[test]
fn posted_lines_plus_shipping_equal_the_grand_total() {
    let settings = gb_settings();
    let ctx = gb_ctx(&settings);
    let business = Business::new("Property Ltd", "GB");
    let defs = SageDefinitions::load();
    let (mut invoices, mut memos) = (0, 0);
    for seed in 0..CATALOGUES {
        let mut cat = Catalogue::generate(seed);
        let mut rng = Rng::new(seed ^ 0x5eed);
        for _ in 0..ORDERS_PER_CATALOGUE {
            let order = cat.random_order(&mut rng);
            let partial = rng.chance(30);
            let Some(invoice_id) = cat.invoice_order(order, partial, rng.chance(50)) else {
                continue;
            };
            let rendered = render_invoice(&cat, cat.invoice(invoice_id).unwrap()).unwrap();
            let inv: Invoice = serde_json::from_value(rendered.clone()).unwrap();
            let mapped = map_invoice(&inv, "CONTACT", &ctx)
                .unwrap_or_else(|f| panic!("seed {seed}: a valid invoice was refused: {f:?}\n{rendered:#}"));
            let (net, tax, total) = document_totals(&business, mapped.body.as_object().unwrap(), "invoice_lines");
            assert_eq!(
                total,
                cents(inv.grand_total),
                "seed {seed}: Sage would total {total} for a {} invoice\n{rendered:#}",
                inv.grand_total
            );
            assert_eq!((net, tax), (mapped.totals.net, mapped.totals.tax), "seed {seed}");
            let problems = defs.check(
                "postSalesInvoices",
                &serde_json::json!({ "sales_invoice": mapped.body }),
            );
            assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
            invoices += 1;

            if rng.chance(40) {
                let fee = Decimal::from(rng.below(3));
                let refund = Decimal::new(i64::try_from(rng.below(500)).unwrap(), 2);
                let memo_id = cat.refund_invoice(invoice_id, rng.chance(50), fee, refund).unwrap();
                let rendered = render_credit_memo(&cat, cat.credit_memo(memo_id).unwrap()).unwrap();
                let memo: CreditMemo = serde_json::from_value(rendered.clone()).unwrap();
                let mapped = map_credit_note(&memo, "CONTACT", &ctx)
                    .unwrap_or_else(|f| panic!("seed {seed}: a valid credit memo was refused: {f:?}\n{rendered:#}"));
                let (_, _, total) = document_totals(&business, mapped.body.as_object().unwrap(), "credit_note_lines");
                assert_eq!(total, cents(memo.grand_total), "seed {seed}\n{rendered:#}");
                let problems = defs.check(
                    "postSalesCreditNotes",
                    &serde_json::json!({ "sales_credit_note": mapped.body }),
                );
                assert!(problems.is_empty(), "seed {seed}: {problems:#?}");
                memos += 1;
            }
        }
    }
    assert!(
        invoices >= 900 && memos >= 300,
        "{invoices} invoices, {memos} credit memos"
    );
}
