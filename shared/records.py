"""The rows of ``ledger.entries`` and ``ledger.batches`` as Python values: one mapping each.

:class:`EntryRecord` is an entry row for every reader (the signer re-publishing a stored
entry, the anchorer building events, ingest answering ``GET /entries``, ``ledger audit``);
:class:`LeafRecord` is the narrow read a Merkle tree needs; :class:`BatchRecord` a batch
row. :class:`NewEntry` and :class:`NewBatch` are what the signer inserts and the anchorer
claims. The SQL that reads and writes them lives in :mod:`shared.repository` only.

Rows written before ``key_name`` was stored (the runbook's, nullable column) were signed
with the runbook's default key; every reader maps them to :data:`LEGACY_KEY_NAME`.

Rows that come from the runbook's own service (``legacy_id``, the runbook's integer id, is
set: see ``docs/upgrading.md``) have no signed statement; their leaf is the distinct legacy
leaf of :func:`shared.statement.legacy_leaf_bytes`, which :meth:`EntryRecord.leaf` returns.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from shared import fastjson
from shared.merkle import leaf_hash
from shared.messages import BatchInfo, SignedEntry, signed_entry_fields
from shared.statement import leaf_bytes, legacy_leaf_bytes
from shared.verify import Receipt, load_receipt

__all__ = [
    "BATCH_COLUMNS",
    "ENTRY_COLUMNS",
    "LEAF_COLUMNS",
    "LEGACY_KEY_NAME",
    "BatchRecord",
    "EntryRecord",
    "LeafRecord",
    "NewBatch",
    "NewEntry",
]

#: the key rows without a stored ``key_name`` were signed with
LEGACY_KEY_NAME = "ledger-ed25519"

#: the ``ledger.entries`` columns :meth:`EntryRecord.from_row` reads
ENTRY_COLUMNS = (
    "id, request_id, subject, payload_hash, meta::text AS meta, submitted_at, created_at, "
    "statement, sig, key_name, key_version, pubkey, content_sha256, leaf_hash, batch_id, "
    "leaf_index, rekor_log_id, rekor_index, anchored_at, legacy_id"
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
#: the ``ledger.batches`` columns :meth:`BatchRecord.from_row` reads
BATCH_COLUMNS = (
    "id, created_at, state, size, root_hash, manifest, manifest_sha256, anchor_sig, "
    "anchor_key_version, anchor_pubkey, receipt::text AS receipt, anchored_at"
)


def _leaf_hash_of(
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
            stored = _leaf_hash_of(row["id"], bytes(row["statement"]), row["sig"],
                                   row["key_name"] or LEGACY_KEY_NAME, row["key_version"])
        return cls(id=row["id"], created_at=row["created_at"], leaf_hash=bytes(stored),
                   batch_id=row["batch_id"], leaf_index=row["leaf_index"])


@dataclass(frozen=True, slots=True)
class EntryRecord:
    """One ``ledger.entries`` row (every column :data:`ENTRY_COLUMNS` reads)."""

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
    #: SHA-256 of the request's canonical content: what idempotency compares
    content_sha256: str | None = None
    #: the leaf hash the signer stored (None for older rows)
    stored_leaf_hash: bytes | None = None
    batch_id: uuid.UUID | None = None
    leaf_index: int | None = None
    #: the Rekor entry uuid of the entry's batch, and that entry's global log index
    rekor_log_id: str | None = None
    rekor_index: int | None = None
    anchored_at: datetime | None = None
    #: the runbook's integer id of a row imported from its service (None for the ledger's own)
    legacy_id: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> EntryRecord:
        meta = row["meta"]
        if isinstance(meta, str):
            meta = fastjson.loads(meta)
        stored_leaf = row["leaf_hash"]
        return cls(
            id=row["id"],
            request_id=row["request_id"],
            subject=row["subject"],
            payload_hash=row["payload_hash"],
            meta=meta if isinstance(meta, dict) else {},
            submitted_at=row["submitted_at"],
            created_at=row["created_at"],
            statement=bytes(row["statement"]),
            sig=row["sig"],
            key_name=row["key_name"] or LEGACY_KEY_NAME,
            key_version=row["key_version"],
            pubkey=row["pubkey"],
            content_sha256=row["content_sha256"],
            stored_leaf_hash=None if stored_leaf is None else bytes(stored_leaf),
            batch_id=row["batch_id"],
            leaf_index=row["leaf_index"],
            rekor_log_id=row["rekor_log_id"],
            rekor_index=row["rekor_index"],
            anchored_at=row["anchored_at"],
            legacy_id=row.get("legacy_id"),
        )

    def leaf(self) -> bytes:
        """The Merkle leaf data of this row: ``shared.statement.leaf_bytes``, or for a row of
        the runbook's service ``legacy_leaf_bytes``."""
        if self.legacy_id is not None:
            return legacy_leaf_bytes(
                entry_id=self.id, legacy_id=self.legacy_id, subject=self.subject,
                payload_sha256=self.payload_hash, meta=self.meta, created_at=self.created_at,
                signature=self.sig, public_key=self.pubkey, key_name=self.key_name)
        return leaf_bytes(entry_id=self.id, statement=self.statement, signature=self.sig,
                          key_name=self.key_name, key_version=self.key_version)

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
        """The entry's ``ledger.signed`` event as a plain dict (see ``signed_entry_fields``)."""
        return signed_entry_fields(
            entry_id=self.id, request_id=self.request_id, subject=self.subject,
            payload_sha256=self.payload_hash, meta=self.meta, submitted_at=self.submitted_at,
            created_at=self.created_at, statement=self.statement, signature=self.sig,
            key_name=self.key_name, key_version=self.key_version, public_key=self.pubkey,
        )

    def signed_event(self) -> bytes:
        """The entry's ``ledger.signed`` JSON, byte-identical to the one its signer sent."""
        return fastjson.dumps(self.signed_entry_fields())

    def signed_entry(self) -> SignedEntry:
        return SignedEntry.model_validate(self.signed_entry_fields())


