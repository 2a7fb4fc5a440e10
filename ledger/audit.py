"""``ledger audit``: recompute every leaf and root from the database and compare with Rekor.

The ledger is tamper-evident against its own database administrators only if somebody
checks. This command reads ``ledger.entries`` and ``ledger.batches`` and finds any row that
was changed, removed or inserted after it was anchored:

* every entry: the stored statement is the canonical JSON whose fields are the row's request
  id, subject, payload hash, meta and submission time; the id is the UUIDv5 of the request
  id; the content hash is the row's; the ``vault:vN:`` Ed25519 signature verifies over the
  statement with the row's public key; all rows signed with one key version carry the same
  public key;
* every batch (``--batch ID``: one): its members, in leaf order, have leaf indexes exactly
  ``0..size-1`` (a gap is a removed row, a duplicate or an index beyond the size an inserted
  one); the RFC 6962 root recomputed from their leaves is the stored root, which is the root
  the stored manifest names; SHA-256 of the manifest is the stored digest; the ECDSA P-256
  anchor signature verifies; the stored Rekor receipt verifies against the **pinned** Rekor
  key and its body holds exactly this digest, signature and anchor key; every member names
  the batch's Rekor entry; with ``--online`` the entry is also fetched from Rekor by its uuid,
  verified again and compared with the stored receipt;
* rows that claim a batch that does not exist, or are marked anchored without an anchored
  batch.

Entries not anchored yet (no batch, or a pending batch) get the entry checks and are counted
separately: until their batch is in Rekor, an administrator could rewrite them unnoticed.

Rows are read in keyset-paginated chunks (never the whole table at once) and each batch's
root is computed with O(log n) memory. The pure checks (:class:`EntryChecker`,
:class:`BatchChecker`, :func:`check_batch_record`, :func:`check_online_entry`) do no I/O;
:func:`run_audit` is the database driver; :func:`cmd_audit` the command.

Exit status: 0 clean, 1 when any problem was found, 2 when the audit could not run (usage,
configuration, no pinned Rekor key, database or Rekor unreachable).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO

from shared.anchored import BatchRecord, EntryRecord
from shared.checks import (
    StatementFields,
    anchor_signature_problems,
    entry_signature_problems,
    manifest_digest_problems,
    manifest_problems,
    read_entry_signature,
    receipt_problems,
    statement_problems,
)
from shared.errors import ConfigError, LedgerError, RekorError, VerificationError
from shared.merkle import RootAccumulator, leaf_hash
from shared.signatures import load_public_key_der
from shared.statement import (
    content_sha256,
    entry_id_for,
)
from shared.trust import load_configured_key
from shared.verify import (
    LogKey,
    RekorReceipt,
    load_log_key,
)

__all__ = [
    "AuditReport",
    "BatchChecker",
    "EntryChecker",
    "Problem",
    "check_batch_record",
    "check_online_entry",
    "cmd_audit",
    "configure",
    "resolve_log_key",
    "run_audit",
]

EXIT_CLEAN, EXIT_PROBLEMS, EXIT_ERROR = 0, 1, 2


# --- problems ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing that is wrong, naming the batch, the entry and the leaf where known."""

    check: str
    detail: str
    batch_id: uuid.UUID | None = None
    entry_id: uuid.UUID | None = None
    leaf_index: int | None = None

    def line(self) -> str:
        where = [
            f"batch {self.batch_id if self.batch_id is not None else '-'}",
            f"entry {self.entry_id if self.entry_id is not None else '-'}",
        ]
        if self.leaf_index is not None:
            where.append(f"leaf {self.leaf_index}")
        return f"\u2717 {' '.join(where)}: {self.check}: {self.detail}"

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "batch_id": None if self.batch_id is None else str(self.batch_id),
            "entry_id": None if self.entry_id is None else str(self.entry_id),
            "leaf_index": self.leaf_index,
            "detail": self.detail,
        }


def _column(field: str) -> str:
    """The ``ledger.entries`` column that holds a statement field (for problem sentences)."""
    return f"column {'payload_hash' if field == 'payload_sha256' else field}"


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


# --- entries ----------------------------------------------------------------------------------


@dataclass
class _KeyUse:
    count: int = 0
    sample: list[tuple[uuid.UUID, uuid.UUID | None]] = field(default_factory=list)


