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

/// A store's configuration: its tax settings, its website's base currency and the
/// currencies it sells in (with Magento's base-to-order rate).
#[derive(Debug, Clone, PartialEq)]
pub struct StoreProfile {
    pub name: String,
    pub tax: TaxSettings,
    /// The website's base currency (Magento's base; amounts convert from it).
    pub base_currency: String,
    /// Display currencies other than the base: (code, base-to-order rate).
    pub currencies: Vec<(String, Decimal)>,
    /// Where customers live (ISO country, weight).
    pub countries: Vec<(String, u64)>,
    /// Chance (percent) of a cart price rule on an order.
    pub coupon_percent: u64,
}

impl StoreProfile {
    /// The names `ledger dev --store-profile` takes.
    pub const NAMES: &'static [&'static str] = &["uk", "uk-b2c", "ie-oss", "eur-website"];

    /// A UK store with Magento's default tax settings (prices without VAT).
    pub fn uk() -> Self {
        Self {
            name: "uk".into(),
            tax: TaxSettings::uk(),
            base_currency: "GBP".into(),
            currencies: vec![("EUR".into(), dec("1.1700")), ("USD".into(), dec("1.2700"))],
            countries: vec![
                ("GB".into(), 70),
                ("FR".into(), 6),
                ("DE".into(), 6),
                ("IE".into(), 6),
                ("ES".into(), 4),
                ("US".into(), 8),
            ],
            coupon_percent: 25,
        }
    }

    /// A UK consumer store: prices and shipping with VAT, discounts on VAT-inclusive
    /// prices, coupons (some on shipping, some free shipping).
    pub fn uk_b2c() -> Self {
        Self {
            name: "uk-b2c".into(),
            tax: TaxSettings::uk_b2c(),
            coupon_percent: 45,
            ..Self::uk()
        }
    }

    /// An Irish store selling across the EU under OSS (destination VAT), prices with VAT.
    pub fn ie_oss() -> Self {
        Self {
            name: "ie-oss".into(),
            tax: TaxSettings::ie_oss(),
            base_currency: "EUR".into(),
            currencies: vec![("GBP".into(), dec("0.8600"))],
            countries: vec![
                ("IE".into(), 50),
                ("DE".into(), 15),
                ("FR".into(), 15),
                ("NL".into(), 10),
                ("GB".into(), 5),
                ("US".into(), 5),
            ],
            coupon_percent: 35,
        }
    }

    /// A EUR website on a UK merchant's Magento (posting to a GBP business): the
    /// website's base is EUR, so a EUR order's base-to-order rate is 1.
    pub fn eur_website() -> Self {
        Self {
            name: "eur-website".into(),
            base_currency: "EUR".into(),
            currencies: vec![("USD".into(), dec("1.0900"))],
            countries: vec![
                ("FR".into(), 40),
                ("DE".into(), 30),
                ("IE".into(), 20),
                ("GB".into(), 10),
            ],
            ..Self::uk()
        }
    }

    pub fn named(name: &str) -> Option<Self> {
        Some(match name {
            "uk" => Self::uk(),
            "uk-b2c" => Self::uk_b2c(),
            "ie-oss" => Self::ie_oss(),
            "eur-website" => Self::eur_website(),
            _ => return None,
        })
    }

    /// A store drawn at random: every tax setting, the base currency and the currencies
    /// (property tests).
    pub fn random(rng: &mut Rng) -> Self {
        let mut p = match rng.below(4) {
            0 => Self::uk(),
            1 => Self::uk_b2c(),
            2 => Self::ie_oss(),
            _ => Self::eur_website(),
        };
        let t = &mut p.tax;
        t.prices_include_tax = rng.chance(50);
        t.shipping_includes_tax = rng.chance(50);
        t.apply_after_discount = rng.chance(80);
        t.discount_on_incl_tax = rng.chance(50);
        t.cross_border_trade = rng.chance(20);
        t.based_on = *rng.pick(&[
            TaxBasis::Shipping,
            TaxBasis::Shipping,
            TaxBasis::Billing,
            TaxBasis::Origin,
        ]);
        t.algorithm = *rng.pick(&[Algorithm::Total, Algorithm::Total, Algorithm::Row, Algorithm::Unit]);
        p.name = format!("random-{}", rng.below(1_000_000));
        p
    }

    /// The country whose rules tax an order (Magento's "Tax Calculation Based On"; a
    /// virtual order has no shipping address and is taxed by its billing address).
    pub fn tax_country<'a>(&'a self, billing: &'a Address, shipping: Option<&'a Address>) -> &'a str {
        match self.tax.based_on {
            TaxBasis::Shipping => shipping.unwrap_or(billing).country_id.as_str(),
            TaxBasis::Billing => billing.country_id.as_str(),
            TaxBasis::Origin => self.tax.origin_country.as_str(),
        }
    }
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

