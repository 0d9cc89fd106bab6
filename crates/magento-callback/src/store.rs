//! The client for one binding's store.

use ledger_core::{AppState, BindingId, TenantId};
use ledger_magento_api::{MagentoClient, MagentoError, UrlPolicy, url::Url};
use ledger_tenant_binding::bindings::{self, ApiKeyError};

/// What it takes to call a binding's store, as read with the binding's other columns.
#[derive(Debug, Clone, Copy)]
pub struct StoreRef<'a> {
    pub binding_id: BindingId,
    pub tenant_id: TenantId,
    pub base_url: &'a str,
    /// The binding's sealed `api_key` column.
    pub sealed_api_key: Option<&'a [u8]>,
    /// The store's clock minus ours as last recorded, so signed requests match its clock.
    pub store_clock_skew: Option<i32>,
}

/// Why the store cannot be called.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    ApiKey(#[from] ApiKeyError),
    #[error("the binding's store URL `{0}` is not a URL")]
    BadUrl(String),
    /// The URL policy refused the address, or it did not resolve.
    #[error(transparent)]
    Magento(#[from] MagentoError),
}

/// A client for the binding's store, signing with its api_key.
pub async fn store_client(state: &AppState, store: StoreRef<'_>) -> Result<MagentoClient, StoreError> {
    let key = bindings::open_api_key(state, store.binding_id, store.sealed_api_key)?;
    let base = Url::parse(store.base_url).map_err(|_| StoreError::BadUrl(store.base_url.to_owned()))?;
    let client = MagentoClient::new(&base, &store.tenant_id.to_string(), &key, &UrlPolicy::of(state)).await?;
    Ok(client.with_store_clock(store.store_clock_skew))
}
