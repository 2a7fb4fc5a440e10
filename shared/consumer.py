"""The consumer-stage loop every pipeline stage runs (signer, anchorer).

One batch at a time, as a chain of small steps; committing offsets is the last one::

    poll (bounded) ─► Decoder ─► DeadLetterer ─► stage.process_batch ─► DeadLetterer ─► Committer
         ▲                                            │
         │                             DependencyError (any step)
         │                                            ▼
         └─── keep polling while paused ◄── Backoff (exponential, full jitter) ─ retry the SAME
                                                                                 batch in hand

* :class:`Decoder` turns each record into the stage's message; an :class:`InvalidMessage`
  marks the record for the dead-letter topic instead.
* The stage's ``process_batch`` gets the valid messages. It returns the messages it refuses
  one by one (e.g. an idempotency conflict) as :class:`Rejection`; those go to the DLQ too.
  It raises :class:`DependencyError` when a dependency fails: then *nothing* is committed,
  the assigned partitions are paused, and the same batch — kept in hand, never fetched
  again — is retried after a back-off. ``process_batch`` must therefore be idempotent.
* :class:`DeadLetterer` publishes to ``<topic>.dlq`` with the error headers and awaits the
  ack; only then may the record's offset be committed.
* :class:`Committer` commits exactly the next offset of every record of the batch
  (dead-lettered ones included), for the partitions still assigned.

Rebalances: a revoked partition's records are dropped from the batch in hand; they were not
committed, so their new owner receives them again. Stop: once ``stopping`` is set the loop
finishes the batch in hand, commits and returns; if that batch is blocked on a failing
dependency it is abandoned uncommitted (it will be redelivered), never committed.

This module must never commit an offset whose record's effects are not durable, never drop
a record it did not either process or dead-letter, and never log message values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Generic, Protocol, TypeVar

from shared.errors import (
    DatabaseUnavailable,
    DependencyError,
    InvalidMessage,
    KafkaUnavailable,
    RekorUnavailable,
    VaultUnavailable,
)
from shared.kafka import Producer, Record, TopicPartition, dead_letter
from shared.telemetry import Metrics, log_context

__all__ = [
    "Backoff",
    "Committer",
    "ConsumerLoop",
    "ConsumerPort",
    "DeadLetterPort",
    "DeadLetterer",
    "Decoder",
    "KafkaDeadLetters",
    "Message",
    "RebalanceHooks",
    "Rejection",
    "Stage",
    "dependency_name",
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


class Stage(Protocol[T]):
    """One pipeline stage as the loop sees it."""

    name: str

    def decode(self, record: Record) -> T:
        """The record's message, or :class:`InvalidMessage` (→ DLQ)."""
        ...

    async def process_batch(self, messages: Sequence[Message[T]]) -> Sequence[Rejection]:
        """Make the batch's effects durable (idempotently) and return the refused messages.

        Raise :class:`DependencyError` to have the same batch retried later.
        """
        ...


def dependency_name(exc: DependencyError) -> str:
    """The ``dependency`` label of ``ledger_dependency_failures`` for an error."""
    for cls, name in (
        (VaultUnavailable, "vault"),
        (DatabaseUnavailable, "database"),
        (KafkaUnavailable, "kafka"),
        (RekorUnavailable, "rekor"),
    ):
        if isinstance(exc, cls):
            return name
    return "other"


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
class _Batch(Generic[T]):
    """The batch in hand: every record, the valid messages, and what still needs doing."""

    records: list[Record]
    valid: list[Message[T]]
    to_dead_letter: list[Rejection]
    processed: bool = False
    attempts: int = 0

    def drop(self, partitions: set[TopicPartition]) -> int:
        """Forget the records of ``partitions`` (revoked); return how many were dropped."""

        def kept(record: Record) -> bool:
            return record.tp not in partitions

        before = len(self.records)
        self.records = [r for r in self.records if kept(r)]
        self.valid = [m for m in self.valid if kept(m.record)]
        self.to_dead_letter = [j for j in self.to_dead_letter if kept(j.record)]
        return before - len(self.records)

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

    def __call__(self, records: list[Record]) -> _Batch[T]:
        valid: list[Message[T]] = []
        invalid: list[Rejection] = []
        for record in records:
            try:
                valid.append(Message(record, self._stage.decode(record)))
            except InvalidMessage as exc:
                invalid.append(Rejection(record, exc))
        return _Batch(records=records, valid=valid, to_dead_letter=invalid)


