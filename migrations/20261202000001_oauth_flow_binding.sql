-- Issue 12: an authorization belongs to the browser and account that started it.

-- SHA-256 of the nonce cookie set by the dashboard when it started the flow; NULL for
-- flows started through the API, which end on a confirmation page instead.
ALTER TABLE sage_oauth_states ADD COLUMN browser_hash BYTEA;

-- Tokens from an API-started flow, held until the signed-in account confirms which
-- store they are for (10 minutes). Sealed like sage_connections (AAD table.column:id).
CREATE TABLE sage_pending_grants (
    id                    UUID PRIMARY KEY,
    binding_id            UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    account_id            UUID NOT NULL REFERENCES accounts (id) ON DELETE CASCADE,
    region                TEXT NOT NULL,
    businesses            JSONB NOT NULL,
    access_token          BYTEA NOT NULL,
    access_token_key_id   TEXT NOT NULL,
    access_expires_at     TIMESTAMPTZ NOT NULL,
    refresh_token         BYTEA NOT NULL,
    refresh_token_key_id  TEXT NOT NULL,
    refresh_expires_at    TIMESTAMPTZ NOT NULL,
    requested_by_id       TEXT,
    created_at            TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at            TIMESTAMPTZ NOT NULL
);
CREATE INDEX sage_pending_grants_expires ON sage_pending_grants (expires_at);