struct Place {
    street: &'static str,
    city: &'static str,
    postcode: &'static str,
    country: &'static str,
    region: Option<&'static str>,
}

const PLACES: &[Place] = &[
    Place {
        street: "12 High Street",
        city: "London",
        postcode: "SW1A 1AA",
        country: "GB",
        region: None,
    },
    Place {
        street: "4 Mill Lane",
        city: "Manchester",
        postcode: "M1 1AE",
        country: "GB",
        region: None,
    },
    Place {
        street: "221B Baker Street",
        city: "London",
        postcode: "NW1 6XE",
        country: "GB",
        region: None,
    },
    Place {
        street: "Unit 3, Riverside Park",
        city: "Leeds",
        postcode: "LS1 4DY",
        country: "GB",
        region: None,
    },
    Place {
        street: "7 Station Road",
        city: "Bristol",
        postcode: "BS1 5TR",
        country: "GB",
        region: None,
    },
    Place {
        street: "Rue de Rivoli 10",
        city: "Paris",
        postcode: "75001",
        country: "FR",
        region: None,
    },
    Place {
        street: "Hauptstraße 5",
        city: "Berlin",
        postcode: "10115",
        country: "DE",
        region: None,
    },
    Place {
        street: "Calle Mayor 3",
        city: "Madrid",
        postcode: "28013",
        country: "ES",
        region: None,
    },
    Place {
        street: "Keizersgracht 12",
        city: "Amsterdam",
        postcode: "1015 CJ",
        country: "NL",
        region: None,
    },
    Place {
        street: "5th Avenue 100",
        city: "New York",
        postcode: "10001",
        country: "US",
        region: Some("New York"),
    },
    Place {
        street: "O'Connell Street 1",
        city: "Dublin",
        postcode: "D01 F5P2",
        country: "IE",
        region: None,
    },
];

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

