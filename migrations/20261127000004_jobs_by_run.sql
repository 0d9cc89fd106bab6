-- Jobs by their run: an operator's retry or skip finds the run's job, and deleting a run
-- (ON DELETE CASCADE) finds its jobs, without scanning the queue. Store callbacks have
-- no run.
CREATE INDEX jobs_sync_run ON jobs (sync_run_id) WHERE sync_run_id IS NOT NULL;
