//! Logs and traces: one `init` that returns a guard flushing spans on drop.
//!
//! Logs are structured JSON lines on stderr (or human-readable in `pretty` mode).
//! Spans always carry trace context (stored on sync runs, sent to the store); they go
//! to an OTLP/HTTP collector only when `otlp_endpoint` is set, otherwise no exporter
//! exists, so nothing retries or complains.

use ledger_core::{Settings, config::LogFormat};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::{Resource, trace::SdkTracerProvider};
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt as _, util::SubscriberInitExt as _};

/// Flushes and shuts down the trace pipeline when dropped.
#[derive(Debug)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        // The exporter's blocking HTTP client owns a runtime, which may not be dropped
        // inside the async runtime this guard usually lives in: flush and drop it on a
        // thread of its own.
        if let Some(provider) = self.provider.take() {
            let flushed = std::thread::spawn(move || provider.shutdown()).join();
            if let Ok(Err(err)) = flushed {
                tracing::warn!(error = %err, "flushing traces at exit failed");
            }
        }
    }
}

/// Sets the global subscriber. Call once per process (inside the Tokio runtime or not).
pub fn init(settings: &Settings) -> anyhow::Result<TelemetryGuard> {
    let filter =
        EnvFilter::try_new(&settings.log_level).map_err(|e| anyhow::anyhow!("LEDGER_LOG_LEVEL is invalid: {e}"))?;
    let fmt = match settings.log_format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .boxed(),
        LogFormat::Pretty => tracing_subscriber::fmt::layer()
            .compact()
            .with_writer(std::io::stderr)
            .boxed(),
    };

    // The OpenTelemetry layer is always on, so every span has a trace id to store on
    // sync runs and pass to the store; spans are exported only with an endpoint.
    let mut builder =
        SdkTracerProvider::builder().with_resource(Resource::builder().with_service_name("ledger").build());
    if let Some(endpoint) = &settings.otlp_endpoint {
        let endpoint = format!("{}/v1/traces", endpoint.as_str().trim_end_matches('/'));
        ledger_core::install_crypto_provider();
        // Built on a thread of its own: a blocking client starts (and, on a failed build,
        // drops) a runtime, which panics inside the async runtime `serve`, `worker` and
        // `dev` call this from.
        let client = std::thread::spawn(|| {
            reqwest::blocking::Client::builder()
                .timeout(std::time::Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none())
                .build()
        })
        .join()
        .map_err(|_| anyhow::anyhow!("building the OTLP client panicked"))??;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(client)
            .with_endpoint(endpoint)
            .build()?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let otel = tracing_opentelemetry::layer().with_tracer(provider.tracer("ledger"));
    let provider = Some(provider);

    // The log level filters logs only: traces keep every span at info whatever it is
    // (a worker logging at `warn` still continues each event's trace).
    tracing_subscriber::registry()
        .with(fmt.with_filter(filter))
        .with(otel.with_filter(tracing_subscriber::filter::LevelFilter::INFO))
        .try_init()?;
    Ok(TelemetryGuard { provider })
}