fn default_products() -> Vec<Product> {
    let simple = |id: i64, sku: &str, name: &str, price: &str, class: TaxClass| Product {
        id,
        sku: sku.to_owned(),
        name: name.to_owned(),
        type_id: "simple",
        price: dec(price),
        special_price: None,
        cost: Some(cents(dec(price) * dec("0.45"))),
        weight: Some(dec("0.5")),
        class,
        stock_qty: Some(dec("100")),
        manage_stock: true,
        children: vec![],
        created_at: ts(-200, id),
        updated_at: ts(-10, id),
    };
    let virtual_ = |p: Product, type_id: &'static str| Product {
        type_id,
        weight: None,
        stock_qty: None,
        manage_stock: false,
        ..p
    };
    vec![
        simple(1, "MUG-001", "Ceramic Mug", "8.99", TaxClass::Standard),
        simple(
            2,
            "TEE-BLK-M",
            "Organic T&#8209;Shirt &amp; Tote",
            "23.99",
            TaxClass::Standard,
        ),
        simple(3, "BOOK-101", "Field Guide to Birds", "14.50", TaxClass::Books),
        simple(4, "SEAT-CHILD", "Child Car Seat", "129.00", TaxClass::Reduced),
        simple(5, "LAMP-01", "Desk Lamp&trade;", "39.95", TaxClass::Standard),
        virtual_(
            simple(6, "WARRANTY-2Y", "2-Year Warranty", "19.00", TaxClass::Standard),
            "virtual",
        ),
        virtual_(
            simple(7, "EBOOK-01", "Cooking eBook", "9.99", TaxClass::Standard),
            "downloadable",
        ),
        simple(8, "HOODIE-S", "Hoodie – Small", "0", TaxClass::Standard),
        simple(9, "HOODIE-L", "Hoodie – Large", "0", TaxClass::Standard),
        Product {
            type_id: "configurable",
            children: vec![8, 9],
            stock_qty: None,
            manage_stock: false,
            ..simple(10, "HOODIE", "Hoodie", "45.00", TaxClass::Standard)
        },
        Product {
            type_id: "bundle",
            children: vec![1, 5],
            stock_qty: None,
            manage_stock: false,
            ..simple(11, "DESK-SET", "Desk Set", "0", TaxClass::Standard)
        },
        // A special price that ended before the sandbox's orders (the module still sends it).
        Product {
            special_price: Some((dec("3.33"), "2026-01-01".into(), "2026-03-31".into())),
            ..simple(12, "PEN-3", "Pen (pack of 3)", "3.99", TaxClass::Standard)
        },
    ]
}

// ---- the module's serializers ---------------------------------------------------------

fn render_address(kind: &str, a: &Address) -> Php {
    Php::obj()
        .put("kind", kind)
        .put(
            "street",
            a.street.iter().filter(|s| !s.is_empty()).cloned().collect::<Vec<_>>(),
        )
        .put("city", a.city.clone())
        .opt("region", a.region.clone())
        .opt("postcode", a.postcode.clone())
        .put("country_id", a.country_id.clone())
        .opt("telephone", a.telephone.clone())
        .build()
}

/// The canonical contact's parts, before rendering (the invoice enriches it).
struct ContactParts {
    magento_id: i64,
    email: String,
    first_name: Option<String>,
    last_name: Option<String>,
    company: Option<String>,
    phone: Option<String>,
    website_id: i64,
    group_id: Option<i64>,
    addresses: Vec<Php>,
    kinds: Vec<&'static str>,
    created_at: Option<String>,
    updated_at: Option<String>,
}

impl ContactParts {
    fn render(self) -> Php {
        Php::obj()
            .put("magento_id", self.magento_id)
            .put("email", self.email)
            .opt("first_name", self.first_name)
            .opt("last_name", self.last_name)
            .opt("company", self.company)
            .opt("phone", self.phone)
            .put("website_id", self.website_id)
            .opt("group_id", self.group_id)
            .put("addresses", Php::List(self.addresses))
            .opt("created_at", self.created_at)
            .opt("updated_at", self.updated_at)
            .build()
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_owned())
}

/// `ContactRepository::toCanonical`.
fn customer_parts(c: &Customer) -> ContactParts {
    let mut addresses = Vec::new();
    let mut kinds = Vec::new();
    for a in &c.addresses {
        if Some(a.id) == c.default_billing {
            addresses.push(render_address("billing", a));
            kinds.push("billing");
        }
        if Some(a.id) == c.default_shipping {
            addresses.push(render_address("shipping", a));
            kinds.push("shipping");
        }
    }
    // primaryPhone: the default billing's (null if it has none), else any address's.
    let phone = match c.address(c.default_billing) {
        Some(b) => b.telephone.clone(),
        None => c.addresses.iter().find_map(|a| a.telephone.clone()),
    };
    ContactParts {
        magento_id: c.id,
        email: c.email.clone(),
        first_name: non_empty(&c.first_name),
        last_name: non_empty(&c.last_name),
        // The profile never yields a company; the order fallback never fires.
        company: None,
        phone,
        website_id: c.website_id,
        group_id: Some(c.group_id),
        addresses,
        kinds,
        created_at: Some(c.created_at.clone()),
        updated_at: Some(c.updated_at.clone()),
    }
}

