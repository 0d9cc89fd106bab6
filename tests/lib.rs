//! End-to-end tests that cross crates and processes live beside this file; see `e2e/`.
