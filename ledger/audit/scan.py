"""Reading the database for ``ledger audit``: every batch, its members, and the other rows.

:func:`run_audit` walks ``ledger.batches`` and ``ledger.entries`` in keyset-paginated
chunks (never a whole table at once), hands each row to the pure checkers of
:mod:`ledger.audit.entries` and :mod:`ledger.audit.batches`, and passes each problem on as
it is found. The database and Rekor come in as small protocols, so nothing here opens a
connection; with ``--online`` the command passes a Rekor client.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

from shared.errors import ConfigError, RekorError
from shared.records import BatchRecord, EntryRecord
from shared.verify import LogKey, RekorReceipt, V2Trust

from .batches import BatchChecker, BatchColumns, check_batch_record, check_online_entry
from .entries import EntryChecker
from .progress import NoProgress, Progress
from .report import AuditReport, Problem, short

__all__ = ["Db", "RekorLookup", "run_audit"]


Row = Mapping[str, Any]


class Db(Protocol):
    """The rows the audit reads (:class:`shared.repository.Repository` has them)."""

    async def batch_count(self) -> int: ...
    async def batch_rows(self, *, after: uuid.UUID, limit: int) -> list[Row]: ...
    async def batch_row(self, batch_id: uuid.UUID) -> Row | None: ...
    async def claimed_count(self, batch_id: uuid.UUID) -> int: ...
    async def member_rows(
        self, batch_id: uuid.UUID, *, after: tuple[int, uuid.UUID] | None, limit: int
    ) -> list[Row]: ...
    async def unindexed_member_rows(self, batch_id: uuid.UUID) -> list[Row]: ...
    async def loose_rows(self, *, after: uuid.UUID, limit: int) -> list[Row]: ...


class RekorLookup(Protocol):
    """What ``--online`` needs of Rekor (:class:`shared.rekor.RekorClient` has it)."""

    async def get_entry_by_uuid(self, uuid: str) -> Any: ...


def _batch_record(row: Mapping[str, Any]) -> tuple[BatchRecord | None, BatchColumns, str | None]:
    """The batch row as a record; a malformed stored receipt is a finding, not a crash."""
    columns = BatchColumns(row["rekor_uuid"], row["rekor_log_index"], row["rekor_log_id"],
                           row["integrated_time"])
    try:
        return BatchRecord.from_row(row), columns, None
    except (ValueError, TypeError) as exc:  # pydantic ValidationError is a ValueError
        pass_on = dict(row)
        pass_on["receipt"] = None
        detail = f"the stored receipt is not a Rekor receipt: {short(str(exc), 200)}"
        try:
            return BatchRecord.from_row(pass_on), columns, detail
        except (ValueError, TypeError) as again:
            return None, columns, f"the batch row is unreadable: {again}"


class _Scan:
    """One audit run: the database, the pinned key, the checkers, and where problems go."""

    def __init__(
        self,
        db: Db,
        log_key: LogKey,
        *,
        rekor: RekorLookup | None,
        chunk: int,
        report: AuditReport,
        emit: Callable[[Problem], None],
        progress: Progress,
        v2_trust: V2Trust | None = None,
    ) -> None:
        self.db, self.log_key, self.rekor, self.chunk = db, log_key, rekor, chunk
        self.v2_trust = v2_trust
        self.report, self.emit, self.progress = report, emit, progress
        self.entries = EntryChecker()

    def _entry(self, row: Mapping[str, Any]) -> EntryRecord:
        """The row as a record, after its entry checks."""
        record = EntryRecord.from_row(row)
        for p in self.entries.check(record, content_hash=row["content_sha256"]):
            self.emit(p)
        return record

    async def _member_pages(self, batch_id: uuid.UUID) -> AsyncIterator[list[Any]]:
        """The rows with a leaf index that claim ``batch_id``, in ``(leaf_index, id)`` order."""
        after: tuple[int, uuid.UUID] | None = None
        while True:
            rows = await self.db.member_rows(batch_id, after=after, limit=self.chunk)
            yield rows
            if len(rows) < self.chunk:
                return
            after = (rows[-1]["leaf_index"], rows[-1]["id"])

    async def batch(self, row: Mapping[str, Any]) -> int:
        """Audit one batch row and its members; return the number of member rows read."""
        batch, columns, unreadable = _batch_record(row)
        if batch is None:
            self.emit(Problem("batch_row", unreadable or "unreadable", row["id"]))
            return 0
        anchored = batch.state == "anchored"
        if unreadable:
            self.emit(Problem("receipt", unreadable, batch.id))
        for p in check_batch_record(batch, self.log_key, columns, v2_trust=self.v2_trust):
            self.emit(p)
        checker = BatchChecker(batch, anchored=anchored and batch.receipt is not None)
        for r in await self.db.unindexed_member_rows(batch.id):
            checker.add_unindexed(self._entry(r))
        async for rows in self._member_pages(batch.id):
            for r in rows:
                checker.add(self._entry(r), rekor_log_id=r["rekor_log_id"],
                            rekor_index=r["rekor_index"])
        for p in checker.finish():
            self.emit(p)
        if anchored:
            self.report.batches_checked += 1
            self.report.entries_checked += checker.rows
            # --online looks entries up in Rekor v1; a v2 receipt is verified offline only
            if self.rekor is not None and isinstance(batch.receipt, RekorReceipt):
                for p in await self._online(self.rekor, batch):
                    self.emit(p)
        else:
            self.report.pending_batches += 1
            self.report.unanchored_entries += checker.rows
        return checker.rows

    async def _online(self, rekor: RekorLookup, batch: BatchRecord) -> list[Problem]:
        assert batch.receipt is not None
        try:
            fetched = await rekor.get_entry_by_uuid(batch.receipt.uuid)
        except ValueError as exc:
            return [Problem("rekor_online", f"the stored uuid cannot be looked up: {exc}",
                            batch.id)]
        except RekorError as exc:
            return [Problem("rekor_online", f"Rekor has no entry {batch.receipt.uuid}: {exc}",
                            batch.id)]
        return check_online_entry(batch, fetched.response, self.log_key)

    async def loose_rows(self) -> None:
        """Every row that is not a member of an existing batch: unbatched rows and orphans."""
        after = uuid.UUID(int=0)
        while True:
            rows = await self.db.loose_rows(after=after, limit=self.chunk)
            for r in rows:
                self._loose_row(r)
            self.progress.rows_scanned(len(rows))
            if len(rows) < self.chunk:
                break
            after = rows[-1]["id"]

    def _loose_row(self, r: Mapping[str, Any]) -> None:
        record = self._entry(r)
        if record.batch_id is not None:
            self.report.other_rows += 1
            self.emit(Problem("orphan", f"claims batch {record.batch_id} (leaf "
                              f"{record.leaf_index}), which does not exist: the batch row was "
                              "removed or this row was inserted", record.batch_id, record.id,
                              record.leaf_index))
            return
        self.report.unanchored_entries += 1
        if (record.anchored_at is not None or r["rekor_log_id"] is not None
                or r["rekor_index"] is not None or record.leaf_index is not None):
            self.emit(Problem("anchor_reference", "has no batch but is marked anchored "
                              "(anchored_at, rekor_log_id, rekor_index or leaf_index set): its "
                              "batch id was removed", None, record.id, record.leaf_index))

    async def one_batch(self, batch_id: uuid.UUID) -> None:
        row = await self.db.batch_row(batch_id)
        if row is not None:
            self.progress.start(1)
            self.progress.batch_done(await self.batch(row))
            return
        claimed = await self.db.claimed_count(batch_id)
        if not claimed:
            raise ConfigError(f"no batch {batch_id} in ledger.batches")
        self.report.other_rows += claimed
        self.emit(Problem("orphan", f"{claimed} row(s) claim this batch, which does not exist: "
                          "the batch row was removed", batch_id))

    async def whole_ledger(self) -> None:
        total = await self.db.batch_count()
        self.progress.start(total)
        after = uuid.UUID(int=0)
        page = min(self.chunk, 200)
        while True:
            rows = await self.db.batch_rows(after=after, limit=page)
            for row in rows:
                self.progress.batch_done(await self.batch(row))
            if len(rows) < page:
                break
            after = rows[-1]["id"]
        await self.loose_rows()


async def run_audit(
    db: Db,
    log_key: LogKey,
    *,
    batch_id: uuid.UUID | None = None,
    rekor: RekorLookup | None = None,
    chunk: int = 500,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Progress | None = None,
    v2_trust: V2Trust | None = None,
) -> AuditReport:
    """Audit the ledger (or one batch) in ``db`` against ``log_key``; see the package doc.
    Batches anchored in Rekor v2 are checked against ``v2_trust``.

    ``rekor`` enables the online comparison. Problems are passed to ``on_problem`` as they
    are found and collected in the report. Raises ConfigError for an unknown ``batch_id``.
    """
    if chunk < 1:
        raise ValueError("chunk must be positive")
    report = AuditReport(online=rekor is not None, whole_ledger=batch_id is None)
    progress = progress or NoProgress()

    def emit(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    scan = _Scan(db, log_key, rekor=rekor, chunk=chunk, report=report, emit=emit,
                 progress=progress, v2_trust=v2_trust)
    try:
        if batch_id is not None:
            await scan.one_batch(batch_id)
        else:
            await scan.whole_ledger()
        for p in scan.entries.finish():
            emit(p)
    finally:
        progress.stop()
    return report
