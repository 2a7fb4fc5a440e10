"""The checks of a ledger entry and of its batch, each written once.

Two verifiers run them: :func:`shared.bundle.verify_bundle` on a proof bundle, stopping at
the first problem, and ``ledger audit`` on database rows, reporting every problem it finds.
A check takes plain values (what the entry or the batch claims) and returns what is wrong
with them as sentences, most basic first; an empty list means it passed. The caller names
the check a problem is reported under and decides whether to go on.

=============================  ============================================================
:func:`read_entry_signature`   the signature is ``vault:v<N>:<base64>`` and ``N`` is the
                               entry's key version
:func:`entry_signature_problems`  the Ed25519 signature over the exact statement bytes
                               verifies with the entry's public key
:func:`statement_problems`     the statement is the canonical v1 statement whose fields are
                               the entry's (compared as RFC 8785 JSON: ``1`` is not ``true``)
:func:`audit_path_problems`    the entry's leaf with its audit path leads to the batch root
:func:`manifest_problems`      the manifest is the canonical batch manifest naming the batch
:func:`manifest_digest_problems`  SHA-256 of the manifest is the batch's digest
:func:`anchor_signature_problems`  the ECDSA P-256 anchor signature over that digest verifies
:func:`receipt_problems`       the Rekor receipt (v1; or v2 with its RFC 3161 timestamp)
                               verifies against the pinned log key (v2: and origin and TSA
                               chain) and holds exactly this digest, anchor signature and key
=============================  ============================================================

Everything here is a function of its arguments: no I/O, and nothing that talks to a network
is imported (an auditor runs it offline).
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from cryptography.hazmat.primitives.asymmetric import ed25519

from shared.errors import VerificationError
from shared.merkle import leaf_hash, root_from_inclusion_proof
from shared.signatures import (
    MalformedSignature,
    ed25519_key,
    ed25519_verifies,
    load_public_key_der,
    parse_vault_signature,
    verify_manifest_signature,
)
from shared.statement import (
    STATEMENT_VERSION,
    canonical_json,
    format_time,
    manifest_bytes,
    parse_time,
)
from shared.untrusted import UntrustedInput, parse_json
from shared.verify import (
    ExpectedEntry,
    LogKey,
    Receipt,
    RekorV2Receipt,
    V2Trust,
    VerifiedReceipt,
    VerifiedV2Receipt,
    verify_receipt,
    verify_v2_receipt,
)

__all__ = [
    "STATEMENT_KEYS",
    "StatementCheck",
    "StatementFields",
    "anchor_signature_problems",
    "audit_path_problems",
    "entry_signature_problems",
    "manifest_digest_problems",
    "manifest_problems",
    "read_entry_signature",
    "receipt_problems",
    "same_json",
    "statement_problems",
    "verify_anchor_receipt",
]

#: The fields of a v1 statement (``shared.statement.statement_bytes``).
STATEMENT_KEYS = frozenset({"v", "request_id", "subject", "payload_sha256", "meta", "submitted_at"})

#: ``statement``: the statement itself is not a v1 statement; ``statement_fields``: it is,
#: but a field differs from what the entry says.
StatementCheck = Literal["statement", "statement_fields"]


def same_json(a: Any, b: Any) -> bool:
    """Equal as RFC 8785 JSON (so ``1``, ``1.0`` and ``true`` stay different where JSON does)."""
    try:
        return canonical_json(a) == canonical_json(b)
    except Exception:  # noqa: BLE001 - a value JSON cannot hold is simply not equal
        return False


# --- the entry ----------------------------------------------------------------------------------


def read_entry_signature(signature: str, key_version: int) -> tuple[bytes | None, list[str]]:
    """The raw signature in ``vault:v<N>:<base64>`` (None when malformed) and its problems.

    A signature naming another key version than the entry's is a problem, but its bytes are
    still returned: an auditor may go on to verify them.
    """
    try:
        version, raw = parse_vault_signature(signature)
    except MalformedSignature as exc:
        return None, [f"malformed entry signature: {exc.reason}"]
    if version != key_version:
        return raw, [f"the signature names key version {version}, the entry says {key_version}"]
    return raw, []


def _entry_key(public_key: bytes | str) -> tuple[ed25519.Ed25519PublicKey | None, list[str]]:
    """The entry's Ed25519 public key (PEM or DER), or None and why it is not one."""
    try:
        der = load_public_key_der(public_key)
    except VerificationError:
        return None, ["the entry's public key is not a PEM key"]
    key = ed25519_key(der)
    if key is None:
        return None, ["the entry's public key is not an Ed25519 key"]
    return key, []


