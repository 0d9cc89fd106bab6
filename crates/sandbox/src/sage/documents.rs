//! The documents the ledger posts: contacts, sales invoices and credit notes, payments
//! and allocations, products, services and stock. With Sage's documented behaviours:
//! required fields from the API definition, its totals arithmetic, `idempotency_id`
//! replay (7 days) and `IdempotencyResourceMismatch`, HTML entities refused in
//! descriptions, 10-character contact references that stay reserved after deletion,
//! contacts locked to one currency, zero rates required for goods delivered outside the
//! business's country, shipping tax recomputed from rate × net, a line's tax taken as
//! sent except on a zero-percentage rate (zero, exempt, no tax: Sage infers 0 and
//! ignores an explicit amount) and a missing one becoming 0, foreign currencies only
//! with multi-currency on (at the document's `exchange_rate`, else the business's
//! own rate, base-currency amounts = amount × rate), the delivery address copied when
//! omitted, and GET marking documents sent unless `mark_as_sent=false`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    Json, Router,
    extract::{OriginalUri, Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::get,
};
use rust_decimal::{Decimal, RoundingStrategy};
use serde_json::{Map, Value, json};

use super::{
    Sage,
    api::{enter, page, sage_error},
    data::Business,
    random_hex,
};

/// What the closure-built handlers return.
type BoxedResponse = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

mod contacts;
mod invoices;
mod items;
mod payments;

use contacts::*;
use invoices::*;
pub use invoices::{document_totals, line_amounts, shipping_amounts};
use items::*;
use payments::*;

const IDEMPOTENCY_TTL_SECS: i64 = 7 * 86_400;

fn dec(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n
            .to_string()
            .parse()
            .ok()
            .or_else(|| Decimal::from_scientific(&n.to_string()).ok()),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn cents(d: Decimal) -> Decimal {
    d.round_dp_with_strategy(2, RoundingStrategy::MidpointAwayFromZero)
}

/// Sage writes amounts as decimal strings.
fn money(d: Decimal) -> Value {
    json!(format!("{:.2}", cents(d)))
}

fn invalid(source: &str, message: &str) -> Response {
    sage_error(StatusCode::UNPROCESSABLE_ENTITY, "RecordInvalid", message, source)
}

fn has_entity(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.iter().enumerate().any(|(i, b)| {
        *b == b'&'
            && text[i + 1..].find(';').is_some_and(|end| {
                let name = &text[i + 1..i + 1 + end];
                !name.is_empty() && end <= 10 && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '#')
            })
    })
}

/// Idempotency: a repeat within 7 days returns the first answer; the same id on another
/// resource type is refused.
fn replay(business: &Business, kind: &str, body: &Value, now: i64) -> Option<Response> {
    let id = body.get("idempotency_id")?.as_str()?;
    if id.len() != 32 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Some(invalid(
            "idempotency_id",
            "idempotency_id must be 32 hexadecimal characters",
        ));
    }
    let (stored_kind, response, at) = business.idempotency.get(id)?;
    if now - at > IDEMPOTENCY_TTL_SECS {
        return None;
    }
    if stored_kind != kind {
        return Some(sage_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "IdempotencyResourceMismatch",
            "Entity type mismatch",
            "idempotency_id",
        ));
    }
    Some((StatusCode::CREATED, Json(response.clone())).into_response())
}

fn remember(business: &mut Business, kind: &str, body: &Value, response: &Value, now: i64) {
    if let Some(id) = body.get("idempotency_id").and_then(Value::as_str) {
        business
            .idempotency
            .insert(id.to_owned(), (kind.to_owned(), response.clone(), now));
    }
}

fn next_number(business: &mut Business, kind: &str, prefix: &str) -> String {
    let n = business.counters.entry(kind.to_owned()).or_insert(0);
    *n += 1;
    format!("{prefix}-{n}")
}

fn find<'a>(business: &'a Business, kind: &str, id: &str) -> Option<&'a Value> {
    business
        .book(kind)
        .iter()
        .find(|d| d["id"] == id && d["deleted_at"].is_null())
}

fn required(o: &Map<String, Value>, source: &str, names: &[&str]) -> Option<Response> {
    names
        .iter()
        .find(|n| o.get(**n).is_none_or(|v| v.is_null() || v.as_str() == Some("")))
        .map(|n| invalid(&format!("{source}{n}"), "This field is required"))
}

/// Which wrapper a write uses, and where it is filed.
fn body_of<'a>(payload: &'a Value, wrapper: &str) -> Result<&'a Map<String, Value>, Response> {
    payload.get(wrapper).and_then(Value::as_object).ok_or_else(|| {
        sage_error(
            StatusCode::UNPROCESSABLE_ENTITY,
            "RecordInvalid",
            &format!("{wrapper} is required"),
            wrapper,
        )
    })
}

