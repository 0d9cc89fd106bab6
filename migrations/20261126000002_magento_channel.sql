-- Accounts, tenants, bindings, the Magento channel's replay store, received events,
-- sync runs and the job queue.

CREATE TABLE accounts (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL,
    -- argon2id PHC string; NULL for token-only accounts (created by the CLI without a password).
    password_hash TEXT,
    is_operator   BOOLEAN NOT NULL DEFAULT false,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX accounts_email_key ON accounts (lower(email));

CREATE TABLE tenants (
    id          UUID PRIMARY KEY,
    account_id  UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    name        TEXT NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX tenants_account ON tenants (account_id, created_at);

-- API tokens for automation: only their SHA-256 is stored.
CREATE TABLE api_tokens (
    id            UUID PRIMARY KEY,
    account_id    UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    token_hash    BYTEA NOT NULL UNIQUE,
    name          TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);

-- Dashboard sign-in sessions: only the SHA-256 of the cookie value is stored.
CREATE TABLE sessions (
    id_hash       BYTEA PRIMARY KEY,
    account_id    UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    csrf_token    TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_seen_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at    TIMESTAMPTZ NOT NULL
);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Failed sign-ins, for throttling per account and per client address.
CREATE TABLE signin_failures (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email_key  TEXT NOT NULL,
    client_ip  TEXT NOT NULL,
    at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX signin_failures_email ON signin_failures (email_key, at);
CREATE INDEX signin_failures_ip ON signin_failures (client_ip, at);

-- One Magento install <-> one Sage business.
CREATE TABLE connector_bindings (
    id                         UUID PRIMARY KEY,
    tenant_id                  UUID NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider                   TEXT NOT NULL DEFAULT 'sage_accounting',
    magento_base_url           TEXT NOT NULL,
    -- pairing: created, the store has not confirmed a key yet (not live)
    -- paired: the store holds our key; Sage not connected yet
    -- active: both sides connected
    -- needs_reauth / paused: jobs held; revoked: disconnected
    status                     TEXT NOT NULL
        CHECK (status IN ('pairing', 'paired', 'active', 'needs_reauth', 'paused', 'revoked')),
    -- What the store's module shows (contract §5.3): token_revoked when it last answered 401.
    magento_connection_status  TEXT NOT NULL DEFAULT 'pending'
        CHECK (magento_connection_status IN ('pending', 'active', 'token_revoked')),
    -- The api_key the store holds, sealed (AAD names this row and column).
    api_key                    BYTEA,
    api_key_key_id             TEXT,
    -- A key offered in a pairing call whose outcome is not confirmed yet.
    pending_api_key            BYTEA,
    pending_api_key_key_id     TEXT,
    pending_attempt            UUID,
    pending_since              TIMESTAMPTZ,
    region                     TEXT,
    paired_at                  TIMESTAMPTZ,
    revoked_at                 TIMESTAMPTZ,
    magento_status_at          TIMESTAMPTZ,
    created_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at                 TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (tenant_id, provider, magento_base_url)
);

-- Replay store for the module's JWT ids, shared by every ledger process.
CREATE TABLE magento_jti (
    binding_id  UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    jti         TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (binding_id, jti)
);
CREATE INDEX magento_jti_expires ON magento_jti (expires_at);

-- Every accepted webhook, exactly once per (binding, Idempotency-Key).
CREATE TABLE received_events (
    id                 UUID PRIMARY KEY,
    binding_id         UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    event_name         TEXT NOT NULL,
    idempotency_key    TEXT NOT NULL,
    magento_entity_id  BIGINT NOT NULL,
    website_id         BIGINT NOT NULL,
    store_id           BIGINT NOT NULL,
    occurred_at        TIMESTAMPTZ,
    body               JSONB NOT NULL,
    received_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    duplicates         INT NOT NULL DEFAULT 0,
    UNIQUE (binding_id, idempotency_key)
);

-- The audit trail of sync work: one row per event (attempts are counted on it).
CREATE TABLE sync_runs (
    id                 UUID PRIMARY KEY,
    binding_id         UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    event_id           UUID REFERENCES received_events (id) ON DELETE SET NULL,
    event_name         TEXT NOT NULL,
    entity_type        TEXT NOT NULL,
    magento_entity_id  BIGINT NOT NULL,
    status             TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'synced', 'skipped_by_policy', 'failed', 'dead')),
    error_class        TEXT,
    error_code         TEXT,
    message            TEXT,
    sage_id            TEXT,
    sage_reference     TEXT,
    attempts           INT NOT NULL DEFAULT 0,
    trace_id           TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at         TIMESTAMPTZ,
    finished_at        TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX sync_runs_binding_created ON sync_runs (binding_id, created_at DESC);
CREATE INDEX sync_runs_entity ON sync_runs (binding_id, entity_type, magento_entity_id, created_at DESC);

-- The job queue (claimed with FOR UPDATE SKIP LOCKED under a lease).
CREATE TABLE jobs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    binding_id    UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    sync_run_id   UUID REFERENCES sync_runs (id) ON DELETE CASCADE,
    status        TEXT NOT NULL DEFAULT 'queued'
        CHECK (status IN ('queued', 'running', 'done', 'dead', 'paused', 'cancelled')),
    run_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    locked_until  TIMESTAMPTZ,
    attempts      INT NOT NULL DEFAULT 0,
    last_error    TEXT,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX jobs_ready ON jobs (run_at) WHERE status = 'queued';
CREATE INDEX jobs_binding ON jobs (binding_id, status);

-- Magento entity <-> Sage object, per binding and currency. Survives disconnect and
-- re-pairing, so documents are never posted twice.
CREATE TABLE entity_xref (
    binding_id         UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    entity_type        TEXT NOT NULL,
    magento_entity_id  BIGINT NOT NULL,
    currency           TEXT NOT NULL DEFAULT '',
    sage_business_id   TEXT,
    sage_id            TEXT,
    sage_reference     TEXT,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (binding_id, entity_type, magento_entity_id, currency)
);
