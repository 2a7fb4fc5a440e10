"""An entry's proof bundle, read from the database.

Ingest's ``GET /entries/{id}/proof`` and ``ledger proof`` both build the bundle here: the
entry's ``ledger.anchored`` event rebuilt from the rows as the anchorer does (the batch's
tree from its stored leaf hashes, the event from the entry's own row, with
:func:`shared.anchored.anchored_events`), so either way it is byte for byte the event the
anchorer published.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from shared.anchored import AnchoredEvent, anchored_events
from shared.errors import VerificationError
from shared.records import EntryRecord
from shared.repository import Repository

__all__ = ["PendingProof", "entry_proof"]


@dataclass(frozen=True, slots=True)
class PendingProof:
    """An entry that is stored and signed but not anchored yet: no proof bundle exists.

    ``batch_id`` is None while the entry waits for a batch, and set once its batch is
    claimed and waits for its Rekor receipt.
    """

    id: uuid.UUID
    batch_id: uuid.UUID | None


async def entry_proof(repo: Repository, entry: EntryRecord) -> AnchoredEvent | PendingProof:
    """``entry``'s ``ledger.anchored`` event, or :class:`PendingProof` while it has none.

    A batch's members are fixed once it is claimed and its receipt is written in the same
    transaction that marks it anchored, so these reads need no common snapshot. Raises
    :class:`VerificationError` when the stored rows no longer give the anchored root.
    """
    if entry.batch_id is None:
        return PendingProof(id=entry.id, batch_id=None)
    batch = await repo.batch(entry.batch_id)
    if batch is None or not batch.anchored:
        return PendingProof(id=entry.id, batch_id=entry.batch_id)
    leaves = await repo.batch_leaves(batch.id)
    if entry.id not in {leaf.id for leaf in leaves}:
        raise VerificationError(f"entry {entry.id} is not a member of its batch {batch.id}")
    (event,) = anchored_events(batch, [entry], leaves=leaves)
    return event
