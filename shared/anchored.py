"""Building ``ledger.anchored`` events (the offline proof bundles) from database rows.

Shared by the anchorer, which emits one event per entry of an anchored batch, and by ingest,
which serves the same document at ``GET /entries/{id}/proof``. Both read the rows with
:data:`ENTRY_COLUMNS` / :data:`BATCH_COLUMNS` and build with :func:`anchored_events`, so the
proof an HTTP client downloads is byte-identical to the entry's Kafka event.

Everything here is a function of database row values only (never of a Kafka event): no I/O,
no clock, no randomness.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared.errors import VerificationError
from shared.merkle import MerkleTree
from shared.messages import AnchoredEntry, BatchInfo, ReceiptInfo, SignedEntry
from shared.statement import leaf_bytes
from shared.verify import RekorReceipt

__all__ = [
    "BATCH_COLUMNS",
    "ENTRY_COLUMNS",
    "BatchRecord",
    "EntryRecord",
    "anchored_events",
    "receipt_info",
]

#: the ``ledger.entries`` columns :meth:`EntryRecord.from_row` reads
ENTRY_COLUMNS = (
    "id, request_id, subject, payload_hash, meta::text AS meta, submitted_at, created_at, "
    "statement, sig, key_name, key_version, pubkey, batch_id, leaf_index, anchored_at"
)
#: the ``ledger.batches`` columns :meth:`BatchRecord.from_row` reads
BATCH_COLUMNS = (
    "id, created_at, state, size, root_hash, manifest, manifest_sha256, anchor_sig, "
    "anchor_key_version, anchor_pubkey, receipt::text AS receipt, anchored_at"
)


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One ``ledger.entries`` row, as the anchorer reads it."""

    id: uuid.UUID
    request_id: str
    subject: str
    payload_hash: str
    meta: dict[str, Any]
    submitted_at: datetime
    created_at: datetime
    statement: bytes
    sig: str
    key_name: str
    key_version: int
    pubkey: str
    batch_id: uuid.UUID | None = None
    leaf_index: int | None = None
    anchored_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EntryRecord:
        meta = row["meta"]
        if isinstance(meta, str):
            meta = json.loads(meta)
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            subject=row["subject"],
            payload_hash=row["payload_hash"],
            meta=dict(meta or {}),
            submitted_at=row["submitted_at"],
            created_at=row["created_at"],
            statement=bytes(row["statement"]),
            sig=row["sig"],
            # rows written by the signer always carry the key name; the column is nullable
            # only for the runbook's legacy rows, which were signed with its default key
            key_name=row["key_name"] or "ledger-ed25519",
            key_version=row["key_version"],
            pubkey=row["pubkey"],
            batch_id=row.get("batch_id"),
            leaf_index=row.get("leaf_index"),
            anchored_at=row.get("anchored_at"),
        )

    def leaf(self) -> bytes:
        """The Merkle leaf data (``shared.statement.leaf_bytes``) of this row."""
        return leaf_bytes(
            entry_id=self.id,
            statement=self.statement,
            signature=self.sig,
            key_name=self.key_name,
            key_version=self.key_version,
        )

    def signed_entry(self) -> SignedEntry:
        return SignedEntry(
            entry_id=self.id,
            request_id=self.request_id,
            subject=self.subject,
            payload_sha256=self.payload_hash,
            meta=self.meta,
            submitted_at=self.submitted_at,
            created_at=self.created_at,
            statement=base64.b64encode(self.statement).decode("ascii"),
            signature=self.sig,
            key_name=self.key_name,
            key_version=self.key_version,
            public_key=self.pubkey,
        )


@dataclass(frozen=True, slots=True)
class BatchRecord:
    """One ``ledger.batches`` row."""

    id: uuid.UUID
    created_at: datetime
    state: str
    size: int
    root_hash: str
    manifest: bytes
    manifest_sha256: str
    anchor_sig: bytes
    anchor_key_version: int
    anchor_pubkey: str
    receipt: RekorReceipt | None = None
    anchored_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BatchRecord:
        receipt_raw = row["receipt"]
        receipt = None
        if receipt_raw is not None:
            data = json.loads(receipt_raw) if isinstance(receipt_raw, str) else receipt_raw
            receipt = RekorReceipt.model_validate(data)
        return cls(
            id=row["id"],
            created_at=row["created_at"],
            state=row["state"],
            size=row["size"],
            root_hash=row["root_hash"],
            manifest=bytes(row["manifest"]),
            manifest_sha256=row["manifest_sha256"],
            anchor_sig=bytes(row["anchor_sig"]),
            anchor_key_version=row["anchor_key_version"],
            anchor_pubkey=row["anchor_pubkey"],
            receipt=receipt,
            anchored_at=row["anchored_at"],
        )

    @property
    def anchored(self) -> bool:
        return self.state == "anchored" and self.receipt is not None

    def info(self) -> BatchInfo:
        return BatchInfo(
            batch_id=self.id,
            size=self.size,
            root=self.root_hash,
            manifest=base64.b64encode(self.manifest).decode("ascii"),
            manifest_sha256=self.manifest_sha256,
            anchor_signature=base64.b64encode(self.anchor_sig).decode("ascii"),
            anchor_key_version=self.anchor_key_version,
            anchor_public_key=self.anchor_pubkey,
        )


def receipt_info(receipt: RekorReceipt) -> ReceiptInfo:
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


def anchored_events(
    batch: BatchRecord, members: Sequence[EntryRecord]
) -> list[AnchoredEntry]:
    """One ``ledger.anchored`` event per member of an anchored batch, in leaf order.

    The tree is rebuilt from the rows and must give the stored root: a row changed after it
    was anchored raises :class:`VerificationError` instead of emitting a proof that fails.
    """
    if not batch.anchored or batch.receipt is None:
        raise ValueError(f"batch {batch.id} is not anchored")
    ordered = sorted(members, key=lambda m: m.leaf_index if m.leaf_index is not None else -1)
    if [m.leaf_index for m in ordered] != list(range(batch.size)):
        raise VerificationError(
            f"batch {batch.id}: members have leaf indexes "
            f"{[m.leaf_index for m in ordered][:10]}..., expected 0..{batch.size - 1}"
        )
    tree = MerkleTree.from_data(m.leaf() for m in ordered)
    if tree.root.hex() != batch.root_hash:
        raise VerificationError(
            f"batch {batch.id}: rows give root {tree.root.hex()}, stored root is "
            f"{batch.root_hash}; the entries were changed after they were batched"
        )
    info = batch.info()
    receipt = receipt_info(batch.receipt)
    events = []
    for index, member in enumerate(ordered):
        anchored_at = member.anchored_at or batch.anchored_at
        if anchored_at is None:
            raise ValueError(f"entry {member.id} of anchored batch {batch.id} has no anchored_at")
        events.append(
            AnchoredEntry(
                entry=member.signed_entry(),
                leaf_index=index,
                audit_path=[h.hex() for h in tree.inclusion_proof(index)],
                batch=info,
                receipt=receipt,
                anchored_at=anchored_at,
            )
        )
    return events
