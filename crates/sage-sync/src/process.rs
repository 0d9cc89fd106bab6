//! Processing one sync run: read the entity back from the store, apply the binding's
//! policy, map it, and post it to Sage exactly once.
//!
//! Exactly once: an entity already in `entity_xref` is answered from there with no Sage
//! call; a post is recorded as `posting` (with its idempotency id) before it is sent;
//! after an uncertain outcome the next attempt looks the document up by reference before
//! posting again, and Sage's `idempotency_id` makes a repeat within 7 days return the
//! first result. After posting, Sage's own totals must equal Magento's to the cent.

use std::time::Duration;

use chrono::{DateTime, Utc};
use ledger_core::{AppState, BindingId, TenantId};
use ledger_jobs::EntityKey;
use ledger_magento_api::{
    MagentoClient, MagentoError, UrlPolicy, canonical::Contact, client::ErrorClass as MagentoClass, url::Url,
};
use ledger_sage_api::SageError;
use ledger_sage_vault::{
    session::{CallError, CallLog, Session},
    tokens::VaultError,
};
use ledger_tenant_binding::bindings;
use rust_decimal::Decimal;
use serde_json::{Value, json};

use crate::{
    mapping::{self, ContactKey, Ctx, Mapped, cents},
    outcome::{ErrorClass, Failure, Outcome},
    policy::{self, Settings},
    xref,
};

/// Everything about the run being processed.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: uuid::Uuid,
    pub binding: BindingId,
    pub tenant: TenantId,
    pub event_name: String,
    pub entity_type: String,
    pub entity_id: i64,
    pub created_at: DateTime<Utc>,
    pub policy: Option<Value>,
    pub magento_base_url: String,
    /// The webhook's W3C trace context, continued while syncing.
    pub traceparent: Option<String>,
    /// The store's api_key, still sealed (read with the run: one round trip fewer).
    pub sealed_api_key: SealedKey,
    /// The Sage connection's region, when Sage is connected.
    pub region: Option<String>,
    /// When the event happened in the store (the module's `occurred_at`): for
    /// `invoice.paid`, when the money was captured.
    pub occurred_at: Option<DateTime<Utc>>,
    /// The Sage business the binding posts to now ("" before one is chosen).
    pub business_id: String,
    /// The connection's token version now: a process's cached token of another version
    /// (e.g. from before a reconnect to a different business) is not used.
    pub token_version: Option<i64>,
    /// The store's clock skew as its requests last showed it (the ledger's tokens to it
    /// are dated by its clock).
    pub store_clock_skew: Option<i32>,
}

/// A sealed api_key; Debug never prints it, even encrypted.
#[derive(Clone)]
pub struct SealedKey(pub Option<Vec<u8>>);

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[sealed]")
    }
}

pub async fn load_run(db: &sqlx::PgPool, run: uuid::Uuid) -> Result<Option<RunInfo>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT r.id, r.binding_id AS "binding_id: BindingId", b.tenant_id AS "tenant_id: TenantId", r.event_name,
                  r.entity_type, r.magento_entity_id, r.created_at,
                  COALESCE(r.policy, (SELECT s.settings FROM binding_settings s WHERE s.binding_id = r.binding_id)) AS policy,
                  b.magento_base_url, r.traceparent,
                  b.api_key, sc.region AS "region?", e.occurred_at AS "occurred_at?",
                  COALESCE(sc.business_id, '') AS "business_id!", sc.token_version AS "token_version?",
                  b.store_clock_skew_secs
           FROM sync_runs r JOIN connector_bindings b ON b.id = r.binding_id
           LEFT JOIN sage_connections sc ON sc.binding_id = r.binding_id
           LEFT JOIN received_events e ON e.id = r.event_id
           WHERE r.id = $1"#,
        run
    )
    .fetch_optional(db)
    .await?;
    Ok(row.map(|r| RunInfo {
        id: r.id,
        binding: r.binding_id,
        tenant: r.tenant_id,
        event_name: r.event_name,
        entity_type: r.entity_type,
        entity_id: r.magento_entity_id,
        created_at: r.created_at,
        policy: r.policy,
        magento_base_url: r.magento_base_url,
        traceparent: r.traceparent,
        sealed_api_key: SealedKey(r.api_key),
        region: r.region,
        occurred_at: r.occurred_at,
        business_id: r.business_id,
        token_version: r.token_version,
        store_clock_skew: r.store_clock_skew_secs,
    }))
}

fn from_magento(state: &AppState, binding: BindingId, err: MagentoError) -> Failure {
    let message = err.to_string();
    if let MagentoError::ClockSkew { store_ahead_secs, .. } = err {
        // Its tokens from now on are dated by its clock; the run waits meanwhile.
        let db = state.db.clone();
        let skew = i32::try_from(store_ahead_secs).ok();
        tokio::spawn(async move {
            let _ = bindings::record_store_clock(&db, binding, skew).await;
        });
        return Failure::new(ErrorClass::MagentoUnreachable, "store_clock_skew", message);
    }
    match err.class() {
        MagentoClass::Auth => {
            let db = state.db.clone();
            tokio::spawn(async move {
                let _ = bindings::record_magento_answer(&db, binding, true).await;
            });
            Failure::new(
                ErrorClass::MagentoAuth,
                "magento_unauthorized",
                format!("{message}. Pair the store again."),
            )
        }
        MagentoClass::NotFound => Failure::new(ErrorClass::NotFound, "magento_entity_not_found", message),
        // A store that answers 500 has a problem with this entity: retried, then dead. A
        // 502-504 is the store (or its proxy) down — Magento's maintenance mode answers
        // 503 during every deploy — so it waits like an unreachable store, no attempt used.
        MagentoClass::Transient
            if matches!(err, MagentoError::Transient { ref reason, .. }
                if reason.starts_with("HTTP 5") && !["HTTP 502", "HTTP 503", "HTTP 504"].iter().any(|p| reason.starts_with(p))) =>
        {
            Failure::new(ErrorClass::Transient, "magento_error", message)
        }
        MagentoClass::Transient => Failure::new(ErrorClass::MagentoUnreachable, "magento_unreachable", message),
        MagentoClass::BadData => Failure::new(ErrorClass::Internal, "magento_bad_response", message),
    }
}

/// Turns a Sage call failure into a failure (or a wait, for a spent budget).
fn from_sage(err: CallError) -> Result<Failure, Outcome> {
    Ok(match err {
        CallError::BudgetSpent(at) => {
            let after = (at - Utc::now()).to_std().unwrap_or_default() + Duration::from_millis(10);
            return Err(Outcome::Blocked {
                after,
                reason: "sage_call_budget".to_owned(),
                on: None,
            });
        }
        CallError::Vault(VaultError::NotConnected) => Failure::new(
            ErrorClass::SageAuth,
            "sage_not_connected",
            "Sage is not connected for this binding; connect it from the binding page.",
        ),
        CallError::Vault(VaultError::NeedsReauth) => Failure::new(
            ErrorClass::SageAuth,
            "sage_needs_reauth",
            "Sage refused the stored authorisation; connect Sage again from the binding page.",
        ),
        CallError::Vault(VaultError::Transient(m)) => Failure::new(ErrorClass::Transient, "sage_unavailable", m),
        CallError::Vault(VaultError::Internal(m)) => Failure::new(ErrorClass::Internal, "vault_error", m),
        CallError::Sage(SageError::SubscriptionLapsed(_)) => Failure::new(
            ErrorClass::SageAuth,
            "sage_subscription_lapsed",
            "Sage says the business has no active subscription; syncing resumes when it is renewed.",
        ),
        CallError::Sage(SageError::TokenRejected(_)) => Failure::new(
            ErrorClass::SageAuth,
            "sage_token_rejected",
            "Sage refused a freshly refreshed token; connect Sage again.",
        ),
        CallError::Sage(SageError::RateLimited { retry_after }) => Failure {
            class: ErrorClass::RateLimited,
            code: "sage_rate_limited".into(),
            message: "Sage's rate limit was reached; retrying later.".into(),
            retry_after: retry_after.map(Duration::from_secs),
        },
        CallError::Sage(SageError::Rejected { status, errors }) => {
            let data_code = errors.first().map(|e| e.data_code.clone()).unwrap_or_default();
            let detail = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            Failure::new(
                ErrorClass::Validation,
                format!(
                    "sage_{}",
                    if data_code.is_empty() {
                        format!("http_{status}")
                    } else {
                        to_snake(&data_code)
                    }
                ),
                format!("Sage refused the document: {detail}"),
            )
        }
        CallError::Sage(SageError::NotFound { path }) => {
            Failure::new(ErrorClass::Validation, "sage_not_found", format!("Sage has no {path}."))
        }
        CallError::Sage(SageError::Transient { reason }) => {
            Failure::new(ErrorClass::Transient, "sage_unavailable", reason)
        }
        CallError::Sage(SageError::BadResponse { reason }) => {
            Failure::new(ErrorClass::Internal, "sage_bad_response", reason)
        }
    })
}

