-- 0001: the ledger schema.
--
-- Must run unchanged on PostgreSQL (>= 13) and CockroachDB: no plpgsql, no triggers, no
-- SERIAL; ids are UUIDs. Applied once by shared.db.migrate(), inside one transaction
-- together with its row in ledger.schema_migrations.

CREATE SCHEMA IF NOT EXISTS ledger;

-- Anchor batches: a Merkle tree over some entries, its signed manifest and the Rekor receipt.
-- Persisted (state 'pending', with its signature) before any call to Rekor, so a retry
-- re-sends the stored signature instead of signing again.
CREATE TABLE IF NOT EXISTS ledger.batches (
    id                 UUID        PRIMARY KEY,
    created_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    state              TEXT        NOT NULL DEFAULT 'pending'
                                   CHECK (state IN ('pending', 'anchored')),
    size               INT         NOT NULL CHECK (size > 0),
    root_hash          TEXT        NOT NULL,            -- hex RFC 6962 root
    manifest           BYTEA       NOT NULL,            -- the canonical JSON that was signed
    manifest_sha256    TEXT        NOT NULL UNIQUE,     -- hex; batches are unique by content
    anchor_sig         BYTEA       NULL,                -- DER ECDSA P-256 over manifest_sha256
    anchor_key_version INT         NULL,
    anchor_pubkey      TEXT        NULL,                -- PEM of that key version
    rekor_uuid         TEXT        NULL,
    rekor_log_index    BIGINT      NULL,
    rekor_log_id       TEXT        NULL,
    integrated_time    BIGINT      NULL,
    receipt            JSONB       NULL,                -- body, SET, inclusion proof, checkpoint
    anchored_at        TIMESTAMPTZ NULL
);

CREATE INDEX IF NOT EXISTS batches_pending_idx
    ON ledger.batches (created_at) WHERE state = 'pending';

-- Ledger entries. The first ten columns are the runbook's, so its queries keep working.
-- batch_id has no foreign key on purpose: the anchorer may claim entries before it writes
-- the batch row in the same transaction.
CREATE TABLE IF NOT EXISTS ledger.entries (
    id             UUID        PRIMARY KEY,
    subject        TEXT        NOT NULL,
    payload_hash   TEXT        NOT NULL,                -- hex SHA-256 of the payload
    sig            TEXT        NOT NULL,                -- vault:vN:<base64>
    pubkey         TEXT        NOT NULL,                -- PEM of the signing key version
    meta           JSONB       NOT NULL DEFAULT '{}',
    rekor_log_id   TEXT        NULL,
    rekor_index    BIGINT      NULL,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    anchored_at    TIMESTAMPTZ NULL,
    request_id     TEXT        NOT NULL UNIQUE,         -- idempotency key
    key_name       TEXT        NULL,
    key_version    INT         NOT NULL,
    statement      BYTEA       NOT NULL,                -- the exact canonical JSON signed
    submitted_at   TIMESTAMPTZ NOT NULL,
    content_sha256 TEXT        NOT NULL,                -- hash of the request content
    batch_id       UUID        NULL,
    leaf_index     INT         NULL
);

CREATE INDEX IF NOT EXISTS entries_subject_created_idx
    ON ledger.entries (subject, created_at);
CREATE INDEX IF NOT EXISTS entries_created_idx
    ON ledger.entries (created_at);
CREATE INDEX IF NOT EXISTS entries_unanchored_idx
    ON ledger.entries (created_at) WHERE anchored_at IS NULL;
CREATE INDEX IF NOT EXISTS entries_batch_idx
    ON ledger.entries (batch_id, leaf_index);
CREATE INDEX IF NOT EXISTS entries_unbatched_idx
    ON ledger.entries (created_at) WHERE batch_id IS NULL;

-- Rekor checkpoints seen by the anchorer, to check that the log only grows.
CREATE TABLE IF NOT EXISTS ledger.checkpoints (
    log_id     TEXT        NOT NULL,
    tree_size  BIGINT      NOT NULL,
    root_hash  TEXT        NOT NULL,                    -- hex
    checkpoint TEXT        NOT NULL,                    -- the signed note, verbatim
    seen_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (log_id, tree_size)
);
