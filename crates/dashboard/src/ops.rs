//! The ops console (operators only): every tenant and binding with health, token state
//! and queue figures; queue depth over the last hour drawn on the page; dead letters
//! across tenants; search by tenant, binding or Magento entity id; pause/resume a
//! binding and refresh its Sage reference data — each recorded in the audit trail.

use askama::Template;
use axum::{
    extract::{Path, Query, State},
    response::{IntoResponse, Redirect, Response},
};
use ledger_core::{AppState, BindingId, Problem, audit::Actor};
use ledger_sage_sync::runs;
use serde::Deserialize;

use crate::{
    extract::{Button, CsrfForm, Operator},
    pages::{Nav, ago},
    render,
};

/// The store connection's state, with the store's clock when it is off.
pub fn with_clock(magento: String, skew: Option<i32>) -> String {
    match skew {
        Some(s) => format!(
            "{magento} · {}",
            ledger_tenant_binding::magento::clock_warning(i64::from(s))
        ),
        None => magento,
    }
}

pub struct OpsBinding {
    pub id: BindingId,
    pub tenant: String,
    pub owner: String,
    pub url: String,
    pub status: String,
    pub magento: String,
    pub sage: String,
    pub token: String,
    pub queued: i64,
    pub oldest: String,
    pub dead: i64,
    pub synced_hour: i64,
    pub pausable: bool,
    pub resumable: bool,
}

pub struct DeadRow {
    pub id: uuid::Uuid,
    pub binding: String,
    pub event: String,
    pub entity_id: i64,
    pub status: String,
    pub code: String,
    pub at: String,
}

/// One bar of the queue chart: finished runs per 5 minutes, as a height in pixels.
pub struct Bar {
    pub x: i64,
    pub height: i64,
    pub label: String,
}

