"""The consumer-stage loop every pipeline stage runs (signer, anchorer).

Each batch goes through a chain of small steps (:mod:`shared.stage`); committing offsets is
the last one::

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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Generic, TypeVar

from shared.errors import KafkaUnavailable, LedgerError, Policy, policy_of
from shared.kafka import Record, TopicPartition
from shared.stage import (
    Backoff,
    Batch,
    Committer,
    ConsumerPort,
    DeadLetterer,
    DeadLetterPort,
    Decoder,
    Stage,
    Turn,
)
from shared.telemetry import Metrics

__all__ = ["ConsumerLoop", "RebalanceHooks", "dependency_name"]

log = logging.getLogger("ledger.consumer")

T = TypeVar("T")


def dependency_name(exc: LedgerError) -> str:
    """The ``dependency`` label of ``ledger_dependency_failures`` for an error."""
    return exc.dependency


def _retryable(exc: BaseException) -> LedgerError:
    """``exc`` if its policy is to retry; otherwise it propagates (it stops the loop)."""
    if isinstance(exc, LedgerError) and policy_of(exc) is Policy.RETRY:
        return exc
    raise exc


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
        self._inflight: deque[Batch[T]] = deque()
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

    async def _first_attempt(self, batch: Batch[T]) -> None:
        await self._attempt(batch)

    async def _attempt(self, batch: Batch[T]) -> None:
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

    async def _settle(self, batch: Batch[T]) -> bool:
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