fn to_snake(code: &str) -> String {
    let mut out = String::new();
    for (i, c) in code.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

macro_rules! sage {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(err) => {
                return match from_sage(err) {
                    Ok(failure) => Err(Stop::Failed(failure)),
                    Err(outcome) => Err(Stop::Outcome(outcome)),
                }
            }
        }
    };
}

/// The id Sage gave an object it answered with. An answer without one fails the attempt
/// rather than record an empty id as posted (the retry finds a document that was created
/// by its reference, as after a crash between posting and recording).
fn sage_id_of(answer: &Value, what: &str) -> Result<String, Failure> {
    ledger_sage_api::object_id(answer).map(str::to_owned).ok_or_else(|| {
        Failure::new(
            ErrorClass::Internal,
            "sage_answer_without_id",
            format!("Sage answered with a {what} that has no id; nothing was recorded as posted, and the attempt is retried."),
        )
    })
}

/// Early exits of a handler.
enum Stop {
    Failed(Failure),
    Outcome(Outcome),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Self::Failed(f)
    }
}

impl From<sqlx::Error> for Stop {
    fn from(e: sqlx::Error) -> Self {
        let class = if ledger_core::db::is_transient(&e) {
            ErrorClass::Transient
        } else {
            ErrorClass::Internal
        };
        Self::Failed(Failure::new(class, "database", e.to_string()))
    }
}

type Step<T> = Result<T, Stop>;

/// The business's country and (until its financial settings are cached) base currency,
/// from the connection's region.
fn business_locale(region: &str) -> (&'static str, &'static str) {
    match region {
        "uk" | "gb" => ("GB", "GBP"),
        "ie" => ("IE", "EUR"),
        "ca" => ("CA", "CAD"),
        "us" => ("US", "USD"),
        "es" => ("ES", "EUR"),
        "fr" => ("FR", "EUR"),
        "de" => ("DE", "EUR"),
        _ => ("GB", "GBP"),
    }
}

/// What the mapping needs to know of the Sage business: its country, base currency,
/// multi-currency flag (from `/financial_settings`) and tax rates, all from the
/// reference cache (one read).
struct Business {
    country: String,
    base_currency: String,
    multi_currency: bool,
    rates: mapping::TaxRates,
}

async fn business_facts(db: &sqlx::PgPool, binding: BindingId, region: &str) -> Result<Business, sqlx::Error> {
    let rows = sqlx::query!(
        "SELECT kind, items FROM sage_reference WHERE binding_id = $1
           AND kind IN ('tax_rates', 'financial_settings', 'business_settings')",
        binding.0
    )
    .fetch_all(db)
    .await?;
    let (country, base) = business_locale(region);
    let mut facts = Business {
        country: country.to_owned(),
        base_currency: base.to_owned(),
        multi_currency: true,
        rates: mapping::TaxRates::default(),
    };
    for row in rows {
        let first = row.items.get(0).cloned().unwrap_or(Value::Null);
        match row.kind.as_str() {
            "tax_rates" => {
                facts.rates = mapping::TaxRates::from_reference(row.items.as_array().map_or(&[][..], Vec::as_slice));
            }
            "financial_settings" => {
                if let Some(code) = first["base_currency"]["id"].as_str() {
                    facts.base_currency = code.to_uppercase();
                }
                if let Some(on) = first["multi_currency_enabled"].as_bool() {
                    facts.multi_currency = on;
                }
            }
            "business_settings" => {
                if let Some(c) = first["country_of_registration"]["id"].as_str().filter(|c| c.len() == 2) {
                    facts.country = c.to_uppercase();
                }
            }
            _ => {}
        }
    }
    Ok(facts)
}

/// The per-run environment.
struct Env<'a> {
    state: &'a AppState,
    run: &'a RunInfo,
    settings: Settings,
    magento: MagentoClient,
    session: Session<'a>,
    business: String,
    facts: Business,
    time_zone: chrono_tz::Tz,
    binding_text: String,
    /// This attempt's job lease: the holder of the entity leases it takes.
    holder: uuid::Uuid,
}

impl Env<'_> {
    fn ctx(&self) -> Ctx<'_> {
        Ctx {
            settings: &self.settings,
            business_country: &self.facts.country,
            base_currency: &self.facts.base_currency,
            multi_currency: self.facts.multi_currency,
            binding: &self.binding_text,
            rates: &self.facts.rates,
            time_zone: self.time_zone,
        }
    }
}

/// Runs one sync event to an outcome.
pub async fn sync_event(state: &AppState, run: &RunInfo, log: &CallLog, holder: uuid::Uuid) -> Outcome {
    match run_event(state, run, log, holder).await {
        Ok(outcome) | Err(Stop::Outcome(outcome)) => outcome,
        Err(Stop::Failed(failure)) => Outcome::Failed(failure),
    }
}

async fn run_event(state: &AppState, run: &RunInfo, log: &CallLog, holder: uuid::Uuid) -> Step<Outcome> {
    // A snapshot that does not read as settings fails the run: posting with the defaults
    // instead (another tax mode, no mapped accounts) would book it wrong.
    let snapshot: Option<Settings> = match run.policy.as_ref() {
        None => None,
        Some(p) => Some(serde_json::from_value(p.clone()).map_err(|e| {
            Failure::new(
                ErrorClass::Internal,
                "settings_snapshot_unreadable",
                format!(
                    "The settings recorded with this run cannot be read ({e}); nothing was posted. \
                     Retry the run: a retry takes the binding's settings as they are now."
                ),
            )
        })?),
    };
    let settings = match snapshot {
        // Taken for another business (connected since): its ids mean nothing there.
        Some(s) if s.sage_business_id.as_deref().is_none_or(|b| b == run.business_id) || run.business_id.is_empty() => {
            s
        }
        _ => policy::load(state, run.binding).await?,
    };
    // Products need no Sage or store call when they are off.
    if run.event_name == "product.upserted" && !settings.sync_products {
        return Ok(Outcome::Skipped {
            reason: "products_not_synced".into(),
            message: "Product sync is off in the binding's settings.".into(),
        });
    }
    let key = bindings::open_api_key(state, run.binding, run.sealed_api_key.0.as_deref())
        .map_err(|p| Failure::new(ErrorClass::Internal, "api_key", p.detail))?;
    let base = Url::parse(&run.magento_base_url)
        .map_err(|e| Failure::new(ErrorClass::Config, "magento_url", e.to_string()))?;
    let magento = MagentoClient::new(
        &base,
        &run.tenant.to_string(),
        &key,
        &UrlPolicy::from_settings(&state.settings),
    )
    .await
    .map_err(|e| from_magento(state, run.binding, e))?
    .with_store_clock(run.store_clock_skew);
    let region = run.region.as_deref().unwrap_or("uk");
    let facts = business_facts(&state.db, run.binding, region).await?;
    let time_zone = settings
        .time_zone
        .as_deref()
        .and_then(|z| z.parse().ok())
        .unwrap_or_else(|| mapping::region_time_zone(region));
    let session = sage!(Session::open_at(state, run.binding, run.token_version).await).recording(log);
    let business = session.business_id().unwrap_or_default().to_owned();
    let mut env = Env {
        state,
        run,
        settings,
        magento,
        session,
        business,
        facts,
        time_zone,
        binding_text: run.binding.to_string(),
        holder,
    };
    match run.event_name.as_str() {
        "invoice.created" => invoice_created(&mut env).await,
        "invoice.paid" => invoice_paid(&mut env).await,
        "creditmemo.created" => credit_memo(&mut env).await,
        "customer.upserted" => customer(&mut env).await,
        "product.upserted" => product(&mut env).await,
        other => Ok(Outcome::Failed(Failure::new(
            ErrorClass::Validation,
            "unknown_event",
            format!("No handler for {other}."),
        ))),
    }
}

