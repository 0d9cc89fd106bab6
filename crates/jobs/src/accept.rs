//! Accepting received events: the event, its run and its job in one statement.

use std::time::Duration;

use ledger_core::BindingId;

/// The `rate_counters` bucket of the per-binding ingest quota (keyed by binding id).
pub const INGEST_QUOTA_BUCKET: &str = "ingest:binding";
/// The ingest quota's window.
pub const INGEST_QUOTA_WINDOW: Duration = Duration::from_secs(60);
use serde_json::Value;

/// One verified event to store, as the webhook received it.
#[derive(Debug, Clone, Copy)]
pub struct Received<'a> {
    pub binding_id: BindingId,
    pub event_name: &'a crate::EventName,
    pub idempotency_key: &'a str,
    pub magento_entity_id: i64,
    pub website_id: i64,
    pub store_id: i64,
    pub occurred_at: Option<chrono::DateTime<chrono::Utc>>,
    pub body: &'a Value,
    pub jti: &'a str,
    pub jti_expires_at: i64,
    /// SHA-256 of the request body's bytes (a repeat is the same key with the same bytes).
    pub body_sha256: &'a [u8],
    pub request_id: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    /// The token was verified with a cached key: the sealed api_key the binding must
    /// still hold, not revoked, for the event to be stored (`None`: read for this request).
    pub key_check: Option<&'a [u8]>,
    /// Counts the event on its binding's ingest quota in this statement, refusing it
    /// beyond this many a minute (0: counted elsewhere or not at all).
    pub quota_per_minute: i64,
}

/// What storing one event did.
#[derive(Debug)]
pub struct Persisted {
    /// False when [`Received::key_check`] no longer holds: nothing was written (verify
    /// the request against the binding as it is now).
    pub key_current: bool,
    /// False when the token's jti was used before (nothing else was written).
    pub fresh_token: bool,
    /// The new run (or the waiting run it was folded into); `None` for a repeat.
    pub run_id: Option<uuid::Uuid>,
    /// Folded into a run not yet started (a repeated customer or product update).
    pub folded: bool,
    /// Beyond [`Received::quota_per_minute`]: (the event's hit, seconds until the window
    /// ends); nothing was written but the hit.
    pub over_quota: Option<(i64, u32)>,
    /// The wake-up for the event's new job, when [`accept`] was told not to send it:
    /// [`crate::notify_unflushed`] sends it once the statement has committed.
    pub wake: Option<String>,
}

/// Whether [`accept`] wakes the workers in its own transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wake {
    /// NOTIFY in the statement's transaction: no extra statement, but Postgres
    /// serialises notifying commits through their WAL flush (a global lock taken at
    /// commit), so concurrent groups that notify cannot share a flush.
    InTransaction,
    /// Leave it to the caller ([`Persisted::wake`], [`crate::notify_unflushed`]) after the commit.
    AfterCommit,
}

