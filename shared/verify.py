"""Offline verification of Rekor v1 receipts and of the anchor (manifest) signature.

A *receipt* is what Rekor v1 answers for one entry (``{uuid: {body, integratedTime, logID,
logIndex, verification: {inclusionProof, signedEntryTimestamp}}}``). :func:`verify_receipt`
checks it against the pinned log public key, in this order, and raises
:class:`ReceiptVerificationError` (a :class:`shared.errors.VerificationError`) naming the first
check that fails (its ``check`` attribute is one of :data:`CHECKS`):

``log_id``      the entry's logID is the SHA-256 of the pinned key's DER SubjectPublicKeyInfo
``uuid``        the uuid is the leaf hash ``SHA256(0x00 ‖ body)`` in lowercase hex, after
                nothing or the 16-hex tree id (no signature covers that prefix)
``set``         the signed entry timestamp: the log key's signature over RFC 8785 JSON of
                ``{"body","integratedTime","logID","logIndex"}`` (global logIndex); the
                signed integratedTime is a time (1970 to 9999)
``inclusion``   the audit path at the tree-local index leads to ``rootHash``
``checkpoint``  the signed note is signed by the log key (signature line chosen by the
                4-byte key hint = first bytes of the logID) and names the same size and root
``body``        the body is the hashedrekord we submitted (hash, signature, key as DER)

Also here: :class:`RekorReceipt`, the frozen, JSON-round-tripping form stored in the
database; :data:`Receipt`, either it or a Rekor v2 receipt (:mod:`shared.verify_v2`, whose
names this module re-exports), and :func:`load_receipt`, which reads a stored one of either.
Check names, log keys and checkpoint parsing are :mod:`shared.verify_base`'s, re-exported
here. Public keys are read and compared as DER with
:func:`shared.signatures.load_public_key_der`.

This module must never do I/O: an auditor runs it offline. It imports nothing that talks to
a network.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Mapping
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidSignature
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared import fastjson
from shared.errors import VerificationError
from shared.merkle import leaf_hash, root_from_inclusion_proof
from shared.signatures import load_public_key_der
from shared.untrusted import UntrustedInput, parse_json
from shared.verify_base import (
    CHECKS,
    Check,
    Checkpoint,
    ExpectedEntry,
    LogKey,
    NoteSignature,
    ReceiptVerificationError,
    load_log_key,
    parse_checkpoint,
    verify_checkpoint,
)
from shared.verify_base import fail as _fail
from shared.verify_base import hex32 as _hex32
from shared.verify_v2 import RekorV2Receipt, V2Trust, VerifiedV2Receipt, verify_v2_receipt

__all__ = [
    "CHECKS",
    "Check",
    "Checkpoint",
    "ExpectedEntry",
    "LogKey",
    "NoteSignature",
    "Receipt",
    "ReceiptVerificationError",
    "RekorReceipt",
    "RekorV2Receipt",
    "V2Trust",
    "VerifiedReceipt",
    "VerifiedV2Receipt",
    "check_body",
    "load_log_key",
    "load_receipt",
    "parse_checkpoint",
    "v1_response_from_bundle_entry",
    "verify_checkpoint",
    "verify_inclusion_proof",
    "verify_receipt",
    "verify_set",
    "verify_v2_receipt",
]

# --- the stored receipt -----------------------------------------------------------------------


class RekorReceipt(BaseModel):
    """Everything needed to re-verify a Rekor v1 entry offline; stored as JSON on the batch.

    ``log_index`` is the global index (signed by the SET); ``tree_index`` the index inside the
    tree the inclusion proof is for. Hashes are lowercase hex; ``body`` and
    ``signed_entry_timestamp`` are base64 exactly as Rekor returned them.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uuid: str
    log_index: int = Field(ge=0)
    tree_index: int = Field(ge=0)
    log_id: str
    integrated_time: int
    body: str
    signed_entry_timestamp: str
    inclusion_hashes: tuple[str, ...]
    root_hash: str
    tree_size: int = Field(ge=1)
    checkpoint: str | None = None

    @classmethod
    def from_v1_response(cls, response: Mapping[str, Any]) -> RekorReceipt:
        """Build from a Rekor v1 answer ``{uuid: entry}`` holding exactly one entry."""
        if not isinstance(response, Mapping):
            raise _fail("receipt", f"expected a JSON object, got {type(response).__name__}")
        if len(response) != 1:
            raise _fail("receipt", f"expected one entry in the response, got {len(response)}")
        ((uuid, entry),) = response.items()
        try:
            verification = entry["verification"]
            proof = verification["inclusionProof"]
            return cls(
                uuid=uuid,
                log_index=entry["logIndex"],
                tree_index=proof["logIndex"],
                log_id=entry["logID"],
                integrated_time=entry["integratedTime"],
                body=entry["body"],
                signed_entry_timestamp=verification["signedEntryTimestamp"],
                inclusion_hashes=tuple(proof["hashes"]),
                root_hash=proof["rootHash"],
                tree_size=proof["treeSize"],
                checkpoint=proof.get("checkpoint"),
            )
        except KeyError as exc:  # the key is one of ours, not the answer's
            raise _fail("receipt", f"malformed Rekor entry: no {exc.args[0]!r}") from None
        except (TypeError, AttributeError):
            raise _fail("receipt", "malformed Rekor entry: a part of the wrong type") from None
        except ValidationError as exc:
            bad = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise _fail("receipt", f"malformed Rekor entry: bad {bad}") from None

    def to_v1_response(self) -> dict[str, Any]:
        """The Rekor v1 answer shape (what sigstore-python's ``_from_v1_response`` takes)."""
        proof: dict[str, Any] = {
            "hashes": list(self.inclusion_hashes),
            "logIndex": self.tree_index,
            "rootHash": self.root_hash,
            "treeSize": self.tree_size,
        }
        if self.checkpoint is not None:
            proof["checkpoint"] = self.checkpoint
        return {
            self.uuid: {
                "body": self.body,
                "integratedTime": self.integrated_time,
                "logID": self.log_id,
                "logIndex": self.log_index,
                "verification": {
                    "inclusionProof": proof,
                    "signedEntryTimestamp": self.signed_entry_timestamp,
                },
            }
        }

    def body_bytes(self) -> bytes:
        try:
            return base64.b64decode(self.body, validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise _fail("receipt", "body is not valid base64") from None

    def body_json(self) -> dict[str, Any]:
        raw = self.body_bytes()
        try:
            value = parse_json(raw, max_bytes=len(raw))
        except UntrustedInput as exc:
            raise _fail("body", f"body is not I-JSON: {exc}") from None
        if not isinstance(value, dict):
            raise _fail("receipt", "body is not a JSON object")
        return value


class VerifiedReceipt(RekorReceipt):
    """A :class:`RekorReceipt` that :func:`verify_receipt` has checked.

    Only :func:`verify_receipt` should build one. Serialized, it is a plain RekorReceipt;
    read back from storage it must be verified again to become a VerifiedReceipt.
    """


#: A stored receipt: Rekor v1's, or Rekor v2's with its RFC 3161 timestamp.
Receipt = RekorReceipt | RekorV2Receipt


def load_receipt(stored: Mapping[str, Any] | str | bytes) -> Receipt:
    """A stored receipt (``batches.receipt``: JSON text or its parsed object) as its model:
    :class:`RekorV2Receipt` if its ``api`` is ``"v2"``, else :class:`RekorReceipt` (v1
    receipts have no ``api``). Malformed data raises ``ValueError`` (pydantic's
    ``ValidationError`` or a JSON error)."""
    data = fastjson.loads(stored) if isinstance(stored, str | bytes) else stored
    if isinstance(data, Mapping) and "api" in data:
        return RekorV2Receipt.model_validate(data)
    return RekorReceipt.model_validate(data)


def v1_response_from_bundle_entry(tlog_entry: Mapping[str, Any]) -> dict[str, Any]:
    """Convert a Sigstore bundle's ``tlogEntries[i]`` (protobuf JSON) to the v1 answer shape.

    Bundles carry base64 hashes and logId, decimal strings for integers, and no uuid; the
    uuid becomes the leaf hash in hex (Rekor's shard-less form).
    """
    try:
        proof = tlog_entry["inclusionProof"]
        body = tlog_entry["canonicalizedBody"]
        out_proof: dict[str, Any] = {
            "hashes": [base64.b64decode(h).hex() for h in proof["hashes"]],
            "logIndex": int(proof["logIndex"]),
            "rootHash": base64.b64decode(proof["rootHash"]).hex(),
            "treeSize": int(proof["treeSize"]),
        }
        if "checkpoint" in proof:
            out_proof["checkpoint"] = proof["checkpoint"]["envelope"]
        uuid = leaf_hash(base64.b64decode(body)).hex()
        return {
            uuid: {
                "body": body,
                "integratedTime": int(tlog_entry["integratedTime"]),
                "logID": base64.b64decode(tlog_entry["logId"]["keyId"]).hex(),
                "logIndex": int(tlog_entry["logIndex"]),
                "verification": {
                    "inclusionProof": out_proof,
                    "signedEntryTimestamp": tlog_entry["inclusionPromise"]["signedEntryTimestamp"],
                },
            }
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise _fail("receipt", f"malformed bundle tlog entry: {exc!r}") from None


# --- SET ------------------------------------------------------------------------------------


#: The latest integratedTime that is a time (9999-12-31T23:59:59Z); the earliest is 0.
MAX_INTEGRATED_TIME = 253402300799


def _set_payload(receipt: RekorReceipt) -> bytes:
    try:
        return rfc8785.dumps(
            {
                "body": receipt.body,
                "integratedTime": receipt.integrated_time,
                "logID": receipt.log_id,
                "logIndex": receipt.log_index,
            }
        )
    except rfc8785.CanonicalizationError as exc:
        raise _fail("set", f"the signed fields have no RFC 8785 form ({type(exc).__name__}: "
                           "an integer outside ±(2^53-1) or a string that is not Unicode)"
                    ) from None


def verify_set(receipt: RekorReceipt, log_key: LogKey) -> None:
    """Check the signed entry timestamp (Rekor's promise to include the entry)."""
    try:
        sig = base64.b64decode(receipt.signed_entry_timestamp, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise _fail("set", "signed entry timestamp is not valid base64") from None
    try:
        log_key.verify(sig, _set_payload(receipt))
    except InvalidSignature:
        raise _fail("set", "signed entry timestamp does not verify with the log key") from None
    if not 0 <= receipt.integrated_time <= MAX_INTEGRATED_TIME:
        raise _fail("set", f"the log signed integratedTime {receipt.integrated_time}, which is "
                           "not a time between 1970 and 9999: the receipt dates nothing")


# --- checkpoints ------------------------------------------------------------------------------


#: Rekor v1 entry uuid: optional 16-hex tree id, then the 64-hex leaf hash.
_UUID = re.compile(r"(?:[0-9a-f]{16})?[0-9a-f]{64}")

# --- inclusion --------------------------------------------------------------------------------


def verify_inclusion_proof(receipt: RekorReceipt) -> bytes:
    """Check that the body's leaf is at ``tree_index`` under ``root_hash``; return the leaf hash."""
    leaf = leaf_hash(receipt.body_bytes())
    hashes_ = [_hex32(h, "proof hash", "inclusion") for h in receipt.inclusion_hashes]
    root = _hex32(receipt.root_hash, "root hash", "inclusion")
    try:
        computed = root_from_inclusion_proof(receipt.tree_index, receipt.tree_size, leaf, hashes_)
    except VerificationError as exc:
        raise _fail("inclusion", str(exc)) from None
    if computed != root:
        raise _fail(
            "inclusion",
            f"audit path for index {receipt.tree_index} of {receipt.tree_size} leads to "
            f"{computed.hex()}, not the proof's root hash {receipt.root_hash}",
        )
    return leaf


# --- body -------------------------------------------------------------------------------------


def check_body(body: Mapping[str, Any], expected: ExpectedEntry) -> None:
    """Compare a hashedrekord body with what was submitted, by meaning.

    Rekor re-encodes the key PEM, so keys are compared as DER; the digest in lowercase hex.
    """
    if body.get("kind") != "hashedrekord":
        raise _fail("body", f"kind is {body.get('kind')!r}, not 'hashedrekord'")
    if body.get("apiVersion") != "0.0.1":
        raise _fail("body", f"apiVersion is {body.get('apiVersion')!r}, not '0.0.1'")
    try:
        spec = body["spec"]
        h = spec["data"]["hash"]
        algorithm, value = h["algorithm"], h["value"]
        sig_b64 = spec["signature"]["content"]
        key_b64 = spec["signature"]["publicKey"]["content"]
    except (KeyError, TypeError):
        raise _fail("body", "not a hashedrekord v0.0.1 body") from None
    if algorithm != "sha256":
        raise _fail("body", f"hash algorithm is {algorithm!r}, not 'sha256'")
    if not isinstance(value, str) or value.lower() != expected.digest_hex.lower():
        raise _fail("body", f"data hash {value} is not the submitted {expected.digest_hex}")
    try:
        sig = base64.b64decode(sig_b64, validate=True)
        key_pem = base64.b64decode(key_b64, validate=True)
    except (ValueError, TypeError):  # binascii.Error, non-ASCII text, not a string
        raise _fail("body", "signature or public key is not valid base64") from None
    if sig != expected.signature:
        raise _fail("body", "signature is not the submitted signature")
    try:
        key_der = load_public_key_der(key_pem)
    except VerificationError:
        raise _fail("body", "public key is not a PEM public key") from None
    try:
        expected_der = load_public_key_der(expected.public_key)
    except VerificationError as exc:
        raise _fail("body", f"expected public key: {exc}") from None
    if key_der != expected_der:
        raise _fail("body", "public key is not the submitted public key")


# --- the whole receipt --------------------------------------------------------------------------


def verify_receipt(
    response: Mapping[str, Any] | RekorReceipt,
    log_key: LogKey | bytes | str,
    *,
    expected: ExpectedEntry | None = None,
) -> VerifiedReceipt:
    """Verify a Rekor v1 entry completely, offline; see the module docstring for the checks.

    ``response`` is Rekor's answer ``{uuid: entry}`` (from a create or a get) or a stored
    :class:`RekorReceipt`. ``log_key`` is the pinned log key (a :class:`LogKey`, or PEM/DER).
    Without ``expected`` only the log's promises are checked, not what the body holds.
    """
    receipt = (
        response if isinstance(response, RekorReceipt) else RekorReceipt.from_v1_response(response)
    )
    key = log_key if isinstance(log_key, LogKey) else load_log_key(log_key)

    if receipt.log_id.lower() != key.log_id:
        raise _fail("log_id", f"entry logID {receipt.log_id} is not the log key's id {key.log_id}")

    leaf = leaf_hash(receipt.body_bytes())
    if _UUID.fullmatch(receipt.uuid) is None:
        raise _fail("uuid", f"uuid {receipt.uuid[:100]!r} is not 64 lowercase hex digits (the "
                            "leaf hash) after nothing or 16 (the tree id)")
    if receipt.uuid[-64:] != leaf.hex():
        raise _fail("uuid", f"uuid {receipt.uuid} does not end with the leaf hash {leaf.hex()}")

    verify_set(receipt, key)
    verify_inclusion_proof(receipt)

    if receipt.checkpoint is None:
        raise _fail("checkpoint", "missing")
    cp = verify_checkpoint(receipt.checkpoint, key)
    if cp.size != receipt.tree_size:
        raise _fail(
            "checkpoint",
            f"tree size {cp.size} is not the inclusion proof's tree size {receipt.tree_size}",
        )
    if cp.root_hash.hex() != receipt.root_hash.lower():
        raise _fail(
            "checkpoint",
            f"root hash {cp.root_hash.hex()} is not the inclusion proof's root hash "
            f"{receipt.root_hash}",
        )

    if expected is not None:
        check_body(receipt.body_json(), expected)

    return VerifiedReceipt.model_validate(receipt.model_dump())
