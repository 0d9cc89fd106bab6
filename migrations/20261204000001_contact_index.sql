-- A per-business index of Sage contacts by email (issue 16): a new customer's look-up
-- answered here instead of by a Sage call. Loaded once, kept fresh by what the ledger
-- creates and by a read of what changed in Sage since (at most once a minute).
CREATE TABLE sage_contact_index (
    binding_id       UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    sage_business_id TEXT NOT NULL,
    email            TEXT NOT NULL, -- trimmed, lower case
    -- The contact's currency (a customer has a contact per currency).
    currency         TEXT NOT NULL,
    contact_id       TEXT NOT NULL,
    PRIMARY KEY (binding_id, sage_business_id, email, currency, contact_id)
);

-- How far each business's index is: complete once fully loaded, then read again from
-- `changed_since` (on Sage's clock, with a margin) when older than a minute.
CREATE TABLE sage_contact_index_state (
    binding_id       UUID NOT NULL REFERENCES connector_bindings (id) ON DELETE CASCADE,
    sage_business_id TEXT NOT NULL,
    complete         BOOLEAN NOT NULL DEFAULT false,
    -- Too many contacts to hold: look-ups ask Sage instead.
    too_large        BOOLEAN NOT NULL DEFAULT false,
    changed_since    TIMESTAMPTZ,
    refreshed_at     TIMESTAMPTZ,
    PRIMARY KEY (binding_id, sage_business_id)
);
