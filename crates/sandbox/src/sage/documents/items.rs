//! Products, services, stock items and stock movements.

// A part of the documents: their helpers and imports are this file's too.
use super::*;

pub(super) fn create_item(
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

pub(super) async fn post_product(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) async fn post_service(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) async fn post_stock_item(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) fn put_item(
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

pub(super) fn create_movement(b: &mut Business, o: &Map<String, Value>, now: i64) -> Result<Value, Response> {
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

pub(super) async fn post_movement(
    State(sage): State<Arc<Sage>>,
    headers: HeaderMap,
    Json(payload): Json<Value>,
) -> Response {
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

pub(super) fn get_item(
    path: &'static str,
) -> impl Fn(State<Arc<Sage>>, HeaderMap, Path<String>) -> BoxedResponse + Clone {
    move |State(sage), headers, Path(id)| Box::pin(async move { get_one(&sage, &headers, path, &id, false).await })
}