/// `GET /V1/byte8/customer/:id`.
pub fn render_customer(c: &Customer) -> Php {
    customer_parts(c).render()
}

/// The contact nested in an invoice (`enrich`: the order's addresses where the profile
/// lacks a default) or a credit memo; guests get the synthetic contact.
fn render_order_contact(cat: &Catalogue, order: &Order, enrich: bool) -> Php {
    if let Some(c) = order.customer_id.and_then(|id| cat.customer(id)) {
        let mut parts = customer_parts(c);
        if enrich {
            let has_billing = parts.kinds.contains(&"billing");
            let has_shipping = parts.kinds.contains(&"shipping");
            let mut extras = Vec::new();
            if !has_billing {
                extras.push(render_address("billing", &order.billing));
            }
            if !has_shipping && let Some(s) = &order.shipping {
                extras.push(render_address("shipping", s));
            }
            if !extras.is_empty() {
                parts.company = parts.company.or_else(|| order.billing.company.clone());
                parts.phone = parts.phone.or_else(|| order.billing.telephone.clone());
                parts.addresses.extend(extras);
            }
        }
        return parts.render();
    }
    let mut addresses = vec![render_address("billing", &order.billing)];
    if let Some(s) = &order.shipping {
        addresses.push(render_address("shipping", s));
    }
    ContactParts {
        magento_id: 0,
        email: order.email.clone(),
        first_name: non_empty(&order.first_name),
        last_name: non_empty(&order.last_name),
        company: order.billing.company.clone(),
        phone: order.billing.telephone.clone(),
        website_id: 0,
        group_id: None,
        addresses,
        kinds: Vec::new(),
        created_at: Some(order.created_at.clone()),
        updated_at: Some(order.created_at.clone()),
    }
    .render()
}

fn render_line(order: &Order, d: &totals::DocItem) -> Php {
    let line = &order.lines[d.item];
    let (row, tax, discount) = (totals::stored(d.row_total), totals::stored(d.tax), d.discount);
    let tax_rate = (row > Decimal::ZERO && tax > Decimal::ZERO).then(|| {
        Php::Float(
            (tax / row)
                .round_dp_with_strategy(4, rust_decimal::RoundingStrategy::MidpointAwayFromZero)
                .to_f64()
                .expect("fits"),
        )
    });
    Php::obj()
        .put("sku", line.sku.clone())
        .put("name", line.name.clone())
        .money("qty", d.qty)
        .money("unit_price", d.price)
        .money("line_subtotal", row)
        .money("line_tax", tax)
        .put("line_total", php_line_total(row, tax, discount))
        .opt("tax_rate", tax_rate)
        .put("product_type", line.product_type)
        .build()
}

fn state_text(state: InvoiceState) -> &'static str {
    match state {
        InvoiceState::Open => "open",
        InvoiceState::Paid => "paid",
        InvoiceState::Cancelled => "cancelled",
    }
}

/// `GET /V1/byte8/invoice/:id`.
pub fn render_invoice(cat: &Catalogue, inv: &Invoice) -> Option<Php> {
    let order = cat.order(inv.order_id)?;
    let t = &inv.totals;
    Some(
        Php::obj()
            .put("magento_id", inv.id)
            .put("increment_id", inv.increment_id.clone())
            .put("order_id", order.id)
            .put("order_increment_id", order.increment_id.clone())
            .put("website_id", order.website_id)
            .put("store_id", order.store_id)
            .put("currency", order.currency.clone())
            .put("state", state_text(inv.state))
            .put("customer", render_order_contact(cat, order, true))
            .put(
                "lines",
                Php::List(t.items.iter().map(|d| render_line(order, d)).collect()),
            )
            .money("subtotal", t.subtotal)
            .money("tax_amount", t.tax)
            .money("shipping_amount", t.shipping_amount)
            .money("shipping_tax_amount", t.shipping_tax)
            .money("discount_amount", -t.discount)
            .money("grand_total", t.grand_total)
            .put("created_at", inv.created_at.clone())
            .put("payment_method", order.payment_method.clone())
            .put("billing_address", render_address("billing", &order.billing))
            .opt(
                "shipping_address",
                order.shipping.as_ref().map(|s| render_address("shipping", s)),
            )
            .opt("po_number", order.po_number.clone())
            .money("base_to_order_rate", order.base_to_order_rate)
            .build(),
    )
}

