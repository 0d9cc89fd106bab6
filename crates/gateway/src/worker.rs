//! The worker process: background loops, each stopping on the shared shutdown token.

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::AppState;

/// Runs every background loop until `shutdown`, then waits for them to finish.
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    // Feature crates register their loops here as they arrive (sync jobs, callbacks,
    // health pings, replay-store pruning).
    let _ = &state;
    tracker.close();
    shutdown.cancelled().await;
    tracker.wait().await;
    Ok(())
}
