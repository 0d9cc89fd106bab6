//! Every call to Sage for a binding goes through a [`Session`]: it attaches the access
//! token and `X-Business`, spends the business's call budget first, refreshes once on a
//! token 401, marks a lapsed subscription, and counts calls and 429s for metrics.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId};
use ledger_sage_api::{Auth, SageApi, SageError};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::tokens::{self, AccessToken, VaultError};

/// Why a call could not be made or failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CallError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Sage(#[from] SageError),
    /// The business's budget is spent until the given time (nothing was sent).
    #[error("the Sage call budget for this business is spent until {0}")]
    BudgetSpent(DateTime<Utc>),
}

impl From<sqlx::Error> for CallError {
    fn from(e: sqlx::Error) -> Self {
        Self::Vault(e.into())
    }
}

/// The per-business budget: at most `limit` calls in any `window`, across every process.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub limit: i64,
    pub window: Duration,
}

impl Budget {
    pub fn from_settings(s: &ledger_core::Settings) -> Self {
        Self {
            limit: i64::from(s.sage_call_budget),
            window: s.sage_call_window,
        }
    }

    /// Takes one call from `business`'s budget (its log entry's id), or says when the
    /// next one frees. Exact for any window: a sliding log of calls, serialised by the
    /// business's row.
    ///
    /// `settle`: a previous call whose answer is in, settled in the same round trip.
    pub async fn acquire(
        &self,
        db: &sqlx::PgPool,
        business: &str,
        settle: Option<i64>,
    ) -> Result<Result<i64, DateTime<Utc>>, sqlx::Error> {
        let taken = sqlx::query!(
            "SELECT call_id, free_at FROM ledger_budget_acquire($1, $2, $3, $4)",
            business,
            self.window.as_secs_f64(),
            self.limit,
            settle,
        )
        .fetch_one(db)
        .await?;
        Ok(match (taken.call_id, taken.free_at) {
            (Some(id), _) => Ok(id),
            (None, free_at) => Err(free_at.unwrap_or_else(Utc::now)),
        })
    }

    /// Moves a call's log entry to now, once its answer is in: Sage saw the call at some
    /// point before, so the window counted from here covers Sage's own window for it
    /// whatever the network delays.
    pub async fn settle(&self, db: &sqlx::PgPool, call: i64) -> Result<(), sqlx::Error> {
        sqlx::query_scalar!("SELECT ledger_budget_settle($1)", call)
            .fetch_one(db)
            .await?;
        Ok(())
    }

    /// Holds every call to `business` until `until` (Sage said 429 anyway: someone else
    /// uses the business too, or its limit is lower than ours).
    pub async fn block(&self, db: &sqlx::PgPool, business: &str, until: DateTime<Utc>) -> Result<(), sqlx::Error> {
        sqlx::query!(
            "INSERT INTO sage_budgets (business_id, blocked_until) VALUES ($1, $2)
             ON CONFLICT (business_id) DO UPDATE SET blocked_until = GREATEST(sage_budgets.blocked_until, $2)",
            business,
            until
        )
        .execute(db)
        .await?;
        Ok(())
    }

    /// Deletes call records older than the window.
    pub async fn prune(&self, db: &sqlx::PgPool) -> Result<u64, sqlx::Error> {
        let window = self.window.as_secs_f64();
        Ok(sqlx::query!(
            "DELETE FROM sage_calls WHERE at < clock_timestamp() - make_interval(secs => $1)",
            window
        )
        .execute(db)
        .await?
        .rows_affected())
    }
}

