-- The claim's parts that only some claims need, as functions (issue 16): a plan's every
-- node is set up on each run whether or not it runs, so the run's read (only for a sync
-- job) and the idle look-ups (only when nothing was claimed) cost every claim while they
-- sat in the claim's statement. Called from it, they cost only when called: still one
-- round trip. PL/pgSQL, so the planner cannot inline them back into the claim.

-- A claimed sync job's run, with its binding's and Sage connection's columns the attempt
-- needs. STRICT: a job with no run never calls it.
CREATE FUNCTION ledger_claimed_run(p_run UUID,
    OUT tenant_id UUID, OUT event_name TEXT, OUT entity_type TEXT, OUT magento_entity_id BIGINT,
    OUT created_at TIMESTAMPTZ, OUT policy JSONB, OUT magento_base_url TEXT, OUT traceparent TEXT,
    OUT api_key BYTEA, OUT region TEXT, OUT occurred_at TIMESTAMPTZ, OUT business_id TEXT,
    OUT token_version BIGINT, OUT store_clock_skew_secs INT, OUT reference JSONB)
STRICT LANGUAGE plpgsql AS $$
BEGIN
    SELECT rb.tenant_id, r.event_name, r.entity_type, r.magento_entity_id, r.created_at,
           COALESCE(r.policy, (SELECT s.settings FROM binding_settings s WHERE s.binding_id = r.binding_id)),
           rb.magento_base_url, r.traceparent, rb.api_key, sc.region, e.occurred_at,
           COALESCE(sc.business_id, ''), sc.token_version, rb.store_clock_skew_secs,
           (SELECT jsonb_object_agg(s.kind, s.items) FROM sage_reference s WHERE s.binding_id = r.binding_id
              AND s.kind IN ('tax_rates', 'financial_settings', 'business_settings'))
      INTO tenant_id, event_name, entity_type, magento_entity_id, created_at, policy, magento_base_url,
           traceparent, api_key, region, occurred_at, business_id, token_version, store_clock_skew_secs,
           reference
      FROM sync_runs r JOIN connector_bindings rb ON rb.id = r.binding_id
      LEFT JOIN sage_connections sc ON sc.binding_id = r.binding_id
      LEFT JOIN received_events e ON e.id = r.event_id
     WHERE r.id = p_run;
END
$$;

-- After a claim that found nothing, from the bindings its walk visited (each with its
-- earliest queued job's due time): whether store callbacks are due (claimed apart), and
-- in how many seconds the next queued job falls due — the earliest not yet due, a later
-- job of a binding whose earliest is due (one index probe each), or a business's budget
-- freeing. NULL when nothing will. STRICT: a claim that took a job passes NULLs and
-- never calls it.
CREATE FUNCTION ledger_claim_idle(p_bindings UUID[], p_due TIMESTAMPTZ[],
    OUT callbacks_due BOOLEAN, OUT due_in FLOAT8)
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
           ) - now())::float8
      INTO callbacks_due, due_in;
END
$$;
