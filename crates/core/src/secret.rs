//! A wrapper that keeps secrets out of logs, traces, errors and API answers.

use std::fmt;

/// A secret value. `Debug` and `Display` print a fixed placeholder; the value is
/// only reachable through [`Secret::expose`], which makes every use greppable.
/// It deliberately implements neither `Serialize` nor `Display` of the inner value.
#[derive(Clone, Default)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub const fn new(value: T) -> Self {
        Self(value)
    }

    pub fn expose(&self) -> &T {
        &self.0
    }

    pub fn into_inner(self) -> T {
        self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T> fmt::Display for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[REDACTED]")
    }
}

impl<T> From<T> for Secret<T> {
    fn from(value: T) -> Self {
        Self(value)
    }
}

impl<T: AsRef<[u8]>> Secret<T> {
    /// Compares with `other` in time independent of where the bytes differ.
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        constant_time_eq(self.0.as_ref(), other)
    }
}

/// Constant-time byte comparison (the length itself is not secret).
#[inline(never)]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_and_display_redact() {
        let s = Secret::new("byte8_lk_super_secret".to_owned());
        assert_eq!(format!("{s:?}"), "[REDACTED]");
        assert_eq!(format!("{s}"), "[REDACTED]");
        assert!(!format!("{:?}", Some(&s)).contains("super"));
    }

    #[test]
    fn constant_time_comparison() {
        let s = Secret::new(b"abc".to_vec());
        assert!(s.ct_eq(b"abc"));
        assert!(!s.ct_eq(b"abd"));
        assert!(!s.ct_eq(b"ab"));
    }
}
