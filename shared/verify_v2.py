"""Offline verification of Rekor v2 receipts, dated by an RFC 3161 timestamp.

Rekor v2 (rekor-tiles) answers an entry with a TransparencyLogEntry that holds an inclusion
proof and the signed checkpoint it is for, but no signed entry timestamp and no integrated
time: the time comes from a timestamping authority (TSA) instead, whose token is requested
over the anchor signature and stored with the entry. A :class:`RekorV2Receipt` is both, in
the form stored in ``ledger.batches.receipt`` (with ``"api": "v2"``; a v1 receipt has no
``api``). :func:`verify_v2_receipt` checks it against :class:`V2Trust` (the pinned log key,
the log's origin, the pinned TSA chain), in this order, raising
:class:`~shared.verify_base.ReceiptVerificationError` naming the first check that fails:

``receipt``     the stored receipt is well-formed (base64, hex, a JSON body)
``log_id``      the logId is the pinned key's C2SP signed-note key id for the origin:
                SHA-256(origin ‖ "\\n" ‖ 0x01 ‖ raw key) for Ed25519, SHA-256(DER
                SubjectPublicKeyInfo) for ECDSA, SHA-256(origin ‖ "\\n" ‖ 0xff ‖
                "PKIX-RSA-PKCS#1v1.5" ‖ DER) for RSA (rekor-tiles' ``pkg/note``)
``checkpoint``  the signed note names the pinned origin, is signed by the pinned key on a
                line with the 4-byte hint (the key id's first bytes) and names the proof's
                tree size and root hash
``inclusion``   the audit path of the body's leaf at ``log_index`` leads to the root hash
``body``        the body is a hashedrekord v0.0.2 (with ``expected``: holding exactly the
                submitted digest, signature and key)
``timestamp``   the TSA token is granted, its message imprint is SHA-256 of the signature
                the body holds (the anchor signature), and it is signed by the pinned TSA
                leaf (EKU timeStamping, critical) chaining to the pinned root; its genTime is
                :attr:`VerifiedV2Receipt.timestamp_time`

This module must never do I/O: an auditor runs it offline.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import rfc3161_client
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from shared.errors import VerificationError
from shared.merkle import leaf_hash, root_from_inclusion_proof
from shared.signatures import load_public_key_der
from shared.untrusted import UntrustedInput, parse_json
from shared.verify_base import (
    Check,
    ExpectedEntry,
    LogKey,
    fail,
    hex32,
    load_log_key,
    verify_checkpoint,
)

__all__ = [
    "RekorV2Receipt",
    "V2Trust",
    "VerifiedV2Receipt",
    "load_tsa_chain",
    "load_v2_trust",
    "note_key_id",
    "verify_timestamp",
    "verify_v2_receipt",
]

_KIND, _VERSION = "hashedrekord", "0.0.2"


def _b64(value: str, what: str, check: Check) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (ValueError, TypeError):  # binascii.Error, non-ASCII text, not a string
        raise fail(check, f"{what} is not valid base64") from None


def _proto_int(value: Any, what: str) -> int:
    """A protobuf JSON int64 (a decimal string, or a number)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise fail("receipt", f"{what} is not an integer")
    if isinstance(value, str) and not (value.isascii() and value.isdigit() and len(value) <= 19):
        raise fail("receipt", f"{what} {value[:40]!r} is not a decimal integer")
    return int(value)


