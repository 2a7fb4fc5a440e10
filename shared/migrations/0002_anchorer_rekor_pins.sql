-- 0002: the anchorer's pinned Rekor log keys (trust on first use).
--
-- When LEDGER_REKOR_PUBLIC_KEY is not configured, the first anchorer fetches the log key
-- from Rekor once, pins it here (the first insert wins) and logs a loud warning; every
-- anchorer process then verifies receipts against the pinned key, so a Rekor that later
-- serves another key is refused. Runs unchanged on PostgreSQL and CockroachDB.

CREATE TABLE IF NOT EXISTS ledger.rekor_pins (
    rekor_url  TEXT        PRIMARY KEY,            -- REKOR_SERVER_URL the key was fetched from
    public_key TEXT        NOT NULL,               -- PEM, as Rekor served it
    log_id     TEXT        NOT NULL,               -- hex SHA-256 of the key's DER
    pinned_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);
