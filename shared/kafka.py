"""Kafka adapter: an acknowledged, idempotent producer, a manually committed consumer, DLQ.

The only module that imports aiokafka. Every aiokafka error (and the OS/timeout errors under
it) becomes :class:`KafkaUnavailable`: the caller pauses, backs off and tries again, and
since nothing is committed before the work is durable, a retry never loses a message. The
exceptions: a record the broker refuses as too large raises :class:`InvalidMessage`, and a
consumer session timeout the brokers refuse raises :class:`ConfigError`.

* :class:`Producer`: ``acks=all``, idempotent, short linger; :meth:`Producer.send` returns
  only once the broker acknowledged the record. :meth:`Producer.send_many` packs many records
  into one record batch per partition (the key decides the partition exactly as the default
  partitioner does), so a thousand events cost a few produce requests, not a thousand
  futures; :meth:`Producer.send_each` is for many small concurrent senders.
* :class:`Consumer`: a consumer group with auto-commit off, ``earliest`` reset and
  ``read_committed`` isolation. It commits exactly the next-offsets it is given, never
  anything else.
* :func:`dead_letter` republishes a message's original key and value to ``<topic>.dlq``
  with headers saying where it came from and why.

This module never decodes message values: they are bytes in and bytes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import (
    InvalidSessionTimeoutError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordTooLargeError,
)
from aiokafka.partitioner import murmur2
from aiokafka.structs import TopicPartition

from shared.errors import ConfigError, InvalidMessage, KafkaUnavailable
from shared.kafka_tls import client_options
from shared.settings import Settings

__all__ = [
    "DLQ_HEADERS",
    "DLQ_SUFFIX",
    "Consumer",
    "Delivery",
    "Headers",
    "Producer",
    "Record",
    "TopicPartition",
    "dead_letter",
    "dlq_topic",
    "make_consumer",
    "make_producer",
]

DLQ_SUFFIX: Final = ".dlq"
#: Header names :func:`dead_letter` adds (values are UTF-8 text).
DLQ_HEADERS: Final = (
    "dlq.stage",
    "dlq.reason",
    "dlq.attempts",
    "dlq.source.topic",
    "dlq.source.partition",
    "dlq.source.offset",
    "dlq.ts",
)
_MAX_REASON_BYTES: Final = 2048
#: By default a fetch waits for this many bytes, or this long, before the broker answers.
#: With Kafka's default (1 byte) a trickle of records makes every consumer fetch again as
#: soon as an answer arrives, a few records at a time: tiny batches, and every stage's cost
#: per batch paid for a handful of entries (measured at 200 entries/s: the signer 3x and
#: PostgreSQL 2x their CPU per entry with 20 ms against 100 ms). Stages pass their own.
FETCH_MAX_WAIT_MS: Final = 20
FETCH_MIN_BYTES: Final = 256 * 1024

#: Headers as given by callers: a mapping or pairs; ``str`` values are sent as UTF-8.
Headers = Mapping[str, bytes | str] | Sequence[tuple[str, bytes | str]]
#: Called with the partitions just assigned or about to be revoked.
RebalanceHook = Callable[[set[TopicPartition]], Awaitable[None]]

#: what the Kafka client raises when the cluster cannot be reached or answers with an error
TRANSLATED_ERRORS: Final = (KafkaError, OSError, TimeoutError)
_TOO_LARGE: Final = (MessageSizeTooLargeError, RecordTooLargeError)


def unavailable(exc: BaseException, action: str) -> KafkaUnavailable:
    """One of :data:`TRANSLATED_ERRORS`, translated (the adapter's rule for them)."""
    return KafkaUnavailable(f"Kafka failed to {action}: {type(exc).__name__}: {exc}")


def _encode_headers(headers: Headers | None) -> list[tuple[str, bytes]]:
    if not headers:
        return []
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    return [(k, v.encode("utf-8") if isinstance(v, str) else bytes(v)) for k, v in pairs]


def dlq_topic(topic: str) -> str:
    """The dead-letter topic of ``topic``."""
    return topic + DLQ_SUFFIX


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Record:
    """One consumed message. ``offset + 1`` is what to commit once it is done."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp_ms: int

    @property
    def tp(self) -> TopicPartition:
        return TopicPartition(self.topic, self.partition)

    def header(self, name: str) -> bytes | None:
        """The last value of header ``name``, or None."""
        found = None
        for key, value in self.headers:
            if key == name:
                found = value
        return found


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the broker stored a produced record."""

    topic: str
    partition: int
    offset: int


# --- producer ------------------------------------------------------------------------------


_PARTITION_CACHE_MAX: Final = 100_000


class Producer:
    """A started producer; build with :func:`make_producer`, :meth:`close` at shutdown."""

    def __init__(self, producer: Any, *, send_timeout_s: float) -> None:
        self._producer = producer
        self._send_timeout_s = send_timeout_s
        self._closed = False
        # (partition count, key) → partition; murmur2 is pure Python in aiokafka
        self._partitions: dict[tuple[int, bytes], int] = {}

    async def send(
        self,
        topic: str,
        key: bytes | str | None,
        value: bytes,
        headers: Headers | None = None,
    ) -> Delivery:
        """Send one record and wait for the broker's acknowledgement from all in-sync replicas."""
        raw_key = key.encode("utf-8") if isinstance(key, str) else key
        try:
            meta = await asyncio.wait_for(
                self._producer.send_and_wait(
                    topic, value=value, key=raw_key, headers=_encode_headers(headers)
                ),
                self._send_timeout_s,
            )
        except _TOO_LARGE as exc:
            # Retrying cannot help: the caller dead-letters or rejects the message.
            raise InvalidMessage("message too large", detail=f"{topic}: {exc}") from None
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, f"produce to {topic}") from None
        return Delivery(topic=meta.topic, partition=meta.partition, offset=meta.offset)

    async def send_many(
        self, records: Iterable[tuple[str, bytes | str | None, bytes, Headers | None]]
    ) -> list[Delivery]:
        """Send several ``(topic, key, value, headers)`` at once; wait for every ack.

        The records go out as whole record batches, one per partition, in their order: for
        one sender with many records at a time (a stage's batch). Returns where each record
        went, in the order given. Raises like :meth:`send` (:class:`InvalidMessage` for a
        record larger than a batch may be). Many concurrent senders use :meth:`send_each`.
        """
        try:
            return await asyncio.wait_for(self._send_many(records), self._send_timeout_s)
        except _TOO_LARGE as exc:
            raise InvalidMessage("message too large", detail=str(exc)) from None
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "produce") from None

    async def _send_many(
        self, records: Iterable[tuple[str, bytes | str | None, bytes, Headers | None]]
    ) -> list[Delivery]:
        # (topic, partition) → [(position in the input, key, value, headers)]
        by_tp: dict[tuple[str, int], list[tuple[int, bytes | None, bytes, Any]]] = {}
        counts: dict[str, int] = {}
        n = 0
        for n, (topic, key, value, headers) in enumerate(records, start=1):
            raw_key = key.encode("utf-8") if isinstance(key, str) else key
            if topic not in counts:
                counts[topic] = len(await self._producer.partitions_for(topic))
            partition = self._partition(counts[topic], raw_key)
            by_tp.setdefault((topic, partition), []).append(
                (n - 1, raw_key, value, _encode_headers(headers))
            )
        # (future of a batch, the input positions it carries, in batch order)
        sent: list[tuple[asyncio.Future[Any], list[int]]] = []
        for (topic, partition), items in by_tp.items():
            batch = self._producer.create_batch()
            positions: list[int] = []
            for position, raw_key, value, headers in items:
                if batch.append(key=raw_key, value=value, timestamp=None,
                                headers=headers) is None:
                    if not positions:
                        raise RecordTooLargeError(f"a {len(value)}-byte record for {topic}")
                    future = await self._producer.send_batch(batch, topic, partition=partition)
                    sent.append((future, positions))
                    batch = self._producer.create_batch()
                    positions = []
                    if batch.append(key=raw_key, value=value, timestamp=None,
                                    headers=headers) is None:
                        raise RecordTooLargeError(f"a {len(value)}-byte record for {topic}")
                positions.append(position)
            future = await self._producer.send_batch(batch, topic, partition=partition)
            sent.append((future, positions))
        deliveries: list[Delivery | None] = [None] * n
        for meta, (_, positions) in zip(
            await asyncio.gather(*(f for f, _ in sent)), sent, strict=True
        ):
            for i, position in enumerate(positions):
                deliveries[position] = Delivery(meta.topic, meta.partition, meta.offset + i)
        return [d for d in deliveries if d is not None]

    async def send_each(
        self, records: Iterable[tuple[str, bytes | str | None, bytes, Headers | None]]
    ) -> list[Delivery]:
        """Like :meth:`send_many`, but every record joins the producer's open batch of its
        partition, where it lingers for the records of other callers. For many concurrent
        senders (ingest): batches of their own would each make a produce request, and each
        waits for the one before it on the same partition (measured: 503s at 500 req/s)."""
        futures = []
        counts: dict[str, int] = {}
        try:
            for topic, key, value, headers in records:
                raw_key = key.encode("utf-8") if isinstance(key, str) else key
                if topic not in counts:
                    counts[topic] = len(await self._producer.partitions_for(topic))
                futures.append(await self._producer.send(
                    topic, value=value, key=raw_key, headers=_encode_headers(headers),
                    partition=self._partition(counts[topic], raw_key),
                ))
            metas = await asyncio.wait_for(asyncio.gather(*futures), self._send_timeout_s)
        except _TOO_LARGE as exc:
            raise InvalidMessage("message too large", detail=str(exc)) from None
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "produce") from None
        return [Delivery(m.topic, m.partition, m.offset) for m in metas]

    def _partition(self, count: int, key: bytes | None) -> int:
        """The default partitioner's choice (Java client, aiokafka): murmur2(key) mod n, or
        any partition for a record without a key."""
        if key is None:
            return random.randrange(count)
        cached = self._partitions.get((count, key))
        if cached is None:
            if len(self._partitions) >= _PARTITION_CACHE_MAX:
                self._partitions.clear()
            cached = self._partitions[(count, key)] = (murmur2(key) & 0x7FFFFFFF) % count
        return cached

    async def flush(self) -> None:
        try:
            await asyncio.wait_for(self._producer.flush(), self._send_timeout_s)
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "flush") from None

    async def close(self) -> None:
        """Flush and stop; safe to call twice. Errors while closing are not raised."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(*TRANSLATED_ERRORS):
            await asyncio.wait_for(self._producer.stop(), self._send_timeout_s)


async def make_producer(
    settings: Settings,
    *,
    client_id: str,
    linger_ms: int = 5,
    compression: str | None = "zstd",
    request_timeout_ms: int = 30_000,
    start_timeout_s: float = 30.0,
) -> Producer:
    """Start an idempotent ``acks=all`` producer; :class:`KafkaUnavailable` if it can't."""
    producer = AIOKafkaProducer(
        **client_options(settings),
        client_id=client_id,
        acks="all",
        enable_idempotence=True,
        linger_ms=linger_ms,
        request_timeout_ms=request_timeout_ms,
        # ~1 KB events sent hundreds at a time: the 16 KB default made sends queue behind
        # each other (profiled in the signer: ~1.5x throughput with 1 MiB).
        max_batch_size=1024 * 1024,
        compression_type=compression,
    )
    try:
        await asyncio.wait_for(producer.start(), start_timeout_s)
    except TRANSLATED_ERRORS as exc:
        await _quiet_stop(producer)
        raise unavailable(exc, "start a producer") from None
    return Producer(producer, send_timeout_s=request_timeout_ms / 1000 + 5)


