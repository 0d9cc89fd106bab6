//! What a merchant does in the store's admin: orders, payments, refunds, cancellations,
//! saved customers and products, each queuing the module's events.

// A part of the store: its types and helpers are this file's too.
use super::*;

impl Store {
    /// A customer places an order that is invoiced (captured online when `paid`, which
    /// queues `invoice.created` then `invoice.paid`). Returns (order id, invoice id).
    pub fn place_order(&self, paid: bool) -> (i64, i64) {
        self.place_order_paying(None, paid)
    }

    /// [`Self::place_order`] paid with `method` (an online method's refunds name their
    /// invoice; an offline one's are made from the order).
    pub fn place_order_by(&self, method: &str, paid: bool) -> (i64, i64) {
        self.place_order_paying(Some(method), paid)
    }

    fn place_order_paying(&self, method: Option<&str>, paid: bool) -> (i64, i64) {
        let now = self.now_text();
        let (order_id, invoice_id, increment_id) = {
            let mut inner = self.lock();
            let mut rng = inner.rng.clone();
            let order_id = inner.catalogue.random_order_at(&mut rng, Some(&now));
            if let Some(method) = method
                && let Some(order) = inner.catalogue.orders.iter_mut().find(|o| o.id == order_id)
                && order.payment_method != "free"
            {
                method.clone_into(&mut order.payment_method);
            }
            let partial = rng.chance(15);
            inner.rng = rng;
            let invoice_id = inner
                .catalogue
                .invoice_order(order_id, partial, paid)
                .expect("a new order has lines to invoice");
            let increment = inner
                .catalogue
                .invoice(invoice_id)
                .expect("invoice")
                .increment_id
                .clone();
            (order_id, invoice_id, increment)
        };
        self.enqueue(
            "invoice.created",
            invoice_id,
            1,
            1,
            json!({ "increment_id": increment_id, "paid": paid }),
        );
        if paid {
            self.enqueue(
                "invoice.paid",
                invoice_id,
                1,
                1,
                json!({ "increment_id": increment_id }),
            );
        }
        (order_id, invoice_id)
    }

    /// Marks an open invoice paid (offline capture), queueing `invoice.paid`.
    pub fn pay_invoice(&self, invoice_id: i64) -> bool {
        let now = self.now_text();
        let increment = {
            let mut inner = self.lock();
            if !inner.catalogue.pay(invoice_id, &now) {
                return false;
            }
            inner.catalogue.invoice(invoice_id).expect("paid").increment_id.clone()
        };
        self.enqueue("invoice.paid", invoice_id, 1, 1, json!({ "increment_id": increment }))
            .is_some()
    }

    /// Refunds an invoice (partially, with an adjustment fee, when `partial`).
    /// Refunds an invoice (partially, with an adjustment fee, when `partial`). Offline
    /// methods refund from the order: the memo then names no invoice.
    pub fn refund(&self, invoice_id: i64, partial: bool) -> Option<i64> {
        self.record_memo(|cat| {
            let fee = if partial {
                rust_decimal::Decimal::new(250, 2)
            } else {
                rust_decimal::Decimal::ZERO
            };
            cat.refund_invoice(invoice_id, partial, fee, rust_decimal::Decimal::ZERO)
        })
    }

    /// Refunds only the shipping of an invoice's order.
    pub fn refund_shipping(&self, invoice_id: i64) -> Option<i64> {
        self.record_memo(|cat| cat.refund_shipping(invoice_id))
    }

    /// A goodwill refund: every item at 0, an adjustment refund of `amount`.
    pub fn refund_adjustment(&self, invoice_id: i64, amount: rust_decimal::Decimal) -> Option<i64> {
        self.record_memo(|cat| cat.refund_adjustment(invoice_id, amount))
    }

    fn record_memo(&self, make: impl FnOnce(&mut Catalogue) -> Option<i64>) -> Option<i64> {
        let (memo_id, increment) = {
            let mut inner = self.lock();
            let memo = make(&mut inner.catalogue)?;
            (
                memo,
                inner.catalogue.credit_memo(memo).expect("memo").increment_id.clone(),
            )
        };
        self.enqueue(
            "creditmemo.created",
            memo_id,
            1,
            1,
            json!({ "increment_id": increment }),
        );
        Some(memo_id)
    }

    /// Cancels an open invoice. The module sends nothing for it (its observers fire on
    /// an invoice's first save and on its payment).
    pub fn cancel_invoice(&self, invoice_id: i64) -> bool {
        self.lock().catalogue.cancel(invoice_id)
    }

    /// `bin/magento byte8:sage:invoice:sync --id N --event=created`: posts
    /// `invoice.created` straight to the ledger with the same key and a fresh
    /// `occurred_at`, bypassing the outbox. Returns the ledger's status.
    pub async fn republish_invoice(&self, invoice_id: i64) -> Option<u16> {
        let connection = self.lock().connection.clone()?;
        let (increment, paid) = {
            let inner = self.lock();
            let inv = inner.catalogue.invoice(invoice_id)?;
            (inv.increment_id.clone(), inv.state == catalogue::InvoiceState::Paid)
        };
        let body = event_body(
            invoice_id,
            1,
            1,
            &self.now_text(),
            &json!({ "increment_id": increment, "paid": paid }),
        );
        let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
        let url = format!(
            "{}/webhooks/magento/{}/invoice.created",
            self.ledger_base_url(),
            encode_segment(&connection.tenant_id)
        );
        self.http
            .post(url)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", format!("invoice.created:{invoice_id}"))
            .body(body)
            .send()
            .await
            .ok()
            .map(|r| r.status().as_u16())
    }

    pub fn save_customer(&self, customer_id: i64) -> Option<u64> {
        self.enqueue("customer.upserted", customer_id, 1, 0, json!({}))
    }

    pub fn save_product(&self, product_id: i64) -> Option<u64> {
        self.enqueue("product.upserted", product_id, 0, 0, json!({}))
    }

    /// A mix of store activity: orders (paid and unpaid), refunds, customer and product saves.
    pub fn simulate(&self, orders: usize) -> Vec<u64> {
        let before = self.lock().next_outbox_id;
        for _ in 0..orders {
            let roll = {
                let mut inner = self.lock();
                inner.rng.below(100)
            };
            let paid = roll % 2 == 0;
            let (_, invoice) = self.place_order(paid);
            if roll < 15 {
                self.refund(invoice, roll < 8);
            }
            if roll == 15 {
                self.refund_shipping(invoice);
            }
            if roll == 16 {
                self.refund_adjustment(invoice, rust_decimal::Decimal::new(500, 2));
            }
            if (15..25).contains(&roll) {
                self.save_customer(1 + (roll as i64 % 24));
            }
            if (25..30).contains(&roll) {
                self.save_product(1 + (roll as i64 % 12));
            }
            if !paid && roll > 90 {
                self.pay_invoice(invoice);
            }
        }
        let after = self.lock().next_outbox_id;
        (before..after).collect()
    }
}
