//! Typed client and models for the Sage Accounting API v3.1; no business logic. Nothing here yet.