def entry_signature_problems(
    public_key: bytes | str, signature: bytes, statement: bytes
) -> list[str]:
    """The raw Ed25519 ``signature`` over ``statement`` must verify with ``public_key``."""
    key, problems = _entry_key(public_key)
    if key is None:
        return problems
    if not ed25519_verifies(key, signature, statement):
        return ["the Ed25519 signature does not verify over the statement with the entry's key"]
    return []


@dataclass(frozen=True, slots=True)
class StatementFields:
    """What an entry (a bundle's, or a database row) says its signed statement holds."""

    request_id: str
    subject: str
    payload_sha256: str
    meta: Any
    submitted_at: datetime


def _entry_field(name: str) -> str:
    return f"entry {name}"


def statement_problems(
    statement: bytes,
    claimed: StatementFields,
    *,
    label: Callable[[str], str] = _entry_field,
    show: Callable[[Any], str] = repr,
) -> list[tuple[StatementCheck, str]]:
    """Compare the signed statement with ``claimed``; every difference, tagged.

    ``label`` names the caller's copy of a field in the sentence (``entry meta`` by default,
    ``column meta`` for the audit) and ``show`` prints a value.
    """
    try:
        doc = parse_json(statement, max_bytes=len(statement))
    except UntrustedInput as exc:
        return [("statement", f"the signed statement is not I-JSON: {exc}")]
    if not isinstance(doc, dict):
        return [("statement", "the signed statement is not a JSON object")]
    if set(doc) != STATEMENT_KEYS:
        return [("statement", f"the signed statement has fields {sorted(doc)}, expected "
                              f"{sorted(STATEMENT_KEYS)}")]
    problems: list[tuple[StatementCheck, str]] = []
    if not same_json(doc["v"], STATEMENT_VERSION):
        problems.append(("statement", f"statement version {doc['v']!r} is not "
                                      f"{STATEMENT_VERSION}"))
    for name, value in (
        ("request_id", claimed.request_id),
        ("subject", claimed.subject),
        ("payload_sha256", claimed.payload_sha256),
        ("meta", claimed.meta),
    ):
        if not same_json(doc[name], value):
            problems.append(("statement_fields", f"{label(name)} {show(value)} is not the "
                                                 f"signed {name} {show(doc[name])}"))
    signed_time = doc["submitted_at"]
    try:
        same_time = isinstance(signed_time, str) and parse_time(signed_time) == claimed.submitted_at
    except ValueError:
        same_time = False
    if not same_time:
        problems.append(("statement_fields", f"{label('submitted_at')} "
                         f"{format_time(claimed.submitted_at)} is not the signed submitted_at "
                         f"{signed_time!r}"))
    return problems


def audit_path_problems(
    leaf: bytes, index: int, size: int, audit_path: Sequence[str], root: str
) -> list[str]:
    """The leaf data (``shared.statement.leaf_bytes``) with the hex ``audit_path`` at ``index``
    of a tree of ``size`` must lead to the hex ``root``."""
    try:
        path = [bytes.fromhex(h) for h in audit_path]
        computed = root_from_inclusion_proof(index, size, leaf_hash(leaf), path)
    except ValueError:
        return ["an audit path hash is not hex"]
    except VerificationError as exc:
        return [str(exc)]
    if computed.hex() != root:
        return [f"the audit path of leaf {index} of {size} leads to {computed.hex()}, not the "
                f"batch root {root}"]
    return []


# --- the batch ----------------------------------------------------------------------------------


