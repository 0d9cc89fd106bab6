//! The store's data: a realistic catalogue, customers, orders, invoices and credit
//! memos, with Magento's arithmetic, rendered as the module's canonical JSON.
//!
//! Amounts are kept as Magento stores them (decimals rounded to cents). Rendering turns
//! them into PHP floats, and `line_total` is computed in floating point exactly as the
//! module does (`row total + tax − discount`), so the ledger sees the same
//! `23.990000000000002`-style values a real store sends.

use std::str::FromStr as _;

use rust_decimal::{Decimal, RoundingStrategy, prelude::ToPrimitive as _};
use serde_json::{Value, json};

use crate::rng::Rng;

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).expect("literal decimal")
}

/// Magento rounds half away from zero (PHP `round`).
pub fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// A PHP float as `json_encode` writes it.
fn float(d: Decimal) -> Value {
    json!(d.to_f64().expect("amounts fit in f64"))
}

/// `row total + tax − discount` in IEEE doubles, like the module's PHP.
#[allow(
    clippy::float_arithmetic,
    reason = "emulating the module's PHP float arithmetic on purpose"
)]
fn php_line_total(subtotal: Decimal, tax: Decimal, discount: Decimal) -> Value {
    let to = |d: Decimal| d.to_f64().expect("fits");
    json!(to(subtotal) + to(tax) - to(discount))
}

