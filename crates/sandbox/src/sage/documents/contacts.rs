//! Contacts: 10-character references reserved after deletion, one currency each.

// A part of the documents: their helpers and imports are this file's too.
use super::*;

pub(super) fn create_contact(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
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

pub(super) async fn post_contact(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
    write(&sage, &headers, "contact", &payload, "contact", create_contact).await
}

pub(super) async fn put_contact(
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
    let now = sage.now();
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
    contact["updated_at"] = json!(now);
    Json(contact.clone()).into_response()
}

pub(super) async fn delete_contact(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
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

pub(super) async fn list_contacts(
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
                .filter(|c| changed_since(c, &q))
                .cloned()
                .collect()
        })
        .unwrap_or_default();
    page(&sage, uri.path(), items, &q)
}

pub(super) async fn get_contact(State(sage): State<Arc<Sage>>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    get_one(&sage, &headers, "contacts", &id, false).await
}