#[derive(Template)]
#[template(path = "ops.html")]
struct OpsPage {
    nav: Nav,
    csrf_token: String,
    q: String,
    bindings: Vec<OpsBinding>,
    dead: Vec<DeadRow>,
    bars: Vec<Bar>,
    depth_bars: Vec<Bar>,
    age_bars: Vec<Bar>,
    total_queued: i64,
    notice: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct OpsQuery {
    q: Option<String>,
    done: Option<String>,
}

pub async fn console(
    State(state): State<AppState>,
    Operator(merchant): Operator,
    Query(query): Query<OpsQuery>,
) -> Result<Response, Problem> {
    let q = query.q.clone().unwrap_or_default().trim().to_owned();
    let entity: Option<i64> = q.parse().ok();
    let rows = sqlx::query!(
        r#"SELECT b.id AS "id: BindingId", b.tenant_id, b.magento_base_url, b.status, b.magento_connection_status,
                  b.store_clock_skew_secs, acc.email, c.status AS "sage_status?", c.business_name AS "business_name?", c.access_expires_at AS "access_expires_at?",
                  (SELECT count(*) FROM jobs j WHERE j.binding_id = b.id AND j.status IN ('queued', 'running', 'paused')) AS "queued!",
                  (SELECT min(j.created_at) FROM jobs j WHERE j.binding_id = b.id AND j.status IN ('queued', 'running', 'paused')) AS oldest,
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status = 'dead') AS "dead!",
                  (SELECT count(*) FROM sync_runs r WHERE r.binding_id = b.id AND r.status = 'synced' AND r.finished_at > now() - interval '1 hour') AS "synced_hour!"
           FROM connector_bindings b
           JOIN tenants t ON t.id = b.tenant_id
           JOIN accounts acc ON acc.id = t.account_id
           LEFT JOIN sage_connections c ON c.binding_id = b.id
           WHERE b.status <> 'pairing'
             AND ($1 = '' OR b.tenant_id::text = $1 OR b.id::text = $1 OR acc.email ILIKE '%' || $1 || '%'
                  OR ($2::bigint IS NOT NULL AND EXISTS (SELECT 1 FROM sync_runs r WHERE r.binding_id = b.id AND r.magento_entity_id = $2)))
           ORDER BY b.created_at DESC LIMIT 500"#,
        q,
        entity
    )
    .fetch_all(&state.db)
    .await?;
    let bindings: Vec<OpsBinding> = rows
        .into_iter()
        .map(|r| OpsBinding {
            id: r.id,
            tenant: r.tenant_id.to_string(),
            owner: r.email,
            url: r.magento_base_url,
            pausable: r.status == "active",
            resumable: r.status == "paused",
            status: r.status,
            magento: with_clock(r.magento_connection_status, r.store_clock_skew_secs),
            sage: match (r.sage_status, r.business_name) {
                (Some(s), Some(b)) => format!("{s} · {b}"),
                (Some(s), None) => s,
                _ => "not connected".to_owned(),
            },
            token: r
                .access_expires_at
                .map(|at| {
                    let secs = (at - chrono::Utc::now()).num_seconds();
                    if secs > 0 {
                        format!("access token valid {secs} s")
                    } else {
                        "access token expired (refreshed on next call)".to_owned()
                    }
                })
                .unwrap_or_default(),
            queued: r.queued,
            oldest: if r.oldest.is_some() {
                ago(r.oldest)
            } else {
                String::new()
            },
            dead: r.dead,
            synced_hour: r.synced_hour,
        })
        .collect();
    let dead = sqlx::query!(
        r#"SELECT r.id, r.binding_id, e.event_name, e.magento_entity_id, r.status, r.error_code, r.updated_at
           FROM sync_runs r JOIN received_events e ON e.id = r.event_id
           WHERE r.status IN ('dead', 'failed')
             AND ($1 = '' OR r.binding_id::text = $1 OR ($2::bigint IS NOT NULL AND e.magento_entity_id = $2)
                  OR EXISTS (SELECT 1 FROM connector_bindings b WHERE b.id = r.binding_id AND b.tenant_id::text = $1))
           ORDER BY r.updated_at DESC LIMIT 50"#,
        q,
        entity
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|r| DeadRow {
        id: r.id,
        binding: r.binding_id.to_string(),
        event: r.event_name,
        entity_id: r.magento_entity_id,
        status: r.status,
        code: r.error_code.unwrap_or_default(),
        at: r.updated_at.format("%Y-%m-%d %H:%M:%S").to_string(),
    })
    .collect();
    // Throughput: runs finished per 5 minutes over the last hour (12 bars).
    let buckets = sqlx::query!(
        r#"SELECT (extract(epoch FROM now() - finished_at)::bigint / 300) AS "bucket!", count(*) AS "n!"
           FROM sync_runs WHERE finished_at > now() - interval '1 hour' GROUP BY 1"#
    )
    .fetch_all(&state.db)
    .await?;
    // Queue depth and the oldest waiting run's age at the end of each 5 minutes,
    // reconstructed from the runs' own timestamps (no separate sampling needed). Only
    // runs unfinished now or finished within the hour can have been waiting then: two
    // index range scans (`sync_runs_finished` holds the NULLs too), never the history.
    let depth = sqlx::query!(
        r#"WITH open AS (
             SELECT created_at, finished_at FROM sync_runs WHERE finished_at IS NULL
             UNION ALL
             SELECT created_at, finished_at FROM sync_runs WHERE finished_at > now() - interval '1 hour'
           )
           SELECT g.i AS "i!", count(o.created_at) AS "depth!",
                  extract(epoch FROM g.t - min(o.created_at))::bigint AS age
           FROM (SELECT i, now() - make_interval(mins => 5 * (11 - i)) AS t FROM generate_series(0, 11) i) g
           LEFT JOIN open o ON o.created_at <= g.t AND (o.finished_at IS NULL OR o.finished_at > g.t)
           GROUP BY g.i, g.t
           ORDER BY g.i"#
    )
    .fetch_all(&state.db)
    .await?;
    let scale = |values: Vec<(i64, String)>| -> Vec<Bar> {
        let max = values.iter().map(|(v, _)| *v).max().unwrap_or(0).max(1);
        values
            .into_iter()
            .enumerate()
            .map(|(i, (v, label))| Bar {
                x: i64::try_from(i).unwrap_or(0) * 22,
                height: v * 80 / max,
                label,
            })
            .collect()
    };
    let minutes = |i: i32| 5 * (11 - i);
    let depth_bars = scale(
        depth
            .iter()
            .map(|d| (d.depth, format!("{} waiting {} min ago", d.depth, minutes(d.i))))
            .collect(),
    );
    let age_bars = scale(
        depth
            .iter()
            .map(|d| {
                let age = d.age.unwrap_or(0).max(0);
                (age, format!("oldest waiting {age} s, {} min ago", minutes(d.i)))
            })
            .collect(),
    );
    let max = buckets.iter().map(|b| b.n).max().unwrap_or(0).max(1);
    let bars = (0..12_i64)
        .map(|i| {
            let bucket = 11 - i;
            let n = buckets.iter().find(|b| b.bucket == bucket).map_or(0, |b| b.n);
            Bar {
                x: i * 22,
                height: n * 80 / max,
                label: format!("{n} runs finished {}–{} min ago", bucket * 5 + 5, bucket * 5),
            }
        })
        .collect();
    Ok(render(&OpsPage {
        nav: Nav::of(&merchant),
        csrf_token: merchant.csrf_token().to_owned(),
        q,
        total_queued: bindings.iter().map(|b| b.queued).sum(),
        bindings,
        dead,
        bars,
        depth_bars,
        age_bars,
        notice: query.done,
    }))
}

