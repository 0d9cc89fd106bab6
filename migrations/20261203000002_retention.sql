-- Issue 14: retention in bounded batches, and history pages that stay fast on a year of
-- data. Each index serves one retention rule or one page's query.

-- Runs by when they finished: retention's cutoff, the ops console's throughput and its
-- queue-depth reconstruction (runs unfinished at a time t: finished after t, or not yet).
CREATE INDEX sync_runs_finished ON sync_runs (finished_at);
-- The ops console's latest failed and dead runs.
CREATE INDEX sync_runs_failed_recent ON sync_runs (updated_at DESC) WHERE status IN ('failed', 'dead');
-- Deleting a received event sets its run's event_id to null: found by index, not a scan.
CREATE INDEX sync_runs_event ON sync_runs (event_id);
-- Bodies still to empty.
CREATE INDEX received_events_unredacted ON received_events (received_at) WHERE body <> '{}'::jsonb;
CREATE INDEX received_events_received ON received_events (received_at);
-- Finished jobs to delete.
CREATE INDEX jobs_finished ON jobs (updated_at) WHERE status IN ('done', 'cancelled');
-- The audit trail: retention by time, the audit page by binding and by the account's own
-- actions (the tenant's rows use audit_log_tenant_at).
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_binding ON audit_log (binding_id, id) WHERE binding_id IS NOT NULL;
CREATE INDEX audit_log_actor ON audit_log (actor, id) WHERE tenant_id IS NULL AND binding_id IS NULL;