class RekorV2Receipt(BaseModel):
    """Everything needed to re-verify a Rekor v2 entry offline; stored as JSON on the batch.

    Hashes and ``log_id`` are lowercase hex; ``body`` is the canonicalized body in base64 as
    the log returned it; ``checkpoint`` the signed note the proof is for; ``timestamp`` the
    DER RFC 3161 TimeStampResp (base64) over the anchor signature.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    api: Literal["v2"] = "v2"
    log_index: int = Field(ge=0)
    log_id: str
    body: str
    inclusion_hashes: tuple[str, ...]
    root_hash: str
    tree_size: int = Field(ge=1)
    checkpoint: str
    timestamp: str

    @property
    def uuid(self) -> str:
        """The entry's leaf hash in hex (what ``batches.rekor_uuid`` holds for v2)."""
        return leaf_hash(self.body_bytes()).hex()

    @property
    def tree_index(self) -> int:
        """A v2 log is one tree: the index in it is the log index."""
        return self.log_index

    @classmethod
    def from_entry(cls, entry: Mapping[str, Any], timestamp_der: bytes) -> RekorV2Receipt:
        """Build from a TransparencyLogEntry (protobuf JSON, as the log answers) and the
        TSA's DER TimeStampResp."""
        if not isinstance(entry, Mapping):
            raise fail("receipt", f"expected a JSON object, got {type(entry).__name__}")
        try:
            proof = entry["inclusionProof"]
            log_index = _proto_int(entry["logIndex"], "logIndex")
            if _proto_int(proof["logIndex"], "inclusionProof.logIndex") != log_index:
                raise fail("receipt", "the inclusion proof is for another log index")
            return cls(
                log_index=log_index,
                log_id=_b64(entry["logId"]["keyId"], "logId.keyId", "receipt").hex(),
                body=entry["canonicalizedBody"],
                inclusion_hashes=tuple(_b64(h, "proof hash", "receipt").hex()
                                       for h in proof["hashes"]),
                root_hash=_b64(proof["rootHash"], "rootHash", "receipt").hex(),
                tree_size=_proto_int(proof["treeSize"], "treeSize"),
                checkpoint=proof["checkpoint"]["envelope"],
                timestamp=base64.b64encode(timestamp_der).decode("ascii"),
            )
        except KeyError as exc:  # the key is one of ours, not the answer's
            raise fail("receipt", f"malformed Rekor v2 entry: no {exc.args[0]!r}") from None
        except (TypeError, AttributeError):
            raise fail("receipt", "malformed Rekor v2 entry: a part of the wrong type") from None
        except ValidationError as exc:
            bad = ", ".join(".".join(str(p) for p in e["loc"]) for e in exc.errors())
            raise fail("receipt", f"malformed Rekor v2 entry: bad {bad}") from None

    def to_tlog_entry(self) -> dict[str, Any]:
        """The TransparencyLogEntry (protobuf JSON) again, as a Sigstore bundle carries it."""
        return {
            "logIndex": str(self.log_index),
            "logId": {"keyId": base64.b64encode(bytes.fromhex(self.log_id)).decode()},
            "kindVersion": {"kind": _KIND, "version": _VERSION},
            "integratedTime": "0",
            "inclusionProof": {
                "logIndex": str(self.log_index),
                "rootHash": base64.b64encode(bytes.fromhex(self.root_hash)).decode(),
                "treeSize": str(self.tree_size),
                "hashes": [base64.b64encode(bytes.fromhex(h)).decode()
                           for h in self.inclusion_hashes],
                "checkpoint": {"envelope": self.checkpoint},
            },
            "canonicalizedBody": self.body,
        }

    def body_bytes(self) -> bytes:
        return _b64(self.body, "body", "receipt")

    def timestamp_bytes(self) -> bytes:
        return _b64(self.timestamp, "timestamp", "receipt")

    def body_json(self) -> dict[str, Any]:
        raw = self.body_bytes()
        try:
            value = parse_json(raw, max_bytes=len(raw))
        except UntrustedInput as exc:
            raise fail("body", f"body is not I-JSON: {exc}") from None
        if not isinstance(value, dict):
            raise fail("body", "body is not a JSON object")
        return value


class VerifiedV2Receipt(RekorV2Receipt):
    """A :class:`RekorV2Receipt` that :func:`verify_v2_receipt` has checked, with the time
    its TSA token certifies. Serialized it is a plain RekorV2Receipt (the time is not a field:
    it is re-derived by verifying again)."""

    _timestamp_time: datetime = PrivateAttr()

    @property
    def timestamp_time(self) -> datetime:
        """The TSA's genTime (UTC): the anchor signature existed then."""
        return self._timestamp_time


# --- trust --------------------------------------------------------------------------------------


def note_key_id(log_key: LogKey, origin: str) -> bytes:
    """The 32-byte key id a Rekor v2 log with ``log_key`` and ``origin`` uses as logId (its
    first 4 bytes are the checkpoint's key hint)."""
    key = log_key.key
    if isinstance(key, ec.EllipticCurvePublicKey):
        return hashlib.sha256(log_key.der).digest()
    if isinstance(key, ed25519.Ed25519PublicKey):
        raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return hashlib.sha256(origin.encode() + b"\n\x01" + raw).digest()
    return hashlib.sha256(origin.encode() + b"\n\xffPKIX-RSA-PKCS#1v1.5" + log_key.der).digest()


