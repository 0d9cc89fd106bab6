//! The store's data — a catalogue, customers with saved addresses, orders, invoices and
//! credit memos — priced by Magento's own collectors ([`super::totals`]) under the
//! store's tax configuration ([`StoreProfile`]), and rendered exactly as the byte8
//! module's canonical repositories and Magento's serializer write it:
//! - amounts are PHP floats of DECIMAL(20,4) columns (`12`, `0.2`), `line_total` is the
//!   module's float arithmetic (`row total + tax − discount`, no compensation) and
//!   `tax_rate` its `round(tax / row total, 4)`;
//! - a registered customer's contact has an address per default flag, no company, the
//!   default-billing phone; the module's "most recent order" fallback never fires
//!   (it reads `$orders[0]` of an id-keyed list), so `/customer/:id` can answer
//!   `"addresses": []`; an invoice copies the order's addresses (with company and phone)
//!   only where the profile lacks a default; credit memos never do;
//! - a credit memo refunded from the order (every offline method) carries no invoice.

use std::str::FromStr as _;

use rust_decimal::{Decimal, prelude::ToPrimitive as _};

use super::{
    php_json::Php,
    tax::{Algorithm, TaxBasis, TaxClass, TaxSettings, round},
    totals::{self, CartLine, DocTotals, OrderTotals, Progress, Refund, Rule},
};
use crate::rng::Rng;

mod profile;
mod seed;
mod serialize;

pub use profile::StoreProfile;
use seed::{PLACES, Place, default_products};
pub use serialize::{render_credit_memo, render_customer, render_invoice, render_payment, render_product};

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("literal decimal")
}

/// Magento rounds half away from zero (PHP `round`).
pub fn cents(d: Decimal) -> Decimal {
    round(d)
}

