//! Typed client for the module's `/rest/V1/byte8/*` routes and the canonical entity
//! shapes (contract §8); no business logic. Nothing here yet.
