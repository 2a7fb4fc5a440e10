"""What a consumer stage is made of: its messages, its turn, and the steps of a batch.

:class:`shared.consumer.ConsumerLoop` runs a :class:`Stage` over a consumer; this module
holds the pieces it composes (see that module's docstring for the order): the ports the
loop is written against (:class:`ConsumerPort`, :class:`DeadLetterPort`), the values a
stage sees (:class:`Message`, :class:`Rejection`, :class:`Turn`), the batch in hand
(:class:`Batch`) and the steps it goes through (:class:`Decoder`, :class:`DeadLetterer`,
:class:`Committer`, with :class:`Backoff` between retries).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Generic, Protocol, TypeVar

from shared.errors import InvalidMessage
from shared.kafka import Producer, Record, TopicPartition, dead_letter
from shared.telemetry import Metrics, log_context

__all__ = [
    "Backoff",
    "Batch",
    "Committer",
    "ConsumerPort",
    "DeadLetterPort",
    "DeadLetterer",
    "Decoder",
    "KafkaDeadLetters",
    "Message",
    "Rejection",
    "Stage",
    "Turn",
]

log = logging.getLogger("ledger.consumer")

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)


# --- the narrow interfaces the loop needs ------------------------------------------------


class ConsumerPort(Protocol):
    """The consumer operations the loop uses; :class:`shared.kafka.Consumer` provides them.

    ``getmany`` returns at most ``max_records`` records, waiting at most ``timeout_ms`` when
    there are none. ``commit`` raises :class:`KafkaUnavailable` when it cannot commit (broker
    down, or the group rebalanced under us). ``pause``/``resume`` with no argument mean every
    assigned partition. ``lag`` gives, per assigned partition, the records between the
    consumer's position and the partition end.
    """

    async def getmany(
        self, timeout_ms: int = ..., max_records: int | None = ...
    ) -> dict[TopicPartition, list[Record]]: ...
    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None: ...
    def assignment(self) -> set[TopicPartition]: ...
    def pause(self, *tps: TopicPartition) -> None: ...
    def resume(self, *tps: TopicPartition) -> None: ...
    async def lag(self) -> dict[TopicPartition, int]: ...


class DeadLetterPort(Protocol):
    """Publishes a record to its dead-letter topic and returns once Kafka acknowledged it."""

    async def dead_letter(
        self, record: Record, *, stage: str, reason: str, detail: str, attempts: int
    ) -> None: ...


class KafkaDeadLetters:
    """:class:`DeadLetterPort` over :func:`shared.kafka.dead_letter`.

    The ``dlq.reason`` header is the short, fixed reason (``not JSON``, ``idempotency
    conflict``, ...), the metric label too; the longer ``dlq.detail`` header says which field
    or which stored entry (ids and hashes only, never message content).
    """

    def __init__(self, producer: Producer) -> None:
        self._producer = producer

    async def dead_letter(
        self, record: Record, *, stage: str, reason: str, detail: str, attempts: int
    ) -> None:
        if detail:
            record = replace(
                record,
                headers=(*record.headers, ("dlq.detail", detail.encode("utf-8")[:2048])),
            )
        await dead_letter(self._producer, record, stage=stage, reason=reason, attempts=attempts)


@dataclass(frozen=True, slots=True)
class Message(Generic[T_co]):
    """A decoded record: the stage works on ``value``; ``record`` says where it came from."""

    record: Record
    value: T_co


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message the stage refuses for good: it is dead-lettered, then committed."""

    record: Record
    error: InvalidMessage


class Turn:
    """A batch's place in its stream (see the module docstring).

    ``async with turn:`` waits until every earlier batch's turn has passed, and passes this
    one when the block completes without an error. A retried batch keeps its turn: once
    passed, entering it again does not wait. The loop passes a batch's turn itself when the
    batch is done, whether or not the stage used it.
    """

    __slots__ = ("_passed", "_previous")

    def __init__(self, previous: Turn | None = None) -> None:
        self._previous = previous
        self._passed = asyncio.Event()

    @classmethod
    def unordered(cls) -> Turn:
        """A turn that never waits (a batch processed on its own)."""
        return cls()

    @property
    def passed(self) -> bool:
        return self._passed.is_set()

    def pass_(self) -> None:
        self._passed.set()
        self._previous = None

    async def __aenter__(self) -> None:
        previous = self._previous
        if previous is not None and not self.passed:
            await previous._passed.wait()
            self._previous = None  # do not keep the chain of every batch alive

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if kind is None:
            self.pass_()


