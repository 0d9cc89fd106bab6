//! The module's REST routes, as the ledger calls them.

// A part of the store: its types and helpers are this file's too.
use super::*;

pub(super) async fn setup_pair(State(store): State<Arc<Store>>, body: Bytes) -> Response {
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Decoding error: the request body is not valid JSON.",
            json!([]),
        );
    };
    let get = |snake: &str, camel: &str| {
        fields
            .get(snake)
            .or_else(|| fields.get(camel))
            .map(|v| v.as_str().unwrap_or_default().trim().to_owned())
    };
    let names = [
        ("pairing_code", "pairingCode"),
        ("tenant_id", "tenantId"),
        ("byte8_api_key", "byte8ApiKey"),
        ("ledger_base_url", "ledgerBaseUrl"),
    ];
    let mut values = Vec::new();
    for (snake, camel) in names {
        match get(snake, camel) {
            Some(v) => values.push(v),
            None => {
                return magento_error(
                    StatusCode::BAD_REQUEST,
                    "\"%fieldName\" is required. Enter and try again.",
                    json!({ "fieldName": snake }),
                );
            }
        }
    }
    let (code, tenant, key) = (values[0].clone(), values[1].clone(), values[2].clone());
    let ledger = values[3].trim_end_matches('/').to_owned();
    if code.is_empty() || tenant.is_empty() || key.is_empty() || ledger.is_empty() {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "pairing_code, tenant_id, byte8_api_key and ledger_base_url are all required.",
            json!([]),
        );
    }
    let absolute = ledger
        .strip_prefix("https://")
        .or_else(|| ledger.strip_prefix("http://"))
        .is_some_and(|rest| rest.chars().next().is_some_and(|c| c != '/'));
    if !absolute {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "ledger_base_url must be an absolute http(s) URL.",
            json!([]),
        );
    }
    let now = store.now();
    let mut inner = store.lock();
    let valid = inner
        .pairing
        .as_ref()
        .is_some_and(|p| now - p.issued_at <= PAIRING_TTL_SECS && sha256_hex(&code) == p.hash);
    if !valid {
        inner.log.push("pair: invalid or expired pairing code".to_owned());
        return magento_error(StatusCode::UNAUTHORIZED, "Invalid or expired pairing code.", json!([]));
    }
    inner.connection = Some(Connection {
        tenant_id: tenant,
        api_key: key,
    });
    inner.ledger_base_url = ledger;
    inner.pairing = None; // single use
    inner.log.push("pair: paired".to_owned());
    empty_ok()
}

pub(super) async fn ping(State(store): State<Arc<Store>>, headers: HeaderMap) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    // Stock Magento serialises the associative array as a list.
    let now = chrono::DateTime::from_timestamp(store.now(), 0)
        .expect("time")
        .format("%Y-%m-%dT%H:%M:%S+00:00")
        .to_string();
    Json(json!([true, store.tenant_id(), now])).into_response()
}

pub(super) async fn payment_methods(State(store): State<Arc<Store>>, headers: HeaderMap) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    let methods: Vec<Value> = catalogue::PAYMENT_METHODS
        .iter()
        .map(|(code, label, active)| json!({ "code": code, "label": label, "is_active": active }))
        .collect();
    Json(methods).into_response()
}

pub(super) async fn entity(
    State(store): State<Arc<Store>>,
    Path((kind, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    if let Some(fault) = store.take_fault() {
        return fault;
    }
    let Ok(id) = id.parse::<i64>() else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Invalid type for value: \"%value\". Expected Type: \"int\".",
            json!({ "value": id }),
        );
    };
    let found = {
        let inner = store.lock();
        let cat = &inner.catalogue;
        match kind.as_str() {
            "invoice" => cat.invoice(id).and_then(|i| catalogue::render_invoice(cat, i)),
            "creditmemo" => cat.credit_memo(id).and_then(|m| catalogue::render_credit_memo(cat, m)),
            "payment" => cat.invoice(id).and_then(|i| catalogue::render_payment(cat, i)),
            "customer" => cat.customer(id).map(catalogue::render_customer),
            "product" => cat.product(id).map(catalogue::render_product),
            _ => return magento_error(StatusCode::NOT_FOUND, "Request does not match any route.", json!([])),
        }
    };
    match found {
        Some(v) => magento_json(&v),
        None if kind == "payment" => magento_error(
            StatusCode::NOT_FOUND,
            "Invoice %1 has no associated order payment.",
            json!([id.to_string()]),
        ),
        None => magento_error(
            StatusCode::NOT_FOUND,
            "The entity that was requested doesn't exist. Verify the entity and try again.",
            json!([]),
        ),
    }
}