/// Leases a Magento entity for this attempt (released when the attempt is recorded), or
/// waits a moment when another attempt works on it: an invoice, its payment and its
/// credit notes move the same Sage balance, so they go one at a time.
async fn hold(env: &Env<'_>, key: &EntityKey) -> Step<()> {
    let ttl = env.state.settings.job_lease;
    if xref::lock(&env.state.db, env.run.binding, key, env.holder, ttl).await? {
        Ok(())
    } else {
        Err(busy(key))
    }
}

/// Another attempt holds `key`: wait for its release (which wakes this job) or 250 ms.
fn busy(key: &EntityKey) -> Stop {
    Stop::Outcome(Outcome::Blocked {
        after: Duration::from_millis(250),
        reason: "entity_busy".into(),
        on: Some(key.clone()),
    })
}

/// [`hold`], then the entity's xref (one round trip).
async fn hold_get(env: &Env<'_>, key: &EntityKey, entity: &str, id: i64, currency: &str) -> Step<Option<xref::Xref>> {
    let ttl = env.state.settings.job_lease;
    match xref::lock_get(
        &env.state.db,
        env.run.binding,
        &env.business,
        key,
        env.holder,
        ttl,
        entity,
        id,
        currency,
    )
    .await?
    {
        Some(x) => Ok(x),
        None => Err(busy(key)),
    }
}

fn skip(reason: &str, message: impl Into<String>) -> Outcome {
    Outcome::Skipped {
        reason: reason.to_owned(),
        message: message.into(),
    }
}

/// Policy checks shared by documents, in the documented order.
fn document_policy(s: &Settings, website: i64, store: Option<i64>, created_at: &str) -> Option<Outcome> {
    if !s.website_filter.is_empty() && !s.website_filter.contains(&website) {
        return Some(skip(
            "outside_website_filter",
            format!("Website {website} is not in the binding's website filter."),
        ));
    }
    if let Some(store) = store
        && !s.store_filter.is_empty()
        && !s.store_filter.contains(&store)
    {
        return Some(skip(
            "outside_store_filter",
            format!("Store {store} is not in the binding's store filter."),
        ));
    }
    if let (Some(since), Some(date)) = (s.sync_since, mapping::date_of(created_at))
        && date < since.to_string()
    {
        return Some(skip(
            "outside_sync_since",
            format!("Created {date}, before the sync start date {since}."),
        ));
    }
    None
}

async fn invoice_created(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    let previous = hold_get(env, &EntityKey::new("invoice", id), "invoice", id, "").await?;
    let inv = env
        .magento
        .invoice(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    if let Some(skipped) = document_policy(&env.settings, inv.website_id, Some(inv.store_id), &inv.created_at) {
        return Ok(skipped);
    }
    if inv.state != "paid" && !env.settings.sync_unpaid_invoices {
        return Ok(skip(
            "unpaid_invoice",
            "Only invoices paid at creation sync (sync_unpaid_invoices is off).",
        ));
    }
    if cents(inv.grand_total).is_zero() && !env.settings.sync_zero_value_invoices {
        return Ok(skip(
            "zero_value_invoice",
            "Zero-value invoices are not synced (sync_zero_value_invoices is off).",
        ));
    }
    let mut previous = previous;
    if let Some(x) = &previous
        && let Some(sage_id) = x.posted()
    {
        if inv.state == "cancelled" {
            return cancel_posted_invoice(env, &inv, x).await;
        }
        match held(x) {
            None => {
                return Ok(Outcome::Synced {
                    sage_id: sage_id.to_owned(),
                    reference: x.sage_reference.clone(),
                    message: Some("Already in Sage; nothing posted again.".into()),
                });
            }
            Some(Held::Failed(f)) => return Err(f.into()),
            Some(Held::Accepted(message)) => {
                return Ok(Outcome::Synced {
                    sage_id: sage_id.to_owned(),
                    reference: x.sage_reference.clone(),
                    message: Some(message),
                });
            }
            Some(Held::Repost) => {
                let sage_id = sage_id.to_owned();
                void_for_repost(env, "invoice", "/sales_invoices", &sage_id, &inv.increment_id).await?;
                previous = xref::get(&env.state.db, env.run.binding, &env.business, "invoice", id, "").await?;
            }
        }
    }
    if inv.state == "cancelled" {
        return Ok(skip(
            "invoice_cancelled",
            "The invoice was cancelled in Magento before it reached Sage; nothing is posted.",
        ));
    }
    let contact_id = ensure_contact(env, &inv.customer, &inv.currency, inv.grand_total).await?;
    let mapped = mapping::map_invoice(&inv, &contact_id, &env.ctx())?;
    let reference = mapped.body["reference"].as_str().unwrap_or_default().to_owned();
    let created = post_once(
        env,
        Doc {
            entity: "invoice",
            id,
            path: "/sales_invoices",
            wrapper: "sales_invoice",
            reference: &reference,
            contact_id: &contact_id,
            previous,
        },
        mapped.clone(),
    )
    .await?;
    let sage_id = sage_id_of(&created, "invoice")?;
    let number = created["invoice_number"]
        .as_str()
        .or_else(|| created["displayed_as"].as_str())
        .map(str::to_owned);
    // What its payment and credit notes need: the contact, the rate, how it was booked,
    // and who bought what (to find it for a refund made from the order).
    let skus: Vec<&str> = inv.lines.iter().map(|l| l.sku.as_str()).collect();
    let extra = json!({
        "contact_id": contact_id, "currency": inv.currency.to_uppercase(), "exchange_rate": mapped.body.get("exchange_rate"),
        "totals": mapped.totals, "treatment": mapped.treatment, "customer": contact_of(&inv.customer).xref_id().to_string(),
        "skus": skus, "increment_id": inv.increment_id,
    });
    let mismatch = totals_mismatch(&created, &mapped, &sage_id);
    let mut extra = extra;
    if let Some(m) = &mismatch {
        extra["mismatch"] = m.clone();
    }
    xref::mark_posted(
        &env.state.db,
        env.run.binding,
        &env.business,
        "invoice",
        id,
        "",
        &sage_id,
        number.as_deref(),
        &extra,
    )
    .await?;
    if let Some(m) = &mismatch {
        return Err(mismatch_failure(m).into());
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: number,
        message: notes_message(&mapped),
    })
}

