//! A binding's sync settings.

// A part of the pages module: its helpers and imports are this file's too.
use super::*;

pub struct Opt {
    pub value: String,
    pub label: String,
    pub selected: bool,
}

pub struct Select {
    pub name: String,
    pub label: String,
    pub options: Vec<Opt>,
    pub error: Option<String>,
}

pub struct Toggle {
    pub name: &'static str,
    pub label: &'static str,
    pub checked: bool,
    pub error: Option<String>,
}

pub struct TaxRow {
    pub index: usize,
    pub pct: String,
    pub select: Select,
}

pub struct B2cView {
    pub enabled: bool,
    pub always_individual_for_b2b: bool,
    pub name: String,
    pub email: String,
    pub reference: String,
    pub min_total: String,
    pub reference_error: Option<String>,
    pub min_total_error: Option<String>,
}

pub struct Knobs {
    pub person_first: bool,
    /// `shipping`, `billing` or `origin`.
    pub tax_based_on: &'static str,
    pub time_zone: String,
    pub time_zone_error: Option<String>,
    /// `1=EUR, 2=USD`.
    pub website_currencies: String,
    pub website_currencies_error: Option<String>,
    pub cancel_with_credit_note: bool,
    pub sync_since: String,
    pub sync_since_error: Option<String>,
    pub website_filter: String,
    pub website_filter_error: Option<String>,
    pub store_filter: String,
    pub store_filter_error: Option<String>,
}

#[derive(Template)]
#[template(path = "settings.html")]
pub(super) struct SettingsPage {
    pub(super) nav: Nav,
    pub(super) b2c: B2cView,
    pub(super) knobs: Knobs,
    pub(super) binding_id: BindingId,
    pub(super) magento_url: String,
    pub(super) csrf_token: String,
    pub(super) toggles: Vec<Toggle>,
    pub(super) selects: Vec<Select>,
    pub(super) prefix: String,
    pub(super) prefix_error: Option<String>,
    pub(super) tax_rows: Vec<TaxRow>,
    pub(super) tax_error: Option<String>,
    pub(super) methods: Vec<Select>,
    pub(super) methods_note: Option<String>,
    pub(super) reference_age: String,
    pub(super) notice: Option<String>,
    pub(super) error: Option<String>,
    /// After a save: the runs the change can fix, offered for retry.
    pub(super) fixable: Option<FixableOffer>,
}

/// "This change can fix N runs: retry them?"
pub struct FixableOffer {
    /// Comma-separated codes for the retry form.
    pub codes: String,
    pub count: u64,
    pub summary: String,
}

pub(super) fn label_of(item: &serde_json::Value) -> String {
    let id = item["id"].as_str().unwrap_or_default();
    let name = item["displayed_as"]
        .as_str()
        .or_else(|| item["name"].as_str())
        .unwrap_or(id);
    match item["nominal_code"].as_i64() {
        Some(code) if !name.contains(&code.to_string()) => format!("{code} {name}"),
        _ => name.to_owned(),
    }
}

/// Options from the reference cache; a stored id Sage no longer lists stays visible as
/// "(missing) id" so saving does not silently change it.
pub(super) fn options(reference: &Reference, kind: &str, current: Option<&str>, none: Option<&str>) -> Vec<Opt> {
    let mut out = Vec::new();
    if let Some(none) = none {
        out.push(Opt {
            value: String::new(),
            label: none.to_owned(),
            selected: current.is_none(),
        });
    }
    let items = reference
        .kinds
        .get(kind)
        .map(|l| l.items.as_slice())
        .unwrap_or_default();
    for item in items {
        let id = item["id"].as_str().unwrap_or_default();
        out.push(Opt {
            value: id.to_owned(),
            label: label_of(item),
            selected: current == Some(id),
        });
    }
    if let Some(c) = current
        && !c.is_empty()
        && !items.iter().any(|i| i["id"].as_str() == Some(c))
    {
        out.push(Opt {
            value: c.to_owned(),
            label: format!("(missing) {c}"),
            selected: true,
        });
    }
    out
}

