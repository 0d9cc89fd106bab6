//! SIGTERM / SIGINT → one cancellation token passed down to every loop.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGTERM or SIGINT. The handlers are installed before
/// this returns, so a signal sent as soon as the process says it is running is caught
/// (installing them in the spawned task raced the first signal, which then killed the
/// process with no clean shutdown).
pub fn on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing the SIGTERM handler");
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .expect("installing the SIGINT handler");
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "shutting down"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "shutting down"),
        }
        trigger.cancel();
    });
    token
}
