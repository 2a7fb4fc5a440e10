"""Flush logic of the anchorer's intake: N records or T ms — pure, injected clock, no network."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from services.anchorer.batcher import AccumulatingConsumer, Batcher
from shared.kafka import Record, TopicPartition


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_flushes_at_n_items() -> None:
    clock = Clock()
    b: Batcher[int] = Batcher(max_items=3, max_wait_s=2.0, clock=clock)
    assert b.time_left() is None and not b.due()
    assert b.add_many([1, 2]) == []
    assert not b.due()
    assert b.add_many([3, 4, 5]) == [4, 5]
    assert b.full and b.due() and b.time_left() == 0.0
    assert b.take() == [1, 2, 3]
    assert len(b) == 0 and b.time_left() is None


def test_flushes_after_t_from_the_first_item() -> None:
    clock = Clock()
    b: Batcher[str] = Batcher(max_items=1000, max_wait_s=2.0, clock=clock)
    b.add_many(["a"])
    clock.now += 1.5
    b.add_many(["b"])  # a later item does not restart the timer
    assert b.time_left() == pytest.approx(0.5)
    assert not b.due()
    clock.now += 0.5
    assert b.due()
    assert b.take() == ["a", "b"]


def test_n_equals_one_flushes_every_item() -> None:
    b: Batcher[int] = Batcher(max_items=1, max_wait_s=60.0, clock=Clock())
    assert b.add_many([7, 8]) == [8]
    assert b.due()
    assert b.take() == [7]


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        Batcher(max_items=0, max_wait_s=1)
    with pytest.raises(ValueError):
        Batcher(max_items=1, max_wait_s=-1)


class ScriptedConsumer:
    """Replays scripted fetches; each fetch takes ``latency`` seconds or its whole timeout."""

    def __init__(self, clock: Clock, script: list[tuple[float, list[Record]]]) -> None:
        self.clock = clock
        self.script = script  # (arrival time, records)
        self.calls: list[tuple[int, int | None]] = []
        self.committed: list[Mapping[TopicPartition, int]] = []

    async def getmany(self, timeout_ms: int = 1000, max_records: int | None = None):
        self.calls.append((timeout_ms, max_records))
        deadline = self.clock.now + timeout_ms / 1000
        if self.script and self.script[0][0] <= deadline:
            at, records = self.script[0]
            self.clock.now = max(self.clock.now, at)
            take = records[: max_records or len(records)]
            rest = records[len(take):]
            if rest:
                self.script[0] = (at, rest)
            else:
                self.script.pop(0)
            out: dict[TopicPartition, list[Record]] = {}
            for r in take:
                out.setdefault(r.tp, []).append(r)
            return out
        self.clock.now = deadline
        return {}

    async def commit(self, offsets):
        self.committed.append(dict(offsets))

    def assignment(self):
        return {TopicPartition("ledger.signed", 0)}

    def pause(self, *tps):
        pass

    def resume(self, *tps):
        pass

    async def lag(self):
        return {}


def _records(start: int, n: int) -> list[Record]:
    return [
        Record("ledger.signed", 0, o, b"k", b"v", (), 0) for o in range(start, start + n)
    ]


async def test_accumulates_until_n_records() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [(100.1, _records(0, 4)), (100.2, _records(4, 10))])
    acc = AccumulatingConsumer(inner, flush_at=10, max_items=10, max_wait_s=5.0, clock=clock)
    got = await acc.getmany(timeout_ms=1000, max_records=10)
    offsets = [r.offset for rs in got.values() for r in rs]
    assert offsets == list(range(10))
    assert clock.now == pytest.approx(100.2)  # flushed at N, long before T
    # the rest stays for the next batch
    got = await acc.getmany(timeout_ms=1000, max_records=10)
    assert [r.offset for rs in got.values() for r in rs] == list(range(10, 14))


async def test_flushes_a_partial_batch_after_t() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [(100.0, _records(0, 3)), (110.0, _records(3, 1))])
    acc = AccumulatingConsumer(inner, flush_at=1000, max_items=1000, max_wait_s=2.0, clock=clock)
    got = await acc.getmany(timeout_ms=500, max_records=1000)
    assert [r.offset for rs in got.values() for r in rs] == [0, 1, 2]
    assert clock.now == pytest.approx(102.0)  # T after the first record


async def test_returns_nothing_when_nothing_arrives() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [])
    acc = AccumulatingConsumer(inner, flush_at=5, max_items=5, max_wait_s=2.0, clock=clock)
    assert await acc.getmany(timeout_ms=300, max_records=5) == {}
    assert clock.now == pytest.approx(100.3)
    assert len(inner.calls) == 1


async def test_n1_returns_one_record_per_fetch() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [(100.0, _records(0, 3))])
    acc = AccumulatingConsumer(inner, flush_at=1, max_items=1, max_wait_s=2.0, clock=clock)
    for expected in range(3):
        got = await acc.getmany(timeout_ms=100, max_records=1)
        assert [r.offset for rs in got.values() for r in rs] == [expected]
    assert clock.now == pytest.approx(100.0)


async def test_delegates_commit() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [])
    acc = AccumulatingConsumer(inner, flush_at=5, max_items=5, max_wait_s=2.0, clock=clock)
    tp = TopicPartition("ledger.signed", 0)
    await acc.commit({tp: 5})
    assert inner.committed == [{tp: 5}]
    assert acc.assignment() == {tp}


async def test_takes_what_is_already_there_beyond_n_but_never_waits_past_n() -> None:
    clock = Clock()
    inner = ScriptedConsumer(clock, [(100.0, _records(0, 5)), (100.5, _records(5, 5))])
    acc = AccumulatingConsumer(inner, flush_at=2, max_items=8, max_wait_s=3.0, clock=clock)
    got = await acc.getmany(timeout_ms=100, max_records=8)
    assert [r.offset for rs in got.values() for r in rs] == [0, 1, 2, 3, 4]
    assert clock.now == pytest.approx(100.0)  # had N already: no waiting for more
    assert len(inner.calls) == 1


def test_flush_at_must_fit() -> None:
    with pytest.raises(ValueError):
        AccumulatingConsumer(ScriptedConsumer(Clock(), []), flush_at=5, max_items=4,
                             max_wait_s=1.0)
