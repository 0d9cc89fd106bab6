//! The HTTP router: every feature's routes, the docs, and the middleware stack.

pub mod docs;
pub mod health;
pub mod middleware;

use std::sync::Arc;

use axum::{
    Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Request},
    http::{Response, header},
    routing::get,
};
use tower::ServiceBuilder;
use tower_http::{
    compression::{
        CompressionLayer,
        predicate::{DefaultPredicate, NotForContentType, Predicate as _},
    },
    limit::RequestBodyLimitLayer,
    sensitive_headers::SetSensitiveHeadersLayer,
    trace::TraceLayer,
};
use tracing::{Span, field::Empty};

use crate::{AppState, openapi};
use middleware::{HttpLimits, RequestId};

/// The complete application router for `ledger serve`.
pub fn router(state: AppState) -> Router {
    router_with(state, Router::new())
}

/// The router with `extra` routes behind the same middleware (tests use this to probe
/// timeouts and shutdown with handlers of their own).
pub fn router_with(state: AppState, extra: Router<AppState>) -> Router {
    crate::metrics::handle(); // install the recorder before the first request is counted
    let limits = Arc::new(HttpLimits {
        body_limit: state.settings.body_limit_bytes,
        timeout: state.settings.request_timeout,
    });
    let (api, document) = openapi::split();
    let document = Bytes::from(serde_json::to_vec_pretty(&document).expect("the OpenAPI document serialises"));

    api.merge(extra)
        .route(
            "/openapi.json",
            get(move || std::future::ready(docs::json(document.clone()))),
        )
        .route("/docs", get(docs::page))
        .route("/docs/app.js", get(docs::script))
        .fallback(middleware::fallback)
        .layer(axum::Extension(ledger_event_ingest::Ingest::new(
            state.db.clone(),
            state.settings.ingest_commit_window,
        )))
        .with_state(state.clone())
        .merge(ledger_dashboard::router(state))
        .layer(
            ServiceBuilder::new()
                // Pages carry the session's CSRF token next to text a request can
                // influence: compressing them would let BREACH read the token out of the
                // sizes. JSON and the docs stay compressed.
                .layer(
                    CompressionLayer::new()
                        .compress_when(DefaultPredicate::new().and(NotForContentType::new("text/html"))),
                )
                .layer(SetSensitiveHeadersLayer::new([
                    header::AUTHORIZATION,
                    header::PROXY_AUTHORIZATION,
                    header::COOKIE,
                    header::SET_COOKIE,
                ]))
                .layer(axum::middleware::from_fn_with_state(
                    limits.clone(),
                    middleware::request_context,
                ))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(make_span)
                        .on_request(())
                        .on_response(on_response)
                        .on_failure(()),
                )
                .layer(axum::middleware::from_fn(middleware::record_metrics))
                .layer(axum::middleware::from_fn_with_state(
                    limits.clone(),
                    middleware::timeout,
                ))
                .layer(DefaultBodyLimit::max(limits.body_limit))
                .layer(RequestBodyLimitLayer::new(limits.body_limit)),
        )
}

/// One span per request, named by method and route template (never the raw path).
fn make_span(req: &Request) -> Span {
    let route = middleware::route_of(req);
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_default();
    let span = tracing::info_span!(
        "request",
        otel.name = %format!("{} {route}", req.method()),
        otel.kind = "server",
        http.request.method = %req.method(),
        http.route = %route,
        request_id = %request_id,
        http.response.status_code = Empty,
    );
    // A caller's W3C trace context is continued (propagation convention).
    let parent = req.headers().get("traceparent").and_then(|v| v.to_str().ok());
    ledger_core::trace::continue_from(&span, parent);
    span
}

fn on_response<B>(res: &Response<B>, latency: std::time::Duration, span: &Span) {
    let status = res.status().as_u16();
    span.record("http.response.status_code", status);
    let latency_ms = latency.as_millis() as u64;
    if status >= 500 {
        tracing::warn!(status, latency_ms, "request finished");
    } else {
        tracing::info!(status, latency_ms, "request finished");
    }
}
