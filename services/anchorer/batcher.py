"""When to cut a batch: at ``max_items`` items or ``max_wait_s`` after the first one arrived.

:class:`Batcher` is a pure accumulator with an injected clock (no I/O, no sleeping): the
intake feeds it what it reads and asks :meth:`Batcher.time_left` how long it may keep reading
before it must flush. ``max_items=1`` is the runbook's mode: one Rekor entry per ledger
entry.

:class:`AccumulatingConsumer` puts a Batcher in front of a Kafka consumer: its ``getmany``
keeps fetching until ``max_items`` records or ``max_wait_s`` after the first record, so the
consumer loop (which takes whatever one fetch returns) sees whole anchor batches. Everything
else is delegated unchanged; nothing is committed here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Generic, TypeVar

from shared.kafka import Record, TopicPartition
from shared.stage import ConsumerPort

__all__ = ["AccumulatingConsumer", "Batcher"]

T = TypeVar("T")


class Batcher(Generic[T]):
    def __init__(
        self,
        *,
        max_items: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_items < 1:
            raise ValueError("max_items must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must not be negative")
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self._clock = clock
        self._items: list[T] = []
        self._first_at: float | None = None

    def __len__(self) -> int:
        return len(self._items)

    @property
    def room(self) -> int:
        return self.max_items - len(self._items)

    @property
    def full(self) -> bool:
        return len(self._items) >= self.max_items

    def add_many(self, items: Iterable[T]) -> list[T]:
        """Add items in order until full; return those that did not fit (for the next batch)."""
        rest: list[T] = []
        for item in items:
            if self.full:
                rest.append(item)
                continue
            if self._first_at is None:
                self._first_at = self._clock()
            self._items.append(item)
        return rest

    def time_left(self) -> float | None:
        """Seconds until the batch is due by time; None while empty; 0 when due."""
        if self._first_at is None:
            return None
        if self.full:
            return 0.0
        return max(0.0, self._first_at + self.max_wait_s - self._clock())

    def due(self) -> bool:
        left = self.time_left()
        return left is not None and left <= 0.0

    def take(self) -> list[T]:
        """The waiting items in arrival order; the batcher is empty afterwards."""
        items, self._items = self._items, []
        self._first_at = None
        return items


class AccumulatingConsumer:
    """A :class:`ConsumerPort` whose ``getmany`` returns whole batches (N records or T).

    It stops waiting as soon as it holds ``flush_at`` (N) records or ``max_wait_s`` (T) has
    passed since the first; records already fetched beyond N (up to ``max_items``) come
    along, so a busy stream yields several N-sized batches per poll, which the stage anchors
    concurrently. It never waits for more than N.
    """

    def __init__(
        self,
        inner: ConsumerPort,
        *,
        flush_at: int,
        max_items: int,
        max_wait_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= flush_at <= max_items:
            raise ValueError("need 1 <= flush_at <= max_items")
        self._inner = inner
        self._flush_at = flush_at
        self._max_items = max_items
        self._max_wait_s = max_wait_s
        self._clock = clock

    async def getmany(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        limit = min(max_records or self._max_items, self._max_items)
        batcher: Batcher[Record] = Batcher(
            max_items=limit, max_wait_s=self._max_wait_s, clock=self._clock
        )
        first = await self._inner.getmany(timeout_ms=timeout_ms, max_records=limit)
        batcher.add_many(r for records in first.values() for r in records)
        while 0 < len(batcher) < self._flush_at and not batcher.due():
            left = batcher.time_left() or 0.0
            more = await self._inner.getmany(
                timeout_ms=max(1, int(left * 1000)), max_records=batcher.room
            )
            batcher.add_many(r for records in more.values() for r in records)
        out: dict[TopicPartition, list[Record]] = {}
        for record in batcher.take():
            out.setdefault(record.tp, []).append(record)
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        await self._inner.commit(offsets)

    def assignment(self) -> set[TopicPartition]:
        return self._inner.assignment()

    def pause(self, *tps: TopicPartition) -> None:
        self._inner.pause(*tps)

    def resume(self, *tps: TopicPartition) -> None:
        self._inner.resume(*tps)

    async def lag(self) -> dict[TopicPartition, int]:
        return await self._inner.lag()
