"""Building ``ledger.anchored`` events (the offline proof bundles) from database rows.

Shared by the anchorer, which emits one event per entry of an anchored batch, and by
:mod:`shared.proofs`, with which ingest serves the same document at
``GET /entries/{id}/proof`` and ``ledger proof`` writes it to files. Both read the rows through
:class:`shared.repository.Repository` and build with :func:`anchored_events`, so the proof
an HTTP client downloads is byte-identical to the entry's Kafka event.

The batch's tree is built from the leaf hashes the signer stored (``leaf_hash``; derived
from the row for rows stored before that column existed) and must give the batch's stored
root; every entry an event is built for must still hash to its leaf. So a proof is never
emitted for a row changed after it was batched: that raises :class:`VerificationError`.

An event's JSON is assembled from parts: the batch and receipt parts, the same for every
member, are serialised once per batch; ``tests/unit/test_anchorer_building.py`` keeps the
result byte-identical to ``AnchoredEntry(...).model_dump_json()``.

Everything here is a function of database row values only (never of a Kafka event): no I/O,
no clock, no randomness.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from shared import fastjson
from shared.errors import VerificationError
from shared.merkle import MerkleTree
from shared.messages import AnchoredEntry, ReceiptInfo, ReceiptInfoV2
from shared.records import BatchRecord, EntryRecord, LeafRecord
from shared.verify import Receipt, RekorV2Receipt

__all__ = ["AnchoredEvent", "anchored_events", "receipt_info"]


def receipt_info(receipt: Receipt) -> ReceiptInfo | ReceiptInfoV2:
    """The event's ``receipt`` part: a v1 receipt's fields as before, or a v2 receipt's with
    ``"api": "v2"`` and its RFC 3161 timestamp."""
    if isinstance(receipt, RekorV2Receipt):
        return ReceiptInfoV2(
            api="v2",
            log_index=receipt.log_index,
            log_id=receipt.log_id,
            body=receipt.body,
            tree_size=receipt.tree_size,
            root_hash=receipt.root_hash,
            hashes=list(receipt.inclusion_hashes),
            checkpoint=receipt.checkpoint,
            timestamp=receipt.timestamp,
        )
    if receipt.checkpoint is None:
        raise VerificationError("a stored receipt must carry its checkpoint")
    return ReceiptInfo(
        uuid=receipt.uuid,
        log_index=receipt.log_index,
        tree_index=receipt.tree_index,
        log_id=receipt.log_id,
        integrated_time=receipt.integrated_time,
        body=receipt.body,
        signed_entry_timestamp=receipt.signed_entry_timestamp,
        tree_size=receipt.tree_size,
        root_hash=receipt.root_hash,
        hashes=list(receipt.inclusion_hashes),
        checkpoint=receipt.checkpoint,
    )


@dataclass(frozen=True, slots=True)
class AnchoredEvent:
    """One ``ledger.anchored`` event, serialised: ``value`` is the exact JSON sent and served."""

    entry_id: uuid.UUID
    request_id: str
    subject: str
    leaf_index: int
    value: bytes
    #: the batch it belongs to (a span attribute when tracing is on; not in ``value`` twice)
    batch_id: uuid.UUID | None = None

    def model(self) -> AnchoredEntry:
        return AnchoredEntry.model_validate_json(self.value)


def anchored_events(
    batch: BatchRecord,
    members: Sequence[EntryRecord],
    *,
    leaves: Sequence[LeafRecord] | None = None,
) -> list[AnchoredEvent]:
    """The ``ledger.anchored`` event of each of ``members`` (rows of an anchored batch), in
    leaf order.

    ``leaves`` are every member of the batch as a tree sees them (default: ``members``
    themselves, which must then be the whole batch). The tree must give the stored root and
    each of ``members`` must still hash to its leaf; otherwise :class:`VerificationError`
    (a row changed after it was batched) instead of a proof that fails.
    """
    if not batch.anchored or batch.receipt is None:
        raise ValueError(f"batch {batch.id} is not anchored")
    tree_rows = list(leaves) if leaves is not None else [m.leaf_record() for m in members]
    ordered = sorted(tree_rows, key=lambda r: r.leaf_index if r.leaf_index is not None else -1)
    if [r.leaf_index for r in ordered] != list(range(batch.size)):
        raise VerificationError(
            f"batch {batch.id}: members have leaf indexes "
            f"{[r.leaf_index for r in ordered][:10]}..., expected 0..{batch.size - 1}"
        )
    tree = MerkleTree(r.leaf_hash for r in ordered)
    if tree.root.hex() != batch.root_hash:
        raise VerificationError(
            f"batch {batch.id}: rows give root {tree.root.hex()}, stored root is "
            f"{batch.root_hash}; the entries were changed after they were batched"
        )
    shared_part = b"".join((
        b',"batch":', batch.info().model_dump_json().encode(),
        b',"receipt":', receipt_info(batch.receipt).model_dump_json().encode(),
        b',"anchored_at":',
    ))
    events = []
    for member in sorted(members, key=lambda m: m.leaf_index if m.leaf_index is not None
                         else -1):
        index = member.leaf_index
        if index is None or not 0 <= index < batch.size or member.batch_id not in (
            None, batch.id
        ):
            raise VerificationError(f"entry {member.id} is not a member of batch {batch.id}")
        if member.content_leaf_hash() != tree.leaf(index):
            raise VerificationError(
                f"batch {batch.id}: entry {member.id} no longer hashes to leaf {index}; "
                "the entries were changed after they were batched"
            )
        anchored_at = member.anchored_at or batch.anchored_at
        if anchored_at is None:
            raise ValueError(f"entry {member.id} of anchored batch {batch.id} has no anchored_at")
        value = b"".join((
            b'{"version":1,"entry":', fastjson.dumps(member.signed_entry_fields()),
            b',"leaf_index":', str(index).encode(),
            b',"audit_path":', fastjson.dumps([h.hex() for h in tree.inclusion_proof(index)]),
            shared_part, fastjson.dumps(anchored_at), b"}",
        ))
        events.append(AnchoredEvent(entry_id=member.id, request_id=member.request_id,
                                    subject=member.subject, leaf_index=index, value=value,
                                    batch_id=batch.id))
    return events
