//! The OpenAPI 3.1 document, generated from the handlers' annotations.
//!
//! The committed copy is `openapi/ledger.json`; `ledger openapi --check` (run by CI and
//! by a test) fails when the code and the committed file disagree.

use utoipa::OpenApi;
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{AppState, http::health};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "ledger",
        description = "The hosted side of the Magento 2 → Sage Business Cloud Accounting connector. \
            Errors are RFC 9457 problem+json bodies (`ProblemBody`) with a stable `code`, a `detail` that \
            says what to fix and the request id (also returned in `x-request-id`).",
    ),
    tags(
        (name = "magento", description = "Called by the byte8 Magento module, authenticated by its HS256 JWT"),
        (name = "bindings", description = "Pairing stores and managing bindings"),
        (name = "sage", description = "Connecting a binding to a Sage business, and its reference data"),
        (name = "sync", description = "Sync runs, operator actions and the binding's sync settings"),
        (name = "accounts", description = "Sign-up, sign-in and the signed-in account"),
        (name = "operations", description = "Probes for orchestrators and load balancers"),
    ),
    components(schemas(ledger_core::ProblemBody, ledger_core::FieldError)),
    modifiers(&SecuritySchemes),
)]
struct ApiDoc;

/// The three ways callers authenticate.
struct SecuritySchemes;

impl utoipa::Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A merchant API token (`lgr_…`), from `ledger merchant create` or the dashboard.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                "ledger_session",
                "The dashboard sign-in cookie; state-changing requests also need the x-csrf-token header.",
            ))),
        );
        components.add_security_scheme(
            "magento_jwt",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "HS256 JWT minted per request by the Magento module with the binding's outbound subkey \
                         (HKDF-SHA256 of the api_key, info `byte8-magento-outbound-v1`); iss `magento`, \
                         aud `byte8-ledger`, sub = tenant id, single-use jti.",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every documented route, before state is attached.
pub fn api_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .merge(ledger_tenant_binding::routes())
        .merge(ledger_pairing::routes())
        .merge(ledger_event_ingest::routes())
        .merge(ledger_sage_vault::routes())
        .merge(ledger_sage_sync::routes())
}

/// The routes and the finished document.
pub fn split() -> (axum::Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut document) = api_routes().split_for_parts();
    add_common_responses(&mut document);
    (router, document)
}

/// The document as the server serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    split().1
}

/// Documents the answers the middleware and extractors give on every route, so each
/// operation lists every status it can return: malformed input (400), oversized (413)
/// or non-JSON (415) bodies, field errors (422), missing credentials (401), and
/// transient unavailability (503); plus a problem+json `default` for anything else.
fn add_common_responses(document: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
    let problem = |description: &str| {
        ResponseBuilder::new()
            .description(description)
            .content(
                "application/problem+json",
                ContentBuilder::new()
                    .schema(Some(Ref::from_schema_name("ProblemBody")))
                    .build(),
            )
            .build()
    };
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        for operation in operations.into_iter().flatten() {
            let id = operation.operation_id.clone().unwrap_or_default();
            if id == "healthz" {
                continue;
            }
            let has_input =
                operation.request_body.is_some() || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut add = |status: &str, description: &str| {
                operation
                    .responses
                    .responses
                    .entry(status.to_owned())
                    .or_insert_with(|| problem(description).into());
            };
            if has_input {
                add(
                    "400",
                    "The request is malformed (e.g. the body is not JSON or a path parameter has the wrong form)",
                );
            }
            if secured {
                add("401", "Missing or invalid credentials");
            }
            if operation.request_body.is_some() {
                add("413", "The body is larger than the configured limit");
                add("422", "The body does not have the expected fields");
                if id != "magento_webhook" {
                    add("415", "The body is not sent as application/json");
                }
            }
            if id != "readyz" {
                add(
                    "503",
                    "Temporarily unavailable (database unreachable or request timed out); retry later",
                );
            }
            add("default", "Any other error, as an RFC 9457 problem document");
        }
    }
}

/// Pretty JSON with a trailing newline: the committed file's exact bytes.
pub fn document_json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).expect("the OpenAPI document serialises");
    text.push('\n');
    text
}

/// Describes the first difference between the committed document and the generated one
/// (a JSON path and both values), or `None` when they are identical.
pub fn drift(committed: &str, generated: &str) -> Option<String> {
    if committed == generated {
        return None;
    }
    let parse = |s: &str| serde_json::from_str::<serde_json::Value>(s).ok();
    match (parse(committed), parse(generated)) {
        (Some(a), Some(b)) => Some(first_difference("$", &a, &b).unwrap_or_else(|| "formatting differs".to_owned())),
        _ => Some("the committed file is not valid JSON".to_owned()),
    }
}

fn first_difference(path: &str, a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            for key in x.keys().chain(y.keys()) {
                let child = format!("{path}.{key}");
                match (x.get(key), y.get(key)) {
                    (Some(u), Some(v)) => {
                        if let Some(d) = first_difference(&child, u, v) {
                            return Some(d);
                        }
                    }
                    (Some(_), None) => return Some(format!("{child} is committed but no longer generated")),
                    (None, Some(_)) => return Some(format!("{child} is generated but not committed")),
                    (None, None) => {}
                }
            }
            None
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (u, v))| first_difference(&format!("{path}[{i}]"), u, v)),
        _ if a == b => None,
        _ => Some(format!("{path}: committed {a}, generated {b}")),
    }
}
