"""What the offline verification of Rekor v1 and v2 receipts shares.

The check names and :class:`ReceiptVerificationError`; pinned log keys (:class:`LogKey`);
signed notes (checkpoints: :func:`parse_checkpoint`, :func:`verify_checkpoint`); hex proof
hashes; and :class:`ExpectedEntry`, what was submitted. :mod:`shared.verify` (v1) and
:mod:`shared.verify_v2` (v2) build on it and :mod:`shared.verify` re-exports all of it.

Like them, this module never does I/O.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa

from shared.errors import VerificationError
from shared.signatures import load_public_key_der

__all__ = [
    "CHECKS",
    "Check",
    "Checkpoint",
    "ExpectedEntry",
    "LogKey",
    "NoteSignature",
    "ReceiptVerificationError",
    "fail",
    "hex32",
    "load_log_key",
    "parse_checkpoint",
    "verify_checkpoint",
]

Check = Literal[
    "receipt", "log_id", "uuid", "set", "inclusion", "checkpoint", "body", "timestamp"
]
#: The names of the checks, in the order :func:`shared.verify.verify_receipt` runs them; a v2
#: receipt (:func:`shared.verify_v2.verify_v2_receipt`) has no ``uuid`` and ``set`` but an
#: RFC 3161 ``timestamp``.
CHECKS: tuple[Check, ...] = (
    "receipt", "log_id", "uuid", "set", "inclusion", "checkpoint", "body", "timestamp"
)


class ReceiptVerificationError(VerificationError):
    """A receipt check failed; ``check`` names which one (see :data:`CHECKS`)."""

    def __init__(self, check: Check, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check: Check = check
        self.detail = detail


def fail(check: Check, detail: str) -> ReceiptVerificationError:
    """The error for a failed ``check`` (to be raised)."""
    return ReceiptVerificationError(check, detail)


# --- keys -----------------------------------------------------------------------------------

_PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey


@dataclass(frozen=True, slots=True)
class LogKey:
    """A transparency log's public key and its log id (hex SHA-256 of the DER SPKI)."""

    key: _PublicKey
    der: bytes
    log_id: str

    @property
    def key_hint(self) -> bytes:
        """The 4-byte hint that Rekor v1 puts in front of checkpoint signatures."""
        return bytes.fromhex(self.log_id)[:4]

    def verify(self, signature: bytes, data: bytes) -> None:
        """Verify a signature over ``data`` the way Rekor v1 signs (SET, checkpoints).

        ECDSA uses the hash matching the curve (P-256→SHA-256, P-384→SHA-384,
        P-521→SHA-512); Ed25519 is pure; RSA is PKCS#1 v1.5 with SHA-256.
        Raises ``InvalidSignature``.
        """
        key = self.key
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature, data, ec.ECDSA(_EC_HASH[key.curve.name]))
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, data)
        else:
            key.verify(signature, data, padding.PKCS1v15(), hashes.SHA256())


_EC_HASH: dict[str, hashes.HashAlgorithm] = {
    "secp256r1": hashes.SHA256(),
    "secp384r1": hashes.SHA384(),
    "secp521r1": hashes.SHA512(),
}


def load_log_key(key: bytes | str) -> LogKey:
    """Parse a log public key (PEM or DER; ECDSA P-256/P-384/P-521, Ed25519 or RSA)."""
    der = load_public_key_der(key)
    pub = serialization.load_der_public_key(der)
    if isinstance(pub, ec.EllipticCurvePublicKey):
        if pub.curve.name not in _EC_HASH:
            raise VerificationError(f"unsupported log key curve {pub.curve.name}")
    elif not isinstance(pub, ed25519.Ed25519PublicKey | rsa.RSAPublicKey):
        raise VerificationError(f"unsupported log key type {type(pub).__name__}")
    return LogKey(key=pub, der=der, log_id=hashlib.sha256(der).hexdigest())


@dataclass(frozen=True, slots=True)
class NoteSignature:
    name: str
    key_hint: bytes
    signature: bytes


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """A parsed signed note: the signed text and its signature lines."""

    origin: str
    size: int
    root_hash: bytes
    other_lines: tuple[str, ...]
    signed_text: bytes
    signatures: tuple[NoteSignature, ...]


