//! Serving with graceful shutdown: stop accepting on the signal, let in-flight requests
//! finish, and give up on stragglers once the deadline passes. Each connection must send
//! its request headers within the header-read timeout (a slowloris client holding
//! thousands of half-sent requests is cut off); axum's own `serve` sets no timer.

use std::{net::SocketAddr, pin::pin, time::Duration};

use axum::{Router, extract::ConnectInfo};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tower::ServiceExt as _;

/// Header-read timeout when the caller does not say (`LEDGER_HEADER_READ_TIMEOUT`).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves `app` on `listener` until `shutdown` is cancelled and in-flight requests end,
/// or `deadline` after cancellation, whichever comes first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadline: Duration,
) -> std::io::Result<()> {
    serve_with(listener, app, shutdown, deadline, DEFAULT_HEADER_READ_TIMEOUT).await
}

/// [`serve`] with an explicit header-read timeout.
pub async fn serve_with(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadline: Duration,
    header_read_timeout: Duration,
) -> std::io::Result<()> {
    let connections = TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %err, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // An answer is written as it is ready: without this, Nagle's algorithm may hold
        // a keep-alive connection's answer sent in two writes until the client's delayed
        // ACK (~40 ms).
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "setting TCP_NODELAY failed");
        }
        let app = app.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let service = app.map_request(move |mut request: axum::http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
                request.map(axum::body::Body::new)
            });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_read_timeout);
            let mut connection = pin!(builder.serve_connection(
                TokioIo::new(stream),
                hyper_util::service::TowerToHyperService::new(service),
            ));
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!(error = %err, "connection ended with an error");
                    }
                    return;
                }
                () = shutdown.cancelled() => connection.as_mut().graceful_shutdown(),
            }
            let _ = connection.await;
        });
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(deadline, connections.wait()).await.is_err() {
        tracing::warn!(
            deadline_ms = deadline.as_millis() as u64,
            "shutdown deadline passed; dropping remaining connections"
        );
    }
    Ok(())
}

/// Binds the API listener, naming the setting on failure.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on LEDGER_HTTP_ADDR {addr}"))
}
