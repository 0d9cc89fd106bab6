-- What a waiting job waits for: the entity lease (e.g. `invoice:42`) whose release ends
-- the wait. The attempt that releases a lease wakes the jobs waiting on it — a payment or
-- credit note on its invoice, a second event on a busy entity — instead of leaving them
-- to their timers (250 ms to 30 s).
ALTER TABLE jobs ADD COLUMN waits_on TEXT;
CREATE INDEX jobs_waits_on ON jobs (binding_id, waits_on) WHERE status = 'queued' AND waits_on IS NOT NULL;
