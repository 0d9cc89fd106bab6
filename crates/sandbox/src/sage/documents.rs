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

// ---- contacts -----------------------------------------------------------------

fn create_contact(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
    if let Some(r) = required(o, "", &["name", "contact_type_ids"]) {
        return Err(r);
    }
    let reference = o
        .get("reference")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if reference.chars().count() > 10 {
        return Err(invalid("reference", "is too long (maximum is 10 characters)"));
    }
    // References of deleted contacts stay reserved.
    if !reference.is_empty() && b.book("contacts").iter().any(|c| c["reference"] == reference.as_str()) {
        return Err(invalid("reference", "has already been taken"));
    }
    let id = random_hex(16);
    let currency = o
        .get("currency_id")
        .and_then(Value::as_str)
        .unwrap_or(b.base_currency())
        .to_owned();
    let main = address(o.get("main_address"));
    let contact = json!({
        "id": id, "displayed_as": format!("{} ({reference})", o["name"].as_str().unwrap_or_default()), "$path": format!("/contacts/{id}"),
        "name": o["name"], "reference": reference, "contact_types": o["contact_type_ids"],
        "currency": { "id": currency }, "main_address": main,
        "delivery_address": o.get("delivery_address").cloned().unwrap_or_else(|| main.clone()),
        "main_contact_person": o.get("main_contact_person").cloned().unwrap_or(Value::Null),
        "email": o.get("main_contact_person").and_then(|p| p.get("email")).cloned().unwrap_or(Value::Null),
        "tax_treatment": o.get("tax_treatment").cloned().unwrap_or(Value::Null),
        "balance": "0.00", "created_at": now, "updated_at": now, "deleted_at": null,
    });
    b.books.entry("contacts".into()).or_default().push(contact.clone());
    Ok(contact)
}

async fn post_contact(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(&sage, &headers, "contact", &payload, "contact", create_contact).await
}

