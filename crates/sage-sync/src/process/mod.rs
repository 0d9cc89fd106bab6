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
use ledger_jobs::{EntityKey, EventName};
use ledger_magento_api::{MagentoClient, MagentoError, canonical::Contact, client::ErrorClass as MagentoClass};
use ledger_magento_callback::store::{StoreError, StoreRef, store_client};
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
    xref::{self, XrefKey},
};

/// Everything about the run being processed.
#[derive(Debug, Clone)]
pub struct RunInfo {
    pub id: uuid::Uuid,
    pub binding: BindingId,
    pub tenant: TenantId,
    pub event_name: EventName,
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
    /// The business's tax rates and settings from the reference data, by kind (read
    /// with the run: one round trip fewer).
    pub reference: Value,
}

/// A sealed api_key; Debug never prints it, even encrypted.
#[derive(Clone)]
pub struct SealedKey(pub Option<Vec<u8>>);

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[sealed]")
    }
}

impl RunInfo {
    /// The run as the claim that took its job read it (the only read of it an attempt
    /// makes).
    pub fn claimed(id: uuid::Uuid, binding: BindingId, r: &ledger_jobs::ClaimedRun) -> Self {
        Self {
            id,
            binding,
            tenant: r.tenant_id,
            event_name: EventName::parse(&r.event_name),
            entity_type: r.entity_type.clone(),
            entity_id: r.magento_entity_id,
            created_at: r.created_at,
            policy: r.policy.clone(),
            magento_base_url: r.magento_base_url.clone(),
            traceparent: r.traceparent.clone(),
            sealed_api_key: SealedKey(r.api_key.clone()),
            region: r.region.clone(),
            occurred_at: r.occurred_at,
            business_id: r.business_id.clone(),
            token_version: r.token_version,
            store_clock_skew: r.store_clock_skew_secs,
            reference: r.reference.clone().unwrap_or(Value::Null),
        }
    }
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
            Err(err) => return Err(Stop::from(err)),
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

/// A failed Sage call: a failure to record, or an outcome (waiting for the budget).
impl From<CallError> for Stop {
    fn from(e: CallError) -> Self {
        match from_sage(e) {
            Ok(f) => Self::Failed(f),
            Err(o) => Self::Outcome(o),
        }
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
/// reference cache, read with the run.
struct Business {
    country: String,
    base_currency: String,
    multi_currency: bool,
    rates: mapping::TaxRates,
}

fn business_facts(reference: &Value, region: &str) -> Business {
    let (country, base) = business_locale(region);
    let mut facts = Business {
        country: country.to_owned(),
        base_currency: base.to_owned(),
        multi_currency: true,
        rates: mapping::TaxRates::default(),
    };
    for (kind, items) in reference.as_object().into_iter().flatten() {
        let first = items.get(0).cloned().unwrap_or(Value::Null);
        match kind.as_str() {
            "tax_rates" => {
                facts.rates = mapping::TaxRates::from_reference(items.as_array().map_or(&[][..], Vec::as_slice));
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
    facts
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
    /// The document posted, recorded with the attempt (see [`Attempted::posted`]).
    posted: Option<ledger_jobs::Posted>,
    /// A contact created for the document, recorded with its posting mark (or, when no
    /// document takes it, at the attempt's end).
    contact_posted: Option<xref::ContactMark>,
}

/// What an attempt did: its outcome and the document it posted, whose xref the caller
/// records `posted` in the attempt's own statement (one commit fewer). Should that
/// statement never run (a crash), the xref stays `posting` and the next attempt looks
/// the document up before posting anything.
#[derive(Debug)]
pub struct Attempted {
    pub outcome: Outcome,
    pub posted: Option<ledger_jobs::Posted>,
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
pub async fn sync_event(state: &AppState, run: &RunInfo, log: &CallLog, holder: uuid::Uuid) -> Attempted {
    let mut posted = None;
    let outcome = match run_event(state, run, log, holder, &mut posted).await {
        Ok(outcome) | Err(Stop::Outcome(outcome)) => outcome,
        Err(Stop::Failed(failure)) => Outcome::Failed(failure),
    };
    Attempted { outcome, posted }
}

async fn run_event(
    state: &AppState,
    run: &RunInfo,
    log: &CallLog,
    holder: uuid::Uuid,
    posted: &mut Option<ledger_jobs::Posted>,
) -> Step<Outcome> {
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
    if run.event_name == EventName::ProductUpserted && !settings.sync_products {
        return Ok(Outcome::Skipped {
            reason: "products_not_synced".into(),
            message: "Product sync is off in the binding's settings.".into(),
        });
    }
    let store = StoreRef {
        binding_id: run.binding,
        tenant_id: run.tenant,
        base_url: &run.magento_base_url,
        sealed_api_key: run.sealed_api_key.0.as_deref(),
        store_clock_skew: run.store_clock_skew,
    };
    let magento = store_client(state, store).await.map_err(|e| match e {
        StoreError::ApiKey(e) => Failure::new(ErrorClass::Internal, "api_key", e.to_string()),
        StoreError::BadUrl(url) => Failure::new(ErrorClass::Config, "magento_url", format!("`{url}` is not a URL")),
        StoreError::Magento(e) => from_magento(state, run.binding, e),
    })?;
    let region = run.region.as_deref().unwrap_or("uk");
    let facts = business_facts(&run.reference, region);
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
        posted: None,
        contact_posted: None,
    };
    let outcome = match &run.event_name {
        EventName::InvoiceCreated => invoice_created(&mut env).await,
        EventName::InvoicePaid => invoice_paid(&mut env).await,
        EventName::CreditmemoCreated => credit_memo(&mut env).await,
        EventName::CustomerUpserted => customer(&mut env).await,
        EventName::ProductUpserted => product(&mut env).await,
        EventName::Unknown(other) => Ok(Outcome::Failed(Failure::new(
            ErrorClass::Validation,
            "unknown_event",
            format!("No handler for {other}."),
        ))),
    };
    *posted = env.posted.take();
    // Before any outcome counts: the contact is in Sage.
    contact::record_contact(&mut env).await?;
    outcome
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
    Ok(hold_read(env, key, entity, id, currency, None, None).await?.xref)
}

/// [`hold_get`], with what `contact` asks of a contact's lease (see [`xref::ContactRead`]);
/// with `first`, a document's lease (key, entity, id) taken first and its xref read in
/// the same round trip.
async fn hold_read(
    env: &Env<'_>,
    key: &EntityKey,
    entity: &str,
    id: i64,
    currency: &str,
    contact: Option<xref::ContactRead<'_>>,
    first: Option<(&EntityKey, &str, i64)>,
) -> Step<xref::Held> {
    let ttl = env.state.settings.job_lease;
    let xref_key = XrefKey {
        binding: env.run.binding,
        business: &env.business,
        entity,
        id,
        currency,
    };
    let first_key = first.map(|(_, entity, id)| XrefKey::document(env.run.binding, &env.business, entity, id));
    let first_lease = first.map(|(lease, _, _)| lease);
    let both = first_lease.zip(first_key.as_ref());
    match xref::lock_get(&env.state.db, key, env.holder, ttl, &xref_key, contact, both).await? {
        Ok(x) => Ok(x),
        Err(xref::Busy::First) => Err(busy(first_lease.unwrap_or(key))),
        Err(xref::Busy::Entity) => Err(busy(key)),
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

// The handlers and what they share, by document (declared after `sage!` so they see it).
mod contact;
mod contact_index;
mod credit_note;
mod invoice;
mod payment;
mod post;
mod product;

use contact::*;
use contact_index::*;
use credit_note::*;
use invoice::*;
use payment::*;
use post::*;
use product::*;
