"""The consumer loop against in-memory doubles of *our own* ports (ConsumerPort, DeadLetterPort).

No Kafka here: the doubles implement the narrow interfaces the loop is written against, and
the integration tests run the same loop on a real broker. Time is a fake clock advanced only
by polls that find nothing, so back-off waits take no real time.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence

import pytest

from shared.consumer import ConsumerLoop
from shared.errors import (
    ClaimRaced,
    ConfigError,
    DatabaseUnavailable,
    IdempotencyConflict,
    InvalidMessage,
    KafkaUnavailable,
    LedgerError,
    QueryError,
    ReceiptRejected,
    RekorError,
    VaultError,
    VaultUnavailable,
    VerificationError,
)
from shared.kafka import Record, TopicPartition
from shared.stage import Backoff, Message, Rejection, Turn
from shared.telemetry import Metrics

pytestmark = pytest.mark.unit

TOPIC = "t.append"
P0 = TopicPartition(TOPIC, 0)
P1 = TopicPartition(TOPIC, 1)


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeConsumer:
    """An in-memory ConsumerPort: partitions are lists, positions advance as records are returned."""

    def __init__(self, clock: FakeClock, logs: Mapping[TopicPartition, list[Record]], events: list[str]):
        self.clock = clock
        self.logs = {tp: list(recs) for tp, recs in logs.items()}
        self.position = {tp: 0 for tp in self.logs}
        self.assigned = set(self.logs)
        self.paused_tps: set[TopicPartition] = set()
        self.committed: dict[TopicPartition, int] = {}
        self.deliveries: dict[tuple[TopicPartition, int], int] = {}
        self.events = events
        self.on_idle: list[Callable[[], None]] = []  # callbacks run when a poll finds nothing
        self.polls_while_paused = 0
        self.commit_failures = 0

    async def getmany(self, timeout_ms: int = 1000, max_records: int | None = None):
        await asyncio.sleep(0)
        if self.paused_tps:
            self.polls_while_paused += 1
        out: dict[TopicPartition, list[Record]] = {}
        budget = max_records or 10**9
        for tp in sorted(self.assigned - self.paused_tps):
            pos = self.position[tp]
            recs = self.logs[tp][pos : pos + budget]
            if recs:
                out[tp] = recs
                budget -= len(recs)
                self.position[tp] = pos + len(recs)
                for r in recs:
                    self.deliveries[(tp, r.offset)] = self.deliveries.get((tp, r.offset), 0) + 1
            if budget <= 0:
                break
        if not out:
            self.clock.now += timeout_ms / 1000
            for cb in self.on_idle:
                cb()
        return out

    async def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.commit_failures:
            self.commit_failures -= 1
            raise KafkaUnavailable("commit failed (test)")
        for tp, off in offsets.items():
            assert off >= self.committed.get(tp, 0), "commits never go backwards"
            self.committed[tp] = off
        self.events.append(f"commit {sorted((tp.partition, o) for tp, o in offsets.items())}")

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def pause(self, *tps: TopicPartition) -> None:
        self.paused_tps |= set(tps)

    def resume(self, *tps: TopicPartition) -> None:
        self.paused_tps -= set(tps)

    async def lag(self) -> dict[TopicPartition, int]:
        return {tp: len(self.logs[tp]) - self.position[tp] for tp in self.assigned}


class FakeDLQ:
    def __init__(self, events: list[str]) -> None:
        self.sent: list[tuple[Record, str, str, int]] = []
        self.failures = 0
        self.events = events

    async def dead_letter(self, record: Record, *, stage: str, reason: str, detail: str, attempts: int) -> None:
        if self.failures:
            self.failures -= 1
            raise KafkaUnavailable("dlq publish failed (test)")
        self.sent.append((record, stage, reason, attempts))
        self.events.append(f"dlq {record.partition}:{record.offset} {reason}")


class FakeStage:
    """Values are JSON {"n": int}; anything else is invalid. ``fail`` errors are raised in order."""

    name = "test-stage"

    def __init__(self, events: list[str]) -> None:
        self.calls: list[list[tuple[int, int]]] = []
        self.fail: list[Exception] = []
        self.reject_n: set[int] = set()
        self.during: list[Callable[[], None]] = []  # callbacks run inside process_batch
        self.events = events
        # pipelining: call number → event the call waits for before finishing; and the order
        # in which calls ran the part they do inside their turn
        self.gates: dict[int, asyncio.Event] = {}
        self.use_turn = False
        self.in_turn: list[int] = []

    def decode(self, record: Record) -> int:
        try:
            doc = json.loads(record.value or b"")
        except ValueError:
            raise InvalidMessage("not JSON") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("n"), int):
            raise InvalidMessage("invalid fields", detail="n")
        return int(doc["n"])

    async def process_batch(self, messages: Sequence[Message[int]], turn: Turn | None = None
                            ) -> Sequence[Rejection]:
        self.calls.append([(m.record.partition, m.record.offset) for m in messages])
        call = len(self.calls)
        for cb in self.during:
            cb()
        if self.fail:
            raise self.fail.pop(0)
        if call in self.gates:
            await self.gates[call].wait()
        if self.use_turn and turn is not None:
            async with turn:
                self.in_turn.append(call)
        self.events.append(f"processed {[m.value for m in messages]}")
        return [
            Rejection(m.record, IdempotencyConflict(str(m.value)))
            for m in messages
            if m.value in self.reject_n
        ]


def rec(tp: TopicPartition, offset: int, value: bytes | None) -> Record:
    return Record(topic=tp.topic, partition=tp.partition, offset=offset, key=b"k", value=value, headers=(), timestamp_ms=0)


def good(tp: TopicPartition, offset: int, n: int) -> Record:
    return rec(tp, offset, json.dumps({"n": n}).encode())


class Harness:
    def __init__(self, logs: Mapping[TopicPartition, list[Record]], *, batch_max: int = 100,
                 depth: int = 1) -> None:
        self.events: list[str] = []
        self.clock = FakeClock()
        self.consumer = FakeConsumer(self.clock, logs, self.events)
        self.dlq = FakeDLQ(self.events)
        self.stage = FakeStage(self.events)
        self.metrics = Metrics()
        self.stopping = asyncio.Event()
        self.jitter = [0.5]
        self.delays: list[float] = []
        backoff = Backoff(base_s=1.0, cap_s=8.0, random=self._random)
        self.loop = ConsumerLoop(
            self.stage,
            self.consumer,
            self.dlq,
            metrics=self.metrics,
            stopping=self.stopping,
            batch_max=batch_max,
            batch_timeout_ms=50,
            backoff=backoff,
            clock=self.clock,
            keepalive_s=0.5,
            lag_interval_s=0.0,
            depth=depth,
            sleep=self._sleep,
        )
        self.sleeps: list[float] = []
        # stop once everything available has been consumed and nothing is in hand
        self.consumer.on_idle.append(self._stop_when_drained)

    def _random(self) -> float:
        return self.jitter[0]

    async def _sleep(self, seconds: float) -> None:
        """The loop's wait after a failing poll: advances the fake clock, takes no real time."""
        self.sleeps.append(seconds)
        self.clock.now += seconds
        await asyncio.sleep(0)

    def _stop_when_drained(self) -> None:
        if not self.consumer.paused_tps and all(
            self.consumer.position[tp] == len(recs) for tp, recs in self.consumer.logs.items()
        ):
            self.stopping.set()

    async def run(self) -> None:
        await asyncio.wait_for(self.loop.run(), timeout=5)

    def metric(self, name: str, labels: dict[str, str]) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels)