#[derive(Debug, Clone, Copy)]
enum Request<'a> {
    Get(&'a str),
    Post(&'a str, &'a Value),
    Put(&'a str, &'a Value),
    Delete(&'a str),
}

/// One Sage call as the run history shows it: no query strings and no personal data,
/// just what was called, what the ledger sent (redacted) and how it went.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CallSummary {
    pub method: &'static str,
    pub route: String,
    /// `ok`, or the error kind (`rejected`, `rate_limited`, ...).
    pub outcome: &'static str,
    /// Sage's error codes and fields when it refused, e.g. `RecordInvalid: reference`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    pub ms: u64,
    /// A POST's or PUT's body with names, addresses and contact details blanked, so the
    /// run page can show what changed between attempts (the payload diff).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// Keys whose values identify a person: blanked in recorded bodies.
const PERSONAL: &[&str] = &[
    "name",
    "contact_name",
    "contact_persons",
    "main_address",
    "delivery_address",
    "address",
    "address_line_1",
    "address_line_2",
    "email",
    "telephone",
    "mobile",
    "notes",
];

/// `body` with every personal value replaced by `"[redacted]"` (structure kept, so a diff
/// still shows that an address was sent).
pub fn redact(body: &Value) -> Value {
    match body {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let v = if PERSONAL.contains(&k.as_str()) && !v.is_null() {
                        Value::String("[redacted]".into())
                    } else {
                        redact(v)
                    };
                    (k.clone(), v)
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        other => other.clone(),
    }
}

/// Collects a run's call summaries, whichever way the run ends, and its last budget
/// entry still to settle.
#[derive(Debug, Clone, Default)]
pub struct CallLog(std::sync::Arc<std::sync::Mutex<Recorded>>);

#[derive(Debug, Default)]
struct Recorded {
    calls: Vec<CallSummary>,
    unsettled: Option<i64>,
}

impl CallLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, call: CallSummary) {
        self.lock().calls.push(call);
    }

    /// Everything recorded so far, emptying the log.
    pub fn take(&self) -> Vec<CallSummary> {
        std::mem::take(&mut self.lock().calls)
    }

    /// The run's last call to Sage, whose budget entry the caller settles when it records
    /// the run (`UPDATE sage_calls SET at = clock_timestamp() WHERE id = ...`). Until
    /// then the entry counts from before the call was sent; if it is never settled, the
    /// budget may let one call too many through at the window's edge, and Sage's 429
    /// holds the business.
    pub fn take_unsettled(&self) -> Option<i64> {
        self.lock().unsettled.take()
    }
}

/// A binding's connection to its Sage business.
#[derive(Debug)]
pub struct Session<'a> {
    state: &'a AppState,
    binding: BindingId,
    api: SageApi,
    token: AccessToken,
    budget: Budget,
    /// Wait for budget instead of failing with `BudgetSpent` (reference refreshes).
    wait_for_budget: bool,
    /// While recording, a call's budget entry waits in the log: settled with the next
    /// acquire, or by the log's owner ([`CallLog::take_unsettled`]).
    log: Option<CallLog>,
    /// A budget entry the caller took in its own statement ([`Session::spend_with`]),
    /// used by the next call instead of taking one.
    spent: Option<i64>,
}

/// What a caller needs to take a call's budget entry in a statement of its own, with a
/// write that must precede the call (one round trip for both): see
/// [`Session::spend_with`].
#[derive(Debug, Clone)]
pub struct Spend {
    pub business: String,
    pub window_secs: f64,
    pub limit: i64,
    /// The previous call's entry, to settle in the same statement.
    pub settle: Option<i64>,
}

impl<'a> Session<'a> {
    pub async fn open(state: &'a AppState, binding: BindingId) -> Result<Self, CallError> {
        Self::open_at(state, binding, None).await
    }

    /// [`Session::open`], refusing this process's cached token unless it is of
    /// `version` (the connection's version as just read): after a reconnect in another
    /// process — perhaps to a different business — no call uses the old token.
    pub async fn open_at(state: &'a AppState, binding: BindingId, version: Option<i64>) -> Result<Self, CallError> {
        let token = tokens::access_token_of_version(state, binding, version).await?;
        Ok(Self {
            state,
            binding,
            api: SageApi::clone(&SageApi::of(state)),
            token,
            budget: Budget::from_settings(&state.settings),
            wait_for_budget: false,
            log: None,
            spent: None,
        })
    }

