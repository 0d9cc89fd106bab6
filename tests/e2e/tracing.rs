//! One trace per event: the webhook's server span, the worker's sync span with its
//! Magento read and Sage calls, and the sync-state callback all share the trace id
//! stored on the run. Spans are collected in memory by a span processor.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use ledger_sandbox::sage::SageConfig;
use ledger_test_support::TestApp;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::{
    error::OTelSdkResult,
    trace::{SdkTracerProvider, Span, SpanData, SpanProcessor},
};
use tracing_subscriber::{layer::SubscriberExt as _, util::SubscriberInitExt as _};

#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collected {
    fn on_start(&self, _span: &mut Span, _cx: &opentelemetry::Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

#[tokio::test]
async fn one_trace_runs_from_webhook_to_sage_to_the_store() {
    let spans = Collected::default();
    let provider = SdkTracerProvider::builder().with_span_processor(spans.clone()).build();
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("ledger-test")))
        .init();

    let app = TestApp::builder().sage(SageConfig::default()).spawn().await;
    let paired = app.connected_store().await;
    let workers = app.start_workers();
    let store = &paired.store.store;
    store.place_order(false);
    let report = store.drain_once().await;
    assert_eq!(report.succeeded, 1, "{report:?}");
    assert!(app.wait_idle(Duration::from_secs(30)).await);
    workers.stop().await;

    let (status, trace_id): (String, Option<String>) =
        sqlx::query_as("SELECT status, trace_id FROM sync_runs WHERE event_name = 'invoice.created'")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
    assert_eq!(status, "synced");
    let trace_id = trace_id.expect("the run stores its trace id");
    assert_eq!(trace_id.len(), 32);

    let spans = spans.0.lock().unwrap().clone();
    let names: Vec<String> = spans
        .iter()
        .filter(|s| s.span_context.trace_id().to_string() == trace_id)
        .map(|s| s.name.to_string())
        .collect();
    for expected in [
        "POST /webhooks/magento/{tenant_id}/{event_name}",
        "sync invoice.created",
        "magento GET /rest/V1/byte8/invoice/{id}",
        "sage POST /v3.1/sales_invoices",
        "sync-state callback",
        "magento POST /rest/V1/byte8/sync-state",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "{expected} is in the trace: {names:#?}"
        );
    }
    // Span names never carry ids or query strings.
    assert!(
        spans.iter().all(|s| !s.name.contains('?')),
        "no query strings in span names"
    );
}
