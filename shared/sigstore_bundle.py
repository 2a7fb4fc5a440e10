"""A batch's anchoring as a standard Sigstore bundle, and a trusted root for a private Rekor.

Each batch is anchored in Rekor v1 as a ``hashedrekord`` entry: SHA-256 of the batch manifest,
signed (ECDSA P-256, ASN.1 DER) with the ledger's anchor key. That is exactly what a Sigstore
*message signature* bundle holds, so the batch's proof can be handed to Sigstore tools
(``cosign verify-blob``) as well as to ``ledger verify``:

:func:`batch_bundle` turns an anchored batch (:class:`shared.records.BatchRecord`) into a
bundle in the protobuf-specs v0.3 JSON form (``application/vnd.dev.sigstore.bundle.v0.3+json``):

* ``verificationMaterial.publicKey.hint``: base64 SHA-256 of the anchor key's DER
  SubjectPublicKeyInfo (the hint ``cosign sign-blob --new-bundle-format --key`` writes); the
  key itself is not in the bundle: the verifier supplies it (``cosign verify-blob --key``);
* ``verificationMaterial.tlogEntries[0]``: the Rekor entry (global ``logIndex``, ``logId``,
  ``kindVersion`` hashedrekord 0.0.1, ``integratedTime``, the SET as
  ``inclusionPromise``, the ``inclusionProof`` with its tree-local index, root, size,
  hashes and checkpoint note, and the ``canonicalizedBody`` Rekor returned);
* ``messageSignature``: the manifest's SHA-256 and the anchor signature.

A batch anchored in Rekor v2 has the same bundle with the v2 entry (``kindVersion``
hashedrekord 0.0.2, no ``inclusionPromise``, ``integratedTime`` 0, the inclusion proof at the
global index) and the RFC 3161 token over the anchor signature in
``verificationMaterial.timestampVerificationData.rfc3161Timestamps[0].signedTimestamp``
(the DER TimeStampResp).

The protobuf JSON mapping is followed exactly: 64-bit integers are decimal strings, bytes are
standard base64 (with padding), enum values are their names.

:func:`trusted_root` builds a ``application/vnd.dev.sigstore.trustedroot+json;version=0.1``
document that trusts one Rekor log key and nothing else (no Fulcio, no CT log): what
``cosign verify-blob --trusted-root`` needs for a private log. For a Rekor v2 log it takes the
log's origin (the log id is then the checkpoint key id, as the entries carry it) and the
pinned TSA chain, listed under ``timestampAuthorities``.

Nothing here does I/O.
"""

from __future__ import annotations

import base64
import hashlib
from datetime import UTC, datetime
from typing import Any, Final

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization import Encoding, load_der_public_key
from cryptography.x509.oid import NameOID

from shared.errors import VerificationError
from shared.records import BatchRecord
from shared.signatures import load_public_key_der
from shared.verify import RekorV2Receipt, load_log_key
from shared.verify_v2 import load_tsa_chain, note_key_id

__all__ = [
    "BUNDLE_MEDIA_TYPE",
    "TRUSTED_ROOT_MEDIA_TYPE",
    "batch_bundle",
    "key_details",
    "key_hint",
    "trusted_root",
]

BUNDLE_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.bundle.v0.3+json"
TRUSTED_ROOT_MEDIA_TYPE: Final = "application/vnd.dev.sigstore.trustedroot+json;version=0.1"
#: the Rekor v1 entry type and version the anchorer submits
KIND: Final = "hashedrekord"
KIND_VERSION: Final = "0.0.1"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def _hex_b64(value: str, what: str) -> str:
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise VerificationError(f"the receipt's {what} is not hex") from None
    return _b64(raw)


def key_hint(public_key: bytes | str) -> str:
    """base64 SHA-256 of the key's DER SubjectPublicKeyInfo (cosign's public key hint)."""
    return _b64(hashlib.sha256(load_public_key_der(public_key)).digest())


def batch_bundle(batch: BatchRecord) -> dict[str, Any]:
    """The anchored ``batch`` as a Sigstore bundle v0.3 (a JSON object).

    Raises :class:`VerificationError` when the batch is not anchored (no receipt) or its
    receipt holds something that has no bundle form (hashes that are not hex). The bundle is
    not verified here: that is the reader's job, with keys they pin.
    """
    receipt = batch.receipt
    if receipt is None or not batch.anchored:
        raise VerificationError(f"batch {batch.id} is not anchored: it has no Rekor entry yet")
    material: dict[str, Any] = {"publicKey": {"hint": key_hint(batch.anchor_pubkey)}}
    if isinstance(receipt, RekorV2Receipt):
        try:
            entry = receipt.to_tlog_entry()
        except ValueError:
            raise VerificationError("the receipt's hashes or log id are not hex") from None
        material["tlogEntries"] = [entry]
        material["timestampVerificationData"] = {
            "rfc3161Timestamps": [{"signedTimestamp": receipt.timestamp}]}
    else:
        material["tlogEntries"] = [_v1_tlog_entry(batch)]
    return {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": material,
        "messageSignature": {
            "messageDigest": {
                "algorithm": "SHA2_256",
                "digest": _hex_b64(batch.manifest_sha256, "manifest digest"),
            },
            "signature": _b64(batch.anchor_sig),
        },
    }


