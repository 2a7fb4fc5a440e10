"""shared.vault_token: where a stage's token comes from, renewal at half the TTL, rejection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from shared.errors import ConfigError, VaultUnavailable
from shared.settings import Settings
from shared.vault_errors import REJECTED_HINT, VaultForbidden
from shared.vault_token import VaultToken, keep_renewed

pytestmark = pytest.mark.unit


def test_a_stage_file_wins_over_the_process_token(tmp_path: Path) -> None:
    signer_file, shared_file = tmp_path / "signer.token", tmp_path / "shared.token"
    signer_file.write_text("s.signer\n")
    shared_file.write_text("s.shared\n")
    settings = Settings(vault_token="s.env", vault_token_file=str(shared_file),
                        signer_vault_token_file=str(signer_file))
    assert VaultToken.for_stage(settings, "signer").value == "s.signer"
    assert VaultToken.for_stage(settings, "anchorer").value == "s.shared"
    assert VaultToken.for_stage(Settings(vault_token="s.env"), "ingest").value == "s.env"
    assert "s.signer" not in repr(VaultToken.for_stage(settings, "signer"))


def test_an_empty_token_file_is_a_config_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="empty or unreadable"):
        VaultToken.for_stage(Settings(vault_token_file=str(empty)), "signer")


def test_reload_reports_a_new_token_only(tmp_path: Path) -> None:
    path = tmp_path / "t"
    path.write_text("one")
    token = VaultToken.for_stage(Settings(vault_token_file=str(path)))
    assert not token.reload()
    path.write_text("two\n")
    assert token.reload() and token.value == "two"
    path.unlink()
    assert not token.reload() and token.value == "two"  # a missing file keeps the old one
    assert not VaultToken("x").reload()


class _Vault:
    """A token store: ``ttl`` seconds, renewable; answers from a script of outcomes."""

    def __init__(self, script: list[Any]) -> None:
        self.script = script
        self.calls: list[str] = []
        self.done = asyncio.Event()

    async def __call__(self, op: str) -> Mapping[str, Any]:
        self.calls.append(op)
        if not self.script:
            self.done.set()
            await asyncio.Event().wait()  # nothing more to say: park until cancelled
        outcome = self.script.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return dict(outcome)


async def _run(vault: _Vault, token: VaultToken) -> None:
    task = asyncio.create_task(keep_renewed(token, vault, retry_s=0.01, idle_s=0.01))
    try:
        await asyncio.wait_for(vault.done.wait(), 5)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_renews_at_half_the_ttl_and_retries_after_failures(
    caplog: pytest.LogCaptureFixture,
) -> None:
    vault = _Vault([
        {"ttl": 1, "renewable": True}, {"lease_duration": 4},
        VaultUnavailable("down"),
        {"ttl": 1, "renewable": True}, {"lease_duration": 4},
    ])
    with caplog.at_level(logging.INFO, logger="ledger.vault"):
        await _run(vault, VaultToken("s.secret"))
    assert vault.calls == ["lookup-self", "renew-self", "lookup-self", "lookup-self",
                           "renew-self", "lookup-self"]
    assert [r.getMessage() for r in caplog.records].count("vault token renewed") == 2
    assert "s.secret" not in caplog.text


async def test_a_rejected_token_is_said_once_and_a_new_file_is_picked_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "t"
    path.write_text("old")
    token = VaultToken("old", str(path))
    denied = VaultForbidden("permission denied")
    vault = _Vault([denied, denied, denied])
    with caplog.at_level(logging.INFO, logger="ledger.vault"):
        await _run(vault, token)
    assert [r.getMessage() for r in caplog.records] == [REJECTED_HINT]
    path.write_text("new")
    vault = _Vault([denied, {"ttl": 0}])
    await _run(vault, token)
    assert token.value == "new" and vault.calls == ["lookup-self"] * 3
