//! The worker process: background loops, each stopping on the shared shutdown token.

use std::time::Duration;

use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::AppState;

/// How often expired replay-store entries, sessions and abandoned pairings are removed.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Runs every background loop until `shutdown`, then waits for them to finish.
pub async fn run(state: AppState, shutdown: CancellationToken) -> anyhow::Result<()> {
    let tracker = TaskTracker::new();
    tracker.spawn(housekeeping(state.clone(), shutdown.clone()));
    tracker.spawn(store_health(state.clone(), shutdown.clone()));
    tracker.spawn(sage_upkeep(state.clone(), shutdown.clone()));
    tracker.spawn(retention(state.clone(), shutdown.clone()));
    tracker.spawn(ledger_sage_sync::worker::run(state.clone(), shutdown.clone()));
    tracker.close();
    shutdown.cancelled().await;
    tracker.wait().await;
    Ok(())
}

/// How often every paired store is pinged (the module caches its tile for 30 s).
const PING_EVERY: Duration = Duration::from_secs(60);

async fn store_health(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(PING_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        // A pass over thousands of stores takes a while: shutdown does not wait for it.
        tokio::select! {
            () = shutdown.cancelled() => return,
            r = ledger_magento_callback::health::ping_all(&state) => if let Err(err) = r {
                tracing::warn!(error = %err, "store health loop failed; retrying next minute");
            }
        }
    }
}

/// How often idle Sage connections and stale reference caches are looked for. The first
/// pass runs at start, so a worker that was down catches up at once.
const SAGE_UPKEEP_EVERY: Duration = Duration::from_secs(300);

async fn sage_upkeep(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(SAGE_UPKEEP_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = sage_upkeep_pass(&state) => {}
        }
    }
}

async fn sage_upkeep_pass(state: &AppState) {
    match ledger_sage_vault::tokens::keep_alive(state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(refreshed = n, "Sage keep-alive refreshed idle connections"),
        Err(err) => tracing::warn!(error = %err, "Sage keep-alive failed"),
    }
    match ledger_sage_vault::tokens::forget_revoked(state).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(revoked = n, "Sage tokens of disconnected bindings revoked"),
        Err(err) => tracing::warn!(error = %err, "revoking tokens of disconnected bindings failed"),
    }
    if let Err(err) = ledger_sage_vault::reference::refresh_stale(state).await {
        tracing::warn!(error = %err, "Sage reference refresh failed");
    }
}

/// How often the retention rules are applied (one replica leads each pass).
const RETENTION_EVERY: Duration = Duration::from_secs(600);

async fn retention(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pass = tokio::select! {
            () = shutdown.cancelled() => return,
            r = ledger_sage_sync::retention::run_pass(&state.db, &state.settings) => r,
        };
        match pass {
            Ok(Some(p)) if p != ledger_sage_sync::retention::Pruned::default() => {
                tracing::info!(
                    event_bodies = p.event_bodies,
                    runs = p.runs,
                    events = p.events,
                    jobs = p.jobs,
                    audit = p.audit,
                    "retention pass"
                );
            }
            Ok(_) => {}
            Err(err) => tracing::warn!(error = %err, "retention pass failed; trying again later"),
        }
    }
}

async fn housekeeping(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(HOUSEKEEPING_EVERY);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let pass = tokio::select! {
            () = shutdown.cancelled() => return,
            r = async {
                Ok::<u64, sqlx::Error>(ledger_tenant_binding::housekeeping(&state.db).await?
                    + ledger_sage_vault::housekeeping(&state.db).await?)
            } => r,
        };
        match pass {
            Ok(0) => {}
            Ok(removed) => tracing::debug!(removed, "housekeeping"),
            Err(err) => tracing::warn!(error = %err, "housekeeping failed; retrying next minute"),
        }
    }
}
