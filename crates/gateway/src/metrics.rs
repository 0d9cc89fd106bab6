//! Prometheus metrics, served on their own listener (`metrics_addr`) so scrapes never
//! compete with, or get exposed alongside, the public API.

use std::{net::SocketAddr, sync::OnceLock, time::Instant};

use axum::{Router, extract::State, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Latency buckets in seconds: fine below 100 ms, where the webhook targets live.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide recorder (installed on first use; tests start several apps per process).
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("buckets are non-empty")
            .build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed by an embedding test; ours still renders.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

/// Records one finished HTTP request.
pub fn record_request(method: &str, route: &str, status: u16, started: Instant) {
    let labels = [
        ("method", method.to_owned()),
        ("route", route.to_owned()),
        ("status", status.to_string()),
    ];
    metrics::counter!("http_requests_total", &labels).increment(1);
    metrics::histogram!("http_request_duration_seconds", &labels[..2]).record(started.elapsed().as_secs_f64());
}

fn record_pool(pool: &PgPool) {
    let size = pool.size();
    let idle = u32::try_from(pool.num_idle()).unwrap_or(u32::MAX);
    metrics::gauge!("db_pool_connections", "state" => "idle").set(idle);
    metrics::gauge!("db_pool_connections", "state" => "in_use").set(size.saturating_sub(idle));
    metrics::gauge!("db_pool_max_connections").set(pool.options().get_max_connections());
}

async fn render(State(pool): State<PgPool>) -> String {
    record_pool(&pool);
    handle().render()
}

/// `/metrics` and `/healthz` on the metrics listener (the worker has no other port).
pub fn router(pool: PgPool) -> Router {
    Router::new()
        .route("/metrics", get(render))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(pool)
}

/// Serves the metrics listener until `shutdown`.
pub async fn serve(listener: TcpListener, pool: PgPool, shutdown: CancellationToken) -> std::io::Result<()> {
    handle();
    axum::serve(listener, router(pool))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds the metrics listener if one is configured.
pub async fn bind(addr: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    use anyhow::Context as _;
    match addr {
        None => Ok(None),
        Some(addr) => {
            Ok(Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on LEDGER_METRICS_ADDR {addr}")
            })?))
        }
    }
}
