//! Calls back into the store: sync-state delivery (contract §8.12), health pings and
//! payment-method look-ups. Nothing here yet.
