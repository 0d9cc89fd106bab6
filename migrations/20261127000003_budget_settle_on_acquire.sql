-- Settling a call's log entry on the next acquire of the same run, instead of with a round
-- trip of its own: a run's calls are sequential, so its previous call settles (moves to
-- now, later than its answer: the window only lengthens) as the next one is taken, and
-- the run's last call settles with the run's record. Four Sage calls per invoice cost
-- four round trips to the budget instead of eight.
--
-- The three-argument function stays for processes still running the previous release.
CREATE FUNCTION ledger_budget_acquire(p_business TEXT, p_window_secs FLOAT8, p_limit BIGINT, p_settle BIGINT)
RETURNS TABLE (call_id BIGINT, free_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
BEGIN
    IF p_settle IS NOT NULL THEN
        PERFORM set_config('synchronous_commit', 'off', true);
        UPDATE sage_calls SET at = clock_timestamp() WHERE id = p_settle;
    END IF;
    RETURN QUERY SELECT a.call_id, a.free_at FROM ledger_budget_acquire(p_business, p_window_secs, p_limit) a;
END
$$;