/// The contact a customer's documents go to when B2C consolidation does not apply.
fn contact_of(contact: &Contact) -> ContactKey {
    if contact.is_guest() {
        ContactKey::Guest(contact.email.clone())
    } else {
        ContactKey::Customer(contact.magento_id)
    }
}

/// An invoice cancelled in Magento after it was posted: voided in Sage, or credited in
/// full (the setting's choice; a paid or allocated invoice cannot be voided).
async fn cancel_posted_invoice(
    env: &mut Env<'_>,
    inv: &ledger_magento_api::canonical::Invoice,
    x: &xref::Xref,
) -> Step<Outcome> {
    let sage_id = x.posted().unwrap_or_default().to_owned();
    if let Some(done) = x.extra["cancelled"].as_str() {
        return Ok(Outcome::Synced {
            sage_id,
            reference: x.sage_reference.clone(),
            message: Some(format!("Cancelled in Magento; already {done} in Sage.")),
        });
    }
    let current: Value = sage!(
        env.session
            .get(&format!("/sales_invoices/{sage_id}?mark_as_sent=false"))
            .await
    );
    let total = amount(&current["total_amount"]).unwrap_or_default();
    let outstanding = amount(&current["outstanding_amount"]).unwrap_or_default();
    let voidable = outstanding == total;
    let db = env.state.db.clone();
    let done = if env.settings.cancelled_invoice_action == policy::CancelledInvoiceAction::Void && voidable {
        let reason = encode(&format!("Cancelled in Magento (invoice {})", inv.increment_id));
        sage!(
            env.session
                .delete(&format!("/sales_invoices/{sage_id}?void_reason={reason}"))
                .await
        );
        "voided"
    } else {
        // A credit note mirroring the invoice, allocated against it.
        let contact_id = x.extra["contact_id"].as_str().unwrap_or_default().to_owned();
        let mapped = mapping::map_invoice(inv, &contact_id, &env.ctx())?;
        let mut body = mapped.body.as_object().cloned().unwrap_or_default();
        if let Some(lines) = body.remove("invoice_lines") {
            body.insert("credit_note_lines".into(), lines);
        }
        body.remove("due_date");
        let reference = format!("{}-X", mapped.body["reference"].as_str().unwrap_or_default());
        body.insert("reference".into(), json!(reference));
        body.insert("original_invoice_date".into(), mapped.body["date"].clone());
        body.insert(
            "notes".into(),
            json!(format!("Magento invoice {} was cancelled", inv.increment_id)),
        );
        body.insert(
            "idempotency_id".into(),
            json!(mapping::idempotency_id(
                &env.binding_text,
                "cancel_credit_note",
                &inv.magento_id.to_string()
            )),
        );
        let note: Value = sage!(
            env.session
                .post("/sales_credit_notes", &json!({ "sales_credit_note": body }))
                .await
        );
        let allocate = outstanding.min(mapped.totals.total);
        if allocate > Decimal::ZERO {
            let note_id = &sage_id_of(&note, "credit note")?;
            let date = mapped.body["date"].as_str().unwrap_or_default().to_owned();
            let allocation = mapping::map_allocation(
                -inv.magento_id,
                &contact_id,
                &date,
                &sage_id,
                note_id,
                allocate,
                &env.binding_text,
            );
            sage!(env.session.post::<Value>("/contact_allocations", &allocation).await);
        }
        "credited"
    };
    xref::merge_extra(
        &db,
        env.run.binding,
        &env.business,
        "invoice",
        inv.magento_id,
        "",
        &json!({ "cancelled": done }),
    )
    .await?;
    Ok(Outcome::Synced {
        sage_id,
        reference: x.sage_reference.clone(),
        message: Some(format!("Cancelled in Magento: {done} in Sage.")),
    })
}

fn notes_message(mapped: &Mapped) -> Option<String> {
    (!mapped.notes.is_empty()).then(|| mapped.notes.join("; "))
}

