//! The middleware every request passes through, outermost first:
//! request id → trace span → metrics → timeout → body limit (see `super::router`).

use std::{sync::Arc, time::Duration, time::Instant};

use axum::{
    body::Body,
    extract::{MatchedPath, Request, State},
    http::{HeaderValue, Method, StatusCode, Uri, header},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ledger_core::{Problem, problem::PROBLEM_CONTENT_TYPE};

pub const X_REQUEST_ID: &str = "x-request-id";

/// Limits the middleware enforces, from settings.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    pub body_limit: usize,
    pub timeout: Duration,
}

/// The request's id, in request extensions for handlers and spans.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

impl RequestId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A caller-supplied id is kept when it is short and plain; anything else is replaced,
/// so ids are safe to log and to echo in headers.
fn acceptable_request_id(value: &str) -> bool {
    (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Assigns (or propagates) the request id, returns it in `x-request-id`, and renders
/// every error answer as problem+json carrying it.
pub async fn request_context(State(limits): State<Arc<HttpLimits>>, mut req: Request, next: Next) -> Response {
    let id: Arc<str> = req
        .headers()
        .get(X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .filter(|v| acceptable_request_id(v))
        .map_or_else(|| uuid::Uuid::new_v4().to_string().into(), Into::into);
    let header_value = HeaderValue::from_str(&id).expect("request ids are plain ASCII");
    req.headers_mut().insert(X_REQUEST_ID, header_value.clone());
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();

    let response = next.run(req).await;
    let mut response = finalize_errors(response, &id, &method, &limits).await;
    response.headers_mut().insert(X_REQUEST_ID, header_value);
    response
}

async fn finalize_errors(response: Response, request_id: &str, method: &Method, limits: &HttpLimits) -> Response {
    if let Some(problem) = response.extensions().get::<Problem>().cloned() {
        // The one log line of a 5xx, with what caused it and the id the caller was given.
        if problem.status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(request_id, code = %problem.code, cause = problem.cause().unwrap_or(""), "internal error");
        } else if let Some(cause) = problem.cause() {
            // A transient failure (503) with a cause, e.g. the database out of reach;
            // expected 503s (a store's clock, load shedding) say it in their body.
            tracing::warn!(request_id, code = %problem.code, cause, "answered {}", problem.status.as_u16());
        }
        let (mut parts, _) = response.into_parts();
        let body = serde_json::to_vec(&problem.body(Some(request_id.to_owned()))).unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        return Response::from_parts(parts, Body::from(body));
    }
    let status = response.status();
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(PROBLEM_CONTENT_TYPE.as_bytes()));
    // Web pages render their own error pages.
    let is_page = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if status.as_u16() < 400 || is_problem || is_page {
        return response;
    }
    // A framework answer (rejection, 405, 413, ...): keep its headers, rewrite its body.
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned());
    let text = text.unwrap_or_default();
    let problem = generic_problem(status, &text, method, parts.headers.get(header::ALLOW), limits);
    let mut rendered = problem.to_response(Some(request_id.to_owned()));
    for (name, value) in &parts.headers {
        if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
            rendered.headers_mut().insert(name.clone(), value.clone());
        }
    }
    rendered
}

fn generic_problem(
    status: StatusCode,
    text: &str,
    method: &Method,
    allow: Option<&HeaderValue>,
    limits: &HttpLimits,
) -> Problem {
    let or_text = |fallback: &str| {
        if text.is_empty() {
            fallback.to_owned()
        } else {
            text.to_owned()
        }
    };
    let (code, detail) = match status.as_u16() {
        400 => ("bad_request", or_text("The request is malformed.")),
        401 => ("unauthorized", or_text("Authentication is required.")),
        403 => ("forbidden", or_text("You may not do this.")),
        404 => ("not_found", or_text("No such resource.")),
        405 => {
            let allowed = allow.and_then(|v| v.to_str().ok()).unwrap_or("none");
            (
                "method_not_allowed",
                format!("{method} is not supported on this path; allowed: {allowed}."),
            )
        }
        413 => (
            "body_too_large",
            format!(
                "The request body is larger than the {}-byte limit. Send a smaller body.",
                limits.body_limit
            ),
        ),
        415 => ("unsupported_media_type", or_text("Send the body as application/json.")),
        422 => (
            "invalid_body",
            or_text("The request body does not have the expected shape."),
        ),
        503 => (
            "unavailable",
            or_text("The ledger is temporarily unavailable; retry shortly."),
        ),
        s if s >= 500 => ("internal", "An unexpected error occurred.".to_owned()),
        _ => ("http_error", or_text(status.canonical_reason().unwrap_or("Error"))),
    };
    Problem::new(status, code, detail)
}

/// Counts requests by route template and status, and times them.
pub async fn record_metrics(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let route = route_of(&req);
    let response = next.run(req).await;
    crate::metrics::record_request(&method, &route, response.status().as_u16(), started);
    response
}

/// The route template (`/webhooks/magento/{tenant_id}/{event_name}`), never the raw path,
/// so metrics and span names have bounded cardinality and carry no ids.
pub fn route_of(req: &Request) -> String {
    req.extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned())
}

/// Answers 503 when a request runs past `request_timeout`. Never 408: the Magento
/// module treats every 4xx as final and would dead-letter the event.
pub async fn timeout(State(limits): State<Arc<HttpLimits>>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(limits.timeout, next.run(req)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_ms = limits.timeout.as_millis() as u64, "request timed out");
            Problem::unavailable(
                "request_timeout",
                format!(
                    "The ledger did not finish this request within {} ms and stopped it; nothing was saved. Retry it.",
                    limits.timeout.as_millis()
                ),
                5,
            )
            .into_response()
        }
    }
}

/// Unknown paths.
pub async fn fallback(method: Method, uri: Uri) -> Problem {
    Problem::not_found(
        "not_found",
        format!(
            "There is no {method} {} here. The API is described at /docs.",
            uri.path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_filtered() {
        assert!(acceptable_request_id("0f8e-abc_1.2:3"));
        assert!(!acceptable_request_id(""));
        assert!(!acceptable_request_id("has space"));
        assert!(!acceptable_request_id(&"x".repeat(129)));
        assert!(!acceptable_request_id("new\nline"));
    }
}
