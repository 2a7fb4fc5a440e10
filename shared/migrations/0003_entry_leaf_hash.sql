-- 0003: each entry's Merkle leaf hash, computed once by the signer.
--
-- The signer has every input of the leaf (entry id, statement, signature, key name and
-- version) at hand when it stores the row, so it stores SHA256(0x00 || leaf) too and the
-- anchorer builds batch trees from these 32-byte values instead of re-deriving every leaf.
-- Rows written before this migration keep NULL and the anchorer derives their leaf from
-- the row. Verification never trusts this column: `ledger verify` and `ledger audit`
-- recompute every leaf from the signed content. Runs unchanged on PostgreSQL and CockroachDB.

ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS leaf_hash BYTEA NULL;
