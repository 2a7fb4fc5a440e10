"""Offline verification of a proof bundle: one ``ledger.anchored`` event, end to end.

A *bundle* is an :class:`shared.messages.AnchoredEntry` (the ``ledger.anchored`` event, also
served by ``GET /entries/{id}/proof``). :func:`verify_bundle` checks the whole chain from the
entry to the pinned Rekor log key, in this order, and raises :class:`BundleVerificationError`
(a :class:`shared.errors.VerificationError`) naming the first step that fails (its ``step``
is one of :data:`STEPS`; ``passed`` holds the steps that passed before it):

``bundle``            the document is an AnchoredEntry (version 1, every field well formed)
``statement``         the statement is base64; the signature is ``vault:v<N>:<base64>`` and
                      ``N`` is the entry's key version
``entry_key``         (only with a pinned entry key) the entry's public key is the pinned one
``entry_signature``   the Ed25519 signature over the exact statement bytes verifies with the
                      entry's public key
``statement_fields``  the statement is the JSON object whose fields are the entry's request
                      id, subject, payload hash, meta and submission time (compared as
                      RFC 8785 canonical JSON, so ``1`` is not ``true``)
``audit_path``        the leaf (``shared.statement.leaf_bytes``) with the audit path at
                      ``leaf_index`` of a tree of ``batch.size`` leads to ``batch.root``
``manifest``          the manifest is the canonical batch manifest naming this batch id,
                      size and root
``manifest_digest``   SHA-256 of the manifest bytes is ``batch.manifest_sha256``
``anchor_signature``  the ECDSA P-256 signature over that digest verifies with the anchor key
``receipt``           the Rekor v1 receipt verifies against the pinned log key (log id, uuid,
                      SET, inclusion proof, checkpoint) and its hashedrekord body holds exactly
                      this digest, anchor signature and anchor key
``payload``           (only with a payload) SHA-256 of the payload is the entry's payload hash

The Rekor log key is never taken from the bundle: the verifier pins it. Nothing here does
I/O or imports anything that talks to a network.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, get_args

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from pydantic import ValidationError

from shared.errors import VerificationError
from shared.merkle import leaf_hash, root_from_inclusion_proof
from shared.messages import AnchoredEntry
from shared.signatures import (
    MalformedSignature,
    load_public_key_der,
    parse_vault_signature,
    verify_manifest_signature,
)
from shared.statement import (
    STATEMENT_VERSION,
    canonical_json,
    format_time,
    leaf_bytes,
    manifest_bytes,
    parse_time,
)
from shared.verify import (
    ExpectedEntry,
    ReceiptVerificationError,
    RekorReceipt,
    load_log_key,
    verify_receipt,
)

__all__ = [
    "STEPS",
    "BundleVerificationError",
    "StepResult",
    "VerificationReport",
    "verify_bundle",
]

Step = Literal[
    "bundle",
    "statement",
    "entry_key",
    "entry_signature",
    "statement_fields",
    "audit_path",
    "manifest",
    "manifest_digest",
    "anchor_signature",
    "receipt",
    "payload",
]
#: The steps of :func:`verify_bundle`, in the order it runs them.
STEPS: tuple[Step, ...] = get_args(Step)


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step that passed, with what it established (for people reading the output)."""

    step: Step
    detail: str


class BundleVerificationError(VerificationError):
    """A step failed; ``step`` names it, ``passed`` lists the steps that passed before it."""

    def __init__(self, step: Step, detail: str, passed: tuple[StepResult, ...]) -> None:
        super().__init__(f"{step}: {detail}")
        self.step: Step = step
        self.detail = detail
        self.passed = passed


@dataclass(frozen=True, slots=True)
class VerificationReport:
    """What a verified bundle proves: this entry, in this batch, anchored in this Rekor entry."""

    entry_id: uuid.UUID
    request_id: str
    subject: str
    payload_sha256: str
    key_name: str
    key_version: int
    batch_id: uuid.UUID
    leaf_index: int
    batch_size: int
    batch_root: str
    manifest_sha256: str
    rekor_uuid: str
    rekor_log_index: int
    rekor_log_id: str
    #: Rekor's integration time, signed by the log (the SET): the entry existed by then
    integrated_at: datetime
    payload_checked: bool
    steps: tuple[StepResult, ...]