fn amount(v: &Value) -> Option<Decimal> {
    match v {
        Value::Number(n) => n.to_string().parse().ok(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

/// Sage's own totals must equal what the lines add up to (and so Magento's): `None`
/// when they do, else what differs (kept with the xref while the document is held).
fn totals_mismatch(created: &Value, mapped: &Mapped, sage_id: &str) -> Option<Value> {
    let (net, tax, total) = (
        amount(&created["net_amount"]),
        amount(&created["tax_amount"]),
        amount(&created["total_amount"]),
    );
    let expected = mapped.totals;
    let differs = |got: Option<Decimal>, want: Decimal| got.is_some_and(|g| cents(g) != want);
    if !(differs(net, expected.net) || differs(tax, expected.tax) || differs(total, expected.total)) {
        return None;
    }
    let (net, tax, total) = (
        net.unwrap_or_default(),
        tax.unwrap_or_default(),
        total.unwrap_or_default(),
    );
    let message = format!(
        "Sage totals the document {sage_id} as net {net:.2} tax {tax:.2} total {total:.2}, but Magento's figures are net {:.2} tax {:.2} total {:.2} \
         (difference {:.2}). It stays failed until you resolve it: have the ledger void it and post it again (after fixing what caused it), \
         or accept it as it is in Sage.",
        expected.net,
        expected.tax,
        expected.total,
        total - expected.total
    );
    Some(json!({
        "sage_id": sage_id,
        "sage": { "net": money_text(net), "tax": money_text(tax), "total": money_text(total) },
        "magento": { "net": money_text(expected.net), "tax": money_text(expected.tax), "total": money_text(expected.total) },
        "message": message,
    }))
}

fn money_text(d: Decimal) -> String {
    format!("{:.2}", cents(d))
}

fn mismatch_failure(mismatch: &Value) -> Failure {
    Failure::new(
        ErrorClass::Validation,
        "total_mismatch",
        mismatch["message"]
            .as_str()
            .unwrap_or("Sage's totals differ from Magento's."),
    )
}

/// How a posted document with a totals mismatch is held: failed until the merchant
/// accepts it (as it is in Sage) or asks for it to be voided and posted again.
enum Held {
    Failed(Failure),
    Accepted(String),
    Repost,
}

fn held(x: &xref::Xref) -> Option<Held> {
    let mismatch = x.extra.get("mismatch").filter(|m| m.is_object())?;
    if let Some(accepted) = x.extra.get("mismatch_accepted").filter(|a| a.is_object()) {
        return Some(Held::Accepted(format!(
            "In Sage with a difference of {} from Magento's total, accepted by {}.",
            difference(mismatch),
            accepted["by"].as_str().unwrap_or("the merchant")
        )));
    }
    if x.extra["repost_requested"] == json!(true) {
        return Some(Held::Repost);
    }
    Some(Held::Failed(mismatch_failure(mismatch)))
}

fn difference(mismatch: &Value) -> String {
    let total = |side: &str| amount(&mismatch[side]["total"]).unwrap_or_default();
    money_text(total("sage") - total("magento"))
}

/// Voids a held document in Sage so it can be posted again; refused (and the run says
/// why) when payments or allocations make it impossible.
async fn void_for_repost(
    env: &mut Env<'_>,
    entity: &'static str,
    path: &str,
    sage_id: &str,
    increment: &str,
) -> Step<()> {
    let what = if entity == "invoice" { "invoice" } else { "credit note" };
    let current: Value = sage!(env.session.get(&format!("{path}/{sage_id}?mark_as_sent=false")).await);
    if amount(&current["outstanding_amount"]) != amount(&current["total_amount"]) {
        return Err(Failure::new(
            ErrorClass::Validation,
            "void_refused",
            format!(
                "The Sage {what} {} has payments or allocations, so it cannot be voided and posted again. Remove them in Sage, \
                 then retry; or accept it as it is.",
                current["displayed_as"].as_str().unwrap_or(sage_id)
            ),
        )
        .into());
    }
    let reason = encode(&format!(
        "Posted again by the ledger (Magento {what} {increment}): totals differed"
    ));
    sage!(
        env.session
            .delete(&format!("{path}/{sage_id}?void_reason={reason}"))
            .await
    );
    let db = env.state.db.clone();
    xref::reset_for_repost(&db, env.run.binding, &env.business, entity, env.run.entity_id, "").await?;
    Ok(())
}

/// One document to post exactly once.
struct Doc<'a> {
    entity: &'static str,
    id: i64,
    path: &'static str,
    wrapper: &'static str,
    reference: &'a str,
    contact_id: &'a str,
    /// The entity's xref as read under its lease.
    previous: Option<xref::Xref>,
}

/// Posts a document once: looks it up by reference after an uncertain earlier attempt,
/// records `posting` with the idempotency id before sending, and marks a definite
/// refusal so a corrected retry gets a fresh idempotency id.
async fn post_once(env: &mut Env<'_>, doc: Doc<'_>, mapped: Mapped) -> Step<Value> {
    let db = env.state.db.clone();
    let binding = env.run.binding;
    let previous = doc.previous.clone();
    if previous.as_ref().is_some_and(|x| x.state == "posting")
        && let Some(found) = find_by_reference(env, &doc, &mapped.body).await?
    {
        return Ok(found);
    }
    let generation = previous.as_ref().map_or(0, xref::Xref::generation);
    let mut body = mapped.body;
    let idempotency = mapping::idempotency_id(&env.binding_text, doc.wrapper, &format!("{}:{generation}", doc.id));
    body["idempotency_id"] = json!(idempotency);
    if !xref::mark_posting(&db, binding, &env.business, doc.entity, doc.id, "", &idempotency).await? {
        // Another attempt posted it meanwhile (its lease had lapsed): use that document.
        let sage_id = xref::get(&db, binding, &env.business, doc.entity, doc.id, "")
            .await?
            .and_then(|x| x.sage_id)
            .unwrap_or_default();
        return Ok(sage!(
            env.session.get::<Value>(&format!("{}/{sage_id}", doc.path)).await
        ));
    }
    match env.session.post::<Value>(doc.path, &json!({ doc.wrapper: body })).await {
        Ok(created) => Ok(created),
        Err(CallError::Sage(e @ SageError::Rejected { .. })) => {
            xref::mark_rejected(&db, binding, &env.business, doc.entity, doc.id, "").await?;
            Err(Stop::Failed(
                from_sage(CallError::Sage(e)).unwrap_or_else(|_| Failure::new(ErrorClass::Internal, "x", "x")),
            ))
        }
        Err(e) => match from_sage(e) {
            Ok(f) => Err(Stop::Failed(f)),
            Err(o) => Err(Stop::Outcome(o)),
        },
    }
}

/// Pages of Sage's answer read at most when looking for a document an earlier attempt
/// may have created (1,000 documents: far more than a narrowed search finds).
const LOOKUP_MAX_PAGES: usize = 5;

/// Finds a document a previous attempt may have created (its answer was lost). The
/// search is narrowed to what that attempt could have created — the contact's documents
/// created or changed since the event arrived (less a margin for Sage's clock), by
/// reference, or for a payment on its date — and stops at the first match; beyond
/// [`LOOKUP_MAX_PAGES`] it fails rather than guess (posting again could duplicate).
async fn find_by_reference(env: &mut Env<'_>, doc: &Doc<'_>, body: &Value) -> Step<Option<Value>> {
    let since = (env.run.created_at - chrono::Duration::minutes(10)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut path = format!(
        "{}?contact_id={}&updated_or_created_since={}&attributes=all&items_per_page={}",
        doc.path,
        doc.contact_id,
        encode(&since),
        ledger_sage_api::MAX_PAGE
    );
    match (doc.entity, body["date"].as_str()) {
        ("payment", Some(date)) => path.push_str(&format!("&from_date={date}&to_date={date}")),
        ("payment", None) => {}
        _ => path.push_str(&format!("&search={}", encode(doc.reference))),
    }
    let mut next = Some(path);
    for _ in 0..LOOKUP_MAX_PAGES {
        let Some(page_path) = next.take() else {
            return Ok(None);
        };
        let page: ledger_sage_api::Page<Value> = sage!(env.session.get(&page_path).await);
        // A document voided to be posted again has the same reference: never that one.
        if let Some(found) = page
            .items
            .into_iter()
            .find(|i| i["reference"].as_str() == Some(doc.reference) && i["status"]["id"] != "VOID")
        {
            return Ok(Some(found));
        }
        next = page.next.filter(|n| !n.is_empty());
    }
    if next.is_none() {
        return Ok(None);
    }
    Err(Stop::Failed(Failure::new(
        ErrorClass::Validation,
        "sage_lookup_too_wide",
        format!(
            "An earlier attempt may have created {} {} in Sage, but more than {} of the contact's documents changed \
             since the event arrived, so the ledger stopped looking rather than risk posting it twice. Look for \
             reference {} in Sage: if it is there, skip this run; if not, retry it.",
            doc.wrapper.replace('_', " "),
            doc.reference,
            LOOKUP_MAX_PAGES * ledger_sage_api::MAX_PAGE as usize,
            doc.reference
        ),
    )))
}

fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// B2C routing (first match wins): disabled → individual; company and
/// always_individual_for_b2b → individual; an existing contact → individual; total at
/// or above the threshold → individual; else the web-sales contact.
async fn contact_key(env: &Env<'_>, contact: &Contact, grand_total: Decimal) -> Step<ContactKey> {
    let individual = if contact.is_guest() {
        ContactKey::Guest(contact.email.clone())
    } else {
        ContactKey::Customer(contact.magento_id)
    };
    let b2c = &env.settings.b2c;
    if !b2c.enabled {
        return Ok(individual);
    }
    if b2c.always_individual_for_b2b && contact.company.as_deref().is_some_and(|c| !c.trim().is_empty()) {
        return Ok(individual);
    }
    let existing = sqlx::query_scalar!(
        "SELECT EXISTS (SELECT 1 FROM entity_xref WHERE binding_id = $1 AND sage_business_id = $3 AND entity_type = 'contact'
           AND magento_entity_id = $2 AND state = 'posted')",
        env.run.binding.0,
        individual.xref_id(),
        env.business
    )
    .fetch_one(&env.state.db)
    .await?
    .unwrap_or(false);
    if existing {
        return Ok(individual);
    }
    if b2c.min_total_for_individual > Decimal::ZERO && grand_total >= b2c.min_total_for_individual {
        return Ok(individual);
    }
    Ok(ContactKey::WebSales)
}

fn payload_hash(body: &Value) -> String {
    mapping::idempotency_id("", "hash", &body.to_string())
}

/// The Sage contact for a customer in a currency: from the xref, else adopted by
/// reference or email, else created. An existing one is refreshed when the store's
/// data changed (the module sends customer updates only once per 30 days).
async fn ensure_contact(env: &mut Env<'_>, contact: &Contact, currency: &str, grand_total: Decimal) -> Step<String> {
    let key = contact_key(env, contact, grand_total).await?;
    let currency = currency.to_uppercase();
    let body = mapping::map_contact(contact, &key, &currency, &env.ctx());
    let hash = payload_hash(&body);
    let db = env.state.db.clone();
    let binding = env.run.binding;
    let xid = key.xref_id();
    if let Some(x) = hold_get(env, &EntityKey::contact(xid, &currency), "contact", xid, &currency).await?
        && let Some(id) = x.posted()
    {
        let id = id.to_owned();
        if x.extra["payload_hash"].as_str() != Some(hash.as_str()) && key != ContactKey::WebSales {
            let mut update = body.clone();
            if let Some(o) = update.as_object_mut() {
                o.remove("reference"); // references stay as created
            }
            sage!(
                env.session
                    .put::<Value>(&format!("/contacts/{id}"), &json!({ "contact": update }))
                    .await
            );
            xref::merge_extra(
                &db,
                binding,
                &env.business,
                "contact",
                xid,
                &currency,
                &json!({ "payload_hash": hash }),
            )
            .await?;
        }
        return Ok(id);
    }
    // Adopt only a contact that is provably this customer (same currency, and same email
    // unless it is the configured web-sales contact); a reference Sage already has for
    // anyone else is taken, and the next candidate is tried.
    let same_customer = |c: &Value| {
        let currency_matches = c["currency"]["id"]
            .as_str()
            .unwrap_or(env.facts.base_currency.as_str())
            .eq_ignore_ascii_case(&currency);
        let email_matches = c["email"]
            .as_str()
            .or_else(|| c["main_contact_person"]["email"].as_str())
            .is_some_and(|e| !contact.email.is_empty() && e.trim().eq_ignore_ascii_case(contact.email.trim()));
        currency_matches && (key == ContactKey::WebSales || email_matches)
    };
    let mut found = None;
    // With an email to look up, that look-up finds every contact that could be this
    // customer: a reference Sage holds is then someone else's, and the create's refusal
    // says so — no search by reference first (one Sage call fewer per new customer).
    let looked_up = key != ContactKey::WebSales && !contact.email.is_empty();
    if looked_up {
        let by_email = sage!(
            env.session
                .list_all(&format!("/contacts?email={}&attributes=all", encode(&contact.email)))
                .await
        );
        found = match by_email.into_iter().find(|c| same_customer(c)) {
            Some(c) => Some((sage_id_of(&c, "contact")?, c["reference"].as_str().map(str::to_owned))),
            None => None,
        };
    }
    let mut attempt = 0;
    let (id, reference) = loop {
        if let Some(adopted) = found.take() {
            break adopted;
        }
        if attempt >= mapping::REFERENCE_CANDIDATES {
            return Err(Failure::new(
                ErrorClass::Validation,
                "contact_reference_taken",
                format!(
                    "Every contact reference the ledger tried for {} is already used in Sage by another contact. \
                     Rename one of those contacts' references in Sage, then retry.",
                    contact.email
                ),
            )
            .into());
        }
        let body = mapping::map_contact_with(contact, &key, &currency, &env.ctx(), attempt);
        let reference = body["reference"].as_str().unwrap_or_default().to_owned();
        if !looked_up {
            let by_reference = sage!(
                env.session
                    .list_all(&format!("/contacts?search={}&attributes=all", encode(&reference)))
                    .await
            );
            if let Some(existing) = by_reference
                .iter()
                .find(|c| c["reference"].as_str() == Some(reference.as_str()))
            {
                if same_customer(existing) {
                    break (sage_id_of(existing, "contact")?, Some(reference));
                }
                attempt += 1;
                continue;
            }
        }
        let mut body = body;
        body["idempotency_id"] = json!(mapping::idempotency_id(
            &env.binding_text,
            "contact",
            &format!("{xid}:{currency}:{attempt}")
        ));
        match env
            .session
            .post::<Value>("/contacts", &json!({ "contact": body }))
            .await
        {
            Ok(created) => break (sage_id_of(&created, "contact")?, Some(reference)),
            // Taken by a contact the list does not show (a deleted one keeps its reference).
            Err(CallError::Sage(SageError::Rejected { errors, .. }))
                if errors.iter().any(|e| e.source == "reference") =>
            {
                attempt += 1;
            }
            Err(e) => {
                return match from_sage(e) {
                    Ok(f) => Err(Stop::Failed(f)),
                    Err(o) => Err(Stop::Outcome(o)),
                };
            }
        }
    };
    if id.is_empty() {
        return Err(Failure::new(
            ErrorClass::Internal,
            "sage_bad_response",
            "Sage answered a contact without an id.",
        )
        .into());
    }
    xref::mark_posted(
        &db,
        binding,
        &env.business,
        "contact",
        xid,
        &currency,
        &id,
        reference.as_deref(),
        &json!({ "payload_hash": hash }),
    )
    .await?;
    Ok(id)
}

/// The synced invoice a refund made from the order belongs to: the customer's, in its
/// currency, holding every refunded item and at least the refunded total — when exactly
/// one fits.
async fn find_invoice(env: &Env<'_>, memo: &ledger_magento_api::canonical::CreditMemo) -> Step<Result<i64, String>> {
    let customer = contact_of(&memo.customer).xref_id().to_string();
    let rows = sqlx::query!(
        r#"SELECT magento_entity_id, extra FROM entity_xref
           WHERE binding_id = $1 AND sage_business_id = $4 AND entity_type = 'invoice' AND state = 'posted'
             AND extra->>'customer' = $2 AND extra->>'currency' = $3
           ORDER BY magento_entity_id DESC LIMIT 100"#,
        env.run.binding.0,
        customer,
        memo.currency.to_uppercase(),
        env.business
    )
    .fetch_all(&env.state.db)
    .await?;
    let skus: Vec<&str> = memo
        .lines
        .iter()
        .filter(|l| l.qty > Decimal::ZERO)
        .map(|l| l.sku.as_str())
        .collect();
    let fits: Vec<i64> = rows
        .iter()
        .filter(|r| {
            let has = |sku: &str| {
                r.extra["skus"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|s| s.as_str() == Some(sku)))
            };
            let total = amount(&r.extra["totals"]["total"]).unwrap_or_default();
            skus.iter().all(|s| has(s)) && total >= cents(memo.grand_total)
        })
        .map(|r| r.magento_entity_id)
        .collect();
    Ok(match fits.as_slice() {
        [one] => Ok(*one),
        [] => Err("no synced invoice of this customer holds these items".to_owned()),
        many => Err(format!(
            "{} synced invoices of this customer could be the one",
            many.len()
        )),
    })
}

/// When a document depends on the invoice: the invoice's xref, or how to wait/fail.
async fn require_invoice(env: &Env<'_>, invoice_id: i64) -> Step<xref::Xref> {
    if let Some(x) = xref::get(&env.state.db, env.run.binding, &env.business, "invoice", invoice_id, "").await?
        && x.posted().is_some()
    {
        return Ok(x);
    }
    let last = sqlx::query!(
        "SELECT status, skip_reason FROM sync_runs WHERE binding_id = $1 AND event_name = 'invoice.created' AND magento_entity_id = $2
         ORDER BY created_at DESC LIMIT 1",
        env.run.binding.0,
        invoice_id
    )
    .fetch_optional(&env.state.db)
    .await?;
    match last.as_ref().map(|r| r.status.as_str()) {
        Some("pending" | "running") => Err(Stop::Outcome(Outcome::Blocked {
            after: Duration::from_secs(2),
            reason: "waiting_for_invoice".into(),
            // The invoice's attempt holds this lease: its end wakes us.
            on: Some(EntityKey::new("invoice", invoice_id)),
        })),
        Some("skipped_by_policy") => Err(Stop::Outcome(skip(
            last.and_then(|r| r.skip_reason)
                .as_deref()
                .unwrap_or("invoice_not_synced"),
            "The invoice was skipped by policy, so this document is too.",
        ))),
        // Synced, its xref about to say so (another attempt is finishing): look again soon.
        Some("synced") => Err(Stop::Outcome(Outcome::Blocked {
            after: Duration::from_secs(1),
            reason: "waiting_for_invoice".into(),
            // The invoice's attempt holds this lease: its end wakes us.
            on: Some(EntityKey::new("invoice", invoice_id)),
        })),
        Some(_) => Err(Failure::new(
            ErrorClass::Validation,
            "invoice_not_synced",
            format!("Invoice {invoice_id} did not sync to Sage. Fix and retry it, then retry this run."),
        )
        .into()),
        // The invoice's event has not arrived (yet): wait a while, then give up loudly.
        None if Utc::now() - env.run.created_at < chrono::Duration::hours(1) => Err(Stop::Outcome(Outcome::Blocked {
            after: Duration::from_secs(30),
            reason: "waiting_for_invoice".into(),
            // The invoice's attempt holds this lease: its end wakes us.
            on: Some(EntityKey::new("invoice", invoice_id)),
        })),
        None => Err(Failure::new(
            ErrorClass::Validation,
            "invoice_not_received",
            format!(
                "The ledger never received invoice {invoice_id}; republish it from Magento (byte8:sage:invoice:sync)."
            ),
        )
        .into()),
    }
}

async fn invoice_paid(env: &mut Env<'_>) -> Step<Outcome> {
    let invoice_id = env.run.entity_id;
    let previous = hold_get(env, &EntityKey::new("invoice", invoice_id), "payment", invoice_id, "").await?;
    if let Some(x) = &previous
        && let Some(id) = x.posted()
    {
        return Ok(Outcome::Synced {
            sage_id: id.to_owned(),
            reference: x.sage_reference.clone(),
            message: Some("Already in Sage.".into()),
        });
    }
    let invoice = require_invoice(env, invoice_id).await?;
    let payment = env
        .magento
        .payment(invoice_id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    // A zero-total order (a 100 % coupon, method `free`) is paid with nothing.
    if cents(payment.amount).is_zero() {
        return Ok(skip(
            "zero_value_payment",
            "The invoice was paid with nothing (a zero-total order); no payment is posted.",
        ));
    }
    let bank = match env.settings.payment_method_map.get(&payment.method) {
        Some(Some(account)) => account.clone(),
        Some(None) => {
            // The merchant's choice, so the invoice's chip stays as it is.
            return Ok(skip(
                "payment_left_unposted",
                format!(
                    "Payment method {} is mapped to no bank account on purpose; the invoice stays unpaid in Sage.",
                    payment.method
                ),
            ));
        }
        None => match &env.settings.default_bank_account_id {
            Some(account) => account.clone(),
            None => {
                return Ok(skip(
                    "payment_method_not_mapped",
                    format!(
                        "Map payment method {:?} to a Sage bank account (or set a default) to record payments.",
                        payment.method
                    ),
                ));
            }
        },
    };
    let contact_id = invoice.extra["contact_id"].as_str().unwrap_or_default().to_owned();
    let sage_invoice = invoice.sage_id.clone().unwrap_or_default();
    // Cross-currency payments use the invoice's exchange rate.
    let rate = amount(&invoice.extra["exchange_rate"]);
    // The day the money arrived: the capture (the event's time); the module's
    // `captured_at` is the invoice's creation.
    let date = env
        .run
        .occurred_at
        .map(|t| t.with_timezone(&env.time_zone).format("%Y-%m-%d").to_string())
        .or_else(|| mapping::local_date(&payment.captured_at, env.time_zone))
        .unwrap_or_else(|| Utc::now().with_timezone(&env.time_zone).format("%Y-%m-%d").to_string());
    let current: Value = sage!(
        env.session
            .get(&format!("/sales_invoices/{sage_invoice}?mark_as_sent=false"))
            .await
    );
    let outstanding = amount(&current["outstanding_amount"]).unwrap_or_default();
    let body = mapping::map_payment(
        invoice_id,
        &payment.invoice_increment_id,
        &contact_id,
        &sage_invoice,
        &bank,
        payment.amount,
        outstanding,
        &payment.currency,
        rate,
        &date,
        &env.ctx(),
    )?;
    let on_account = cents(payment.amount) - outstanding.min(cents(payment.amount));
    let reference = body["reference"].as_str().unwrap_or_default().to_owned();
    let mapped = Mapped {
        body,
        totals: Default::default(),
        notes: Vec::new(),
        treatment: None,
    };
    let created = post_once(
        env,
        Doc {
            entity: "payment",
            id: invoice_id,
            path: "/contact_payments",
            wrapper: "contact_payment",
            reference: &reference,
            contact_id: &contact_id,
            previous,
        },
        mapped,
    )
    .await?;
    let sage_id = sage_id_of(&created, "payment")?;
    xref::mark_posted(
        &env.state.db,
        env.run.binding,
        &env.business,
        "payment",
        invoice_id,
        "",
        &sage_id,
        Some(&reference),
        &json!({}),
    )
    .await?;
    let message = (on_account > Decimal::ZERO)
        .then(|| format!("{on_account} was more than the invoice still owed and is held on account."));
    Ok(Outcome::Synced {
        sage_id,
        reference: Some(reference),
        message,
    })
}

async fn credit_memo(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    let memo = env
        .magento
        .creditmemo(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    if let Some(skipped) = document_policy(&env.settings, memo.website_id, None, &memo.created_at) {
        return Ok(skipped);
    }
    hold(env, &EntityKey::new("creditmemo", id)).await?;
    let existing = xref::get(&env.state.db, env.run.binding, &env.business, "creditmemo", id, "").await?;
    // On the original invoice's contact (needed to allocate). A refund made from the
    // order names no invoice: the one it belongs to is found among the customer's
    // synced invoices when exactly one fits; otherwise it goes on the customer's contact
    // unallocated, and the run says why.
    let mut unlinked = None;
    let invoice_id = match memo.invoice_id {
        Some(invoice_id) => Some(invoice_id),
        None => match existing.as_ref().and_then(|x| x.extra["invoice_id"].as_i64()) {
            Some(found) => Some(found),
            None => match find_invoice(env, &memo).await? {
                Ok(found) => Some(found),
                Err(why) => {
                    unlinked = Some(why);
                    None
                }
            },
        },
    };
    let invoice = match invoice_id {
        Some(invoice_id) => {
            hold(env, &EntityKey::new("invoice", invoice_id)).await?;
            Some(require_invoice(env, invoice_id).await?)
        }
        None => None,
    };
    // A credit note booked with other totals than Magento's stays held until resolved.
    let mut existing = existing;
    let mut accepted = None;
    if let Some(x) = &existing
        && let Some(posted) = x.posted()
    {
        match held(x) {
            None => {}
            Some(Held::Failed(f)) => return Err(f.into()),
            Some(Held::Accepted(message)) => accepted = Some(message),
            Some(Held::Repost) => {
                let posted = posted.to_owned();
                void_for_repost(env, "creditmemo", "/sales_credit_notes", &posted, &memo.increment_id).await?;
                existing = xref::get(&env.state.db, env.run.binding, &env.business, "creditmemo", id, "").await?;
            }
        }
    }
    // The note's open balance when this attempt has Sage's answer for it (just posted,
    // or found after an uncertain post: no allocation of the ledger's can exist yet).
    let mut note_open = None;
    let (sage_id, number, total, mut message) = match existing.as_ref().and_then(|x| x.posted().map(|p| (x, p))) {
        Some((x, posted)) => {
            let done = Outcome::Synced {
                sage_id: posted.to_owned(),
                reference: x.sage_reference.clone(),
                message: Some(accepted.clone().unwrap_or_else(|| "Already in Sage.".into())),
            };
            if invoice.is_none() || x.extra["allocated"].as_bool() == Some(true) {
                return Ok(done);
            }
            // Posted, but the allocation may not have happened: finish it below.
            let total = x.extra["totals"]["total"].clone();
            (
                posted.to_owned(),
                x.sage_reference.clone(),
                amount(&total).unwrap_or_default(),
                None,
            )
        }
        None => {
            let contact_id = match invoice.as_ref().and_then(|x| x.extra["contact_id"].as_str()) {
                Some(c) => c.to_owned(),
                None => ensure_contact(env, &memo.customer, &memo.currency, memo.grand_total).await?,
            };
            let treatment: Option<mapping::Treatment> = invoice
                .as_ref()
                .and_then(|x| serde_json::from_value(x.extra["treatment"].clone()).ok());
            let mapped = mapping::map_credit_note(&memo, &contact_id, treatment.as_ref(), &env.ctx())?;
            let reference = mapped.body["reference"].as_str().unwrap_or_default().to_owned();
            let created = post_once(
                env,
                Doc {
                    entity: "creditmemo",
                    id,
                    path: "/sales_credit_notes",
                    wrapper: "sales_credit_note",
                    reference: &reference,
                    contact_id: &contact_id,
                    previous: existing.clone(),
                },
                mapped.clone(),
            )
            .await?;
            let sage_id = sage_id_of(&created, "credit note")?;
            note_open = amount(&created["outstanding_amount"]);
            let number = created["credit_note_number"]
                .as_str()
                .or_else(|| created["displayed_as"].as_str())
                .map(str::to_owned);
            xref::mark_posted(
                &env.state.db,
                env.run.binding,
                &env.business,
                "creditmemo",
                id,
                "",
                &sage_id,
                number.as_deref(),
                &{
                    let mut extra =
                        json!({ "contact_id": contact_id, "totals": mapped.totals, "invoice_id": invoice_id });
                    if let Some(m) = totals_mismatch(&created, &mapped, &sage_id) {
                        extra["mismatch"] = m;
                    }
                    extra
                },
            )
            .await?;
            if let Some(m) = totals_mismatch(&created, &mapped, &sage_id) {
                return Err(mismatch_failure(&m).into());
            }
            let mut message = notes_message(&mapped);
            if memo.invoice_id.is_none() {
                let said = match (invoice_id, &unlinked) {
                    (Some(found), _) => format!("Refunded from the order; matched to invoice {found}."),
                    (None, Some(why)) => format!(
                        "Refunded from the order and no invoice could be told apart ({why}): allocate it in Sage."
                    ),
                    (None, None) => String::new(),
                };
                message = Some(match message {
                    Some(m) => format!("{said} {m}"),
                    None => said,
                });
            }
            (sage_id, number, mapped.totals.total, message)
        }
    };
    // Allocated against the invoice as far as both are still open. The invoice's balance
    // is always read; the note's too unless this attempt posted it: an earlier attempt's
    // allocation may have landed with its answer lost.
    if let Some(invoice) = invoice
        && let Some(invoice_sage_id) = invoice.sage_id.as_deref()
    {
        let contact_id = invoice.extra["contact_id"].as_str().unwrap_or_default().to_owned();
        let current: Value = sage!(
            env.session
                .get(&format!("/sales_invoices/{invoice_sage_id}?mark_as_sent=false"))
                .await
        );
        let note_open = match note_open {
            Some(open) => open,
            None => {
                let note: Value = sage!(
                    env.session
                        .get(&format!("/sales_credit_notes/{sage_id}?mark_as_sent=false"))
                        .await
                );
                amount(&note["outstanding_amount"]).unwrap_or(total)
            }
        };
        let invoice_open = amount(&current["outstanding_amount"]).unwrap_or_default();
        let allocate = invoice_open.min(note_open);
        if allocate > Decimal::ZERO {
            let date = mapping::date_of(&memo.created_at).unwrap_or_else(|| Utc::now().format("%Y-%m-%d").to_string());
            let body = mapping::map_allocation(
                id,
                &contact_id,
                &date,
                invoice_sage_id,
                &sage_id,
                allocate,
                &env.binding_text,
            );
            sage!(env.session.post::<Value>("/contact_allocations", &body).await);
            message = Some(format!("Allocated {allocate} against the invoice."));
        }
        xref::merge_extra(
            &env.state.db,
            env.run.binding,
            &env.business,
            "creditmemo",
            id,
            "",
            &json!({ "allocated": true }),
        )
        .await?;
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: number,
        message,
    })
}

async fn customer(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    hold(env, &EntityKey::new("customer", id)).await?;
    let contact = env
        .magento
        .customer(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    let mut currencies = xref::contact_currencies(&env.state.db, env.run.binding, &env.business, id).await?;
    if currencies.is_empty() {
        currencies.push(env.facts.base_currency.as_str().to_owned());
    }
    let mut last = String::new();
    for currency in currencies {
        // A large total forces an individual contact even with B2C consolidation on.
        last = ensure_contact(env, &contact, &currency, Decimal::MAX).await?;
    }
    Ok(Outcome::Synced {
        sage_id: last,
        reference: Some(format!("M{id}")),
        message: None,
    })
}

async fn product(env: &mut Env<'_>) -> Step<Outcome> {
    let id = env.run.entity_id;
    hold(env, &EntityKey::new("product", id)).await?;
    let p = env
        .magento
        .product(id)
        .await
        .map_err(|e| from_magento(env.state, env.run.binding, e))?;
    let kind = match p.product_type.as_str() {
        "simple" if p.manage_stock && env.settings.sync_stock => "stock_item",
        "simple" => "product",
        "virtual" | "downloadable" => "service",
        other => {
            return Ok(skip(
                "PRODUCT_TYPE_NOT_SUPPORTED",
                format!("{other} products are not synced; their simple children are."),
            ));
        }
    };
    let mapping::Item {
        path,
        wrapper,
        mut body,
    } = mapping::map_item(&p, kind, &env.settings)?;
    let db = env.state.db.clone();
    let existing = xref::get(&db, env.run.binding, &env.business, "product", id, "").await?;
    let sage_id = match existing.as_ref().and_then(|x| x.posted()) {
        Some(sage_id) => {
            let sage_id = sage_id.to_owned();
            sage!(
                env.session
                    .put::<Value>(&format!("{path}/{sage_id}"), &json!({ wrapper: body }))
                    .await
            );
            sage_id
        }
        None => {
            let found = sage!(
                env.session
                    .list_all(&format!("{path}?search={}&attributes=all", encode(&p.sku)))
                    .await
            )
            .into_iter()
            .find(|i| i["item_code"].as_str() == Some(p.sku.as_str()));
            match found {
                Some(f) => sage_id_of(&f, "product")?,
                None => {
                    body["idempotency_id"] =
                        json!(mapping::idempotency_id(&env.binding_text, wrapper, &id.to_string()));
                    let created: Value = sage!(env.session.post(path, &json!({ wrapper: body })).await);
                    sage_id_of(&created, "product")?
                }
            }
        }
    };
    xref::mark_posted(
        &db,
        env.run.binding,
        &env.business,
        "product",
        id,
        "",
        &sage_id,
        Some(&p.sku),
        &json!({ "kind": kind }),
    )
    .await?;
    let mut message = None;
    if kind == "stock_item"
        && let Some(qty) = p.stock_qty
    {
        let item: Value = sage!(env.session.get(&format!("/stock_items/{sage_id}")).await);
        let in_stock = amount(&item["quantity_in_stock"]).unwrap_or_default();
        let diff = qty - in_stock;
        if !diff.is_zero() {
            let movement = mapping::map_stock_movement(
                &p,
                &sage_id,
                diff,
                &Utc::now().format("%Y-%m-%d").to_string(),
                &env.binding_text,
            );
            sage!(env.session.post::<Value>("/stock_movements", &movement).await);
            message = Some(format!("Stock moved by {diff} to {qty}."));
        }
    }
    Ok(Outcome::Synced {
        sage_id,
        reference: Some(p.sku),
        message,
    })
}
