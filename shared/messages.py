"""Message contracts of the Kafka topics, versioned, with JSON Schema published in ``schemas/``.

| topic              | model            | key     |
|--------------------|------------------|---------|
| ``ledger.append``  | AppendRequest    | subject |
| ``ledger.signed``  | SignedEntry      | subject |
| ``ledger.anchored``| AnchoredEntry    | subject |

Every message is a JSON object with a ``version`` field. A consumer that meets a version it
does not know dead-letters the message rather than guessing. Producers in other languages
conform to the JSON Schema files, which ``ledger schemas`` regenerates and a test keeps in
sync with these models.
"""

from __future__ import annotations

import base64
import json
import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    field_validator,
)

from shared import fastjson
from shared.errors import InvalidMessage
from shared.merkle import leaf_hash

__all__ = [
    "REQUEST_ID_PATTERN",
    "SUBJECT_PATTERN",
    "AnchoredEntry",
    "AnyReceiptInfo",
    "AppendRequest",
    "BatchInfo",
    "ReceiptInfo",
    "ReceiptInfoV2",
    "SignedEntry",
    "append_request_fields",
    "decode",
    "decode_object",
    "signed_entry_fields",
    "write_schemas",
]

SUBJECT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:/@+=-]{0,255}$"
REQUEST_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"
SHA256_HEX_PATTERN = r"^[0-9a-f]{64}$"


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class AppendRequest(_Message):
    """``ledger.append``: a request to append one entry (the payload's hash, never the payload)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"$id": "ledger.append.v1"}
    )

    version: Literal[1] = 1
    request_id: str = Field(pattern=REQUEST_ID_PATTERN, description="idempotency key")
    subject: str = Field(pattern=SUBJECT_PATTERN, description="what the entry is about")
    payload_sha256: str = Field(pattern=SHA256_HEX_PATTERN, description="lowercase hex SHA-256")
    meta: dict[str, Any] = Field(default_factory=dict, description="a JSON object")
    submitted_at: datetime = Field(description="RFC 3339 with a time zone")

    @field_validator("submitted_at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("submitted_at needs a time zone (e.g. 2026-01-01T00:00:00Z)")
        return v


class SignedEntry(_Message):
    """``ledger.signed``: a stored entry with its Ed25519 signature, ready to be anchored."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"$id": "ledger.signed.v1"}
    )

    version: Literal[1] = 1
    entry_id: uuid.UUID
    request_id: str = Field(pattern=REQUEST_ID_PATTERN)
    subject: str = Field(pattern=SUBJECT_PATTERN)
    payload_sha256: str = Field(pattern=SHA256_HEX_PATTERN)
    meta: dict[str, Any]
    submitted_at: datetime
    created_at: datetime
    statement: str = Field(description="base64 of the exact RFC 8785 bytes that were signed")
    signature: str = Field(description="Vault Transit signature, vault:v<N>:<base64>")
    key_name: str
    key_version: int = Field(ge=1)
    public_key: str = Field(description="PEM of the Ed25519 key version that signed")


class BatchInfo(_Message):
    batch_id: uuid.UUID
    size: int = Field(ge=1)
    root: str = Field(pattern=SHA256_HEX_PATTERN)
    manifest: str = Field(description="base64 of the canonical manifest bytes")
    manifest_sha256: str = Field(pattern=SHA256_HEX_PATTERN)
    anchor_signature: str = Field(description="base64 ASN.1 ECDSA P-256 signature")
    anchor_key_version: int = Field(ge=1)
    anchor_public_key: str = Field(description="PEM of the anchor key version")


class ReceiptInfo(_Message):
    """A Rekor v1 receipt, as verified by the anchorer before it was trusted."""

    uuid: str
    log_index: int = Field(ge=0, description="global log index (signed by the SET)")
    tree_index: int = Field(ge=0, description="index inside the tree (used by the proof)")
    log_id: str
    integrated_time: int
    body: str = Field(description="base64 canonical entry body as Rekor returned it")
    signed_entry_timestamp: str = Field(description="base64 SET")
    tree_size: int = Field(ge=1)
    root_hash: str
    hashes: list[str]
    checkpoint: str


class ReceiptInfoV2(_Message):
    """A Rekor v2 receipt with its RFC 3161 timestamp, as verified by the anchorer before it
    was trusted (:func:`shared.verify_v2.verify_v2_receipt`). Its ``api`` tells it from a
    :class:`ReceiptInfo` (which has none)."""

    api: Literal["v2"]
    log_index: int = Field(ge=0, description="the entry's index in the log (one tree)")
    log_id: str = Field(description="hex key id of the log key (C2SP signed-note key id)")
    body: str = Field(description="base64 canonical entry body as Rekor returned it")
    tree_size: int = Field(ge=1)
    root_hash: str
    hashes: list[str]
    checkpoint: str = Field(description="the signed note the inclusion proof is for")
    timestamp: str = Field(
        description="base64 DER RFC 3161 TimeStampResp over the batch's anchor signature"
    )

    @property
    def uuid(self) -> str:
        """The entry's leaf hash in hex, if the body is base64 (else empty)."""
        try:
            return leaf_hash(base64.b64decode(self.body, validate=True)).hex()
        except ValueError:
            return ""


