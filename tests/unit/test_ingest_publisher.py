"""KafkaPublisher: a caller waits for its acknowledgement at most ``publish_timeout_ms``.

The producer here is a stand-in that never acknowledges until told to: the frozen broker
the integration test (tests/integration/test_ingest_faults.py) makes real with SIGSTOP.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Iterable
from typing import Any

import pytest

from services.ingest.publisher import KafkaPublisher
from shared.errors import KafkaUnavailable
from shared.settings import Settings


class _StalledProducer:
    """Accepts records and acknowledges them only when ``release`` is set."""

    def __init__(self, *, fail: bool = False) -> None:
        self.release = asyncio.Event()
        self.fail = fail
        self.records: list[Any] = []

    async def send_each(self, records: Iterable[Any]) -> list[Any]:
        self.records += list(records)
        await self.release.wait()
        if self.fail:
            raise KafkaUnavailable("broker gone")
        return []

    async def close(self) -> None:
        return None


def _publisher(producer: _StalledProducer, timeout_ms: int) -> KafkaPublisher:
    publisher = KafkaPublisher(Settings(publish_timeout_ms=timeout_ms))
    publisher._producer = producer  # type: ignore[assignment]
    return publisher


async def test_a_stalled_acknowledgement_is_a_prompt_kafka_unavailable(
    caplog: pytest.LogCaptureFixture,
) -> None:
    producer = _StalledProducer(fail=True)
    publisher = _publisher(producer, 50)
    loop = asyncio.get_running_loop()
    started = loop.time()
    results = await asyncio.gather(
        *(publisher.send("t", "k", b"v") for _ in range(20)), return_exceptions=True
    )
    waited = loop.time() - started
    assert all(isinstance(r, KafkaUnavailable) for r in results), results
    assert "did not acknowledge within 50 ms" in str(results[0])
    assert waited < 2.0  # bounded by the setting (50 ms), not by the stalled producer
    assert len(producer.records) == 20  # handed to the producer: they may still arrive
    # the producer fails later: nobody waits any more, and nothing is logged as unhandled
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        flushes = set(publisher._flushes)
        assert flushes  # still running: the records are in the producer's hands
        producer.release.set()
        await asyncio.wait(flushes, timeout=5)
        assert all(f.done() for f in flushes)
        gc.collect()
    assert "exception was never retrieved" not in caplog.text


async def test_an_acknowledgement_within_the_bound_returns_normally() -> None:
    producer = _StalledProducer()
    producer.release.set()
    publisher = _publisher(producer, 5000)
    await publisher.send_many([("t", "k", b"a", None), ("t", "k", b"b", None)])
    assert [r[2] for r in producer.records] == [b"a", b"b"]