class _Run:
    """Collects passed steps; :meth:`fail` builds the error for the current step."""

    def __init__(self) -> None:
        self.passed: list[StepResult] = []

    def ok(self, step: Step, detail: str) -> None:
        self.passed.append(StepResult(step, detail))

    def fail(self, step: Step, detail: str) -> BundleVerificationError:
        return BundleVerificationError(step, detail, tuple(self.passed))


def _b64(text: str) -> bytes:
    return base64.b64decode(text, validate=True)


def _load_bundle(bundle: AnchoredEntry | Mapping[str, Any], run: _Run) -> AnchoredEntry:
    if isinstance(bundle, AnchoredEntry):
        return bundle
    if not isinstance(bundle, Mapping):
        raise run.fail("bundle", f"expected a JSON object, got {type(bundle).__name__}")
    if bundle.get("version") != 1:
        raise run.fail("bundle", f"unsupported version {bundle.get('version')!r}")
    try:
        return AnchoredEntry.model_validate(dict(bundle))
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise run.fail("bundle", f"not a ledger.anchored v1 document: {problems[:500]}") from None


def _same(a: Any, b: Any) -> bool:
    """Equal as RFC 8785 JSON (so ``1``, ``1.0`` and ``true`` stay different where JSON does)."""
    try:
        return canonical_json(a) == canonical_json(b)
    except Exception:  # noqa: BLE001 - a value JSON cannot hold is simply not equal
        return False


def _check_statement_fields(statement: bytes, bundle: AnchoredEntry, run: _Run) -> None:
    entry = bundle.entry
    try:
        doc = json.loads(statement)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise run.fail("statement_fields", "the signed statement is not JSON") from None
    if not isinstance(doc, dict):
        raise run.fail("statement_fields", "the signed statement is not a JSON object")
    expected_keys = {"v", "request_id", "subject", "payload_sha256", "meta", "submitted_at"}
    if set(doc) != expected_keys:
        raise run.fail(
            "statement_fields",
            f"the signed statement has fields {sorted(doc)}, expected {sorted(expected_keys)}",
        )
    if not _same(doc["v"], STATEMENT_VERSION):
        raise run.fail("statement_fields", f"statement version {doc['v']!r} is not 1")
    for name, value in (
        ("request_id", entry.request_id),
        ("subject", entry.subject),
        ("payload_sha256", entry.payload_sha256),
        ("meta", entry.meta),
    ):
        if not _same(doc[name], value):
            raise run.fail(
                "statement_fields",
                f"entry {name} {value!r} is not the signed {name} {doc[name]!r}",
            )
    signed_time = doc["submitted_at"]
    try:
        same_time = isinstance(signed_time, str) and parse_time(signed_time) == entry.submitted_at
    except ValueError:
        same_time = False
    if not same_time:
        raise run.fail(
            "statement_fields",
            f"entry submitted_at {format_time(entry.submitted_at)} is not the signed "
            f"submitted_at {signed_time!r}",
        )


