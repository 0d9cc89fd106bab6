//! What processing a job can end in, and how each ending is retried.

use std::time::Duration;

/// Failure classes. They decide retries, and map onto the error codes the Magento
/// module documents for its chips (`auth`, `validation`, `rate_limited`, ...).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The document cannot be posted as it is: fix the data or the settings, then retry.
    Validation,
    /// A setting is missing or points at something Sage no longer has.
    Config,
    /// The Magento entity does not exist (any more).
    NotFound,
    /// The store refused the ledger's key (re-pair).
    MagentoAuth,
    /// Sage needs re-authorisation, or the subscription lapsed: held, not failed.
    SageAuth,
    RateLimited,
    /// Sage or the database failed for a moment.
    Transient,
    /// The store did not answer.
    MagentoUnreachable,
    /// A bug or an unexpected answer.
    Internal,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::Config => "config",
            Self::NotFound => "not_found",
            Self::MagentoAuth => "magento_auth",
            Self::SageAuth => "auth",
            Self::RateLimited => "rate_limited",
            Self::Transient => "transient",
            Self::MagentoUnreachable => "magento_unreachable",
            Self::Internal => "internal",
        }
    }

    /// The module's documented `error_code` vocabulary for the chip tooltip.
    pub fn magento_code(self) -> &'static str {
        match self {
            Self::Validation | Self::Config => "validation",
            Self::NotFound => "not_found",
            Self::MagentoAuth | Self::SageAuth => "auth",
            Self::RateLimited => "rate_limited",
            Self::Transient => "provider",
            Self::MagentoUnreachable => "http",
            Self::Internal => "internal",
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone)]
pub struct Failure {
    pub class: ErrorClass,
    /// Stable code, e.g. `total_mismatch`, `sage_record_invalid`.
    pub code: String,
    /// What happened and what to do, for the merchant.
    pub message: String,
    /// Sage's `Retry-After`, when it sent one.
    pub retry_after: Option<Duration>,
}

impl Failure {
    pub fn new(class: ErrorClass, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            class,
            code: code.into(),
            message: message.into(),
            retry_after: None,
        }
    }
}

/// How a job ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    Synced {
        sage_id: String,
        reference: Option<String>,
        message: Option<String>,
    },
    /// A policy skip: terminal, with a stable reason code.
    Skipped {
        reason: String,
        message: String,
    },
    Failed(Failure),
    /// Waiting for something else (the invoice a payment needs, the budget): try again
    /// after `after` without spending an attempt.
    Blocked {
        after: Duration,
        reason: String,
        /// The entity lease whose release ends the wait (e.g. `invoice:42`): the attempt
        /// that releases it wakes this job instead of leaving it to its timer.
        on: Option<ledger_jobs::EntityKey>,
    },
}

/// What happens to the job after an outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The run is over (synced, skipped, failed or dead).
    Done,
    /// Try again after the delay; `count` says whether the attempt counts.
    Retry { after: Duration, count: bool },
}

/// Exponential backoff with jitter: 2 s · 2^(attempt−1), at most 15 minutes, ±20 %.
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    let base = Duration::from_secs(2).saturating_mul(1u32 << attempt.saturating_sub(1).min(10));
    let capped = base.min(Duration::from_secs(900));
    let jitter_permille = u64::from(ring_jitter() % 400) + 800; // 0.8 .. 1.2
    let jittered =
        Duration::from_millis(u64::try_from(capped.as_millis()).unwrap_or(u64::MAX) * jitter_permille / 1000);
    retry_after.map_or(jittered, |r| r.max(jittered))
}

fn ring_jitter() -> u16 {
    let bytes: [u8; 2] = ledger_core::crypto::random_bytes();
    u16::from_le_bytes(bytes)
}

/// Decides retries: validation, config and missing entities stop until someone changes
/// something; held classes wait without spending attempts; the rest back off and die
/// after `max_attempts`.
pub fn next(outcome: &Outcome, attempt: u32, max_attempts: u32) -> Next {
    match outcome {
        Outcome::Synced { .. } | Outcome::Skipped { .. } => Next::Done,
        Outcome::Blocked { after, .. } => Next::Retry {
            after: *after,
            count: false,
        },
        Outcome::Failed(f) => match f.class {
            ErrorClass::Validation | ErrorClass::Config | ErrorClass::NotFound => Next::Done,
            ErrorClass::SageAuth | ErrorClass::MagentoAuth | ErrorClass::MagentoUnreachable => Next::Retry {
                after: backoff(attempt, f.retry_after).max(Duration::from_secs(30)),
                count: false,
            },
            ErrorClass::RateLimited | ErrorClass::Transient | ErrorClass::Internal if attempt < max_attempts => {
                Next::Retry {
                    after: backoff(attempt, f.retry_after),
                    count: true,
                }
            }
            ErrorClass::RateLimited | ErrorClass::Transient | ErrorClass::Internal => Next::Done,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let first = backoff(1, None);
        assert!((1600..=2400).contains(&first.as_millis()), "{first:?}");
        let tenth = backoff(10, None);
        assert!(
            tenth <= Duration::from_secs(1080) && tenth >= Duration::from_secs(720),
            "{tenth:?}"
        );
        assert!(backoff(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
    }

    #[test]
    fn classes_decide_retries() {
        let f = |class| Outcome::Failed(Failure::new(class, "x", "y"));
        assert_eq!(next(&f(ErrorClass::Validation), 1, 10), Next::Done);
        assert!(matches!(
            next(&f(ErrorClass::Transient), 1, 10),
            Next::Retry { count: true, .. }
        ));
        assert_eq!(
            next(&f(ErrorClass::Transient), 10, 10),
            Next::Done,
            "dead after the last attempt"
        );
        assert!(
            matches!(next(&f(ErrorClass::SageAuth), 50, 10), Next::Retry { count: false, .. }),
            "held, never dead"
        );
        let blocked = Outcome::Blocked {
            after: Duration::from_secs(5),
            reason: "x".into(),
            on: None,
        };
        assert_eq!(
            next(&blocked, 3, 10),
            Next::Retry {
                after: Duration::from_secs(5),
                count: false
            }
        );
    }
}
