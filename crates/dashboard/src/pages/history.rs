//! Sync history: runs, one run with its attempts, retries and resolutions.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;

pub struct RunRow {
    pub id: uuid::Uuid,
    pub event: String,
    pub entity_id: i64,
    pub status: String,
    pub reason: String,
    pub attempts: i32,
    pub created: String,
    pub took: String,
    pub sage: String,
    pub retryable: bool,
    /// Failed because Sage booked it with other totals: re-post or accept.
    pub held: bool,
}

pub(super) fn run_row(r: &runs::Run) -> RunRow {
    RunRow {
        id: r.sync_run_id,
        event: r.event_name.clone(),
        entity_id: r.magento_entity_id,
        status: r.status.clone(),
        reason: [
            r.error_class.as_deref(),
            r.error_code.as_deref().or(r.skip_reason.as_deref()),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" · "),
        attempts: r.attempts,
        created: r.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
        took: match (r.started_at, r.finished_at) {
            (Some(s), Some(f)) => format!("{} ms", (f - s).num_milliseconds().max(0)),
            _ => String::new(),
        },
        sage: r
            .sage_reference
            .clone()
            .or_else(|| r.sage_id.clone())
            .unwrap_or_default(),
        retryable: matches!(r.status.as_str(), "failed" | "dead" | "skipped_by_policy"),
        held: matches!(r.status.as_str(), "failed" | "dead")
            && matches!(r.error_code.as_deref(), Some("total_mismatch" | "void_refused"))
            && matches!(r.entity_type.as_str(), "invoice" | "creditmemo"),
    }
}

#[derive(Template)]
#[template(path = "runs.html")]
pub(super) struct RunsPage {
    pub(super) nav: Nav,
    pub(super) binding_id: BindingId,
    pub(super) magento_url: String,
    pub(super) csrf_token: String,
    pub(super) runs: Vec<RunRow>,
    pub(super) reason: String,
    pub(super) entity: String,
    pub(super) since: String,
    pub(super) statuses: Vec<Opt>,
    pub(super) dead: i64,
    pub(super) notice: Option<String>,
}

#[derive(Deserialize, Default)]
pub struct RunsQuery {
    pub(super) status: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) entity: Option<String>,
    pub(super) since: Option<String>,
    pub(super) retried: Option<u64>,
}

pub async fn runs_page(
    State(state): State<AppState>,
    PageOwner {
        merchant, binding_id, ..
    }: PageOwner<ForHistory>,
    Query(q): Query<RunsQuery>,
) -> Result<Response, Problem> {
    let binding = binding_of(&state, binding_id).await?;
    let clean = |v: &Option<String>| v.clone().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let filter = RunFilter {
        status: clean(&q.status),
        reason: clean(&q.reason),
        entity_id: clean(&q.entity).and_then(|e| e.parse().ok()),
        since: clean(&q.since)
            .and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok())
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|d| d.and_utc()),
        limit: Some(200),
    };
    let list = runs::list(&state.db, binding_id, &filter).await?;
    let dead = sqlx::query_scalar!(
        r#"SELECT count(*) AS "n!" FROM sync_runs WHERE binding_id = $1 AND status IN ('dead', 'failed')"#,
        binding_id.0
    )
    .fetch_one(&state.db)
    .await?;
    Ok(render(&RunsPage {
        nav: Nav::of(&merchant),
        binding_id,
        magento_url: binding.magento_base_url,
        csrf_token: merchant.csrf_token().to_owned(),
        runs: list.iter().map(run_row).collect(),
        reason: filter.reason.unwrap_or_default(),
        entity: clean(&q.entity).unwrap_or_default(),
        since: clean(&q.since).unwrap_or_default(),
        statuses: ["pending", "running", "synced", "skipped_by_policy", "failed", "dead"]
            .into_iter()
            .map(|v| Opt {
                value: v.to_owned(),
                label: v.to_owned(),
                selected: filter.status.as_deref() == Some(v),
            })
            .collect(),
        dead,
        notice: q.retried.map(|n| format!("{n} run(s) queued again.")),
    }))
}

pub struct AttemptRow {
    pub attempt: i32,
    pub started: String,
    pub took: String,
    pub outcome: String,
    pub code: String,
    pub message: String,
    pub calls: String,
}

/// One body the ledger sent Sage in one attempt, compared with the last attempt that
/// made the same call.
pub struct SentBody {
    pub attempt: i32,
    pub call: String,
    pub outcome: String,
    pub note: String,
    pub lines: Vec<crate::diff::Line>,
}

