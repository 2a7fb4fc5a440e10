"""Waiting for the signer without polling the database: one ``ledger.signed`` tail per process.

Entry ids are deterministic (``entry_id_for(request_id)``, a UUIDv5), so the handler knows
the id of the entry *before* it publishes the request. It registers a future under that id
(:meth:`SignedWaiter.expect`), publishes, and awaits the future with a deadline. One
background task per ingest process reads ``ledger.signed`` — no consumer group, no offset
commits, assigned to every partition and starting at the end — and resolves the futures of
the ids it sees. The cost of a waiting request is one dict entry; the cost of the tail is one
``json.loads`` per signed entry (a full pydantic parse only when someone waits for it).

Registering before publishing closes the race with a fast signer. The signer re-publishes
``ledger.signed`` for a request id that is already stored, so a re-sent request also
resolves here. Partitions added to the topic later are followed by the client (no consumer group).

If the tail falls behind or Kafka hiccups, waits simply time out and the client gets 202
with a status URL: correctness never depends on this module, only latency does.
It must never log message values.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Iterator
from typing import Any, Protocol

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from shared.errors import InvalidMessage, KafkaUnavailable
from shared.kafka_tls import client_options
from shared.messages import SignedEntry, decode
from shared.settings import Settings

from .store import EntryView

__all__ = ["KafkaSignedWaiter", "SignedWaiter"]

log = logging.getLogger("ledger.ingest.waiter")


class SignedWaiter(Protocol):
    """Where a handler waits for ``ledger.signed`` of an entry id."""

    def expect(self, entry_id: uuid.UUID) -> contextlib.AbstractContextManager[
        asyncio.Future[EntryView]
    ]: ...

    def release_all(self) -> None:
        """Wake every waiting handler now (shutdown): their futures get cancelled."""
        ...


class FutureRegistry:
    """Futures keyed by entry id; several requests may wait for the same id."""

    def __init__(self) -> None:
        self._waiting: dict[uuid.UUID, set[asyncio.Future[EntryView]]] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    def wants(self, entry_id: uuid.UUID) -> bool:
        return entry_id in self._waiting

    @contextlib.contextmanager
    def expect(self, entry_id: uuid.UUID) -> Iterator[asyncio.Future[EntryView]]:
        fut: asyncio.Future[EntryView] = asyncio.get_running_loop().create_future()
        self._waiting.setdefault(entry_id, set()).add(fut)
        try:
            yield fut
        finally:
            waiting = self._waiting.get(entry_id)
            if waiting is not None:
                waiting.discard(fut)
                if not waiting:
                    del self._waiting[entry_id]

    def resolve(self, view: EntryView) -> int:
        n = 0
        for fut in self._waiting.get(view.id, ()):
            if not fut.done():
                fut.set_result(view)
                n += 1
        return n

    def release_all(self) -> None:
        for futures in self._waiting.values():
            for fut in futures:
                if not fut.done():
                    fut.cancel()


class _Consumer(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def topics(self) -> set[str]: ...
    def assignment(self) -> set[TopicPartition]: ...
    async def seek_to_end(self, *partitions: TopicPartition) -> None: ...
    async def position(self, partition: TopicPartition) -> int: ...
    async def getmany(
        self, *partitions: TopicPartition, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Any]]: ...


class KafkaSignedWaiter(FutureRegistry):
    """The tail of ``ledger.signed`` that resolves the registry's futures.

    A consumer without a group subscribed to the topic: aiokafka then assigns it every
    partition itself and follows partition changes (its ``NoGroupCoordinator``); no offsets
    are ever committed. At start every partition's position is resolved to its current end
    *before* :meth:`start` returns, so no event published afterwards can be missed.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        consumer: _Consumer | None = None,
        start_timeout_s: float = 20.0,
    ) -> None:
        super().__init__()
        self._topic = settings.topic_signed
        self._consumer: _Consumer = consumer or AIOKafkaConsumer(
            settings.topic_signed,
            **client_options(settings),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="latest",
            client_id="ledger-ingest-tail",
            request_timeout_ms=10_000,
            metadata_max_age_ms=30_000,
        )
        self._start_timeout_s = start_timeout_s
        self._task: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False
        self.seen = 0  # signed events read (for tests and debugging)

    async def start(self) -> None:
        """Connect, position every partition at its end and start tailing.

        Raises :class:`KafkaUnavailable` if Kafka cannot be reached within the start timeout.
        """
        try:
            await asyncio.wait_for(self._start(), self._start_timeout_s)
        except (KafkaError, OSError, TimeoutError) as exc:
            with contextlib.suppress(KafkaError, OSError, TimeoutError):
                await self._consumer.stop()
            raise KafkaUnavailable(
                f"cannot tail {self._topic}: {type(exc).__name__}: {exc}"
            ) from None
        self._task = asyncio.create_task(self._run(), name="ingest-signed-tail")

    async def _start(self) -> None:
        await self._consumer.start()
        self._started = True
        partitions = self._consumer.assignment()
        if partitions:
            await self._consumer.seek_to_end(*partitions)
            for tp in partitions:
                await self._consumer.position(tp)  # resolve "end" now, before any publish
        else:
            log.warning("topic has no partitions yet", extra={"topic": self._topic})

    async def _run(self) -> None:
        failures = 0
        while not self._closed:
            try:
                batches = await self._consumer.getmany(timeout_ms=500, max_records=2000)
                failures = 0
            except (KafkaError, OSError) as exc:
                failures += 1
                log.warning(
                    "signed tail failing; waits will time out into 202",
                    extra={"topic": self._topic, "error": type(exc).__name__},
                )
                await asyncio.sleep(min(5.0, 0.2 * 2 ** min(failures, 5)))
                continue
            for records in batches.values():
                for record in records:
                    self._handle(record.value)

    def _handle(self, value: bytes | None) -> None:
        self.seen += 1
        if not self._waiting or value is None:
            return
        try:
            entry_id = uuid.UUID(str(json.loads(value)["entry_id"]))
        except (ValueError, KeyError, TypeError):
            return  # not ours to judge; the anchorer dead-letters bad events
        if not self.wants(entry_id):
            return
        try:
            event = decode(SignedEntry, value)
        except InvalidMessage:
            return
        self.resolve(EntryView.from_signed(event))

    async def ping(self) -> bool:
        """Health: one metadata request; True if the broker answers and knows the topic."""
        try:
            topics = await self._consumer.topics()
        except (KafkaError, OSError, TimeoutError):
            return False
        return self._topic in topics and self._task is not None and not self._task.done()

    async def close(self) -> None:
        """Stop tailing and wake every waiter; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.release_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._started:
            with contextlib.suppress(KafkaError, OSError):
                await self._consumer.stop()
