"""The sweeper's rounds on the in-memory repository and a recording anchorer."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from services.anchorer.anchoring import AnchorResult
from services.anchorer.building import Refusal
from services.anchorer.checkpoints import ConsistencyResult
from services.anchorer.sweeper import Sweeper, SweepReport
from shared.errors import ConfigError, RekorUnavailable
from shared.records import EntryRecord, NewBatch
from shared.telemetry import Metrics
from shared.verify import RekorReceipt
from tests.support.fake_repository import FakeRepository

pytestmark = pytest.mark.unit

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
AGE_S = 60.0


class RecordingAnchorer:
    """What the sweeper asks of the anchorer; ``anchor`` claims the rows as the real one does."""

    def __init__(self, repo: FakeRepository) -> None:
        self.repo = repo
        self.completed: list[tuple[uuid.UUID, str]] = []
        self.anchored: list[list[uuid.UUID]] = []
        self.fail: Exception | None = None
        self.refuse: set[uuid.UUID] = set()  # rows that do not check: left unbatched

    async def complete(self, batch_id: uuid.UUID, *, path_label: str) -> bool:
        if self.fail is not None:
            raise self.fail
        self.completed.append((batch_id, path_label))
        return True

    async def anchor(self, entry_ids: Sequence[uuid.UUID]) -> AnchorResult:
        self.anchored.append(list(entry_ids))
        refused = {i: Refusal("signature", "test") for i in entry_ids if i in self.refuse}
        free = [i for i in entry_ids if i not in refused]
        if free:
            await self.repo.claim(NewBatch(
                id=uuid.uuid4(), created_at=NOW, member_ids=free, root_hex="00",
                manifest=b"m", manifest_sha256=b"d", anchor_sig=b"s", anchor_key_version=1,
                anchor_pubkey="p"))
        return AnchorResult(refused=refused)


class Monitor:
    def __init__(self, result: ConsistencyResult | None) -> None:
        self.result = result
        self.checks = 0

    async def check(self) -> ConsistencyResult | None:
        self.checks += 1
        return self.result


def entry(n: int, *, age_s: float) -> EntryRecord:
    return EntryRecord(
        id=uuid.UUID(int=n + 1), request_id=f"r{n}", subject="s", payload_hash="00", meta={},
        submitted_at=NOW, created_at=NOW - timedelta(seconds=age_s), statement=b"x", sig="v",
        key_name="k", key_version=1, pubkey="p", content_sha256="c",
    )


class World:
    def __init__(self, *, monitor: Monitor | None = None, batch_max: int = 3) -> None:
        self.repo = FakeRepository(clock=lambda: NOW)
        self.anchorer = RecordingAnchorer(self.repo)
        self.metrics = Metrics()
        self.sweeper = Sweeper(anchorer=self.anchorer, store=self.repo, monitor=monitor,
                               metrics=self.metrics, interval_s=30, age_s=AGE_S,
                               batch_max=batch_max)

    def metric(self, name: str, labels: dict[str, str] | None = None) -> float | None:
        return self.metrics.registry.get_sample_value(name, labels or {})

    async def pending_batch(self, *, age_s: float) -> uuid.UUID:
        batch_id = uuid.uuid4()
        member = entry(1000 + len(self.repo.batches), age_s=age_s)
        self.repo.add_entry(member)
        await self.repo.claim(NewBatch(
            id=batch_id, created_at=NOW - timedelta(seconds=age_s), member_ids=[member.id],
            root_hex="00", manifest=b"m", manifest_sha256=b"d", anchor_sig=b"s",
            anchor_key_version=1, anchor_pubkey="p"))
        return batch_id


async def test_old_pending_batches_are_redriven_and_young_ones_left_alone() -> None:
    w = World()
    old = await w.pending_batch(age_s=AGE_S * 2)
    await w.pending_batch(age_s=1)
    report = await w.sweeper.sweep_once()
    assert w.anchorer.completed == [(old, "sweeper")]
    assert (report.batches_redriven, report.batches_anchored) == (1, 1)
    assert w.metric("ledger_sweeper_redriven_total", {"kind": "batch"}) == 1
    assert w.metric("ledger_pending_batches") == 2, "the gauge counts every pending batch"


async def test_entries_never_batched_are_batched_in_chunks_of_batch_max() -> None:
    w = World(batch_max=3)
    for n in range(7):
        w.repo.add_entry(entry(n, age_s=AGE_S * 2))
    w.repo.add_entry(entry(99, age_s=1))  # young: its ledger.signed event may still come
    report = await w.sweeper.sweep_once()
    assert [len(ids) for ids in w.anchorer.anchored] == [3, 3, 1]
    assert report.entries_batched == 7
    assert uuid.UUID(int=100) not in {i for ids in w.anchorer.anchored for i in ids}
    assert w.metric("ledger_sweeper_redriven_total", {"kind": "entry"}) == 7


async def test_refused_rows_are_skipped_afterwards_and_do_not_hide_the_rows_behind() -> None:
    w = World(batch_max=3)
    for n in range(7):
        w.repo.add_entry(entry(n, age_s=AGE_S * 2))
    w.anchorer.refuse = {uuid.UUID(int=n + 1) for n in range(3)}  # the 3 oldest
    await w.sweeper.sweep_once()
    assert [len(ids) for ids in w.anchorer.anchored] == [3, 3, 1]
    assert {i for ids in w.anchorer.anchored[1:] for i in ids} == {
        uuid.UUID(int=n + 1) for n in range(3, 7)}, "the rows behind the refused ones"
    w.anchorer.anchored.clear()
    await w.sweeper.sweep_once()
    assert w.anchorer.anchored == [], "refused rows are not tried again every round"
    assert await w.repo.unbatched_entries(older_than_s=AGE_S, limit=10) == sorted(
        w.anchorer.refuse), "still unbatched: quarantined where they are"


async def test_a_failing_dependency_ends_the_round_early_and_the_next_round_retries() -> None:
    w = World()
    old = await w.pending_batch(age_s=AGE_S * 2)
    w.anchorer.fail = RekorUnavailable("rekor down (test)")
    report = await w.sweeper.sweep_once()
    assert "rekor down" in report.error and report.batches_anchored == 0
    w.anchorer.fail = None
    await w.sweeper.sweep_once()
    assert w.anchorer.completed == [(old, "sweeper")]
    assert w.sweeper.rounds == 2


async def test_the_database_down_ends_the_round_without_raising() -> None:
    w = World()
    await w.pending_batch(age_s=1)
    await w.sweeper.sweep_once()
    assert w.metric("ledger_pending_batches") == 1
    w.repo.down = True
    report = await w.sweeper.sweep_once()
    assert "unreachable" in report.error
    assert w.metric("ledger_pending_batches") == 1, "kept, not zeroed, while it cannot be read"


async def test_a_bug_in_one_round_does_not_end_the_sweeper() -> None:
    w = World()
    await w.pending_batch(age_s=AGE_S * 2)
    w.anchorer.fail = RuntimeError("a bug (test)")
    report = await w.sweeper.sweep_once()
    assert "a bug" in report.error


async def test_a_broken_deployment_stops_the_process() -> None:
    w = World()
    await w.pending_batch(age_s=AGE_S * 2)
    w.anchorer.fail = ConfigError("anchor key missing (test)")
    with pytest.raises(ConfigError):
        await w.sweeper.sweep_once()


@pytest.mark.parametrize("ok", [True, False, None])
async def test_the_consistency_check_is_part_of_every_round(ok: bool | None) -> None:
    result = None if ok is None else ConsistencyResult(ok=ok, old_size=1, new_size=2)
    monitor = Monitor(result)
    w = World(monitor=monitor)
    report = await w.sweeper.sweep_once()
    assert monitor.checks == 1 and report.consistency_ok is ok


async def test_run_sweeps_at_once_then_every_interval_until_stopped() -> None:
    w = World()
    stopping = asyncio.Event()
    rounds: list[int] = []
    real = w.sweeper.sweep_once

    async def counted() -> SweepReport:
        report = await real()
        rounds.append(w.sweeper.rounds)
        if len(rounds) == 1:
            stopping.set()
        return report

    w.sweeper.sweep_once = counted  # type: ignore[method-assign]
    await asyncio.wait_for(w.sweeper.run(stopping), timeout=5)
    assert rounds == [1], "the first round runs at start; a stop ends the wait at once"


async def test_every_round_sets_the_age_of_the_oldest_unanchored_entry() -> None:
    w = World()
    await w.sweeper.sweep_once()
    assert w.metric("ledger_unanchored_oldest_age_seconds") == 0, "nothing stored: 0"
    w.repo.add_entry(entry(1, age_s=5))
    w.repo.add_entry(entry(2, age_s=AGE_S * 2))  # never batched: the sweeper batches it
    await w.sweeper.sweep_once()
    assert w.metric("ledger_unanchored_oldest_age_seconds") == AGE_S * 2, (
        "batched (pending) is not anchored: the oldest entry still counts")
    (batch_id,) = w.repo.batches  # the old entry's batch is anchored: the young one is left
    await w.repo.complete(batch_id, RekorReceipt(
        uuid="ab" * 40, log_index=1, tree_index=0, log_id="cd" * 32, integrated_time=1,
        body="e30=", signed_entry_timestamp="c2V0", inclusion_hashes=(), root_hash="ef" * 32,
        tree_size=1))
    await w.sweeper.sweep_once()
    assert w.metric("ledger_unanchored_oldest_age_seconds") == 5
    w.repo.down = True
    await w.sweeper.sweep_once()
    assert w.metric("ledger_unanchored_oldest_age_seconds") == 5, "kept while unreadable"
