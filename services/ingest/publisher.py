"""Publishing append requests from many concurrent HTTP requests, together.

Each handler hands its record to :meth:`KafkaPublisher.send` and awaits the broker's
acknowledgement of that very record, as before; but the records of every handler that ran
in the same event-loop turn go to Kafka together (:meth:`shared.kafka.Producer.send_each`:
into the producer's open batches, where they linger for the next turns' records), with one
timeout for the lot instead of a timeout task each. Nothing waits for a timer: the flush is
scheduled for the end of the current loop turn.

The producer is started on first use (and again after a failed start), so ingest comes up
while Kafka is down; sends then fail fast with :class:`KafkaUnavailable` (→ 503).

A caller waits at most ``publish_timeout_ms`` for its acknowledgement, then gets
:class:`KafkaUnavailable` (→ 503 + ``Retry-After``): a frozen or slow broker never holds a
request longer. Its record may still be delivered afterwards (it is already in the producer's
batch); the client's retry with the same request id is still one entry, because the signer
stores one row per request id.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from shared.errors import KafkaUnavailable
from shared.kafka import Headers, Producer, make_producer
from shared.settings import Settings

__all__ = ["KafkaPublisher", "Record"]

log = logging.getLogger("ledger.ingest")

#: (topic, key, value, headers), as :meth:`shared.kafka.Producer.send_many` takes them
Record = tuple[str, bytes | str | None, bytes, Headers | None]

_PRODUCER_TIMEOUT_MS = 10_000
#: the most records one flush sends (the rest go in the next flush, right after)
_FLUSH_MAX = 5_000


class KafkaPublisher:
    """Acknowledged sends, batched across concurrent callers (see the module docstring)."""

    def __init__(
        self, settings: Settings, *, start_timeout_s: float = 5.0,
        request_timeout_ms: int = _PRODUCER_TIMEOUT_MS,
    ) -> None:
        self._settings = settings
        self._ack_timeout_s = settings.publish_timeout_ms / 1000
        self._start_timeout_s = start_timeout_s
        self._request_timeout_ms = request_timeout_ms
        self._producer: Producer | None = None
        self._lock = asyncio.Lock()
        self._closed = False
        self._queue: list[tuple[Record, asyncio.Future[None]]] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()

    async def _get(self) -> Producer:
        if self._producer is not None:
            return self._producer
        async with self._lock:
            if self._closed:
                raise KafkaUnavailable("ingest is shutting down")
            if self._producer is None:
                self._producer = await make_producer(
                    self._settings,
                    client_id="ledger-ingest",
                    request_timeout_ms=self._request_timeout_ms,
                    # a few small records per request: compressing them costs the broker a
                    # decompression per tiny batch and saves nothing
                    compression=None,
                    start_timeout_s=self._start_timeout_s,
                )
            return self._producer

    async def start(self) -> None:
        """Try to start now; a failure is logged, not raised (the next send retries)."""
        try:
            await self._get()
        except KafkaUnavailable as exc:
            log.warning("Kafka unavailable at start; appends answer 503 until it is back",
                        extra={"error": str(exc)[:200]})

    async def send(
        self, topic: str, key: bytes | str | None, value: bytes, headers: Any = None
    ) -> None:
        """Send one record; return once Kafka acknowledged it."""
        await self.send_many([(topic, key, value, headers)])

    async def send_many(self, records: Sequence[Record]) -> None:
        """Send records; return once Kafka acknowledged every one (or raise for all)."""
        if self._closed:
            raise KafkaUnavailable("ingest is shutting down")
        loop = asyncio.get_running_loop()
        futures = []
        for record in records:
            future: asyncio.Future[None] = loop.create_future()
            self._queue.append((record, future))
            futures.append(future)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._start_flush)
        done, pending = await asyncio.wait(futures, timeout=self._ack_timeout_s)
        if pending:
            for future in pending:
                future.add_done_callback(_retrieve)  # nobody awaits it any more
            for future in done:
                _retrieve(future)
            raise KafkaUnavailable(
                f"Kafka did not acknowledge within {self._settings.publish_timeout_ms} ms"
            )
        failures = [f.exception() for f in futures]  # every one retrieved, the first raised
        first = next((exc for exc in failures if exc is not None), None)
        if first is not None:
            raise first

    def _start_flush(self) -> None:
        self._flush_scheduled = False
        while self._queue:
            batch, self._queue = self._queue[:_FLUSH_MAX], self._queue[_FLUSH_MAX:]
            task = asyncio.get_running_loop().create_task(self._flush(batch))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _flush(self, batch: list[tuple[Record, asyncio.Future[None]]]) -> None:
        try:
            producer = await self._get()
            await producer.send_each(record for record, _ in batch)
        except Exception as exc:  # noqa: BLE001 - handed to every waiting caller
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for _, future in batch:
            if not future.done():
                future.set_result(None)

    async def close(self) -> None:
        """Finish the sends in flight, flush and stop; safe to call twice."""
        async with self._lock:
            self._closed = True
            if self._flushes:
                await asyncio.wait(set(self._flushes), timeout=self._request_timeout_ms / 1000)
            if self._producer is not None:
                await self._producer.close()


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a failure as seen: a send its caller stopped waiting for is not an error to log."""
    if not future.cancelled():
        future.exception()