async fn put_contact(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(payload): Json<Value>,
) -> Response {
    let caller = match enter(&sage, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let Ok(body) = body_of(&payload, "contact") else {
        return invalid("contact", "contact is required");
    };
    let mut inner = sage.lock();
    let b = inner.businesses.get_mut(&caller.business_id).expect("business");
    let Some(contact) = b
        .books
        .entry("contacts".into())
        .or_default()
        .iter_mut()
        .find(|c| c["id"] == id.as_str() && c["deleted_at"].is_null())
    else {
        return sage_error(StatusCode::NOT_FOUND, "RecordNotFound", "Contact not found", "");
    };
    // A contact's currency is fixed once it exists.
    if let Some(currency) = body.get("currency_id").and_then(Value::as_str)
        && contact["currency"]["id"].as_str() != Some(currency)
    {
        return invalid("currency_id", "cannot be changed");
    }
    for (k, v) in body {
        if k != "idempotency_id" && k != "currency_id" && k != "reference" {
            contact[k] = v.clone();
        }
    }
    if let Some(email) = body.get("main_contact_person").and_then(|p| p.get("email")) {
        contact["email"] = email.clone();
    }
    Json(contact.clone()).into_response()
}

async fn delete_contact(State(sage): State<Arc<Sage>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let caller = match enter(&sage, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let now = sage.now();
    let mut inner = sage.lock();
    let b = inner.businesses.get_mut(&caller.business_id).expect("business");
    match b
        .books
        .entry("contacts".into())
        .or_default()
        .iter_mut()
        .find(|c| c["id"] == id.as_str())
    {
        Some(c) => {
            c["deleted_at"] = json!(now); // soft delete: the reference stays taken
            StatusCode::NO_CONTENT.into_response()
        }
        None => sage_error(StatusCode::NOT_FOUND, "RecordNotFound", "Contact not found", ""),
    }
}

async fn list_contacts(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    OriginalUri(uri): OriginalUri,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let caller = match enter(&sage, &headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let items = sage
        .with_business(&caller.business_id, |b| {
            b.book("contacts")
                .iter()
                .filter(|c| c["deleted_at"].is_null())
                .filter(|c| {
                    q.get("search").is_none_or(|s| {
                        let s = s.to_lowercase();
                        c["reference"].as_str().unwrap_or_default().to_lowercase().contains(&s)
                            || c["name"].as_str().unwrap_or_default().to_lowercase().contains(&s)
                    })
                })
                .filter(|c| {
                    q.get("email")
                        .is_none_or(|e| c["email"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(e)))
                })
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    page(&sage, uri.path(), items, &q)
}

async fn get_contact(State(sage): State<Arc<Sage>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    get_one(&sage, &headers, "contacts", &id, false).await
}

// ---- invoices and credit notes ---------------------------------------------------

/// Sage's arithmetic over document lines and shipping.
/// A line's net and tax as Sage books them: the explicit net (else quantity × price −
/// discount) and the explicit tax — except on a zero-percentage rate, where Sage infers
/// 0 whatever is sent; v3.1 turns a missing tax on a non-zero rate into 0.
pub fn line_amounts(b: &Business, l: &Map<String, Value>) -> (Decimal, Decimal) {
    let qty = l.get("quantity").and_then(dec).unwrap_or(Decimal::ONE);
    let unit = l.get("unit_price").and_then(dec).unwrap_or_default();
    let discount = l.get("discount_amount").and_then(dec).unwrap_or_default();
    let net = l
        .get("net_amount")
        .and_then(dec)
        .map_or_else(|| cents(qty * unit - discount), cents);
    let zero_rate = l
        .get("tax_rate_id")
        .and_then(Value::as_str)
        .and_then(|id| b.tax_rate_percentage(id))
        .is_none_or(|p| p.is_zero());
    let tax = if zero_rate {
        Decimal::ZERO
    } else {
        cents(l.get("tax_amount").and_then(dec).unwrap_or_default())
    };
    (net, tax)
}

/// Shipping's net and tax as Sage books them: the tax is recomputed from rate × net and
/// an explicit amount is ignored.
pub fn shipping_amounts(b: &Business, o: &Map<String, Value>) -> Option<(Decimal, Decimal)> {
    let net = o.get("shipping_net_amount").and_then(dec)?;
    let pct = o
        .get("shipping_tax_rate_id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .and_then(|id| b.tax_rate_percentage(id))
        .unwrap_or_default();
    Some((net, cents(net * pct / Decimal::ONE_HUNDRED)))
}

/// The net, tax and total Sage computes for a sales invoice or credit note body (the
/// object inside the `sales_invoice` / `sales_credit_note` wrapper).
pub fn document_totals(b: &Business, o: &Map<String, Value>, lines_key: &str) -> (Decimal, Decimal, Decimal) {
    let (mut net, mut tax) = (Decimal::ZERO, Decimal::ZERO);
    for line in o.get(lines_key).and_then(Value::as_array).into_iter().flatten() {
        if let Some(l) = line.as_object() {
            let (n, t) = line_amounts(b, l);
            net += n;
            tax += t;
        }
    }
    if let Some((n, t)) = shipping_amounts(b, o) {
        net += cents(n);
        tax += t;
    }
    (net, tax, net + tax)
}

fn document(
    b: &mut Business,
    o: &Map<String, Value>,
    now: i64,
    lines_key: &str,
    kind: &str,
) -> Result<Value, Response> {
    if let Some(r) = required(o, "", &["contact_id", "date", lines_key]) {
        return Err(r);
    }
    let Some(contact) = find(b, "contacts", o["contact_id"].as_str().unwrap_or_default()).cloned() else {
        return Err(invalid("contact_id", "Contact not found"));
    };
    let currency = o
        .get("currency_id")
        .and_then(Value::as_str)
        .unwrap_or(b.base_currency())
        .to_owned();
    // Contacts are locked to one currency.
    if contact["currency"]["id"].as_str().unwrap_or(b.base_currency()) != currency {
        return Err(invalid("currency_id", "must be the contact's currency"));
    }
    let rate = foreign_rate(b, o, &currency)?;
    let lines = o[lines_key].as_array().cloned().unwrap_or_default();
    if lines.is_empty() {
        return Err(invalid(lines_key, "can't be blank"));
    }
    // Where the goods go decides (the delivery address, else the invoice's, else the
    // contact's).
    let country_of = |key: &str| {
        o.get(key)
            .map(|a| a["country_id"].as_str().unwrap_or_default().to_owned())
            .filter(|c| !c.is_empty())
    };
    let customer_country = country_of("delivery_address")
        .or_else(|| country_of("main_address"))
        .unwrap_or_else(|| contact_country(&contact));
    let foreign = !customer_country.is_empty() && customer_country != b.country;
    let zeroish = |id: &str| id.ends_with("_ZERO") || id.ends_with("_EXEMPT") || id.ends_with("_NO_TAX");
    let (mut net, mut tax) = (Decimal::ZERO, Decimal::ZERO);
    let mut out_lines = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let source = format!("{lines_key}[{i}].");
        let Some(l) = line.as_object() else {
            return Err(invalid(&source, "must be an object"));
        };
        if let Some(r) = required(l, &source, &["description", "ledger_account_id", "unit_price"]) {
            return Err(r);
        }
        let description = l["description"].as_str().unwrap_or_default();
        if has_entity(description) {
            // Sage reports this one with a misleading message; `$source` says where.
            return Err(invalid(&format!("{source}description"), "This field is required"));
        }
        if !b.ledger_accounts.iter().any(|a| a["id"] == l["ledger_account_id"]) {
            return Err(invalid(
                &format!("{source}ledger_account_id"),
                "Ledger account not found",
            ));
        }
        let rate_id = l
            .get("tax_rate_id")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let pct = if rate_id.is_empty() {
            Some(Decimal::ZERO)
        } else {
            b.tax_rate_percentage(&rate_id)
        };
        let Some(pct) = pct else {
            return Err(invalid(&format!("{source}tax_rate_id"), "Tax rate not found"));
        };
        if foreign && b.country == "GB" && !rate_id.is_empty() && !zeroish(&rate_id) {
            return Err(invalid(
                &format!("{source}tax_rate_id"),
                "is not valid for a customer outside the United Kingdom",
            ));
        }
        let _ = pct;
        let (line_net, line_tax) = line_amounts(b, l);
        net += line_net;
        tax += line_tax;
        let mut stored = l.clone();
        stored.insert("net_amount".into(), money(line_net));
        stored.insert("tax_amount".into(), money(line_tax));
        stored.insert("total_amount".into(), money(line_net + line_tax));
        out_lines.push(Value::Object(stored));
    }
    let mut shipping = Map::new();
    if let Some((ship_net, ship_tax)) = shipping_amounts(b, o) {
        let rate_id = o
            .get("shipping_tax_rate_id")
            .and_then(Value::as_str)
            .unwrap_or_default();
        net += cents(ship_net);
        tax += ship_tax;
        shipping.insert("shipping_net_amount".into(), money(ship_net));
        shipping.insert("shipping_tax_rate".into(), json!({ "id": rate_id }));
        shipping.insert("shipping_tax_amount".into(), money(ship_tax));
        shipping.insert("shipping_total_amount".into(), money(ship_net + ship_tax));
    }
    let total = net + tax;
    let id = random_hex(16);
    let (number_key, prefix, path) = if kind == "sales_invoice" {
        ("invoice_number", "SI", "sales_invoices")
    } else {
        ("credit_note_number", "SCN", "sales_credit_notes")
    };
    let number = next_number(b, kind, prefix);
    let main = address(o.get("main_address"));
    let mut doc = json!({
        "id": id, "displayed_as": number, "$path": format!("/{path}/{id}"), number_key: number,
        "contact": { "id": contact["id"], "displayed_as": contact["displayed_as"] },
        "contact_name": contact["name"], "contact_reference": contact["reference"],
        "date": o["date"], "due_date": o.get("due_date").cloned().unwrap_or_else(|| o["date"].clone()),
        "reference": o.get("reference").cloned().unwrap_or(Value::Null), "notes": o.get("notes").cloned().unwrap_or(Value::Null),
        "currency": { "id": currency }, "exchange_rate": rate.to_string(),
        "base_currency_net_amount": money(net * rate), "base_currency_tax_amount": money(tax * rate),
        "base_currency_total_amount": money(total * rate),
        "main_address": main,
        // Without a delivery address Sage copies the billing one.
        "delivery_address": o.get("delivery_address").cloned().unwrap_or_else(|| main.clone()),
        lines_key: out_lines,
        "net_amount": money(net), "tax_amount": money(tax), "total_amount": money(total),
        "outstanding_amount": money(total), "status": { "id": "UNPAID", "displayed_as": "Unpaid" },
        "sent": false, "created_at": now, "deleted_at": null,
    });
    if let Some(original) = o.get("original_invoice_date") {
        doc["original_invoice_date"] = original.clone();
    }
    for (k, v) in shipping {
        doc[k] = v;
    }
    b.books.entry(path.into()).or_default().push(doc.clone());
    Ok(doc)
}

async fn post_invoice(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "sales_invoice",
        &payload,
        "sales_invoice",
        |b, o, now| document(b, o, now, "invoice_lines", "sales_invoice"),
    )
    .await
}

async fn post_credit_note(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "sales_credit_note",
        &payload,
        "sales_credit_note",
        |b, o, now| document(b, o, now, "credit_note_lines", "sales_credit_note"),
    )
    .await
}

/// What the closure-built handlers below return.
type Params = HashMap<String, String>;
type BoxedResponse = std::pin::Pin<Box<dyn std::future::Future<Output = Response> + Send>>;

/// Seconds since the epoch of a timestamp the sandbox stored (an integer) or Sage
/// writes (RFC 3339).
fn stamp(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
    })
}

/// Sage's list filters on dates: `from_date` / `to_date` on the document's `date`
/// (inclusive, `YYYY-MM-DD`) and `updated_or_created_since` (RFC 3339) on when it last
/// changed. An unreadable filter value filters nothing out, as Sage ignores it.
fn within_dates(d: &Value, q: &Params) -> bool {
    let date = d["date"].as_str().unwrap_or_default();
    let from = q.get("from_date").is_none_or(|f| date >= f.as_str());
    let to = q.get("to_date").is_none_or(|t| date <= t.as_str());
    let since = q
        .get("updated_or_created_since")
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_none_or(|since| {
            stamp(&d["updated_at"])
                .or_else(|| stamp(&d["created_at"]))
                .is_none_or(|at| at >= since.timestamp())
        });
    from && to && since
}

fn list_documents(
    kind: &'static str,
) -> impl Fn(State<Arc<Sage>>, HeaderMap, OriginalUri, Query<Params>) -> BoxedResponse + Clone {
    move |State(sage), headers, OriginalUri(uri), Query(q)| {
        Box::pin(async move {
            let caller = match enter(&sage, &headers).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let items = sage
                .with_business(&caller.business_id, |b| {
                    b.book(kind)
                        .iter()
                        .filter(|d| d["deleted_at"].is_null())
                        .filter(|d| {
                            q.get("contact_id")
                                .is_none_or(|c| d["contact"]["id"] == c.as_str() || d["contact_id"] == c.as_str())
                        })
                        .filter(|d| {
                            q.get("search").is_none_or(|s| {
                                let s = s.to_lowercase();
                                ["reference", "contact_name", "item_code", "description", "displayed_as"]
                                    .iter()
                                    .any(|f| d[*f].as_str().is_some_and(|v| v.to_lowercase().contains(&s)))
                            })
                        })
                        .filter(|d| within_dates(d, &q))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default();
            page(&sage, uri.path(), items, &q)
        })
    }
}

/// GET one document; for invoices and credit notes this marks it sent unless
/// `mark_as_sent=false`.
async fn get_one(sage: &Arc<Sage>, headers: &HeaderMap, kind: &str, id: &str, mark_as_sent: bool) -> Response {
    let caller = match enter(sage, headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut inner = sage.lock();
    let b = inner.businesses.get_mut(&caller.business_id).expect("business");
    match b
        .books
        .entry(kind.into())
        .or_default()
        .iter_mut()
        .find(|d| d["id"] == id && d["deleted_at"].is_null())
    {
        Some(d) => {
            if mark_as_sent {
                d["sent"] = json!(true);
            }
            Json(d.clone()).into_response()
        }
        None => sage_error(StatusCode::NOT_FOUND, "RecordNotFound", "Record not found", ""),
    }
}

fn marks_sent(q: &HashMap<String, String>) -> bool {
    q.get("mark_as_sent").is_none_or(|v| v != "false")
}

/// `DELETE /sales_invoices/{id}` voids the invoice (it stays in the books, status
/// VOID); `void_reason` is required (every posted invoice is past draft), and one with a
/// payment or credit allocated cannot be voided.
async fn void_invoice(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    void_document(&sage, &headers, "sales_invoices", &id, &q).await
}

/// `DELETE /sales_credit_notes/{id}`: the same rules for a credit note (one allocated
/// against an invoice cannot be voided).
async fn void_credit_note(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    void_document(&sage, &headers, "sales_credit_notes", &id, &q).await
}

async fn void_document(
    sage: &Arc<Sage>,
    headers: &HeaderMap,
    path: &str,
    id: &str,
    q: &HashMap<String, String>,
) -> Response {
    let caller = match enter(sage, headers).await {
        Ok(c) => c,
        Err(r) => return r,
    };
    if q.get("void_reason").is_none_or(|r| r.trim().is_empty()) {
        return invalid("void_reason", "is required");
    }
    let what = if path == "sales_invoices" {
        "invoice"
    } else {
        "credit note"
    };
    let mut inner = sage.lock();
    let b = inner.businesses.get_mut(&caller.business_id).expect("business");
    let Some(doc) = b
        .books
        .entry(path.into())
        .or_default()
        .iter_mut()
        .find(|d| d["id"] == id && d["deleted_at"].is_null())
    else {
        return sage_error(StatusCode::NOT_FOUND, "RecordNotFound", "Record not found", "");
    };
    if doc["status"]["id"] == "VOID" {
        return invalid("status", &format!("The {what} is already void"));
    }
    if dec(&doc["outstanding_amount"]) != dec(&doc["total_amount"]) {
        return invalid(
            "base",
            &format!("A {what} with payments or allocations cannot be voided"),
        );
    }
    doc["status"] = json!({ "id": "VOID", "displayed_as": "Void" });
    doc["void_reason"] = json!(q["void_reason"]);
    doc["outstanding_amount"] = money(Decimal::ZERO);
    StatusCode::NO_CONTENT.into_response()
}

async fn get_invoice(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    get_one(&sage, &headers, "sales_invoices", &id, marks_sent(&q)).await
}

async fn get_credit_note(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    get_one(&sage, &headers, "sales_credit_notes", &id, marks_sent(&q)).await
}

// ---- payments and allocations ----------------------------------------------------

fn artefact_mut<'a>(b: &'a mut Business, id: &str) -> Option<&'a mut Value> {
    let kind = ["sales_invoices", "sales_credit_notes"]
        .into_iter()
        .find(|k| b.book(k).iter().any(|d| d["id"] == id))?;
    b.books.get_mut(kind)?.iter_mut().find(|d| d["id"] == id)
}

fn create_payment(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
    if let Some(r) = required(
        o,
        "",
        &[
            "transaction_type_id",
            "contact_id",
            "bank_account_id",
            "date",
            "total_amount",
        ],
    ) {
        return Err(r);
    }
    if !["CUSTOMER_RECEIPT", "CUSTOMER_REFUND", "VENDOR_PAYMENT", "VENDOR_REFUND"]
        .contains(&o["transaction_type_id"].as_str().unwrap_or_default())
    {
        return Err(invalid("transaction_type_id", "is not a valid transaction type"));
    }
    let contact = o["contact_id"].as_str().unwrap_or_default().to_owned();
    if find(b, "contacts", &contact).is_none() {
        return Err(invalid("contact_id", "Contact not found"));
    }
    if !b.bank_accounts.iter().any(|a| a["id"] == o["bank_account_id"]) {
        return Err(invalid("bank_account_id", "Bank account not found"));
    }
    if o.get("reference")
        .and_then(Value::as_str)
        .is_some_and(|r| r.chars().count() > 25)
    {
        return Err(invalid("reference", "is too long (maximum is 25 characters)"));
    }
    let total = o.get("total_amount").and_then(dec).unwrap_or_default();
    let currency = o
        .get("currency_id")
        .and_then(Value::as_str)
        .unwrap_or(b.base_currency())
        .to_owned();
    let rate = foreign_rate(b, o, &currency)?;
    let allocations = o
        .get("allocated_artefacts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let allocated: Decimal = allocations
        .iter()
        .map(|a| a.get("amount").and_then(dec).unwrap_or_default())
        .sum();
    if allocated > total {
        return Err(invalid("total_amount", "must be at least the sum of the allocations"));
    }
    for a in &allocations {
        let id = a["artefact_id"].as_str().unwrap_or_default();
        let amount = a.get("amount").and_then(dec).unwrap_or_default();
        let Some(doc) = artefact_mut(b, id) else {
            return Err(invalid("allocated_artefacts", "Artefact not found"));
        };
        if doc["contact"]["id"] != contact.as_str() {
            return Err(invalid(
                "allocated_artefacts",
                "The artefact belongs to another contact",
            ));
        }
        let outstanding = dec(&doc["outstanding_amount"]).unwrap_or_default();
        if outstanding <= Decimal::ZERO || amount > outstanding {
            return Err(sage_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "RecordInvalid",
                "You can only pay unpaid or part-paid invoices.",
                "",
            ));
        }
    }
    for a in &allocations {
        let id = a["artefact_id"].as_str().unwrap_or_default();
        let amount = a.get("amount").and_then(dec).unwrap_or_default();
        let doc = artefact_mut(b, id).expect("checked above");
        let left = dec(&doc["outstanding_amount"]).unwrap_or_default() - amount;
        doc["outstanding_amount"] = money(left);
        doc["status"] = json!({ "id": if left.is_zero() { "PAID" } else { "PART_PAID" } });
    }
    let id = random_hex(16);
    let payment = json!({
        "id": id, "displayed_as": o.get("reference").cloned().unwrap_or(Value::Null), "$path": format!("/contact_payments/{id}"),
        "transaction_type": { "id": o["transaction_type_id"] }, "contact": { "id": contact }, "contact_id": contact,
        "bank_account": { "id": o["bank_account_id"] }, "date": o["date"], "total_amount": money(total),
        "currency": { "id": currency }, "exchange_rate": rate.to_string(),
        "base_currency_total_amount": money(total * rate),
        "reference": o.get("reference").cloned().unwrap_or(Value::Null), "allocated_artefacts": allocations,
        "created_at": now, "deleted_at": null,
    });
    b.books
        .entry("contact_payments".into())
        .or_default()
        .push(payment.clone());
    Ok(payment)
}

async fn post_payment(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "contact_payment",
        &payload,
        "contact_payment",
        create_payment,
    )
    .await
}

fn create_allocation(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
    if let Some(r) = required(o, "", &["transaction_type_id", "contact_id", "allocated_artefacts"]) {
        return Err(r);
    }
    let artefacts = o["allocated_artefacts"].as_array().cloned().unwrap_or_default();
    let sum: Decimal = artefacts
        .iter()
        .map(|a| a.get("amount").and_then(dec).unwrap_or_default())
        .sum();
    if !sum.is_zero() || artefacts.len() < 2 {
        return Err(invalid("allocated_artefacts", "debits and credits must balance"));
    }
    for a in &artefacts {
        let id = a["artefact_id"].as_str().unwrap_or_default();
        let amount = a.get("amount").and_then(dec).unwrap_or_default().abs();
        let Some(doc) = artefact_mut(b, id) else {
            return Err(invalid("allocated_artefacts", "Artefact not found"));
        };
        let outstanding = dec(&doc["outstanding_amount"]).unwrap_or_default();
        if amount > outstanding {
            return Err(sage_error(
                StatusCode::UNPROCESSABLE_ENTITY,
                "RecordInvalid",
                "You can only pay unpaid or part-paid invoices.",
                "",
            ));
        }
    }
    for a in &artefacts {
        let id = a["artefact_id"].as_str().unwrap_or_default();
        let amount = a.get("amount").and_then(dec).unwrap_or_default().abs();
        let doc = artefact_mut(b, id).expect("checked");
        let left = dec(&doc["outstanding_amount"]).unwrap_or_default() - amount;
        doc["outstanding_amount"] = money(left);
    }
    let id = random_hex(16);
    let allocation = json!({ "id": id, "transaction_type": { "id": o["transaction_type_id"] }, "contact": { "id": o["contact_id"] },
        "date": o.get("date").cloned().unwrap_or(Value::Null), "allocated_artefacts": artefacts, "created_at": now });
    b.books
        .entry("contact_allocations".into())
        .or_default()
        .push(allocation.clone());
    Ok(allocation)
}

async fn post_allocation(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "contact_allocation",
        &payload,
        "contact_allocation",
        create_allocation,
    )
    .await
}

