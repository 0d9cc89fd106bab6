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
