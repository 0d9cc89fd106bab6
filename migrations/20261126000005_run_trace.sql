-- The webhook's W3C trace context, continued by the worker and the store callback.
ALTER TABLE sync_runs ADD COLUMN traceparent TEXT;