async def test_invalid_messages_are_dead_lettered_before_the_commit_and_the_partition_moves_on():
    h = Harness({P0: [good(P0, 0, 1), rec(P0, 1, b"not json"), rec(P0, 2, b'{"x": 1}'), good(P0, 3, 4)]})
    await h.run()

    assert [(r.offset, reason) for r, _, reason, _ in h.dlq.sent] == [(1, "not JSON"), (2, "invalid fields")]
    assert all(stage == "test-stage" and attempts == 1 for _, stage, _, attempts in h.dlq.sent)
    assert h.stage.calls == [[(0, 0), (0, 3)]]
    # next offset of every record, dead-lettered ones included, and only after the DLQ acks
    assert h.consumer.committed == {P0: 4}
    assert h.events.index("commit [(0, 4)]") > h.events.index("dlq 0:2 invalid fields")
    assert h.metric("ledger_dlq_messages_total", {"stage": "test-stage", "reason": "not JSON"}) == 1
    assert h.metric("ledger_messages_processed_total", {"stage": "test-stage"}) == 4


async def test_rejections_from_the_stage_are_dead_lettered_then_committed():
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2), good(P0, 2, 3)]})
    h.stage.reject_n = {2}
    await h.run()

    assert [(r.offset, reason) for r, _, reason, _ in h.dlq.sent] == [(1, "idempotency conflict")]
    assert h.events == ["processed [1, 2, 3]", "dlq 0:1 idempotency conflict", "commit [(0, 3)]"]


