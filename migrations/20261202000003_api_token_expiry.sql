-- Issue 12: API tokens expire (LEDGER_API_TOKEN_TTL, 90 days by default) and can be
-- listed and revoked. Tokens issued before this get at least 30 more days.
ALTER TABLE api_tokens ADD COLUMN expires_at TIMESTAMPTZ;
UPDATE api_tokens SET expires_at = GREATEST(created_at + interval '90 days', now() + interval '30 days');
ALTER TABLE api_tokens ALTER COLUMN expires_at SET NOT NULL;
CREATE INDEX api_tokens_account ON api_tokens (account_id, created_at DESC);