def _receipt_form(value: Any) -> str:
    is_v2 = (isinstance(value, dict) and "api" in value) or isinstance(value, ReceiptInfoV2)
    return "v2" if is_v2 else "v1"


#: ``receipt``: Rekor v1's (no ``api``) or Rekor v2's (``"api": "v2"``).
AnyReceiptInfo = Annotated[
    Annotated[ReceiptInfo, Tag("v1")] | Annotated[ReceiptInfoV2, Tag("v2")],
    Discriminator(_receipt_form),
]


class AnchoredEntry(_Message):
    """``ledger.anchored``: everything needed to verify an entry offline, years later.

    Identical for every emission of the same entry; consumers de-duplicate by ``entry_id``.
    """

    model_config = ConfigDict(
        frozen=True, extra="forbid", json_schema_extra={"$id": "ledger.anchored.v1"}
    )

    version: Literal[1] = 1
    entry: SignedEntry
    leaf_index: int = Field(ge=0)
    audit_path: list[str] = Field(description="hex sibling hashes, leaf to root (RFC 6962)")
    batch: BatchInfo
    receipt: AnyReceiptInfo
    anchored_at: datetime


def append_request_fields(
    *,
    request_id: str,
    subject: str,
    payload_sha256: str,
    meta: dict[str, Any],
    submitted_at: datetime,
) -> dict[str, Any]:
    """An :class:`AppendRequest` as a plain dict in the model's field order (ingest's hot path:
    its values are validated already); ``fastjson.dumps`` of it is the model's JSON."""
    return {
        "version": 1,
        "request_id": request_id,
        "subject": subject,
        "payload_sha256": payload_sha256,
        "meta": meta,
        "submitted_at": submitted_at,
    }


def signed_entry_fields(
    *,
    entry_id: uuid.UUID,
    request_id: str,
    subject: str,
    payload_sha256: str,
    meta: dict[str, Any],
    submitted_at: datetime,
    created_at: datetime,
    statement: bytes,
    signature: str,
    key_name: str,
    key_version: int,
    public_key: str,
) -> dict[str, Any]:
    """A :class:`SignedEntry` as a plain dict in the model's field order, for the hot paths.

    ``fastjson.dumps`` of it gives the bytes ``SignedEntry(...).model_dump_json()`` gives
    (``tests/unit/test_messages.py`` keeps the two equal) without building a model: the
    values come from our own database row or from an already validated request.
    """
    return {
        "version": 1,
        "entry_id": str(entry_id),
        "request_id": request_id,
        "subject": subject,
        "payload_sha256": payload_sha256,
        "meta": meta,
        "submitted_at": submitted_at,
        "created_at": created_at,
        "statement": base64.b64encode(statement).decode("ascii"),
        "signature": signature,
        "key_name": key_name,
        "key_version": key_version,
        "public_key": public_key,
    }


M = TypeVar("M", bound=BaseModel)

_TOPIC_MODELS: dict[str, type[_Message]] = {
    "ledger.append": AppendRequest,
    "ledger.signed": SignedEntry,
    "ledger.anchored": AnchoredEntry,
}


def decode_object(raw: bytes | None) -> dict[str, Any]:
    """A Kafka value as a version-1 JSON object; any problem raises :class:`InvalidMessage`."""
    if raw is None:
        raise InvalidMessage("empty message", detail="the message has no value")
    try:
        obj = fastjson.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidMessage("not JSON", detail=str(exc)[:200]) from None
    except RecursionError:
        # a poison message must be dead-lettered, not crash the stage that reads it
        raise InvalidMessage("not JSON", detail="nested too deeply to decode") from None
    if not isinstance(obj, dict):
        raise InvalidMessage("not a JSON object", detail=type(obj).__name__)
    if obj.get("version") != 1:
        raise InvalidMessage("unsupported version", detail=_version_detail(obj.get("version")))
    return obj


def _version_detail(version: Any) -> str:
    """Names a bad ``version`` without echoing what a producer put there (it may be
    anything, a payload or a token included): numbers and digit strings only."""
    if version is None or isinstance(version, (bool, int, float)):
        return f"version={version!r}"
    if isinstance(version, str) and version.isdigit() and len(version) <= 4:
        return f"version={version!r}"
    size = (f" of {len(version)} characters" if isinstance(version, str)
            else f" of {len(version)} items" if isinstance(version, (list, dict)) else "")
    return f"version is a {type(version).__name__}{size}, not the number 1"


def decode(model: type[M], raw: bytes | None) -> M:
    """Parse a Kafka value into ``model``; any problem raises :class:`InvalidMessage`."""
    obj = decode_object(raw)
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidMessage("invalid fields", detail=problems[:500]) from None


def schema_documents() -> dict[str, dict[str, Any]]:
    """File name → JSON Schema document for every topic."""
    return {
        f"{topic}.v1.schema.json": model.model_json_schema()
        for topic, model in _TOPIC_MODELS.items()
    }


def write_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, doc in schema_documents().items():
        path = directory / name
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
