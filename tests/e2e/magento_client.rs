//! The typed Magento client against the sandbox store: every canonical entity parses
//! into decimal money, and failures are classified.

use std::str::FromStr as _;

use ledger_core::Secret;
use ledger_magento_api::{
    MagentoClient, MagentoError, UrlPolicy,
    canonical::{SyncState, mysql_timestamp},
    client::ErrorClass,
    url::Url,
};
use ledger_sandbox::magento::{Faults, RunningStore, Store, StoreConfig};
use rust_decimal::Decimal;

fn policy() -> UrlPolicy {
    UrlPolicy {
        allow_insecure: true,
        allow_private: true,
        connect_timeout: std::time::Duration::from_secs(2),
        request_timeout: std::time::Duration::from_secs(5),
    }
}

/// A store paired by hand (code → setup/pair), without a ledger.
async fn paired_store() -> (RunningStore, MagentoClient) {
    let running = RunningStore::spawn(StoreConfig {
        drain_interval: std::time::Duration::from_secs(3600),
        ..Default::default()
    })
    .await
    .unwrap();
    let code = running.store.generate_pairing_code();
    let base = Url::parse(&running.base_url).unwrap();
    let key = Secret::new("byte8_lk_client_test_key".to_owned());
    ledger_magento_api::client::pair(&base, &policy(), &code, "tenant-7", &key, "http://127.0.0.1:1")
        .await
        .unwrap();
    let client = MagentoClient::new(&base, "tenant-7", &key, &policy()).await.unwrap();
    (running, client)
}

#[tokio::test]
async fn every_canonical_entity_parses_and_adds_up() {
    let (running, client) = paired_store().await;
    let store: &Store = &running.store;
    let mut guests = 0;
    let mut composite = 0;
    let mut foreign_currency = 0;
    for _ in 0..60 {
        let (_, invoice_id) = store.place_order(true);
        let invoice = client.invoice(invoice_id).await.unwrap();
        let lines_net: Decimal = invoice.lines.iter().map(|l| l.line_subtotal).sum();
        assert_eq!(lines_net, invoice.subtotal, "{}", invoice.increment_id);
        // Magento's invoice totals (prices without tax here, so no compensation): the
        // header adds up; the module's lines need not (a shipping discount is only in
        // the header's discount).
        assert_eq!(
            invoice.subtotal + invoice.tax_amount + invoice.shipping_amount + invoice.discount_amount,
            invoice.grand_total,
            "subtotal + tax + shipping + discount = grand total for {}",
            invoice.increment_id
        );
        let line_tax: Decimal = invoice.lines.iter().map(|l| l.line_tax).sum();
        assert_eq!(line_tax + invoice.shipping_tax_amount, invoice.tax_amount);
        guests += usize::from(invoice.customer.is_guest());
        composite += usize::from(
            invoice
                .lines
                .iter()
                .any(|l| matches!(l.product_type.as_deref(), Some("configurable" | "bundle"))),
        );
        foreign_currency += usize::from(invoice.currency != "GBP");
        assert!(invoice.billing_address.is_some());
        let payment = client.payment(invoice_id).await.unwrap();
        assert_eq!(payment.amount, invoice.grand_total);
        assert!(payment.gateway_metadata.is_array(), "key-less list on the wire");
        if let Some(memo_id) = store.refund(invoice_id, true) {
            let memo = client.creditmemo(memo_id).await.unwrap();
            // Offline methods refund from the order: no invoice named (contract §12.8).
            let offline = matches!(payment.method.as_str(), "checkmo" | "banktransfer" | "free");
            assert_eq!(memo.invoice_id, (!offline).then_some(invoice_id), "{}", payment.method);
            assert!(memo.adjustment_negative > Decimal::ZERO);
        }
    }
    assert!(
        guests > 0 && composite > 0 && foreign_currency > 0,
        "the catalogue covers guests {guests}, composites {composite}, currencies {foreign_currency}"
    );
    let customer = client.customer(3).await.unwrap();
    assert_eq!(customer.magento_id, 3);
    let product = client.product(12).await.unwrap();
    assert_eq!(product.special_price, Some(Decimal::from_str("3.33").unwrap()));
    assert_eq!(product.tax_class.as_deref(), Some("2"));
    let bundle = client.product(11).await.unwrap();
    assert_eq!(bundle.product_type, "bundle");
}