class EntryChecker:
    """The checks of one row against itself (no batch needed), plus key consistency.

    ``check(row)`` returns the row's problems: the checks of :mod:`shared.checks` that a
    proof bundle's entry gets too, worded for database columns. Across all rows it remembers
    which public keys each (key name, version) was used with; :meth:`finish` reports the
    rows whose key differs from the one most rows of that version carry (a row signed with
    some other key but claiming the ledger's key version).
    """

    _SAMPLE = 100

    def __init__(self) -> None:
        self._uses: dict[tuple[str, int], dict[str, _KeyUse]] = {}

    def check(
        self,
        row: EntryRecord,
        *,
        content_hash: str | None = None,
        batch_id: uuid.UUID | None = None,
    ) -> list[Problem]:
        batch = batch_id if batch_id is not None else row.batch_id
        problems: list[Problem] = []

        def bad(check: str, detail: str) -> None:
            problems.append(Problem(check, detail, batch, row.id, row.leaf_index))

        if row.id != entry_id_for(row.request_id):
            bad("entry_id", f"the id is not the UUIDv5 of request id {row.request_id!r} "
                f"({entry_id_for(row.request_id)})")
        self._check_statement(row, bad)
        if content_hash is not None:
            try:
                expected = content_sha256(
                    subject=row.subject, payload_sha256=row.payload_hash, meta=row.meta
                )
            except Exception:  # noqa: BLE001 - meta JSON cannot canonicalise: differs anyway
                expected = ""
            if content_hash != expected:
                bad("content_hash", "content_sha256 is not the hash of the row's subject, "
                    "payload hash and meta")
        self._check_signature(row, bad)
        return problems

    def _check_statement(self, row: EntryRecord, bad: Callable[[str, str], None]) -> None:
        claimed = StatementFields(row.request_id, row.subject, row.payload_hash, row.meta,
                                  row.submitted_at)
        for check, detail in statement_problems(row.statement, claimed, label=_column,
                                                show=_short):
            bad(check, detail)

    def _check_signature(self, row: EntryRecord, bad: Callable[[str, str], None]) -> None:
        raw, problems = read_entry_signature(row.sig, row.key_version)
        for detail in problems:
            bad("signature", detail)
        if raw is None:
            return
        problems = entry_signature_problems(row.pubkey, raw, row.statement)
        for detail in problems:
            bad("signature", detail)
        if problems:
            return
        # only keys that really signed their row count towards the key version's majority
        fingerprint = hashlib.sha256(load_public_key_der(row.pubkey)).hexdigest()
        use = self._uses.setdefault((row.key_name, row.key_version), {}).setdefault(
            fingerprint, _KeyUse()
        )
        use.count += 1
        if len(use.sample) < self._SAMPLE:
            use.sample.append((row.id, row.batch_id))

    def finish(self) -> list[Problem]:
        """Rows whose key version is claimed by more than one public key (the minority)."""
        problems = []
        for (name, version), uses in sorted(self._uses.items()):
            if len(uses) < 2:
                continue
            ranked = sorted(uses.items(), key=lambda kv: (-kv[1].count, kv[0]))
            main_fp, main = ranked[0]
            for fp, use in ranked[1:]:
                for entry_id, batch_id in use.sample:
                    problems.append(Problem(
                        "entry_key",
                        f"signed with public key {fp[:16]}\u2026 for {name} v{version}, but "
                        f"{main.count} other row(s) of that key version carry "
                        f"{main_fp[:16]}\u2026",
                        batch_id, entry_id,
                    ))
                if use.count > len(use.sample):
                    problems.append(Problem(
                        "entry_key",
                        f"and {use.count - len(use.sample)} more row(s) signed with "
                        f"{fp[:16]}\u2026 for {name} v{version}",
                    ))
        return problems


# --- batches ----------------------------------------------------------------------------------


def _ranges(indexes: Iterable[tuple[int, int]]) -> str:
    return ", ".join(str(a) if a == b else f"{a}..{b}" for a, b in indexes)


