//! The ledger's calls into a binding's store: the client for it ([`store::store_client`],
//! the one place that opens the binding's api_key), sync-state delivery
//! ([`delivery::deliver`]) and the health loop's pings ([`health`]).

pub mod delivery;
pub mod health;
pub mod store;
