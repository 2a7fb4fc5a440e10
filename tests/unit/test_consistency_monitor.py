"""ConsistencyMonitor on the in-memory log and repository (both held to the real services by
tests/integration/test_rekor_contract.py and test_repository_contract.py)."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from services.anchorer.checkpoints import ConsistencyMonitor
from services.anchorer.logs import RekorV1Log
from shared.telemetry import Metrics
from shared.verify import load_log_key
from tests.support.fake_rekor import FakeLog, FakeRekor, PinnedKey, der
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.unit


class World:
    def __init__(self) -> None:
        self.log = FakeLog(ec.generate_private_key(ec.SECP256R1()))
        self.log.append(5)
        self.key = load_log_key(der(self.log.priv.public_key()))
        self.repo = FakeRepository()
        self.metrics = Metrics()
        self.monitor = ConsistencyMonitor(
            store=self.repo, log=RekorV1Log(rekor=FakeRekor(self.log), keys=PinnedKey(self.key)),
            metrics=self.metrics)

    def failures(self, check: str) -> float:
        value = self.metrics.registry.get_sample_value(
            "ledger_receipt_verification_failures_total", {"check": check})
        return value or 0.0

    async def stored_size(self) -> int | None:
        stored = await self.repo.latest_checkpoint(self.key.log_id, self.log.origin)
        return None if stored is None else stored.tree_size


@pytest.fixture
def world() -> World:
    return World()


async def test_the_first_head_is_stored(world: World) -> None:
    result = await world.monitor.check()
    assert result is not None and result.ok and (result.old_size, result.new_size) == (None, 5)
    assert await world.stored_size() == 5


async def test_a_grown_log_is_proved_consistent_and_the_new_head_stored(world: World) -> None:
    await world.monitor.check()
    world.log.append(12)
    result = await world.monitor.check()
    assert result is not None and result.ok and (result.old_size, result.new_size) == (5, 17)
    assert await world.stored_size() == 17
    assert world.failures("consistency") == 0


async def test_an_unchanged_log_needs_no_proof(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    await world.monitor.check()

    async def no_proof(*args: object, **kwargs: object) -> None:
        raise AssertionError("no proof is needed between equal sizes")

    monkeypatch.setattr(world.log, "get_consistency_proof", no_proof)
    result = await world.monitor.check()
    assert result is not None and result.ok and result.old_size == result.new_size == 5


async def test_a_log_that_shrank_is_an_alarm(world: World, caplog: pytest.LogCaptureFixture) -> None:
    world.log.append(10)
    await world.monitor.check()
    del world.log.bodies[8:]
    with caplog.at_level(logging.ERROR, logger="ledger.anchorer.checkpoints"):
        result = await world.monitor.check()
    assert result is not None and not result.ok and "shrank" in result.detail
    assert world.failures("consistency") == 1
    assert any("consistency check failed" in r.getMessage() for r in caplog.records)
    assert await world.stored_size() == 15, "the bad head is not stored"


async def test_a_forked_log_fails_the_consistency_proof(world: World) -> None:
    await world.monitor.check()
    world.log.bodies[2] = b"rewritten history"  # the same size-5 prefix, another root
    world.log.append(3)
    result = await world.monitor.check()
    assert result is not None and not result.ok
    assert world.failures("consistency") == 1
    assert await world.stored_size() == 5


async def test_a_head_signed_by_another_key_is_refused(world: World) -> None:
    world.log.priv = ec.generate_private_key(ec.SECP256R1())  # Rekor now signs with another key
    result = await world.monitor.check()
    assert result is not None and not result.ok and "signed tree head" in result.detail
    assert world.failures("checkpoint") == 1
    assert await world.stored_size() is None


async def test_rekor_down_concludes_nothing(world: World) -> None:
    await world.monitor.check()
    world.log.append(4)
    world.log.down = True
    assert await world.monitor.check() is None
    assert await world.stored_size() == 5
    assert world.failures("consistency") == world.failures("checkpoint") == 0