class BatchChecker:
    """The member checks of one batch, fed its rows in ``(leaf_index, id)`` order.

    ``add(row)`` checks the row's leaf index and Rekor reference and folds its leaf into the
    root; :meth:`finish` reports missing indexes, the member count, duplicates and the root.
    Rows with no leaf index go to :meth:`add_unindexed`.
    """

    def __init__(self, batch: BatchRecord, *, anchored: bool) -> None:
        self.batch = batch
        self.anchored = anchored
        self._root = RootAccumulator()
        self._expected = 0
        self._last: tuple[int, uuid.UUID] | None = None
        self._missing: list[tuple[int, int]] = []
        self._duplicates: list[tuple[EntryRecord, uuid.UUID]] = []
        self.rows = 0
        self.problems: list[Problem] = []

    def _bad(self, check: str, detail: str, row: EntryRecord | None = None) -> None:
        self.problems.append(Problem(
            check, detail, self.batch.id,
            None if row is None else row.id, None if row is None else row.leaf_index,
        ))

    def add_unindexed(self, row: EntryRecord) -> None:
        self.rows += 1
        self._bad("membership", "claims this batch but has no leaf index: a row was inserted "
                  "or changed", row)

    def add(
        self, row: EntryRecord, *, rekor_log_id: str | None = None, rekor_index: int | None = None
    ) -> None:
        self.rows += 1
        index = row.leaf_index
        if index is None:
            self.add_unindexed(row)
            return
        self._check_reference(row, rekor_log_id, rekor_index)
        if index < 0 or index >= self.batch.size:
            self._bad("membership", f"leaf index {index} is outside the batch (size "
                      f"{self.batch.size}): a row was inserted", row)
            return
        if self._last is not None and self._last[0] == index:
            self._duplicates.append((row, self._last[1]))
            return
        if index > self._expected:
            self._missing.append((self._expected, index - 1))
        self._root.add(leaf_hash(row.leaf()))
        self._expected = index + 1
        self._last = (index, row.id)

    def _check_reference(
        self, row: EntryRecord, rekor_log_id: str | None, rekor_index: int | None
    ) -> None:
        receipt = self.batch.receipt
        if not self.anchored or receipt is None:
            if row.anchored_at is not None or rekor_log_id is not None or rekor_index is not None:
                self._bad("anchor_reference", "marked anchored (anchored_at / rekor_log_id / "
                          "rekor_index set) but its batch is not anchored", row)
            return
        if (rekor_log_id, rekor_index) != (receipt.uuid, receipt.log_index):
            self._bad("anchor_reference", f"names Rekor entry {rekor_log_id} at index "
                      f"{rekor_index}, the batch's receipt is {receipt.uuid} at index "
                      f"{receipt.log_index}", row)
        if row.anchored_at is None:
            self._bad("anchor_reference", "member of an anchored batch but anchored_at is not "
                      "set", row)

    def finish(self) -> list[Problem]:
        size = self.batch.size
        if self._expected < size:
            self._missing.append((self._expected, size - 1))
        if self._missing:
            self._bad("membership", f"no row for leaf index {_ranges(self._missing)}: "
                      "anchored rows were removed (or their leaf index changed)")
        if self.rows != size:
            self._bad("membership", f"{self.rows} rows claim this batch, its size is {size}")
        root_ok: bool | None = None
        if not self._missing:
            computed = self._root.root().hex()
            root_ok = computed == self.batch.root_hash
            if not root_ok:
                self._bad("root", f"the leaves of the rows give root {computed}, the stored root "
                          f"is {self.batch.root_hash}: a member row was changed (its statement, "
                          "signature or key) after it was batched")
        for row, first in self._duplicates:
            if root_ok:
                detail = (f"leaf index {row.leaf_index} is also claimed by entry {first}, whose "
                          "leaf is the anchored one: this row was inserted")
            else:
                detail = (f"leaf index {row.leaf_index} is claimed by this row and by entry "
                          f"{first}: a row was inserted")
            self._bad("membership", detail, row)
        return self.problems


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The batch row's copies of receipt fields (``rekor_uuid``, ``rekor_log_index``, ...)."""

    rekor_uuid: str | None = None
    rekor_log_index: int | None = None
    rekor_log_id: str | None = None
    integrated_time: int | None = None


