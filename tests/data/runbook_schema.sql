-- The runbook's service's schema, as its operators created it: what `ledger migrate`
-- upgrades in place (shared/migrations/legacy/0000_runbook_upgrade.sql, docs/upgrading.md).
-- Integer ids, the signature over the raw payload as Vault returned it ('vault:vN:...'),
-- the PEM of the signing key, and '' / 0 in the Rekor columns until an entry is anchored.
CREATE SCHEMA IF NOT EXISTS ledger;

CREATE TABLE IF NOT EXISTS ledger.entries (
    id           BIGSERIAL   PRIMARY KEY,
    subject      TEXT        NOT NULL,
    payload_hash TEXT        NOT NULL,
    sig          TEXT        NOT NULL,
    pubkey       TEXT        NOT NULL,
    meta         JSONB       NOT NULL DEFAULT '{}',
    rekor_log_id TEXT        NOT NULL DEFAULT '',
    rekor_index  BIGINT      NOT NULL DEFAULT 0,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    anchored_at  TIMESTAMPTZ NULL
);

CREATE INDEX IF NOT EXISTS entries_subject_created_idx ON ledger.entries (subject, created_at);
CREATE INDEX IF NOT EXISTS entries_created_idx ON ledger.entries (created_at);
CREATE INDEX IF NOT EXISTS entries_rekor_log_id_idx ON ledger.entries (rekor_log_id);
