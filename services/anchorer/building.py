"""Pure construction of what the anchorer claims and anchors: batch order, tree, manifest.

The row records and the ``ledger.anchored`` event builder live in :mod:`shared.anchored`
(ingest serves the same events as proof bundles). Everything here is a function of database
row values only (never of a Kafka event), so the tree built when a batch is claimed, the tree
rebuilt by the sweeper and the tree rebuilt for every later re-emission are the same. The
tree is built over each row's ``tree_leaf``: the leaf hash the signer stored, so a claim
reads 80 bytes of a row, not the row.

No I/O, no clock, no randomness: the caller passes the batch id and creation time.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

from shared.merkle import MerkleTree
from shared.statement import manifest_bytes

__all__ = [
    "BatchPlan",
    "Claimable",
    "order_for_claim",
    "plan_batch",
]


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