// ---- items and stock -------------------------------------------------------------

fn create_item(
    kind: &'static str,
    path: &'static str,
    required_fields: &'static [&'static str],
) -> impl FnOnce(&mut Business, &Map<String, Value>, i64) -> Result<Value, Response> {
    move |b, o, now| {
        if let Some(r) = required(o, "", required_fields) {
            return Err(r);
        }
        if has_entity(o.get("description").and_then(Value::as_str).unwrap_or_default()) {
            return Err(invalid("description", "This field is required"));
        }
        let id = random_hex(16);
        let mut item = o.clone();
        item.remove("idempotency_id");
        item.insert("id".into(), json!(id));
        item.insert(
            "displayed_as".into(),
            o.get("description").cloned().unwrap_or(Value::Null),
        );
        item.insert("$path".into(), json!(format!("/{path}/{id}")));
        item.insert("item_type".into(), json!(kind));
        item.insert("created_at".into(), json!(now));
        item.insert("deleted_at".into(), Value::Null);
        if kind == "stock_item" {
            item.insert("quantity_in_stock".into(), json!("0.0"));
        }
        let item = Value::Object(item);
        b.books.entry(path.into()).or_default().push(item.clone());
        Ok(item)
    }
}

async fn post_product(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "product",
        &payload,
        "product",
        create_item(
            "product",
            "products",
            &["description", "sales_ledger_account_id", "purchase_ledger_account_id"],
        ),
    )
    .await
}

