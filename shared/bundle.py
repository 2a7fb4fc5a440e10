"""Offline verification of a proof bundle: one ``ledger.anchored`` event, end to end.

A *bundle* is an :class:`shared.messages.AnchoredEntry` (the ``ledger.anchored`` event, also
served by ``GET /entries/{id}/proof``). :func:`verify_bundle` checks the whole chain from the
entry to the pinned Rekor log key, in this order, and raises :class:`BundleVerificationError`
(a :class:`shared.errors.VerificationError`) naming the first step that fails (its ``step``
is one of :data:`STEPS`; ``passed`` holds the steps that passed before it):

``bundle``            the document is an AnchoredEntry (version 1, every field well formed):
                      I-JSON within fixed bounds (:data:`MAX_BUNDLE_BYTES`, nesting depth,
                      integer range; :mod:`shared.untrusted`), every field of its JSON type
                      (no coercion: ``"2"`` is not ``2``), timestamps with a time zone
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
                      this digest, anchor signature and anchor key; a Rekor v2 receipt
                      (``"api": "v2"``) verifies against the pinned log key and origin (log id,
                      checkpoint, inclusion proof, body) and its RFC 3161 timestamp over the
                      anchor signature against the pinned TSA chain
``payload``           (only with a payload) SHA-256 of the payload is the entry's payload hash

Each step is one small function in :data:`_STEP_TABLE`, run in that order; the checks
themselves are :mod:`shared.checks`, which ``ledger audit`` runs on database rows too. A step
function decodes what it needs from the bundle, runs its check and returns what it
established; it raises ``_Failed`` with the first problem.

Whatever the input (bytes, text, parsed JSON or a model), :func:`verify_bundle` either returns
a report or raises :class:`BundleVerificationError`; nothing else escapes it. Every ``detail``
(of a passed step and of the failure) has gone through :func:`shared.untrusted.display`: it is
one line, safe to print. A detail states only what a signature or a pinned key establishes;
what the bundle merely claims is said to be claimed. No signature covers ``entry.created_at``,
``anchored_at``, ``batch.anchor_key_version`` or the tree-id prefix of ``receipt.uuid``
(:data:`UNSIGNED_FIELDS`): they are not reported.

The Rekor log key is never taken from the bundle: the verifier pins it, and for a v2 receipt
also the log's origin and the TSA's certificate chain. Nothing here does
I/O or imports anything that talks to a network.
"""


from __future__ import annotations

import base64
import functools
import hashlib
import json
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, Literal, get_args

from pydantic import ValidationError

from shared.checks import (
    StatementFields,
    anchor_signature_problems,
    audit_path_problems,
    entry_signature_problems,
    manifest_digest_problems,
    manifest_problems,
    read_entry_signature,
    receipt_problems,
    statement_problems,
    verify_anchor_receipt,
)
from shared.errors import VerificationError
from shared.messages import AnchoredEntry, ReceiptInfo, ReceiptInfoV2
from shared.signatures import load_public_key_der
from shared.statement import leaf_bytes
from shared.untrusted import UntrustedInput, check_tree, display, parse_json
from shared.verify import LogKey, RekorReceipt, RekorV2Receipt, VerifiedV2Receipt, load_log_key
from shared.verify_v2 import V2Trust, load_v2_trust

