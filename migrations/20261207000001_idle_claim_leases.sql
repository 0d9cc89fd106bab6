-- An idle claim also says when the earliest running job's lease ends (issue 16: an idle
-- process makes no query but its poll). The worker's lease sweep then runs only when a
-- lease may have ended, rather than once a second whatever: one probe of
-- `jobs_expired_leases`, in the round trip the idle poll makes anyway. NULL when no job
-- is running. Dropped and created, as an OUT column changes the function's type; the
-- claims of a process not yet upgraded name only the columns they know, which remain.
DROP FUNCTION ledger_claim_idle(UUID[], TIMESTAMPTZ[]);

CREATE FUNCTION ledger_claim_idle(p_bindings UUID[], p_due TIMESTAMPTZ[],
    OUT callbacks_due BOOLEAN, OUT due_in FLOAT8, OUT lease_ends_in FLOAT8)
STRICT LANGUAGE plpgsql AS $$
BEGIN
    SELECT EXISTS (
             SELECT 1 FROM unnest(p_bindings, p_due) r(id, run_at)
             CROSS JOIN LATERAL (
               SELECT 1 FROM jobs q WHERE q.binding_id = r.id AND q.status = 'queued' AND q.kind = 'sync_state'
                 AND q.run_at <= now() LIMIT 1) q
             WHERE r.run_at <= now()),
           EXTRACT(EPOCH FROM LEAST(
             (SELECT min(r.run_at) FROM unnest(p_due) r(run_at) WHERE r.run_at > now()),
             (SELECT min(n.run_at) FROM unnest(p_bindings, p_due) r(id, run_at)
              CROSS JOIN LATERAL (
                SELECT j.run_at FROM jobs j WHERE j.binding_id = r.id AND j.status = 'queued' AND j.run_at > now()
                ORDER BY j.run_at LIMIT 1) n
              WHERE r.run_at <= now()),
             (SELECT min(blocked_until) FROM sage_budgets WHERE blocked_until > now())
           ) - now())::float8,
           EXTRACT(EPOCH FROM (SELECT min(locked_until) FROM jobs WHERE status = 'running') - now())::float8
      INTO callbacks_due, due_in, lease_ends_in;
END
$$;