def _v1_tlog_entry(batch: BatchRecord) -> dict[str, Any]:
    receipt = batch.receipt
    assert receipt is not None and not isinstance(receipt, RekorV2Receipt)
    proof: dict[str, Any] = {
        "logIndex": str(receipt.tree_index),
        "rootHash": _hex_b64(receipt.root_hash, "root hash"),
        "treeSize": str(receipt.tree_size),
        "hashes": [_hex_b64(h, "inclusion hash") for h in receipt.inclusion_hashes],
    }
    if receipt.checkpoint is not None:
        proof["checkpoint"] = {"envelope": receipt.checkpoint}
    return {
        "logIndex": str(receipt.log_index),
        "logId": {"keyId": _hex_b64(receipt.log_id, "log id")},
        "kindVersion": {"kind": KIND, "version": KIND_VERSION},
        "integratedTime": str(receipt.integrated_time),
        "inclusionPromise": {"signedEntryTimestamp": receipt.signed_entry_timestamp},
        "inclusionProof": proof,
        "canonicalizedBody": receipt.body,
    }


_EC_DETAILS: Final = {
    "secp256r1": "PKIX_ECDSA_P256_SHA_256",
    "secp384r1": "PKIX_ECDSA_P384_SHA_384",
    "secp521r1": "PKIX_ECDSA_P521_SHA_512",
}


def key_details(der: bytes) -> str:
    """The protobuf-specs ``PublicKeyDetails`` name of a DER public key (as Rekor v1 signs)."""
    key = load_der_public_key(der)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_DETAILS:
        return _EC_DETAILS[key.curve.name]
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "PKIX_ED25519"
    if isinstance(key, rsa.RSAPublicKey):
        return "PKIX_RSA_PKCS1V15_2048_SHA256" if key.key_size == 2048 else (
            f"PKIX_RSA_PKCS1V15_{key.key_size}_SHA256")
    raise VerificationError(f"unsupported log key type {type(key).__name__}")


def _timestamp(when: datetime) -> str:
    if when.tzinfo is None:
        raise VerificationError("a trusted root's validity needs a time zone")
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def trusted_root(
    rekor_public_key: bytes | str,
    *,
    base_url: str,
    valid_from: datetime,
    rekor_origin: str | None = None,
    tsa_chain_pem: bytes | str | None = None,
    tsa_url: str | None = None,
) -> dict[str, Any]:
    """A trusted root holding only the Rekor log key ``rekor_public_key`` (PEM or DER).

    ``base_url`` is the log's address (informational: verifying a bundle needs no network);
    ``valid_from`` the start of the key's validity (the log's entries must be integrated at
    or after it). For a Rekor v2 log, ``rekor_origin`` (its checkpoint name) makes the log id
    the checkpoint key id its entries carry, and ``tsa_chain_pem`` (PEM, leaf first) adds the
    pinned TSA as the one timestamp authority (``tsa_url`` is informational too).
    """
    der = load_public_key_der(rekor_public_key)
    key_id = (hashlib.sha256(der).digest() if rekor_origin is None
              else note_key_id(load_log_key(der), rekor_origin))
    return {
        "mediaType": TRUSTED_ROOT_MEDIA_TYPE,
        "tlogs": [{
            "baseUrl": base_url,
            "hashAlgorithm": "SHA2_256",
            "publicKey": {
                "rawBytes": _b64(der),
                "keyDetails": key_details(der),
                "validFor": {"start": _timestamp(valid_from)},
            },
            "logId": {"keyId": _b64(key_id)},
        }],
        "certificateAuthorities": [],
        "ctlogs": [],
        "timestampAuthorities": ([] if tsa_chain_pem is None else
                                 [_timestamp_authority(tsa_chain_pem, tsa_url, valid_from)]),
    }


def _name(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> str:
    values = cert.subject.get_attributes_for_oid(oid)
    return str(values[0].value) if values else ""


def _timestamp_authority(chain_pem: bytes | str, url: str | None,
                         valid_from: datetime) -> dict[str, Any]:
    chain = load_tsa_chain(chain_pem)
    if not chain:
        raise VerificationError("the TSA chain holds no certificate")
    leaf = chain[0]
    authority: dict[str, Any] = {
        "subject": {"organization": _name(leaf, NameOID.ORGANIZATION_NAME),
                    "commonName": _name(leaf, NameOID.COMMON_NAME)},
        "certChain": {"certificates": [{"rawBytes": _b64(c.public_bytes(Encoding.DER))}
                                       for c in chain]},
        "validFor": {"start": _timestamp(valid_from)},
    }
    if url is not None:
        authority["uri"] = url
    return authority
