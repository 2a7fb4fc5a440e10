"""Settings: runbook names, LEDGER_ names, and errors that say what to fix."""

from __future__ import annotations

import pytest

from shared.errors import ConfigError
from shared.settings import ENV_NAMES, Settings


def test_runbook_names_are_read() -> None:
    s = Settings.from_env({
        "VAULT_ADDR": "http://vault:8200", "VAULT_TOKEN": "t", "VAULT_TRANSIT_KEY": "k",
        "CRDB_DSN": "postgresql://x@db/ledger", "REKOR_SERVER_URL": "http://rekor",
        "KAFKA_BOOTSTRAP_SERVERS": "k1:9092,k2:9092",
    })
    assert (s.vault_addr, s.vault_token.get_secret_value(), s.vault_transit_key) == (
        "http://vault:8200", "t", "k")
    assert str(s.vault_token) == "**********" and "'t'" not in repr(s)
    assert s.database_dsn == "postgresql://x@db/ledger"
    assert s.rekor_server_url == "http://rekor"
    assert s.kafka_bootstrap_servers == "k1:9092,k2:9092"


def test_other_settings_use_the_ledger_prefix_and_are_typed() -> None:
    s = Settings.from_env({"LEDGER_HTTP_PORT": "9000", "LEDGER_AUTH_DISABLED": "true",
                           "LEDGER_ANCHOR_BATCH_MAX": "1"})
    assert (s.http_port, s.auth_disabled, s.anchor_batch_max) == (9000, True, 1)
    assert all(name.startswith("LEDGER_") or name in {
        "KAFKA_BOOTSTRAP_SERVERS", "CRDB_DSN", "VAULT_ADDR", "VAULT_TOKEN", "VAULT_TRANSIT_KEY",
        "REKOR_SERVER_URL", "VAULT_TOKEN_FILE", "VAULT_CACERT", "KAFKA_SECURITY_PROTOCOL",
        "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE",
        # OpenTelemetry's own variables, as its specification names them
        "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SERVICE_NAME"} for name in ENV_NAMES.values())


def test_empty_values_mean_the_default() -> None:
    assert Settings.from_env({"LEDGER_HTTP_PORT": ""}).http_port == 8080


@pytest.mark.parametrize(
    ("env", "named"),
    [({"LEDGER_HTTP_PORT": "eighty"}, "LEDGER_HTTP_PORT"),
     ({"LEDGER_SIGNER_BATCH_MAX": "500"}, "LEDGER_SIGNER_BATCH_MAX"),
     ({"LEDGER_ANCHOR_BATCH_MAX": "0"}, "LEDGER_ANCHOR_BATCH_MAX")],
)
def test_a_bad_value_names_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_the_vault_token_is_not_in_the_repr() -> None:
    s = Settings.from_env({"VAULT_TOKEN": "s.very-secret"})
    assert "very-secret" not in repr(s)
    assert "very-secret" not in str(s)


def test_settings_are_frozen() -> None:
    s = Settings.from_env({})
    with pytest.raises(ValueError, match="frozen"):
        s.http_port = 1  # type: ignore[misc]


def test_the_environment_of_settings_gives_a_process_the_same_settings() -> None:
    s = Settings.from_env({
        "CRDB_DSN": "postgresql://u:pw@db/ledger?sslmode=verify-full&sslrootcert=/ca.crt",
        "VAULT_TOKEN": "s.secret", "LEDGER_AUTH_DISABLED": "true", "LEDGER_HTTP_PORT": "9000",
        "LEDGER_REQUIRE_TLS": "true", "KAFKA_SECURITY_PROTOCOL": "SSL",
        "VAULT_ADDR": "https://127.0.0.1:8200",
    })
    env = s.environment()
    assert env["VAULT_TOKEN"] == "s.secret" and env["LEDGER_AUTH_DISABLED"] == "true"
    assert Settings.from_env(env) == s


def test_each_stage_takes_its_own_kafka_certificate() -> None:
    s = Settings.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CERTFILE": "/c/admin.pem",
                           "KAFKA_SSL_KEYFILE": "/c/admin.key",
                           "LEDGER_SIGNER_KAFKA_SSL_CERTFILE": "/c/signer.pem"})
    signer = s.for_stage("signer")
    assert (signer.kafka_ssl_certfile, signer.kafka_ssl_keyfile) == ("/c/signer.pem", "")
    # a stage without its own certificate keeps the process's
    assert s.for_stage("anchorer") == s
    with pytest.raises(ValueError, match="unknown stage"):
        s.for_stage("migrate")


def test_a_kafka_key_without_its_certificate_is_refused() -> None:
    with pytest.raises(ConfigError, match="KAFKA_SSL_KEYFILE is set but KAFKA_SSL_CERTFILE"):
        Settings.from_env({"KAFKA_SSL_KEYFILE": "/c/admin.key"})