    /// Waits for the budget rather than failing (interactive refreshes).
    pub fn waiting(mut self) -> Self {
        self.wait_for_budget = true;
        self
    }

    /// Records a summary of every call into `log`, and leaves the last call's budget
    /// entry for the log's owner to settle.
    pub fn recording(mut self, log: &CallLog) -> Self {
        self.log = Some(log.clone());
        self
    }

    pub fn business_id(&self) -> Option<&str> {
        self.token.business_id.as_deref()
    }

    /// For a caller that takes the next call's budget entry itself: the budget's terms
    /// and the entry to settle (taken from the log). `None` when calls spend no budget
    /// (no business yet) or the session waits for budget: take it the usual way.
    pub fn spend_request(&self) -> Option<Spend> {
        let business = self.token.business_id.clone().filter(|_| !self.wait_for_budget)?;
        Some(Spend {
            business,
            window_secs: self.budget.window.as_secs_f64(),
            limit: self.budget.limit,
            settle: self.log.as_ref().and_then(CallLog::take_unsettled),
        })
    }

    /// Hands the budget entry the caller took (on [`Session::spend_request`]'s terms) to
    /// the next call.
    pub fn spend_with(&mut self, call: i64) {
        self.spent = Some(call);
    }

    async fn spend(&mut self) -> Result<Option<i64>, CallError> {
        let Some(business) = self.token.business_id.clone() else {
            return Ok(None);
        };
        if let Some(call) = self.spent.take() {
            metrics::counter!("sage_calls_total", "business" => business).increment(1);
            return Ok(Some(call));
        }
        loop {
            let settle = self.log.as_ref().and_then(CallLog::take_unsettled);
            match self.budget.acquire(&self.state.db, &business, settle).await? {
                Ok(call) => {
                    metrics::counter!("sage_calls_total", "business" => business.clone()).increment(1);
                    return Ok(Some(call));
                }
                Err(free_at) if self.wait_for_budget => {
                    let wait = (free_at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::sleep(wait.min(Duration::from_secs(60)) + Duration::from_millis(5)).await;
                }
                Err(free_at) => return Err(CallError::BudgetSpent(free_at)),
            }
        }
    }

    async fn run<T: DeserializeOwned>(&mut self, request: Request<'_>) -> Result<T, CallError> {
        let mut retried = false;
        loop {
            let call = self.spend().await?;
            let auth = Auth {
                access_token: &self.token.token,
                business_id: self.token.business_id.as_deref(),
            };
            let started = std::time::Instant::now();
            let (method, path, result) = match request {
                Request::Get(path) => ("GET", path, self.api.get(auth, path).await),
                Request::Post(path, body) => ("POST", path, self.api.post(auth, path, body).await),
                Request::Put(path, body) => ("PUT", path, self.api.put(auth, path, body).await),
                Request::Delete(path) => (
                    "DELETE",
                    path,
                    self.api.delete(auth, path).await.and_then(|()| {
                        serde_json::from_value(Value::Null)
                            .map_err(|e| SageError::BadResponse { reason: e.to_string() })
                    }),
                ),
            };
            match (call, &self.log) {
                (Some(call), Some(log)) => log.lock().unsettled = Some(call),
                (Some(call), None) => self.budget.settle(&self.state.db, call).await?,
                (None, _) => {}
            }
            if let Some(log) = &self.log {
                let errors = match &result {
                    Err(SageError::Rejected { errors, .. }) => errors
                        .iter()
                        .map(|e| format!("{}: {}", e.data_code, e.source))
                        .collect(),
                    _ => Vec::new(),
                };
                log.push(CallSummary {
                    method,
                    route: ledger_sage_api::route_of(path),
                    outcome: result.as_ref().map_or_else(SageError::kind, |_| "ok"),
                    errors,
                    ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
                    body: match request {
                        Request::Post(_, body) | Request::Put(_, body) => Some(redact(body)),
                        Request::Get(_) | Request::Delete(_) => None,
                    },
                });
            }
            match result {
                Err(SageError::TokenRejected(_)) if !retried => {
                    retried = true;
                    self.token = tokens::after_unauthorized(self.state, self.binding, &self.token).await?;
                }
                Err(SageError::SubscriptionLapsed(e)) => {
                    tokens::mark_subscription_lapsed(self.state, self.binding).await?;
                    return Err(SageError::SubscriptionLapsed(e).into());
                }
                Err(SageError::RateLimited { retry_after }) => {
                    let business = self.token.business_id.clone().unwrap_or_default();
                    metrics::counter!("sage_rate_limited_total", "business" => business.clone()).increment(1);
                    let wait = retry_after.unwrap_or(60).clamp(1, 3600);
                    let until = Utc::now() + chrono::Duration::seconds(i64::try_from(wait).unwrap_or(60));
                    self.budget.block(&self.state.db, &business, until).await?;
                    return Err(SageError::RateLimited { retry_after }.into());
                }
                other => return other.map_err(Into::into),
            }
        }
    }

    pub async fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, CallError> {
        self.run(Request::Get(path)).await
    }

    pub async fn post<T: DeserializeOwned>(&mut self, path: &str, body: &Value) -> Result<T, CallError> {
        self.run(Request::Post(path, body)).await
    }

    pub async fn put<T: DeserializeOwned>(&mut self, path: &str, body: &Value) -> Result<T, CallError> {
        self.run(Request::Put(path, body)).await
    }

    pub async fn delete(&mut self, path: &str) -> Result<(), CallError> {
        self.run(Request::Delete(path)).await
    }

    /// Every page of a list; each page is one call against the budget.
    pub async fn list_all(&mut self, path: &str) -> Result<Vec<Value>, CallError> {
        let separator = if path.contains('?') { '&' } else { '?' };
        let mut next = Some(format!("{path}{separator}items_per_page={}", ledger_sage_api::MAX_PAGE));
        let mut items = Vec::new();
        while let Some(page_path) = next.take() {
            let page: ledger_sage_api::Page<Value> = self.get(&page_path).await?;
            items.extend(page.items);
            next = page.next.filter(|n| !n.is_empty());
        }
        Ok(items)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::redact;

    #[test]
    fn recorded_bodies_keep_accounting_fields_and_blank_personal_ones() {
        let body = json!({ "sales_invoice": {
            "contact_id": "c1", "reference": "INV-7", "contact_name": "Ada Lovelace", "notes": "leave at door",
            "main_address": { "address_line_1": "1 High St", "postal_code": "N1 1AA" },
            "delivery_address": null,
            "invoice_lines": [{ "description": "Widget", "ledger_account_id": "4000", "unit_price": "9.99" }]
        }, "contact": { "name": "Ada", "email": "ada@example.com", "telephone": "0123", "tax_number": "GB1" } });
        let r = redact(&body);
        let inv = &r["sales_invoice"];
        assert_eq!(inv["contact_name"], "[redacted]");
        assert_eq!(inv["notes"], "[redacted]");
        assert_eq!(inv["main_address"], "[redacted]");
        assert!(inv["delivery_address"].is_null(), "nothing sent stays nothing");
        assert_eq!(inv["reference"], "INV-7");
        assert_eq!(inv["invoice_lines"][0]["ledger_account_id"], "4000");
        assert_eq!(inv["invoice_lines"][0]["description"], "Widget");
        assert_eq!(r["contact"]["email"], "[redacted]");
        assert_eq!(r["contact"]["telephone"], "[redacted]");
        assert_eq!(r["contact"]["tax_number"], "GB1");
        let text = r.to_string();
        for secret in ["Ada", "High St", "ada@example.com", "0123", "leave at door"] {
            assert!(!text.contains(secret), "{secret} leaked: {text}");
        }
    }
}
