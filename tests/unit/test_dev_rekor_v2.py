"""``LEDGER_REKOR_API=v2 ledger dev``: ingest and the anchorer get the stack's Rekor v2 and TSA."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.pipeline import REKOR_V2_ENV, dev_processes, rekor_v2_env
from shared.errors import ConfigError
from shared.settings import Settings

pytestmark = pytest.mark.unit

STACK = {
    "REKOR_SERVER_URL": "http://127.0.0.1:3000",
    "LEDGER_REKOR_V2_SERVER_URL": "http://127.0.0.1:4001",
    "LEDGER_REKOR_V2_TILES_URL": "http://127.0.0.1:4002",
    "LEDGER_REKOR_V2_PUBLIC_KEY": "/stack/rekor_v2/log.pub.pem",
    "LEDGER_REKOR_V2_ORIGIN": "ledger-rekor-v2.local",
    "LEDGER_TSA_URL": "http://127.0.0.1:4003",
    "LEDGER_TSA_CERT_CHAIN": "/stack/tsa/chain.pem",
}


def test_the_v2_environment_points_the_log_settings_at_the_stack_s_v2() -> None:
    env = rekor_v2_env(STACK)
    settings = Settings.from_env(environ=env)
    assert settings.rekor_api == "v2"
    assert settings.rekor_server_url == STACK["LEDGER_REKOR_V2_SERVER_URL"]
    assert settings.rekor_read_url == STACK["LEDGER_REKOR_V2_TILES_URL"]
    assert settings.rekor_public_key == STACK["LEDGER_REKOR_V2_PUBLIC_KEY"]
    assert settings.rekor_origin == STACK["LEDGER_REKOR_V2_ORIGIN"]
    assert (settings.tsa_url, settings.tsa_cert_chain) == (
        STACK["LEDGER_TSA_URL"], STACK["LEDGER_TSA_CERT_CHAIN"])


def test_a_stack_without_rekor_v2_is_named_in_the_error() -> None:
    without = {k: v for k, v in STACK.items() if k != "LEDGER_REKOR_V2_ORIGIN"}
    with pytest.raises(ConfigError, match="LEDGER_REKOR_V2_ORIGIN"):
        rekor_v2_env(without)


def test_v2_settings_need_their_pins() -> None:
    for dropped in ("LEDGER_REKOR_PUBLIC_KEY", "LEDGER_REKOR_ORIGIN", "LEDGER_TSA_URL",
                    "LEDGER_TSA_CERT_CHAIN"):
        env = {k: v for k, v in rekor_v2_env(STACK).items() if k != dropped}
        with pytest.raises(ConfigError, match=dropped):
            Settings.from_env(environ=env)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_dev_gives_v2_settings_only_when_asked(
    api: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LEDGER_REKOR_API", api)
    (tmp_path / "ingest").mkdir()
    procs, _, _ = dev_processes(tmp_path, STACK)
    for name, _argv, env in procs:
        if api == "v2":
            assert {k: env[k] for k in REKOR_V2_ENV} == {
                k: STACK[v] for k, v in REKOR_V2_ENV.items()}, name
            assert env["LEDGER_REKOR_API"] == "v2"
        else:
            assert "LEDGER_REKOR_API" not in env and "REKOR_SERVER_URL" not in env, name
