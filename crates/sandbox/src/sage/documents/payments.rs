//! Contact payments and allocations against invoices and credit notes.

// A part of the documents: their helpers and imports are this file's too.
use super::*;

pub(super) fn artefact_mut<'a>(b: &'a mut Business, id: &str) -> Option<&'a mut Value> {
    let kind = ["sales_invoices", "sales_credit_notes"]
        .into_iter()
        .find(|k| b.book(k).iter().any(|d| d["id"] == id))?;
    b.books.get_mut(kind)?.iter_mut().find(|d| d["id"] == id)
}

pub(super) fn create_payment(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
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

pub(super) async fn post_payment(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) fn create_allocation(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
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

pub(super) async fn post_allocation(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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
