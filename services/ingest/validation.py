"""Validation of ``POST /append`` bodies: turns raw bytes into a checked append request.

Pure functions, no I/O. Every problem raises :class:`RequestRejected` naming the field and
what is wrong, with the HTTP status it maps to (400, 413 or 415); the handler turns it into
``{"error": ..., "field": ..., "message": ...}`` and publishes nothing.

The payload is decoded (strict base64), hashed with SHA-256 and dropped here: only
:attr:`ValidAppend.payload_sha256` leaves this module. Messages never quote the payload.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import jsonschema
import jsonschema.exceptions
import jsonschema.validators
import rfc8785

from shared import fastjson
from shared.errors import ConfigError, InvalidMessage
from shared.messages import REQUEST_ID_PATTERN, SUBJECT_PATTERN

__all__ = [
    "BATCH_MAX_ENTRIES",
    "BODY_OVERHEAD_BYTES",
    "MetaSchema",
    "RequestRejected",
    "ValidAppend",
    "body_limit",
    "parse_append",
    "parse_append_batch",
    "resolve_request_id",
]

_SUBJECT_RE: Final = re.compile(SUBJECT_PATTERN)
_REQUEST_ID_RE: Final = re.compile(REQUEST_ID_PATTERN)
_SHA256_RE: Final = re.compile(r"^[0-9a-fA-F]{64}$")
# Patterns are matched with fullmatch: ``$`` alone also matches before a final newline, and
# "abc\n" would pass here yet be refused by the signer (and by the OpenAPI document).
_SUBJECT_MAX: Final = 256
_REQUEST_ID_MAX: Final = 128
_KNOWN_FIELDS: Final = frozenset({"subject", "payload", "payload_sha256", "meta", "request_id"})
_NUL_PROBLEM: Final = (
    "must not contain U+0000 in a string or key (PostgreSQL JSONB cannot store it)"
)
#: numbers in meta stay within +-(2^53-1): larger integers cannot be canonicalised exactly
#: (RFC 8785), and PostgreSQL's JSONB gives larger floats back as integers of hundreds of digits
_SAFE_NUMBER: Final = 2**53 - 1
_NUMBER_PROBLEM: Final = (
    "has a number beyond +-(2^53-1) (9007199254740991), which cannot be canonicalised "
    "(RFC 8785) and stored exactly"
)
#: room for the JSON around payload and meta (subject, request id, quotes, whitespace)
BODY_OVERHEAD_BYTES: Final = 4096
#: most entries one ``POST /append/batch`` may carry
BATCH_MAX_ENTRIES: Final = 1000


class RequestRejected(InvalidMessage):
    """A request the client must fix; ``status`` is the HTTP status to answer.

    An :class:`InvalidMessage`: the input itself is at fault, so it is refused and never
    retried — over HTTP that is a 4xx instead of a dead-letter topic.
    """

    def __init__(
        self, status: int, field: str, message: str, *, error: str = "invalid_request"
    ) -> None:
        super().__init__(error, detail=f"{field}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.error = error

    def body(self) -> dict[str, str]:
        return {"error": self.error, "field": self.field, "message": self.message}


@dataclass(frozen=True, slots=True)
class ValidAppend:
    """A validated append: the payload is already reduced to its hash."""

    subject: str
    payload_sha256: str
    meta: dict[str, Any]
    request_id: str | None  # from the body; the header is reconciled by resolve_request_id


def _b64_len(n: int) -> int:
    return 4 * ((n + 2) // 3)


def body_limit(max_payload_bytes: int, max_meta_bytes: int) -> int:
    """The largest request body worth reading: base64 payload + meta + overhead.

    Meta may be written with more whitespace than its compact form; allow twice its limit.
    """
    return _b64_len(max_payload_bytes) + 2 * max_meta_bytes + BODY_OVERHEAD_BYTES


class MetaSchema:
    """An optional JSON Schema for ``meta``, loaded and checked once at start-up."""

    def __init__(self, schema: dict[str, Any] | None) -> None:
        self._validator: Any = None
        if schema is not None:
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.exceptions.SchemaError as exc:
                raise ConfigError(
                    f"meta JSON Schema is not a valid schema: {exc.message}"
                ) from None
            self._validator = cls(schema)

    @classmethod
    def from_path(cls, path: str) -> MetaSchema:
        """Load ``path`` (empty: no schema); :class:`ConfigError` if unreadable or invalid."""
        if not path:
            return cls(None)
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ConfigError(
                f"LEDGER_META_SCHEMA_PATH={path!r}: cannot load a JSON Schema ({exc})"
            ) from None
        if not isinstance(doc, dict):
            raise ConfigError(f"LEDGER_META_SCHEMA_PATH={path!r}: a schema must be an object")
        return cls(doc)

    @property
    def enabled(self) -> bool:
        return self._validator is not None

    def check(self, meta: dict[str, Any]) -> None:
        if self._validator is None:
            return
        error = jsonschema.exceptions.best_match(self._validator.iter_errors(meta))
        if error is not None:
            where = "".join(f"[{p!r}]" for p in error.absolute_path)
            raise RequestRejected(
                400,
                "meta",
                f"does not match the meta schema at meta{where}: {error.message}"[:500],
            )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _meta_problem(value: Any, limit: int) -> str | None:
    """What makes ``meta`` unstorable (too deep, a U+0000, a number too large), or None.

    Iterative, so a hostile nesting cannot blow the Python stack.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        children: Any
        if isinstance(item, str):
            if "\x00" in item:
                return _NUL_PROBLEM
            continue
        if isinstance(item, int | float) and not isinstance(item, bool):
            if not -_SAFE_NUMBER <= item <= _SAFE_NUMBER:
                return _NUMBER_PROBLEM
            continue
        if isinstance(item, dict):
            if any("\x00" in key for key in item):
                return _NUL_PROBLEM
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if level > limit:
            return f"is nested too deeply (at most {limit} levels of objects/arrays)"
        stack.extend((child, level + 1) for child in children)
    return None


