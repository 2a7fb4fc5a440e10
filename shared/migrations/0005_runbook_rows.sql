-- 0005: room for rows of the runbook's service, and the runbook's index on the Rekor id.
--
-- A database upgraded from the runbook's schema (migrations/legacy/0000_runbook_upgrade.sql)
-- already has these columns; a database the ledger created gets them here, so every reader
-- sees the same table. legacy_id is the runbook's integer id (NULL for the ledger's own
-- rows); the legacy_rekor_* columns and legacy_anchored_at keep what the runbook wrote into
-- its Rekor columns. `ledger import-legacy` uses entries_legacy_id_idx to walk those rows in
-- batches. entries_rekor_log_id_idx is the runbook's index on the Rekor id column, which its
-- operational queries use. IF NOT EXISTS: safe to re-run and to race. Runs unchanged on
-- PostgreSQL and CockroachDB.

ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_id BIGINT NULL;
ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_rekor_log_id TEXT NULL;
ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_rekor_index BIGINT NULL;
ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_anchored_at TIMESTAMPTZ NULL;
CREATE UNIQUE INDEX IF NOT EXISTS entries_legacy_id_idx ON ledger.entries (legacy_id);
CREATE INDEX IF NOT EXISTS entries_rekor_log_id_idx ON ledger.entries (rekor_log_id);
