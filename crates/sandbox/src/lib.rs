//! Simulators for what cannot run here: Sage's OAuth and API servers, and a Magento store
//! running the byte8 module. Nothing here yet.
