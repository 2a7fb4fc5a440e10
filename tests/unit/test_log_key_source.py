"""LogKeySource: configured key, then the database pin, then trust on first use — once."""

from __future__ import annotations

import asyncio
import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.anchorer.trust import LogKeySource
from shared.errors import RekorUnavailable
from shared.verify import load_log_key
from tests.support.fake_rekor import FakeLog, pem
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.unit

URL = "http://rekor.test"


class CountingLog(FakeLog):
    def __init__(self) -> None:
        super().__init__(ec.generate_private_key(ec.SECP256R1()))
        self.key_requests = 0

    async def get_public_key(self, tree_id: str | None = None) -> str:
        self.key_requests += 1
        return await super().get_public_key(tree_id)


def other_pem() -> str:
    return pem(ec.generate_private_key(ec.SECP256R1()).public_key()).decode()


def source(repo: FakeRepository, log: FakeLog, configured: str = "") -> LogKeySource:
    return LogKeySource(configured=configured, rekor_url=URL, pins=repo, fetcher=log)


async def test_the_configured_key_wins_and_nothing_is_asked() -> None:
    repo, log = FakeRepository(), CountingLog()
    configured = other_pem()
    await repo.pin_log_key(rekor_url=URL, pem=await log.get_public_key(), log_id="x")
    log.key_requests, repo.calls = 0, []
    key = await source(repo, log, configured).get()
    assert key.log_id == load_log_key(configured).log_id
    assert log.key_requests == 0 and repo.calls == []


async def test_a_pin_in_the_database_is_used_without_asking_rekor() -> None:
    repo, log = FakeRepository(), CountingLog()
    pinned = other_pem()
    await repo.pin_log_key(rekor_url=URL, pem=pinned, log_id="x")
    key = await source(repo, log).get()
    assert key.log_id == load_log_key(pinned).log_id
    assert log.key_requests == 0


async def test_trust_on_first_use_pins_loudly_and_only_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    repo, log = FakeRepository(), CountingLog()
    keys = source(repo, log)
    with caplog.at_level(logging.WARNING, logger="ledger.anchorer.trust"):
        first, second = await asyncio.gather(keys.get(), keys.get())
    assert first is second and log.key_requests == 1
    assert await repo.pinned_log_key(URL) == await log.get_public_key()
    warnings = [r for r in caplog.records if "NO REKOR PUBLIC KEY CONFIGURED" in r.getMessage()]
    assert len(warnings) == 1 and getattr(warnings[0], "tofu", False) is True


async def test_a_pin_another_process_made_meanwhile_wins() -> None:
    repo, log = FakeRepository(), CountingLog()
    theirs = other_pem()
    real_pin = repo.pin_log_key

    async def pin_after_them(*, rekor_url: str, pem: str, log_id: str) -> str:
        await real_pin(rekor_url=rekor_url, pem=theirs, log_id="theirs")  # another anchorer
        return await real_pin(rekor_url=rekor_url, pem=pem, log_id=log_id)

    repo.pin_log_key = pin_after_them  # type: ignore[method-assign]
    key = await source(repo, log).get()
    assert key.log_id == load_log_key(theirs).log_id, "every process trusts the one pinned key"


async def test_rekor_down_on_first_use_is_retryable_and_pins_nothing() -> None:
    repo, log = FakeRepository(), CountingLog()
    log.down = True
    keys = source(repo, log)
    with pytest.raises(RekorUnavailable):
        await keys.get()
    assert await repo.pinned_log_key(URL) is None
    log.down = False
    assert (await keys.get()).log_id == log.log_id, "a later call tries again"
