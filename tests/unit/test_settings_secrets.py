"""Settings never show a secret: not in repr/str, not in a configuration error."""

from __future__ import annotations

import io
import logging

import pytest

from shared.errors import ConfigError
from shared.settings import MASK, Settings, mask_secrets
from shared.telemetry import JsonFormatter

pytestmark = pytest.mark.unit

TOKEN = "s.VAULT-TOKEN-NEVER-SHOWN"
PASSWORD = "DB-PASSWORD-NEVER-SHOWN"


@pytest.mark.parametrize("dsn", [
    f"postgresql://ledger:{PASSWORD}@db:5432/ledger?sslmode=verify-full",
    f"postgresql://ledger@db/ledger?sslmode=require&password={PASSWORD}",
    f"host=db user=ledger password={PASSWORD} dbname=ledger",
    f"host=db password='{PASSWORD} with spaces' dbname=ledger",
])
def test_repr_str_and_a_log_of_the_settings_mask_every_secret(dsn: str) -> None:
    s = Settings(vault_token=TOKEN, database_dsn=dsn)
    assert s.database_dsn == dsn and s.vault_token.get_secret_value() == TOKEN  # the values themselves stay
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("test.settings")
    log.addHandler(handler)
    try:
        log.warning("settings %s", s, extra={"settings": s})
    finally:
        log.removeHandler(handler)
    for shown in (repr(s), str(s), f"{s!r}", stream.getvalue()):
        assert PASSWORD not in shown and TOKEN not in shown
        assert MASK in shown and "database_dsn=" in shown


def test_a_configuration_error_does_not_echo_a_secret() -> None:
    # values that fail validation are echoed to say what was wrong; secrets are masked
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"LEDGER_HTTP_PORT": "not-a-port"},
                          database_dsn=[f"postgresql://u:{PASSWORD}@db/x"], vault_token=[TOKEN])
    message = str(info.value)
    assert "LEDGER_HTTP_PORT" in message and "'not-a-port'" in message
    assert "CRDB_DSN" in message and "VAULT_TOKEN" in message
    assert PASSWORD not in message and TOKEN not in message


def test_mask_secrets_leaves_urls_without_passwords_alone() -> None:
    for text in ("postgresql://ledger@127.0.0.1:5432/ledger", "http://127.0.0.1:8200",
                 "127.0.0.1:9092", "https://user@host/x?a=b"):
        assert mask_secrets(text) == text
    assert mask_secrets("postgres://:p%40ss@h:5/d") == f"postgres://:{MASK}@h:5/d"