@dataclass(frozen=True, slots=True)
class V2Trust:
    """What a v2 receipt is verified against: the pinned log key, the log's origin (its
    checkpoint name) and the pinned TSA certificate chain, leaf first."""

    log_key: LogKey
    origin: str
    tsa_chain: tuple[x509.Certificate, ...]

    @property
    def key_id(self) -> bytes:
        return note_key_id(self.log_key, self.origin)


def load_tsa_chain(chain_pem: bytes | str) -> tuple[x509.Certificate, ...]:
    """A TSA chain in PEM, leaf first, each certificate issued by the next."""
    data = chain_pem.encode() if isinstance(chain_pem, str) else chain_pem
    try:
        chain = tuple(x509.load_pem_x509_certificates(data))
    except ValueError:
        raise VerificationError("the TSA chain is not PEM certificates") from None
    for cert, issuer in itertools.pairwise(chain):
        try:
            cert.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise VerificationError(
                f"the TSA chain is not leaf first: {cert.subject.rfc4514_string()} is not "
                f"issued by the next certificate, {issuer.subject.rfc4514_string()} "
                f"({type(exc).__name__})"
            ) from None
    return chain


def load_v2_trust(public_key_pem: bytes | str, origin: str, chain_pem: bytes | str) -> V2Trust:
    """Build the trust from the pinned log key (PEM/DER), origin and TSA chain (PEM)."""
    if not origin or any(c.isspace() for c in origin) or "+" in origin:
        raise VerificationError(f"{origin!r} is not a checkpoint origin (no spaces, no '+')")
    return V2Trust(load_log_key(public_key_pem), origin, load_tsa_chain(chain_pem))


# --- checks -------------------------------------------------------------------------------------


def _check_checkpoint(receipt: RekorV2Receipt, trust: V2Trust) -> None:
    cp = verify_checkpoint(receipt.checkpoint, trust.log_key, key_hint=trust.key_id[:4])
    if cp.origin != trust.origin:
        raise fail("checkpoint", f"origin {cp.origin[:100]!r} is not the pinned origin "
                                 f"{trust.origin!r}")
    if cp.size != receipt.tree_size:
        raise fail("checkpoint", f"tree size {cp.size} is not the inclusion proof's tree "
                                 f"size {receipt.tree_size}")
    if cp.root_hash.hex() != receipt.root_hash.lower():
        raise fail("checkpoint", f"root hash {cp.root_hash.hex()} is not the inclusion "
                                 f"proof's root hash {receipt.root_hash}")


def _check_inclusion(receipt: RekorV2Receipt) -> None:
    leaf = leaf_hash(receipt.body_bytes())
    path = [hex32(h, "proof hash", "inclusion") for h in receipt.inclusion_hashes]
    root = hex32(receipt.root_hash, "root hash", "inclusion")
    try:
        computed = root_from_inclusion_proof(receipt.log_index, receipt.tree_size, leaf, path)
    except VerificationError as exc:
        raise fail("inclusion", str(exc)) from None
    if computed != root:
        raise fail("inclusion", f"audit path for index {receipt.log_index} of "
                                f"{receipt.tree_size} leads to {computed.hex()}, not the "
                                f"proof's root hash {receipt.root_hash}")


@dataclass(frozen=True, slots=True)
class _Body:
    digest: bytes
    signature: bytes
    key_der: bytes


def _parse_body(body: Mapping[str, Any]) -> _Body:
    if body.get("kind") != _KIND:
        raise fail("body", f"kind is {str(body.get('kind'))[:40]!r}, not {_KIND!r}")
    if body.get("apiVersion") != _VERSION:
        raise fail("body", f"apiVersion is {str(body.get('apiVersion'))[:40]!r}, not "
                           f"{_VERSION!r}")
    try:
        spec = body["spec"]["hashedRekordV002"]
        algorithm, digest_b64 = spec["data"]["algorithm"], spec["data"]["digest"]
        sig_b64 = spec["signature"]["content"]
        key_b64 = spec["signature"]["verifier"]["publicKey"]["rawBytes"]
    except (KeyError, TypeError):
        raise fail("body", "not a hashedrekord v0.0.2 body") from None
    if algorithm != "SHA2_256":
        raise fail("body", f"digest algorithm is {str(algorithm)[:40]!r}, not 'SHA2_256'")
    digest = _b64(digest_b64, "digest", "body")
    signature = _b64(sig_b64, "signature", "body")
    try:
        key_der = load_public_key_der(_b64(key_b64, "public key", "body"))
    except VerificationError:
        raise fail("body", "public key is not a DER public key") from None
    return _Body(digest, signature, key_der)


