-- The sync engine: leases, fairness, attempts, callbacks and the per-business Sage budget.

ALTER TABLE jobs
    ADD COLUMN lease_id UUID,
    -- Entity the job is about, for coalescing callbacks: 'invoice:42'.
    ADD COLUMN entity_key TEXT,
    ADD COLUMN payload JSONB NOT NULL DEFAULT '{}'::jsonb,
    -- Why a job waits without using an attempt (dependency, budget, store down).
    ADD COLUMN waiting_for TEXT;

-- Claim path: the oldest ready job of one binding.
CREATE INDEX jobs_ready_per_binding ON jobs (binding_id, run_at, id) WHERE status = 'queued';
CREATE INDEX jobs_running_per_binding ON jobs (binding_id) WHERE status = 'running';
CREATE INDEX jobs_expired_leases ON jobs (locked_until) WHERE status = 'running';
-- At most one queued callback per entity: a newer outcome replaces the queued one.
CREATE UNIQUE INDEX jobs_one_queued_callback ON jobs (binding_id, entity_key) WHERE status = 'queued' AND kind = 'sync_state';

-- Round-robin between bindings: the claim serves the binding served longest ago.
ALTER TABLE connector_bindings ADD COLUMN last_served_at TIMESTAMPTZ;
CREATE INDEX connector_bindings_served ON connector_bindings (last_served_at NULLS FIRST) WHERE status = 'active';

-- Sync runs: what was coalesced into them, and the request that brought them.
ALTER TABLE sync_runs
    ADD COLUMN coalesced INT NOT NULL DEFAULT 0,
    ADD COLUMN request_id TEXT,
    ADD COLUMN skip_reason TEXT,
    ADD COLUMN policy JSONB,
    ADD COLUMN callback_status TEXT,
    ADD COLUMN callback_at TIMESTAMPTZ;
CREATE INDEX sync_runs_status ON sync_runs (binding_id, status, finished_at DESC);
CREATE INDEX sync_runs_pending_entity ON sync_runs (binding_id, event_name, magento_entity_id) WHERE status = 'pending';

-- Every attempt of a run.
CREATE TABLE sync_attempts (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    sync_run_id   UUID NOT NULL REFERENCES sync_runs (id) ON DELETE CASCADE,
    attempt       INT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL,
    finished_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome       TEXT NOT NULL,
    error_class   TEXT,
    error_code    TEXT,
    message       TEXT,
    -- Redacted summaries of what was sent and received.
    request       JSONB,
    response      JSONB,
    worker        TEXT
);
CREATE INDEX sync_attempts_run ON sync_attempts (sync_run_id, attempt);

-- The per-Sage-business call budget, shared by every worker of every process:
-- a sliding log of calls; the row per business serialises acquirers.
CREATE TABLE sage_budgets (
    business_id    TEXT PRIMARY KEY,
    -- While in the future, no binding of this business is claimed (budget spent).
    blocked_until  TIMESTAMPTZ
);
CREATE TABLE sage_calls (
    business_id  TEXT NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX sage_calls_window ON sage_calls (business_id, at);

-- Posting state per document, so an uncertain outcome (timeout, crash) is looked up by
-- reference before anything is created again.
ALTER TABLE entity_xref
    -- posting: sent, outcome unknown; posted: Sage id known
    -- rejected: Sage refused the last post definitely (extra.generation counts them)
    ADD COLUMN state TEXT NOT NULL DEFAULT 'posted' CHECK (state IN ('posting', 'posted', 'rejected')),
    ADD COLUMN idempotency_id TEXT,
    -- Facts later documents need: the invoice's contact and exchange rate, totals, the
    -- hash of the last contact payload pushed (to skip unchanged updates).
    ADD COLUMN extra JSONB NOT NULL DEFAULT '{}'::jsonb;

-- A binding's sync settings (policy, default mappings, maps, B2C, commercial knobs).
CREATE TABLE binding_settings (
    binding_id  UUID PRIMARY KEY REFERENCES connector_bindings (id) ON DELETE CASCADE,
    settings    JSONB NOT NULL,
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_by  TEXT
);

-- A repeat is the same key with the same bytes (retries and requeues re-send both). The
-- module reuses entity-based keys for later changes once its outbox row is gone (30
-- days), and its CLI republishes with a new `occurred_at`: those are new events.
ALTER TABLE received_events ADD COLUMN body_sha256 BYTEA;
UPDATE received_events SET body_sha256 = sha256(convert_to(body::text, 'UTF8'));
ALTER TABLE received_events ALTER COLUMN body_sha256 SET NOT NULL;
ALTER TABLE received_events DROP CONSTRAINT received_events_binding_id_idempotency_key_key;
CREATE UNIQUE INDEX received_events_repeat ON received_events (binding_id, idempotency_key, body_sha256);