class DeadLetterer:
    """Publishes rejections to the DLQ, each acknowledged before its offset may be committed."""

    def __init__(self, port: DeadLetterPort, *, stage: str, metrics: Metrics) -> None:
        self._port = port
        self._stage = stage
        self._metrics = metrics

    async def __call__(self, batch: _Batch[T]) -> None:
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

    async def __call__(self, batch: _Batch[T]) -> None:
        assigned = self._consumer.assignment()
        offsets = {p: o for p, o in batch.next_offsets().items() if p in assigned}
        if offsets:
            await self._consumer.commit(offsets)
        committed = sum(
            1 for r in batch.records if r.tp in offsets
        )
        self._metrics.messages_processed.labels(stage=self._stage).inc(committed)


# --- the loop ------------------------------------------------------------------------------


class RebalanceHooks:
    """Relays the Kafka adapter's rebalance callbacks to a loop built after the consumer.

    ``make_consumer(..., on_assigned=hooks.assigned, on_revoked=hooks.revoked)``, then
    ``hooks.bind(loop)``.
    """

    def __init__(self) -> None:
        self._loop: ConsumerLoop[object] | None = None

    def bind(self, loop: ConsumerLoop[Any]) -> None:
        self._loop = loop

    async def assigned(self, partitions: set[TopicPartition]) -> None:
        if self._loop is not None:
            self._loop.on_partitions_assigned(partitions)

    async def revoked(self, partitions: set[TopicPartition]) -> None:
        if self._loop is not None:
            self._loop.on_partitions_revoked(partitions)


