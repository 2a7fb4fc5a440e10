"""The audit's checks of one ``ledger.batches`` row and of the rows that claim it.

:class:`BatchChecker` takes the member rows in leaf order and finds removed, inserted and
changed members: leaf indexes must be exactly ``0..size-1`` and the RFC 6962 root of their
leaves (:class:`shared.merkle.RootAccumulator`) the stored root. :func:`check_batch_record`
runs the batch checks of :mod:`shared.checks` (manifest, manifest digest, anchor signature,
receipt against the pinned key), the ones a proof bundle gets from ``ledger verify``, and
compares the receipt's copies in the row's columns; :func:`check_online_entry` compares
what Rekor serves now with the stored receipt. Pure: no I/O.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from shared.checks import (
    anchor_signature_problems,
    manifest_digest_problems,
    manifest_problems,
    receipt_problems,
)
from shared.errors import VerificationError
from shared.merkle import RootAccumulator, leaf_hash
from shared.records import BatchRecord, EntryRecord
from shared.verify import LogKey, RekorReceipt, RekorV2Receipt, V2Trust

from .report import Problem, short

__all__ = ["BatchChecker", "BatchColumns", "check_batch_record", "check_online_entry"]


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
        if (rekor_log_id, rekor_index) != (_uuid(receipt), receipt.log_index):
            self._bad("anchor_reference", f"names Rekor entry {rekor_log_id} at index "
                      f"{rekor_index}, the batch's receipt is {_uuid(receipt)} at index "
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


def _differing(*fields: tuple[str, Any, Any]) -> list[tuple[str, Any, Any]]:
    """The ``(name, copy, original)`` triples whose copy is not the original."""
    return [(name, copy, original) for name, copy, original in fields if copy != original]


@dataclass(frozen=True, slots=True)
class BatchColumns:
    """The batch row's copies of receipt fields (``rekor_uuid``, ``rekor_log_index``, ...)."""

    rekor_uuid: str | None = None
    rekor_log_index: int | None = None
    rekor_log_id: str | None = None
    integrated_time: int | None = None


def check_batch_record(
    batch: BatchRecord,
    log_key: LogKey | None,
    columns: BatchColumns | None = None,
    *,
    v2_trust: V2Trust | None = None,
) -> list[Problem]:
    """Manifest ↔ row, manifest digest, anchor signature and (for anchored batches, with a
    key) the stored receipt against the pinned Rekor key; a Rekor v2 receipt against
    ``v2_trust`` (pinned log key, origin and TSA chain: without it, that is a problem)."""
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
    v2 = isinstance(receipt, RekorV2Receipt)
    if v2 and v2_trust is None:
        bad("receipt", ["the stored receipt is a Rekor v2 receipt and no v2 trust is pinned "
                        "(pass --rekor-origin and --tsa-chain)"])
    elif log_key is not None or v2:
        bad("receipt", receipt_problems(receipt, log_key, v2_trust=v2_trust,
                                        manifest=batch.manifest,
                                        anchor_signature=batch.anchor_sig,
                                        anchor_public_key=batch.anchor_pubkey),
            prefix="the stored Rekor receipt does not verify: ")
    if columns is not None:
        copies = _differing(
            ("rekor_uuid", columns.rekor_uuid, _uuid(receipt)),
            ("rekor_log_index", columns.rekor_log_index, receipt.log_index),
            ("rekor_log_id", columns.rekor_log_id, receipt.log_id),
            # a v2 receipt has no integrated time: the column stays NULL
            ("integrated_time", columns.integrated_time,
             receipt.integrated_time if isinstance(receipt, RekorReceipt) else None),
        )
        bad("receipt_columns", [f"column {name} {value!r} is not the receipt's {original!r}"
                                for name, value, original in copies])
    return problems


def _uuid(receipt: RekorReceipt | RekorV2Receipt) -> str | None:
    """The receipt's uuid (a v2 one's is its body's leaf hash: None if the body is not
    base64, which the receipt check reports)."""
    try:
        return receipt.uuid
    except VerificationError:
        return None


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
    if isinstance(stored, RekorV2Receipt):
        return [Problem("rekor_online", "the stored receipt is a Rekor v2 receipt: the online "
                        "comparison is for Rekor v1 entries", batch.id)]
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
    changed = _differing(
        ("body", live.body, stored.body),
        ("integratedTime", live.integrated_time, stored.integrated_time),
        ("logIndex", live.log_index, stored.log_index),
        ("logID", live.log_id, stored.log_id),
    )
    problems.extend(
        Problem("rekor_online", f"Rekor's {name} for {stored.uuid} is {short(now, 60)}, the "
                f"stored receipt has {short(then, 60)}", batch.id)
        for name, now, then in changed
    )
    return problems
