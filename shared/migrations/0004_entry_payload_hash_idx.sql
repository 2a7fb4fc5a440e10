-- 0004: find entries by the hash of their payload.
--
-- `GET /entries?payload_hash=` and `ledger proof --payload FILE` look entries up by the
-- SHA-256 of a document; (created_at, id) after it serve their keyset pagination in either
-- order. IF NOT EXISTS: safe to re-run and to race. Runs unchanged on PostgreSQL and
-- CockroachDB.

CREATE INDEX IF NOT EXISTS entries_payload_hash_idx
    ON ledger.entries (payload_hash, created_at, id);