class ConsumerLoop(Generic[T]):
    """Runs one stage over a consumer until ``stopping`` is set (see the module docstring).

    The Kafka adapter's rebalance listener must call :meth:`on_partitions_revoked` and
    :meth:`on_partitions_assigned` (see :class:`RebalanceHooks`). ``clock`` is monotonic
    seconds; waits happen only inside ``consumer.getmany`` so that the consumer keeps
    polling (and stays in its group) while paused.
    """

    def __init__(
        self,
        stage: Stage[T],
        consumer: ConsumerPort,
        dead_letters: DeadLetterPort,
        *,
        metrics: Metrics,
        stopping: asyncio.Event,
        batch_max: int,
        batch_timeout_ms: int,
        backoff: Backoff | None = None,
        clock: Callable[[], float] = time.monotonic,
        keepalive_s: float = 0.5,
        lag_interval_s: float = 5.0,
    ) -> None:
        self._stage = stage
        self._consumer = consumer
        self._metrics = metrics
        self._stopping = stopping
        self._batch_max = batch_max
        self._batch_timeout_ms = max(batch_timeout_ms, 1)
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._keepalive_s = keepalive_s
        self._lag_interval_s = lag_interval_s
        self._next_lag_at = 0.0
        self._decode = Decoder(stage)
        self._dead_letter = DeadLetterer(dead_letters, stage=stage.name, metrics=metrics)
        self._commit = Committer(consumer, stage=stage.name, metrics=metrics)
        self._batch: _Batch[T] | None = None
        # Records fetched while paused (only possible for partitions assigned mid-pause):
        # kept, uncommitted, and processed after the batch in hand.
        self._pending: list[Record] = []
        self._paused = False
        self.failures = 0  # consecutive failures of the batch in hand
        self._poll_failures = 0

    @property
    def paused(self) -> bool:
        return self._paused

    # --- rebalance callbacks ---------------------------------------------------------------

    def on_partitions_revoked(self, partitions: Iterable[TopicPartition]) -> None:
        revoked = set(partitions)
        if not revoked:
            return
        dropped = 0
        if self._batch is not None:
            dropped += self._batch.drop(revoked)
        before = len(self._pending)
        self._pending = [r for r in self._pending if r.tp not in revoked]
        dropped += before - len(self._pending)
        if dropped:
            log.info(
                "partitions revoked; dropping uncommitted records in hand (redelivered later)",
                extra={"stage": self._stage.name, "dropped": dropped,
                       "partitions": sorted(f"{p.topic}/{p.partition}" for p in revoked)},
            )
        for p in revoked:
            with contextlib.suppress(KeyError):
                self._metrics.consumer_lag.remove(self._stage.name, p.topic, str(p.partition))

    def on_partitions_assigned(self, partitions: Iterable[TopicPartition]) -> None:
        # Partitions assigned while we are paused must not start flowing.
        tps = tuple(partitions)
        if self._paused and tps:
            self._consumer.pause(*tps)

    # --- running ---------------------------------------------------------------------------

    async def run(self) -> None:
        """Process batches until stopping; return after committing the batch in hand."""
        stage = self._stage.name
        log.info("consumer loop started", extra={"stage": stage})
        while not self._stopping.is_set():
            try:
                records = await self._next_records()
            except KafkaUnavailable as exc:
                # Nothing in hand to protect: count it, wait, poll again.
                await self._poll_failed(exc)
                continue
            self._poll_failures = 0
            await self._report_lag()
            if not records:
                continue
            self._batch = self._decode(records)
            try:
                await self._finish_batch()
            finally:
                self._batch = None
        log.info("consumer loop stopped", extra={"stage": stage})

    async def _next_records(self) -> list[Record]:
        if self._pending:
            records = self._pending[: self._batch_max]
            del self._pending[: self._batch_max]
            return records
        by_partition = await self._consumer.getmany(
            timeout_ms=self._batch_timeout_ms, max_records=self._batch_max
        )
        return [r for records in by_partition.values() for r in records]

    async def _finish_batch(self) -> None:
        """Drive the batch in hand to its commit, retrying on dependency failures."""
        batch = self._batch
        assert batch is not None
        started = self._clock()
        while True:
            batch.attempts += 1
            try:
                await self._dead_letter(batch)
                if not batch.processed:
                    if batch.valid:
                        rejected = await self._stage.process_batch(list(batch.valid))
                        batch.to_dead_letter.extend(rejected)
                    batch.processed = True
                await self._dead_letter(batch)
                await self._commit(batch)
            except DependencyError as exc:
                self.failures += 1
                self._metrics.dependency_failures.labels(
                    stage=self._stage.name, dependency=dependency_name(exc)
                ).inc()
                self._pause()
                log.warning(
                    "dependency failing; batch kept in hand, nothing committed",
                    extra={"stage": self._stage.name, "error": str(exc),
                           "dependency": dependency_name(exc), "attempt": batch.attempts,
                           "records": len(batch.records)},
                )
                if not await self._wait_paused(self._backoff.delay(self.failures - 1)):
                    log.warning(
                        "stopping while a dependency fails; batch abandoned uncommitted "
                        "(it will be redelivered)",
                        extra={"stage": self._stage.name, "records": len(batch.records)},
                    )
                    return
                continue
            break
        self._metrics.batch_seconds.labels(stage=self._stage.name).observe(
            self._clock() - started
        )
        self.failures = 0
        self._resume()

    async def _poll_failed(self, exc: KafkaUnavailable) -> None:
        self._poll_failures += 1
        self._metrics.dependency_failures.labels(stage=self._stage.name, dependency="kafka").inc()
        log.warning("poll failed; retrying", extra={"stage": self._stage.name, "error": str(exc)})
        delay = self._backoff.delay(self._poll_failures - 1)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=delay)

    def _pause(self) -> None:
        self._consumer.pause(*self._consumer.assignment())
        if not self._paused:
            self._paused = True
            self._metrics.stage_paused.labels(stage=self._stage.name).set(1)

    def _resume(self) -> None:
        if self._paused:
            self._consumer.resume(*self._consumer.assignment())
            self._paused = False
            self._metrics.stage_paused.labels(stage=self._stage.name).set(0)
            log.info("dependency back; stage resumed", extra={"stage": self._stage.name})

    async def _wait_paused(self, delay: float) -> bool:
        """Wait ``delay`` seconds polling the paused consumer, so it stays in its group.

        Returns False if a stop was requested meanwhile.
        """
        deadline = self._clock() + delay
        while not self._stopping.is_set():
            remaining = deadline - self._clock()
            if remaining <= 0:
                return True
            try:
                stray = await self._consumer.getmany(
                    timeout_ms=max(1, int(min(remaining, self._keepalive_s) * 1000)),
                    max_records=self._batch_max,
                )
            except KafkaUnavailable as exc:
                log.debug("poll while paused failed", extra={"error": str(exc)})
                continue
            for tp, records in stray.items():
                if records:
                    self._consumer.pause(tp)
                    self._pending.extend(records)
        return False

    async def _report_lag(self) -> None:
        now = self._clock()
        if now < self._next_lag_at:
            return
        self._next_lag_at = now + self._lag_interval_s
        try:
            lags = await self._consumer.lag()
        except KafkaUnavailable as exc:
            log.debug("lag unavailable", extra={"error": str(exc)})
            return
        for tp, lag in lags.items():
            self._metrics.consumer_lag.labels(
                stage=self._stage.name, topic=tp.topic, partition=str(tp.partition)
            ).set(lag)
