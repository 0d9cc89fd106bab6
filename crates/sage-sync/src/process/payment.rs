//! Payments: `invoice.paid` records the payment and allocates it to its invoice.

// A part of the processing module: its helpers and imports are this file's too.
use super::*;

/// When a document depends on the invoice: the invoice's xref, or how to wait/fail.
pub(super) async fn require_invoice(env: &Env<'_>, invoice_id: i64) -> Step<xref::Xref> {
    if let Some(x) = xref::get(
        &env.state.db,
        &XrefKey::document(env.run.binding, &env.business, "invoice", invoice_id),
    )
    .await?
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

pub(super) async fn invoice_paid(env: &mut Env<'_>) -> Step<Outcome> {
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
    // What the invoice still owes: known from what the ledger posted and allocated (one
    // Sage call per payment); read from Sage for an invoice posted before balances were
    // kept, and after Sage refuses the known figure (the merchant paid or credited part
    // of it by hand in Sage).
    let mut open = invoice.known_open("payment").map(|o| (o, true));
    let mut previous = previous;
    let (created, allocate, reference) = loop {
        let (outstanding, known) = match open.take() {
            Some(o) => o,
            None => (invoice_open(env, &sage_invoice).await?, false),
        };
        let body = mapping::map_payment(
            &mapping::Receipt {
                invoice_id,
                increment_id: &payment.invoice_increment_id,
                contact_id: &contact_id,
                sage_invoice_id: &sage_invoice,
                bank_account_id: &bank,
                amount: payment.amount,
                allocate: outstanding,
                currency: &payment.currency,
                sage_rate: rate,
                date: &date,
            },
            &env.ctx(),
        )?;
        let reference = body["reference"].as_str().unwrap_or_default().to_owned();
        let mapped = Mapped {
            body,
            totals: Default::default(),
            notes: Vec::new(),
            treatment: None,
        };
        let posted = post_once(
            env,
            Doc {
                entity: "payment",
                id: invoice_id,
                path: "/contact_payments",
                wrapper: "contact_payment",
                reference: &reference,
                contact_id: &contact_id,
                previous: previous.clone(),
            },
            mapped,
        )
        .await;
        match posted {
            Ok(created) => break (created, cents(outstanding).min(cents(payment.amount)), reference),
            Err(Stop::Failed(f)) if known && refused(&f) => {
                let actual = invoice_open(env, &sage_invoice).await?;
                if actual == cents(outstanding) {
                    return Err(f.into()); // refused for another reason
                }
                open = Some((actual, false));
                previous = xref::get(
                    &env.state.db,
                    &XrefKey::document(env.run.binding, &env.business, "payment", invoice_id),
                )
                .await?;
            }
            Err(e) => return Err(e),
        }
    };
    let sage_id = sage_id_of(&created, "payment")?;
    // What Sage allocated (a payment an earlier attempt made, found by its reference, may
    // have allocated another amount than this attempt computed).
    let allocate = created["allocated_artefacts"]
        .as_array()
        .and_then(|a| {
            a.iter()
                .find(|a| a["artefact_id"].as_str() == Some(sage_invoice.as_str()))
        })
        .and_then(|a| amount(&a["amount"]))
        .unwrap_or(allocate);
    let on_account = cents(payment.amount) - allocate.min(cents(payment.amount));
    xref::mark_payment_posted(
        &env.state.db,
        &XrefKey::document(env.run.binding, &env.business, "payment", invoice_id),
        &sage_id,
        &reference,
        allocate,
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

/// What a posted invoice still owes, as Sage has it (one call).
pub(super) async fn invoice_open(env: &mut Env<'_>, sage_invoice: &str) -> Step<Decimal> {
    let current: Value = sage!(
        env.session
            .get(&format!("/sales_invoices/{sage_invoice}?mark_as_sent=false"))
            .await
    );
    Ok(cents(amount(&current["outstanding_amount"]).unwrap_or_default()))
}

/// Sage refused the data (a 422 and the like), as opposed to not having it or failing.
pub(super) fn refused(f: &Failure) -> bool {
    f.class == ErrorClass::Validation && f.code.starts_with("sage_") && f.code != "sage_not_found"
}
