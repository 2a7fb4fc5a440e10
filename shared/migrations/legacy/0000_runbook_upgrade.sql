-- 0000: upgrade the runbook's own ledger.entries table in place, keeping every row.
--
-- Applied by shared.db.migrate() before 0001, once, and only to a database whose
-- ledger.entries has the runbook's integer id (tests/data/runbook_schema.sql); recorded as
-- version 0 in ledger.schema_migrations. One transaction: on any error nothing changes.
-- What it does to the runbook's rows (docs/upgrading.md):
--
-- * the integer id is kept in legacy_id (unique; NULL for the ledger's own rows) and the
--   row gets the UUID id every reader expects: the UUIDv3 of the integer id in
--   shared.statement.LEGACY_ID_NAMESPACE (MD5: built into PostgreSQL and CockroachDB);
-- * the runbook's "not anchored" values '' and 0 become NULL, the ledger's "not anchored".
--   Whatever the runbook wrote into its Rekor columns and anchored_at moves to
--   legacy_rekor_log_id, legacy_rekor_index and legacy_anchored_at, so the row can be
--   anchored again by the ledger, in a verified batch;
-- * the ledger's columns are added and filled: request_id 'runbook:<id>', key version from
--   the 'vault:vN:' prefix of the signature (0 when it has none), an empty statement (the
--   runbook signed the raw payload, which was never stored), submitted_at = created_at.
--
-- The runbook's indexes stay, among them its index on the Rekor id column (rekor_log_id).
-- Rows stay out of batches until `ledger import-legacy` gives them their legacy leaf.

ALTER TABLE ledger.entries RENAME COLUMN id TO legacy_id;
ALTER TABLE ledger.entries ALTER COLUMN legacy_id DROP DEFAULT;
ALTER TABLE ledger.entries DROP CONSTRAINT entries_pkey;
ALTER TABLE ledger.entries ALTER COLUMN legacy_id DROP NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS entries_legacy_id_idx ON ledger.entries (legacy_id);

ALTER TABLE ledger.entries ADD COLUMN id UUID NULL;
UPDATE ledger.entries AS e
   SET id = CAST(overlay(overlay(m.h PLACING '3' FROM 13 FOR 1)
                         PLACING substr('89ab',
                                        (strpos('0123456789abcdef', substr(m.h, 17, 1)) - 1) % 4
                                        + 1, 1)
                         FROM 17 FOR 1) AS UUID)
  FROM (SELECT legacy_id AS lid,
               md5(decode('0b9e5d527c1f4e0a9a553d6a1c2e8f01', 'hex')
                   || convert_to(CAST(legacy_id AS TEXT), 'UTF8')) AS h
          FROM ledger.entries) AS m
 WHERE e.legacy_id = m.lid;
ALTER TABLE ledger.entries ALTER COLUMN id SET NOT NULL;
ALTER TABLE ledger.entries ADD PRIMARY KEY (id);

ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_rekor_log_id TEXT NULL;
ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_rekor_index BIGINT NULL;
ALTER TABLE ledger.entries ADD COLUMN IF NOT EXISTS legacy_anchored_at TIMESTAMPTZ NULL;
UPDATE ledger.entries
   SET legacy_rekor_log_id = rekor_log_id, legacy_rekor_index = rekor_index,
       legacy_anchored_at = anchored_at
 WHERE rekor_log_id <> '' OR anchored_at IS NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN rekor_log_id DROP DEFAULT;
ALTER TABLE ledger.entries ALTER COLUMN rekor_log_id DROP NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN rekor_index DROP DEFAULT;
ALTER TABLE ledger.entries ALTER COLUMN rekor_index DROP NOT NULL;
UPDATE ledger.entries SET rekor_log_id = NULL, rekor_index = NULL, anchored_at = NULL;

ALTER TABLE ledger.entries ADD COLUMN request_id TEXT NULL;
ALTER TABLE ledger.entries ADD COLUMN key_name TEXT NULL;
ALTER TABLE ledger.entries ADD COLUMN key_version INT NULL;
ALTER TABLE ledger.entries ADD COLUMN statement BYTEA NULL;
ALTER TABLE ledger.entries ADD COLUMN submitted_at TIMESTAMPTZ NULL;
ALTER TABLE ledger.entries ADD COLUMN content_sha256 TEXT NULL;
ALTER TABLE ledger.entries ADD COLUMN batch_id UUID NULL;
ALTER TABLE ledger.entries ADD COLUMN leaf_index INT NULL;
UPDATE ledger.entries
   SET request_id = 'runbook:' || CAST(legacy_id AS TEXT),
       key_version = CASE WHEN sig ~ '^vault:v[0-9]{1,9}:'
                          THEN CAST(substr(split_part(sig, ':', 2), 2) AS INT) ELSE 0 END,
       statement = ''::BYTEA,
       submitted_at = created_at,
       content_sha256 = '';
ALTER TABLE ledger.entries ALTER COLUMN request_id SET NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN key_version SET NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN statement SET NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN submitted_at SET NOT NULL;
ALTER TABLE ledger.entries ALTER COLUMN content_sha256 SET NOT NULL;
ALTER TABLE ledger.entries ADD CONSTRAINT entries_request_id_key UNIQUE (request_id);
