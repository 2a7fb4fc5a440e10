"""Pure construction of what the anchorer claims and anchors: batch order, tree, manifest.

The row records and the ``ledger.anchored`` event builder live in :mod:`shared.anchored`
(ingest serves the same events as proof bundles). Everything here is a function of database
row values only (never of a Kafka event), so the tree built when a batch is claimed, the tree
rebuilt by the sweeper and the tree rebuilt for every later re-emission are the same. The
tree is built over each row's ``tree_leaf``: the leaf hash the signer stored, so a claim
reads 80 bytes of a row, not the row.

With ``LEDGER_ANCHORER_VERIFY_ROWS`` (off by default: it costs a full-row read and ~140 µs
of CPU per entry), :func:`refusal` checks a row before it joins a batch as a proof bundle's
entry is checked (``shared.checks``): its Ed25519 signature over the stored statement
verifies with the stored key, the statement's fields are the row's columns, and the stored
leaf hash is the leaf of that content. The signer checked all of it before storing the row;
this is the second look, so a row written into the database some other way is refused, not
anchored (without it, ``ledger audit`` and ``ledger verify`` report such a row afterwards).

No I/O, no clock, no randomness: the caller passes the batch id and creation time.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Literal, Protocol, TypeVar, get_args

from shared.checks import (
    StatementFields,
    entry_signature_problems,
    read_entry_signature,
    statement_problems,
)
from shared.merkle import MerkleTree
from shared.records import EntryRecord
from shared.statement import manifest_bytes

__all__ = [
    "REFUSAL_REASONS",
    "BatchPlan",
    "Claimable",
    "Refusal",
    "order_for_claim",
    "plan_batch",
    "refusal",
]

RefusalReason = Literal["signature", "statement", "leaf"]
#: why a row is refused (the ``reason`` label of ``ledger_anchorer_rejected_rows_total``)
REFUSAL_REASONS: tuple[RefusalReason, ...] = get_args(RefusalReason)


class Claimable(Protocol):
    """A row as a claim sees it (:class:`shared.anchored.LeafRecord`, ``EntryRecord``)."""

    @property
    def id(self) -> uuid.UUID: ...
    @property
    def created_at(self) -> datetime: ...
    @property
    def tree_leaf(self) -> bytes: ...


R = TypeVar("R", bound=Claimable)


def order_for_claim(rows: Sequence[R]) -> list[R]:
    """The deterministic leaf order of a batch: by (created_at, id), duplicates removed."""
    unique = {r.id: r for r in rows}
    return sorted(unique.values(), key=lambda r: (r.created_at, r.id))


@dataclass(frozen=True, slots=True)
class BatchPlan(Generic[R]):
    """A batch about to be claimed: members in leaf order, tree, manifest and its digest."""

    batch_id: uuid.UUID
    created_at: datetime
    members: tuple[R, ...]
    root_hex: str
    manifest: bytes
    manifest_sha256: bytes

    @property
    def size(self) -> int:
        return len(self.members)


def plan_batch(rows: Sequence[R], *, batch_id: uuid.UUID, created_at: datetime) -> BatchPlan[R]:
    """Order the rows, build the RFC 6962 tree over their leaves and the batch manifest."""
    members = order_for_claim(rows)
    if not members:
        raise ValueError("a batch needs at least one entry")
    tree = MerkleTree(m.tree_leaf for m in members)
    root_hex = tree.root.hex()
    manifest = manifest_bytes(
        batch_id=batch_id, size=len(members), root_hex=root_hex, created_at=created_at
    )
    return BatchPlan(
        batch_id=batch_id,
        created_at=created_at,
        members=tuple(members),
        root_hex=root_hex,
        manifest=manifest,
        manifest_sha256=hashlib.sha256(manifest).digest(),
    )


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a stored row may not be anchored. ``detail`` names no value of the row."""

    reason: RefusalReason
    detail: str


def _hidden(_value: object) -> str:
    return "(value not shown)"


def _legacy_refusal(row: EntryRecord) -> Refusal | None:
    """A row of the runbook's service (``ledger import-legacy``) signed a payload the ledger
    never held: it joins a batch when its leaf is still the one stored at import."""
    if row.stored_leaf_hash is None or row.stored_leaf_hash != row.content_leaf_hash():
        return Refusal("leaf", "the legacy row is not the one imported (its legacy leaf differs)")
    return None


def refusal(row: EntryRecord) -> Refusal | None:
    """None when ``row`` is anchorable; else what is wrong with it, most basic first.

    The checks of a proof bundle's entry (``statement``, ``entry_signature``,
    ``statement_fields``), run on the row, and its stored leaf hash against its content: a
    batch built over the row then yields a bundle that ``ledger verify`` accepts.
    """
    if row.legacy_id is not None:  # the runbook's row: nothing signed to check here
        return _legacy_refusal(row)
    raw, problems = read_entry_signature(row.sig, row.key_version)
    if raw is None or problems:
        return Refusal("signature", problems[0])
    problems = entry_signature_problems(row.pubkey, raw, row.statement)
    if problems:
        return Refusal("signature", problems[0])
    claimed = StatementFields(row.request_id, row.subject, row.payload_hash, row.meta,
                              row.submitted_at)
    differing = statement_problems(row.statement, claimed, label=str, show=_hidden)
    if differing:
        _check, detail = differing[0]
        return Refusal("statement", f"the row is not what its signed statement says: {detail}")
    if row.stored_leaf_hash is not None and row.stored_leaf_hash != row.content_leaf_hash():
        return Refusal("leaf", "the stored leaf hash is not the leaf of the row's signed content")
    return None
