//! The module's outbox: events enqueued as its observers do, drained like its cron.

// A part of the store: its types and helpers are this file's too.
use super::*;

impl Store {
    /// Enqueues an event as the module's observers do: dropped when the key already
    /// exists in the outbox (whatever its status), plus a `pending` mirror row when none exists.
    pub fn enqueue(
        &self,
        event_name: &str,
        entity_id: i64,
        website_id: i64,
        store_id: i64,
        payload: Value,
    ) -> Option<u64> {
        self.enqueue_at(event_name, entity_id, website_id, store_id, payload, &self.now_text())
    }

    /// [`Self::enqueue`] as an observer that ran at `occurred_at` (UTC, `…Z`).
    pub fn enqueue_at(
        &self,
        event_name: &str,
        entity_id: i64,
        website_id: i64,
        store_id: i64,
        payload: Value,
        occurred_at: &str,
    ) -> Option<u64> {
        let key = format!("{event_name}:{entity_id}");
        let body = event_body(entity_id, website_id, store_id, occurred_at, &payload);
        let mut inner = self.lock();
        if inner.outbox.iter().any(|r| r.idempotency_key == key) {
            inner.log.push(format!("outbox: dropped duplicate key {key}"));
            return None;
        }
        let id = inner.next_outbox_id;
        inner.next_outbox_id += 1;
        inner.outbox.push(OutboxRow {
            id,
            event_name: event_name.to_owned(),
            idempotency_key: key,
            body,
            status: OutboxStatus::Pending,
            attempts: 0,
            last_status_code: None,
            last_error: None,
            last_backoff_ms: None,
            next_attempt_at: None,
        });
        let entity_type = event_name.split('.').next().unwrap_or_default().to_owned();
        if entity_id > 0 && ["invoice", "creditmemo", "customer", "product"].contains(&entity_type.as_str()) {
            inner
                .mirror
                .entry((entity_type.clone(), entity_id))
                .or_insert(MirrorRow {
                    entity_type,
                    magento_entity_id: entity_id,
                    provider: PROVIDER.to_owned(),
                    sync_status: "pending".to_owned(),
                    provider_entity_id: None,
                    provider_reference: None,
                    skip_reason: None,
                    error_code: None,
                    last_sync_at: None,
                });
        }
        Some(id)
    }

    /// Lets time pass for the outbox: every waiting row becomes due now.
    pub fn make_due(&self) {
        for row in self.lock().outbox.iter_mut() {
            row.next_attempt_at = None;
        }
    }

    /// Requeues dead-lettered rows (the module's `outbox:requeue`): pending, attempts 0.
    pub fn requeue(&self, id: Option<u64>) -> usize {
        let mut inner = self.lock();
        let mut n = 0;
        for row in inner
            .outbox
            .iter_mut()
            .filter(|r| r.status == OutboxStatus::DeadLettered && id.is_none_or(|i| i == r.id))
        {
            row.status = OutboxStatus::Pending;
            row.attempts = 0;
            row.next_attempt_at = None;
            n += 1;
        }
        n
    }

    /// One run of the outbox cron.
    pub async fn drain_once(&self) -> DrainReport {
        let _running = self.drain_lock.lock().await;
        let (connection, ledger, batch) = {
            let inner = self.lock();
            let Some(connection) = inner.connection.clone() else {
                return DrainReport::default(); // not connected: rows stay pending
            };
            let now = Instant::now();
            let mut due: Vec<OutboxRow> = inner
                .outbox
                .iter()
                .filter(|r| r.status == OutboxStatus::Pending && r.next_attempt_at.is_none_or(|t| t <= now))
                .cloned()
                .collect();
            due.sort_by_key(|r| r.id);
            due.truncate(DRAIN_BATCH);
            (connection, inner.ledger_base_url.clone(), due)
        };
        let mut report = DrainReport::default();
        for row in batch {
            report.sent += 1;
            let url = format!(
                "{ledger}/webhooks/magento/{}/{}",
                encode_segment(&connection.tenant_id),
                encode_segment(&row.event_name)
            );
            let token = jwt::sign_outbound(&connection.api_key, &connection.tenant_id, self.now());
            let result = self
                .http
                .post(&url)
                .header(header::AUTHORIZATION, format!("Bearer {token}"))
                .header(header::CONTENT_TYPE, "application/json")
                .header("Idempotency-Key", &row.idempotency_key)
                .body(row.body.clone())
                .send()
                .await;
            let (status, body) = match result {
                Ok(r) => {
                    let status = r.status().as_u16();
                    (Some(status), r.text().await.unwrap_or_default())
                }
                Err(e) => (None, e.to_string()),
            };
            self.answers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((Instant::now(), status));
            let mut inner = self.lock();
            let Some(stored) = inner.outbox.iter_mut().find(|r| r.id == row.id) else {
                continue;
            };
            stored.attempts += 1;
            stored.last_status_code = status;
            match status {
                Some(s) if (200..300).contains(&s) => {
                    stored.status = OutboxStatus::Succeeded;
                    stored.last_error = None;
                    report.succeeded += 1;
                }
                Some(s) if (400..500).contains(&s) => {
                    stored.status = OutboxStatus::DeadLettered;
                    let cut: String = body.chars().take(8192).collect();
                    stored.last_error = Some(format!("HTTP {s}: {cut}"));
                    report.dead_lettered += 1;
                }
                _ => {
                    let reason = match status {
                        Some(s) => format!("HTTP {s}: {}", body.chars().take(200).collect::<String>()),
                        None => body,
                    };
                    if stored.attempts >= MAX_ATTEMPTS {
                        stored.status = OutboxStatus::DeadLettered;
                        stored.last_status_code = None;
                        stored.last_error = Some(format!("transient_exhausted: {reason}"));
                        report.dead_lettered += 1;
                    } else {
                        let wait = BACKOFF_LADDER[(stored.attempts as usize - 1).min(BACKOFF_LADDER.len() - 1)];
                        let wait_ms = wait * 1000 / self.config.backoff_divisor.max(1);
                        stored.last_backoff_ms = Some(wait_ms);
                        stored.next_attempt_at = Some(Instant::now() + Duration::from_millis(wait_ms));
                        stored.last_error = Some(reason);
                        report.retrying += 1;
                    }
                }
            }
        }
        report
    }
}

/// An event body in the module's key order, as its outbox stores it.
pub(super) fn event_body(entity_id: i64, website_id: i64, store_id: i64, occurred_at: &str, payload: &Value) -> String {
    fn php(v: &Value) -> Php {
        match v {
            Value::Null => Php::Null,
            Value::Bool(b) => Php::Bool(*b),
            Value::Number(n) => n
                .as_i64()
                .map_or_else(|| Php::Float(n.as_f64().unwrap_or_default()), Php::Int),
            Value::String(s) => Php::Str(s.clone()),
            Value::Array(a) => Php::List(a.iter().map(php).collect()),
            Value::Object(o) => Php::Obj(o.iter().map(|(k, v)| (k.clone(), php(v))).collect()),
        }
    }
    Php::obj()
        .put("magento_entity_id", entity_id)
        .put("website_id", website_id)
        .put("store_id", store_id)
        .put("occurred_at", occurred_at)
        .put("payload", php(payload))
        .build()
        .encode_event()
}

/// RFC 3986 percent-encoding of a path segment (unreserved characters kept).
pub(super) fn encode_segment(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
