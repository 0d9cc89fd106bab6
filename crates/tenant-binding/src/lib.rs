//! Accounts, tenants and bindings, the HKDF subkeys and the JWTs in both directions
//! (contract §2–§3), and disconnect. Nothing here yet.
