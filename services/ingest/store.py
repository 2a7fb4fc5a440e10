"""Read-only queries of ``ledger.entries`` for the HTTP API, and the entry's JSON shape.

Ingest never writes entries (the signer does). Queries go through :class:`shared.db.Database`
so database errors arrive as :class:`DatabaseUnavailable` / :class:`QueryError`. Listing uses
keyset pagination over ``(created_at, id)``: the cursor is opaque to clients (base64url JSON
of the last row's key and the order) and pages never skip or repeat a row, even while rows
are being inserted.

Never selects the statement bytes into a response log; nothing here logs row contents.
"""

from __future__ import annotations

import base64
import binascii
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, Protocol

from shared.anchored import (
    BATCH_COLUMNS,
    ENTRY_COLUMNS,
    LEAF_COLUMNS,
    AnchoredEvent,
    BatchRecord,
    EntryRecord,
    LeafRecord,
    anchored_events,
)
from shared.db import Database, Row
from shared.errors import VerificationError
from shared.messages import SignedEntry
from shared.statement import format_time

__all__ = [
    "Cursor",
    "EntryFilter",
    "EntryStore",
    "EntryView",
    "PendingProof",
    "PgEntryStore",
    "ProofStore",
    "decode_cursor",
    "encode_cursor",
]

Order = Literal["asc", "desc"]


@dataclass(frozen=True, slots=True)
class EntryView:
    """One entry as the API shows it (the runbook's fields first)."""

    id: uuid.UUID
    subject: str
    payload_hash: str
    signature: str
    public_key: str
    created_at: datetime
    rekor_log_id: str | None
    rekor_index: int | None
    request_id: str
    key_version: int
    meta: dict[str, Any]
    submitted_at: datetime
    anchored_at: datetime | None
    content_sha256: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "subject": self.subject,
            "payload_hash": self.payload_hash,
            "signature": self.signature,
            "public_key": self.public_key,
            "created_at": format_time(self.created_at),
            "rekor_log_id": self.rekor_log_id,
            "rekor_index": self.rekor_index,
            "request_id": self.request_id,
            "key_version": self.key_version,
            "meta": self.meta,
            "submitted_at": format_time(self.submitted_at),
            "anchored_at": format_time(self.anchored_at) if self.anchored_at else None,
        }

    @classmethod
    def from_signed(cls, event: SignedEntry) -> EntryView:
        return cls(
            id=event.entry_id,
            subject=event.subject,
            payload_hash=event.payload_sha256,
            signature=event.signature,
            public_key=event.public_key,
            created_at=event.created_at,
            rekor_log_id=None,
            rekor_index=None,
            request_id=event.request_id,
            key_version=event.key_version,
            meta=dict(event.meta),
            submitted_at=event.submitted_at,
            anchored_at=None,
        )

    @classmethod
    def from_row(cls, row: Row) -> EntryView:
        meta = row["meta"]
        if isinstance(meta, str):
            meta = json.loads(meta)
        return cls(
            id=row["id"],
            subject=row["subject"],
            payload_hash=row["payload_hash"],
            signature=row["sig"],
            public_key=row["pubkey"],
            created_at=row["created_at"],
            rekor_log_id=row["rekor_log_id"],
            rekor_index=row["rekor_index"],
            request_id=row["request_id"],
            key_version=row["key_version"],
            meta=meta if isinstance(meta, dict) else {},
            submitted_at=row["submitted_at"],
            anchored_at=row["anchored_at"],
            content_sha256=row["content_sha256"],
        )


@dataclass(frozen=True, slots=True)
class Cursor:
    created_at: datetime
    id: uuid.UUID
    order: Order


@dataclass(frozen=True, slots=True)
class EntryFilter:
    subject: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    anchored: bool | None = None
    order: Order = "asc"
    after: Cursor | None = None
    limit: int = 100


