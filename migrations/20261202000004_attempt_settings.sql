-- Issue 13: a retried run uses the settings as they are when it is retried; each attempt
-- keeps the snapshot it ran with, so the history says which settings produced what.
ALTER TABLE sync_attempts ADD COLUMN policy JSONB;
