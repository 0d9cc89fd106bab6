//! Reading answers from servers we do not control (stores, Sage, the OAuth server)
//! within hard limits: a hostile server streaming hundreds of MiB inside the timeout
//! must not take the pod's memory with it.

/// An entity read back from a store, a page of a Sage list.
pub const ENTITY_LIMIT: usize = 4 << 20;
/// A Sage list page (200 items with every attribute).
pub const PAGE_LIMIT: usize = 8 << 20;
/// Pairing, ping, sync-state and OAuth token answers.
pub const SMALL_LIMIT: usize = 64 << 10;
/// The part of an error answer that is kept for its message.
pub const ERROR_LIMIT: usize = 16 << 10;

/// Why an answer's body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {} KiB, more than the ledger reads", limit >> 10)]
    TooLarge { limit: usize },
    #[error("reading the answer failed ({})", describe(.0))]
    Transport(reqwest::Error),
}

impl BodyError {
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Transport(e) if e.is_timeout())
    }
}

/// A reqwest error's text without its URL (query strings can carry customer emails).
pub fn describe(err: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        parts.push(e.to_string());
        source = e.source();
    }
    let head = if err.is_timeout() {
        "timed out"
    } else if err.is_connect() {
        "cannot connect"
    } else if err.is_body() || err.is_decode() {
        "the body broke off"
    } else {
        "request failed"
    };
    if parts.is_empty() {
        head.to_owned()
    } else {
        format!("{head}: {}", parts.join(": "))
    }
}

/// The whole body, refused as soon as it is known to exceed `limit` (by Content-Length
/// before reading, else while streaming), never buffering more than `limit` bytes.
pub async fn read_limited(mut response: reqwest::Response, limit: usize) -> Result<Vec<u8>, BodyError> {
    let declared = response.content_length();
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut body = Vec::with_capacity(declared.map_or(0, |n| n as usize).min(limit));
    while let Some(chunk) = response.chunk().await.map_err(BodyError::Transport)? {
        if body.len() + chunk.len() > limit {
            return Err(BodyError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// At most the first `limit` bytes of an (error) body; the rest is never read.
pub async fn read_prefix(mut response: reqwest::Response, limit: usize) -> Vec<u8> {
    let mut body = Vec::new();
    while body.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                let room = limit - body.len();
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
            }
            _ => break,
        }
    }
    body
}