def encode_cursor(cursor: Cursor) -> str:
    doc = {"t": format_time(cursor.created_at), "i": str(cursor.id), "o": cursor.order}
    raw = json.dumps(doc, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor made by :func:`encode_cursor`; ``ValueError`` if it is not one."""
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        doc = json.loads(raw)
        order = doc["o"]
        created = datetime.strptime(doc["t"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        entry_id = uuid.UUID(doc["i"])
    except (binascii.Error, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise ValueError("not a cursor returned by this API") from None
    if order not in ("asc", "desc"):
        raise ValueError("not a cursor returned by this API")
    return Cursor(created_at=created, id=entry_id, order=order)


class EntryStore(Protocol):
    """What the HTTP API reads. Errors: DatabaseUnavailable (→ 503)."""

    async def get(self, entry_id: uuid.UUID) -> EntryView | None: ...

    async def get_by_request_id(self, request_id: str) -> EntryView | None: ...

    async def get_by_request_ids(self, request_ids: Sequence[str]) -> dict[str, EntryView]: ...

    async def list(self, flt: EntryFilter) -> list[EntryView]: ...

    async def health(self, *, timeout_s: float) -> bool: ...


@dataclass(frozen=True, slots=True)
class PendingProof:
    """An entry that is stored and signed but not anchored yet: no proof bundle exists.

    ``batch_id`` is None while the entry waits for a batch, and set once its batch is
    claimed and waits for its Rekor receipt.
    """

    id: uuid.UUID
    batch_id: uuid.UUID | None


class ProofStore(Protocol):
    """What ``GET /entries/{id}/proof`` reads. Errors: DatabaseUnavailable (→ 503);
    VerificationError when the rows no longer match their anchored batch root."""

    async def proof(self, entry_id: uuid.UUID) -> AnchoredEvent | PendingProof | None: ...


_COLUMNS = (
    "id, subject, payload_hash, sig, pubkey, meta::text AS meta, rekor_log_id, rekor_index, "
    "created_at, anchored_at, request_id, key_version, submitted_at, content_sha256"
)


class PgEntryStore:
    """:class:`EntryStore` on PostgreSQL/CockroachDB through :class:`shared.db.Database`."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, entry_id: uuid.UUID) -> EntryView | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM ledger.entries WHERE id = $1", entry_id  # noqa: S608
        )
        return EntryView.from_row(row) if row is not None else None

    async def get_by_request_id(self, request_id: str) -> EntryView | None:
        row = await self._db.fetchrow(
            f"SELECT {_COLUMNS} FROM ledger.entries WHERE request_id = $1",  # noqa: S608
            request_id,
        )
        return EntryView.from_row(row) if row is not None else None

    async def get_by_request_ids(self, request_ids: Sequence[str]) -> dict[str, EntryView]:
        rows = await self._db.fetch(
            f"SELECT {_COLUMNS} FROM ledger.entries WHERE request_id = ANY($1::text[])",  # noqa: S608
            list(request_ids),
        )
        return {r["request_id"]: EntryView.from_row(r) for r in rows}

    async def list(self, flt: EntryFilter) -> list[EntryView]:
        # Only fixed SQL fragments are concatenated; every value is a bind parameter.
        where: list[str] = []
        args: list[Any] = []

        def bind(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if flt.subject is not None:
            where.append(f"subject = {bind(flt.subject)}")
        if flt.created_from is not None:
            where.append(f"created_at >= {bind(flt.created_from)}")
        if flt.created_to is not None:
            where.append(f"created_at < {bind(flt.created_to)}")
        if flt.anchored is True:
            where.append("anchored_at IS NOT NULL")
        elif flt.anchored is False:
            where.append("anchored_at IS NULL")
        op, direction = (">", "ASC") if flt.order == "asc" else ("<", "DESC")
        if flt.after is not None:
            t, i = bind(flt.after.created_at), bind(flt.after.id)
            where.append(f"(created_at, id) {op} ({t}, {i})")
        sql = f"SELECT {_COLUMNS} FROM ledger.entries"  # noqa: S608
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" ORDER BY created_at {direction}, id {direction} LIMIT {bind(flt.limit)}"
        rows = await self._db.fetch(sql, *args)
        return [EntryView.from_row(r) for r in rows]

    async def health(self, *, timeout_s: float) -> bool:
        return await self._db.health(timeout_s=timeout_s)

    async def proof(self, entry_id: uuid.UUID) -> AnchoredEvent | PendingProof | None:
        """The entry's ``ledger.anchored`` event, rebuilt from the rows as the anchorer does:
        the batch's tree from its stored leaf hashes, the event from the entry's own row.

        A batch's members are fixed once it is claimed and its receipt is written in the same
        transaction that marks it anchored, so these reads need no common snapshot.
        """
        row = await self._db.fetchrow(
            f"SELECT {ENTRY_COLUMNS} FROM ledger.entries WHERE id = $1", entry_id  # noqa: S608
        )
        if row is None:
            return None
        entry = EntryRecord.from_row(row)
        if entry.batch_id is None:
            return PendingProof(id=entry.id, batch_id=None)
        batch_row = await self._db.fetchrow(
            f"SELECT {BATCH_COLUMNS} FROM ledger.batches WHERE id = $1",  # noqa: S608
            entry.batch_id,
        )
        if batch_row is None:
            return PendingProof(id=entry.id, batch_id=entry.batch_id)
        batch = BatchRecord.from_row(batch_row)
        if not batch.anchored:
            return PendingProof(id=entry.id, batch_id=batch.id)
        rows = await self._db.fetch(
            f"SELECT {LEAF_COLUMNS} FROM ledger.entries WHERE batch_id = $1"  # noqa: S608
            " ORDER BY leaf_index",
            batch.id,
        )
        leaves = [LeafRecord.from_row(r) for r in rows]
        if entry.id not in {leaf.id for leaf in leaves}:
            raise VerificationError(f"entry {entry_id} is not a member of its batch {batch.id}")
        (event,) = anchored_events(batch, [entry], leaves=leaves)
        return event

