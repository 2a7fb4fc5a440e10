"""What ``ledger audit`` found: each problem, the totals, and how both are printed.

A :class:`Problem` names the check that failed and the batch, entry and leaf it is about;
:class:`AuditReport` counts what was checked and renders the summary lines and the
``--json`` document. Tests and operators read this output, so its wording is part of the
command's interface. Pure: no I/O.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any

from shared.untrusted import display

__all__ = ["AuditReport", "Problem", "short"]


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
        # the detail quotes stored rows and receipts: escaped, it stays one printable line
        return display(f"\u2717 {' '.join(where)}: {self.check}: {self.detail}", limit=4000)

    def as_json(self) -> dict[str, Any]:
        return {
            "check": self.check,
            "batch_id": None if self.batch_id is None else str(self.batch_id),
            "entry_id": None if self.entry_id is None else str(self.entry_id),
            "leaf_index": self.leaf_index,
            "detail": self.detail,
        }


def short(value: Any, limit: int = 120) -> str:
    """``value`` as text of at most ``limit`` characters (a problem line stays one line)."""
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


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
    #: with ``--events-topic``: how the batches the database lost were searched for
    lost_search: str = ""

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
        if self.lost_search:
            lines.append(self.lost_search)
        elif self.online and self.whole_ledger:
            lines.append("lost batches: not searched (pass --events-topic ledger.anchored)")
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
            "lost_batches_search": self.lost_search or None,
            "problems": [p.as_json() for p in self.problems],
        }
