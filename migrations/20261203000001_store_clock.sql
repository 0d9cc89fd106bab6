-- Issue 14: the store's clock as its signed requests show it (iat − the ledger's now, in
-- seconds; positive = the store is ahead), recorded when it matters (beyond a few seconds)
-- and cleared when the store is back in time. Shown on the tile, dashboard and ops console.
ALTER TABLE connector_bindings
    ADD COLUMN store_clock_skew_secs INTEGER,
    ADD COLUMN store_clock_skew_at TIMESTAMPTZ;

-- Issue 14: an event folded into a waiting run (a repeated customer/product update)
-- records that run, so its re-delivery (its 202 lost) answers 202 with it.
ALTER TABLE received_events ADD COLUMN folded_into UUID;
