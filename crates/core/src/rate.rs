//! Fixed-window counters in Postgres, shared by every process: sign-in and sign-up
//! throttles, connect limits, per-binding ingest quotas.
//!
//! A hit is counted before the work it guards (hashing a password, calling a store), in
//! one upsert serialised by the row lock, so parallel attempts cannot all slip under
//! the limit. Keys are stored as SHA-256, never as the email or address itself.

use std::time::Duration;

/// What one hit saw.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    /// Hits in the current window, this one included.
    pub hits: i64,
    /// Seconds until the window ends.
    pub window_left: Duration,
    /// Time since the hit before this one (`None` for the first).
    pub since_previous: Option<Duration>,
}

impl Hit {
    /// Over `limit`: the caller refuses, saying when to come back.
    pub fn exceeds(&self, limit: i64) -> bool {
        self.hits > limit
    }

    /// Whole seconds to wait for the window to end (at least 1).
    pub fn retry_after(&self) -> u32 {
        (self.window_left.as_secs_f64().ceil() as u32).max(1)
    }
}

fn hashed(key: &str) -> String {
    hex::encode(crate::crypto::sha256(key.as_bytes()))
}

/// `key` as `rate_counters.key` stores it, for a hot-path statement that counts hits
/// along with its own writes (the ingest's, `ledger_jobs::accept`).
pub fn stored_key(key: &str) -> String {
    hashed(key)
}

/// Counts one hit on `bucket`/`key` in a window of `window`.
pub async fn hit<'e>(
    db: impl sqlx::PgExecutor<'e>,
    bucket: &str,
    key: &str,
    window: Duration,
) -> Result<Hit, sqlx::Error> {
    hit_many(db, bucket, &[key.to_owned()], &[1], window)
        .await?
        .pop()
        .ok_or_else(|| sqlx::Error::Protocol(format!("no counter returned for {bucket}")))
}

/// Counts `counts[i]` hits on `bucket`/`keys[i]` each, in one statement (a group of
/// requests at once); each answer is as [`hit`] would give for the last of them. Rows
/// are locked in one order, so concurrent groups cannot deadlock on them.
pub async fn hit_many<'e>(
    db: impl sqlx::PgExecutor<'e>,
    bucket: &str,
    keys: &[String],
    counts: &[i64],
    window: Duration,
) -> Result<Vec<Hit>, sqlx::Error> {
    count(db, bucket, keys, counts, window, true).await
}

/// [`hit_many`] in a commit of its own that does not wait for the WAL flush, so a hot
/// counter row is locked for the statement only, not for a disk write: for counters
/// that guard load rather than security (a Postgres crash may forget the last few
/// hundred milliseconds of hits). Run it on the pool or on a connection outside any
/// transaction: inside one, it would make that transaction's commit lazy too.
pub async fn hit_many_unflushed<'e>(
    db: impl sqlx::PgExecutor<'e>,
    bucket: &str,
    keys: &[String],
    counts: &[i64],
    window: Duration,
) -> Result<Vec<Hit>, sqlx::Error> {
    count(db, bucket, keys, counts, window, false).await
}

async fn count<'e>(
    db: impl sqlx::PgExecutor<'e>,
    bucket: &str,
    keys: &[String],
    counts: &[i64],
    window: Duration,
    flush: bool,
) -> Result<Vec<Hit>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(Vec::new());
    }
    let hashed_keys: Vec<String> = keys.iter().map(|k| hashed(k)).collect();
    let rows = sqlx::query!(
        r#"INSERT INTO rate_counters AS c (bucket, key, window_start, hits, last_at)
           SELECT $1, k, now(), n, now() FROM unnest($2::text[], $3::int8[]) AS t(k, n),
             -- Local to this statement's own transaction (see hit_many_unflushed).
             (SELECT CASE WHEN NOT $5::bool THEN set_config('synchronous_commit', 'off', true) END) AS lazy
           ORDER BY k
           ON CONFLICT (bucket, key) DO UPDATE SET
             hits = CASE WHEN c.window_start <= now() - make_interval(secs => $4) THEN EXCLUDED.hits ELSE c.hits + EXCLUDED.hits END,
             window_start = CASE WHEN c.window_start <= now() - make_interval(secs => $4) THEN now() ELSE c.window_start END,
             previous_at = c.last_at,
             last_at = now()
           RETURNING key, hits::int8 AS "hits!",
             GREATEST(EXTRACT(EPOCH FROM window_start + make_interval(secs => $4) - now()), 0)::float8 AS "window_left!",
             EXTRACT(EPOCH FROM now() - previous_at)::float8 AS since_previous"#,
        bucket,
        &hashed_keys,
        counts,
        window.as_secs_f64(),
        flush,
    )
    .fetch_all(db)
    .await?;
    hashed_keys
        .iter()
        .map(|k| {
            rows.iter()
                .find(|r| &r.key == k)
                .map(|r| Hit {
                    hits: r.hits,
                    window_left: Duration::from_secs_f64(r.window_left),
                    since_previous: r.since_previous.map(|s| Duration::from_secs_f64(s.max(0.0))),
                })
                .ok_or_else(|| sqlx::Error::Protocol(format!("no counter returned for {bucket}")))
        })
        .collect()
}

/// Takes the last hit back (work that turned out not to count: a successful sign-in,
/// an attempt refused without being tried), its time included.
pub async fn undo<'e>(db: impl sqlx::PgExecutor<'e>, bucket: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE rate_counters SET hits = GREATEST(hits - 1, 0), last_at = COALESCE(previous_at, last_at)
         WHERE bucket = $1 AND key = $2",
        bucket,
        hashed(key)
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Forgets `bucket`/`key` entirely.
pub async fn reset<'e>(db: impl sqlx::PgExecutor<'e>, bucket: &str, key: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "DELETE FROM rate_counters WHERE bucket = $1 AND key = $2",
        bucket,
        hashed(key)
    )
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes counters untouched for a day (housekeeping).
pub async fn prune(db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query!("DELETE FROM rate_counters WHERE last_at < now() - interval '1 day'")
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// The client's address: the TCP peer, or with `hops` trusted proxies in front, the
/// entry they appended to `X-Forwarded-For` (entries left of it are the client's own
/// claims). A request that did not come through the proxies keeps the peer.
pub fn client_ip(headers: &axum::http::HeaderMap, peer: std::net::IpAddr, hops: usize) -> std::net::IpAddr {
    if hops == 0 {
        return peer;
    }
    let entries: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    entries
        .len()
        .checked_sub(hops)
        .and_then(|i| entries.get(i))
        .and_then(|e| e.parse().ok())
        .unwrap_or(peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_is_what_the_trusted_proxy_appended() {
        let peer: std::net::IpAddr = "10.0.0.5".parse().unwrap();
        let mut headers = axum::http::HeaderMap::new();
        assert_eq!(client_ip(&headers, peer, 1), peer, "no header: the peer");
        headers.insert("x-forwarded-for", "6.6.6.6, 203.0.113.7".parse().unwrap());
        assert_eq!(client_ip(&headers, peer, 0), peer, "no proxies trusted");
        assert_eq!(client_ip(&headers, peer, 1).to_string(), "203.0.113.7");
        assert_eq!(client_ip(&headers, peer, 2).to_string(), "6.6.6.6");
        assert_eq!(client_ip(&headers, peer, 3), peer, "fewer entries than hops");
        headers.insert("x-forwarded-for", "garbage".parse().unwrap());
        assert_eq!(client_ip(&headers, peer, 1), peer);
    }
}