/// MySQL TIMESTAMP in strict mode takes `YYYY-MM-DD HH:MM:SS`.
pub(super) fn mysql_accepts(value: &str, strict: bool) -> bool {
    chrono::NaiveDateTime::parse_from_str(value, "%Y-%m-%d %H:%M:%S").is_ok()
        || (!strict && chrono::DateTime::parse_from_rfc3339(value).is_ok())
}

pub(super) async fn sync_state(State(store): State<Arc<Store>>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = store.authorize(&headers) {
        return *r;
    }
    if let Some(fault) = store.take_fault() {
        return fault;
    }
    let Ok(Value::Object(f)) = serde_json::from_slice::<Value>(&body) else {
        return magento_error(
            StatusCode::BAD_REQUEST,
            "Decoding error: the request body is not valid JSON.",
            json!([]),
        );
    };
    let text = |k: &str, camel: &str| {
        f.get(k)
            .or_else(|| f.get(camel))
            .filter(|v| !v.is_null())
            .map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned))
    };
    for (snake, camel) in [
        ("entity_type", "entityType"),
        ("magento_entity_id", "magentoEntityId"),
        ("provider", "provider"),
        ("sync_status", "syncStatus"),
    ] {
        if text(snake, camel).is_none() {
            return magento_error(
                StatusCode::BAD_REQUEST,
                "\"%fieldName\" is required. Enter and try again.",
                json!({ "fieldName": snake }),
            );
        }
    }
    let entity_type = text("entity_type", "entityType").unwrap_or_default();
    if !["invoice", "creditmemo", "customer", "product"].contains(&entity_type.as_str()) {
        return magento_error(StatusCode::BAD_REQUEST, "Unknown entity_type %1", json!([entity_type]));
    }
    let Some(id) = text("magento_entity_id", "magentoEntityId")
        .and_then(|v| v.parse::<i64>().ok())
        .filter(|i| *i > 0)
    else {
        return magento_error(StatusCode::BAD_REQUEST, "magento_entity_id must be positive", json!([]));
    };
    let provider = text("provider", "provider").unwrap_or_default();
    if provider.is_empty() || provider.len() > 32 {
        return magento_error(StatusCode::BAD_REQUEST, "provider must be non-empty", json!([]));
    }
    let status = text("sync_status", "syncStatus").unwrap_or_default();
    if !["synced", "skipped", "failed"].contains(&status.as_str()) {
        return magento_error(StatusCode::BAD_REQUEST, "Invalid sync_status %1", json!([status]));
    }
    let optional = |k: &str, camel: &str| text(k, camel).map(|v| v.chars().take(64).collect::<String>());
    let last_sync_at = text("last_sync_at", "lastSyncAt");
    if let Some(at) = &last_sync_at
        && !mysql_accepts(at, store.config.strict_timestamps)
    {
        // A database error surfaces as a localized exception: HTTP 400.
        return magento_error(
            StatusCode::BAD_REQUEST,
            "SQLSTATE[22007]: Invalid datetime format: 1292 Incorrect datetime value: '%1' for column 'last_sync_at'",
            json!([at]),
        );
    }
    let row = MirrorRow {
        entity_type: entity_type.clone(),
        magento_entity_id: id,
        provider,
        sync_status: status,
        provider_entity_id: optional("provider_entity_id", "providerEntityId"),
        provider_reference: optional("provider_reference", "providerReference"),
        skip_reason: optional("skip_reason", "skipReason"),
        error_code: optional("error_code", "errorCode"),
        last_sync_at: Some(last_sync_at.unwrap_or_else(|| {
            chrono::DateTime::from_timestamp(store.now(), 0)
                .expect("time")
                .format("%Y-%m-%d %H:%M:%S")
                .to_string()
        })),
    };
    let mut inner = store.lock();
    inner.sync_state_calls += 1;
    // Upsert that overwrites every column.
    inner
        .synced_at
        .insert((entity_type.clone(), id), chrono::Utc::now().timestamp_millis());
    inner.mirror.insert((entity_type, id), row);
    empty_ok()
}