def _check_subject(body: dict[str, Any]) -> str:
    if "subject" not in body or body["subject"] is None:
        raise RequestRejected(400, "subject", "is required")
    subject = body["subject"]
    if not isinstance(subject, str):
        raise RequestRejected(400, "subject", "must be a string")
    if subject == "":
        raise RequestRejected(400, "subject", "must not be empty")
    if len(subject) > _SUBJECT_MAX:
        raise RequestRejected(
            400, "subject", f"is too long ({len(subject)} characters, at most {_SUBJECT_MAX})"
        )
    if not _SUBJECT_RE.fullmatch(subject):
        raise RequestRejected(
            400,
            "subject",
            "has characters outside the allowed set: it must start with a letter or digit "
            "and contain only letters, digits and . _ : / @ + = -",
        )
    return subject


def _check_request_id(value: Any, field: str) -> str:
    if not isinstance(value, str):
        raise RequestRejected(400, field, "must be a string")
    if len(value) > _REQUEST_ID_MAX:
        raise RequestRejected(400, field, f"is too long (at most {_REQUEST_ID_MAX} characters)")
    if not _REQUEST_ID_RE.fullmatch(value):
        raise RequestRejected(
            400,
            field,
            "must start with a letter or digit and contain only letters, digits and . _ : -",
        )
    return value


def _payload_hash(body: dict[str, Any], max_payload_bytes: int) -> str:
    has_payload = body.get("payload") is not None
    has_hash = body.get("payload_sha256") is not None
    if has_payload and has_hash:
        raise RequestRejected(
            400, "payload", "give either payload or payload_sha256, not both"
        )
    if not has_payload and not has_hash:
        raise RequestRejected(
            400, "payload", "is required (or payload_sha256, the hex SHA-256 of the payload)"
        )
    if has_hash:
        digest = body["payload_sha256"]
        if not isinstance(digest, str) or not _SHA256_RE.fullmatch(digest):
            raise RequestRejected(
                400, "payload_sha256", "must be 64 hexadecimal characters (a SHA-256 digest)"
            )
        return digest.lower()
    encoded = body["payload"]
    if not isinstance(encoded, str):
        raise RequestRejected(400, "payload", "must be a base64 string")
    if len(encoded) > _b64_len(max_payload_bytes):
        raise RequestRejected(
            413, "payload", f"is too large (at most {max_payload_bytes} bytes once decoded)",
            error="payload_too_large",
        )
    try:
        raw = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise RequestRejected(
            400, "payload", "is not valid base64 (RFC 4648 standard alphabet, with padding)"
        ) from None
    if len(raw) > max_payload_bytes:
        raise RequestRejected(
            413, "payload", f"is too large (at most {max_payload_bytes} bytes once decoded)",
            error="payload_too_large",
        )
    if not raw:
        raise RequestRejected(400, "payload", "must not be empty")
    return hashlib.sha256(raw).hexdigest()