def _parse_manifest(manifest: bytes) -> dict[str, Any] | None:
    """The manifest's fields if it is exactly a canonical batch manifest, else None."""
    try:
        doc = parse_json(manifest, max_bytes=len(manifest))
        rebuilt = manifest_bytes(
            batch_id=uuid.UUID(doc["batch_id"]),
            size=doc["size"],
            root_hex=doc["root"],
            created_at=parse_time(doc["created_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    return doc if rebuilt == manifest and isinstance(doc, dict) else None


def manifest_problems(
    manifest: bytes,
    *,
    batch_id: uuid.UUID,
    size: int,
    root: str,
    created_at: datetime | None = None,
) -> list[str]:
    """The manifest must be canonical and name this batch id, size, root (and creation time,
    when the caller knows it: a bundle carries it only inside the manifest)."""
    doc = _parse_manifest(manifest)
    if doc is None:
        return ["not the canonical batch manifest (fields or form differ)"]
    claimed: list[tuple[str, Any]] = [("batch_id", str(batch_id)), ("size", size), ("root", root)]
    if created_at is not None:
        claimed.append(("created_at", format_time(created_at)))
    return [
        f"manifest {name} {doc[name]!r} is not the batch's {value!r}"
        for name, value in claimed
        if not same_json(doc[name], value)
    ]


def manifest_digest_problems(manifest: bytes, manifest_sha256: str) -> list[str]:
    """SHA-256 of the manifest bytes must be the batch's hex ``manifest_sha256``."""
    digest = hashlib.sha256(manifest).hexdigest()
    if digest != manifest_sha256:
        return [f"SHA-256 of the manifest is {digest}, not {manifest_sha256}"]
    return []


def anchor_signature_problems(
    anchor_public_key: bytes | str, manifest: bytes, signature: bytes
) -> list[str]:
    """The ECDSA P-256 ``signature`` over SHA-256 of ``manifest`` must verify with the key."""
    try:
        verify_manifest_signature(anchor_public_key, hashlib.sha256(manifest).digest(), signature)
    except (VerificationError, ValueError) as exc:
        return [str(exc)]
    return []


def verify_anchor_receipt(
    receipt: Receipt,
    log_key: LogKey | None,
    *,
    v2_trust: V2Trust | None = None,
    manifest: bytes,
    anchor_signature: bytes,
    anchor_public_key: bytes | str,
) -> VerifiedReceipt | VerifiedV2Receipt:
    """Verify a batch's receipt, of either version, and that its body holds exactly SHA-256
    of ``manifest``, ``anchor_signature`` and ``anchor_public_key``: a Rekor v1 receipt
    against the pinned ``log_key`` (:func:`shared.verify.verify_receipt`), a v2 one against
    ``v2_trust`` (:func:`shared.verify_v2.verify_v2_receipt`, with its RFC 3161 timestamp).
    Raises :class:`VerificationError`; a receipt check's message starts with its name."""
    expected = ExpectedEntry(
        hashlib.sha256(manifest).hexdigest(), anchor_signature, anchor_public_key
    )
    if isinstance(receipt, RekorV2Receipt):
        if v2_trust is None:
            raise VerificationError(
                "a Rekor v2 receipt: no pinned v2 trust (log key, origin, TSA chain) to "
                "verify it with")
        return verify_v2_receipt(receipt, v2_trust, expected=expected)
    if log_key is None:
        raise VerificationError("a Rekor v1 receipt: no pinned Rekor v1 log key to verify "
                                "it with")
    return verify_receipt(receipt, log_key, expected=expected)


def receipt_problems(
    receipt: Receipt,
    log_key: LogKey | None,
    *,
    v2_trust: V2Trust | None = None,
    manifest: bytes,
    anchor_signature: bytes,
    anchor_public_key: bytes | str,
) -> list[str]:
    """The problem :func:`verify_anchor_receipt` finds, if any. A problem starts with the
    receipt check that failed (``set: …``, ``timestamp: …``)."""
    try:
        verify_anchor_receipt(receipt, log_key, v2_trust=v2_trust, manifest=manifest,
                              anchor_signature=anchor_signature,
                              anchor_public_key=anchor_public_key)
    except VerificationError as exc:
        return [str(exc)]
    return []