/// The store's payment methods, live; `None` when the store cannot be asked.
pub(super) async fn store_methods(state: &AppState, binding: &bindings::Binding) -> Option<Vec<(String, String)>> {
    let sealed = bindings::sealed_api_key(&state.db, binding.binding_id).await.ok()?;
    let store = ledger_magento_callback::store::StoreRef {
        binding_id: binding.binding_id,
        tenant_id: binding.tenant_id,
        base_url: &binding.magento_base_url,
        sealed_api_key: sealed.as_deref(),
        store_clock_skew: binding.store_clock_skew,
    };
    let client = ledger_magento_callback::store::store_client(state, store).await.ok()?;
    let methods = client.payment_methods().await.ok()??;
    Some(
        methods
            .into_iter()
            .filter(|m| m.is_active)
            .map(|m| {
                let label = m.label.clone().unwrap_or_else(|| m.code.clone());
                (m.code, label)
            })
            .collect(),
    )
}

/// What the form shows: the values, each field's error, and the page's notice or error.
pub(super) struct Shown<'a> {
    pub(super) settings: &'a Settings,
    pub(super) errors: &'a [FieldError],
    pub(super) notice: Option<String>,
    pub(super) error: Option<String>,
}

pub(super) async fn settings_view(
    state: &AppState,
    merchant: &Merchant,
    binding: &bindings::Binding,
    shown: Shown<'_>,
) -> Result<SettingsPage, Problem> {
    let Shown {
        settings: s,
        errors,
        notice,
        error,
    } = shown;
    let reference = reference::load(&state.db, binding.binding_id).await?;
    let fields = by_field(errors);
    let err = |name: &str| fields.get(name).cloned();
    let toggles = vec![
        Toggle {
            name: "sync_unpaid_invoices",
            label: "Sync unpaid invoices",
            checked: s.sync_unpaid_invoices,
            error: err("sync_unpaid_invoices"),
        },
        Toggle {
            name: "sync_zero_value_invoices",
            label: "Sync zero-value invoices",
            checked: s.sync_zero_value_invoices,
            error: err("sync_zero_value_invoices"),
        },
        Toggle {
            name: "sync_products",
            label: "Sync products",
            checked: s.sync_products,
            error: err("sync_products"),
        },
        Toggle {
            name: "sync_stock",
            label: "Sync stock levels (with products)",
            checked: s.sync_stock,
            error: err("sync_stock"),
        },
        Toggle {
            name: "catalog_prices_include_tax",
            label: "Catalogue prices include VAT (as Magento's \"Catalog Prices\" setting): product prices sent to Sage say so",
            checked: s.catalog_prices_include_tax,
            error: err("catalog_prices_include_tax"),
        },
    ];
    let select = |name: &str, label: &str, kind: &str, current: &Option<String>, none: Option<&str>| Select {
        name: name.to_owned(),
        label: label.to_owned(),
        options: options(&reference, kind, current.as_deref(), none),
        error: err(name),
    };
    let selects = vec![
        select(
            "default_ledger_account_id",
            "Sales ledger account",
            "ledger_accounts_sales",
            &s.default_ledger_account_id,
            Some("— choose —"),
        ),
        select(
            "default_tax_rate_id",
            "Default tax rate",
            "tax_rates",
            &s.default_tax_rate_id,
            Some("— none —"),
        ),
        select(
            "default_bank_account_id",
            "Default bank account",
            "bank_accounts",
            &s.default_bank_account_id,
            Some("— none —"),
        ),
        select(
            "default_purchase_ledger_account_id",
            "Purchase ledger account (products)",
            "ledger_accounts_expenses",
            &s.default_purchase_ledger_account_id,
            Some("— none —"),
        ),
        select(
            "shipping_ledger_account_id",
            "Ledger account for shipping booked as a line",
            "ledger_accounts_sales",
            &s.shipping_ledger_account_id,
            Some("— the sales account —"),
        ),
        select(
            "unexplained_difference_account_id",
            "Account for amounts Magento's totals hold that its documents do not itemise (payment fees, gift cards)",
            "ledger_accounts_sales",
            &s.unexplained_difference_account_id,
            Some("— none: such a document fails, naming the difference —"),
        ),
    ];
    let mut tax_rows: Vec<TaxRow> = s
        .tax_rate_map
        .iter()
        .enumerate()
        .map(|(index, (pct, id))| TaxRow {
            index,
            pct: pct.clone(),
            select: Select {
                name: format!("tax_rate_{index}"),
                label: format!("Sage tax rate for {pct}%"),
                options: options(&reference, "tax_rates", Some(id), Some("— remove —")),
                error: err(&format!("tax_rate_map.{pct}")),
            },
        })
        .collect();
    let index = tax_rows.len();
    tax_rows.push(TaxRow {
        index,
        pct: String::new(),
        select: Select {
            name: format!("tax_rate_{index}"),
            label: "Sage tax rate for a new percentage".to_owned(),
            options: options(&reference, "tax_rates", None, Some("— none —")),
            error: None,
        },
    });
    let tax_error = errors
        .iter()
        .find(|e| e.field.starts_with("tax_rate_map.") && e.code == "invalid_format")
        .map(|e| {
            format!(
                "{}: {} ({})",
                e.field.trim_start_matches("tax_rate_map."),
                e.message,
                e.code
            )
        });

    let live = store_methods(state, binding).await;
    let methods_note = live
        .is_none()
        .then(|| "The store could not be asked for its payment methods; the ones already mapped are shown.".to_owned());
    let mut codes: Vec<(String, String)> = live.unwrap_or_default();
    for code in s.payment_method_map.keys() {
        if !codes.iter().any(|(c, _)| c == code) {
            codes.push((code.clone(), code.clone()));
        }
    }
    let methods = codes
        .into_iter()
        .map(|(code, label)| {
            let current = s.payment_method_map.get(&code).cloned().flatten();
            Select {
                name: format!("pm.{code}"),
                label: format!("{label} ({code})"),
                options: options(
                    &reference,
                    "bank_accounts",
                    current.as_deref(),
                    Some("Leave unpaid in Sage"),
                ),
                error: err(&format!("payment_method_map.{code}")),
            }
        })
        .collect();
    let list = |v: &[i64]| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    let b2c = B2cView {
        enabled: s.b2c.enabled,
        always_individual_for_b2b: s.b2c.always_individual_for_b2b,
        name: s.b2c.fallback_contact_name.clone(),
        email: s.b2c.fallback_contact_email.clone().unwrap_or_default(),
        reference: s.b2c.fallback_contact_reference.clone(),
        min_total: s.b2c.min_total_for_individual.to_string(),
        reference_error: err("b2c.fallback_contact_reference"),
        min_total_error: err("b2c.min_total_for_individual"),
    };
    let knobs = Knobs {
        person_first: s.customer_name_priority == policy::NamePriority::Person,
        tax_based_on: match s.tax_based_on {
            policy::TaxBasis::Shipping => "shipping",
            policy::TaxBasis::Billing => "billing",
            policy::TaxBasis::Origin => "origin",
        },
        time_zone: s.time_zone.clone().unwrap_or_default(),
        time_zone_error: err("time_zone"),
        website_currencies: s
            .website_base_currencies
            .iter()
            .map(|(w, c)| format!("{w}={c}"))
            .collect::<Vec<_>>()
            .join(", "),
        website_currencies_error: fields
            .iter()
            .find(|(f, _)| f.starts_with("website_base_currencies"))
            .map(|(_, e)| e.clone()),
        cancel_with_credit_note: s.cancelled_invoice_action == policy::CancelledInvoiceAction::CreditNote,
        sync_since: s.sync_since.map(|d| d.to_string()).unwrap_or_default(),
        sync_since_error: err("sync_since"),
        website_filter: list(&s.website_filter),
        website_filter_error: err("website_filter"),
        store_filter: list(&s.store_filter),
        store_filter_error: err("store_filter"),
    };
    Ok(SettingsPage {
        nav: Nav::of(merchant),
        b2c,
        knobs,
        binding_id: binding.binding_id,
        magento_url: binding.magento_base_url.clone(),
        csrf_token: merchant.csrf_token().to_owned(),
        toggles,
        selects,
        prefix: s.invoice_number_prefix.clone().unwrap_or_default(),
        prefix_error: err("invoice_number_prefix"),
        tax_rows,
        tax_error,
        methods,
        methods_note,
        reference_age: ago(reference.fetched_at),
        notice,
        error,
        fixable: None,
    })
}