def _check_body(body: _Body, expected: ExpectedEntry) -> None:
    if body.digest.hex() != expected.digest_hex.lower():
        raise fail("body", f"digest {body.digest.hex()} is not the submitted "
                           f"{expected.digest_hex}")
    if body.signature != expected.signature:
        raise fail("body", "signature is not the submitted signature")
    try:
        expected_der = load_public_key_der(expected.public_key)
    except VerificationError as exc:
        raise fail("body", f"expected public key: {exc}") from None
    if body.key_der != expected_der:
        raise fail("body", "public key is not the submitted public key")


def _reason(exc: Exception) -> str:
    """rfc3161-client's reason, in one short line (OpenSSL's is a whole error stack)."""
    text = str(exc)
    found = re.search(r'data: "([^"]{1,200})"', text)
    reason = found[1] if found else text
    return " ".join(reason.split())[:200]


def verify_timestamp(token_der: bytes, signature: bytes,
                     chain: tuple[x509.Certificate, ...]) -> datetime:
    """Check an RFC 3161 TimeStampResp over ``signature`` against the pinned ``chain`` (leaf
    first); return its genTime (UTC)."""
    try:
        response = rfc3161_client.decode_timestamp_response(token_der)
    except ValueError:
        raise fail("timestamp", "not a DER RFC 3161 TimeStampResp") from None
    if response.status != rfc3161_client.PKIStatus.GRANTED:
        raise fail("timestamp", f"the TSA did not grant the token (status {response.status})")
    imprint = response.tst_info.message_imprint
    if imprint.hash_algorithm.dotted_string != "2.16.840.1.101.3.4.2.1":
        raise fail("timestamp", f"message imprint uses {imprint.hash_algorithm.dotted_string},"
                                " not SHA-256")
    if imprint.message != hashlib.sha256(signature).digest():
        raise fail("timestamp", f"message imprint {imprint.message.hex()} is not SHA-256 of "
                                "the anchor signature: the token dates something else")
    if not chain:
        raise fail("timestamp", "no pinned TSA chain to verify the token with")
    verifier = rfc3161_client.VerifierBuilder(
        tsa_certificate=chain[0], intermediates=list(chain[1:-1]), roots=[chain[-1]]
    ).build()
    try:
        verifier.verify(response, imprint.message)
    except rfc3161_client.VerificationError as exc:
        raise fail("timestamp", f"the token does not verify against the pinned TSA chain "
                                f"({_reason(exc)}): it is from another TSA, or the pinned "
                                "chain is wrong") from None
    gen_time = response.tst_info.gen_time
    return gen_time.replace(tzinfo=UTC) if gen_time.tzinfo is None else gen_time


def verify_v2_receipt(
    receipt: RekorV2Receipt, trust: V2Trust, *, expected: ExpectedEntry | None = None
) -> VerifiedV2Receipt:
    """Verify a Rekor v2 receipt completely, offline; see the module docstring for the
    checks. Without ``expected`` the body is only parsed, not compared with a submission."""
    key_id = trust.key_id.hex()
    if receipt.log_id.lower() != key_id:
        raise fail("log_id", f"entry logId {receipt.log_id[:64]} is not {key_id}, the pinned "
                             f"key's id for origin {trust.origin!r}: another log, or the "
                             "pinned key or origin is wrong")
    _check_checkpoint(receipt, trust)
    _check_inclusion(receipt)
    body = _parse_body(receipt.body_json())
    if expected is not None:
        _check_body(body, expected)
    when = verify_timestamp(receipt.timestamp_bytes(), body.signature, trust.tsa_chain)
    verified = VerifiedV2Receipt.model_validate(receipt.model_dump())
    verified._timestamp_time = when
    return verified
