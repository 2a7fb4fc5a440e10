"""PostgreSQL/CockroachDB adapter: a pool, serializable transactions with retry, migrations.

The only module that imports asyncpg. asyncpg exceptions never leave it:

* connection refused, timeouts, a lost connection, "too many connections", shutdown
  → :class:`DatabaseUnavailable` (retryable);
* SQLSTATE 40001 / 40P01 → :class:`SerializationFailure` (a :class:`DatabaseUnavailable`);
  :meth:`Database.transaction` retries it with bounded, jittered backoff;
* bad credentials, a server that refuses plaintext, a certificate that fails verification
  (wrong host name, unknown CA) or an unusable ``sslrootcert`` → :class:`ConfigError`;
* any other error the server reports → :class:`QueryError` (not retryable) carrying the
  SQLSTATE, e.g. ``23505`` for a unique violation.

JSON/JSONB values are exchanged as JSON text (no codec is installed): bind ``json.dumps(x)``
(cast with ``$1::jsonb`` where needed) and ``json.loads`` what comes back.

Migrations are the numbered SQL files in ``shared/migrations`` (``0001_name.sql`` ...),
applied in order by :func:`migrate`, each in one transaction with its row in
``ledger.schema_migrations``. Safe with several starters at once: on PostgreSQL they queue
on an advisory lock; on CockroachDB (no advisory locks) the version row itself is the lock:
``INSERT ... ON CONFLICT DO NOTHING`` waits for a concurrent, uncommitted insert of the same
version and then sees it. This module must never build SQL from untrusted values.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
import re
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

import asyncpg

from shared.errors import (
    ConfigError,
    DatabaseUnavailable,
    LedgerError,
    QueryError,
    SerializationFailure,
)
from shared.settings import Settings

__all__ = [
    "MIGRATIONS_DIR",
    "RUNBOOK_UPGRADE",
    "Database",
    "Isolation",
    "Migration",
    "QueryError",
    "Row",
    "SerializationFailure",
    "Tx",
    "load_migrations",
    "migrate",
]

_T = TypeVar("_T")

#: A result row: ``row["column"]``.
Row = Mapping[str, Any]
#: Transaction isolation levels :meth:`Database.transaction` accepts.
Isolation = Literal["serializable", "read_committed"]

MIGRATIONS_DIR: Final = Path(__file__).with_name("migrations")
#: the in-place upgrade of the runbook's ``ledger.entries`` (version 0, before 0001)
RUNBOOK_UPGRADE: Final = MIGRATIONS_DIR / "legacy" / "0000_runbook_upgrade.sql"
_MIGRATION_NAME: Final = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any constant bigint will do; derived from the table name so it is recognisable.
_ADVISORY_LOCK_ID: Final = int.from_bytes(
    hashlib.sha256(b"ledger.schema_migrations").digest()[:8], "big", signed=True
)
_RETRY_SQLSTATES: Final = frozenset({"40001", "40P01"})
_UNAVAILABLE_SQLSTATE_PREFIXES: Final = ("08", "53", "57", "58")


def _translate(exc: BaseException) -> LedgerError:
    """Map an asyncpg/OS exception to the project's errors."""
    if isinstance(exc, LedgerError):
        return exc
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        message = str(getattr(exc, "message", "") or exc)
        if state in _RETRY_SQLSTATES:
            return SerializationFailure(
                f"serialization failure ({state}): {message}", sqlstate=state
            )
        if state.startswith("28") and "no encryption" in message:
            return ConfigError(
                "the database server accepts only TLS connections: add "
                "'sslmode=verify-full&sslrootcert=/path/to/ca.crt' to CRDB_DSN"
            )
        if state.startswith("28"):
            return ConfigError(f"database refused the credentials in CRDB_DSN ({state})")
        if state.startswith(_UNAVAILABLE_SQLSTATE_PREFIXES):
            return DatabaseUnavailable(f"database unavailable ({state}): {message}")
        return QueryError(f"database error ({state}): {message}", sqlstate=state)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConfigError(
            f"the database server's TLS certificate failed verification "
            f"({exc.verify_message}): the host in CRDB_DSN must be a name or address the "
            "certificate was issued for, and its sslrootcert the CA that issued it"
        )
    if isinstance(exc, asyncpg.ClientConfigurationError):
        return ConfigError(f"CRDB_DSN: {exc}")
    if isinstance(exc, TimeoutError):
        return DatabaseUnavailable("database timed out")
    if isinstance(exc, OSError | asyncpg.InterfaceError):
        return DatabaseUnavailable(f"database unreachable: {type(exc).__name__}: {exc}")
    return DatabaseUnavailable(f"database client failure: {type(exc).__name__}")