__all__ = [
    "MAX_BUNDLE_BYTES",
    "STEPS",
    "UNSIGNED_FIELDS",
    "V2_TRUST_MISSING",
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
#: A bundle larger than this is refused before it is parsed (a bundle is a few KiB plus its
#: entry's meta, twice; ingest's default limit on meta is 16 KiB).
MAX_BUNDLE_BYTES: Final = 1024 * 1024
#: The bundle's fields that no signature covers: what they say is only the bundle's word.
UNSIGNED_FIELDS: Final = ("entry.created_at", "anchored_at", "batch.anchor_key_version",
                          "the tree-id prefix of receipt.uuid")
#: How the ``receipt`` step's detail starts when a Rekor v2 receipt meets a verifier that
#: pinned no origin or no TSA chain (the detail then names what is missing).
V2_TRUST_MISSING: Final = "a Rekor v2 receipt, and no pinned "


@dataclass(frozen=True, slots=True)
class StepResult:
    """A step that passed, with what it established (for people reading the output)."""

    step: Step
    detail: str


class BundleVerificationError(VerificationError):
    """A step failed; ``step`` names it, ``passed`` lists the steps that passed before it."""

    def __init__(self, step: Step, detail: str, passed: tuple[StepResult, ...]) -> None:
        detail = display(detail)
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
    #: as the bundle gives it: only its last 64 hex digits (the leaf hash) are verified
    rekor_uuid: str
    rekor_log_index: int
    rekor_log_id: str
    #: Rekor's integration time, signed by the log (the SET): the entry existed by then
    #: (Rekor v1; None for v2, which signs no time)
    integrated_at: datetime | None
    payload_checked: bool
    steps: tuple[StepResult, ...]
    #: which Rekor API anchored the batch
    rekor_api: Literal["v1", "v2"] = "v1"
    #: (Rekor v2) the RFC 3161 genTime of the pinned TSA's token over the anchor signature:
    #: the batch was signed by then
    timestamped_at: datetime | None = None


class _Failed(Exception):
    """The current step failed; the driver turns it into a :class:`BundleVerificationError`."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _first(problems: list[str]) -> None:
    if problems:
        raise _Failed(problems[0])


def _key_fingerprint(public_key: str) -> str:
    """SHA-256 of a key's DER SubjectPublicKeyInfo (a verified key: it parsed), shortened."""
    return hashlib.sha256(load_public_key_der(public_key)).hexdigest()[:16] + "…"


def _b64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise _Failed(f"the {what} is not valid base64") from None


@dataclass(slots=True)
class _Bundle:
    """The bundle being verified, the verifier's pins, and what earlier steps decoded."""

    doc: AnchoredEntry
    rekor_key: bytes
    pinned_entry_key: bytes | None
    payload: bytes | None
    rekor_origin: str | None = None
    tsa_chain: bytes | None = None
    statement: bytes = b""
    signature: bytes = b""
    manifest: bytes = b""
    anchor_signature: bytes = b""
    timestamped_at: datetime | None = None


# --- the steps, in order ------------------------------------------------------------------------


Bundle = AnchoredEntry | Mapping[str, Any] | bytes | str


def _bundle_json(bundle: Bundle) -> str:
    """The bundle as JSON text of a version 1 object within the bounds of
    :func:`shared.untrusted.parse_json`."""
    if isinstance(bundle, bytes | str):
        doc = parse_json(bundle, max_bytes=MAX_BUNDLE_BYTES)  # UTF-8 once this returns
        text = bundle.decode() if isinstance(bundle, bytes) else bundle
    else:
        if isinstance(bundle, AnchoredEntry):
            try:  # a model made with model_construct may hold anything
                text = bundle.model_dump_json(warnings=False)
            except ValueError:
                raise _Failed("the AnchoredEntry holds values that are not JSON") from None
        elif isinstance(bundle, Mapping):
            check_tree(bundle, max_bytes=MAX_BUNDLE_BYTES)  # JSON types only, bounded
            text = json.dumps(bundle, default=dict)  # default: a Mapping that is not a dict
        else:
            raise _Failed(f"expected a JSON object, got {type(bundle).__name__}")
        doc = parse_json(text, max_bytes=MAX_BUNDLE_BYTES)
    if not isinstance(doc, dict):
        raise _Failed(f"expected a JSON object, got {_json_type(doc)}")
    _require_version_1(doc, "version")
    if isinstance(doc.get("entry"), dict):
        _require_version_1(doc["entry"], "entry.version")
    return text


def _require_version_1(obj: dict[str, Any], name: str) -> None:
    """Present and exactly the integer 1: the model's default must not stand in for it."""
    version = obj.get("version")
    if type(version) is not int or version != 1:
        raise _Failed(f"unsupported {name} {display(repr(version), 40)} (expected 1)")


def _json_type(value: object) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", int: "a number",
            float: "a number"}.get(type(value), "null")