def check_batch_record(
    batch: BatchRecord, log_key: LogKey | None, columns: BatchColumns | None = None
) -> list[Problem]:
    """Manifest ↔ row, manifest digest, anchor signature and (for anchored batches, with a
    key) the stored receipt against the pinned Rekor key."""
    problems: list[Problem] = []

    def bad(check: str, details: list[str], prefix: str = "") -> None:
        problems.extend(Problem(check, prefix + detail, batch.id) for detail in details)

    bad("manifest", manifest_problems(batch.manifest, batch_id=batch.id, size=batch.size,
                                      root=batch.root_hash, created_at=batch.created_at))
    bad("manifest_digest", manifest_digest_problems(batch.manifest, batch.manifest_sha256))
    bad("anchor_signature", anchor_signature_problems(batch.anchor_pubkey, batch.manifest,
                                                      batch.anchor_sig))
    if batch.state != "anchored":
        return problems
    receipt = batch.receipt
    if receipt is None:
        bad("receipt", ["the batch is marked anchored but has no stored receipt"])
        return problems
    if log_key is not None:
        bad("receipt", receipt_problems(receipt, log_key, manifest=batch.manifest,
                                        anchor_signature=batch.anchor_sig,
                                        anchor_public_key=batch.anchor_pubkey),
            prefix="the stored Rekor receipt does not verify: ")
    if columns is not None:
        for name, value, from_receipt in (
            ("rekor_uuid", columns.rekor_uuid, receipt.uuid),
            ("rekor_log_index", columns.rekor_log_index, receipt.log_index),
            ("rekor_log_id", columns.rekor_log_id, receipt.log_id),
            ("integrated_time", columns.integrated_time, receipt.integrated_time),
        ):
            if value != from_receipt:
                bad("receipt_columns", [f"column {name} {value!r} is not the receipt's "
                                        f"{from_receipt!r}"])
    return problems


def check_online_entry(
    batch: BatchRecord, fetched: Mapping[str, Any], log_key: LogKey
) -> list[Problem]:
    """Compare the entry Rekor serves now (``{uuid: entry}``) with the stored receipt.

    The fetched entry is verified on its own (against the pinned key and the batch's digest,
    signature and anchor key) and its body, integration time, log index and log id must be
    the stored ones.
    """
    problems: list[Problem] = []
    stored = batch.receipt
    if stored is None:
        return [Problem("rekor_online", "no stored receipt to compare", batch.id)]
    try:
        live = RekorReceipt.from_v1_response(fetched)
    except VerificationError as exc:
        return [Problem("rekor_online", f"Rekor's answer for {stored.uuid} is malformed: {exc}",
                        batch.id)]
    for detail in receipt_problems(live, log_key, manifest=batch.manifest,
                                   anchor_signature=batch.anchor_sig,
                                   anchor_public_key=batch.anchor_pubkey):
        problems.append(Problem("rekor_online", f"the entry Rekor serves for {stored.uuid} "
                                f"does not hold this batch's manifest and signature: {detail}",
                                batch.id))
    for name, now, then in (
        ("body", live.body, stored.body),
        ("integratedTime", live.integrated_time, stored.integrated_time),
        ("logIndex", live.log_index, stored.log_index),
        ("logID", live.log_id, stored.log_id),
    ):
        if now != then:
            problems.append(Problem("rekor_online", f"Rekor's {name} for {stored.uuid} is "
                                    f"{_short(now, 60)}, the stored receipt has "
                                    f"{_short(then, 60)}", batch.id))
    return problems


# --- the report -----------------------------------------------------------------------------


@dataclass
class AuditReport:
    batches_checked: int = 0
    pending_batches: int = 0
    entries_checked: int = 0  # members of anchored batches
    unanchored_entries: int = 0  # not batched, or in a pending batch (entry checks only)
    other_rows: int = 0  # rows claiming a batch that does not exist
    problems: list[Problem] = field(default_factory=list)
    rekor_key_source: str = ""
    rekor_log_id: str = ""
    online: bool = False
    whole_ledger: bool = True

    @property
    def clean(self) -> bool:
        return not self.problems

    def summary_lines(self) -> list[str]:
        lines = [
            f"batches checked: {self.batches_checked} anchored"
            + (f", {self.pending_batches} pending" if self.pending_batches else ""),
            f"entries checked: {self.entries_checked} anchored (leaf, root, manifest, anchor "
            f"signature and Rekor receipt{', and Rekor online' if self.online else ''})",
        ]
        if self.unanchored_entries:
            lines.append(
                f"unanchored entries: {self.unanchored_entries} (statement and signature "
                "checked; NOT tamper-evident yet: until their batch is in Rekor a database "
                "admin could rewrite them, key and all, unnoticed)"
            )
        elif self.whole_ledger:
            lines.append("unanchored entries: 0")
        if self.other_rows:
            lines.append(f"rows claiming a batch that does not exist: {self.other_rows}")
        lines.append(f"Rekor key: log id {self.rekor_log_id} ({self.rekor_key_source})")
        if not self.whole_ledger:
            lines.append("scope: one batch (rows outside it were not checked)")
        lines.append(f"problems: {len(self.problems)}")
        lines.append("AUDIT CLEAN" if self.clean else "AUDIT FAILED")
        return lines

    def as_json(self) -> dict[str, Any]:
        return {
            "clean": self.clean,
            "batches_checked": self.batches_checked,
            "pending_batches": self.pending_batches,
            "entries_checked": self.entries_checked,
            "unanchored_entries": self.unanchored_entries,
            "rows_claiming_missing_batches": self.other_rows,
            "scope": "ledger" if self.whole_ledger else "batch",
            "online": self.online,
            "rekor_key": {"log_id": self.rekor_log_id, "source": self.rekor_key_source},
            "problems": [p.as_json() for p in self.problems],
        }