async def test_dependency_error_commits_nothing_pauses_and_retries_the_same_batch():
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2)], P1: [good(P1, 0, 3)]})
    h.stage.fail = [VaultUnavailable("vault down (test)"), DatabaseUnavailable("db down (test)")]
    observed: list[tuple[dict[TopicPartition, int], bool, float | None]] = []

    def snapshot() -> None:
        observed.append(
            (dict(h.consumer.committed), h.loop.paused,
             h.metric("ledger_stage_paused", {"stage": "test-stage"}))
        )

    h.stage.during.append(snapshot)
    await h.run()

    batch = [(0, 0), (0, 1), (1, 0)]
    assert h.stage.calls == [batch, batch, batch], "the same batch, retried"
    # each record was fetched from the consumer exactly once: the retry used the batch in hand
    assert set(h.consumer.deliveries.values()) == {1}
    # during the 2nd and 3rd attempts nothing was committed and the stage was paused
    assert observed[1:] == [({}, True, 1.0), ({}, True, 1.0)]
    assert h.consumer.polls_while_paused > 0, "kept polling (stays in the group) while paused"
    assert h.consumer.committed == {P0: 2, P1: 1}
    assert not h.consumer.paused_tps and not h.loop.paused
    assert h.metric("ledger_stage_paused", {"stage": "test-stage"}) == 0
    assert h.metric("ledger_dependency_failures_total", {"stage": "test-stage", "dependency": "vault"}) == 1
    assert h.metric("ledger_dependency_failures_total", {"stage": "test-stage", "dependency": "database"}) == 1


async def test_backoff_waits_are_exponential_with_full_jitter_on_the_injected_clock():
    h = Harness({P0: [good(P0, 0, 1)]})
    h.stage.fail = [VaultUnavailable("x"), VaultUnavailable("x"), VaultUnavailable("x")]
    starts: list[float] = []
    h.stage.during.append(lambda: starts.append(h.clock.now))
    await h.run()

    gaps = [b - a for a, b in itertools.pairwise(starts)]
    # jitter 0.5 * min(8, 2**n): 0.5, 1.0, 2.0 (keep-alive polls are 0.5 s each)
    assert gaps == pytest.approx([0.5, 1.0, 2.0])
    b = Backoff(base_s=1.0, cap_s=8.0, random=lambda: 1.0)
    assert [b.delay(n) for n in range(6)] == [1.0, 2.0, 4.0, 8.0, 8.0, 8.0]
    assert Backoff(random=lambda: 0.0).delay(10) == 0.0


async def test_dead_letter_publish_failure_commits_nothing_and_publishes_once_after_retry():
    h = Harness({P0: [rec(P0, 0, b"\xff"), good(P0, 1, 2)]})
    h.dlq.failures = 2
    await h.run()

    assert len(h.dlq.sent) == 1 and h.dlq.sent[0][0].offset == 0
    assert h.dlq.sent[0][3] == 3, "attempts header counts the tries"
    assert h.events == ["dlq 0:0 not JSON", "processed [2]", "commit [(0, 2)]"]
    assert h.metric("ledger_dependency_failures_total", {"stage": "test-stage", "dependency": "kafka"}) == 2


async def test_commit_failure_retries_without_processing_again():
    h = Harness({P0: [good(P0, 0, 1)]})
    h.consumer.commit_failures = 1
    await h.run()

    assert len(h.stage.calls) == 1, "processed once; only the commit was retried"
    assert h.consumer.committed == {P0: 1}