_SIG_LINE = re.compile(r"^\u2014 (?P<name>[^ ]+) (?P<sig>[A-Za-z0-9+/=]+)$")


def parse_checkpoint(note: str) -> Checkpoint:
    """Parse a Rekor v1 checkpoint (a signed note). Raises VerificationError if malformed.

    Format: ``origin\\nsize\\nb64(root)\\n[other lines\\n]\\n— name b64(hint ‖ sig)\\n…``;
    the signature covers everything up to and including the newline before the blank line.
    """
    text, sep, sig_block = note.partition("\n\n")
    if not sep:
        raise fail("checkpoint", "no blank line between the note text and its signatures")
    lines = text.split("\n")
    if len(lines) < 3:
        raise fail("checkpoint", "note text needs origin, size and root hash")
    origin, size_s, root_b64, *other = lines
    if not origin:
        raise fail("checkpoint", "empty origin")
    if (not size_s.isascii() or not size_s.isdigit() or len(size_s) > 19
            or (size_s != "0" and size_s.startswith("0"))):
        raise fail("checkpoint", f"bad tree size {size_s[:40]!r}")
    try:
        root = base64.b64decode(root_b64, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise fail("checkpoint", "root hash is not valid base64") from None
    if len(root) != 32:
        raise fail("checkpoint", f"root hash has {len(root)} bytes, not 32")
    if not sig_block.endswith("\n"):
        raise fail("checkpoint", "signature block does not end with a newline")
    signatures = []
    for line in sig_block[:-1].split("\n"):
        m = _SIG_LINE.match(line)
        if m is None:
            raise fail("checkpoint", f"malformed signature line {line!r}")
        try:
            raw = base64.b64decode(m["sig"], validate=True)
        except ValueError:  # binascii.Error, or text that is not ASCII
            raise fail("checkpoint", "signature is not valid base64") from None
        if len(raw) < 5:
            raise fail("checkpoint", "signature too short")
        signatures.append(NoteSignature(name=m["name"], key_hint=raw[:4], signature=raw[4:]))
    return Checkpoint(
        origin=origin,
        size=int(size_s),
        root_hash=root,
        other_lines=tuple(other),
        signed_text=(text + "\n").encode(),
        signatures=tuple(signatures),
    )


def verify_checkpoint(note: str, log_key: LogKey, *, key_hint: bytes | None = None
                      ) -> Checkpoint:
    """Parse a checkpoint and check its signature by ``log_key``, on the signature lines
    whose 4-byte key hint is ``key_hint`` (default: Rekor v1's, :attr:`LogKey.key_hint`)."""
    cp = parse_checkpoint(note)
    hint = log_key.key_hint if key_hint is None else key_hint
    candidates = [s for s in cp.signatures if s.key_hint == hint]
    if not candidates:
        raise fail(
            "checkpoint",
            f"no signature line with the log key's hint {hint.hex()} "
            f"(hints present: {', '.join(s.key_hint.hex() for s in cp.signatures)})",
        )
    for sig in candidates:
        try:
            log_key.verify(sig.signature, cp.signed_text)
        except InvalidSignature:
            continue
        return cp
    raise fail("checkpoint", "signature does not verify with the log key")


def hex32(value: str, what: str, check: Check) -> bytes:
    """32 bytes from hex, or the error for ``check`` naming ``what``."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raise fail(check, f"{what} is not hex") from None
    if len(raw) != 32:
        raise fail(check, f"{what} has {len(raw)} bytes, not 32")
    return raw


@dataclass(frozen=True, slots=True)
class ExpectedEntry:
    """What we submitted as a hashedrekord: the digest, the DER signature, the public key."""

    digest_hex: str
    signature: bytes
    public_key: bytes | str  # PEM or DER

    @classmethod
    def for_message(
        cls, message: bytes, signature: bytes, public_key: bytes | str
    ) -> ExpectedEntry:
        """The expectation for a signature over ``message`` (hashed here with SHA-256)."""
        return cls(hashlib.sha256(message).hexdigest(), signature, public_key)

