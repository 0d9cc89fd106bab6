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
}

/// The document as the server serves it.
pub fn document() -> utoipa::openapi::OpenApi {
    api_routes().split_for_parts().1
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