def _step_bundle(bundle: Bundle) -> AnchoredEntry:
    try:
        text = _bundle_json(bundle)
    except UntrustedInput as exc:
        raise _Failed(f"not a bundle: {exc}") from None
    try:
        doc = AnchoredEntry.model_validate_json(text, strict=True)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors()
        )
        raise _Failed(f"not a ledger.anchored v1 document: {problems[:500]}") from None
    for name, value in (("entry.submitted_at", doc.entry.submitted_at),
                        ("entry.created_at", doc.entry.created_at),
                        ("anchored_at", doc.anchored_at)):
        if value.tzinfo is None:
            raise _Failed(f"{name} has no time zone")
    return doc


def _step_statement(b: _Bundle) -> str:
    entry = b.doc.entry
    b.statement = _b64(entry.statement, "statement")
    raw, problems = read_entry_signature(entry.signature, entry.key_version)
    if raw is None or problems:
        raise _Failed(problems[0])
    b.signature = raw
    return (f"{len(b.statement)} statement bytes; the signature names key version "
            f"{entry.key_version}, as the entry does")


def _step_entry_key(b: _Bundle) -> str | None:
    if b.pinned_entry_key is None:
        return None
    try:
        entry_der = load_public_key_der(b.doc.entry.public_key)
    except VerificationError:
        return None  # not a key at all: the entry_signature step says so
    try:
        pinned_der = load_public_key_der(b.pinned_entry_key)
    except VerificationError as exc:
        raise _Failed(f"the pinned entry key: {exc}") from None
    if pinned_der != entry_der:
        raise _Failed("the entry was not signed with the pinned entry key")
    return "the entry's public key is the pinned key"


def _step_entry_signature(b: _Bundle) -> str:
    _first(entry_signature_problems(b.doc.entry.public_key, b.signature, b.statement))
    whose = "the pinned entry key" if b.pinned_entry_key is not None else (
        "the public key the bundle carries (not pinned)")
    return (f"Ed25519 signature over the statement verifies with {whose}, "
            f"SHA-256 {_key_fingerprint(b.doc.entry.public_key)}")


def _step_statement_fields(b: _Bundle) -> str:
    entry = b.doc.entry
    claimed = StatementFields(entry.request_id, entry.subject, entry.payload_sha256, entry.meta,
                              entry.submitted_at)
    _first([detail for _, detail in statement_problems(b.statement, claimed)])
    return "request id, subject, payload hash, meta and submission time are the signed ones"


def _step_audit_path(b: _Bundle) -> str:
    doc, entry = b.doc, b.doc.entry
    leaf = leaf_bytes(entry_id=entry.entry_id, statement=b.statement, signature=entry.signature,
                      key_name=entry.key_name, key_version=entry.key_version)
    _first(audit_path_problems(leaf, doc.leaf_index, doc.batch.size, doc.audit_path,
                               doc.batch.root))
    return f"leaf {doc.leaf_index} of {doc.batch.size} leads to batch root {doc.batch.root}"


def _step_manifest(b: _Bundle) -> str:
    batch = b.doc.batch
    b.manifest = _b64(batch.manifest, "manifest")
    _first(manifest_problems(b.manifest, batch_id=batch.batch_id, size=batch.size,
                             root=batch.root))
    return (f"names batch {batch.batch_id}, size {batch.size}, root {batch.root}, created "
            f"{json.loads(b.manifest)['created_at']}")


def _step_manifest_digest(b: _Bundle) -> str:
    _first(manifest_digest_problems(b.manifest, b.doc.batch.manifest_sha256))
    return f"SHA-256 {b.doc.batch.manifest_sha256}"


def _step_anchor_signature(b: _Bundle) -> str:
    batch = b.doc.batch
    b.anchor_signature = _b64(batch.anchor_signature, "anchor signature")
    _first(anchor_signature_problems(batch.anchor_public_key, b.manifest, b.anchor_signature))
    return (f"ECDSA P-256 signature verifies with the anchor key the bundle carries, SHA-256 "
            f"{_key_fingerprint(batch.anchor_public_key)} (the bundle calls it version "
            f"{batch.anchor_key_version}; no signature covers that number)")


def _rekor_receipt(info: ReceiptInfo) -> RekorReceipt:
    """The receipt in the form :func:`shared.verify.verify_receipt` checks."""
    fields = info.model_dump(exclude={"hashes"})
    return RekorReceipt.model_validate({**fields, "inclusion_hashes": info.hashes})


