"""What gets signed and what gets hashed into the Merkle tree.

* The **statement** is the exact byte string Vault signs with the Ed25519 ledger key: RFC 8785
  canonical JSON of the statement version, request id, subject, payload hash, meta and the
  submission time. Storing these bytes next to the signature lets anyone re-verify an entry
  without trusting how we serialise JSON.
* The **leaf** of an entry commits to its id, the statement (by hash), the signature and the
  key version; it is what the anchorer's RFC 6962 tree is built over.
* The **manifest** names one batch: its id, size, Merkle root and creation time. Its SHA-256
  is signed with the ECDSA P-256 anchor key and that is what goes to Rekor.
* The **content hash** is what idempotency compares: the same request id with the same
  subject, payload hash and meta is the same request, whatever its submission time.
* A **legacy leaf** commits to a row imported from the runbook's service (``ledger
  import-legacy``, ``docs/upgrading.md``). Such a row has no statement: the runbook signed the
  raw payload, which the ledger never held. Its leaf data is :data:`LEGACY_LEAF_PREFIX`
  followed by canonical JSON of every column the runbook wrote (original integer id,
  subject, payload hash, meta, creation time, signature, public key) and the key name.
  Ordinary leaf data is a canonical JSON object and so always starts with ``{``; legacy leaf
  data never does, so neither kind can ever pass for the other.

Nothing here does I/O; auditors use it offline.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any

from shared import fastjson

__all__ = [
    "ENTRY_ID_NAMESPACE",
    "LEGACY_ID_NAMESPACE",
    "LEGACY_LEAF_PREFIX",
    "STATEMENT_VERSION",
    "canonical_json",
    "content_sha256",
    "entry_id_for",
    "format_time",
    "leaf_bytes",
    "legacy_entry_id",
    "legacy_leaf_bytes",
    "manifest_bytes",
    "parse_time",
    "statement_bytes",
]

STATEMENT_VERSION = 1
#: entry ids are UUIDv5 of the request id in this namespace, so every stage (and the client)
#: can name an entry before it is stored, and a replay can never mint a second id.
ENTRY_ID_NAMESPACE = uuid.UUID("6f1c2b1e-0c57-4b7e-9c55-2f3b8f4c1a10")
#: a row of the runbook's service gets the UUIDv3 of its integer id in this namespace: MD5,
#: because the upgrade migration computes it in SQL and PostgreSQL and CockroachDB have MD5
#: built in but not SHA-1. The ids only need to be distinct and reproducible.
LEGACY_ID_NAMESPACE = uuid.UUID("0b9e5d52-7c1f-4e0a-9a55-3d6a1c2e8f01")
#: what legacy leaf data starts with (never ``{``, the first byte of every ordinary leaf)
LEGACY_LEAF_PREFIX = b"signed-ledger/legacy-runbook-entry/v1\n"


def canonical_json(value: Any) -> bytes:
    """RFC 8785 (JCS) canonical JSON (:func:`shared.fastjson.canonical`)."""
    return fastjson.canonical(value)


def format_time(ts: datetime) -> str:
    """The one textual form of a timestamp inside signed data: UTC, microseconds, ``Z``."""
    if ts.tzinfo is None:
        raise ValueError("timestamps in signed data must be timezone-aware")
    # isoformat is strftime's result here (4-digit years: datetime's range), in C
    return ts.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def parse_time(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def entry_id_for(request_id: str) -> uuid.UUID:
    return uuid.uuid5(ENTRY_ID_NAMESPACE, request_id)


def statement_bytes(
    *,
    request_id: str,
    subject: str,
    payload_sha256: str,
    meta: dict[str, Any],
    submitted_at: datetime,
) -> bytes:
    return canonical_json(
        {
            "v": STATEMENT_VERSION,
            "request_id": request_id,
            "subject": subject,
            "payload_sha256": payload_sha256,
            "meta": meta,
            "submitted_at": format_time(submitted_at),
        }
    )


def content_sha256(*, subject: str, payload_sha256: str, meta: dict[str, Any]) -> str:
    body = canonical_json({"subject": subject, "payload_sha256": payload_sha256, "meta": meta})
    return hashlib.sha256(body).hexdigest()


def leaf_bytes(
    *, entry_id: uuid.UUID, statement: bytes, signature: str, key_name: str, key_version: int
) -> bytes:
    """The Merkle leaf data of an entry (the tree hashes it as ``SHA256(0x00 || leaf)``)."""
    return canonical_json(
        {
            "v": 1,
            "entry_id": str(entry_id),
            "statement_sha256": hashlib.sha256(statement).hexdigest(),
            "signature": signature,
            "key": key_name,
            "key_version": key_version,
        }
    )


def legacy_entry_id(legacy_id: int) -> uuid.UUID:
    """The id of the runbook's row ``legacy_id`` (what the upgrade migration computes)."""
    return uuid.uuid3(LEGACY_ID_NAMESPACE, str(legacy_id))


def legacy_leaf_bytes(
    *,
    entry_id: uuid.UUID,
    legacy_id: int,
    subject: str,
    payload_sha256: str,
    meta: dict[str, Any],
    created_at: datetime,
    signature: str,
    public_key: str,
    key_name: str,
) -> bytes:
    """The Merkle leaf data of a row imported from the runbook's service (see above)."""
    return LEGACY_LEAF_PREFIX + canonical_json(
        {
            "v": 1,
            "entry_id": str(entry_id),
            "legacy_id": str(legacy_id),  # a string: CockroachDB's ids exceed 2**53
            "subject": subject,
            "payload_sha256": payload_sha256,
            "meta": meta,
            "created_at": format_time(created_at),
            "signature": signature,
            "public_key": public_key,
            "key": key_name,
        }
    )


def manifest_bytes(
    *, batch_id: uuid.UUID, size: int, root_hex: str, created_at: datetime
) -> bytes:
    return canonical_json(
        {
            "v": 1,
            "type": "signed-ledger/batch",
            "batch_id": str(batch_id),
            "size": size,
            "tree": "rfc6962-sha256",
            "root": root_hex,
            "created_at": format_time(created_at),
        }
    )
