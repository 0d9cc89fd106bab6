//! Sales invoices and credit notes: Sage's totals arithmetic, listing, reading and voiding.

// A part of the documents: their helpers and imports are this file's too.
use super::*;

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

pub(super) fn document(
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

pub(super) async fn post_invoice(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) async fn post_credit_note(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

/// A request's query parameters.
type Params = HashMap<String, String>;
/// Seconds since the epoch of a timestamp the sandbox stored (an integer) or Sage
/// writes (RFC 3339).
pub(super) fn stamp(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| {
        v.as_str()
            .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
            .map(|t| t.timestamp())
    })
}

/// Sage's list filters on dates: `from_date` / `to_date` on the document's `date`
/// (inclusive, `YYYY-MM-DD`) and `updated_or_created_since` (RFC 3339) on when it last
/// changed. An unreadable filter value filters nothing out, as Sage ignores it.
pub(super) fn within_dates(d: &Value, q: &Params) -> bool {
    let date = d["date"].as_str().unwrap_or_default();
    let from = q.get("from_date").is_none_or(|f| date >= f.as_str());
    let to = q.get("to_date").is_none_or(|t| date <= t.as_str());
    from && to && changed_since(d, q)
}

/// `updated_or_created_since` (RFC 3339, inclusive) on when a record last changed.
pub(super) fn changed_since(d: &Value, q: &Params) -> bool {
    q.get("updated_or_created_since")
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .is_none_or(|since| {
            stamp(&d["updated_at"])
                .or_else(|| stamp(&d["created_at"]))
                .is_none_or(|at| at >= since.timestamp())
        })
}

pub(super) fn list_documents(
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
pub(super) async fn get_one(
    sage: &Arc<Sage>,
    headers: &HeaderMap,
    kind: &str,
    id: &str,
    mark_as_sent: bool,
) -> Response {
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

pub(super) fn marks_sent(q: &HashMap<String, String>) -> bool {
    q.get("mark_as_sent").is_none_or(|v| v != "false")
}

/// `DELETE /sales_invoices/{id}` voids the invoice (it stays in the books, status
/// VOID); `void_reason` is required (every posted invoice is past draft), and one with a
/// payment or credit allocated cannot be voided.
pub(super) async fn void_invoice(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    void_document(&sage, &headers, "sales_invoices", &id, &q).await
}

/// `DELETE /sales_credit_notes/{id}`: the same rules for a credit note (one allocated
/// against an invoice cannot be voided).
pub(super) async fn void_credit_note(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    void_document(&sage, &headers, "sales_credit_notes", &id, &q).await
}

pub(super) async fn void_document(
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

pub(super) async fn get_invoice(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    get_one(&sage, &headers, "sales_invoices", &id, marks_sent(&q)).await
}

pub(super) async fn get_credit_note(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    get_one(&sage, &headers, "sales_credit_notes", &id, marks_sent(&q)).await
}