def _check_tls_files(dsn: str) -> None:
    """A certificate file the DSN names but that cannot be read is a configuration error
    (asyncpg would report a bare, retryable-looking ``FileNotFoundError``)."""
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(dsn).query)
    for name in ("sslrootcert", "sslcert", "sslkey"):
        for path in query.get(name, []):
            if not os.access(path, os.R_OK) or not os.path.isfile(path):
                raise ConfigError(f"CRDB_DSN: {name} file {path} does not exist or is not "
                                  "readable")


#: InternalClientError: a pooled connection the server closed under it (a PostgreSQL restart)
#: can be left "another operation is in progress"; retrying on a fresh connection works.
_TRANSLATED: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
                      OSError, TimeoutError)


class Tx:
    """Statements inside one transaction (handed to the function given to ``transaction``)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: Any) -> None:
        self._conn = conn

    async def execute(self, sql: str, *args: Any) -> str:
        try:
            return str(await self._conn.execute(sql, *args))
        except _TRANSLATED as exc:
            raise _translate(exc) from None

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        try:
            await self._conn.executemany(sql, args)
        except _TRANSLATED as exc:
            raise _translate(exc) from None

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        try:
            return list(await self._conn.fetch(sql, *args))
        except _TRANSLATED as exc:
            raise _translate(exc) from None

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        try:
            row: Row | None = await self._conn.fetchrow(sql, *args)
        except _TRANSLATED as exc:
            raise _translate(exc) from None
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        try:
            return await self._conn.fetchval(sql, *args)
        except _TRANSLATED as exc:
            raise _translate(exc) from None


class Database:
    """An asyncpg pool with serializable, retried transactions. Build with :meth:`connect`."""

    def __init__(
        self,
        pool: Any,
        *,
        cockroach: bool,
        acquire_timeout_s: float,
        max_attempts: int,
        backoff_base_s: float,
        backoff_max_s: float,
        rng: random.Random,
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self._pool = pool
        self.cockroach = cockroach
        self._acquire_timeout_s = acquire_timeout_s
        self._max_attempts = max_attempts
        self._backoff_base_s = backoff_base_s
        self._backoff_max_s = backoff_max_s
        self._rng = rng
        self._sleep = sleep
        self._closed = False

    @classmethod
    async def connect(
        cls,
        settings: Settings,
        *,
        min_size: int = 1,
        max_size: int = 10,
        connect_timeout_s: float = 10.0,
        command_timeout_s: float = 30.0,
        max_attempts: int = 10,
        backoff_base_s: float = 0.01,
        backoff_max_s: float = 1.0,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> Database:
        """Open a pool on ``settings.database_dsn``; :class:`DatabaseUnavailable` if it can't."""
        _check_tls_files(settings.database_dsn)
        try:
            pool = await asyncio.wait_for(
                asyncpg.create_pool(
                    settings.database_dsn,
                    min_size=min_size,
                    max_size=max_size,
                    timeout=connect_timeout_s,
                    command_timeout=command_timeout_s,
                ),
                timeout=connect_timeout_s * 2,
            )
        except _TRANSLATED as exc:
            raise _translate(exc) from None
        try:
            version = str(
                await asyncio.wait_for(pool.fetchval("SELECT version()"), connect_timeout_s)
            )
        except _TRANSLATED as exc:
            await pool.close()
            raise _translate(exc) from None
        return cls(
            pool,
            cockroach="cockroachdb" in version.lower(),
            acquire_timeout_s=connect_timeout_s,
            max_attempts=max_attempts,
            backoff_base_s=backoff_base_s,
            backoff_max_s=backoff_max_s,
            rng=rng or random.Random(),
            sleep=sleep,
        )

    def backoff_s(self, attempt: int) -> float:
        """Full-jitter exponential backoff before retry number ``attempt`` (1-based)."""
        cap = min(self._backoff_max_s, self._backoff_base_s * (2 ** (attempt - 1)))
        return self._rng.uniform(0, cap)

    async def transaction(
        self,
        fn: Callable[[Tx], Awaitable[_T]],
        *,
        readonly: bool = False,
        max_attempts: int | None = None,
        isolation: Isolation = "serializable",
    ) -> _T:
        """Run ``fn`` in a transaction (SERIALIZABLE unless ``isolation`` says otherwise) and
        return its result.

        ``read_committed`` is for statements whose correctness rests on row locks alone
        (``INSERT ... ON CONFLICT``, ``UPDATE ... WHERE <still free>`` checked by its row
        count): PostgreSQL then skips the predicate locks that serializable transactions
        take on every row and index page they read; CockroachDB runs them serializable
        unless read committed is enabled on the cluster, which is just as correct.

        On a serialization failure (40001, also at COMMIT) the whole transaction is rolled
        back and ``fn`` runs again, up to ``max_attempts`` times with jittered backoff; after
        that the :class:`SerializationFailure` propagates (it is retryable). So ``fn`` must
        have no effects outside the database. Other errors roll back and propagate.
        """
        attempts = max_attempts or self._max_attempts
        attempt = 0
        while True:
            attempt += 1
            try:
                return await self._run_once(fn, readonly=readonly, isolation=isolation)
            except SerializationFailure:
                if attempt >= attempts:
                    raise
            await self._sleep(self.backoff_s(attempt))

    async def _run_once(
        self, fn: Callable[[Tx], Awaitable[_T]], *, readonly: bool, isolation: Isolation
    ) -> _T:
        try:
            async with (
                self._pool.acquire(timeout=self._acquire_timeout_s) as conn,
                conn.transaction(isolation=isolation, readonly=readonly),
            ):
                return await fn(Tx(conn))
        except _TRANSLATED as exc:
            raise _translate(exc) from None

    # --- single statements outside an explicit transaction ------------------------------

    async def _with_conn(self, fn: Callable[[Tx], Awaitable[_T]]) -> _T:
        try:
            async with self._pool.acquire(timeout=self._acquire_timeout_s) as conn:
                return await fn(Tx(conn))
        except _TRANSLATED as exc:
            raise _translate(exc) from None

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._with_conn(lambda tx: tx.execute(sql, *args))

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return await self._with_conn(lambda tx: tx.fetch(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        return await self._with_conn(lambda tx: tx.fetchrow(sql, *args))

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._with_conn(lambda tx: tx.fetchval(sql, *args))

    async def health(self, *, timeout_s: float = 2.0) -> bool:
        """True when a ``SELECT 1`` succeeds within ``timeout_s``."""
        try:
            return bool(await asyncio.wait_for(self.fetchval("SELECT 1"), timeout_s) == 1)
        except (LedgerError, TimeoutError):
            return False

    async def close(self, *, timeout_s: float = 10.0) -> None:
        """Close the pool (waiting up to ``timeout_s`` for connections); safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), timeout_s)
        except (*_TRANSLATED, TimeoutError):
            self._pool.terminate()


# --- migrations ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Migration:
    version: int
    name: str
    sql: str
    checksum: str  # hex SHA-256 of the file


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """The ``NNNN_name.sql`` files of ``directory`` in version order (no gaps, no repeats)."""
    found: list[Migration] = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if match is None:
            raise ConfigError(f"migration file {path.name!r} is not named NNNN_name.sql")
        data = path.read_bytes()
        found.append(
            Migration(
                version=int(match.group(1)),
                name=match.group(2),
                sql=data.decode("utf-8"),
                checksum=hashlib.sha256(data).hexdigest(),
            )
        )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise ConfigError(
                f"migrations must be numbered 0001, 0002, ... without gaps or repeats; "
                f"found {migration.version:04d}_{migration.name}.sql where {expected:04d} belongs"
            )
    return found


_BOOTSTRAP: Final = (
    "CREATE SCHEMA IF NOT EXISTS ledger",
    """CREATE TABLE IF NOT EXISTS ledger.schema_migrations (
        version    INT         PRIMARY KEY,
        name       TEXT        NOT NULL,
        checksum   TEXT        NOT NULL,
        applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
    )""",
)
# Races between concurrent "IF NOT EXISTS" (possible on CockroachDB, which has no advisory
# lock here) surface as these; running the statement again then finds the object.
_ALREADY_EXISTS_SQLSTATES: Final = frozenset({"23505", "42P06", "42P07", "42710"})


async def migrate(
    db: Database,
    *,
    migrations: Sequence[Migration] | None = None,
    lock_timeout_s: float = 120.0,
) -> list[int]:
    """Apply pending migrations in order; return the versions this call applied.

    Idempotent, and safe when several processes call it at the same time. A file changed
    after it was applied raises :class:`ConfigError`. A database whose ``ledger.entries`` is
    still the runbook's table is first upgraded in place (:data:`RUNBOOK_UPGRADE`, recorded
    as version 0; ``docs/upgrading.md``).
    """
    todo = list(migrations) if migrations is not None else load_migrations()
    try:
        async with db._pool.acquire(timeout=db._acquire_timeout_s) as conn:
            tx = Tx(conn)
            locked = False
            try:
                if not db.cockroach:
                    await _advisory_lock(tx, db, lock_timeout_s)
                    locked = True
                await _bootstrap(tx, db)
                applied = []
                if await _runbook_table(tx) and await _apply(conn, db, _runbook_upgrade()):
                    applied.append(0)
                for migration in todo:
                    if await _apply(conn, db, migration):
                        applied.append(migration.version)
                return applied
            finally:
                if locked:
                    await tx.execute("SELECT pg_advisory_unlock($1)", _ADVISORY_LOCK_ID)
    except _TRANSLATED as exc:
        raise _translate(exc) from None


def _runbook_upgrade() -> Migration:
    data = RUNBOOK_UPGRADE.read_bytes()
    return Migration(version=0, name="runbook_upgrade", sql=data.decode("utf-8"),
                     checksum=hashlib.sha256(data).hexdigest())


async def _runbook_table(tx: Tx) -> bool:
    """Whether ``ledger.entries`` is still the runbook's table (an integer ``id``): 0001
    would skip creating it and then fail on the columns it lacks."""
    kind = await tx.fetchval(
        "SELECT data_type FROM information_schema.columns WHERE table_schema = 'ledger'"
        " AND table_name = 'entries' AND column_name = 'id'"
    )
    return kind in ("bigint", "integer", "smallint")


async def _advisory_lock(tx: Tx, db: Database, timeout_s: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    attempt = 0
    while not await tx.fetchval("SELECT pg_try_advisory_lock($1)", _ADVISORY_LOCK_ID):
        if loop.time() >= deadline:
            raise DatabaseUnavailable(
                f"another process held the migration lock for more than {timeout_s:g}s"
            )
        attempt += 1
        await db._sleep(min(0.5, 0.02 * attempt))


async def _bootstrap(tx: Tx, db: Database) -> None:
    for statement in _BOOTSTRAP:
        for attempt in range(1, db._max_attempts + 1):
            try:
                await tx.execute(statement)
                break
            except (QueryError, SerializationFailure) as exc:
                if exc.sqlstate not in _ALREADY_EXISTS_SQLSTATES | _RETRY_SQLSTATES:
                    raise
                if attempt == db._max_attempts:
                    raise
                await db._sleep(db.backoff_s(attempt))


async def _apply(conn: Any, db: Database, migration: Migration) -> bool:
    for attempt in range(1, db._max_attempts + 1):
        try:
            async with conn.transaction(isolation="serializable"):
                tx = Tx(conn)
                claimed = await tx.fetchval(
                    "INSERT INTO ledger.schema_migrations (version, name, checksum)"
                    " VALUES ($1, $2, $3) ON CONFLICT (version) DO NOTHING RETURNING version",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
                if claimed is None:
                    stored = await tx.fetchval(
                        "SELECT checksum FROM ledger.schema_migrations WHERE version = $1",
                        migration.version,
                    )
                    if stored != migration.checksum:
                        raise ConfigError(
                            f"migration {migration.version:04d}_{migration.name}.sql changed "
                            "after it was applied; add a new migration instead of editing it"
                        )
                    return False
                await tx.execute(migration.sql)
                return True
        except (*_TRANSLATED, SerializationFailure) as exc:
            # The COMMIT itself may fail with 40001: that arrives untranslated.
            error = _translate(exc)
            if not isinstance(error, SerializationFailure) or attempt == db._max_attempts:
                raise error from None
        await db._sleep(db.backoff_s(attempt))
    raise AssertionError("unreachable")  # pragma: no cover
