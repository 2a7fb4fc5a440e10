"""PostgreSQL over TLS on the local stack: the stages' DSN verifies the server's certificate,
a name the certificate was not issued for and a foreign CA are refused, and the server itself
refuses plaintext."""

from __future__ import annotations

import asyncio
import subprocess
import urllib.parse
from pathlib import Path

import pytest

from deploy.local.postgres import Postgres
from deploy.local.stack import Stack
from deploy.local.tls import LocalCA
from shared.db import Database
from shared.errors import ConfigError
from shared.settings import Settings
from tests.support.tcp_relay import tcp_relay
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

_SSL_SQL = "SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


def _local(stack: Stack) -> Postgres:
    service = stack.require("postgres")
    assert isinstance(service, Postgres)
    return service


def _with_query(dsn: str, **query: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    return parts._replace(query=urllib.parse.urlencode(query, safe="/")).geturl()


def _with_host(dsn: str, host: str) -> str:
    parts = urllib.parse.urlsplit(dsn)
    auth = parts.netloc.rpartition("@")[0]
    return parts._replace(netloc=f"{auth}@{host}:{parts.port}").geturl()


async def test_the_exported_dsn_verifies_the_server_and_uses_tls(stack: Stack,
                                                                 settings: Settings) -> None:
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(settings.database_dsn).query)
    assert query["sslmode"] == ["verify-full"]
    assert query["sslrootcert"] == [str(_local(stack).ca_file)]
    assert settings.require_tls  # the stack exports LEDGER_REQUIRE_TLS=true
    db = await Database.connect(settings, min_size=1, max_size=1)
    try:
        row = await db.fetchrow(_SSL_SQL)
    finally:
        await db.close()
    assert row is not None and row["ssl"] is True
    assert row["version"] in {"TLSv1.2", "TLSv1.3"}


def test_psql_works_with_the_exported_dsn(settings: Settings) -> None:
    result = subprocess.run(["psql", settings.database_dsn, "-X", "-A", "-t", "-c", _SSL_SQL],
                            capture_output=True, text=True, timeout=30, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("t|TLSv1.")


async def test_a_host_the_certificate_does_not_name_is_refused(settings: Settings) -> None:
    port = urllib.parse.urlsplit(settings.database_dsn).port
    assert port is not None
    async with tcp_relay("127.0.0.1", port, host="::1") as relay_port:
        dsn = _with_host(settings.database_dsn, "[::1]").replace(f":{port}/", f":{relay_port}/")
        with pytest.raises(ConfigError, match="certificate failed verification") as info:
            await Database.connect(settings.model_copy(update={"database_dsn": dsn}),
                                   connect_timeout_s=5)
    assert "::1" in str(info.value)  # the verifier names the mismatched address


def test_psql_refuses_a_host_name_the_certificate_does_not_name(settings: Settings) -> None:
    parts = urllib.parse.urlsplit(settings.database_dsn)
    query = dict(urllib.parse.parse_qsl(parts.query))
    conninfo = (f"host=db.invalid hostaddr=127.0.0.1 port={parts.port} user={parts.username} "
                f"password={parts.password} dbname=ledger sslmode=verify-full "
                f"sslrootcert={query['sslrootcert']}")
    result = subprocess.run(["psql", conninfo, "-X", "-c", "SELECT 1"], capture_output=True,
                            text=True, timeout=30, check=False)
    assert result.returncode != 0
    assert 'does not match host name "db.invalid"' in result.stderr


async def test_a_foreign_ca_is_refused(settings: Settings, tmp_path: Path) -> None:
    foreign = LocalCA(tmp_path / "foreign")
    foreign.ensure()
    dsn = _with_query(settings.database_dsn, sslmode="verify-full",
                      sslrootcert=str(foreign.cert_path))
    with pytest.raises(ConfigError, match="certificate failed verification"):
        await Database.connect(settings.model_copy(update={"database_dsn": dsn}),
                               connect_timeout_s=5)


async def test_the_server_refuses_plaintext(settings: Settings) -> None:
    dsn = _with_query(settings.database_dsn, sslmode="disable")
    with pytest.raises(ConfigError, match="accepts only TLS connections") as info:
        await Database.connect(settings.model_copy(update={"database_dsn": dsn}),
                               connect_timeout_s=5)
    password = urllib.parse.urlsplit(dsn).password
    assert password and password not in str(info.value)


def test_the_stack_refuses_to_build_settings_from_a_plaintext_dsn(stack: Stack) -> None:
    env = stack.endpoints()
    env["CRDB_DSN"] = _with_query(env["CRDB_DSN"], sslmode="require")
    with pytest.raises(ConfigError, match="LEDGER_REQUIRE_TLS is on"):
        Settings.from_env(environ=env)


async def test_trillian_and_every_other_client_connect_over_tls(stack: Stack) -> None:
    """Rekor's Trillian stores in the same server: its connections are TLS too (the server
    would refuse anything else; this shows they are there and encrypted)."""
    postgres = _local(stack)
    assert stack.service("rekor") is not None, "this test needs the whole local stack"
    sql = ("SELECT a.datname, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) "
           "WHERE a.backend_type = 'client backend' AND a.client_addr IS NOT NULL")

    def rows() -> list[tuple[str, str]]:
        out = postgres.psql(sql)
        return [(db, ssl) for db, _, ssl in (line.partition("|") for line in out.splitlines())]

    async def trillian_connected() -> bool:
        return any(db == "trillian" for db, _ in await asyncio.to_thread(rows))

    await wait_for(trillian_connected, within=30, what="Trillian's connections")
    seen = await asyncio.to_thread(rows)
    assert seen and all(ssl == "t" for _, ssl in seen), seen