/// Runs a write: authentication (budget, faults), idempotency, the handler, and the
/// "commit then drop" fault.
async fn write(
    sage: &Arc<Sage>,
    headers: &HeaderMap,
    kind: &str,
    payload: &Value,
    wrapper: &str,
    handler: impl FnOnce(&mut Business, &Map<String, Value>, i64) -> Result<Value, Response>,
) -> Response {
    let caller = match enter(sage, headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let body = match body_of(payload, wrapper) {
        Ok(b) => b.clone(),
        Err(r) => return r,
    };
    let now = sage.now();
    let created = {
        let mut inner = sage.lock();
        let business = inner
            .businesses
            .get_mut(&caller.business_id)
            .expect("authenticated business");
        if let Some(replayed) = replay(business, kind, &Value::Object(body.clone()), now) {
            return replayed;
        }
        if inner.faults.reject_writes > 0 && inner.faults.reject_kind == kind {
            inner.faults.reject_writes -= 1;
            return sage_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "RecordInvalid",
                "The record is invalid (fault injected by the sandbox)",
                "ledger_account_id",
            );
        }
        let business = inner
            .businesses
            .get_mut(&caller.business_id)
            .expect("authenticated business");
        match handler(business, &body, now) {
            Ok(mut created) => {
                if matches!(kind, "sales_invoice" | "sales_credit_note") && inner.faults.skew_totals > 0 {
                    inner.faults.skew_totals -= 1;
                    let business = inner
                        .businesses
                        .get_mut(&caller.business_id)
                        .expect("authenticated business");
                    let path = if kind == "sales_invoice" {
                        "sales_invoices"
                    } else {
                        "sales_credit_notes"
                    };
                    let cent = Decimal::new(1, 2);
                    for field in ["tax_amount", "total_amount", "outstanding_amount"] {
                        created[field] = money(dec(&created[field]).unwrap_or_default() + cent);
                    }
                    if let Some(stored) = business.book_mut(path).iter_mut().find(|d| d["id"] == created["id"]) {
                        stored.clone_from(&created);
                    }
                    remember(business, kind, &Value::Object(body), &created, now);
                    created
                } else {
                    let business = inner
                        .businesses
                        .get_mut(&caller.business_id)
                        .expect("authenticated business");
                    remember(business, kind, &Value::Object(body), &created, now);
                    created
                }
            }
            Err(r) => return r,
        }
    };
    let drop_it = {
        let mut inner = sage.lock();
        let n = &mut inner.faults.drop_after_commit;
        let fire = *n > 0;
        *n = n.saturating_sub(1);
        fire
    };
    if drop_it {
        return super::oauth::dropped();
    }
    (StatusCode::CREATED, Json(created)).into_response()
}

/// The rate a document in `currency` is booked at (1 in the base currency): its
/// `exchange_rate`, else the business's own; refused without multi-currency.
fn foreign_rate(b: &Business, o: &Map<String, Value>, currency: &str) -> Result<Decimal, Response> {
    if currency == b.base_currency() {
        return Ok(Decimal::ONE);
    }
    if !b.multi_currency {
        return Err(invalid(
            "currency_id",
            "Multi-currency is not enabled for this business; documents must be in the base currency",
        ));
    }
    match o.get("exchange_rate").and_then(dec) {
        Some(r) if r > Decimal::ZERO => Ok(r),
        Some(_) => Err(invalid("exchange_rate", "must be greater than 0")),
        None => b
            .exchange_rates
            .get(currency)
            .copied()
            .ok_or_else(|| invalid("exchange_rate", "No exchange rate is set up for this currency")),
    }
}

fn address(v: Option<&Value>) -> Value {
    v.cloned().unwrap_or(Value::Null)
}

fn contact_country(c: &Value) -> String {
    c["main_address"]["country_id"].as_str().unwrap_or_default().to_owned()
}

pub fn router() -> Router<Arc<Sage>> {
    Router::new()
        .route("/contacts", get(list_contacts).post(post_contact))
        .route(
            "/contacts/{id}",
            get(get_contact).put(put_contact).delete(delete_contact),
        )
        .route(
            "/sales_invoices",
            get(list_documents("sales_invoices")).post(post_invoice),
        )
        .route("/sales_invoices/{id}", get(get_invoice).delete(void_invoice))
        .route(
            "/sales_credit_notes",
            get(list_documents("sales_credit_notes")).post(post_credit_note),
        )
        .route(
            "/sales_credit_notes/{id}",
            get(get_credit_note).delete(void_credit_note),
        )
        .route(
            "/contact_payments",
            get(list_documents("contact_payments")).post(post_payment),
        )
        .route(
            "/contact_allocations",
            get(list_documents("contact_allocations")).post(post_allocation),
        )
        .route("/products", get(list_documents("products")).post(post_product))
        .route(
            "/products/{id}",
            get(get_item("products")).put(put_item("products", "product")),
        )
        .route("/services", get(list_documents("services")).post(post_service))
        .route(
            "/services/{id}",
            get(get_item("services")).put(put_item("services", "service")),
        )
        .route("/stock_items", get(list_documents("stock_items")).post(post_stock_item))
        .route(
            "/stock_items/{id}",
            get(get_item("stock_items")).put(put_item("stock_items", "stock_item")),
        )
        .route(
            "/stock_movements",
            get(list_documents("stock_movements")).post(post_movement),
        )
}

/// Inspection for tests and the demo: everything in a business's books.
pub async fn control_books(State(sage): State<Arc<Sage>>, Path(id): Path<String>) -> Response {
    match sage.with_business(&id, |b| json!({ "books": b.books, "rate_limited": b.rate_limited })) {
        Some(v) => Json(v).into_response(),
        None => (StatusCode::NOT_FOUND, "no such business").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entities_are_spotted() {
        assert!(has_entity("Desk Lamp&trade;"));
        assert!(has_entity("A &#8209; B"));
        assert!(!has_entity("Fish & Chips"));
    }
}
