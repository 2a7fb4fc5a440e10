"""What the HTTP API reads of the ledger, and the entry's JSON shape.

Ingest never writes entries (the signer does). Reads go through
:class:`shared.repository.Repository`, so database errors arrive as
:class:`DatabaseUnavailable` / :class:`QueryError`. Listing uses keyset pagination over
``(created_at, id)``: the cursor is opaque to clients (32 characters of base64url holding the
last row's key, good for either order) and pages never skip or repeat a row, even while rows
are being inserted.

Never selects the statement bytes into a response log; nothing here logs row contents.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final, Literal, Protocol

from shared.anchored import AnchoredEvent
from shared.db import Database
from shared.messages import SignedEntry
from shared.proofs import PendingProof, entry_proof
from shared.records import BatchRecord, EntryRecord
from shared.repository import EntryQuery, Repository
from shared.statement import format_time

__all__ = [
    "CURSOR_PATTERN",
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
    #: the runbook's integer id of a row from its service (docs/upgrading.md)
    legacy_id: int | None = None

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
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
        if self.legacy_id is not None:
            body["legacy_id"] = self.legacy_id
        return body

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
    def from_record(cls, entry: EntryRecord) -> EntryView:
        return cls(
            id=entry.id,
            subject=entry.subject,
            payload_hash=entry.payload_hash,
            signature=entry.sig,
            public_key=entry.pubkey,
            created_at=entry.created_at,
            rekor_log_id=entry.rekor_log_id,
            rekor_index=entry.rekor_index,
            request_id=entry.request_id,
            key_version=entry.key_version,
            meta=entry.meta,
            submitted_at=entry.submitted_at,
            anchored_at=entry.anchored_at,
            content_sha256=entry.content_sha256,
            legacy_id=entry.legacy_id,
        )


@dataclass(frozen=True, slots=True)
class Cursor:
    """The key of the last row of a page: the next page starts after it, in either order."""

    created_at: datetime
    id: uuid.UUID


@dataclass(frozen=True, slots=True)
class EntryFilter:
    subject: str | None = None
    created_from: datetime | None = None  # inclusive
    created_to: datetime | None = None  # exclusive
    anchored: bool | None = None
    payload_hash: str | None = None  # lowercase hex SHA-256
    order: Order = "asc"
    after: Cursor | None = None
    limit: int = 100


#: a cursor is 24 bytes (created_at as big-endian signed microseconds since the epoch, then
#: the entry id) in unpadded base64url: always 32 characters, and every such string decodes,
#: so the OpenAPI pattern ``^[A-Za-z0-9_-]{32}$`` says exactly what is accepted
CURSOR_PATTERN: Final = r"^[A-Za-z0-9_-]{32}$"
_CURSOR_RE: Final = re.compile(CURSOR_PATTERN)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_TIME_MIN: Final = datetime.min.replace(tzinfo=UTC)
_TIME_MAX: Final = datetime.max.replace(tzinfo=UTC)


def encode_cursor(cursor: Cursor) -> str:
    micros = (cursor.created_at - _EPOCH) // timedelta(microseconds=1)
    raw = micros.to_bytes(8, "big", signed=True) + cursor.id.bytes
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """Parse a cursor (see :data:`CURSOR_PATTERN`); ``ValueError`` if it is not one.

    A key beyond the range of a datetime is clamped to it: no row lies beyond either end.
    """
    if not _CURSOR_RE.fullmatch(text):
        raise ValueError("not a cursor returned by this API (32 characters of base64url)")
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    micros = int.from_bytes(raw[:8], "big", signed=True)
    try:
        created = _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        created = _TIME_MAX if micros > 0 else _TIME_MIN
    return Cursor(created_at=created, id=uuid.UUID(bytes=raw[8:]))


class EntryStore(Protocol):
    """What the HTTP API reads. Errors: DatabaseUnavailable (→ 503)."""

    async def get(self, entry_id: uuid.UUID) -> EntryView | None: ...

    async def get_by_request_id(self, request_id: str) -> EntryView | None: ...

    async def get_by_request_ids(self, request_ids: Sequence[str]) -> dict[str, EntryView]: ...

    async def list(self, flt: EntryFilter) -> list[EntryView]: ...

    async def health(self, *, timeout_s: float) -> bool: ...


class ProofStore(Protocol):
    """What ``GET /entries/{id}/proof`` reads. Errors: DatabaseUnavailable (→ 503);
    VerificationError when the rows no longer match their anchored batch root."""

    async def proof(self, entry_id: uuid.UUID) -> AnchoredEvent | PendingProof | None: ...

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        """The batch row (``GET /batches/{id}/sigstore-bundle``), None when unknown."""
        ...


class PgEntryStore:
    """:class:`EntryStore` and :class:`ProofStore` on the ledger's tables
    (:class:`shared.repository.Repository`)."""

    def __init__(self, db: Database) -> None:
        self._repo = Repository(db)

    async def get(self, entry_id: uuid.UUID) -> EntryView | None:
        entry = await self._repo.entry(entry_id)
        return EntryView.from_record(entry) if entry is not None else None

    async def get_by_request_id(self, request_id: str) -> EntryView | None:
        return (await self.get_by_request_ids([request_id])).get(request_id)

    async def get_by_request_ids(self, request_ids: Sequence[str]) -> dict[str, EntryView]:
        found = await self._repo.entries_by_request_id(request_ids)
        return {rid: EntryView.from_record(entry) for rid, entry in found.items()}

    async def list(self, flt: EntryFilter) -> list[EntryView]:
        after = None if flt.after is None else (flt.after.created_at, flt.after.id)
        entries = await self._repo.entries(EntryQuery(
            subject=flt.subject, created_from=flt.created_from, created_to=flt.created_to,
            anchored=flt.anchored, payload_hash=flt.payload_hash, order=flt.order, after=after,
            limit=flt.limit,
        ))
        return [EntryView.from_record(entry) for entry in entries]

    async def health(self, *, timeout_s: float) -> bool:
        return await self._repo.health(timeout_s=timeout_s)

    async def proof(self, entry_id: uuid.UUID) -> AnchoredEvent | PendingProof | None:
        """The entry's ``ledger.anchored`` event (:func:`shared.proofs.entry_proof`)."""
        entry = await self._repo.entry(entry_id)
        return None if entry is None else await entry_proof(self._repo, entry)

    async def batch(self, batch_id: uuid.UUID) -> BatchRecord | None:
        return await self._repo.batch(batch_id)