async fn post_service(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "service",
        &payload,
        "service",
        create_item("service", "services", &["description", "sales_ledger_account_id"]),
    )
    .await
}

async fn post_stock_item(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "stock_item",
        &payload,
        "stock_item",
        create_item(
            "stock_item",
            "stock_items",
            &[
                "item_code",
                "description",
                "sales_ledger_account_id",
                "purchase_ledger_account_id",
            ],
        ),
    )
    .await
}

fn put_item(
    path: &'static str,
    wrapper: &'static str,
) -> impl Fn(State<Arc<Sage>>, HeaderMap, Path<String>, Json<Value>) -> BoxedResponse + Clone {
    move |State(sage), headers, Path(id), Json(payload)| {
        Box::pin(async move {
            let caller = match enter(&sage, &headers).await {
                Ok(c) => c,
                Err(r) => return r,
            };
            let Ok(body) = body_of(&payload, wrapper) else {
                return invalid(wrapper, "is required");
            };
            let mut inner = sage.lock();
            let b = inner.businesses.get_mut(&caller.business_id).expect("business");
            match b
                .books
                .entry(path.into())
                .or_default()
                .iter_mut()
                .find(|d| d["id"] == id.as_str())
            {
                Some(item) => {
                    for (k, v) in body {
                        if k != "idempotency_id" && k != "quantity_in_stock" {
                            item[k] = v.clone();
                        }
                    }
                    Json(item.clone()).into_response()
                }
                None => sage_error(StatusCode::NOT_FOUND, "RecordNotFound", "Record not found", ""),
            }
        })
    }
}