def _rekor_v2_receipt(info: ReceiptInfoV2) -> RekorV2Receipt:
    """The receipt in the form :func:`shared.verify_v2.verify_v2_receipt` checks."""
    fields = info.model_dump(exclude={"hashes"})
    return RekorV2Receipt.model_validate({**fields, "inclusion_hashes": info.hashes})


def _pinned_log_key(b: _Bundle) -> LogKey:
    try:
        return load_log_key(b.rekor_key)
    except VerificationError as exc:
        raise _Failed(f"the pinned Rekor key: {exc}") from None


def _v2_trust(b: _Bundle) -> V2Trust:
    missing = [what for what, value in (("log origin", b.rekor_origin),
                                        ("TSA chain", b.tsa_chain)) if value is None]
    if missing:
        raise _Failed(f"{V2_TRUST_MISSING}{' and '.join(missing)} to verify it with")
    assert b.rekor_origin is not None and b.tsa_chain is not None
    _pinned_log_key(b)
    try:
        return load_v2_trust(b.rekor_key, b.rekor_origin, b.tsa_chain)
    except VerificationError as exc:
        raise _Failed(f"the pinned v2 trust: {exc}") from None


def _step_receipt(b: _Bundle) -> str:
    info = b.doc.receipt
    if isinstance(info, ReceiptInfoV2):
        return _step_receipt_v2(b, info)
    log_key = _pinned_log_key(b)
    receipt = _rekor_receipt(info)
    _first(receipt_problems(receipt, log_key, manifest=b.manifest,
                            anchor_signature=b.anchor_signature,
                            anchor_public_key=b.doc.batch.anchor_public_key))
    integrated_at = datetime.fromtimestamp(receipt.integrated_time, tz=UTC)
    return (f"Rekor entry with leaf hash {receipt.uuid[-64:]} at log index "
            f"{receipt.log_index}, integrated {integrated_at.isoformat()}, verifies with the "
            f"pinned log key {log_key.log_id[:16]}…")


def _step_receipt_v2(b: _Bundle, info: ReceiptInfoV2) -> str:
    trust = _v2_trust(b)
    receipt = _rekor_v2_receipt(info)
    try:
        verified = verify_anchor_receipt(
            receipt, None, v2_trust=trust, manifest=b.manifest,
            anchor_signature=b.anchor_signature, anchor_public_key=b.doc.batch.anchor_public_key)
    except VerificationError as exc:
        raise _Failed(str(exc)) from None
    assert isinstance(verified, VerifiedV2Receipt)
    b.timestamped_at = verified.timestamp_time
    tsa = trust.tsa_chain[0].subject.rfc4514_string()
    return (f"Rekor v2 entry with leaf hash {receipt.uuid} at log index {receipt.log_index} "
            f"of log {trust.origin} verifies with the pinned log key "
            f"{trust.key_id.hex()[:16]}…; the pinned TSA ({tsa}) timestamped the anchor "
            f"signature at {verified.timestamp_time.isoformat()}")


def _step_payload(b: _Bundle) -> str | None:
    if b.payload is None:
        return None
    digest = hashlib.sha256(b.payload).hexdigest()
    if digest != b.doc.entry.payload_sha256:
        raise _Failed(f"SHA-256 of the payload is {digest}, the entry's payload hash is "
                      f"{b.doc.entry.payload_sha256}")
    return f"SHA-256 of the payload is the entry's payload hash {digest}"


#: Every step after ``bundle``, in :data:`STEPS` order. A step that returns None did not apply
#: (no pinned entry key, no payload) and is not reported.
_STEP_TABLE: tuple[tuple[Step, Callable[[_Bundle], str | None]], ...] = (
    ("statement", _step_statement),
    ("entry_key", _step_entry_key),
    ("entry_signature", _step_entry_signature),
    ("statement_fields", _step_statement_fields),
    ("audit_path", _step_audit_path),
    ("manifest", _step_manifest),
    ("manifest_digest", _step_manifest_digest),
    ("anchor_signature", _step_anchor_signature),
    ("receipt", _step_receipt),
    ("payload", _step_payload),
)


