//! The vault: AES-256-GCM envelope encryption of every secret under rotating master
//! keys, Sage OAuth tokens with race-free refresh, and the Sage reference cache. Nothing here yet.
