-- Issue 12: fixed-window counters for throttles and quotas, shared by every process.
-- A hit is one upsert, serialised by the row lock, so N parallel attempts see N hits
-- (the old count-then-insert let N parallel guesses all see "0 failures").
-- `key` is a SHA-256 (hex) of what is counted: no email address is stored here.
CREATE TABLE rate_counters (
    bucket        TEXT NOT NULL,
    key           TEXT NOT NULL,
    window_start  TIMESTAMPTZ NOT NULL,
    hits          INT NOT NULL,
    last_at       TIMESTAMPTZ NOT NULL,
    previous_at   TIMESTAMPTZ,
    PRIMARY KEY (bucket, key)
);
CREATE INDEX rate_counters_last ON rate_counters (last_at);

-- Replaced by rate_counters (buckets signin:*).
DROP TABLE signin_failures;
