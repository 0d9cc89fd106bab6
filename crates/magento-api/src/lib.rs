//! Everything needed to speak to the byte8 Magento module, and nothing about what
//! the ledger does with it:
//!
//! - [`auth`]: the HKDF subkeys and HS256 JWTs of contract §2–§3, byte for byte;
//! - [`url`]: which store URLs the ledger may call (SSRF rules) and a pinned HTTP client;
//! - [`client`]: the typed client for `/rest/V1/byte8/*` (contract §4, §8);
//! - [`canonical`]: the canonical entity shapes with decimal money (contract §8.3–§8.12).

pub mod auth;
pub mod canonical;
pub mod client;
pub mod url;

pub use client::{MagentoClient, MagentoError};
pub use url::{UrlError, UrlPolicy};