# --- the database driver --------------------------------------------------------------------

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


class _Db(Protocol):
    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...
    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class _Rekor(Protocol):
    async def get_entry_by_uuid(self, uuid: str) -> Any: ...


class Progress(Protocol):
    def start(self, total_batches: int) -> None: ...
    def batch_done(self, entries: int) -> None: ...
    def rows_scanned(self, rows: int) -> None: ...
    def stop(self) -> None: ...


class _NoProgress:
    def start(self, total_batches: int) -> None:
        pass

    def batch_done(self, entries: int) -> None:
        pass

    def rows_scanned(self, rows: int) -> None:
        pass

    def stop(self) -> None:
        pass


def _batch_record(row: Mapping[str, Any]) -> tuple[BatchRecord | None, BatchColumns, str | None]:
    """The batch row as a record; a malformed stored receipt is a finding, not a crash."""
    columns = BatchColumns(row["rekor_uuid"], row["rekor_log_index"], row["rekor_log_id"],
                           row["integrated_time"])
    try:
        return BatchRecord.from_row(row), columns, None
    except (ValueError, TypeError) as exc:  # pydantic ValidationError is a ValueError
        pass_on = dict(row)
        pass_on["receipt"] = None
        detail = f"the stored receipt is not a Rekor receipt: {_short(str(exc), 200)}"
        try:
            return BatchRecord.from_row(pass_on), columns, detail
        except (ValueError, TypeError) as again:
            return None, columns, f"the batch row is unreadable: {again}"


def _entry(row: Mapping[str, Any]) -> EntryRecord:
    return EntryRecord.from_row(row)


async def _audit_batch(
    db: _Db,
    row: Mapping[str, Any],
    *,
    log_key: LogKey,
    entries: EntryChecker,
    rekor: _Rekor | None,
    chunk: int,
    report: AuditReport,
    emit: Callable[[Problem], None],
) -> int:
    """Audit one batch row and its members; return the number of member rows read."""
    batch, columns, unreadable = _batch_record(row)
    if batch is None:
        emit(Problem("batch_row", unreadable or "unreadable", row["id"]))
        return 0
    anchored = batch.state == "anchored"
    if unreadable:
        emit(Problem("receipt", unreadable, batch.id))
    for p in check_batch_record(batch, log_key, columns):
        emit(p)
    checker = BatchChecker(batch, anchored=anchored and batch.receipt is not None)
    unindexed = await db.fetch(
        f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
        " WHERE e.batch_id = $1 AND e.leaf_index IS NULL ORDER BY e.id",
        batch.id,
    )
    for r in unindexed:
        record = _entry(r)
        for p in entries.check(record, content_hash=r["content_sha256"]):
            emit(p)
        checker.add_unindexed(record)
    after: tuple[int, uuid.UUID] | None = None
    while True:
        if after is None:
            rows = await db.fetch(
                f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
                " WHERE e.batch_id = $1 AND e.leaf_index IS NOT NULL"
                " ORDER BY e.leaf_index, e.id LIMIT $2",
                batch.id, chunk,
            )
        else:
            rows = await db.fetch(
                f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
                " WHERE e.batch_id = $1 AND (e.leaf_index, e.id) > ($2, $3)"
                " ORDER BY e.leaf_index, e.id LIMIT $4",
                batch.id, after[0], after[1], chunk,
            )
        for r in rows:
            record = _entry(r)
            for p in entries.check(record, content_hash=r["content_sha256"]):
                emit(p)
            checker.add(record, rekor_log_id=r["rekor_log_id"], rekor_index=r["rekor_index"])
        if len(rows) < chunk:
            break
        after = (rows[-1]["leaf_index"], rows[-1]["id"])
    for p in checker.finish():
        emit(p)
    if anchored:
        report.batches_checked += 1
        report.entries_checked += checker.rows
        if rekor is not None and batch.receipt is not None:
            for p in await _online(rekor, batch, log_key):
                emit(p)
    else:
        report.pending_batches += 1
        report.unanchored_entries += checker.rows
    return checker.rows


