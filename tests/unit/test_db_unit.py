"""Pure logic of shared.db: migration files, error translation, retry backoff."""

from __future__ import annotations

import random
import re
from pathlib import Path

import asyncpg
import pytest

from shared.db import (
    Database,
    QueryError,
    SerializationFailure,
    _translate,
    load_migrations,
)
from shared.errors import ConfigError, DatabaseUnavailable, DependencyError, Policy

pytestmark = pytest.mark.unit


def test_shipped_migrations_are_numbered_and_cockroach_friendly() -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == list(range(1, len(migrations) + 1))
    for m in migrations:
        code = re.sub(r"--[^\n]*", "", m.sql).upper()  # comments may mention them
        for forbidden in (r"\bSERIAL\b", r"\bBIGSERIAL\b", "PLPGSQL", "TRIGGER", "FUNCTION"):
            assert not re.search(forbidden, code), (m.name, forbidden)
    first = migrations[0].sql
    for table in ("ledger.entries", "ledger.batches", "ledger.checkpoints"):
        assert f"CREATE TABLE IF NOT EXISTS {table}" in first


ENTRY_COLUMNS = (
    *("id", "subject", "payload_hash", "sig", "pubkey", "meta", "rekor_log_id"),
    *("rekor_index", "created_at", "anchored_at", "request_id", "key_name", "key_version"),
    *("statement", "submitted_at", "content_sha256", "batch_id", "leaf_index"),
)


def test_runbook_columns_are_present() -> None:
    sql = load_migrations()[0].sql
    entries = sql[sql.index("ledger.entries (") : sql.index(");", sql.index("ledger.entries ("))]
    for column in ENTRY_COLUMNS:
        assert f"\n    {column} " in entries, column


def _write(directory: Path, *names: str) -> None:
    for name in names:
        (directory / name).write_text("SELECT 1;\n")


def test_load_migrations_orders_and_checksums(tmp_path: Path) -> None:
    _write(tmp_path, "0002_more.sql", "0001_first.sql")
    loaded = load_migrations(tmp_path)
    assert [(m.version, m.name) for m in loaded] == [(1, "first"), (2, "more")]
    assert loaded[0].checksum == loaded[1].checksum  # same bytes, same hash
    assert len(loaded[0].checksum) == 64


@pytest.mark.parametrize(
    "names",
    [("0001_a.sql", "0003_c.sql"), ("0002_b.sql",), ("0001_a.sql", "0001_b.sql"), ("1_a.sql",)],
)
def test_load_migrations_refuses_gaps_repeats_and_bad_names(
    tmp_path: Path, names: tuple[str, ...]
) -> None:
    _write(tmp_path, *names)
    with pytest.raises(ConfigError):
        load_migrations(tmp_path)


def _pg_error(cls: type[asyncpg.PostgresError], message: str = "m") -> asyncpg.PostgresError:
    return cls(message)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (_pg_error(asyncpg.SerializationError), SerializationFailure),
        (_pg_error(asyncpg.DeadlockDetectedError), SerializationFailure),
        (_pg_error(asyncpg.UniqueViolationError), QueryError),
        (_pg_error(asyncpg.UndefinedTableError), QueryError),
        (_pg_error(asyncpg.CannotConnectNowError), DatabaseUnavailable),
        (_pg_error(asyncpg.TooManyConnectionsError), DatabaseUnavailable),
        (_pg_error(asyncpg.AdminShutdownError), DatabaseUnavailable),
        (_pg_error(asyncpg.InvalidPasswordError), ConfigError),
        (ConnectionRefusedError(111, "refused"), DatabaseUnavailable),
        (TimeoutError(), DatabaseUnavailable),
        (asyncpg.InterfaceError("pool is closed"), DatabaseUnavailable),
    ],
)
def test_translate(exc: BaseException, expected: type[Exception]) -> None:
    assert type(_translate(exc)) is expected


def test_query_error_carries_sqlstate() -> None:
    error = _translate(_pg_error(asyncpg.UniqueViolationError))
    assert isinstance(error, QueryError)
    assert error.sqlstate == "23505"
    # not "unavailable", but paused on all the same: the schema is wrong, not the message
    assert not isinstance(error, DependencyError) and error.policy is Policy.RETRY
    failure = _translate(_pg_error(asyncpg.SerializationError))
    assert isinstance(failure, SerializationFailure)
    assert failure.retryable


async def _no_sleep(_s: float) -> None:
    return None


def test_backoff_is_jittered_and_capped() -> None:
    db = Database(
        None,
        cockroach=False,
        acquire_timeout_s=1,
        max_attempts=5,
        backoff_base_s=0.01,
        backoff_max_s=0.5,
        rng=random.Random(7),
        sleep=_no_sleep,
    )
    for attempt in range(1, 30):
        delay = db.backoff_s(attempt)
        assert 0 <= delay <= min(0.5, 0.01 * 2 ** (attempt - 1))