pub(super) async fn binding_of(state: &AppState, id: BindingId) -> Result<bindings::Binding, Problem> {
    bindings::load(&state.db, id)
        .await?
        .ok_or_else(|| Problem::not_found("binding_not_found", "No such binding."))
}

#[derive(Deserialize)]
pub struct NoticeQuery {
    pub(super) saved: Option<String>,
    pub(super) refreshed: Option<String>,
    /// Codes the saved change addresses (comma-separated).
    pub(super) fix: Option<String>,
}

pub async fn settings_page(
    State(state): State<AppState>,
    PageOwner {
        merchant, binding_id, ..
    }: PageOwner<ForSettings>,
    Query(q): Query<NoticeQuery>,
) -> Result<Response, Problem> {
    let binding = binding_of(&state, binding_id).await?;
    let settings = policy::load(&state, binding_id).await?;
    let notice = q
        .saved
        .map(|_| "Settings saved. They apply to events that arrive from now on, and to every retry.".to_owned())
        .or(q.refreshed.map(|_| "Sage reference data refreshed.".to_owned()));
    let shown = Shown {
        settings: &settings,
        errors: &[],
        notice,
        error: None,
    };
    let mut view = settings_view(&state, &merchant, &binding, shown).await?;
    let codes: Vec<String> = q
        .fix
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .filter(|c| policy::FIXABLE_CODES.contains(c))
        .map(str::to_owned)
        .collect();
    if !codes.is_empty() {
        let counts = runs::fixable_counts(&state.db, binding_id, &codes).await?;
        let count: u64 = counts.values().sum();
        if count > 0 {
            view.fixable = Some(FixableOffer {
                codes: counts.keys().cloned().collect::<Vec<_>>().join(","),
                count,
                summary: counts
                    .iter()
                    .map(|(code, n)| format!("{n} {code}"))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(render(&view))
}

#[derive(Deserialize)]
pub struct RetryFixableForm {
    pub(super) csrf_token: String,
    pub(super) codes: String,
}
csrf_forms!(RetryFixableForm);

/// "Retry them" after a settings change: the runs held back by the codes it addresses.
pub async fn retry_fixable(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant, binding_id, ..
        },
        form,
    ): CsrfForm<PageOwner<ForSettings>, RetryFixableForm>,
) -> Result<Response, Problem> {
    let codes: Vec<String> = form.codes.split(',').map(str::to_owned).collect();
    let codes = runs::known_fixable(&codes).map_err(|e| Problem::validation(vec![e]))?;
    let n = runs::retry_fixable(&state, binding_id, &codes, Actor::Account(merchant.account_id.0)).await?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/runs?retried={n}")).into_response())
}

/// The submitted form over the stored settings (knobs the form does not show are kept).
/// The form's fields by name (the first of repeated names), so reading them is linear in
/// the form, however many tax-rate rows it has.
pub(super) fn form_index(form: &[(String, String)]) -> std::collections::HashMap<&str, &str> {
    let mut index = std::collections::HashMap::with_capacity(form.len());
    for (k, v) in form {
        index.entry(k.as_str()).or_insert(v.as_str());
    }
    index
}

pub(super) fn apply_form(mut s: Settings, form: &[(String, String)]) -> Settings {
    let index = form_index(form);
    let get = |name: &str| index.get(name).map(|v| v.trim().to_owned());
    let id = |name: &str| get(name).filter(|v| !v.is_empty());
    s.sync_unpaid_invoices = get("sync_unpaid_invoices").is_some();
    s.sync_zero_value_invoices = get("sync_zero_value_invoices").is_some();
    s.sync_products = get("sync_products").is_some();
    s.sync_stock = get("sync_stock").is_some();
    s.default_ledger_account_id = id("default_ledger_account_id");
    s.default_tax_rate_id = id("default_tax_rate_id");
    s.default_bank_account_id = id("default_bank_account_id");
    s.default_purchase_ledger_account_id = id("default_purchase_ledger_account_id");
    s.shipping_ledger_account_id = id("shipping_ledger_account_id");
    s.unexplained_difference_account_id = id("unexplained_difference_account_id");
    s.catalog_prices_include_tax = get("catalog_prices_include_tax").is_some();
    s.tax_based_on = match get("tax_based_on").as_deref() {
        Some("billing") => policy::TaxBasis::Billing,
        Some("origin") => policy::TaxBasis::Origin,
        _ => policy::TaxBasis::Shipping,
    };
    s.cancelled_invoice_action = match get("cancelled_invoice_action").as_deref() {
        Some("credit_note") => policy::CancelledInvoiceAction::CreditNote,
        _ => policy::CancelledInvoiceAction::Void,
    };
    s.time_zone = id("time_zone");
    // "1=EUR, 2=USD"; a malformed pair is reported by `form_errors`.
    s.website_base_currencies = get("website_base_currencies")
        .unwrap_or_default()
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(w, c)| (w.trim().to_owned(), c.trim().to_owned()))
        .collect();
    s.invoice_number_prefix = id("invoice_number_prefix");
    s.customer_name_priority = match get("customer_name_priority").as_deref() {
        Some("Person") => policy::NamePriority::Person,
        _ => policy::NamePriority::Company,
    };
    // Unparseable text is kept out of the typed settings; `form_errors` reports it.
    s.sync_since = id("sync_since").and_then(|d| chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").ok());
    let ids = |name: &str| -> Vec<i64> {
        get(name)
            .unwrap_or_default()
            .split(',')
            .filter_map(|v| v.trim().parse().ok())
            .collect()
    };
    s.website_filter = ids("website_filter");
    s.store_filter = ids("store_filter");
    s.b2c.enabled = get("b2c.enabled").is_some();
    s.b2c.always_individual_for_b2b = get("b2c.always_individual_for_b2b").is_some();
    if let Some(name) = id("b2c.fallback_contact_name") {
        s.b2c.fallback_contact_name = name;
    }
    s.b2c.fallback_contact_email = id("b2c.fallback_contact_email");
    s.b2c.fallback_contact_reference = get("b2c.fallback_contact_reference").unwrap_or_default();
    if let Some(min) = get("b2c.min_total_for_individual") {
        s.b2c.min_total_for_individual = if min.is_empty() {
            rust_decimal::Decimal::ZERO
        } else {
            min.parse().unwrap_or(rust_decimal::Decimal::NEGATIVE_ONE)
        };
    }
    s.tax_rate_map = BTreeMap::new();
    for (k, pct) in form {
        if let Some(index) = k.strip_prefix("tax_pct_")
            && !pct.trim().is_empty()
            && let Some(rate) = id(&format!("tax_rate_{index}"))
        {
            s.tax_rate_map.insert(pct.trim().to_owned(), rate);
        }
    }
    // "Leave unpaid" is the default for an unlisted method: only record it for methods
    // the map already named, so saving the page does not add noise.
    let before = std::mem::take(&mut s.payment_method_map);
    s.payment_method_map = form
        .iter()
        .filter_map(|(k, v)| {
            k.strip_prefix("pm.")
                .map(|code| (code.to_owned(), Some(v.clone()).filter(|v| !v.is_empty())))
        })
        .filter(|(code, account)| account.is_some() || before.contains_key(code))
        .collect();
    s
}

/// Text fields the typed settings cannot hold when malformed: named here so the page
/// can say what to fix instead of silently dropping the value.
pub(super) fn form_errors(form: &[(String, String)]) -> Vec<FieldError> {
    let index = form_index(form);
    let get = |name: &str| index.get(name).map(|v| v.trim().to_owned());
    let mut errors = Vec::new();
    let mut bad = |field: &str, message: &str| {
        errors.push(FieldError {
            field: field.to_owned(),
            code: "invalid_format".to_owned(),
            message: message.to_owned(),
        });
    };
    if let Some(d) = get("sync_since").filter(|d| !d.is_empty())
        && chrono::NaiveDate::parse_from_str(&d, "%Y-%m-%d").is_err()
    {
        bad("sync_since", "a date as YYYY-MM-DD");
    }
    if get("website_base_currencies").is_some_and(|v| {
        v.split(',')
            .any(|p| !p.trim().is_empty() && p.split_once('=').is_none())
    }) {
        bad(
            "website_base_currencies",
            "website id = currency pairs, e.g. 1=EUR, 2=USD",
        );
    }
    for name in ["website_filter", "store_filter"] {
        if get(name).is_some_and(|v| {
            v.split(',')
                .any(|p| !p.trim().is_empty() && p.trim().parse::<i64>().is_err())
        }) {
            bad(name, "ids separated by commas, e.g. 1, 2");
        }
    }
    if get("b2c.min_total_for_individual").is_some_and(|v| !v.is_empty() && v.parse::<rust_decimal::Decimal>().is_err())
    {
        bad("b2c.min_total_for_individual", "an amount such as 250.00");
    }
    errors
}

pub async fn settings_submit(
    State(state): State<AppState>,
    CsrfForm(
        PageOwner {
            merchant,
            binding_id,
            tenant_id: tenant,
            ..
        },
        form,
    ): CsrfForm<PageOwner<ForSettings>, Vec<(String, String)>>,
) -> Result<Response, Problem> {
    let binding = binding_of(&state, binding_id).await?;
    let before = policy::load(&state, binding_id).await?;
    let submitted = apply_form(before.clone(), &form);
    let format_errors = form_errors(&form);
    let saved = if format_errors.is_empty() {
        policy::save(
            &state,
            binding_id,
            tenant,
            submitted.clone(),
            Actor::Account(merchant.account_id.0),
        )
        .await
    } else {
        Err(policy::SaveError::Invalid(format_errors))
    };
    match saved {
        Ok(after) => {
            // Offer to retry what the change can fix (the page counts them).
            let fix = policy::fixable_codes(&before, &after).join(",");
            let query = if fix.is_empty() {
                String::new()
            } else {
                format!("&fix={fix}")
            };
            Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/settings?saved=1{query}")).into_response())
        }
        Err(policy::SaveError::Invalid(errors)) => {
            // Nothing was saved: show the submitted values with each field's error, in
            // the API's words.
            let problem = Problem::validation(errors);
            let shown = Shown {
                settings: &submitted,
                errors: &problem.errors,
                notice: None,
                error: Some(format!("Nothing was saved. {}", problem.detail)),
            };
            let view = settings_view(&state, &merchant, &binding, shown).await?;
            let mut response = render(&view);
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(err) => Err(err.into()),
    }
}

pub async fn reference_refresh(
    State(state): State<AppState>,
    CsrfForm(PageOwner { binding_id, .. }, _): CsrfForm<PageOwner<ForSettings>, Button>,
) -> Result<Response, Problem> {
    reference::refresh(&state, binding_id).await.map_err(|e| {
        Problem::unavailable(
            "reference_refresh_failed",
            format!("Sage could not be asked for its reference data right now ({e}); try again shortly."),
            30,
        )
    })?;
    Ok(Redirect::to(&format!("/dashboard/bindings/{binding_id}/settings?refreshed=1")).into_response())
}