@dataclass(frozen=True, slots=True)
class NewEntry:
    """A signed entry the signer inserts (the columns the database does not default)."""

    id: uuid.UUID
    request_id: str
    subject: str
    payload_hash: str
    meta: dict[str, Any]
    submitted_at: datetime
    statement: bytes
    sig: str
    key_name: str
    key_version: int
    pubkey: str
    content_sha256: str

    def leaf_hash(self) -> bytes:
        """``SHA256(0x00 || leaf)`` of this entry (what the anchorer's tree is built over)."""
        return _leaf_hash_of(self.id, self.statement, self.sig, self.key_name, self.key_version)

    def signed_event(self, created_at: datetime) -> bytes:
        """The ``ledger.signed`` JSON of this entry once stored at ``created_at``: the bytes
        :meth:`EntryRecord.signed_event` gives for the stored row."""
        return fastjson.dumps(signed_entry_fields(
            entry_id=self.id, request_id=self.request_id, subject=self.subject,
            payload_sha256=self.payload_hash, meta=self.meta, submitted_at=self.submitted_at,
            created_at=created_at, statement=self.statement, signature=self.sig,
            key_name=self.key_name, key_version=self.key_version, public_key=self.pubkey,
        ))


@dataclass(frozen=True, slots=True)
class NewBatch:
    """A batch the anchorer claims: its members (in leaf order) and its signed manifest."""

    id: uuid.UUID
    created_at: datetime
    member_ids: Sequence[uuid.UUID]
    root_hex: str
    manifest: bytes
    manifest_sha256: bytes
    anchor_sig: bytes
    anchor_key_version: int
    anchor_pubkey: str

    @property
    def size(self) -> int:
        return len(self.member_ids)


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
    #: Rekor v1's receipt, or v2's with its RFC 3161 timestamp (``api`` says which)
    receipt: Receipt | None = None
    anchored_at: datetime | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> BatchRecord:
        receipt_raw = row["receipt"]
        receipt = None if receipt_raw is None else load_receipt(receipt_raw)
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
