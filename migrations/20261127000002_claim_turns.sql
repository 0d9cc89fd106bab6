-- Claims take turns round the bindings in id order from each process's last served
-- binding; the per-claim write of `last_served_at` (a new row version and index entry
-- per claim, and a walk over dead index entries under load) is gone.
DROP INDEX connector_bindings_served;
ALTER TABLE connector_bindings DROP COLUMN last_served_at;
