"""LEDGER_REQUIRE_TLS: a database DSN that would not verify the server, a plaintext Kafka
connection or a plain-HTTP Vault address is a startup error."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger import cli
from shared.db import Database
from shared.errors import ConfigError
from shared.settings import Settings, dsn_tls_problem

_BASE = "postgresql://ledger:pw-s3cret@db.example:5432/ledger"
#: Kafka and Vault over TLS: what LEDGER_REQUIRE_TLS also asks for
_KAFKA_TLS = {"KAFKA_SECURITY_PROTOCOL": "SSL", "VAULT_ADDR": "https://vault.example:8200"}


@pytest.mark.parametrize("query", ["", "?sslmode=disable", "?sslmode=allow", "?sslmode=prefer",
                                   "?sslmode=require", "?sslrootcert=/etc/ca.crt",
                                   "?ssl=verify-full"])
def test_a_dsn_that_does_not_verify_the_server_is_refused(query: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LEDGER_REQUIRE_TLS": "true", "CRDB_DSN": _BASE + query})
    message = str(info.value)
    assert "LEDGER_REQUIRE_TLS" in message
    assert "sslmode=verify-full" in message  # says what to change
    assert "pw-s3cret" not in message  # and never repeats the password


@pytest.mark.parametrize("mode", ["verify-full", "verify-ca"])
def test_a_verifying_dsn_is_accepted(mode: str, tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    s = Settings.from_env({"LEDGER_REQUIRE_TLS": "true", **_KAFKA_TLS,
                           "CRDB_DSN": f"{_BASE}?sslmode={mode}&sslrootcert={ca}"})
    assert s.require_tls


async def test_a_missing_ca_file_is_named_before_any_connection(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.crt"
    settings = Settings.from_env({"LEDGER_REQUIRE_TLS": "true", **_KAFKA_TLS,
                                  "CRDB_DSN": f"{_BASE}?sslmode=verify-full&sslrootcert={missing}"})
    with pytest.raises(ConfigError, match="does not exist") as info:
        await Database.connect(settings, connect_timeout_s=1)
    assert str(missing) in str(info.value)
    assert "pw-s3cret" not in str(info.value)


def test_without_the_requirement_a_plaintext_dsn_is_allowed() -> None:
    assert Settings.from_env({"CRDB_DSN": _BASE}).require_tls is False
    assert dsn_tls_problem(_BASE) is not None  # but it is still recognised as plaintext


def test_a_stage_with_a_plaintext_dsn_does_not_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LEDGER_REQUIRE_TLS", "true")
    monkeypatch.setenv("CRDB_DSN", _BASE + "?sslmode=require")
    assert cli.main(["migrate"]) == 1
    err = capsys.readouterr().err
    assert "LEDGER_REQUIRE_TLS is on but CRDB_DSN has sslmode=require" in err
    assert "pw-s3cret" not in err


def test_plaintext_kafka_is_refused_when_tls_is_required(tmp_path: Path) -> None:
    dsn = f"{_BASE}?sslmode=verify-full&sslrootcert={tmp_path / 'ca.crt'}"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LEDGER_REQUIRE_TLS": "true", "CRDB_DSN": dsn,
                           "KAFKA_BOOTSTRAP_SERVERS": "kafka.example:9093",
                           "VAULT_ADDR": "https://vault.example:8200"})
    message = str(info.value)
    assert "KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in message
    assert "KAFKA_SECURITY_PROTOCOL=SSL" in message  # says what to change
    assert "pw-s3cret" not in message
    assert Settings.from_env({"LEDGER_REQUIRE_TLS": "true", "CRDB_DSN": dsn,
                              **_KAFKA_TLS}).kafka_security_protocol == "SSL"


def test_an_unknown_kafka_security_protocol_is_named() -> None:
    with pytest.raises(ConfigError, match="KAFKA_SECURITY_PROTOCOL"):
        Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"})


@pytest.mark.parametrize("addr", ["http://vault.example:8200", "vault.example:8200"])
def test_a_plain_http_vault_is_refused_when_tls_is_required(tmp_path: Path, addr: str) -> None:
    dsn = f"{_BASE}?sslmode=verify-full&sslrootcert={tmp_path / 'ca.crt'}"
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LEDGER_REQUIRE_TLS": "true", "CRDB_DSN": dsn,
                           "KAFKA_SECURITY_PROTOCOL": "SSL", "VAULT_ADDR": addr})
    assert "VAULT_ADDR is not https://" in str(info.value)
    assert "pw-s3cret" not in str(info.value)
    # without the requirement, a plain Vault address is allowed (a laptop, loopback)
    assert Settings.from_env({"CRDB_DSN": dsn, "VAULT_ADDR": addr}).vault_addr == addr


def test_links_a_process_is_not_configured_with_are_not_required(tmp_path: Path) -> None:
    """``ledger migrate``, or a local stack of PostgreSQL alone: no Kafka, no Vault named."""
    dsn = f"{_BASE}?sslmode=verify-full&sslrootcert={tmp_path / 'ca.crt'}"
    s = Settings.from_env({"LEDGER_REQUIRE_TLS": "true", "CRDB_DSN": dsn})
    assert s.require_tls and s.kafka_security_protocol == "PLAINTEXT"