fn create_movement(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
    if let Some(r) = required(o, "", &["stock_item_id", "date", "quantity", "cost_price", "details"]) {
        return Err(r);
    }
    let qty = o.get("quantity").and_then(dec).unwrap_or_default();
    let Some(item) = b
        .books
        .get_mut("stock_items")
        .and_then(|i| i.iter_mut().find(|d| d["id"] == o["stock_item_id"]))
    else {
        return Err(invalid("stock_item_id", "Stock item not found"));
    };
    let level = dec(&item["quantity_in_stock"]).unwrap_or_default() + qty;
    item["quantity_in_stock"] = json!(level.to_string());
    let id = random_hex(16);
    let movement = json!({ "id": id, "stock_item": { "id": o["stock_item_id"] }, "date": o["date"], "quantity": qty.to_string(),
        "cost_price": o["cost_price"], "details": o["details"], "created_at": now });
    b.books
        .entry("stock_movements".into())
        .or_default()
        .push(movement.clone());
    Ok(movement)
}

async fn post_movement(State(sage): State<Arc<Sage>>, headers: HeaderMap, Json(payload): Json<Value>) -> Response {
    write(
        &sage,
        &headers,
        "stock_movement",
        &payload,
        "stock_movement",
        create_movement,
    )
    .await
}

fn get_item(path: &'static str) -> impl Fn(State<Arc<Sage>>, HeaderMap, Path<String>) -> BoxedResponse + Clone {
    move |State(sage), headers, Path(id)| Box::pin(async move { get_one(&sage, &headers, path, &id, false).await })
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
