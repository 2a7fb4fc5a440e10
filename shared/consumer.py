"""The consumer-stage loop every pipeline stage runs (signer, anchorer).

Each batch goes through a chain of small steps; committing offsets is the last one::

    poll (bounded) ─► Decoder ─► DeadLetterer ─► stage.process_batch ─► DeadLetterer ─► Committer
         ▲                                            │
         │                             DependencyError (any step)
         │                                            ▼
         └─── keep polling while paused ◄── Backoff (exponential, full jitter) ─ retry the SAME
                                                                                 batch in hand

Up to ``depth`` batches are in flight at once: while one waits for Vault, the database or
Kafka, the next is already being worked on. Commits stay strictly in stream order: a batch
is committed only after every batch fetched before it, so the committed offset never passes
work that is not durable. A stage whose effects must also happen in stream order (the
signer's inserts: the earlier of two conflicting requests wins) does that part inside
``async with turn:`` — a batch's :class:`Turn` opens only once every earlier batch passed
its own. With ``depth=1`` the loop is the plain one-batch-at-a-time loop.

* :class:`Decoder` turns each record into the stage's message; an :class:`InvalidMessage`
  marks the record for the dead-letter topic instead.
* The stage's ``process_batch`` gets the valid messages. It returns the messages it refuses
  one by one (e.g. an idempotency conflict) as :class:`Rejection`; those go to the DLQ too.
  What it raises is handled by the error's declared :class:`shared.errors.Policy`, nothing
  else: *retry* (a dependency failing) — nothing is committed, the assigned partitions are
  paused, and the same batch, kept in hand and never fetched again, is retried after a
  back-off, so ``process_batch`` must be idempotent; *stop* (and *dead-letter*, which is
  only ever per message) — the exception ends the loop and the process.
* :class:`DeadLetterer` publishes to ``<topic>.dlq`` with the error headers and awaits the
  ack; only then may the record's offset be committed.
* :class:`Committer` commits exactly the next offset of every record of the batch
  (dead-lettered ones included), for the partitions still assigned.

Rebalances: a revoked partition's records are dropped from every batch in flight; they were
not committed, so their new owner receives them again. Stop: once ``stopping`` is set the loop
fetches nothing more, finishes the batches in flight in order, commits and returns; if one is
blocked on a failing dependency, it and the ones after it are abandoned uncommitted (they
will be redelivered), never committed.

This module must never commit an offset whose record's effects are not durable, never drop
a record it did not either process or dead-letter, and never log message values.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from shared.errors import InvalidMessage, KafkaUnavailable, LedgerError, Policy, policy_of
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
    "Turn",
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


def dependency_name(exc: LedgerError) -> str:
    """The ``dependency`` label of ``ledger_dependency_failures`` for an error."""
    return exc.dependency


def _retryable(exc: BaseException) -> LedgerError:
    """``exc`` if its policy is to retry; otherwise it propagates (it stops the loop)."""
    if isinstance(exc, LedgerError) and policy_of(exc) is Policy.RETRY:
        return exc
    raise exc


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
    seconds; waits happen inside ``consumer.getmany`` so that the consumer keeps polling
    (and stays in its group) while paused, except after a failing poll, when the loop waits
    with ``sleep`` (default: until the delay passes or a stop is requested).
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
        depth: int = 1,
        sleep: Callable[[float], Awaitable[None]] | None = None,
    ) -> None:
        if depth < 1:
            raise ValueError("depth must be at least 1")
        self._stage = stage
        self._depth = depth
        self._consumer = consumer
        self._metrics = metrics
        self._stopping = stopping
        self._batch_max = batch_max
        self._batch_timeout_ms = max(batch_timeout_ms, 1)
        self._backoff = backoff or Backoff()
        self._clock = clock
        self._sleep = sleep or self._sleep_unless_stopping
        self._keepalive_s = keepalive_s
        self._lag_interval_s = lag_interval_s
        self._next_lag_at = 0.0
        self._decode = Decoder(stage)
        self._dead_letter = DeadLetterer(dead_letters, stage=stage.name, metrics=metrics)
        self._commit = Committer(consumer, stage=stage.name, metrics=metrics)
        self._inflight: deque[_Batch[T]] = deque()
        self._last_turn: Turn | None = None
        self._poll: asyncio.Task[list[Record]] | None = None
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
        for batch in self._inflight:
            dropped += batch.drop(revoked)
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
        """Process batches until stopping; return after committing the batches in flight."""
        stage = self._stage.name
        log.info("consumer loop started", extra={"stage": stage, "depth": self._depth})
        stop = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                if self._poll is None and len(self._inflight) < self._depth:
                    self._poll = asyncio.create_task(self._next_records())
                waiting: set[asyncio.Future[Any]] = {stop}
                if self._poll is not None:
                    waiting.add(self._poll)
                if self._inflight and self._inflight[0].task is not None:
                    waiting.add(self._inflight[0].task)
                await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                if self._poll is not None and self._poll.done():
                    poll, self._poll = self._poll, None
                    records = await self._poll_result(poll)
                    if records:
                        self._launch(records)
                while self._inflight and self._head_done():
                    if not await self._settle(self._inflight[0]):
                        return  # stopping while a dependency fails: abandoned uncommitted
                    self._inflight.popleft()
            # stopping: fetch nothing more, finish what is in flight, in order
            while self._inflight:
                head = self._inflight[0]
                if head.task is not None:
                    await asyncio.wait({head.task})
                if not await self._settle(head):
                    return
                self._inflight.popleft()
        finally:
            stop.cancel()
            leftovers: list[asyncio.Future[Any]] = [stop]
            if self._poll is not None:
                self._poll.cancel()
                leftovers.append(self._poll)
                self._poll = None
            leftovers.extend(self._abandon())
            # every task ends here, cancelled or not: none is left pending for the collector
            await asyncio.gather(*leftovers, return_exceptions=True)
            log.info("consumer loop stopped", extra={"stage": stage})

    def _head_done(self) -> bool:
        task = self._inflight[0].task
        return task is None or task.done()

    async def _poll_result(self, poll: asyncio.Task[list[Record]]) -> list[Record]:
        try:
            records = poll.result()
        except KafkaUnavailable as exc:
            # Nothing in hand to protect: count it, wait, poll again.
            await self._poll_failed(exc)
            return []
        self._poll_failures = 0
        await self._report_lag()
        return records

    def _launch(self, records: list[Record]) -> None:
        """Decode a fetched batch and start its first attempt (it runs while we poll on)."""
        batch = self._decode(records)
        batch.turn = Turn(self._last_turn)
        self._last_turn = batch.turn
        batch.started = self._clock()
        batch.task = asyncio.create_task(self._first_attempt(batch))
        self._inflight.append(batch)

    async def _first_attempt(self, batch: _Batch[T]) -> None:
        await self._attempt(batch)

    async def _attempt(self, batch: _Batch[T]) -> None:
        """DLQ what failed to decode, process (once), DLQ what the stage refused."""
        batch.attempts += 1
        await self._dead_letter(batch)
        if not batch.processed:
            if batch.valid:
                rejected = await self._stage.process_batch(list(batch.valid), batch.turn)
                batch.to_dead_letter.extend(batch.still_ours(rejected))
            batch.processed = True
        await self._dead_letter(batch)

    async def _next_records(self) -> list[Record]:
        if self._pending:
            records = self._pending[: self._batch_max]
            del self._pending[: self._batch_max]
            return records
        by_partition = await self._consumer.getmany(
            timeout_ms=self._batch_timeout_ms, max_records=self._batch_max
        )
        return [r for records in by_partition.values() for r in records]

    async def _settle(self, batch: _Batch[T]) -> bool:
        """Drive the head batch to its commit, retrying on dependency failures.

        False when a stop was requested while a dependency kept failing (then this batch and
        every later one are abandoned uncommitted).
        """
        failure: LedgerError | None = None
        if batch.task is not None:
            try:
                batch.task.result()
            except LedgerError as exc:
                failure = _retryable(exc)
            finally:
                batch.task = None
        while True:
            if failure is None:
                try:
                    await self._commit(batch)
                    break
                except LedgerError as exc:
                    failure = _retryable(exc)
            self.failures += 1
            self._metrics.dependency_failures.labels(
                stage=self._stage.name, dependency=dependency_name(failure)
            ).inc()
            await self._quiesce()
            self._pause()
            log.warning(
                "dependency failing; batch kept in hand, nothing committed",
                extra={"stage": self._stage.name, "error": str(failure),
                       "dependency": dependency_name(failure), "attempt": batch.attempts,
                       "records": len(batch.records)},
            )
            if not await self._wait_paused(self._backoff.delay(self.failures - 1)):
                log.warning(
                    "stopping while a dependency fails; batch abandoned uncommitted "
                    "(it will be redelivered)",
                    extra={"stage": self._stage.name, "records": len(batch.records)},
                )
                return False
            try:
                await self._attempt(batch)
                failure = None
            except LedgerError as exc:
                failure = _retryable(exc)
        batch.turn.pass_()
        self._metrics.batch_seconds.labels(stage=self._stage.name).observe(
            self._clock() - batch.started
        )
        self.failures = 0
        self._resume()
        return True

    async def _quiesce(self) -> None:
        """Let a poll in flight finish (its records wait in ``_pending``): the paused loop
        polls the consumer itself, and a consumer takes one poll at a time."""
        poll, self._poll = self._poll, None
        if poll is None:
            return
        with contextlib.suppress(KafkaUnavailable):
            self._pending.extend(await poll)

    def _abandon(self) -> list[asyncio.Task[None]]:
        """Cancel the first attempts still running (their batches were not committed);
        return every task of the batches dropped."""
        tasks = [b.task for b in self._inflight if b.task is not None]
        for task in tasks:
            task.cancel()
        self._inflight.clear()
        return tasks

    async def _poll_failed(self, exc: KafkaUnavailable) -> None:
        self._poll_failures += 1
        self._metrics.dependency_failures.labels(stage=self._stage.name, dependency="kafka").inc()
        log.warning("poll failed; retrying", extra={"stage": self._stage.name, "error": str(exc)})
        await self._sleep(self._backoff.delay(self._poll_failures - 1))

    async def _sleep_unless_stopping(self, delay: float) -> None:
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
        failed_polls = 0
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
                # Kafka down too: a failing poll returns at once, so wait before the next one
                failed_polls += 1
                log.debug("poll while paused failed", extra={"error": str(exc)})
                pause = min(remaining, self._keepalive_s, self._backoff.delay(failed_polls))
                await self._sleep(max(pause, 0.01))
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