async def test_stop_requested_mid_batch_finishes_and_commits_that_batch_then_returns():
    h = Harness({P0: [good(P0, i, i) for i in range(10)]}, batch_max=4)
    h.stage.during.append(h.stopping.set)  # a SIGTERM arrives while the first batch is processed
    await h.run()

    assert h.stage.calls == [[(0, 0), (0, 1), (0, 2), (0, 3)]]
    assert h.consumer.committed == {P0: 4}, "the batch in hand was finished and committed"
    assert h.consumer.position[P0] == 4, "nothing more was fetched"


async def test_stop_while_a_dependency_fails_abandons_the_batch_uncommitted():
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2)]})
    h.stage.fail = [VaultUnavailable("down")] * 100

    def stop_on_second_attempt() -> None:
        if len(h.stage.calls) == 2:
            h.stopping.set()

    h.stage.during.append(stop_on_second_attempt)
    await h.run()

    assert h.consumer.committed == {}, "never commit unsigned work"
    assert len(h.stage.calls) >= 2


async def test_revoked_partitions_are_dropped_from_the_batch_in_hand_and_not_committed():
    h = Harness({P0: [good(P0, 0, 1)], P1: [good(P1, 0, 2), good(P1, 1, 3)]})
    h.stage.fail = [VaultUnavailable("down")]

    def revoke_p1_during_first_attempt() -> None:
        if len(h.stage.calls) == 1:
            h.consumer.assigned.discard(P1)
            h.loop.on_partitions_revoked({P1})

    h.stage.during.append(revoke_p1_during_first_attempt)
    await h.run()

    assert h.stage.calls[1] == [(0, 0)], "the retry carries only what is still ours"
    assert h.consumer.committed == {P0: 1}


async def test_partitions_assigned_while_paused_stay_paused_until_resume():
    h = Harness({P0: [good(P0, 0, 1)]})
    p2 = TopicPartition(TOPIC, 2)
    h.stage.fail = [VaultUnavailable("down"), VaultUnavailable("down")]

    def assign_p2() -> None:
        if len(h.stage.calls) == 2:  # the loop is paused by now
            h.consumer.logs[p2] = [good(p2, 0, 9)]
            h.consumer.position[p2] = 0
            h.consumer.assigned.add(p2)
            h.loop.on_partitions_assigned({p2})
            assert p2 in h.consumer.paused_tps

    h.stage.during.append(assign_p2)
    await h.run()

    assert h.stage.calls == [[(0, 0)], [(0, 0)], [(0, 0)], [(2, 0)]]
    assert h.consumer.committed == {P0: 1, p2: 1}


async def test_consumer_lag_is_reported_per_partition():
    h = Harness({P0: [good(P0, i, i) for i in range(5)]}, batch_max=2)
    seen: list[float | None] = []
    h.stage.during.append(
        lambda: seen.append(h.metric("ledger_consumer_lag", {"stage": "test-stage", "topic": TOPIC, "partition": "0"}))
    )
    await h.run()

    assert seen == [3.0, 1.0, 0.0]


async def test_a_failing_poll_is_retried_and_the_loop_keeps_running():
    h = Harness({P0: [good(P0, 0, 1)]})
    real_getmany = h.consumer.getmany
    failures = [KafkaUnavailable("broker down (test)")]

    async def flaky_getmany(timeout_ms: int = 1000, max_records: int | None = None):
        if failures:
            raise failures.pop()
        return await real_getmany(timeout_ms=timeout_ms, max_records=max_records)

    h.consumer.getmany = flaky_getmany  # type: ignore[method-assign]
    h.loop._backoff = Backoff(base_s=0.001, cap_s=0.001, random=lambda: 1.0)
    await h.run()

    assert h.consumer.committed == {P0: 1}
    assert h.metric("ledger_dependency_failures_total", {"stage": "test-stage", "dependency": "kafka"}) == 1


# --- the error policy: the loop reads it from the error class alone -------------------------