/// Stores events with their sync runs and jobs, consuming each token's jti and waking
/// workers — one statement for the whole group, one row back per event in order. The
/// events must not share a token, an Idempotency-Key or a foldable entity (the ingest's
/// grouping sees to it): each is then stored exactly as it would be alone.
pub async fn accept(
    conn: &mut sqlx::PgConnection,
    events: &[Received<'_>],
    wake: Wake,
) -> Result<Vec<Persisted>, sqlx::Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let mut c = Columns::default();
    for e in events {
        c.event_ids.push(uuid::Uuid::new_v4());
        c.run_ids.push(uuid::Uuid::new_v4());
        c.bindings.push(e.binding_id.0);
        c.names.push(e.event_name.as_str().to_owned());
        c.keys.push(e.idempotency_key.to_owned());
        c.entities.push(e.magento_entity_id);
        c.websites.push(e.website_id);
        c.stores.push(e.store_id);
        c.occurred.push(e.occurred_at);
        c.bodies.push(e.body.clone());
        c.jtis.push(e.jti.to_owned());
        c.jti_expiries.push(e.jti_expires_at as f64);
        c.entity_types.push(e.event_name.entity_type().to_owned());
        c.shas.push(e.body_sha256.to_owned());
        c.request_ids.push(e.request_id.map(str::to_owned));
        c.traceparents.push(e.traceparent.map(str::to_owned));
        c.trace_ids
            .push(e.traceparent.and_then(ledger_core::trace::trace_id).map(str::to_owned));
        c.key_checks.push(e.key_check.map(<[u8]>::to_vec));
        c.quota_keys
            .push((e.quota_per_minute > 0).then(|| ledger_core::rate::stored_key(&e.binding_id.to_string())));
        c.quota_limits.push(e.quota_per_minute);
    }
    // The fold below names the events whose `EventName::folds` is true.
    let rows = sqlx::query!(
        r#"WITH input AS (
             SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::text[], $5::int8[], $6::int8[], $7::int8[],
                                  $8::timestamptz[], $9::jsonb[], $10::uuid[], $11::text[], $12::float8[], $13::text[],
                                  $14::bytea[], $15::text[], $16::text[], $17::text[], $18::bytea[], $19::text[],
                                  $20::int8[])
               WITH ORDINALITY AS t(event_id, binding_id, event_name, idempotency_key, entity_id, website_id, store_id,
                                    occurred_at, body, run_id, jti, jti_expires_at, entity_type, sha, request_id,
                                    traceparent, trace_id, key_check, quota_key, quota_limit, n)
           ), current_key AS (
             -- A token verified with a cached key counts only if the binding still holds
             -- that key and is not revoked, checked here with the event's own writes.
             SELECT i.* FROM input i
             WHERE i.key_check IS NULL
                OR EXISTS (SELECT 1 FROM connector_bindings b
                           WHERE b.id = i.binding_id AND b.api_key = i.key_check AND b.status <> 'revoked')
           ), quota_in AS (
             SELECT quota_key AS k, count(*)::int4 AS n FROM current_key WHERE quota_key IS NOT NULL GROUP BY quota_key
           ), counted AS (
             -- rate::hit_many's upsert (core owns the table; the hot path counts here so
             -- the quota costs no commit of its own). Rows locked in key order.
             INSERT INTO rate_counters AS c (bucket, key, window_start, hits, last_at)
             SELECT $21, k, now(), n, now() FROM quota_in ORDER BY k
             ON CONFLICT (bucket, key) DO UPDATE SET
               hits = CASE WHEN c.window_start <= now() - make_interval(secs => $22) THEN EXCLUDED.hits ELSE c.hits + EXCLUDED.hits END,
               window_start = CASE WHEN c.window_start <= now() - make_interval(secs => $22) THEN now() ELSE c.window_start END,
               previous_at = c.last_at,
               last_at = now()
             RETURNING key, hits,
               GREATEST(EXTRACT(EPOCH FROM window_start + make_interval(secs => $22) - now()), 0)::float8 AS window_left
           ), numbered AS (
             -- Each event's hit, numbered in turn as if they had come one by one.
             SELECT c.n, q.hits - qi.n + row_number() OVER (PARTITION BY c.quota_key ORDER BY c.n) AS nth,
                    c.quota_limit, q.window_left
             FROM current_key c JOIN counted q ON q.key = c.quota_key JOIN quota_in qi ON qi.k = c.quota_key
           ), over_quota AS (
             SELECT n, nth, GREATEST(ceil(window_left), 1)::int8 AS retry_after FROM numbered WHERE nth > quota_limit
           ), admitted AS (
             SELECT c.* FROM current_key c WHERE NOT EXISTS (SELECT 1 FROM over_quota o WHERE o.n = c.n)
           ), j AS (
             INSERT INTO magento_jti (binding_id, jti, expires_at)
             SELECT binding_id, jti, to_timestamp(jti_expires_at) FROM admitted ORDER BY n
             ON CONFLICT DO NOTHING RETURNING binding_id, jti
           ), fresh AS (
             SELECT i.* FROM input i WHERE EXISTS (SELECT 1 FROM j WHERE j.binding_id = i.binding_id AND j.jti = i.jti)
           ), waiting AS (
             -- Updates of a customer or product fold into a run not yet started: it reads
             -- the latest state anyway. (Looked up before the event is stored, so the
             -- event can record it; a repeat stores nothing and folds nothing.)
             SELECT f.n, (SELECT r.id FROM sync_runs r
                          WHERE r.binding_id = f.binding_id AND r.event_name = f.event_name
                            AND r.magento_entity_id = f.entity_id AND r.status = 'pending' LIMIT 1) AS id
             FROM fresh f WHERE f.event_name IN ('customer.upserted', 'product.upserted')
           ), ev AS (
             INSERT INTO received_events
               (id, binding_id, event_name, idempotency_key, magento_entity_id, website_id, store_id, occurred_at, body, body_sha256, folded_into)
             SELECT f.event_id, f.binding_id, f.event_name, f.idempotency_key, f.entity_id, f.website_id, f.store_id,
                    f.occurred_at, f.body, f.sha, w.id
             FROM fresh f LEFT JOIN waiting w ON w.n = f.n ORDER BY f.n
             ON CONFLICT (binding_id, idempotency_key, body_sha256) DO NOTHING
             RETURNING id
           ), run AS (
             INSERT INTO sync_runs (id, binding_id, event_id, event_name, entity_type, magento_entity_id, policy, request_id, traceparent, trace_id)
             SELECT f.run_id, f.binding_id, f.event_id, f.event_name, f.entity_type, f.entity_id,
                    (SELECT s.settings FROM binding_settings s WHERE s.binding_id = f.binding_id), f.request_id, f.traceparent, f.trace_id
             FROM fresh f JOIN ev ON ev.id = f.event_id LEFT JOIN waiting w ON w.n = f.n
             WHERE w.id IS NULL ORDER BY f.n
             RETURNING id, binding_id
           ), folded AS (
             UPDATE sync_runs SET coalesced = coalesced + 1, updated_at = now()
             FROM waiting w JOIN fresh f ON f.n = w.n JOIN ev ON ev.id = f.event_id
             WHERE sync_runs.id = w.id
             RETURNING sync_runs.id
           ), job AS (
             INSERT INTO jobs (binding_id, kind, sync_run_id) SELECT binding_id, 'sync_event', id FROM run
             RETURNING id, binding_id, sync_run_id, binding_id::text || ':' || id AS wake
           ), notified AS (
             -- One wake-up per job (identical notifications in a transaction are merged).
             SELECT count(*) AS n FROM (SELECT pg_notify($24, wake) FROM job WHERE $23) x
           )
           SELECT i.n AS "n!",
                  EXISTS (SELECT 1 FROM current_key c WHERE c.n = i.n) AS "key_current!",
                  (SELECT o.nth FROM over_quota o WHERE o.n = i.n) AS over_hits,
                  (SELECT o.retry_after FROM over_quota o WHERE o.n = i.n) AS over_retry_after,
                  EXISTS (SELECT 1 FROM j WHERE j.binding_id = i.binding_id AND j.jti = i.jti) AS "fresh_token!",
                  COALESCE((SELECT r.id FROM run r WHERE r.id = i.run_id),
                           (SELECT w.id FROM waiting w JOIN ev ON ev.id = i.event_id WHERE w.n = i.n)) AS run_id,
                  EXISTS (SELECT 1 FROM waiting w JOIN ev ON ev.id = i.event_id WHERE w.n = i.n AND w.id IS NOT NULL) AS "folded!",
                  (SELECT jb.wake FROM job jb WHERE jb.sync_run_id = i.run_id AND NOT $23) AS wake,
                  (SELECT n FROM notified) AS "notified!"
           FROM input i ORDER BY i.n"#,
        &c.event_ids,
        &c.bindings,
        &c.names,
        &c.keys,
        &c.entities,
        &c.websites,
        &c.stores,
        &c.occurred as &[Option<chrono::DateTime<chrono::Utc>>],
        &c.bodies,
        &c.run_ids,
        &c.jtis,
        &c.jti_expiries,
        &c.entity_types,
        &c.shas,
        &c.request_ids as &[Option<String>],
        &c.traceparents as &[Option<String>],
        &c.trace_ids as &[Option<String>],
        &c.key_checks as &[Option<Vec<u8>>],
        &c.quota_keys as &[Option<String>],
        &c.quota_limits,
        INGEST_QUOTA_BUCKET,
        INGEST_QUOTA_WINDOW.as_secs_f64(),
        wake == Wake::InTransaction,
        crate::CHANNEL,
    )
    .fetch_all(&mut *conn)
    .await?;
    if rows.len() != events.len() {
        return Err(sqlx::Error::Protocol(format!(
            "the insert answered {} rows for {} events",
            rows.len(),
            events.len()
        )));
    }
    Ok(rows
        .into_iter()
        .map(|r| Persisted {
            key_current: r.key_current,
            over_quota: r.over_hits.map(|hits| {
                (
                    hits,
                    r.over_retry_after.and_then(|s| u32::try_from(s).ok()).unwrap_or(1),
                )
            }),
            fresh_token: r.fresh_token,
            run_id: r.run_id,
            folded: r.folded,
            wake: r.wake,
        })
        .collect())
}

