//! Serving with graceful shutdown: stop accepting on the signal, let in-flight requests
//! finish, and give up on stragglers once the deadline passes.

use std::{net::SocketAddr, time::Duration};

use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves `app` on `listener` until `shutdown` is cancelled and in-flight requests end,
/// or `deadline` after cancellation, whichever comes first.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    shutdown: CancellationToken,
    deadline: Duration,
) -> std::io::Result<()> {
    let graceful = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let deadline_passed = async {
        shutdown.cancelled().await;
        tokio::time::sleep(deadline).await;
    };
    tokio::select! {
        result = graceful => result,
        () = deadline_passed => {
            tracing::warn!(deadline_ms = deadline.as_millis() as u64, "shutdown deadline passed; dropping remaining connections");
            Ok(())
        }
    }
}

/// Binds the API listener, naming the setting on failure.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context as _;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on LEDGER_HTTP_ADDR {addr}"))
}