async def _quiet_stop(client: Any) -> None:
    with contextlib.suppress(*TRANSLATED_ERRORS):
        await asyncio.wait_for(client.stop(), 10)


# --- consumer ------------------------------------------------------------------------------


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, on_assigned: RebalanceHook | None, on_revoked: RebalanceHook | None):
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked

    async def on_partitions_revoked(self, revoked: Iterable[TopicPartition]) -> None:
        if self._on_revoked is not None:
            await self._on_revoked(set(revoked))

    async def on_partitions_assigned(self, assigned: Iterable[TopicPartition]) -> None:
        if self._on_assigned is not None:
            await self._on_assigned(set(assigned))


class Consumer:
    """A started group consumer; build with :func:`make_consumer`, :meth:`close` at shutdown."""

    def __init__(self, consumer: Any, *, timeout_s: float, session_timeout_ms: int = 0) -> None:
        self._consumer = consumer
        self._timeout_s = timeout_s
        self._session_timeout_ms = session_timeout_ms
        self._closed = False

    async def getmany(
        self, timeout_ms: int = 1000, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        """Fetch what is available (waiting up to ``timeout_ms``), by partition, in order."""
        try:
            batches = await self._consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
        except InvalidSessionTimeoutError:
            # retrying cannot help: the brokers' group.min/max.session.timeout.ms forbid it
            raise ConfigError(
                f"the Kafka brokers refuse the consumer session timeout of "
                f"{self._session_timeout_ms} ms (LEDGER_CONSUMER_SESSION_TIMEOUT_MS): set the "
                "brokers' group.min.session.timeout.ms to at most that, or raise the setting"
            ) from None
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "fetch") from None
        return {
            tp: [
                Record(
                    topic=m.topic,
                    partition=m.partition,
                    offset=m.offset,
                    key=m.key,
                    value=m.value,
                    headers=tuple((k, bytes(v)) for k, v in (m.headers or ())),
                    timestamp_ms=m.timestamp,
                )
                for m in messages
            ]
            for tp, messages in batches.items()
        }

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit exactly these next-offsets (last processed offset + 1) for the group.

        Fails with :class:`KafkaUnavailable` when the group rebalanced meanwhile: the
        messages will then be redelivered to the new owner, which is safe.
        """
        if not offsets:
            return
        try:
            await asyncio.wait_for(self._consumer.commit(dict(offsets)), self._timeout_s)
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "commit offsets") from None

    async def committed(self, tp: TopicPartition) -> int | None:
        """The group's committed next-offset for ``tp`` (None if nothing was committed)."""
        try:
            value = await asyncio.wait_for(self._consumer.committed(tp), self._timeout_s)
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "read committed offsets") from None
        return None if value is None else int(value)

    async def seek_to_committed(self, *tps: TopicPartition) -> None:
        """Rewind to the committed offsets (all assigned partitions if none given)."""
        try:
            await asyncio.wait_for(self._consumer.seek_to_committed(*tps), self._timeout_s)
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "seek to committed offsets") from None

    def pause(self, *tps: TopicPartition) -> None:
        """Stop fetching from these partitions (all assigned if none given)."""
        self._consumer.pause(*(tps or tuple(self.assignment())))

    def resume(self, *tps: TopicPartition) -> None:
        """Fetch again from these partitions (all paused if none given)."""
        self._consumer.resume(*(tps or tuple(self._consumer.paused())))

    def paused(self) -> set[TopicPartition]:
        return set(self._consumer.paused())

    def assignment(self) -> set[TopicPartition]:
        return set(self._consumer.assignment())

    async def lag(self) -> dict[TopicPartition, int]:
        """Per assigned partition: end offset (last stable, read_committed) minus position."""
        tps = list(self.assignment())
        if not tps:
            return {}
        try:
            ends = await asyncio.wait_for(self._consumer.end_offsets(tps), self._timeout_s)
            positions = {
                tp: await asyncio.wait_for(self._consumer.position(tp), self._timeout_s)
                for tp in tps
            }
        except TRANSLATED_ERRORS as exc:
            raise unavailable(exc, "measure lag") from None
        return {tp: max(0, int(ends[tp]) - int(positions[tp])) for tp in tps}

    async def close(self) -> None:
        """Leave the group and stop; safe to call twice. Uncommitted work is redelivered."""
        if self._closed:
            return
        self._closed = True
        await _quiet_stop(self._consumer)


