-- Who changed what: settings, connects, disconnects, retries, operator actions.
-- Append-only; every feature writes here through one helper.
CREATE TABLE audit_log (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    -- 'account:<uuid>', 'operator:<uuid>', 'magento:<binding uuid>', 'system'
    actor       TEXT NOT NULL,
    tenant_id   UUID,
    binding_id  UUID,
    action      TEXT NOT NULL,
    -- Redacted details: never secrets.
    details     JSONB NOT NULL DEFAULT '{}'::jsonb,
    request_id  TEXT
);

CREATE INDEX audit_log_tenant_at ON audit_log (tenant_id, at DESC);
