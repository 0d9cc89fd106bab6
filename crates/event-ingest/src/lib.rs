//! The webhook endpoint `POST /webhooks/magento/{tenant_id}/{event_name}`: verification,
//! idempotent persistence and enqueue (contract §5.2). Nothing here yet.