/// `row total + tax − discount` in IEEE doubles, like the module's PHP.
#[allow(
    clippy::float_arithmetic,
    reason = "emulating the module's PHP float arithmetic on purpose"
)]
fn php_line_total(subtotal: Decimal, tax: Decimal, discount: Decimal) -> Php {
    let to = |d: Decimal| d.to_f64().expect("fits");
    Php::Float(to(subtotal) + to(tax) - to(discount))
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    /// simple, virtual, downloadable, configurable, bundle, grouped
    pub type_id: &'static str,
    /// The catalogue price as entered (with VAT on stores whose prices include it), in
    /// the website's base currency.
    pub price: Decimal,
    /// A special price and its dates (`YYYY-MM-DD`); the module sends the price
    /// whatever its dates, orders use it only while it runs.
    pub special_price: Option<(Decimal, String, String)>,
    pub cost: Option<Decimal>,
    pub weight: Option<Decimal>,
    pub class: TaxClass,
    pub stock_qty: Option<Decimal>,
    pub manage_stock: bool,
    pub children: Vec<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl Product {
    /// The price an order placed on `date` pays per unit, in the base currency.
    pub fn price_on(&self, date: &str) -> Decimal {
        match &self.special_price {
            Some((p, from, to)) if from.as_str() <= date && date <= to.as_str() => *p,
            _ => self.price,
        }
    }
}

/// An address as Magento keeps it (the canonical one has no company).
#[derive(Debug, Clone, PartialEq)]
pub struct Address {
    /// The row id: billing and shipping rows of an order are distinct rows.
    pub id: i64,
    pub street: Vec<String>,
    pub city: String,
    pub region: Option<String>,
    pub postcode: Option<String>,
    pub country_id: String,
    pub telephone: Option<String>,
    pub company: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: i64,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub website_id: i64,
    pub group_id: i64,
    /// Saved addresses; only the defaults reach the canonical contact.
    pub addresses: Vec<Address>,
    pub default_billing: Option<i64>,
    pub default_shipping: Option<i64>,
    pub created_at: String,
    pub updated_at: String,
}

impl Customer {
    fn address(&self, id: Option<i64>) -> Option<&Address> {
        id.and_then(|id| self.addresses.iter().find(|a| a.id == id))
    }
}

#[derive(Debug, Clone)]
pub struct Order {
    pub id: i64,
    pub increment_id: String,
    /// Registered customer id, or `None` for a guest.
    pub customer_id: Option<i64>,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub currency: String,
    pub base_to_order_rate: Decimal,
    pub lines: Vec<CartLine>,
    pub rule: Option<Rule>,
    pub totals: OrderTotals,
    pub progress: Progress,
    pub payment_method: String,
    pub po_number: Option<String>,
    pub billing: Address,
    pub shipping: Option<Address>,
    pub website_id: i64,
    pub store_id: i64,
    pub created_at: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InvoiceState {
    Open,
    Paid,
    Cancelled,
}

#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: i64,
    pub increment_id: String,
    pub order_id: i64,
    pub totals: DocTotals,
    pub state: InvoiceState,
    pub created_at: String,
    /// When it was captured (the `invoice.paid` event's time), if it was.
    pub paid_at: Option<String>,
    pub gateway_txn_id: Option<String>,
}

impl Invoice {
    pub fn grand_total(&self) -> Decimal {
        self.totals.grand_total
    }
}

#[derive(Debug, Clone)]
pub struct CreditMemo {
    pub id: i64,
    pub increment_id: String,
    pub order_id: i64,
    pub invoice_id: Option<i64>,
    pub totals: DocTotals,
    pub reason: Option<String>,
    pub created_at: String,
}

impl CreditMemo {
    pub fn grand_total(&self) -> Decimal {
        self.totals.grand_total
    }
}

/// Who buys.
#[derive(Debug, Clone)]
pub enum Buyer {
    Registered(i64),
    Guest {
        email: String,
        first_name: String,
        last_name: String,
    },
}

/// An order to place, explicitly (tests and the corpus).
#[derive(Debug, Clone)]
pub struct OrderSpec {
    pub buyer: Buyer,
    pub billing: Address,
    /// `None` for a virtual order.
    pub shipping: Option<Address>,
    /// The order currency; the base when `None`.
    pub currency: Option<String>,
    /// (product id, quantity); a configurable brings its first child, a bundle its children.
    pub items: Vec<(i64, Decimal)>,
    pub rule: Option<Rule>,
    /// The carrier's price in the base currency (with tax when shipping prices include it).
    pub shipping_price: Decimal,
    pub payment_method: String,
    pub po_number: Option<String>,
    pub created_at: String,
}

/// Everything the store holds.
#[derive(Debug, Clone)]
pub struct Catalogue {
    pub profile: StoreProfile,
    pub products: Vec<Product>,
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
    pub invoices: Vec<Invoice>,
    pub credit_memos: Vec<CreditMemo>,
    next_order: i64,
    next_invoice: i64,
    next_memo: i64,
    next_address: i64,
}

pub const PAYMENT_METHODS: &[(&str, Option<&str>, bool)] = &[
    ("checkmo", Some("Check / Money order"), true),
    ("banktransfer", Some("Bank Transfer Payment"), true),
    ("stripe_payments", Some("Pay by Card (Stripe)"), true),
    ("paypal_express", Some("PayPal Express Checkout"), false),
    ("free", None, true),
];

/// Offline methods refund from the order: their credit memos carry no invoice.
pub fn is_offline(method: &str) -> bool {
    matches!(
        method,
        "checkmo" | "banktransfer" | "free" | "cashondelivery" | "purchaseorder"
    )
}

/// `2026-10-01T08:00:00Z` plus `day` days and `second` seconds.
pub fn ts(day: i64, second: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-10-01T08:00:00Z")
        .expect("constant")
        .with_timezone(&chrono::Utc);
    (base + chrono::Duration::days(day) + chrono::Duration::seconds(second))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

impl Catalogue {
    /// A catalogue with every product type and two dozen customers, for `profile`.
    pub fn generate(seed: u64, profile: StoreProfile) -> Self {
        let mut rng = Rng::new(seed);
        let mut c = Self {
            profile,
            products: Vec::new(),
            customers: Vec::new(),
            orders: Vec::new(),
            invoices: Vec::new(),
            credit_memos: Vec::new(),
            next_order: 1,
            next_invoice: 1,
            next_memo: 1,
            next_address: 1,
        };
        c.products = default_products();
        let firsts = ["Alice", "Bilal", "Chloé", "Dmitri", "Eve", "Fatima", "George", "Hana"];
        let lasts = [
            "Smith", "O'Brien", "Nakamura", "García", "Müller", "Okafor", "Jones", "Novak",
        ];
        for id in 1..=24 {
            let first = (*rng.pick(&firsts)).to_owned();
            let last = (*rng.pick(&lasts)).to_owned();
            let home = c.random_address(&mut rng, None);
            let company = rng.chance(30).then(|| format!("{last} Trading Ltd"));
            let mut customer = Customer {
                id,
                email: format!(
                    "{}.{}{id}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase().replace('\'', "")
                ),
                first_name: first,
                last_name: last,
                website_id: 1,
                group_id: if rng.chance(20) { 2 } else { 1 },
                addresses: Vec::new(),
                default_billing: None,
                default_shipping: None,
                created_at: ts(-300, id),
                updated_at: ts(-5, id),
            };
            match rng.below(10) {
                // Never saved an address (first-time buyers, checkouts that don't save).
                0 | 1 => {}
                // One address, default for both.
                2..=6 => {
                    let a = Address { company, ..home };
                    customer.default_billing = Some(a.id);
                    customer.default_shipping = Some(a.id);
                    customer.addresses.push(a);
                }
                // Billing at the office, shipping home.
                7 | 8 => {
                    let office = Address {
                        company,
                        ..c.random_address(&mut rng, Some(&home.country_id))
                    };
                    customer.default_billing = Some(office.id);
                    customer.default_shipping = Some(home.id);
                    customer.addresses.push(office);
                    customer.addresses.push(home);
                }
                // A saved address that is no default (and so never sent).
                _ => customer.addresses.push(home),
            }
            c.customers.push(customer);
        }
        c
    }

    fn new_address_id(&mut self) -> i64 {
        let id = self.next_address;
        self.next_address += 1;
        id
    }

    /// A random address in one of the profile's countries (or `country`).
    pub fn random_address(&mut self, rng: &mut Rng, country: Option<&str>) -> Address {
        let country = match country {
            Some(c) => c.to_owned(),
            None => {
                let total: u64 = self.profile.countries.iter().map(|(_, w)| *w).sum();
                let mut roll = rng.below(total.max(1));
                let mut chosen = self.profile.tax.origin_country.clone();
                for (c, w) in &self.profile.countries {
                    if roll < *w {
                        chosen = c.clone();
                        break;
                    }
                    roll -= w;
                }
                chosen
            }
        };
        let candidates: Vec<&Place> = PLACES.iter().filter(|p| p.country == country).collect();
        let place = if candidates.is_empty() {
            &PLACES[0]
        } else {
            candidates[rng.below(candidates.len() as u64) as usize]
        };
        let id = self.new_address_id();
        Address {
            id,
            street: vec![place.street.to_owned()],
            city: place.city.to_owned(),
            region: place.region.map(str::to_owned),
            postcode: Some(place.postcode.to_owned()),
            country_id: place.country.to_owned(),
            telephone: rng
                .chance(70)
                .then(|| format!("0161 {:03} {:04}", rng.below(1000), rng.below(10000))),
            company: None,
        }
    }

    pub fn product(&self, id: i64) -> Option<&Product> {
        self.products.iter().find(|p| p.id == id)
    }

    pub fn customer(&self, id: i64) -> Option<&Customer> {
        self.customers.iter().find(|c| c.id == id)
    }

    pub fn order(&self, id: i64) -> Option<&Order> {
        self.orders.iter().find(|o| o.id == id)
    }

    pub fn invoice(&self, id: i64) -> Option<&Invoice> {
        self.invoices.iter().find(|i| i.id == id)
    }

    pub fn credit_memo(&self, id: i64) -> Option<&CreditMemo> {
        self.credit_memos.iter().find(|m| m.id == id)
    }

    /// The base-to-order rate of `currency` (1 for the base).
    pub fn rate_of(&self, currency: &str) -> Decimal {
        self.profile
            .currencies
            .iter()
            .find(|(c, _)| c == currency)
            .map_or(Decimal::ONE, |(_, r)| *r)
    }

    /// Cart lines for `product`, priced on `date` and converted to the order currency.
    fn cart_lines(&self, lines: &mut Vec<CartLine>, product: &Product, qty: Decimal, rate: Decimal, date: &str) {
        let convert = |p: Decimal| round(p * rate);
        let line = |p: &Product, price: Decimal, parent: Option<usize>, calculated: bool| CartLine {
            product_id: p.id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            product_type: p.type_id,
            class: p.class,
            price,
            qty,
            parent,
            calculated,
        };
        match product.type_id {
            // Configurable: the parent row carries the price, the chosen child is a dummy.
            "configurable" => {
                let parent = lines.len();
                lines.push(line(product, convert(product.price_on(date)), None, true));
                let child = self.product(product.children[0]).expect("child");
                let mut child_line = line(child, Decimal::ZERO, Some(parent), false);
                child_line.sku = child.sku.clone();
                lines.push(child_line);
            }
            // Bundle with a dynamic price: a dummy parent, the children carry the prices.
            "bundle" => {
                let parent = lines.len();
                lines.push(line(product, Decimal::ZERO, None, false));
                for child in &product.children {
                    let child = self.product(*child).expect("child");
                    lines.push(line(child, convert(child.price_on(date)), Some(parent), true));
                }
            }
            _ => lines.push(line(product, convert(product.price_on(date)), None, true)),
        }
    }

    /// Places an order as checkout does (the quote's collectors).
    pub fn place(&mut self, spec: OrderSpec) -> i64 {
        let currency = spec.currency.unwrap_or_else(|| self.profile.base_currency.clone());
        let rate = self.rate_of(&currency);
        let date = spec.created_at.get(..10).unwrap_or_default().to_owned();
        let mut lines = Vec::new();
        for (product, qty) in &spec.items {
            let p = self.product(*product).expect("catalogue product").clone();
            self.cart_lines(&mut lines, &p, *qty, rate, &date);
        }
        let shipping = spec.shipping.clone();
        let country = self.profile.tax_country(&spec.billing, shipping.as_ref()).to_owned();
        let shipping_price = if shipping.is_some() {
            round(spec.shipping_price * rate)
        } else {
            Decimal::ZERO
        };
        let totals = totals::collect_order(&self.profile.tax, &lines, spec.rule.as_ref(), shipping_price, &country);
        let (email, first, last) = match &spec.buyer {
            Buyer::Registered(id) => {
                let c = self.customer(*id).expect("customer");
                (c.email.clone(), c.first_name.clone(), c.last_name.clone())
            }
            Buyer::Guest {
                email,
                first_name,
                last_name,
            } => (email.clone(), first_name.clone(), last_name.clone()),
        };
        let id = self.next_order;
        self.next_order += 1;
        // Order addresses are rows of their own.
        let billing = Address {
            id: self.new_address_id(),
            ..spec.billing
        };
        let shipping = shipping.map(|s| Address {
            id: self.new_address_id(),
            ..s
        });
        let payment_method = if totals.grand_total.is_zero() {
            "free".to_owned()
        } else {
            spec.payment_method
        };
        let n = lines.len();
        self.orders.push(Order {
            id,
            increment_id: format!("{:09}", 100 + id),
            customer_id: match spec.buyer {
                Buyer::Registered(id) => Some(id),
                Buyer::Guest { .. } => None,
            },
            email,
            first_name: first,
            last_name: last,
            currency,
            base_to_order_rate: rate,
            lines,
            rule: spec.rule,
            totals,
            progress: Progress::new(n),
            payment_method,
            po_number: spec.po_number,
            billing,
            shipping,
            website_id: 1,
            store_id: 1,
            created_at: spec.created_at,
        });
        id
    }

    /// Places a random order: registered or guest, billed and shipped at home or abroad
    /// (sometimes billed abroad and shipped home, or the other way), in the base or a
    /// display currency, coupons (some on shipping, some free shipping, a rare 100 %),
    /// composite products, virtual-only baskets, late-evening timestamps.
    pub fn random_order(&mut self, rng: &mut Rng) -> i64 {
        self.random_order_at(rng, None)
    }

    /// [`Self::random_order`], placed at `now` when given (the store's clock).
    pub fn random_order_at(&mut self, rng: &mut Rng, now: Option<&str>) -> i64 {
        let guest = rng.chance(30);
        let customer = (!guest).then(|| rng.pick(&self.customers).clone());
        let saved_billing = customer.as_ref().and_then(|c| c.address(c.default_billing).cloned());
        let billing = match saved_billing {
            Some(a) => a,
            None => {
                let mut a = self.random_address(rng, None);
                if rng.chance(15) {
                    a.company = Some("Pop-up Shop LLP".into());
                }
                a
            }
        };
        let mut items = Vec::new();
        let pool: [i64; 10] = [1, 2, 3, 4, 5, 6, 7, 10, 11, 12];
        for _ in 0..1 + rng.below(3) {
            items.push((*rng.pick(&pool), Decimal::from(1 + rng.below(3))));
        }
        let virtual_only = items.iter().all(|(p, _)| {
            self.product(*p)
                .is_some_and(|p| matches!(p.type_id, "virtual" | "downloadable"))
        });
        let shipping = (!virtual_only).then(|| {
            let saved = customer.as_ref().and_then(|c| c.address(c.default_shipping).cloned());
            match saved {
                Some(a) if rng.chance(80) => a,
                _ if rng.chance(20) => {
                    // Shipped elsewhere: a gift, billed abroad and shipped home, ...
                    self.random_address(rng, None)
                }
                _ => billing.clone(),
            }
        });
        let currency = if billing.country_id != self.profile.tax.origin_country && rng.chance(60) {
            self.profile.currencies.first().map(|(c, _)| c.clone())
        } else {
            None
        };
        let rule = rng.chance(self.profile.coupon_percent).then(|| {
            if rng.chance(4) {
                return Rule {
                    percent: Decimal::ONE_HUNDRED,
                    apply_to_shipping: true,
                    free_shipping: true,
                };
            }
            if rng.chance(20) {
                return Rule {
                    percent: Decimal::ZERO,
                    apply_to_shipping: false,
                    free_shipping: true,
                };
            }
            Rule {
                percent: *rng.pick(&[dec("10"), dec("15"), dec("20"), dec("12.5")]),
                apply_to_shipping: rng.chance(30),
                free_shipping: false,
            }
        });
        let buyer = match &customer {
            Some(c) => Buyer::Registered(c.id),
            None => {
                let n = self.next_order;
                Buyer::Guest {
                    email: format!("guest{n}@example.net"),
                    first_name: "Guest".into(),
                    last_name: format!("Buyer {n}"),
                }
            }
        };
        let second = (self.next_order * 3_607) % 86_400;
        // Some orders land late in the evening UTC (the next day in Europe's summer).
        let created_at = match now {
            Some(now) => now.to_owned(),
            None if rng.chance(15) => {
                format!(
                    "{}T23:{:02}:00Z",
                    &ts(rng.below(120) as i64, 0)[..10],
                    10 + rng.below(49)
                )
            }
            None => ts(rng.below(120) as i64, second),
        };
        let po_number = rng.chance(10).then(|| format!("PO-{}", 4000 + self.next_order));
        self.place(OrderSpec {
            buyer,
            billing,
            shipping,
            currency,
            items,
            rule,
            shipping_price: *rng.pick(&[dec("4.99"), dec("9.95"), dec("3.60"), dec("0")]),
            payment_method: PAYMENT_METHODS[rng.below(3) as usize].0.to_owned(),
            po_number,
            created_at,
        })
    }

    /// Invoices what is left of each line (partial invoices take half, at least one of
    /// each) as Magento's invoice collectors do.
    pub fn invoice_order(&mut self, order_id: i64, partial: bool, paid: bool) -> Option<i64> {
        let index = self.orders.iter().position(|o| o.id == order_id)?;
        let order = &self.orders[index];
        let mut qtys = Vec::with_capacity(order.lines.len());
        for (i, line) in order.lines.iter().enumerate() {
            let left = line.qty - order.progress.items[i].qty_invoiced;
            let qty = if left <= Decimal::ZERO {
                Decimal::ZERO
            } else if partial {
                (left / Decimal::TWO).floor().max(Decimal::ONE)
            } else {
                left
            };
            qtys.push(qty);
        }
        // Composite rows invoice with their parent.
        for i in 0..qtys.len() {
            if let Some(p) = order.lines[i].parent {
                qtys[i] = qtys[p].min(order.lines[i].qty - order.progress.items[i].qty_invoiced);
            }
        }
        if qtys.iter().all(Decimal::is_zero) {
            return None;
        }
        let created_at = {
            let first = !self.invoices.iter().any(|i| i.order_id == order_id);
            if first {
                order.created_at.clone()
            } else {
                bump(&order.created_at, 86_400 * (1 + self.invoices.len() as i64 % 3))
            }
        };
        let order = &mut self.orders[index];
        let doc = totals::collect_invoice(&order.lines, &order.totals, &mut order.progress, &qtys);
        let id = self.next_invoice;
        self.next_invoice += 1;
        let gateway_txn_id = (order.payment_method == "stripe_payments").then(|| format!("pi_{:024x}", id * 7919));
        self.invoices.push(Invoice {
            id,
            increment_id: format!("{:09}", 1000 + id),
            order_id,
            totals: doc,
            state: if paid { InvoiceState::Paid } else { InvoiceState::Open },
            paid_at: paid.then(|| created_at.clone()),
            created_at,
            gateway_txn_id,
        });
        Some(id)
    }

    /// Marks an open invoice paid at `when` (an offline capture).
    pub fn pay(&mut self, invoice_id: i64, when: &str) -> bool {
        match self
            .invoices
            .iter_mut()
            .find(|i| i.id == invoice_id && i.state == InvoiceState::Open)
        {
            Some(inv) => {
                inv.state = InvoiceState::Paid;
                inv.paid_at = Some(when.to_owned());
                true
            }
            None => false,
        }
    }

    /// Cancels an open invoice (Magento allows it only while unpaid).
    pub fn cancel(&mut self, invoice_id: i64) -> bool {
        match self
            .invoices
            .iter_mut()
            .find(|i| i.id == invoice_id && i.state == InvoiceState::Open)
        {
            Some(inv) => {
                inv.state = InvoiceState::Cancelled;
                true
            }
            None => false,
        }
    }

    /// A credit memo. Refunds of offline methods are made from the order and carry no
    /// invoice; online ones from the invoice.
    pub fn refund(&mut self, invoice_id: i64, refund: Refund, reason: Option<String>) -> Option<i64> {
        let invoice = self.invoice(invoice_id)?.clone();
        let index = self.orders.iter().position(|o| o.id == invoice.order_id)?;
        let order = &mut self.orders[index];
        let linked = !is_offline(&order.payment_method);
        let mut progress = order.progress.clone();
        let doc = totals::collect_credit_memo(
            &order.lines,
            &order.totals,
            &mut progress,
            linked.then_some(&invoice.totals),
            &refund,
        );
        // Magento refuses a credit memo whose total is not positive.
        if doc.grand_total <= Decimal::ZERO {
            return None;
        }
        order.progress = progress;
        let id = self.next_memo;
        self.next_memo += 1;
        let created_at = bump(&invoice.created_at, 3 * 86_400 + id * 60);
        self.credit_memos.push(CreditMemo {
            id,
            increment_id: format!("{:09}", 5000 + id),
            order_id: invoice.order_id,
            invoice_id: linked.then_some(invoice_id),
            totals: doc,
            reason,
            created_at,
        });
        Some(id)
    }

    /// The usual refunds: everything (with shipping), part of the first line, shipping
    /// only, or a goodwill adjustment only, with an adjustment fee or refund.
    pub fn refund_invoice(
        &mut self,
        invoice_id: i64,
        partial: bool,
        adjustment_fee: Decimal,
        adjustment_refund: Decimal,
    ) -> Option<i64> {
        let invoice = self.invoice(invoice_id)?.clone();
        let order = self.order(invoice.order_id)?.clone();
        let mut qtys = vec![Decimal::ZERO; order.lines.len()];
        let mut first = true;
        for d in &invoice.totals.items {
            let left = order.progress.items[d.item].qty_invoiced - order.progress.items[d.item].qty_refunded;
            let qty = if partial {
                if !first || !order.lines[d.item].calculated {
                    continue;
                }
                first = false;
                (d.qty / Decimal::TWO).floor().max(Decimal::ONE).min(left)
            } else {
                d.qty.min(left)
            };
            qtys[d.item] = qty.max(Decimal::ZERO);
        }
        // Composite children refund with their parent.
        for i in 0..qtys.len() {
            if let Some(p) = order.lines[i].parent
                && !order.lines[i].calculated
            {
                qtys[i] = qtys[p];
            }
            if let Some(p) = order.lines[i].parent
                && !order.lines[p].calculated
            {
                qtys[p] = qtys[p].max(qtys[i]);
            }
        }
        self.refund(
            invoice_id,
            Refund {
                qtys,
                shipping: partial.then_some(Decimal::ZERO),
                adjustment_positive: adjustment_refund,
                adjustment_negative: adjustment_fee,
            },
            partial.then(|| "Customer returned one item".to_owned()),
        )
    }

    /// A refund of the shipping only.
    pub fn refund_shipping(&mut self, invoice_id: i64) -> Option<i64> {
        let order_id = self.invoice(invoice_id)?.order_id;
        let lines = self.order(order_id)?.lines.len();
        self.refund(
            invoice_id,
            Refund {
                qtys: vec![Decimal::ZERO; lines],
                shipping: None,
                ..Refund::default()
            },
            Some("Late delivery: shipping refunded".into()),
        )
    }

    /// A goodwill refund: no item, an adjustment only.
    pub fn refund_adjustment(&mut self, invoice_id: i64, amount: Decimal) -> Option<i64> {
        let order_id = self.invoice(invoice_id)?.order_id;
        let lines = self.order(order_id)?.lines.len();
        self.refund(
            invoice_id,
            Refund {
                qtys: vec![Decimal::ZERO; lines],
                shipping: Some(Decimal::ZERO),
                adjustment_positive: amount,
                adjustment_negative: Decimal::ZERO,
            },
            Some("Goodwill".into()),
        )
    }
}

fn bump(timestamp: &str, secs: i64) -> String {
    chrono::DateTime::parse_from_rfc3339(timestamp)
        .map(|t| {
            (t.with_timezone(&chrono::Utc) + chrono::Duration::seconds(secs))
                .format("%Y-%m-%dT%H:%M:%SZ")
                .to_string()
        })
        .unwrap_or_else(|_| timestamp.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(v: &serde_json::Value, k: &str) -> Decimal {
        Decimal::from_str(&v[k].to_string()).unwrap()
    }

    #[test]
    fn invoices_add_up_with_magento_s_compensation() {
        for profile in StoreProfile::NAMES {
            let mut cat = Catalogue::generate(7, StoreProfile::named(profile).unwrap());
            let mut rng = Rng::new(7);
            for _ in 0..60 {
                let order = cat.random_order(&mut rng);
                let inv = cat.invoice_order(order, rng.chance(30), rng.chance(50)).unwrap();
                let invoice = cat.invoice(inv).unwrap();
                let v = render_invoice(&cat, invoice).unwrap().to_value();
                // grand = subtotal + tax + compensation + shipping + discount (negative)
                assert_eq!(
                    get(&v, "grand_total"),
                    get(&v, "subtotal")
                        + get(&v, "tax_amount")
                        + get(&v, "shipping_amount")
                        + get(&v, "discount_amount")
                        + invoice.totals.compensation,
                    "{profile}: {v:#}"
                );
            }
        }
    }

    #[test]
    fn amounts_print_like_php() {
        let v = Php::obj().money("qty", dec("2.0000")).money("price", dec("34")).build();
        assert_eq!(v.encode(), r#"{"qty":2,"price":34}"#);
        assert_eq!(
            php_line_total(dec("19.99"), dec("4.0"), dec("0.01")).encode(),
            "23.979999999999997"
        );
    }

    #[test]
    fn a_registered_customer_without_defaults_has_no_addresses() {
        let cat = Catalogue::generate(3, StoreProfile::uk());
        let bare = cat
            .customers
            .iter()
            .find(|c| c.default_billing.is_none() && c.default_shipping.is_none())
            .expect("the generator makes some");
        let v = render_customer(bare).to_value();
        assert_eq!(v["addresses"], serde_json::json!([]));
        assert!(v.get("company").is_none(), "the profile never has a company");
    }
}