class Stage(Protocol[T]):
    """One pipeline stage as the loop sees it."""

    name: str

    def decode(self, record: Record) -> T:
        """The record's message, or :class:`InvalidMessage` (→ DLQ)."""
        ...

    async def process_batch(
        self, messages: Sequence[Message[T]], turn: Turn = ...
    ) -> Sequence[Rejection]:
        """Make the batch's effects durable (idempotently) and return the refused messages.

        Several batches may be processed at once; what must happen in stream order goes in
        ``async with turn:``. Raise :class:`DependencyError` to have the same batch retried
        later.
        """
        ...


# --- the steps -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Backoff:
    """Exponential back-off with full jitter: attempt n waits ``U(0, min(cap, base·2ⁿ))``."""

    base_s: float = 0.2
    cap_s: float = 30.0
    random: Callable[[], float] = field(default=random.random, compare=False)

    def delay(self, attempt: int) -> float:
        ceiling = min(self.cap_s, self.base_s * 2.0 ** min(attempt, 32))
        return self.random() * ceiling


@dataclass
class Batch(Generic[T]):
    """The batch in hand: every record, the valid messages, and what still needs doing."""

    records: list[Record]
    valid: list[Message[T]]
    to_dead_letter: list[Rejection]
    processed: bool = False
    attempts: int = 0
    turn: Turn = field(default_factory=Turn.unordered)
    started: float = 0.0
    # first attempt, run as soon as the batch is fetched (None once settled)
    task: asyncio.Task[None] | None = None

    def drop(self, partitions: set[TopicPartition]) -> int:
        """Forget the records of ``partitions`` (revoked); return how many were dropped."""

        def kept(record: Record) -> bool:
            return record.tp not in partitions

        before = len(self.records)
        self.records = [r for r in self.records if kept(r)]
        self.valid = [m for m in self.valid if kept(m.record)]
        self.to_dead_letter = [j for j in self.to_dead_letter if kept(j.record)]
        return before - len(self.records)

    def still_ours(self, rejections: Sequence[Rejection]) -> list[Rejection]:
        """The rejections whose record was not dropped meanwhile (revoked partitions)."""
        if not rejections:
            return []
        kept = {(r.tp, r.offset) for r in self.records}
        return [j for j in rejections if (j.record.tp, j.record.offset) in kept]

    def next_offsets(self) -> dict[TopicPartition, int]:
        offsets: dict[TopicPartition, int] = {}
        for r in self.records:
            p = r.tp
            offsets[p] = max(offsets.get(p, 0), r.offset + 1)
        return offsets


class Decoder(Generic[T]):
    """Splits polled records into valid messages and records bound for the DLQ."""

    def __init__(self, stage: Stage[T]) -> None:
        self._stage = stage

    def __call__(self, records: list[Record]) -> Batch[T]:
        valid: list[Message[T]] = []
        invalid: list[Rejection] = []
        for record in records:
            try:
                valid.append(Message(record, self._stage.decode(record)))
            except InvalidMessage as exc:
                invalid.append(Rejection(record, exc))
        return Batch(records=records, valid=valid, to_dead_letter=invalid)


class DeadLetterer:
    """Publishes rejections to the DLQ, each acknowledged before its offset may be committed."""

    def __init__(self, port: DeadLetterPort, *, stage: str, metrics: Metrics) -> None:
        self._port = port
        self._stage = stage
        self._metrics = metrics

    async def __call__(self, batch: Batch[T]) -> None:
        while batch.to_dead_letter:
            rejection = batch.to_dead_letter[0]
            record, error = rejection.record, rejection.error
            with log_context(topic=record.topic, partition=record.partition, offset=record.offset):
                await self._port.dead_letter(
                    record,
                    stage=self._stage,
                    reason=error.reason,
                    detail=error.detail,
                    attempts=max(batch.attempts, 1),
                )
                log.warning(
                    "message dead-lettered",
                    extra={"stage": self._stage, "reason": error.reason,
                           "detail": error.detail[:300]},
                )
            self._metrics.dlq_messages.labels(stage=self._stage, reason=error.reason).inc()
            batch.to_dead_letter.pop(0)


class Committer:
    """Commits the next offset of every record of a batch, for partitions still assigned."""

    def __init__(self, consumer: ConsumerPort, *, stage: str, metrics: Metrics) -> None:
        self._consumer = consumer
        self._stage = stage
        self._metrics = metrics

    async def __call__(self, batch: Batch[T]) -> None:
        assigned = self._consumer.assignment()
        offsets = {p: o for p, o in batch.next_offsets().items() if p in assigned}
        if offsets:
            await self._consumer.commit(offsets)
        committed = sum(
            1 for r in batch.records if r.tp in offsets
        )
        self._metrics.messages_processed.labels(stage=self._stage).inc(committed)
