-- Taking a call from a business's budget in one round trip: the same sliding log as
-- before (lock the business's row, count the window, log the call), but inside one
-- function, so the row lock is held for microseconds instead of across five client round
-- trips. Each statement of a plpgsql function takes a fresh snapshot under READ
-- COMMITTED, so the count after the lock sees every call the previous holder logged.
--
-- The budget log is bookkeeping, not a record of money: it commits without waiting for
-- the WAL flush. A Postgres crash can forget the last few hundred milliseconds of calls,
-- which at worst lets a few calls too many reach Sage, whose 429 then holds the business.
CREATE FUNCTION ledger_budget_acquire(p_business TEXT, p_window_secs FLOAT8, p_limit BIGINT)
RETURNS TABLE (call_id BIGINT, free_at TIMESTAMPTZ)
LANGUAGE plpgsql AS $$
DECLARE
    used   BIGINT;
    oldest TIMESTAMPTZ;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO sage_budgets (business_id) VALUES (p_business) ON CONFLICT DO NOTHING;
    PERFORM 1 FROM sage_budgets WHERE business_id = p_business FOR UPDATE;
    SELECT count(*), min(r.at) INTO used, oldest FROM (
        SELECT c.at FROM sage_calls c
        WHERE c.business_id = p_business AND c.at > clock_timestamp() - make_interval(secs => p_window_secs)
        ORDER BY c.at DESC LIMIT p_limit) r;
    IF used >= p_limit THEN
        -- The oldest call in the window expires first.
        free_at := COALESCE(oldest, now()) + make_interval(secs => p_window_secs);
        UPDATE sage_budgets SET blocked_until = free_at WHERE business_id = p_business;
        RETURN NEXT;
        RETURN;
    END IF;
    INSERT INTO sage_calls (business_id) VALUES (p_business) RETURNING id INTO call_id;
    IF used + 1 >= p_limit THEN
        UPDATE sage_budgets SET blocked_until = COALESCE(oldest, now()) + make_interval(secs => p_window_secs)
        WHERE business_id = p_business;
    END IF;
    RETURN NEXT;
END
$$;

-- Moving a call's log entry to its answer time, likewise without waiting for the flush.
CREATE FUNCTION ledger_budget_settle(p_call BIGINT) RETURNS BOOLEAN
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE sage_calls SET at = clock_timestamp() WHERE id = p_call;
    RETURN FOUND;
END
$$;