async def _online(rekor: _Rekor, batch: BatchRecord, log_key: LogKey) -> list[Problem]:
    assert batch.receipt is not None
    try:
        fetched = await rekor.get_entry_by_uuid(batch.receipt.uuid)
    except ValueError as exc:
        return [Problem("rekor_online", f"the stored uuid cannot be looked up: {exc}", batch.id)]
    except RekorError as exc:
        return [Problem("rekor_online", f"Rekor has no entry {batch.receipt.uuid}: {exc}",
                        batch.id)]
    return check_online_entry(batch, fetched.response, log_key)


async def _audit_loose_rows(
    db: _Db,
    *,
    entries: EntryChecker,
    chunk: int,
    report: AuditReport,
    emit: Callable[[Problem], None],
    progress: Progress,
) -> None:
    """Every row that is not a member of an existing batch: unbatched rows and orphans."""
    after = uuid.UUID(int=0)
    while True:
        rows = await db.fetch(
            f"SELECT {_ENTRY_SELECT} FROM ledger.entries e"  # noqa: S608 - constant columns
            " WHERE e.id > $1 AND (e.batch_id IS NULL OR NOT EXISTS"
            " (SELECT 1 FROM ledger.batches b WHERE b.id = e.batch_id))"
            " ORDER BY e.id LIMIT $2",
            after, chunk,
        )
        for r in rows:
            record = _entry(r)
            for p in entries.check(record, content_hash=r["content_sha256"]):
                emit(p)
            if record.batch_id is not None:
                report.other_rows += 1
                emit(Problem("orphan", f"claims batch {record.batch_id} (leaf "
                             f"{record.leaf_index}), which does not exist: the batch row was "
                             "removed or this row was inserted", record.batch_id, record.id,
                             record.leaf_index))
                continue
            report.unanchored_entries += 1
            if (record.anchored_at is not None or r["rekor_log_id"] is not None
                    or r["rekor_index"] is not None or record.leaf_index is not None):
                emit(Problem("anchor_reference", "has no batch but is marked anchored "
                             "(anchored_at, rekor_log_id, rekor_index or leaf_index set): its "
                             "batch id was removed", None, record.id, record.leaf_index))
        progress.rows_scanned(len(rows))
        if len(rows) < chunk:
            break
        after = rows[-1]["id"]


async def run_audit(
    db: _Db,
    log_key: LogKey,
    *,
    batch_id: uuid.UUID | None = None,
    rekor: _Rekor | None = None,
    chunk: int = 500,
    on_problem: Callable[[Problem], None] | None = None,
    progress: Progress | None = None,
) -> AuditReport:
    """Audit the ledger (or one batch) in ``db`` against ``log_key``; see the module doc.

    ``rekor`` enables the online comparison. Problems are passed to ``on_problem`` as they
    are found and collected in the report. Raises ConfigError for an unknown ``batch_id``.
    """
    if chunk < 1:
        raise ValueError("chunk must be positive")
    report = AuditReport(online=rekor is not None, whole_ledger=batch_id is None)
    entries = EntryChecker()
    progress = progress or _NoProgress()

    def emit(problem: Problem) -> None:
        report.problems.append(problem)
        if on_problem is not None:
            on_problem(problem)

    try:
        await _run(db, batch_id=batch_id, log_key=log_key, entries=entries, rekor=rekor,
                   chunk=chunk, report=report, emit=emit, progress=progress)
        for p in entries.finish():
            emit(p)
    finally:
        progress.stop()
    return report