/// The group's columns, one array each.
#[derive(Default)]
struct Columns {
    event_ids: Vec<uuid::Uuid>,
    run_ids: Vec<uuid::Uuid>,
    bindings: Vec<uuid::Uuid>,
    names: Vec<String>,
    keys: Vec<String>,
    entities: Vec<i64>,
    websites: Vec<i64>,
    stores: Vec<i64>,
    occurred: Vec<Option<chrono::DateTime<chrono::Utc>>>,
    bodies: Vec<Value>,
    jtis: Vec<String>,
    jti_expiries: Vec<f64>,
    entity_types: Vec<String>,
    shas: Vec<Vec<u8>>,
    request_ids: Vec<Option<String>>,
    traceparents: Vec<Option<String>>,
    trace_ids: Vec<Option<String>>,
    key_checks: Vec<Option<Vec<u8>>>,
    quota_keys: Vec<Option<String>>,
    quota_limits: Vec<i64>,
}

/// A repeated event (the same key with the same bytes): counted on the stored event, and
/// its original run — its own, or the waiting run it was folded into (events folded
/// before that was recorded: the entity's latest run, which read the store after the
/// event). `None` when no event has that key and body.
pub async fn repeat(
    db: &sqlx::PgPool,
    binding_id: BindingId,
    idempotency_key: &str,
    body_sha256: &[u8],
) -> Result<Option<uuid::Uuid>, sqlx::Error> {
    Ok(sqlx::query_scalar!(
        r#"WITH e AS (
             UPDATE received_events SET duplicates = duplicates + 1
             WHERE binding_id = $1 AND idempotency_key = $2 AND body_sha256 = $3
             RETURNING id, folded_into, event_name, magento_entity_id
           )
           SELECT COALESCE(
             (SELECT r.id FROM sync_runs r JOIN e ON r.event_id = e.id ORDER BY r.created_at LIMIT 1),
             (SELECT folded_into FROM e),
             (SELECT r.id FROM sync_runs r JOIN e ON r.binding_id = $1 AND r.event_name = e.event_name
                AND r.magento_entity_id = e.magento_entity_id ORDER BY r.created_at DESC LIMIT 1)
           ) AS id FROM e"#,
        binding_id.0,
        idempotency_key,
        body_sha256,
    )
    .fetch_optional(db)
    .await?
    .flatten())
}

/// Retention: empties the bodies of up to `batch` events received more than
/// `older_than_secs` ago (the event row, and so its idempotency key, stays).
pub async fn forget_event_bodies(db: &sqlx::PgPool, older_than_secs: f64, batch: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "UPDATE received_events SET body = '{}'::jsonb
             WHERE id IN (SELECT id FROM received_events
                          WHERE body <> '{}'::jsonb AND received_at < now() - make_interval(secs => $1)
                          LIMIT $2)",
        older_than_secs,
        batch
    )
    .execute(db)
    .await?
    .rows_affected())
}

/// Retention: deletes up to `batch` events older than `older_than_secs` that have no run
/// of their own (folded into another, or whose run went first).
pub async fn delete_events_without_run(
    db: &sqlx::PgPool,
    older_than_secs: f64,
    batch: i64,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM received_events WHERE id IN (
               SELECT e.id FROM received_events e
               WHERE e.received_at < now() - make_interval(secs => $1)
                 AND NOT EXISTS (SELECT 1 FROM sync_runs r WHERE r.event_id = e.id)
               LIMIT $2)",
        older_than_secs,
        batch
    )
    .execute(db)
    .await?
    .rows_affected())
}