/// The payload diff: every POST/PUT body of every attempt, each against the same call's
/// body in the attempt before it (an unchanged body is named, not repeated).
pub(super) fn sent_bodies(attempts: &[runs::Attempt]) -> Vec<SentBody> {
    let mut last: std::collections::HashMap<String, (i32, &serde_json::Value)> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for a in attempts {
        let calls = a.request.as_ref().and_then(|r| r["sage_calls"].as_array());
        for c in calls.into_iter().flatten() {
            let Some(body) = c.get("body").filter(|b| !b.is_null()) else {
                continue;
            };
            let call = format!(
                "{} {}",
                c["method"].as_str().unwrap_or_default(),
                c["route"].as_str().unwrap_or_default()
            );
            let (note, lines) = match last.get(&call) {
                None => ("First time this call was made.".to_owned(), crate::diff::plain(body)),
                Some((n, prev)) if *prev == body => (format!("Same body as attempt {n}."), Vec::new()),
                Some((n, prev)) => (
                    format!("Changed since attempt {n}: + added, - removed."),
                    crate::diff::json_lines(prev, body),
                ),
            };
            out.push(SentBody {
                attempt: a.attempt,
                call: call.clone(),
                outcome: c["outcome"].as_str().unwrap_or_default().to_owned(),
                note,
                lines,
            });
            last.insert(call, (a.attempt, body));
        }
    }
    out
}

#[derive(Template)]
#[template(path = "run.html")]
pub(super) struct RunPage {
    pub(super) nav: Nav,
    pub(super) binding_id: BindingId,
    pub(super) csrf_token: String,
    pub(super) run: RunRow,
    pub(super) message: String,
    pub(super) trace_id: String,
    pub(super) attempts: Vec<AttemptRow>,
    pub(super) sent: Vec<SentBody>,
    pub(super) payload: String,
    pub(super) notice: Option<String>,
}

#[derive(Deserialize)]
pub struct RunQuery {
    pub(super) retried: Option<String>,
}

pub async fn run_page(
    RunAccess {
        merchant, run: detail, ..
    }: RunAccess<action::ViewRuns>,
    Query(q): Query<RunQuery>,
) -> Result<Response, Problem> {
    let attempts = detail
        .attempts_detail
        .iter()
        .map(|a| AttemptRow {
            attempt: a.attempt,
            started: a.started_at.format("%Y-%m-%d %H:%M:%S").to_string(),
            took: format!("{} ms", (a.finished_at - a.started_at).num_milliseconds().max(0)),
            outcome: a.outcome.clone(),
            code: [a.error_class.as_deref(), a.error_code.as_deref()]
                .into_iter()
                .flatten()
                .collect::<Vec<_>>()
                .join(" · "),
            message: a.message.clone().unwrap_or_default(),
            calls: a
                .request
                .as_ref()
                .map(|r| r["sage_calls"].as_array().map_or(0, Vec::len))
                .map_or_else(String::new, |n| format!("{n} Sage call(s)")),
        })
        .collect();
    Ok(render(&RunPage {
        nav: Nav::of(&merchant),
        binding_id: detail.run.binding_id,
        csrf_token: merchant.csrf_token().to_owned(),
        message: detail.run.message.clone().unwrap_or_default(),
        trace_id: detail.run.trace_id.clone().unwrap_or_default(),
        run: run_row(&detail.run),
        attempts,
        sent: sent_bodies(&detail.attempts_detail),
        payload: detail
            .event
            .as_ref()
            .map(|e| serde_json::to_string_pretty(e).unwrap_or_default())
            .unwrap_or_default(),
        notice: q.retried.map(|_| "Queued again; reload to follow it.".to_owned()),
    }))
}

pub async fn run_retry(
    State(state): State<AppState>,
    Path(run): Path<uuid::Uuid>,
    CsrfForm(RunAccess { actor, .. }, _): CsrfForm<RunAccess<action::RetryRuns>, Button>,
) -> Result<Response, Problem> {
    if !runs::retry(&state, run, actor).await? {
        return Err(Problem::conflict(
            "run_not_retryable",
            "Only failed, dead or skipped runs can be retried; this one is pending, running or synced.",
        ));
    }
    Ok(Redirect::to(&format!("/dashboard/runs/{run}?retried=1")).into_response())
}

#[derive(Deserialize)]
pub struct ResolveForm {
    pub(super) csrf_token: String,
    /// `repost` or `accept`.
    pub(super) action: String,
}
csrf_forms!(ResolveForm);

/// The held document's buttons: void and post again, or accept it as it is in Sage.
pub async fn run_resolve(
    State(state): State<AppState>,
    Path(run): Path<uuid::Uuid>,
    CsrfForm(RunAccess { actor, .. }, form): CsrfForm<RunAccess<action::RetryRuns>, ResolveForm>,
) -> Result<Response, Problem> {
    let resolution = match form.action.as_str() {
        "repost" => runs::Resolution::Repost,
        "accept" => runs::Resolution::Accept,
        _ => {
            return Err(Problem::validation(vec![FieldError {
                field: "action".into(),
                code: "invalid".into(),
                message: "must be repost or accept".into(),
            }]));
        }
    };
    if !runs::resolve(&state, run, resolution, actor).await? {
        return Err(Problem::conflict(
            "run_not_held",
            "This run holds no document with a totals difference to resolve.",
        ));
    }
    Ok(Redirect::to(&format!("/dashboard/runs/{run}?retried=1")).into_response())
}

pub async fn retry_dead(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant, binding_id, ..
        },
        _,
    ): CsrfForm<PageOwner<ForHistory>, Button>,
) -> Result<Response, Problem> {
    let n = runs::retry_dead(&state, binding_id, Actor::Account(merchant.account_id.0)).await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/runs?retried={n}")).into_response())
}