#[derive(Debug, Clone)]
pub struct Product {
    pub id: i64,
    pub sku: String,
    pub name: String,
    /// simple, virtual, downloadable, configurable, bundle, grouped
    pub type_id: &'static str,
    pub price: Decimal,
    pub special_price: Option<Decimal>,
    pub cost: Option<Decimal>,
    pub weight: Option<Decimal>,
    /// VAT ratio charged to GB customers (0.2, 0.05, 0).
    pub tax_rate: Decimal,
    /// Magento tax class id (2 taxable goods, 5 reduced, 0 none).
    pub tax_class_id: u32,
    pub stock_qty: Option<Decimal>,
    pub manage_stock: bool,
    pub children: Vec<i64>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct Address {
    pub street: Vec<String>,
    pub city: String,
    pub region: Option<String>,
    pub postcode: Option<String>,
    pub country_id: String,
    pub telephone: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Customer {
    pub id: i64,
    pub email: String,
    pub first_name: String,
    pub last_name: String,
    pub company: Option<String>,
    pub phone: Option<String>,
    pub website_id: i64,
    pub group_id: i64,
    pub billing: Option<Address>,
    pub shipping: Option<Address>,
    pub created_at: String,
    pub updated_at: String,
}

#[derive(Debug, Clone)]
pub struct OrderItem {
    pub product_id: i64,
    pub sku: String,
    pub name: String,
    pub product_type: &'static str,
    pub qty: Decimal,
    pub price: Decimal,
    pub tax_rate: Decimal,
    /// Index of the parent item for children of composite products.
    pub parent: Option<usize>,
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
    pub company: Option<String>,
    pub currency: String,
    pub base_to_order_rate: Decimal,
    pub items: Vec<OrderItem>,
    pub discount_pct: Decimal,
    pub shipping_amount: Decimal,
    pub shipping_tax_rate: Decimal,
    pub payment_method: String,
    pub po_number: Option<String>,
    pub billing: Address,
    pub shipping: Option<Address>,
    pub website_id: i64,
    pub store_id: i64,
    pub created_at: String,
}

/// One line of an invoice or credit memo, with Magento's per-row arithmetic.
#[derive(Debug, Clone)]
pub struct DocLine {
    pub item: usize,
    pub qty: Decimal,
    pub subtotal: Decimal,
    pub discount: Decimal,
    pub tax: Decimal,
}

impl DocLine {
    pub fn new(order: &Order, item: usize, qty: Decimal) -> Self {
        let it = &order.items[item];
        let subtotal = cents(it.price * qty);
        let discount = cents(subtotal * order.discount_pct);
        let tax = cents((subtotal - discount) * it.tax_rate);
        Self {
            item,
            qty,
            subtotal,
            discount,
            tax,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Invoice {
    pub id: i64,
    pub increment_id: String,
    pub order_id: i64,
    pub lines: Vec<DocLine>,
    pub shipping_amount: Decimal,
    pub shipping_tax: Decimal,
    pub paid: bool,
    pub created_at: String,
    pub gateway_txn_id: Option<String>,
}

impl Invoice {
    pub fn subtotal(&self) -> Decimal {
        self.lines.iter().map(|l| l.subtotal).sum()
    }
    pub fn discount(&self) -> Decimal {
        self.lines.iter().map(|l| l.discount).sum()
    }
    pub fn tax(&self) -> Decimal {
        self.lines.iter().map(|l| l.tax).sum::<Decimal>() + self.shipping_tax
    }
    pub fn grand_total(&self) -> Decimal {
        self.subtotal() - self.discount() + self.tax() + self.shipping_amount
    }
}

#[derive(Debug, Clone)]
pub struct CreditMemo {
    pub id: i64,
    pub increment_id: String,
    pub order_id: i64,
    pub invoice_id: Option<i64>,
    pub lines: Vec<DocLine>,
    pub shipping_amount: Decimal,
    pub shipping_tax: Decimal,
    pub adjustment_positive: Decimal,
    pub adjustment_negative: Decimal,
    pub reason: Option<String>,
    pub created_at: String,
}

impl CreditMemo {
    pub fn grand_total(&self) -> Decimal {
        self.lines
            .iter()
            .map(|l| l.subtotal - l.discount + l.tax)
            .sum::<Decimal>()
            + self.shipping_amount
            + self.shipping_tax
            + self.adjustment_positive
            - self.adjustment_negative
    }
}

/// Everything the store holds.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    pub products: Vec<Product>,
    pub customers: Vec<Customer>,
    pub orders: Vec<Order>,
    pub invoices: Vec<Invoice>,
    pub credit_memos: Vec<CreditMemo>,
    next_order: i64,
    next_invoice: i64,
    next_memo: i64,
}

pub const CURRENCIES: &[(&str, &str)] = &[("GBP", "1.0"), ("EUR", "1.1700"), ("USD", "1.2700")];
pub const PAYMENT_METHODS: &[(&str, Option<&str>, bool)] = &[
    ("checkmo", Some("Check / Money order"), true),
    ("banktransfer", Some("Bank Transfer Payment"), true),
    ("stripe_payments", Some("Pay by Card (Stripe)"), true),
    ("paypal_express", Some("PayPal Express Checkout"), false),
    ("free", None, true),
];

fn ts(day: i64, second: i64) -> String {
    let base = chrono::DateTime::parse_from_rfc3339("2026-10-01T08:00:00Z")
        .expect("constant")
        .with_timezone(&chrono::Utc);
    (base + chrono::Duration::days(day) + chrono::Duration::seconds(second))
        .format("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

fn gb_address(rng: &mut Rng) -> Address {
    let streets = [
        "12 High Street",
        "4 Mill Lane",
        "221B Baker Street",
        "7 Station Road",
        "Unit 3, Riverside Park",
    ];
    let towns = [
        ("London", "SW1A 1AA"),
        ("Manchester", "M1 1AE"),
        ("Leeds", "LS1 4DY"),
        ("Bristol", "BS1 5TR"),
    ];
    let (city, postcode) = *rng.pick(&towns);
    Address {
        street: vec![(*rng.pick(&streets)).to_owned()],
        city: city.to_owned(),
        region: None,
        postcode: Some(postcode.to_owned()),
        country_id: "GB".to_owned(),
        telephone: Some(format!("0161 {:03} {:04}", rng.below(1000), rng.below(10000))),
    }
}

fn foreign_address(rng: &mut Rng) -> Address {
    let places = [
        ("Rue de Rivoli 10", "Paris", "75001", "FR"),
        ("Hauptstraße 5", "Berlin", "10115", "DE"),
        ("Calle Mayor 3", "Madrid", "28013", "ES"),
        ("5th Avenue 100", "New York", "10001", "US"),
        ("O'Connell Street 1", "Dublin", "D01 F5P2", "IE"),
    ];
    let (street, city, postcode, country) = *rng.pick(&places);
    Address {
        street: vec![street.to_owned(), String::new()]
            .into_iter()
            .filter(|s| !s.is_empty())
            .collect(),
        city: city.to_owned(),
        region: (country == "US").then(|| "New York".to_owned()),
        postcode: Some(postcode.to_owned()),
        country_id: country.to_owned(),
        telephone: None,
    }
}

impl Catalogue {
    /// A catalogue with every product type and a few dozen customers.
    pub fn generate(seed: u64) -> Self {
        let mut rng = Rng::new(seed);
        let mut c = Self {
            next_order: 1,
            next_invoice: 1,
            next_memo: 1,
            ..Self::default()
        };
        let simple = |id: i64, sku: &str, name: &str, price: &str, rate: &str, class: u32| Product {
            id,
            sku: sku.to_owned(),
            name: name.to_owned(),
            type_id: "simple",
            price: dec(price),
            special_price: None,
            cost: Some(cents(dec(price) * dec("0.45"))),
            weight: Some(dec("0.5")),
            tax_rate: dec(rate),
            tax_class_id: class,
            stock_qty: Some(dec("100")),
            manage_stock: true,
            children: vec![],
            created_at: ts(-200, id),
            updated_at: ts(-10, id),
        };
        c.products = vec![
            simple(1, "MUG-001", "Ceramic Mug", "8.99", "0.2", 2),
            simple(2, "TEE-BLK-M", "Organic T&#8209;Shirt &amp; Tote", "23.99", "0.2", 2),
            simple(3, "BOOK-101", "Field Guide to Birds", "14.50", "0", 0),
            simple(4, "SEAT-CHILD", "Child Car Seat", "129.00", "0.05", 5),
            simple(5, "LAMP-01", "Desk Lamp&trade;", "39.95", "0.2", 2),
            Product {
                type_id: "virtual",
                weight: None,
                stock_qty: None,
                manage_stock: false,
                ..simple(6, "WARRANTY-2Y", "2-Year Warranty", "19.00", "0.2", 2)
            },
            Product {
                type_id: "downloadable",
                weight: None,
                stock_qty: None,
                manage_stock: false,
                ..simple(7, "EBOOK-01", "Cooking eBook", "9.99", "0.2", 2)
            },
            simple(8, "HOODIE-S", "Hoodie – Small", "0", "0.2", 2),
            simple(9, "HOODIE-L", "Hoodie – Large", "0", "0.2", 2),
            Product {
                type_id: "configurable",
                children: vec![8, 9],
                stock_qty: None,
                manage_stock: false,
                ..simple(10, "HOODIE", "Hoodie", "45.00", "0.2", 2)
            },
            Product {
                type_id: "bundle",
                children: vec![1, 5],
                stock_qty: None,
                manage_stock: false,
                price: dec("0"),
                ..simple(11, "DESK-SET", "Desk Set", "0", "0.2", 2)
            },
            Product {
                special_price: Some(dec("3.33")),
                ..simple(12, "PEN-3", "Pen (pack of 3)", "3.99", "0.2", 2)
            },
        ];
        let firsts = ["Alice", "Bilal", "Chloé", "Dmitri", "Eve", "Fatima", "George", "Hana"];
        let lasts = [
            "Smith", "O'Brien", "Nakamura", "García", "Müller", "Okafor", "Jones", "Novak",
        ];
        for id in 1..=24 {
            let foreign = rng.chance(25);
            let address = if foreign {
                foreign_address(&mut rng)
            } else {
                gb_address(&mut rng)
            };
            let first = (*rng.pick(&firsts)).to_owned();
            let last = (*rng.pick(&lasts)).to_owned();
            let company = rng.chance(30).then(|| format!("{last} Trading Ltd"));
            let no_addresses = rng.chance(10);
            c.customers.push(Customer {
                id,
                email: format!(
                    "{}.{}{id}@example.com",
                    first.to_lowercase(),
                    last.to_lowercase().replace('\'', "")
                ),
                phone: address.telephone.clone(),
                first_name: first,
                last_name: last,
                company,
                website_id: 1,
                group_id: if rng.chance(20) { 2 } else { 1 },
                billing: (!no_addresses).then(|| address.clone()),
                shipping: (!no_addresses).then_some(address),
                created_at: ts(-300, id),
                updated_at: ts(-5, id),
            });
        }
        c
    }

    pub fn product(&self, id: i64) -> Option<&Product> {
        self.products.iter().find(|p| p.id == id)
    }

    /// Places a random order (registered or guest, home or abroad, several currencies,
    /// discounts, composite products, virtual-only baskets).
    pub fn random_order(&mut self, rng: &mut Rng) -> i64 {
        let guest = rng.chance(30);
        let customer = (!guest).then(|| rng.pick(&self.customers).clone());
        let foreign = customer.as_ref().map_or_else(
            || rng.chance(25),
            |c| c.billing.as_ref().is_some_and(|a| a.country_id != "GB"),
        );
        let billing = customer
            .as_ref()
            .and_then(|c| c.billing.clone())
            .unwrap_or_else(|| if foreign { foreign_address(rng) } else { gb_address(rng) });
        let (currency, rate) = if foreign && rng.chance(70) {
            *rng.pick(&CURRENCIES[1..])
        } else {
            CURRENCIES[0]
        };
        let mut items = Vec::new();
        let lines = 1 + rng.below(3);
        let pool: Vec<i64> = vec![1, 2, 3, 4, 5, 6, 7, 10, 11, 12];
        for _ in 0..lines {
            let product = self.product(*rng.pick(&pool)).expect("catalogue product").clone();
            let qty = Decimal::from(1 + rng.below(3));
            self.push_item(&mut items, &product, qty, foreign);
        }
        let virtual_only = items
            .iter()
            .all(|i: &OrderItem| matches!(i.product_type, "virtual" | "downloadable"));
        let discount_pct = if rng.chance(25) { dec("0.10") } else { Decimal::ZERO };
        let shipping_amount = if virtual_only || rng.chance(20) {
            Decimal::ZERO
        } else {
            *rng.pick(&[dec("4.99"), dec("9.95")])
        };
        let shipping_tax_rate = if foreign { Decimal::ZERO } else { dec("0.2") };
        let (first, last, email, company) = match &customer {
            Some(c) => (
                c.first_name.clone(),
                c.last_name.clone(),
                c.email.clone(),
                c.company.clone(),
            ),
            None => {
                let n = self.next_order;
                (
                    "Guest".to_owned(),
                    format!("Buyer {n}"),
                    format!("guest{n}@example.net"),
                    rng.chance(15).then(|| "Pop-up Shop LLP".to_owned()),
                )
            }
        };
        let method = PAYMENT_METHODS[rng.below(3) as usize].0.to_owned();
        let id = self.next_order;
        self.next_order += 1;
        self.orders.push(Order {
            id,
            increment_id: format!("{:09}", 100 + id),
            customer_id: customer.as_ref().map(|c| c.id),
            email,
            first_name: first,
            last_name: last,
            company,
            currency: currency.to_owned(),
            base_to_order_rate: dec(rate),
            items,
            discount_pct,
            shipping_amount,
            shipping_tax_rate,
            po_number: rng.chance(10).then(|| format!("PO-{}", 4000 + id)),
            payment_method: method,
            shipping: (!virtual_only).then(|| billing.clone()),
            billing,
            website_id: 1,
            store_id: 1,
            created_at: ts(0, id * 60),
        });
        id
    }

    fn push_item(&self, items: &mut Vec<OrderItem>, product: &Product, qty: Decimal, foreign: bool) {
        let rate = if foreign { Decimal::ZERO } else { product.tax_rate };
        let price = product.special_price.unwrap_or(product.price);
        let item = |p: &Product, price: Decimal, parent: Option<usize>| OrderItem {
            product_id: p.id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            product_type: p.type_id,
            qty,
            price,
            tax_rate: if foreign { Decimal::ZERO } else { p.tax_rate },
            parent,
        };
        match product.type_id {
            // Configurable: the parent row carries the price, the chosen child is a zero row.
            "configurable" => {
                let parent = items.len();
                items.push(OrderItem {
                    tax_rate: rate,
                    ..item(product, price, None)
                });
                let child = self.product(product.children[0]).expect("child");
                items.push(item(child, Decimal::ZERO, Some(parent)));
            }
            // Bundle (dynamic price): a zero parent row, the children carry their prices.
            "bundle" => {
                let parent = items.len();
                items.push(item(product, Decimal::ZERO, None));
                for child in &product.children {
                    let child = self.product(*child).expect("child");
                    items.push(item(child, child.price, Some(parent)));
                }
            }
            _ => items.push(item(product, price, None)),
        }
    }

    pub fn order(&self, id: i64) -> Option<&Order> {
        self.orders.iter().find(|o| o.id == id)
    }

    /// Invoices `fraction` of each line (1 = everything left; partial invoices round
    /// quantities down but invoice at least one unit) and, on the first invoice, shipping.
    pub fn invoice_order(&mut self, order_id: i64, partial: bool, paid: bool) -> Option<i64> {
        let order = self.order(order_id)?.clone();
        let invoiced = |item: usize| -> Decimal {
            self.invoices
                .iter()
                .filter(|i| i.order_id == order_id)
                .flat_map(|i| &i.lines)
                .filter(|l| l.item == item)
                .map(|l| l.qty)
                .sum()
        };
        let mut lines = Vec::new();
        for (index, it) in order.items.iter().enumerate() {
            let left = it.qty - invoiced(index);
            if left <= Decimal::ZERO {
                continue;
            }
            let qty = if partial {
                (left / Decimal::TWO).floor().max(Decimal::ONE)
            } else {
                left
            };
            lines.push(DocLine::new(&order, index, qty));
        }
        if lines.is_empty() {
            return None;
        }
        let first = !self.invoices.iter().any(|i| i.order_id == order_id);
        let shipping_amount = if first { order.shipping_amount } else { Decimal::ZERO };
        let id = self.next_invoice;
        self.next_invoice += 1;
        self.invoices.push(Invoice {
            id,
            increment_id: format!("{:09}", 1000 + id),
            order_id,
            lines,
            shipping_tax: cents(shipping_amount * order.shipping_tax_rate),
            shipping_amount,
            paid,
            created_at: ts(0, order_id * 60 + id),
            gateway_txn_id: (order.payment_method == "stripe_payments").then(|| format!("pi_{:024x}", id * 7919)),
        });
        Some(id)
    }

    pub fn invoice(&self, id: i64) -> Option<&Invoice> {
        self.invoices.iter().find(|i| i.id == id)
    }

    /// Refunds part (or all) of an invoice, optionally with shipping and adjustments.
    pub fn refund_invoice(
        &mut self,
        invoice_id: i64,
        partial: bool,
        adjustment_fee: Decimal,
        adjustment_refund: Decimal,
    ) -> Option<i64> {
        let invoice = self.invoice(invoice_id)?.clone();
        let order = self.order(invoice.order_id)?.clone();
        let lines: Vec<DocLine> = invoice
            .lines
            .iter()
            .map(|l| {
                DocLine::new(
                    &order,
                    l.item,
                    if partial {
                        (l.qty / Decimal::TWO).floor().max(Decimal::ONE)
                    } else {
                        l.qty
                    },
                )
            })
            .take(if partial { 1 } else { usize::MAX })
            .collect();
        let shipping_amount = if partial {
            Decimal::ZERO
        } else {
            invoice.shipping_amount
        };
        let id = self.next_memo;
        self.next_memo += 1;
        self.credit_memos.push(CreditMemo {
            id,
            increment_id: format!("{:09}", 5000 + id),
            order_id: order.id,
            invoice_id: Some(invoice_id),
            lines,
            shipping_tax: cents(shipping_amount * order.shipping_tax_rate),
            shipping_amount,
            adjustment_positive: adjustment_refund,
            adjustment_negative: adjustment_fee,
            reason: partial.then(|| "Customer returned one item".to_owned()),
            created_at: ts(3, order.id * 60 + id),
        });
        Some(id)
    }

    pub fn credit_memo(&self, id: i64) -> Option<&CreditMemo> {
        self.credit_memos.iter().find(|m| m.id == id)
    }

    pub fn customer(&self, id: i64) -> Option<&Customer> {
        self.customers.iter().find(|c| c.id == id)
    }
}

fn render_address(kind: &str, a: &Address) -> Value {
    let mut v = json!({ "kind": kind, "street": a.street, "city": a.city });
    let o = v.as_object_mut().expect("object");
    if let Some(r) = &a.region {
        o.insert("region".into(), json!(r));
    }
    if let Some(p) = &a.postcode {
        o.insert("postcode".into(), json!(p));
    }
    o.insert("country_id".into(), json!(a.country_id));
    if let Some(t) = &a.telephone {
        o.insert("telephone".into(), json!(t));
    }
    v
}

/// Omits null members, as Magento's serializer does for nullable getters.
fn insert_some(o: &mut serde_json::Map<String, Value>, key: &str, value: Option<Value>) {
    if let Some(v) = value {
        o.insert(key.to_owned(), v);
    }
}

/// `GET /V1/byte8/customer/:id`.
pub fn render_customer(c: &Customer, orders: &[Order]) -> Value {
    let mut addresses = Vec::new();
    if let Some(b) = &c.billing {
        addresses.push(render_address("billing", b));
    }
    if let Some(s) = &c.shipping {
        addresses.push(render_address("shipping", s));
    }
    let mut company = None;
    if addresses.is_empty()
        && let Some(last) = orders
            .iter()
            .filter(|o| o.customer_id == Some(c.id))
            .max_by(|a, b| a.created_at.cmp(&b.created_at))
    {
        addresses.push(render_address("billing", &last.billing));
        if let Some(s) = &last.shipping {
            addresses.push(render_address("shipping", s));
        }
        company = last.company.clone();
    }
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(c.id));
    o.insert("email".into(), json!(c.email));
    o.insert("first_name".into(), json!(c.first_name));
    o.insert("last_name".into(), json!(c.last_name));
    insert_some(
        &mut o,
        "company",
        company.or_else(|| c.company.clone()).map(Value::from),
    );
    insert_some(&mut o, "phone", c.phone.clone().map(Value::from));
    o.insert("website_id".into(), json!(c.website_id));
    o.insert("group_id".into(), json!(c.group_id));
    o.insert("addresses".into(), Value::Array(addresses));
    o.insert("created_at".into(), json!(c.created_at));
    o.insert("updated_at".into(), json!(c.updated_at));
    Value::Object(o)
}

/// The contact nested in an invoice or credit memo: the customer record, or a synthetic
/// guest contact (`magento_id` 0) from the order.
fn render_order_contact(cat: &Catalogue, order: &Order, enrich: bool) -> Value {
    if let Some(c) = order.customer_id.and_then(|id| cat.customer(id)) {
        let mut v = render_customer(c, &cat.orders);
        if enrich && c.billing.is_none() {
            // Registered customers without addresses get the order's.
            let o = v.as_object_mut().expect("object");
            o.insert("addresses".into(), json!([render_address("billing", &order.billing)]));
        }
        return v;
    }
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(0));
    o.insert("email".into(), json!(order.email));
    o.insert("first_name".into(), json!(order.first_name));
    o.insert("last_name".into(), json!(order.last_name));
    insert_some(&mut o, "company", order.company.clone().map(Value::from));
    insert_some(&mut o, "phone", order.billing.telephone.clone().map(Value::from));
    o.insert("website_id".into(), json!(0));
    let mut addresses = vec![render_address("billing", &order.billing)];
    if let Some(s) = &order.shipping {
        addresses.push(render_address("shipping", s));
    }
    o.insert("addresses".into(), Value::Array(addresses));
    o.insert("created_at".into(), json!(order.created_at));
    o.insert("updated_at".into(), json!(order.created_at));
    Value::Object(o)
}

fn render_line(order: &Order, l: &DocLine) -> Value {
    let it = &order.items[l.item];
    let mut o = serde_json::Map::new();
    o.insert("sku".into(), json!(it.sku));
    o.insert("name".into(), json!(it.name));
    o.insert("qty".into(), float(l.qty));
    o.insert("unit_price".into(), float(it.price));
    o.insert("line_subtotal".into(), float(l.subtotal));
    o.insert("line_tax".into(), float(l.tax));
    o.insert("line_total".into(), php_line_total(l.subtotal, l.tax, l.discount));
    if l.tax > Decimal::ZERO && l.subtotal > Decimal::ZERO {
        let ratio = (l.tax / l.subtotal).round_dp_with_strategy(4, RoundingStrategy::MidpointAwayFromZero);
        o.insert("tax_rate".into(), float(ratio));
    }
    o.insert("product_type".into(), json!(it.product_type));
    Value::Object(o)
}

/// `GET /V1/byte8/invoice/:id`.
pub fn render_invoice(cat: &Catalogue, inv: &Invoice) -> Option<Value> {
    let order = cat.order(inv.order_id)?;
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(inv.id));
    o.insert("increment_id".into(), json!(inv.increment_id));
    o.insert("order_id".into(), json!(order.id));
    o.insert("order_increment_id".into(), json!(order.increment_id));
    o.insert("website_id".into(), json!(order.website_id));
    o.insert("store_id".into(), json!(order.store_id));
    o.insert("currency".into(), json!(order.currency));
    o.insert("state".into(), json!(if inv.paid { "paid" } else { "open" }));
    o.insert("customer".into(), render_order_contact(cat, order, true));
    o.insert(
        "lines".into(),
        Value::Array(inv.lines.iter().map(|l| render_line(order, l)).collect()),
    );
    o.insert("subtotal".into(), float(inv.subtotal()));
    o.insert("tax_amount".into(), float(inv.tax()));
    o.insert("shipping_amount".into(), float(inv.shipping_amount));
    o.insert("shipping_tax_amount".into(), float(inv.shipping_tax));
    o.insert("discount_amount".into(), float(-inv.discount()));
    o.insert("grand_total".into(), float(inv.grand_total()));
    o.insert("created_at".into(), json!(inv.created_at));
    o.insert("payment_method".into(), json!(order.payment_method));
    o.insert("billing_address".into(), render_address("billing", &order.billing));
    insert_some(
        &mut o,
        "shipping_address",
        order.shipping.as_ref().map(|s| render_address("shipping", s)),
    );
    insert_some(&mut o, "po_number", order.po_number.clone().map(Value::from));
    o.insert("base_to_order_rate".into(), float(order.base_to_order_rate));
    Some(Value::Object(o))
}

/// `GET /V1/byte8/creditmemo/:id` (no subtotal, tax or discount header: contract §8.7).
pub fn render_credit_memo(cat: &Catalogue, memo: &CreditMemo) -> Option<Value> {
    let order = cat.order(memo.order_id)?;
    let invoice = memo.invoice_id.and_then(|id| cat.invoice(id));
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(memo.id));
    o.insert("increment_id".into(), json!(memo.increment_id));
    insert_some(&mut o, "invoice_id", invoice.map(|i| json!(i.id)));
    insert_some(&mut o, "invoice_increment_id", invoice.map(|i| json!(i.increment_id)));
    o.insert("website_id".into(), json!(order.website_id));
    o.insert("currency".into(), json!(order.currency));
    o.insert("customer".into(), render_order_contact(cat, order, false));
    o.insert(
        "lines".into(),
        Value::Array(memo.lines.iter().map(|l| render_line(order, l)).collect()),
    );
    o.insert("adjustment_positive".into(), float(memo.adjustment_positive));
    o.insert("adjustment_negative".into(), float(memo.adjustment_negative));
    o.insert("grand_total".into(), float(memo.grand_total()));
    o.insert("shipping_amount".into(), float(memo.shipping_amount));
    o.insert("shipping_tax_amount".into(), float(memo.shipping_tax));
    insert_some(&mut o, "reason", memo.reason.clone().map(Value::from));
    o.insert("created_at".into(), json!(memo.created_at));
    insert_some(&mut o, "invoice_created_at", invoice.map(|i| json!(i.created_at)));
    o.insert("base_to_order_rate".into(), float(order.base_to_order_rate));
    Some(Value::Object(o))
}

/// `GET /V1/byte8/payment/:invoice_id`; `None` also when the order has no payment row.
pub fn render_payment(cat: &Catalogue, inv: &Invoice) -> Option<Value> {
    let order = cat.order(inv.order_id)?;
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(inv.id));
    o.insert("invoice_id".into(), json!(inv.id));
    o.insert("invoice_increment_id".into(), json!(inv.increment_id));
    o.insert("method".into(), json!(order.payment_method));
    o.insert("currency".into(), json!(order.currency));
    o.insert("amount".into(), float(inv.grand_total()));
    o.insert("captured_at".into(), json!(inv.created_at));
    insert_some(&mut o, "gateway_txn_id", inv.gateway_txn_id.clone().map(Value::from));
    // Magento drops the keys of additional_information and JSON-encodes nested arrays.
    o.insert(
        "gateway_metadata".into(),
        json!(["Check / Money order", r#"{"card_type":"visa","last4":"4242"}"#]),
    );
    Some(Value::Object(o))
}

/// `GET /V1/byte8/product/:id`.
pub fn render_product(p: &Product) -> Value {
    let mut o = serde_json::Map::new();
    o.insert("magento_id".into(), json!(p.id));
    o.insert("sku".into(), json!(p.sku));
    o.insert("name".into(), json!(p.name));
    o.insert("product_type".into(), json!(p.type_id));
    o.insert("price".into(), float(p.price));
    insert_some(&mut o, "special_price", p.special_price.map(float));
    insert_some(&mut o, "cost", p.cost.map(float));
    insert_some(&mut o, "weight", p.weight.map(float));
    insert_some(&mut o, "stock_qty", p.stock_qty.map(float));
    o.insert("manage_stock".into(), json!(p.manage_stock));
    o.insert("tax_class".into(), json!(p.tax_class_id.to_string()));
    o.insert("website_ids".into(), json!([1]));
    o.insert("created_at".into(), json!(p.created_at));
    o.insert("updated_at".into(), json!(p.updated_at));
    Value::Object(o)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invoices_add_up_and_render_php_floats() {
        let mut cat = Catalogue::generate(7);
        let mut rng = Rng::new(7);
        for _ in 0..40 {
            let order = cat.random_order(&mut rng);
            let inv = cat.invoice_order(order, rng.chance(30), rng.chance(50)).unwrap();
            let rendered = render_invoice(&cat, cat.invoice(inv).unwrap()).unwrap();
            let lines = rendered["lines"].as_array().unwrap();
            assert!(!lines.is_empty());
            // grand_total = subtotal + tax + shipping + discount(negative)
            let get = |k: &str| Decimal::from_str(&rendered[k].to_string()).unwrap();
            assert_eq!(
                get("grand_total"),
                get("subtotal") + get("tax_amount") + get("shipping_amount") + get("discount_amount")
            );
        }
    }

    #[test]
    fn php_float_artifacts_appear() {
        let v = php_line_total(dec("19.99"), dec("4.0"), dec("0.01"));
        // 19.99 + 4.0 - 0.01 in doubles is not exactly 23.98.
        assert_eq!(v.to_string(), "23.979999999999997");
    }
}