# --- the driver ---------------------------------------------------------------------------------


class _Run:
    """The steps passed so far; tells ``on_step`` about each one."""

    def __init__(self, on_step: Callable[[StepResult], None] | None) -> None:
        self.passed: list[StepResult] = []
        self._on_step = on_step

    def ok(self, step: Step, detail: str) -> None:
        self.passed.append(StepResult(step, display(detail)))
        if self._on_step is not None:
            self._on_step(self.passed[-1])

    def fail(self, step: Step, detail: str) -> BundleVerificationError:
        return BundleVerificationError(step, detail, tuple(self.passed))


def _run_step(run: _Run, step: Step, check: Callable[[], str | None]) -> str | None:
    """Run one step; any failure, expected or not, becomes the step's named failure."""
    try:
        return check()
    except _Failed as exc:
        raise run.fail(step, exc.detail) from None
    except Exception as exc:  # noqa: BLE001 - fail closed: no input may escape as a crash
        raise run.fail(step, f"the verifier could not check this input ({type(exc).__name__}); "
                             "it is not verified") from None


def verify_bundle(
    bundle: Bundle,
    *,
    rekor_public_key_pem: bytes,
    entry_public_key_pem: bytes | None = None,
    payload: bytes | None = None,
    on_step: Callable[[StepResult], None] | None = None,
    rekor_origin: str | None = None,
    tsa_chain_pem: bytes | None = None,
) -> VerificationReport:
    """Verify a proof bundle completely and offline; see the module docstring for the steps.

    ``bundle`` is the JSON document (bytes or text, as received), its parsed form or the
    model. ``rekor_public_key_pem`` is the pinned Rekor log key (PEM or DER) — never the
    bundle's word. ``entry_public_key_pem`` optionally pins the Ed25519 key the entry must be
    signed with; ``payload`` optionally checks the document the entry is about. ``on_step`` is
    called after each passed step. A bundle anchored in Rekor v2 also needs the log's pinned
    ``rekor_origin`` (its checkpoint name) and ``tsa_chain_pem``, the pinned TSA certificate
    chain (PEM, leaf first); without them its ``receipt`` step fails with a detail starting
    with :data:`V2_TRUST_MISSING`. Raises :class:`BundleVerificationError`, and nothing else,
    whatever ``bundle`` holds.
    """
    run = _Run(on_step)
    parsed: list[AnchoredEntry] = []

    def parse() -> str:
        parsed.append(_step_bundle(bundle))
        return f"a well-formed ledger.anchored v1 document naming entry {parsed[0].entry.entry_id}"

    run.ok("bundle", str(_run_step(run, "bundle", parse)))
    checked = _Bundle(parsed[0], rekor_public_key_pem, entry_public_key_pem, payload,
                      rekor_origin, tsa_chain_pem)
    for step, check in _STEP_TABLE:
        detail = _run_step(run, step, functools.partial(check, checked))
        if detail is not None:
            run.ok(step, detail)
    return _report(checked, tuple(run.passed))


def _report(b: _Bundle, steps: tuple[StepResult, ...]) -> VerificationReport:
    entry, batch, receipt = b.doc.entry, b.doc.batch, b.doc.receipt
    return VerificationReport(
        entry_id=entry.entry_id,
        request_id=entry.request_id,
        subject=entry.subject,
        payload_sha256=entry.payload_sha256,
        key_name=entry.key_name,
        key_version=entry.key_version,
        batch_id=batch.batch_id,
        leaf_index=b.doc.leaf_index,
        batch_size=batch.size,
        batch_root=batch.root,
        manifest_sha256=batch.manifest_sha256,
        rekor_uuid=receipt.uuid,
        rekor_log_index=receipt.log_index,
        rekor_log_id=receipt.log_id,
        integrated_at=(datetime.fromtimestamp(receipt.integrated_time, tz=UTC)
                       if isinstance(receipt, ReceiptInfo) else None),
        payload_checked=b.payload is not None,
        steps=steps,
        rekor_api="v1" if isinstance(receipt, ReceiptInfo) else "v2",
        timestamped_at=b.timestamped_at,
    )