def _parse_manifest(manifest: bytes) -> dict[str, Any] | None:
    """The manifest's fields if it is exactly a canonical batch manifest, else None."""
    try:
        mdoc = json.loads(manifest)
        rebuilt = manifest_bytes(
            batch_id=uuid.UUID(mdoc["batch_id"]),
            size=mdoc["size"],
            root_hex=mdoc["root"],
            created_at=parse_time(mdoc["created_at"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if rebuilt != manifest or not isinstance(mdoc, dict):
        return None
    return mdoc


def verify_bundle(
    bundle: AnchoredEntry | Mapping[str, Any],
    *,
    rekor_public_key_pem: bytes,
    entry_public_key_pem: bytes | None = None,
    payload: bytes | None = None,
    on_step: Callable[[StepResult], None] | None = None,
) -> VerificationReport:
    """Verify a proof bundle completely and offline; see the module docstring for the steps.

    ``rekor_public_key_pem`` is the pinned Rekor log key (PEM or DER) — never the bundle's
    word. ``entry_public_key_pem`` optionally pins the Ed25519 key the entry must be signed
    with; ``payload`` optionally checks the document the entry is about. ``on_step`` is
    called after each passed step. Raises :class:`BundleVerificationError`.
    """
    run = _Run()

    def ok(step: Step, detail: str) -> None:
        run.ok(step, detail)
        if on_step is not None:
            on_step(run.passed[-1])

    doc = _load_bundle(bundle, run)
    entry, batch, receipt_info = doc.entry, doc.batch, doc.receipt
    ok("bundle", f"ledger.anchored v1 for entry {entry.entry_id}")

    # --- the entry ----------------------------------------------------------------------
    try:
        statement = _b64(entry.statement)
    except binascii.Error:
        raise run.fail("statement", "the statement is not valid base64") from None
    try:
        sig_version, signature = parse_vault_signature(entry.signature)
    except MalformedSignature as exc:
        raise run.fail("statement", f"malformed entry signature: {exc.reason}") from None
    if sig_version != entry.key_version:
        raise run.fail(
            "statement",
            f"the signature names key version {sig_version}, the entry says {entry.key_version}",
        )
    ok("statement", f"{len(statement)} statement bytes, signed by {entry.key_name} "
       f"v{entry.key_version}")

    try:
        entry_der = load_public_key_der(entry.public_key)
    except VerificationError:
        raise run.fail("entry_signature", "the entry's public key is not a PEM key") from None
    if entry_public_key_pem is not None:
        try:
            pinned_der = load_public_key_der(entry_public_key_pem)
        except VerificationError as exc:
            raise run.fail("entry_key", f"the pinned entry key: {exc}") from None
        if pinned_der != entry_der:
            raise run.fail("entry_key", "the entry was not signed with the pinned entry key")
        ok("entry_key", "the entry's public key is the pinned key")

    entry_key = serialization.load_der_public_key(entry_der)
    if not isinstance(entry_key, ed25519.Ed25519PublicKey):
        raise run.fail("entry_signature", "the entry's public key is not an Ed25519 key")
    try:
        entry_key.verify(signature, statement)
    except InvalidSignature:
        raise run.fail(
            "entry_signature",
            "the Ed25519 signature does not verify over the statement with the entry's key",
        ) from None
    ok("entry_signature", "Ed25519 signature over the statement verifies")

    _check_statement_fields(statement, doc, run)
    ok("statement_fields", "request id, subject, payload hash, meta and submission time "
       "are the signed ones")

    # --- entry → batch root ----------------------------------------------------------------
    leaf = leaf_bytes(
        entry_id=entry.entry_id,
        statement=statement,
        signature=entry.signature,
        key_name=entry.key_name,
        key_version=entry.key_version,
    )
    try:
        path = [bytes.fromhex(h) for h in doc.audit_path]
        computed = root_from_inclusion_proof(doc.leaf_index, batch.size, leaf_hash(leaf), path)
    except ValueError:
        raise run.fail("audit_path", "an audit path hash is not hex") from None
    except VerificationError as exc:
        raise run.fail("audit_path", str(exc)) from None
    if computed.hex() != batch.root:
        raise run.fail(
            "audit_path",
            f"the audit path of leaf {doc.leaf_index} of {batch.size} leads to "
            f"{computed.hex()}, not the batch root {batch.root}",
        )
    ok("audit_path", f"leaf {doc.leaf_index} of {batch.size} leads to batch root {batch.root}")

    # --- batch root → manifest → anchor signature ---------------------------------------
    try:
        manifest = _b64(batch.manifest)
    except binascii.Error:
        raise run.fail("manifest", "the manifest is not valid base64") from None
    mdoc = _parse_manifest(manifest)
    if mdoc is None:
        raise run.fail("manifest", "not the canonical batch manifest (fields or form differ)")
    for name, value, batch_value in (
        ("batch_id", mdoc["batch_id"], str(batch.batch_id)),
        ("size", mdoc["size"], batch.size),
        ("root", mdoc["root"], batch.root),
    ):
        if not _same(value, batch_value):
            raise run.fail(
                "manifest", f"manifest {name} {value!r} is not the batch's {batch_value!r}"
            )
    ok("manifest", f"names batch {batch.batch_id}, size {batch.size}, root {batch.root}")

    digest = hashlib.sha256(manifest).digest()
    if digest.hex() != batch.manifest_sha256:
        raise run.fail(
            "manifest_digest",
            f"SHA-256 of the manifest is {digest.hex()}, not {batch.manifest_sha256}",
        )
    ok("manifest_digest", f"SHA-256 {digest.hex()}")

    try:
        anchor_sig = _b64(batch.anchor_signature)
    except binascii.Error:
        raise run.fail("anchor_signature", "the anchor signature is not valid base64") from None
    try:
        verify_manifest_signature(batch.anchor_public_key, digest, anchor_sig)
    except VerificationError as exc:
        raise run.fail("anchor_signature", str(exc)) from None
    ok("anchor_signature", f"ECDSA P-256 signature by anchor key v{batch.anchor_key_version} "
       "verifies")

    # --- manifest → Rekor -------------------------------------------------------------------
    try:
        log_key = load_log_key(rekor_public_key_pem)
    except VerificationError as exc:
        raise run.fail("receipt", f"the pinned Rekor key: {exc}") from None
    receipt = RekorReceipt(
        uuid=receipt_info.uuid,
        log_index=receipt_info.log_index,
        tree_index=receipt_info.tree_index,
        log_id=receipt_info.log_id,
        integrated_time=receipt_info.integrated_time,
        body=receipt_info.body,
        signed_entry_timestamp=receipt_info.signed_entry_timestamp,
        inclusion_hashes=tuple(receipt_info.hashes),
        root_hash=receipt_info.root_hash,
        tree_size=receipt_info.tree_size,
        checkpoint=receipt_info.checkpoint,
    )
    expected = ExpectedEntry(digest.hex(), anchor_sig, batch.anchor_public_key)
    try:
        verify_receipt(receipt, log_key, expected=expected)
    except ReceiptVerificationError as exc:
        raise run.fail("receipt", f"{exc.check}: {exc.detail}") from None
    except VerificationError as exc:
        raise run.fail("receipt", str(exc)) from None
    integrated_at = datetime.fromtimestamp(receipt.integrated_time, tz=UTC)
    ok("receipt", f"Rekor entry {receipt.uuid} at log index {receipt.log_index}, integrated "
       f"{integrated_at.isoformat()}, verifies with the pinned log key {log_key.log_id[:16]}…")

    # --- the payload itself -------------------------------------------------------------
    if payload is not None:
        payload_digest = hashlib.sha256(payload).hexdigest()
        if payload_digest != entry.payload_sha256:
            raise run.fail(
                "payload",
                f"SHA-256 of the payload is {payload_digest}, the entry's payload hash is "
                f"{entry.payload_sha256}",
            )
        ok("payload", f"SHA-256 of the payload is the entry's payload hash {payload_digest}")

    return VerificationReport(
        entry_id=entry.entry_id,
        request_id=entry.request_id,
        subject=entry.subject,
        payload_sha256=entry.payload_sha256,
        key_name=entry.key_name,
        key_version=entry.key_version,
        batch_id=batch.batch_id,
        leaf_index=doc.leaf_index,
        batch_size=batch.size,
        batch_root=batch.root,
        manifest_sha256=batch.manifest_sha256,
        rekor_uuid=receipt.uuid,
        rekor_log_index=receipt.log_index,
        rekor_log_id=receipt.log_id,
        integrated_at=integrated_at,
        payload_checked=payload is not None,
        steps=tuple(run.passed),
    )
