"""The ledger.signed tail: futures keyed by entry id, resolved by signed events."""

from __future__ import annotations

import asyncio
import base64
import uuid
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from aiokafka import TopicPartition

from services.ingest.waiter import FutureRegistry, KafkaSignedWaiter
from shared.errors import KafkaUnavailable
from shared.messages import SignedEntry
from shared.settings import Settings
from shared.statement import entry_id_for
from tests.unit.test_ingest_api import make_view

pytestmark = pytest.mark.unit

TP = TopicPartition("ledger.signed", 0)


def signed(request_id: str) -> bytes:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    return SignedEntry(
        entry_id=entry_id_for(request_id), request_id=request_id, subject="s",
        payload_sha256="0" * 64, meta={}, submitted_at=now, created_at=now,
        statement=base64.b64encode(b"{}").decode(), signature="vault:v1:AA==",
        key_name="k", key_version=1, public_key="PEM",
    ).to_bytes()


class FakeConsumer:
    """Stands in for aiokafka where no real broker can produce the case (records on demand)."""

    def __init__(self, *, fail_start: bool = False) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.fail_start = fail_start
        self.sought: list[TopicPartition] = []
        self.stopped = False

    async def start(self):
        if self.fail_start:
            raise OSError("connection refused")

    async def stop(self):
        self.stopped = True

    async def topics(self):
        return {"ledger.signed"}

    def assignment(self):
        return {TP}

    async def seek_to_end(self, *tps):
        self.sought.extend(tps)

    async def position(self, tp):
        return 0

    async def getmany(self, *tps, timeout_ms=0, max_records=None):
        value = await self.queue.get()
        return {TP: [SimpleNamespace(value=value)]}


async def test_registry_resolves_every_waiter_of_an_id_and_cleans_up():
    reg = FutureRegistry()
    eid = entry_id_for("r1")
    with reg.expect(eid) as a, reg.expect(eid) as b:
        assert len(reg) == 1
        assert reg.resolve(make_view("r1")) == 2
        assert a.result().id == eid and b.result().id == eid
    assert len(reg) == 0
    assert reg.resolve(make_view("r1")) == 0


async def test_release_all_cancels_waiters():
    reg = FutureRegistry()
    with reg.expect(uuid.uuid4()) as fut:
        reg.release_all()
        assert fut.cancelled()


async def test_tail_starts_at_the_end_and_resolves_matching_events_only():
    consumer = FakeConsumer()
    waiter = KafkaSignedWaiter(Settings(), consumer=consumer)
    await waiter.start()
    try:
        assert consumer.sought == [TP]
        with waiter.expect(entry_id_for("mine")) as fut:
            for value in (b"not json", b'{"entry_id": "nope"}', None, signed("other"), signed("mine")):
                consumer.queue.put_nowait(value)
            view = await asyncio.wait_for(fut, 5)
        assert view.request_id == "mine" and view.rekor_index is None
        assert waiter.seen == 5
        assert await waiter.ping() is True
    finally:
        await waiter.close()
    assert consumer.stopped
    assert await waiter.ping() is False


async def test_tail_start_failure_is_kafka_unavailable():
    waiter = KafkaSignedWaiter(Settings(), consumer=FakeConsumer(fail_start=True))
    with pytest.raises(KafkaUnavailable, match="cannot tail"):
        await waiter.start()
