"""The sweeper: heals what the stream left behind, without operator action.

Every ``sweeper_interval_s`` (and once at start) it

1. re-drives batches still ``pending`` after ``sweeper_age_s`` (a crash between the claim and
   the completion, Rekor down, a refused receipt): the stored manifest and signature are
   re-sent, so Rekor answers 201 or 409, the receipt is verified and the batch completed;
2. batches signed entries never batched after ``sweeper_age_s`` (a lost ``ledger.signed``
   event), straight from the database; rows the anchorer refused (they do not check; only
   with ``LEDGER_ANCHORER_VERIFY_ROWS``) are remembered and skipped afterwards, so that they
   neither fill every round nor are logged again each round;
3. checks that Rekor's log is consistent with the last checkpoint stored
   (:mod:`services.anchorer.checkpoints`);
4. refreshes ``ledger_pending_batches`` and ``ledger_unanchored_oldest_age_seconds`` (the
   age of the oldest entry stored but not anchored: one row of a partial index).

Safe with several anchorer processes: claims are atomic and completing an anchored batch only
re-emits identical events. A failing dependency ends the round early; the next round retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from shared.errors import DependencyError, LedgerError, Policy, QueryError
from shared.telemetry import Metrics

from .checkpoints import ConsistencyResult

__all__ = ["SweepReport", "Sweeper"]

log = logging.getLogger("ledger.anchorer.sweeper")

_MAX_BATCHES_PER_ROUND = 100
_MAX_ENTRY_BATCHES_PER_ROUND = 20
#: refused rows remembered (then forgotten all at once, and each refused once more)
_MAX_REFUSED = 100_000


class SweepStore(Protocol):
    """What the sweeper reads (:class:`shared.repository.Repository`)."""

    async def pending_batches(self, *, older_than_s: float, limit: int) -> list[uuid.UUID]: ...
    async def unbatched_entries(
        self, *, older_than_s: float, limit: int, skip: Sequence[uuid.UUID] = ()
    ) -> list[uuid.UUID]: ...
    async def pending_count(self) -> int: ...
    async def unanchored_oldest_age_s(self) -> float: ...


class Anchored(Protocol):
    """What anchoring reports (:class:`services.anchorer.anchoring.AnchorResult`)."""

    @property
    def refused(self) -> Mapping[uuid.UUID, Any]: ...


class Anchoring(Protocol):
    """What the sweeper asks of the anchorer (:class:`services.anchorer.anchoring.Anchorer`)."""

    async def complete(self, batch_id: uuid.UUID, *, path_label: str) -> bool: ...
    async def anchor(self, entry_ids: Sequence[uuid.UUID]) -> Anchored: ...


class Monitor(Protocol):
    """The log consistency check (:class:`services.anchorer.checkpoints.ConsistencyMonitor`)."""

    async def check(self) -> ConsistencyResult | None: ...


@dataclass
class SweepReport:
    batches_redriven: int = 0
    batches_anchored: int = 0
    entries_batched: int = 0
    consistency_ok: bool | None = None
    error: str = ""


class Sweeper:
    def __init__(
        self,
        *,
        anchorer: Anchoring,
        store: SweepStore,
        monitor: Monitor | None,
        metrics: Metrics,
        interval_s: float,
        age_s: float,
        batch_max: int,
    ) -> None:
        self._anchorer = anchorer
        self._store = store
        self._monitor = monitor
        self._metrics = metrics
        self._interval_s = interval_s
        self._age_s = age_s
        self._batch_max = batch_max
        self.rounds = 0
        self._refused: set[uuid.UUID] = set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Sweep now, then every interval, until ``stopping`` is set."""
        while not stopping.is_set():
            await self.sweep_once()
            try:
                await asyncio.wait_for(stopping.wait(), self._interval_s)
            except TimeoutError:
                continue

    async def sweep_once(self) -> SweepReport:
        report = SweepReport()
        try:
            await self._redrive_batches(report)
            await self._batch_orphans(report)
            if self._monitor is not None:
                result = await self._monitor.check()
                report.consistency_ok = None if result is None else result.ok
        except LedgerError as exc:
            if exc.policy is not Policy.RETRY:
                raise
            report.error = str(exc)
            log.warning("sweep round ended early: dependency failing", extra={"error": str(exc)})
        except Exception as exc:  # a bug in one round must not end the sweeper
            report.error = repr(exc)
            log.exception("sweep round failed")
        with contextlib.suppress(DependencyError, QueryError):
            self._metrics.pending_batches.set(await self._store.pending_count())
            self._metrics.unanchored_oldest_age.set(await self._store.unanchored_oldest_age_s())
        self.rounds += 1
        if report.batches_redriven or report.entries_batched:
            log.info(
                "sweep round done",
                extra={"batches_redriven": report.batches_redriven,
                       "batches_anchored": report.batches_anchored,
                       "entries_batched": report.entries_batched},
            )
        return report

    async def _redrive_batches(self, report: SweepReport) -> None:
        pending = await self._store.pending_batches(
            older_than_s=self._age_s, limit=_MAX_BATCHES_PER_ROUND
        )
        for batch_id in pending:
            log.info("re-driving pending batch", extra={"batch_id": str(batch_id)})
            self._metrics.sweeper_redriven.labels(kind="batch").inc()
            report.batches_redriven += 1
            if await self._anchorer.complete(batch_id, path_label="sweeper"):
                report.batches_anchored += 1

    async def _batch_orphans(self, report: SweepReport) -> None:
        for _ in range(_MAX_ENTRY_BATCHES_PER_ROUND):
            ids = await self._store.unbatched_entries(
                older_than_s=self._age_s, limit=self._batch_max, skip=list(self._refused)
            )
            if not ids:
                return
            log.info("batching entries never batched", extra={"entries": len(ids)})
            self._metrics.sweeper_redriven.labels(kind="entry").inc(len(ids))
            report.entries_batched += len(ids)
            result = await self._anchorer.anchor(ids)
            if len(self._refused) + len(result.refused) > _MAX_REFUSED:
                self._refused.clear()
            self._refused.update(result.refused)
