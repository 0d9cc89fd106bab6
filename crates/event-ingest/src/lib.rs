//! The webhook endpoint `POST /webhooks/magento/{tenant_id}/{event_name}` (contract §5.2).
//!
//! The module's outbox reads only the status code: 2xx = delivered, 4xx = dead-lettered
//! at once (the body is shown to the merchant), anything else = retried for days. So
//! this answers 202 only once the event, its sync run and its job are committed
//! together; 4xx only when a retry can never succeed; 503 when the ledger cannot store
//! right now. A repeated `Idempotency-Key` is a 202 with the original run, never a 409.

use axum::{
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
};
use ledger_core::{AppState, FieldError, Problem};
use ledger_jobs::EventName;
use ledger_tenant_binding::magento;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

const MAX_IDEMPOTENCY_KEY: usize = 128;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(receive))
}

mod group;

pub use group::{Incoming, Ingest, Outcome};

/// The answer to an accepted (or repeated) event.
#[derive(Debug, Serialize, ToSchema)]
pub struct Accepted {
    /// The sync run that will process the event (the same run for a repeated key).
    pub sync_run_id: uuid::Uuid,
    /// True when this Idempotency-Key was already accepted; nothing new was queued.
    pub duplicate: bool,
}

/// The parts of the body the ledger relies on.
#[derive(Debug)]
struct EventBody {
    magento_entity_id: i64,
    website_id: i64,
    store_id: i64,
    occurred_at: Option<chrono::DateTime<chrono::Utc>>,
}

fn field(name: &str, code: &str, message: &str) -> FieldError {
    FieldError {
        field: name.into(),
        code: code.into(),
        message: message.into(),
    }
}

/// Checks the contract §6.1 shape. Only `magento_entity_id` is indispensable; optional
/// parts with the wrong type are refused, absent ones default (0, `{}`).
fn parse_body(bytes: &[u8]) -> Result<(EventBody, Value), Problem> {
    let value: Value = serde_json::from_slice(bytes).map_err(|e| {
        Problem::bad_request(
            "invalid_json",
            format!("The event body is not valid JSON ({e}); the module sends a JSON object."),
        )
    })?;
    let Some(object) = value.as_object() else {
        return Err(Problem::validation(vec![field(
            "body",
            "invalid",
            "must be a JSON object",
        )]));
    };
    let mut errors = Vec::new();
    let magento_entity_id = match object.get("magento_entity_id") {
        None | Some(Value::Null) => {
            errors.push(field(
                "magento_entity_id",
                "required",
                "the Magento entity id (a positive integer) is required",
            ));
            0
        }
        Some(v) => match v.as_i64() {
            Some(id) if id > 0 => id,
            _ => {
                errors.push(field("magento_entity_id", "invalid", "must be a positive integer"));
                0
            }
        },
    };
    let mut non_negative = |name: &str| match object.get(name) {
        None | Some(Value::Null) => 0,
        Some(v) => match v.as_i64() {
            Some(n) if n >= 0 => n,
            _ => {
                errors.push(field(name, "invalid", "must be a non-negative integer"));
                0
            }
        },
    };
    let website_id = non_negative("website_id");
    let store_id = non_negative("store_id");
    if let Some(payload) = object.get("payload")
        && !payload.is_object()
        && !payload.is_null()
        && payload.as_array().is_none_or(|a| !a.is_empty())
    {
        // PHP encodes an empty payload array as `[]`; anything else must be an object.
        errors.push(field("payload", "invalid", "must be a JSON object"));
    }
    let occurred_at = match object.get("occurred_at") {
        Some(Value::String(s)) => chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc)),
        None | Some(Value::Null) => None,
        Some(_) => {
            errors.push(field(
                "occurred_at",
                "invalid",
                "must be a string like 2026-04-29T12:11:12Z",
            ));
            None
        }
    };
    if !errors.is_empty() {
        return Err(Problem::validation(errors));
    }
    Ok((
        EventBody {
            magento_entity_id,
            website_id,
            store_id,
            occurred_at,
        },
        value,
    ))
}

