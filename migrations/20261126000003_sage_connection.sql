-- Sage connections: OAuth state, sealed tokens, reference cache.

-- Pending authorizations: single-use, 10 minutes, bound to a binding. Only the
-- state's SHA-256 is stored; the PKCE verifier is sealed.
CREATE TABLE sage_oauth_states (
    state_hash      BYTEA PRIMARY KEY,
    binding_id      UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    account_id      UUID REFERENCES accounts (id) ON DELETE SET NULL,
    region          TEXT NOT NULL,
    pkce_verifier   BYTEA NOT NULL,
    pkce_verifier_key_id TEXT NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at      TIMESTAMPTZ NOT NULL
);
CREATE INDEX sage_oauth_states_expires ON sage_oauth_states (expires_at);

-- One Sage connection per binding. Tokens are sealed (AAD: table.column:binding id).
CREATE TABLE sage_connections (
    binding_id            UUID PRIMARY KEY REFERENCES connector_bindings (id) ON DELETE CASCADE,
    -- choosing_business: connected, more than one business, none chosen yet
    -- connected; needs_reauth: the refresh token died; subscription_lapsed: Sage's MSE 401
    status                TEXT NOT NULL
        CHECK (status IN ('choosing_business', 'connected', 'needs_reauth', 'subscription_lapsed')),
    region                TEXT NOT NULL,
    business_id           TEXT,
    business_name         TEXT,
    -- The businesses offered when there is a choice: [{id, name}].
    businesses            JSONB NOT NULL DEFAULT '[]'::jsonb,
    access_token          BYTEA,
    access_token_key_id   TEXT,
    access_expires_at     TIMESTAMPTZ,
    refresh_token         BYTEA,
    refresh_token_key_id  TEXT,
    refresh_expires_at    TIMESTAMPTZ,
    -- Bumped on every token write: compare-and-swap for refreshers.
    token_version         BIGINT NOT NULL DEFAULT 1,
    -- Single-flight refresh lease (never a transaction held across the call to Sage).
    refresh_lease         UUID,
    refreshing_until      TIMESTAMPTZ,
    requested_by_id       TEXT,
    connected_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_refreshed_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at            TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Reference data per binding and kind (tax_rates, ledger_accounts_sales, ...).
CREATE TABLE sage_reference (
    binding_id   UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL,
    items        JSONB NOT NULL,
    fetched_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (binding_id, kind)
);