async def _run(
    db: _Db,
    *,
    batch_id: uuid.UUID | None,
    log_key: LogKey,
    entries: EntryChecker,
    rekor: _Rekor | None,
    chunk: int,
    report: AuditReport,
    emit: Callable[[Problem], None],
    progress: Progress,
) -> None:
    async def one(row: Mapping[str, Any]) -> None:
        progress.batch_done(await _audit_batch(
            db, row, log_key=log_key, entries=entries, rekor=rekor, chunk=chunk, report=report,
            emit=emit))

    if batch_id is not None:
        rows = await db.fetch(
            f"SELECT {_BATCH_SELECT} FROM ledger.batches WHERE id = $1", batch_id  # noqa: S608
        )
        if not rows:
            claimed = int(await db.fetchval(
                "SELECT count(*) FROM ledger.entries WHERE batch_id = $1", batch_id))
            if not claimed:
                raise ConfigError(f"no batch {batch_id} in ledger.batches")
            report.other_rows += claimed
            emit(Problem("orphan", f"{claimed} row(s) claim this batch, which does not exist: "
                         "the batch row was removed", batch_id))
        else:
            progress.start(1)
            await one(rows[0])
    else:
        total = int(await db.fetchval("SELECT count(*) FROM ledger.batches"))
        progress.start(total)
        after = uuid.UUID(int=0)
        while True:
            rows = await db.fetch(
                f"SELECT {_BATCH_SELECT} FROM ledger.batches"  # noqa: S608 - constant columns
                " WHERE id > $1 ORDER BY id LIMIT $2",
                after, min(chunk, 200),
            )
            for row in rows:
                await one(row)
            if len(rows) < min(chunk, 200):
                break
            after = rows[-1]["id"]
        await _audit_loose_rows(db, entries=entries, chunk=chunk, report=report, emit=emit,
                                progress=progress)


# --- the pinned Rekor key -------------------------------------------------------------------


async def resolve_log_key(
    db: _Db, *, rekor_key_file: str | None, configured: str, rekor_url: str
) -> tuple[LogKey, str]:
    """The pinned Rekor key and where it came from: ``--rekor-key``, else
    ``LEDGER_REKOR_PUBLIC_KEY``, else the pin in ``ledger.rekor_pins`` for ``rekor_url``."""
    if rekor_key_file:
        try:
            with open(rekor_key_file, "rb") as f:  # noqa: ASYNC230 - one small local file
                data = f.read()
        except OSError as exc:
            raise ConfigError(f"cannot read the Rekor key {rekor_key_file}: "
                              f"{exc.strerror or exc}") from None
        try:
            return load_log_key(data), f"--rekor-key {rekor_key_file}"
        except VerificationError as exc:
            raise ConfigError(f"--rekor-key {rekor_key_file}: {exc}") from None
    key = load_configured_key(configured)
    if key is not None:
        return key, "LEDGER_REKOR_PUBLIC_KEY"
    pem = await db.fetchval(
        "SELECT public_key FROM ledger.rekor_pins WHERE rekor_url = $1", rekor_url)
    if pem is None:
        raise ConfigError(
            "no pinned Rekor public key: pass --rekor-key REKOR.pem or set "
            f"LEDGER_REKOR_PUBLIC_KEY (ledger.rekor_pins has no pin for {rekor_url})"
        )
    try:
        return load_log_key(pem), (
            f"ledger.rekor_pins for {rekor_url}: kept in the audited database itself; pass "
            "--rekor-key for an audit that does not trust it"
        )
    except VerificationError as exc:
        raise ConfigError(f"the pin in ledger.rekor_pins for {rekor_url} is unusable: "
                          f"{exc}") from None


# --- progress on stderr ---------------------------------------------------------------------


class _LineProgress:
    """A line on stderr every ``every`` batches (and at the end) when stderr is not a TTY."""

    def __init__(self, stream: TextIO, every: int = 100) -> None:
        self._stream, self._every = stream, every
        self._total = self._batches = self._entries = self._rows = 0
        self._started = time.monotonic()

    def start(self, total_batches: int) -> None:
        self._total = total_batches

    def batch_done(self, entries: int) -> None:
        self._batches += 1
        self._entries += entries
        if self._batches % self._every == 0:
            self._say()

    def rows_scanned(self, rows: int) -> None:
        self._rows += rows

    def _say(self) -> None:
        print(f"audit: {self._batches}/{self._total} batches, {self._entries} batched entries, "
              f"{self._rows} other rows, {time.monotonic() - self._started:.1f}s",
              file=self._stream, flush=True)

    def stop(self) -> None:
        self._say()