/// Accept one event from the module's outbox.
///
/// Answers 202 with the sync run once the event is durable. A repeated Idempotency-Key
/// answers 202 with the original run. 4xx only for requests that can never succeed
/// (bad token, revoked binding, unknown event, malformed body, missing key); 503 when
/// the ledger cannot store the event right now, so the module retries.
#[utoipa::path(post, path = "/webhooks/magento/{tenant_id}/{event_name}", tag = "magento", operation_id = "magento_webhook",
    security(("magento_jwt" = [])),
    params(
        ("tenant_id" = String, Path, description = "The tenant the store was paired with"),
        ("event_name" = String, Path, description = "invoice.created, invoice.paid, creditmemo.created, customer.upserted or product.upserted"),
        ("Idempotency-Key" = String, Header, description = "The event's key, e.g. `invoice.created:42` (at most 128 characters)"),
    ),
    request_body(content = Object, description = "The event (contract §6.1): magento_entity_id, website_id, store_id, occurred_at, payload"),
    responses(
        (status = 202, description = "Stored and queued (or a repeat of a stored event)", body = Accepted),
        (status = 400, description = "Missing Idempotency-Key or invalid JSON", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Token refused, unknown tenant or revoked binding", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "Unknown event name", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "The body lacks required fields", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
        (status = 503, description = "Cannot store right now; retry later", body = ledger_core::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn receive(
    State(state): State<AppState>,
    axum::Extension(ingest): axum::Extension<std::sync::Arc<Ingest>>,
    Path((tenant_id, event_name)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, axum::Json<Accepted>), Problem> {
    // Authenticate before saying anything about the request.
    let mut caller = magento::authenticate_with(&state, &headers, Some(&tenant_id), magento::Accept::WEBHOOK).await?;
    let request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let name = EventName::parse(&event_name);
    if let EventName::Unknown(_) = name {
        let handled: Vec<&str> = EventName::HANDLED.iter().map(EventName::as_str).collect();
        return Err(Problem::not_found(
            "unknown_event",
            format!(
                "The ledger does not handle event `{event_name}`; it handles {}.",
                handled.join(", ")
            ),
        ));
    }
    let key = match headers.get("idempotency-key").map(|v| v.to_str().map(str::trim)) {
        None => {
            return Err(Problem::bad_request(
                "idempotency_key_missing",
                "Send the event's Idempotency-Key header (e.g. `invoice.created:42`); the module always does.",
            ));
        }
        Some(Ok(k)) if !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic()) => k,
        Some(_) => {
            return Err(Problem::bad_request(
                "idempotency_key_invalid",
                format!("The Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters."),
            ));
        }
    };
    let (event, document) = parse_body(&body)?;
    let traceparent = ledger_core::trace::traceparent(&tracing::Span::current());
    let entity_id = event.magento_entity_id;
    let body_sha256 = ledger_core::crypto::sha256(&body).to_vec();
    let mut document = Some(document);
    let row = loop {
        let incoming = Incoming {
            binding_id: caller.binding_id,
            event_name: name.clone(),
            idempotency_key: key.to_owned(),
            magento_entity_id: event.magento_entity_id,
            website_id: event.website_id,
            store_id: event.store_id,
            occurred_at: event.occurred_at,
            // Parsed again only for the rare second try below.
            body: match document.take() {
                Some(d) => d,
                None => parse_body(&body)?.1,
            },
            jti: caller.claims.jti.clone(),
            jti_expires_at: caller.jti_expires_at,
            body_sha256: body_sha256.clone(),
            request_id: request_id.clone(),
            traceparent: traceparent.clone(),
            // A per-binding quota, so one store (or a stolen key) cannot flood the shared
            // queue; counted with the event, in its group's commit.
            quota_per_minute: i64::from(state.settings.binding_ingest_per_minute),
            key_check: caller.key_check.clone(),
        };
        let row = match ingest.submit(incoming).await? {
            Outcome::Stored(row) => row,
            // 503, not 429: the module dead-letters every 4xx but retries 5xx (contract §7).
            Outcome::OverQuota { hits, retry_after } => {
                tracing::warn!(binding_id = %caller.binding_id, hits, "ingest quota reached");
                return Err(Problem::unavailable(
                    "ingest_quota_reached",
                    format!(
                        "This store sent more than {} events in a minute; the ledger takes the rest after a pause.",
                        state.settings.binding_ingest_per_minute
                    ),
                    retry_after,
                ));
            }
        };
        if row.key_current || caller.key_check.is_none() {
            break row;
        }
        // The cached key is no longer the binding's (re-paired, revoked): nothing was
        // stored; verify against the binding as it is now, which answers as it would have.
        magento::KeyCache::of(&state).forget(caller.tenant_id);
        let fresh = magento::Accept {
            cached: false,
            ..magento::Accept::WEBHOOK
        };
        caller = magento::authenticate_with(&state, &headers, Some(&tenant_id), fresh).await?;
    };
    if !row.fresh_token {
        return Err(Problem::unauthorized(
            "token_replayed",
            "The request's token (jti) was already used; every request needs a new token.",
        ));
    }
    if let Some(run_id) = row.run_id {
        tracing::info!(binding_id = %caller.binding_id, event = %event_name, entity_id, %run_id, "event accepted");
        return Ok((
            StatusCode::ACCEPTED,
            axum::Json(Accepted {
                sync_run_id: run_id,
                duplicate: false,
            }),
        ));
    }
    // The key was seen before: answer with the original run.
    let original = ledger_jobs::repeat(&state.db, caller.binding_id, key, &body_sha256)
        .await?
        .ok_or_else(|| Problem::internal(format!("event with key {key} has no sync run")))?;
    tracing::info!(binding_id = %caller.binding_id, event = %event_name, run_id = %original, "duplicate event absorbed");
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(Accepted {
            sync_run_id: original,
            duplicate: true,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let (e, _) = parse_body(br#"{"magento_entity_id":42,"website_id":1,"store_id":1,"occurred_at":"2026-04-29T12:11:12Z","payload":{"increment_id":"000000042","paid":false}}"#).unwrap();
        assert_eq!((e.magento_entity_id, e.website_id, e.store_id), (42, 1, 1));
        assert!(e.occurred_at.is_some());
        assert!(
            parse_body(br#"{"magento_entity_id":7,"payload":[]}"#).is_ok(),
            "PHP's empty array"
        );
        let p = parse_body(br#"{"website_id":1}"#).unwrap_err();
        assert_eq!(
            (p.status.as_u16(), p.errors[0].field.as_str()),
            (422, "magento_entity_id")
        );
        let p = parse_body(br#"{"magento_entity_id":"42"}"#).unwrap_err();
        assert_eq!(p.errors[0].code, "invalid");
        assert_eq!(parse_body(b"nope").unwrap_err().code, "invalid_json");
        assert_eq!(
            parse_body(br#"{"magento_entity_id":1,"store_id":-1}"#)
                .unwrap_err()
                .errors[0]
                .field,
            "store_id"
        );
    }
}
