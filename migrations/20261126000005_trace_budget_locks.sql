-- The webhook's W3C trace context, continued by the worker and the store callback.
ALTER TABLE sync_runs ADD COLUMN traceparent TEXT;

-- Budget log entries are settled to the response time after each call, so the next
-- call in a slot can never reach Sage inside the previous one's window.
ALTER TABLE sage_calls ADD COLUMN id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY;

-- Short leases on a Magento entity while a job works on it (an invoice, its payment and
-- its credit notes touch the same Sage balance): never held across a transaction, they
-- expire with the job's lease when a worker dies.
CREATE TABLE sync_locks (
    binding_id  UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    holder      UUID NOT NULL,
    until       TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (binding_id, key)
);
CREATE INDEX sync_locks_holder ON sync_locks (holder);
-- Store callbacks are claimed on their own (they need no Sage budget).
CREATE INDEX jobs_callbacks ON jobs (binding_id, run_at) WHERE status = 'queued' AND kind = 'sync_state';
-- Superseded by jobs_ready_per_binding; left alone it tempts the planner into scanning one busy
-- tenant's whole backlog when looking for another tenant's next job.
DROP INDEX jobs_ready;
-- Claims walk bindings in serving order, id breaking ties, and stop at the first
-- eligible one: the index gives that order with no sort.
DROP INDEX connector_bindings_served;
CREATE INDEX connector_bindings_served ON connector_bindings (last_served_at NULLS FIRST, id);