def _check_meta(
    body: dict[str, Any], *, max_bytes: int, max_depth: int, schema: MetaSchema
) -> dict[str, Any]:
    meta = body.get("meta")
    if meta is None:
        meta = {}
    if not isinstance(meta, dict):
        raise RequestRejected(400, "meta", "must be a JSON object")
    problem = _meta_problem(meta, max_depth)
    if problem is not None:
        raise RequestRejected(400, "meta", problem)
    try:
        canonical = fastjson.canonical(meta)
    except (rfc8785.CanonicalizationError, ValueError, TypeError) as exc:
        # e.g. integers beyond 2**53: they cannot be signed reproducibly
        raise RequestRejected(400, "meta", f"cannot be canonicalised (RFC 8785): {exc}") from None
    if len(canonical) > max_bytes:
        raise RequestRejected(
            400,
            "meta",
            f"is too large ({len(canonical)} bytes as canonical JSON, at most {max_bytes})",
        )
    schema.check(meta)
    return meta


def _load(raw: bytes) -> Any:
    try:
        return fastjson.loads(raw, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = exc.msg if isinstance(exc, json.JSONDecodeError) else type(exc).__name__
        raise RequestRejected(400, "body", f"is not valid JSON ({detail})") from None


def _validate_append(
    body: Any,
    *,
    max_payload_bytes: int,
    max_meta_bytes: int,
    max_meta_depth: int,
    meta_schema: MetaSchema,
) -> ValidAppend:
    if not isinstance(body, dict):
        raise RequestRejected(400, "body", "must be a JSON object")
    unknown = sorted(set(body) - _KNOWN_FIELDS)
    if unknown:
        raise RequestRejected(400, unknown[0][:64], "is not a known field")
    subject = _check_subject(body)
    payload_sha256 = _payload_hash(body, max_payload_bytes)
    meta = _check_meta(body, max_bytes=max_meta_bytes, max_depth=max_meta_depth, schema=meta_schema)
    request_id = body.get("request_id")
    if request_id is not None:
        request_id = _check_request_id(request_id, "request_id")
    return ValidAppend(
        subject=subject, payload_sha256=payload_sha256, meta=meta, request_id=request_id
    )


def parse_append(
    raw: bytes,
    *,
    max_payload_bytes: int,
    max_meta_bytes: int,
    max_meta_depth: int,
    meta_schema: MetaSchema,
) -> ValidAppend:
    """Parse and validate an append body; raise :class:`RequestRejected` on any problem."""
    return _validate_append(
        _load(raw), max_payload_bytes=max_payload_bytes, max_meta_bytes=max_meta_bytes,
        max_meta_depth=max_meta_depth, meta_schema=meta_schema,
    )


def parse_append_batch(
    raw: bytes,
    *,
    max_payload_bytes: int,
    max_meta_bytes: int,
    max_meta_depth: int,
    meta_schema: MetaSchema,
) -> list[ValidAppend | RequestRejected]:
    """Parse a ``POST /append/batch`` body: ``{"entries": [<append body>, ...]}``.

    A malformed envelope raises :class:`RequestRejected` (the whole request fails); each
    entry is validated like a ``POST /append`` body, and a bad one becomes its own
    :class:`RequestRejected` in the result, at its index, without failing the others.
    """
    doc = _load(raw)
    if not isinstance(doc, dict):
        raise RequestRejected(400, "body", "must be a JSON object with an entries array")
    unknown = sorted(set(doc) - {"entries"})
    if unknown:
        raise RequestRejected(400, unknown[0][:64], "is not a known field")
    entries = doc.get("entries")
    if not isinstance(entries, list):
        raise RequestRejected(400, "entries", "is required: an array of append requests")
    if not 1 <= len(entries) <= BATCH_MAX_ENTRIES:
        raise RequestRejected(
            413 if entries else 400, "entries",
            f"must hold between 1 and {BATCH_MAX_ENTRIES} entries (got {len(entries)})",
            error="payload_too_large" if entries else "invalid_request",
        )
    out: list[ValidAppend | RequestRejected] = []
    for entry in entries:
        try:
            out.append(_validate_append(
                entry, max_payload_bytes=max_payload_bytes, max_meta_bytes=max_meta_bytes,
                max_meta_depth=max_meta_depth, meta_schema=meta_schema,
            ))
        except RequestRejected as exc:
            out.append(exc)
    return out


def resolve_request_id(body_value: str | None, header_value: str | None) -> str | None:
    """Reconcile ``request_id`` and the ``Idempotency-Key`` header (both given: must match)."""
    if header_value is not None:
        header_value = _check_request_id(header_value.strip(), "Idempotency-Key")
    if body_value is not None and header_value is not None and body_value != header_value:
        raise RequestRejected(
            400,
            "request_id",
            "differs from the Idempotency-Key header; send one or make them equal",
        )
    return body_value if body_value is not None else header_value
