//! The module's serializers: entities rendered as its canonical repositories write them.

// A part of the catalogue: its types and helpers are this file's too.
use super::*;

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
