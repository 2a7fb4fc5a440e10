"""Contract of shared.db against a real PostgreSQL (and, unchanged, CockroachDB).

Runs against the shared local stack (``settings`` / ``stack`` fixtures) when the project's
conftest provides them, else against ``CRDB_DSN``. Each test that migrates gets a fresh
database (through the stack's ``create_database`` or ``CREATE DATABASE``), so the "first
start" race is real.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from shared.db import (
    Database,
    Migration,
    QueryError,
    SerializationFailure,
    Tx,
    load_migrations,
    migrate,
)
from shared.errors import ConfigError, DatabaseUnavailable, DependencyError, Policy
from shared.settings import Settings

pytestmark = pytest.mark.integration


# --- fixtures (db_settings, fresh_settings: tests/integration/conftest.py) ---------------


@pytest.fixture
async def db(fresh_settings: Settings) -> AsyncIterator[Database]:
    database = await Database.connect(fresh_settings, max_size=8)
    yield database
    await database.close()


# --- migrations ----------------------------------------------------------------------------


async def test_migrations_apply_once_then_are_idempotent(db: Database) -> None:
    versions = [m.version for m in load_migrations()]
    assert await migrate(db) == versions
    assert await migrate(db) == []
    rows = await db.fetch("SELECT version, checksum FROM ledger.schema_migrations ORDER BY 1")
    assert [r["version"] for r in rows] == versions
    assert [r["checksum"] for r in rows] == [m.checksum for m in load_migrations()]


async def test_concurrent_starters_apply_each_migration_exactly_once(
    fresh_settings: Settings,
) -> None:
    dbs = [await Database.connect(fresh_settings, max_size=2) for _ in range(6)]
    try:
        results = await asyncio.gather(*(migrate(d) for d in dbs))
        applied = [v for r in results for v in r]
        assert sorted(applied) == [m.version for m in load_migrations()]
        again = await asyncio.gather(*(migrate(d) for d in dbs))
        assert again == [[]] * len(dbs)
        assert await dbs[0].fetchval("SELECT count(*) FROM ledger.schema_migrations") == len(
            applied
        )
    finally:
        for d in dbs:
            await d.close()


async def test_schema_holds_a_runbook_shaped_entry_and_a_batch(db: Database) -> None:
    await migrate(db)
    entry_id, batch_id = uuid.uuid4(), uuid.uuid4()
    statement = b'{"v":1}'
    manifest = b'{"batch":1}'

    async def insert(tx: Tx) -> None:
        await tx.execute(
            "INSERT INTO ledger.batches (id, size, root_hash, manifest, manifest_sha256)"
            " VALUES ($1, 1, $2, $3, $4)",
            batch_id,
            "00" * 32,
            manifest,
            hashlib.sha256(manifest).hexdigest(),
        )
        await tx.execute(
            "INSERT INTO ledger.entries (id, subject, payload_hash, sig, pubkey, meta,"
            " request_id, key_name, key_version, statement, submitted_at, content_sha256,"
            " batch_id, leaf_index)"
            " VALUES ($1, 'orders', $2, 'vault:v1:AA==', 'PEM', $3::jsonb, 'req-1',"
            " 'ledger-ed25519', 1, $4, $5, $6, $7, 0)",
            entry_id,
            "ab" * 32,
            json.dumps({"k": "v"}),
            statement,
            dt.datetime.now(dt.UTC),
            "cd" * 32,
            batch_id,
        )

    await db.transaction(insert)
    row = await db.fetchrow("SELECT * FROM ledger.entries WHERE id = $1", entry_id)
    assert row is not None
    assert json.loads(row["meta"]) == {"k": "v"}
    assert row["statement"] == statement
    assert row["anchored_at"] is None and row["rekor_index"] is None
    assert row["created_at"] is not None
    # the runbook's "unanchored" query
    unanchored = await db.fetch(
        "SELECT id FROM ledger.entries WHERE anchored_at IS NULL ORDER BY created_at"
    )
    assert [r["id"] for r in unanchored] == [entry_id]
    batch = await db.fetchrow("SELECT state FROM ledger.batches WHERE id = $1", batch_id)
    assert batch is not None and batch["state"] == "pending"

    # request_id is unique: a second row with it is refused with SQLSTATE 23505
    with pytest.raises(QueryError) as info:
        await db.execute(
            "INSERT INTO ledger.entries (id, subject, payload_hash, sig, pubkey, request_id,"
            " key_version, statement, submitted_at, content_sha256)"
            " VALUES ($1, 's', 'h', 'sig', 'pk', 'req-1', 1, '\\x00', now(), 'c')",
            uuid.uuid4(),
        )
    assert info.value.sqlstate == "23505"
    assert not isinstance(info.value, DependencyError) and info.value.policy is Policy.RETRY


async def test_changed_migration_is_refused(db: Database) -> None:
    original = load_migrations()
    await migrate(db, migrations=original)
    tampered = [Migration(m.version, m.name, m.sql + "\n-- edited", "0" * 64) for m in original]
    with pytest.raises(ConfigError, match="changed after it was applied"):
        await migrate(db, migrations=tampered)


# --- serializable transactions -------------------------------------------------------------


async def _write_skew(
    db: Database, table: str, *, max_attempts: int | None = None
) -> tuple[list[object], int]:
    """Two transactions read the same rows, then each inserts: one must fail with 40001.

    The first attempt of each waits until both have read; retries do not wait.
    """
    both_read = asyncio.Barrier(2)
    calls = 0

    def body(name: str) -> Callable[[Tx], Awaitable[int]]:
        first = True

        async def run(tx: Tx) -> int:
            nonlocal first, calls
            calls += 1
            seen = int(await tx.fetchval(f"SELECT count(*) FROM {table} WHERE k = 'x'"))
            if first:
                first = False
                await asyncio.wait_for(both_read.wait(), 10)
            await tx.execute(f"INSERT INTO {table} (k, who, seen) VALUES ('x', $1, $2)", name, seen)
            return seen

        return run

    results = await asyncio.gather(
        db.transaction(body("a"), max_attempts=max_attempts),
        db.transaction(body("b"), max_attempts=max_attempts),
        return_exceptions=True,
    )
    return list(results), calls


@pytest.fixture
async def skew_table(db: Database) -> str:
    table = f"skew_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE TABLE {table} (k TEXT NOT NULL, who TEXT NOT NULL, seen INT)")
    return table


async def test_serialization_failure_40001_is_retried(db: Database, skew_table: str) -> None:
    results, calls = await _write_skew(db, skew_table)
    # both succeed in the end, one of them after a retry that saw the other's row
    assert sorted(results) == [0, 1]  # type: ignore[type-var]
    assert calls >= 3
    rows = await db.fetch(f"SELECT who, seen FROM {skew_table} ORDER BY seen")
    assert [r["seen"] for r in rows] == [0, 1]


async def test_serialization_failure_surfaces_when_retries_are_exhausted(
    db: Database, skew_table: str
) -> None:
    results, calls = await _write_skew(db, skew_table, max_attempts=1)
    assert calls == 2
    failures = [r for r in results if isinstance(r, BaseException)]
    assert len(failures) == 1
    assert isinstance(failures[0], SerializationFailure)
    assert failures[0].sqlstate == "40001"
    assert failures[0].retryable
    assert isinstance(failures[0], DatabaseUnavailable)


async def test_transaction_rolls_back_on_error(db: Database, skew_table: str) -> None:
    class Boom(Exception):
        pass

    async def fail(tx: Tx) -> None:
        await tx.execute(f"INSERT INTO {skew_table} (k, who) VALUES ('y', 'z')")
        raise Boom

    with pytest.raises(Boom):
        await db.transaction(fail)
    assert await db.fetchval(f"SELECT count(*) FROM {skew_table}") == 0


# --- availability --------------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_database_unavailable(db_settings: Settings) -> None:
    dsn = f"postgresql://ledger:secret@127.0.0.1:{_closed_port()}/ledger"
    with pytest.raises(DatabaseUnavailable) as info:
        await Database.connect(
            db_settings.model_copy(update={"database_dsn": dsn}), connect_timeout_s=3
        )
    assert info.value.retryable
    assert "secret" not in str(info.value)


async def test_health(db: Database) -> None:
    assert await db.health()
    await db.close()
    assert not await db.health()
    await db.close()  # twice is fine