/// `GET /V1/byte8/creditmemo/:id` (no subtotal, tax or discount header: contract §8.7).
pub fn render_credit_memo(cat: &Catalogue, memo: &CreditMemo) -> Option<Php> {
    let order = cat.order(memo.order_id)?;
    let invoice = memo.invoice_id.and_then(|id| cat.invoice(id));
    let t = &memo.totals;
    Some(
        Php::obj()
            .put("magento_id", memo.id)
            .put("increment_id", memo.increment_id.clone())
            .opt("invoice_id", invoice.map(|i| i.id))
            .opt("invoice_increment_id", invoice.map(|i| i.increment_id.clone()))
            .put("website_id", order.website_id)
            .put("currency", order.currency.clone())
            .put("customer", render_order_contact(cat, order, false))
            .put(
                "lines",
                Php::List(t.items.iter().map(|d| render_line(order, d)).collect()),
            )
            .money("adjustment_positive", t.adjustment_positive)
            .money("adjustment_negative", t.adjustment_negative)
            .money("grand_total", t.grand_total)
            .money("shipping_amount", t.shipping_amount)
            .money("shipping_tax_amount", t.shipping_tax)
            .opt("reason", memo.reason.clone())
            .put("created_at", memo.created_at.clone())
            .opt("invoice_created_at", invoice.map(|i| i.created_at.clone()))
            .money("base_to_order_rate", order.base_to_order_rate)
            .build(),
    )
}

/// `GET /V1/byte8/payment/:invoice_id`; `None` also when the order has no payment row.
pub fn render_payment(cat: &Catalogue, inv: &Invoice) -> Option<Php> {
    let order = cat.order(inv.order_id)?;
    // Magento drops the keys of additional_information and JSON-encodes nested arrays.
    let metadata = Php::List(vec![
        Php::from("Check / Money order"),
        Php::from(r#"{"card_type":"visa","last4":"4242"}"#),
    ]);
    Some(
        Php::obj()
            .put("magento_id", inv.id)
            .put("invoice_id", inv.id)
            .put("invoice_increment_id", inv.increment_id.clone())
            .put("method", order.payment_method.clone())
            .put("currency", order.currency.clone())
            .money("amount", inv.grand_total())
            // The module sends the invoice's creation time, not the capture's.
            .put("captured_at", inv.created_at.clone())
            .opt("gateway_txn_id", inv.gateway_txn_id.clone())
            .put("gateway_metadata", metadata)
            .build(),
    )
}

/// `GET /V1/byte8/product/:id`: the catalogue price as entered, the special price
/// whatever its dates.
pub fn render_product(p: &Product) -> Php {
    Php::obj()
        .put("magento_id", p.id)
        .put("sku", p.sku.clone())
        .put("name", p.name.clone())
        .put("product_type", p.type_id)
        .money("price", p.price)
        .opt_money("special_price", p.special_price.as_ref().map(|(s, _, _)| *s))
        .opt_money("cost", p.cost)
        .opt_money("weight", p.weight)
        .opt_money("stock_qty", p.stock_qty)
        .put("manage_stock", p.manage_stock)
        .put("tax_class", p.class.id().to_string())
        .put("website_ids", vec![1_i64])
        .put("created_at", p.created_at.clone())
        .put("updated_at", p.updated_at.clone())
        .build()
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
