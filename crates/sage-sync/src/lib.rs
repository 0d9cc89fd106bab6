//! The sync engine: durable jobs, sync runs, policy, the Magento → Sage mapping,
//! exactly-once posting and the per-business rate budget. Nothing here yet.
