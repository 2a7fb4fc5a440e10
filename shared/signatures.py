"""Signatures and public keys, offline: the Vault signature text, Ed25519 and ECDSA P-256.

The project's one implementation of each primitive that the signing side and every verifier
share:

* :func:`parse_vault_signature` splits Vault Transit's ``vault:v<N>:<base64>`` text, the form
  entry signatures are stored and published in;
* :func:`load_public_key_der` reads a PEM or DER public key as DER SubjectPublicKeyInfo, the
  form keys are compared in (PEM text differs between encoders, the DER does not);
* :func:`ed25519_key` and :func:`ed25519_verifies` check an entry's pure Ed25519 signature
  over its statement;
* :func:`verify_manifest_signature` checks a batch's ECDSA P-256 anchor signature over the
  SHA-256 of its manifest.

The Vault adapter (:mod:`shared.vault`), the receipt and bundle verifiers
(:mod:`shared.verify`, :mod:`shared.bundle`) and ``ledger audit`` all import these.

This module must never do I/O and imports nothing that talks to a network: an auditor runs
it offline. Parsed keys are cached (a ledger holds a handful of keys and millions of rows).
"""

from __future__ import annotations

import base64
import binascii
import functools

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared.errors import VerificationError

__all__ = [
    "MalformedSignature",
    "ed25519_key",
    "ed25519_verifies",
    "load_public_key_der",
    "parse_vault_signature",
    "verify_manifest_signature",
]

_KEY_CACHE = 256
#: A PEM public key is at most a few KiB (RSA 8192: about 1.5 KiB); anything longer is not one.
MAX_PUBLIC_KEY_SIZE = 16 * 1024
_SHA256_LEN = 32


class MalformedSignature(VerificationError):
    """A signature text that is not ``vault:v<N>:<base64>``; ``reason`` says what is wrong."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"malformed Vault signature ({reason})")
        self.reason = reason


def parse_vault_signature(text: str) -> tuple[int, bytes]:
    """Split ``vault:v<N>:<base64>`` into (N, raw signature); :class:`MalformedSignature`."""
    parts = text.split(":")
    if len(parts) != 3 or parts[0] != "vault" or not parts[1].startswith("v"):
        raise MalformedSignature("expected vault:v<N>:<base64>")
    try:
        version = int(parts[1][1:])
        raw = base64.b64decode(parts[2], validate=True)
    except (ValueError, binascii.Error):
        raise MalformedSignature("bad version or base64 in vault:v<N>:<base64>") from None
    if version < 1 or not raw:
        raise MalformedSignature("bad version or empty signature")
    return version, raw


def load_public_key_der(key: bytes | str) -> bytes:
    """DER SubjectPublicKeyInfo of a PEM (``PUBLIC KEY``) or DER public key.

    Raises VerificationError when it is not a public key (or is larger than any key is, so
    that the cache never holds large untrusted values).
    """
    if len(key) > MAX_PUBLIC_KEY_SIZE:
        raise VerificationError(f"not a public key: {len(key)} characters, more than any key")
    return _load_public_key_der(key)


@functools.lru_cache(maxsize=_KEY_CACHE)
def _load_public_key_der(key: bytes | str) -> bytes:
    data = key.encode("utf-8", "surrogatepass") if isinstance(key, str) else key
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            pub = serialization.load_pem_public_key(data)
        else:
            pub = serialization.load_der_public_key(data)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise VerificationError(f"not a public key: {exc}") from None
    return pub.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@functools.lru_cache(maxsize=_KEY_CACHE)
def ed25519_key(der: bytes) -> ed25519.Ed25519PublicKey | None:
    """The Ed25519 public key in a DER SubjectPublicKeyInfo, or None for any other key."""
    pub = serialization.load_der_public_key(der)
    return pub if isinstance(pub, ed25519.Ed25519PublicKey) else None


def ed25519_verifies(key: ed25519.Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """True when ``signature`` is ``key``'s pure Ed25519 signature over ``message``."""
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True


def verify_manifest_signature(
    public_key: bytes | str, manifest_sha256: bytes, signature_der: bytes
) -> None:
    """Check an ECDSA P-256 signature (ASN.1 DER) over a SHA-256 prehash of the manifest.

    ``public_key`` is PEM or DER; raises VerificationError when the key is not P-256 or the
    signature does not verify.
    """
    if len(manifest_sha256) != _SHA256_LEN:
        raise VerificationError("manifest digest must be 32 bytes (SHA-256)")
    pub = serialization.load_der_public_key(load_public_key_der(public_key))
    if not isinstance(pub, ec.EllipticCurvePublicKey) or pub.curve.name != "secp256r1":
        raise VerificationError("anchor key is not an ECDSA P-256 key")
    try:
        pub.verify(signature_der, manifest_sha256, ec.ECDSA(Prehashed(hashes.SHA256())))
    except InvalidSignature:
        raise VerificationError("manifest signature does not verify with the anchor key") from None