#[tokio::test]
async fn ping_payment_methods_and_sync_state() {
    let (running, client) = paired_store().await;
    client.ping().await.unwrap();
    let methods = client.payment_methods().await.unwrap().unwrap();
    assert!(methods.iter().any(|m| m.code == "checkmo" && m.is_active));
    assert!(
        methods.iter().any(|m| m.label.is_none()),
        "a method without a title has label null"
    );

    let state = SyncState {
        entity_type: "invoice".into(),
        magento_entity_id: 42,
        provider: "sage_accounting".into(),
        sync_status: "synced".into(),
        provider_entity_id: Some("0a1b2c".into()),
        provider_reference: Some("SI-27".into()),
        skip_reason: None,
        error_code: None,
        last_sync_at: Some(mysql_timestamp(chrono::Utc::now())),
    };
    client.sync_state(&state).await.unwrap();
    let row = running
        .store
        .mirror()
        .into_iter()
        .find(|r| r.magento_entity_id == 42)
        .unwrap();
    assert_eq!(
        (row.sync_status.as_str(), row.provider_reference.as_deref()),
        ("synced", Some("SI-27"))
    );

    // Magento sets SQL_MODE='' on its connections, so RFC 3339 with a trailing Z is
    // stored (contract §12.12); a strict MySQL refuses it — the reason the ledger sends
    // `YYYY-MM-DD HH:MM:SS`.
    client
        .sync_state(&SyncState {
            last_sync_at: Some("2026-04-29T10:11:12Z".into()),
            ..state.clone()
        })
        .await
        .unwrap();
    let strict = RunningStore::spawn(StoreConfig {
        drain_interval: std::time::Duration::from_secs(3600),
        strict_timestamps: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let code = strict.store.generate_pairing_code();
    let base = Url::parse(&strict.base_url).unwrap();
    let key = Secret::new("byte8_lk_client_test_key".to_owned());
    ledger_magento_api::client::pair(&base, &policy(), &code, "tenant-7", &key, "http://127.0.0.1:1")
        .await
        .unwrap();
    let strict_client = MagentoClient::new(&base, "tenant-7", &key, &policy()).await.unwrap();
    let err = strict_client
        .sync_state(&SyncState {
            last_sync_at: Some("2026-04-29T10:11:12Z".into()),
            ..state.clone()
        })
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::BadData);
    let err = client
        .sync_state(&SyncState {
            sync_status: "pending".into(),
            ..state
        })
        .await
        .unwrap_err();
    assert!(err.to_string().contains("Invalid sync_status pending"), "{err}");
}

#[tokio::test]
async fn failures_are_classified() {
    let (running, client) = paired_store().await;
    let missing = client.invoice(999_999).await.unwrap_err();
    assert_eq!(missing.class(), ErrorClass::NotFound);
    let missing_payment = client.payment(999_999).await.unwrap_err();
    assert!(
        missing_payment
            .to_string()
            .contains("Invoice 999999 has no associated order payment"),
        "{missing_payment}"
    );

    running.store.set_faults(Faults { status: 503, count: 1 });
    let transient = client.customer(1).await.unwrap_err();
    assert_eq!(transient.class(), ErrorClass::Transient);
    assert!(client.customer(1).await.is_ok(), "the next call succeeds");

    let base = Url::parse(&running.base_url).unwrap();
    let wrong = MagentoClient::new(&base, "tenant-7", &Secret::new("byte8_lk_wrong".into()), &policy())
        .await
        .unwrap();
    let unauthorized = wrong.ping().await.unwrap_err();
    assert!(matches!(unauthorized, MagentoError::Unauthorized { .. }));
    assert!(
        running.store.log().iter().any(|l| l.contains("Signature")),
        "the store logged why"
    );
}
