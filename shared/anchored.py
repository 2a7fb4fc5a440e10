"""Building ``ledger.anchored`` events (the offline proof bundles) from database rows.

Shared by the anchorer, which emits one event per entry of an anchored batch, and by ingest,
which serves the same document at ``GET /entries/{id}/proof``. Both read the rows with
:data:`ENTRY_COLUMNS` / :data:`BATCH_COLUMNS` and build with :func:`anchored_events`, so the
proof an HTTP client downloads is byte-identical to the entry's Kafka event.

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

import base64
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import fastjson
from shared.errors import VerificationError
from shared.merkle import MerkleTree, leaf_hash
from shared.messages import AnchoredEntry, BatchInfo, ReceiptInfo, SignedEntry, signed_entry_fields
from shared.statement import leaf_bytes
from shared.verify import RekorReceipt

__all__ = [
    "BATCH_COLUMNS",
    "ENTRY_COLUMNS",
    "LEAF_COLUMNS",
    "AnchoredEvent",
    "BatchRecord",
    "EntryRecord",
    "LeafRecord",
    "anchored_events",
    "receipt_info",
]

#: the ``ledger.entries`` columns :meth:`EntryRecord.from_row` reads
ENTRY_COLUMNS = (
    "id, request_id, subject, payload_hash, meta::text AS meta, submitted_at, created_at, "
    "statement, sig, key_name, key_version, pubkey, batch_id, leaf_index, anchored_at, "
    "leaf_hash"
)
#: the ``ledger.entries`` columns :meth:`LeafRecord.from_row` reads: what a tree needs. The
#: leaf's inputs come along only for rows without a stored leaf hash.
LEAF_COLUMNS = (
    "id, created_at, batch_id, leaf_index, leaf_hash, "
    "CASE WHEN leaf_hash IS NULL THEN statement END AS statement, "
    "CASE WHEN leaf_hash IS NULL THEN sig END AS sig, "
    "CASE WHEN leaf_hash IS NULL THEN key_name END AS key_name, "
    "CASE WHEN leaf_hash IS NULL THEN key_version END AS key_version"
)
#: rows written by the signer always carry the key name; the column is nullable only for
#: the runbook's legacy rows, which were signed with its default key
_LEGACY_KEY_NAME = "ledger-ed25519"


def _derived_leaf(
    entry_id: uuid.UUID, statement: bytes, sig: str, key_name: str, key_version: int
) -> bytes:
    return leaf_hash(leaf_bytes(entry_id=entry_id, statement=statement, signature=sig,
                                key_name=key_name, key_version=key_version))


@dataclass(frozen=True, slots=True)
class LeafRecord:
    """What building or checking a batch tree needs of one ``ledger.entries`` row."""

    id: uuid.UUID
    created_at: datetime
    leaf_hash: bytes
    batch_id: uuid.UUID | None = None
    leaf_index: int | None = None

    @property
    def tree_leaf(self) -> bytes:
        """The leaf hash a batch tree uses for this row."""
        return self.leaf_hash

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> LeafRecord:
        stored = row["leaf_hash"]
        if stored is None:  # a row from before the signer stored leaf hashes
            stored = _derived_leaf(row["id"], bytes(row["statement"]), row["sig"],
                                   row["key_name"] or _LEGACY_KEY_NAME, row["key_version"])
        return cls(id=row["id"], created_at=row["created_at"], leaf_hash=bytes(stored),
                   batch_id=row["batch_id"], leaf_index=row["leaf_index"])
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
    #: the leaf hash the signer stored (None for older rows)
    stored_leaf_hash: bytes | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EntryRecord:
        meta = row["meta"]
        if isinstance(meta, str):
            meta = fastjson.loads(meta)
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
            key_name=row["key_name"] or _LEGACY_KEY_NAME,
            key_version=row["key_version"],
            pubkey=row["pubkey"],
            batch_id=row.get("batch_id"),
            leaf_index=row.get("leaf_index"),
            anchored_at=row.get("anchored_at"),
            stored_leaf_hash=None if row.get("leaf_hash") is None else bytes(row["leaf_hash"]),
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

    def content_leaf_hash(self) -> bytes:
        """The leaf hash this row's signed content gives now."""
        return leaf_hash(self.leaf())

    @property
    def tree_leaf(self) -> bytes:
        """The leaf hash a batch tree uses for this row: the stored one, else derived."""
        return self.stored_leaf_hash or self.content_leaf_hash()

    def leaf_record(self) -> LeafRecord:
        """This row as a tree sees it."""
        return LeafRecord(id=self.id, created_at=self.created_at, leaf_hash=self.tree_leaf,
                          batch_id=self.batch_id, leaf_index=self.leaf_index)

    def signed_entry_fields(self) -> dict[str, Any]:
        return signed_entry_fields(
            entry_id=self.id,
            request_id=self.request_id,
            subject=self.subject,
            payload_sha256=self.payload_hash,
            meta=self.meta,
            submitted_at=self.submitted_at,
            created_at=self.created_at,
            statement=self.statement,
            signature=self.sig,
            key_name=self.key_name,
            key_version=self.key_version,
            public_key=self.pubkey,
        )

    def signed_entry(self) -> SignedEntry:
        return SignedEntry.model_validate(self.signed_entry_fields())


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


@dataclass(frozen=True, slots=True)
class AnchoredEvent:
    """One ``ledger.anchored`` event, serialised: ``value`` is the exact JSON sent and served."""

    entry_id: uuid.UUID
    request_id: str
    subject: str
    leaf_index: int
    value: bytes

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
                                    subject=member.subject, leaf_index=index, value=value))
    return events