@pytest.mark.parametrize(
    ("error", "dependency"),
    [
        (QueryError("relation ledger.entries does not exist (test)", sqlstate="42P01"), "database"),
        (VaultError("permission denied (test)"), "vault"),
        (RekorError("bad entry (test)", status=400), "rekor"),
        (ReceiptRejected(uuid.UUID(int=1), check="inclusion proof", detail="root differs (test)"), "rekor"),
        (VerificationError("signature does not verify (test)"), "verification"),
        (ClaimRaced("claimed meanwhile (test)"), "database"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v,
)
async def test_errors_declared_retry_pause_and_retry_the_same_batch(error: LedgerError, dependency: str):
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2)]})
    h.stage.fail = [error]
    paused_during_retry: list[bool] = []
    h.stage.during.append(lambda: paused_during_retry.append(h.loop.paused))
    await h.run()

    assert h.stage.calls == [[(0, 0), (0, 1)]] * 2, "the same batch, retried"
    assert paused_during_retry == [False, True]
    assert h.consumer.committed == {P0: 2}
    assert h.dlq.sent == [], "a dependency's refusal is not the message's fault"
    assert h.metric("ledger_dependency_failures_total",
                    {"stage": "test-stage", "dependency": dependency}) == 1


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("LEDGER_VAULT_KEY is not set (test)"),
        InvalidMessage("a whole batch refused at once is a bug (test)"),
        IdempotencyConflict("raised instead of returned (test)"),
        RuntimeError("a bug (test)"),
    ],
    ids=lambda e: type(e).__name__,
)
async def test_errors_declared_stop_end_the_loop_with_nothing_committed(error: Exception):
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2)]})
    h.stage.fail = [error]
    with pytest.raises(type(error)) as raised:
        await h.run()

    assert raised.value is error
    assert len(h.stage.calls) == 1, "not retried"
    assert h.consumer.committed == {}, "redelivered to whoever runs next"
    assert h.dlq.sent == []


async def test_a_stop_error_in_a_later_batch_leaves_earlier_commits_and_nothing_after():
    h = Harness({P0: [good(P0, i, i) for i in range(6)]}, batch_max=2, depth=2)
    h.stage.fail = []
    h.stage.during.append(
        lambda: h.stage.fail.append(ConfigError("broken (test)")) if len(h.stage.calls) == 2 else None
    )
    with pytest.raises(ConfigError):
        await h.run()

    assert h.consumer.committed.get(P0, 0) <= 2, "nothing at or after the failing batch"


async def test_kafka_down_while_paused_waits_between_polls_instead_of_spinning():
    h = Harness({P0: [good(P0, 0, 1)]})
    h.stage.fail = [VaultUnavailable("down (test)")] * 3  # back-off waits of 1, 2 and 4 s
    h.loop._backoff = Backoff(base_s=1.0, cap_s=8.0, random=lambda: 1.0)
    real_getmany = h.consumer.getmany
    failed_polls = 0

    async def getmany_down_while_paused(timeout_ms: int = 1000, max_records: int | None = None):
        nonlocal failed_polls
        await asyncio.sleep(0)
        if h.loop.paused:  # a failing poll returns at once, taking no time
            failed_polls += 1
            raise KafkaUnavailable("broker down (test)")
        return await real_getmany(timeout_ms=timeout_ms, max_records=max_records)

    h.consumer.getmany = getmany_down_while_paused  # type: ignore[method-assign]
    await h.run()

    # the 7 s of back-off were slept, in steps no longer than the keep-alive poll (0.5 s),
    # one failing poll per step: no tight loop against a dead broker
    assert sum(h.sleeps) == pytest.approx(7.0)
    assert max(h.sleeps) == pytest.approx(0.5)
    assert failed_polls == len(h.sleeps) == 14
    assert h.consumer.committed == {P0: 1}


# --- several batches in flight (depth > 1) ---------------------------------------------------


def _open_later(h: Harness, call: int, *, after_call: int) -> None:
    """Call ``call`` finishes only once call ``after_call`` has started."""
    gate = h.stage.gates[call] = asyncio.Event()

    def check() -> None:
        if len(h.stage.calls) >= after_call:
            gate.set()

    h.stage.during.append(check)