/// `pause`, `resume` or `refresh-reference` on one binding.
pub async fn action(
    State(state): State<AppState>,
    Path((binding_id, verb)): Path<(BindingId, String)>,
    CsrfForm(Operator(merchant), _): CsrfForm<Operator, Button>,
) -> Result<Response, Problem> {
    let actor = Actor::Operator(merchant.account_id.0);
    let done = match verb.as_str() {
        "pause" => runs::pause_binding(&state, binding_id, actor)
            .await?
            .then_some("paused")
            .ok_or_else(|| Problem::conflict("binding_not_active", "Only an active binding can be paused."))?,
        "resume" => runs::resume_binding(&state, binding_id, actor)
            .await?
            .then_some("resumed")
            .ok_or_else(|| Problem::conflict("binding_not_paused", "Only a paused binding can be resumed."))?,
        "refresh-token" => {
            use ledger_sage_vault::tokens::{self, VaultError};
            let problem = |e: VaultError| match e {
                VaultError::NotConnected | VaultError::NeedsReauth => Problem::conflict(
                    "token_refresh_impossible",
                    format!("{e}; the merchant must connect Sage again."),
                ),
                other => Problem::unavailable("token_refresh_failed", other.to_string(), 30),
            };
            let current = tokens::access_token(&state, binding_id).await.map_err(problem)?;
            tokens::after_unauthorized(&state, binding_id, &current)
                .await
                .map_err(problem)?;
            let tenant = sqlx::query_scalar!(
                r#"SELECT tenant_id AS "tenant_id: ledger_core::TenantId" FROM connector_bindings WHERE id = $1"#,
                binding_id.0
            )
            .fetch_optional(&state.db)
            .await?;
            let mut tx = state.db.begin().await?;
            ledger_core::audit::record(
                &mut tx,
                ledger_core::audit::Entry {
                    actor,
                    tenant_id: tenant,
                    binding_id: Some(binding_id),
                    action: "sage.token_refreshed",
                    details: serde_json::json!({ "forced": true }),
                    request_id: None,
                },
            )
            .await?;
            tx.commit().await?;
            "token refreshed"
        }
        "refresh-reference" => {
            ledger_sage_vault::reference::refresh(&state, binding_id)
                .await
                .map_err(|e| {
                    Problem::unavailable("reference_refresh_failed", format!("Sage did not answer: {e}"), 30)
                })?;
            "reference data refreshed"
        }
        _ => {
            return Err(Problem::not_found(
                "unknown_action",
                "Use pause, resume or refresh-reference.",
            ));
        }
    };
    Ok(Redirect::to(&format!("/ops?done={}", done.replace(' ', "+"))).into_response())
}