async def make_consumer(
    settings: Settings,
    *,
    group_id: str,
    topics: Sequence[str],
    client_id: str,
    on_assigned: RebalanceHook | None = None,
    on_revoked: RebalanceHook | None = None,
    session_timeout_ms: int | None = None,
    max_poll_interval_ms: int = 300_000,
    request_timeout_ms: int = 30_000,
    start_timeout_s: float = 30.0,
    fetch_max_wait_ms: int = FETCH_MAX_WAIT_MS,
    fetch_min_bytes: int = FETCH_MIN_BYTES,
) -> Consumer:
    """Start a consumer in ``group_id`` subscribed to ``topics``.

    Auto-commit is off, a group without committed offsets starts at the earliest record and
    only committed transactional data is read. ``on_revoked`` runs before partitions are
    taken away (the last chance to commit finished work); ``on_assigned`` after new ones
    arrive.

    Group membership follows ``settings`` (``consumer_session_timeout_ms``,
    ``consumer_heartbeat_interval_ms``, ``consumer_instance_id``): how fast a dead member's
    partitions move to the others is the session timeout plus one heartbeat of the others
    (docs/reliability.md).
    """
    session_ms = session_timeout_ms or settings.consumer_session_timeout_ms
    heartbeat_ms = min(settings.consumer_heartbeat_interval_ms, max(50, session_ms // 3))
    consumer = AIOKafkaConsumer(
        **client_options(settings),
        client_id=client_id,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=heartbeat_ms,
        # a rejoin waits at most this long for the others: a member that does not rejoin
        # within one session is as good as dead
        rebalance_timeout_ms=session_ms,
        group_instance_id=settings.consumer_instance_id or None,
        max_poll_interval_ms=max_poll_interval_ms,
        request_timeout_ms=request_timeout_ms,
        fetch_max_wait_ms=fetch_max_wait_ms,
        fetch_min_bytes=fetch_min_bytes,
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    try:
        await asyncio.wait_for(consumer.start(), start_timeout_s)
        consumer.subscribe(list(topics), listener=_Listener(on_assigned, on_revoked))
    except TRANSLATED_ERRORS as exc:
        await _quiet_stop(consumer)
        raise unavailable(exc, f"start a consumer for group {group_id}") from None
    return Consumer(consumer, timeout_s=request_timeout_ms / 1000 + 5,
                    session_timeout_ms=session_ms)


# --- dead letters --------------------------------------------------------------------------


async def dead_letter(
    producer: Producer,
    source: Record,
    *,
    stage: str,
    reason: str,
    attempts: int,
    clock: Callable[[], float] = time.time,
) -> Delivery:
    """Publish ``source``'s original key, value and headers to ``<topic>.dlq``, plus why.

    The added headers are :data:`DLQ_HEADERS`; ``reason`` is cut to 2 KiB.
    """
    reason_bytes = reason.encode("utf-8")[:_MAX_REASON_BYTES]
    extra = dict(
        zip(
            DLQ_HEADERS,
            (
                stage.encode("utf-8"),
                reason_bytes,
                str(attempts).encode(),
                source.topic.encode("utf-8"),
                str(source.partition).encode(),
                str(source.offset).encode(),
                str(int(clock() * 1000)).encode(),
            ),
            strict=True,
        )
    )
    headers = [(k, v) for k, v in source.headers if k not in extra] + list(extra.items())
    return await producer.send(dlq_topic(source.topic), source.key, source.value or b"", headers)