async def test_batches_overlap_but_commit_in_stream_order():
    h = Harness({P0: [good(P0, i, i) for i in range(6)]}, batch_max=2, depth=3)
    _open_later(h, 1, after_call=3)  # the first batch is still busy when the third starts
    await h.run()

    assert h.stage.calls == [[(0, 0), (0, 1)], [(0, 2), (0, 3)], [(0, 4), (0, 5)]]
    processed = [e for e in h.events if e.startswith("processed")]
    assert processed[0] != "processed [0, 1]", "a later batch finished first"
    commits = [e for e in h.events if e.startswith("commit")]
    assert commits == ["commit [(0, 2)]", "commit [(0, 4)]", "commit [(0, 6)]"]
    assert set(h.consumer.deliveries.values()) == {1}


async def test_turns_keep_the_ordered_part_in_stream_order():
    h = Harness({P0: [good(P0, i, i) for i in range(6)]}, batch_max=2, depth=3)
    h.stage.use_turn = True
    _open_later(h, 1, after_call=3)
    await h.run()

    assert h.stage.in_turn == [1, 2, 3], "batch 2 and 3 waited for batch 1's turn"


async def test_a_failing_head_holds_back_the_commits_of_later_batches():
    h = Harness({P0: [good(P0, i, i) for i in range(4)]}, batch_max=2, depth=2)
    h.stage.use_turn = True
    h.stage.fail = [VaultUnavailable("vault down (test)")]
    await h.run()

    first, second = [(0, 0), (0, 1)], [(0, 2), (0, 3)]
    assert h.stage.calls.count(first) == 2, "the failed batch was retried"
    assert h.stage.calls.count(second) == 1, "the later batch was processed once"
    commits = [e for e in h.events if e.startswith("commit")]
    assert commits == ["commit [(0, 2)]", "commit [(0, 4)]"], "in order, after the retry"
    assert h.stage.in_turn == [3, 2], "batch 2 stored only after batch 1's retry (call 3)"
    assert h.consumer.committed == {P0: 4}


async def test_stop_finishes_every_batch_in_flight_then_returns():
    h = Harness({P0: [good(P0, i, i) for i in range(10)]}, batch_max=2, depth=3)
    gates = [asyncio.Event() for _ in range(3)]
    h.stage.gates = {call: gate for call, gate in enumerate(gates, start=1)}

    def stop_at_third() -> None:  # three batches in flight, none finished: SIGTERM
        if len(h.stage.calls) == 3:
            h.stopping.set()
            for gate in gates:
                gate.set()

    h.stage.during.append(stop_at_third)
    await h.run()

    assert len(h.stage.calls) == 3
    assert h.consumer.committed == {P0: 6}, "all three in-flight batches committed"
    assert h.consumer.position[P0] == 6, "nothing more was fetched"


async def test_stop_while_the_head_fails_abandons_every_batch_in_flight():
    h = Harness({P0: [good(P0, i, i) for i in range(4)]}, batch_max=2, depth=2)
    h.stage.fail = [VaultUnavailable("down")] * 100

    def stop_on_retry() -> None:
        if len(h.stage.calls) == 3:
            h.stopping.set()

    h.stage.during.append(stop_on_retry)
    await h.run()

    assert h.consumer.committed == {}, "nothing after the failing batch was committed either"


async def test_revoked_records_leave_every_batch_in_flight_and_are_not_dead_lettered():
    h = Harness({P0: [good(P0, 0, 1), good(P0, 1, 2)], P1: [good(P1, 0, 3), good(P1, 1, 4)]},
                batch_max=2, depth=2)
    h.stage.reject_n = {3, 4}  # the stage refuses P1's records...
    gate = h.stage.gates[2] = asyncio.Event()

    def revoke_p1_when_both_are_in_flight() -> None:
        if len(h.stage.calls) == 2:
            h.consumer.assigned.discard(P1)
            h.loop.on_partitions_revoked({P1})  # ...but P1 moves to another consumer first
            gate.set()

    h.stage.during.append(revoke_p1_when_both_are_in_flight)
    await h.run()

    assert h.dlq.sent == [], "refusals of revoked records are left to their new owner"
    assert h.consumer.committed == {P0: 2}
