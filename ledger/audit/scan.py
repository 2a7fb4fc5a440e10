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

from shared.anchored import BatchRecord, EntryRecord
from shared.errors import ConfigError, RekorError
from shared.verify import LogKey

from .batches import BatchChecker, BatchColumns, check_batch_record, check_online_entry
from .entries import EntryChecker
from .progress import NoProgress, Progress
from .report import AuditReport, Problem, short

__all__ = ["Db", "RekorLookup", "run_audit"]


_ENTRY_SELECT = (
    "e.id, e.request_id, e.subject, e.payload_hash, e.meta::text AS meta, e.submitted_at, "
    "e.created_at, e.statement, e.sig, e.key_name, e.key_version, e.pubkey, e.batch_id, "
    "e.leaf_index, e.anchored_at, e.content_sha256, e.rekor_log_id, e.rekor_index"
)
_BATCH_SELECT = (
    "id, created_at, state, size, root_hash, manifest, manifest_sha256, anchor_sig, "
    "anchor_key_version, anchor_pubkey, receipt::text AS receipt, anchored_at, rekor_uuid, "
    "rekor_log_index, rekor_log_id, integrated_time"
)


class Db(Protocol):
    """What the audit needs of the database (:class:`shared.db.Database` has it)."""

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...


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
    ) -> None:
        self.db, self.log_key, self.rekor, self.chunk = db, log_key, rekor, chunk
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
            if after is None:
                rows = await self.db.fetch(
                    f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
                    " WHERE e.batch_id = $1 AND e.leaf_index IS NOT NULL"
                    " ORDER BY e.leaf_index, e.id LIMIT $2",
                    batch_id, self.chunk,
                )
            else:
                rows = await self.db.fetch(
                    f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
                    " WHERE e.batch_id = $1 AND (e.leaf_index, e.id) > ($2, $3)"
                    " ORDER BY e.leaf_index, e.id LIMIT $4",
                    batch_id, after[0], after[1], self.chunk,
                )
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
        for p in check_batch_record(batch, self.log_key, columns):
            self.emit(p)
        checker = BatchChecker(batch, anchored=anchored and batch.receipt is not None)
        unindexed = await self.db.fetch(
            f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
            " WHERE e.batch_id = $1 AND e.leaf_index IS NULL ORDER BY e.id",
            batch.id,
        )
        for r in unindexed:
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
            if self.rekor is not None and batch.receipt is not None:
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
            rows = await self.db.fetch(
                f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
                " WHERE e.id > $1 AND (e.batch_id IS NULL OR NOT EXISTS"
                " (SELECT 1 FROM ledger.batches b WHERE b.id = e.batch_id))"
                " ORDER BY e.id LIMIT $2",
                after, self.chunk,
            )
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
        rows = await self.db.fetch(
            f"SELECT {_BATCH_SELECT} FROM ledger.batches WHERE id = $1", batch_id  # noqa: S608
        )
        if rows:
            self.progress.start(1)
            self.progress.batch_done(await self.batch(rows[0]))
            return
        claimed = int(await self.db.fetchval(
            "SELECT count(*) FROM ledger.entries WHERE batch_id = $1", batch_id))
        if not claimed:
            raise ConfigError(f"no batch {batch_id} in ledger.batches")
        self.report.other_rows += claimed
        self.emit(Problem("orphan", f"{claimed} row(s) claim this batch, which does not exist: "
                          "the batch row was removed", batch_id))

    async def whole_ledger(self) -> None:
        total = int(await self.db.fetchval("SELECT count(*) FROM ledger.batches"))
        self.progress.start(total)
        after = uuid.UUID(int=0)
        page = min(self.chunk, 200)
        while True:
            rows = await self.db.fetch(
                f"SELECT {_BATCH_SELECT} FROM ledger.batches"  # noqa: S608 - constant columns
                " WHERE id > $1 ORDER BY id LIMIT $2",
                after, page,
            )
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
) -> AuditReport:
    """Audit the ledger (or one batch) in ``db`` against ``log_key``; see the package doc.

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
                 progress=progress)
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
