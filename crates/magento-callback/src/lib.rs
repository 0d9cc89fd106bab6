//! Calls back into the store: health pings (here), sync-state delivery and
//! payment-method look-ups (with the sync engine).

pub mod health;
