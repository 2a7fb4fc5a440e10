"""Bringing the runbook's rows under anchoring: check each row, then store its legacy leaf.

:func:`import_legacy` walks the rows of the runbook's service (``legacy_id`` set) that have
no leaf hash yet, in ``legacy_id`` order and in batches of ``batch_size``. For each row it
runs :func:`ledger.legacy.checks.check_row`; rows that check (signature verified, or key
matched when the payload was not supplied) get ``key_name`` and the leaf hash of their legacy
leaf (:func:`shared.statement.legacy_leaf_bytes`) in one transaction per batch. From then on
the anchorer's sweeper picks them up like any signed row without a batch, anchors them in a
verified Rekor batch, and ``ledger audit`` recomputes their leaves.

Its state is the database itself: a row with a leaf hash is imported, and the update only
touches rows that still have none. So an interrupted import resumes where it stopped, a
second run finds nothing left to do, and two runs at once never write a row twice. Rows that
fail a check are left out (and reported) unless ``anchor_failing`` (never a row whose
signature is malformed); every later run checks them again.

The SQL is here rather than in :mod:`shared.repository`: only this command reads or writes
the legacy columns.
"""

from __future__ import annotations

import dataclasses
import hashlib
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from shared.db import Database, Tx
from shared.records import ENTRY_COLUMNS, EntryRecord

from .checks import RowCheck, check_row

__all__ = ["ImportProgress", "ImportReport", "import_legacy", "index_payloads"]

_SAMPLE = 50
_PENDING = (
    f"SELECT {ENTRY_COLUMNS} FROM ledger.entries"  # noqa: S608
    " WHERE legacy_id IS NOT NULL AND leaf_hash IS NULL AND legacy_id > $1"
    " ORDER BY legacy_id LIMIT $2"
)
_STORE_LEAVES = (
    "UPDATE ledger.entries AS e SET leaf_hash = u.leaf, key_name = $3"
    " FROM unnest($1::uuid[], $2::bytea[]) AS u(id, leaf)"
    " WHERE e.id = u.id AND e.leaf_hash IS NULL AND e.batch_id IS NULL RETURNING e.id"
)
_MIN_BIGINT = -(2**63)


class ImportProgress(Protocol):
    """Whoever watches the import (the command's progress bar)."""

    def start(self, pending: int) -> None: ...
    def advance(self, rows: int) -> None: ...


@dataclass
class ImportReport:
    """What one run found and did. ``failures`` holds the first problems found."""

    legacy_rows: int = 0
    already_imported: int = 0
    imported: int = 0
    verified: int = 0
    key_only: int = 0
    failed: int = 0
    left_out: int = 0
    failures: list[tuple[int, str]] = field(default_factory=list)

    def add(self, legacy_id: int, check: RowCheck) -> None:
        if check.outcome == "verified":
            self.verified += 1
        elif check.outcome == "key_only":
            self.key_only += 1
        else:
            self.failed += 1
            if len(self.failures) < _SAMPLE:
                self.failures.append((legacy_id, check.detail))

    def as_json(self) -> dict[str, Any]:
        return {
            "legacy_rows": self.legacy_rows, "already_imported": self.already_imported,
            "imported": self.imported, "signature_verified": self.verified,
            "key_matched_signature_unchecked": self.key_only, "failed_checks": self.failed,
            "left_out": self.left_out,
            "failures": [{"legacy_id": i, "problem": d} for i, d in self.failures],
        }

    def summary_lines(self, key_name: str) -> list[str]:
        lines = [
            f"rows of the runbook's service: {self.legacy_rows} "
            f"({self.already_imported} imported by earlier runs)",
            f"imported now: {self.imported}",
            f"  signature verified over the supplied payload with {key_name}: {self.verified}",
            f"  key is Vault's {key_name}, signature NOT verified (payload not supplied): "
            f"{self.key_only}",
            f"failed a check: {self.failed} ({self.left_out} left out of anchoring)",
        ]
        lines += [f"  runbook id {i}: {d}" for i, d in self.failures]
        if self.failed > len(self.failures):
            lines.append(f"  and {self.failed - len(self.failures)} more")
        return lines


def index_payloads(directory: Path | None) -> dict[str, Path]:
    """The files under ``directory`` by the hex SHA-256 of their content."""
    found: dict[str, Path] = {}
    if directory is None:
        return found
    for path in sorted(directory.rglob("*")):
        if path.is_file():
            with path.open("rb") as f:  # streamed: documents may be large
                found[hashlib.file_digest(f, "sha256").hexdigest()] = path
    return found


def _payload(payloads: Mapping[str, Path], payload_hash: str) -> bytes | None:
    path = payloads.get(payload_hash.lower())
    if path is None:
        return None
    data = path.read_bytes()  # read again: the file may have changed since it was indexed
    return data if hashlib.sha256(data).hexdigest() == payload_hash.lower() else None


async def _store(db: Database, ids: list[uuid.UUID], leaves: list[bytes], key_name: str) -> int:
    """Store the leaves of rows no other run stored first; return how many were stored."""

    async def work(tx: Tx) -> int:
        return len(await tx.fetch(_STORE_LEAVES, ids, leaves, key_name))

    return await db.transaction(work, isolation="read_committed")


async def import_legacy(
    db: Database,
    *,
    vault_keys: Mapping[int, bytes],
    key_name: str,
    payloads: Mapping[str, Path],
    batch_size: int = 500,
    anchor_failing: bool = False,
    progress: ImportProgress | None = None,
) -> ImportReport:
    """Check and import every pending row of the runbook's service; see the module doc."""
    if batch_size < 1:
        raise ValueError("batch_size must be positive")
    report = ImportReport()
    report.legacy_rows = int(await db.fetchval(
        "SELECT count(*) FROM ledger.entries WHERE legacy_id IS NOT NULL"))
    pending = int(await db.fetchval(
        "SELECT count(*) FROM ledger.entries WHERE legacy_id IS NOT NULL AND leaf_hash IS NULL"))
    report.already_imported = report.legacy_rows - pending
    if progress is not None:
        progress.start(pending)
    after = _MIN_BIGINT
    while True:
        rows = await db.fetch(_PENDING, after, batch_size)
        if not rows:
            return report
        ids: list[uuid.UUID] = []
        leaves: list[bytes] = []
        for r in rows:
            record = EntryRecord.from_row(r)
            assert record.legacy_id is not None  # the query's condition
            check = check_row(record, vault_keys, key_name,
                              _payload(payloads, record.payload_hash))
            report.add(record.legacy_id, check)
            # a signature that is not even vault:vN: names no key version: never anchored
            if check.outcome == "failed" and (not anchor_failing or check.key_version is None):
                report.left_out += 1
                continue
            named = dataclasses.replace(record, key_name=key_name)
            ids.append(record.id)
            leaves.append(named.content_leaf_hash())
        if ids:
            report.imported += await _store(db, ids, leaves, key_name)
        after = rows[-1]["legacy_id"]
        if progress is not None:
            progress.advance(len(rows))