class _RichProgress:
    def __init__(self, stream: TextIO) -> None:
        from rich.console import Console  # noqa: PLC0415
        from rich.progress import (  # noqa: PLC0415
            BarColumn,
            MofNCompleteColumn,
            TextColumn,
            TimeElapsedColumn,
        )
        from rich.progress import Progress as RichProgress  # noqa: PLC0415

        self._progress = RichProgress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[detail]}"), TimeElapsedColumn(),
            console=Console(file=stream), transient=True,
        )
        self._entries = self._rows = 0
        self._task: Any = None

    def start(self, total_batches: int) -> None:
        self._progress.start()
        self._task = self._progress.add_task("auditing batches", total=total_batches,
                                             detail="")

    def batch_done(self, entries: int) -> None:
        self._entries += entries
        self._progress.update(self._task, advance=1, detail=f"{self._entries} entries")

    def rows_scanned(self, rows: int) -> None:
        self._rows += rows
        self._progress.update(self._task, detail=f"{self._entries} entries, {self._rows} "
                              "unbatched rows")

    def stop(self) -> None:
        self._progress.stop()


# --- the command ----------------------------------------------------------------------------


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", type=uuid.UUID, default=None, metavar="ID",
                   help="audit only this batch (default: every batch and every other row)")
    p.add_argument("--online", action="store_true",
                   help="also fetch each batch's entry from Rekor (REKOR_SERVER_URL) and compare "
                        "it with the stored receipt")
    p.add_argument("--rekor-key", default=None, metavar="PEM",
                   help="the Rekor log public key you pin (default: LEDGER_REKOR_PUBLIC_KEY, "
                        "else the pin in ledger.rekor_pins)")
    p.add_argument("--json", action="store_true", help="print a machine-readable report")
    p.add_argument("--chunk-size", type=int, default=500, metavar="N",
                   help="rows read per query (default 500)")


async def _main(args: argparse.Namespace, out: TextIO | None, err: TextIO) -> AuditReport:
    from shared.db import Database  # noqa: PLC0415
    from shared.rekor import RekorClient  # noqa: PLC0415
    from shared.settings import Settings  # noqa: PLC0415

    settings = Settings.from_env()
    db = await Database.connect(settings, min_size=1, max_size=2)
    try:
        log_key, source = await resolve_log_key(
            db, rekor_key_file=args.rekor_key, configured=settings.rekor_public_key,
            rekor_url=settings.rekor_server_url)
        progress: Progress = _RichProgress(err) if err.isatty() else _LineProgress(err)

        def show(problem: Problem) -> None:
            # sys.stdout is looked up now: under the rich progress bar it is rich's proxy,
            # which prints the line above the bar instead of through it
            if not args.json:
                print(problem.line(), file=out or sys.stdout, flush=True)

        rekor = RekorClient.from_settings(settings) if args.online else None
        try:
            report = await run_audit(db, log_key, batch_id=args.batch, rekor=rekor,
                                     chunk=args.chunk_size, on_problem=show, progress=progress)
        finally:
            if rekor is not None:
                await rekor.close()
        report.rekor_key_source, report.rekor_log_id = source, log_key.log_id
        return report
    finally:
        await db.close()


def cmd_audit(args: argparse.Namespace, *, out: TextIO | None = None,
              err: TextIO | None = None) -> int:
    """``ledger audit``: exit 0 clean, 1 problems found, 2 the audit could not run."""
    err = err or sys.stderr
    if args.chunk_size < 1:
        print("ledger audit: error: --chunk-size must be at least 1", file=err)
        return EXIT_ERROR
    try:
        report = asyncio.run(_main(args, out, err))
    except LedgerError as exc:
        print(f"ledger audit: error: {exc}", file=err)
        return EXIT_ERROR
    out = out or sys.stdout
    if args.json:
        print(json.dumps(report.as_json(), indent=2), file=out)
    else:
        for line in report.summary_lines():
            print(line, file=out)
    return EXIT_CLEAN if report.clean else EXIT_PROBLEMS
