"""shared.signatures: the one parser of Vault signatures and the offline key and signature checks."""

from __future__ import annotations

import base64
import hashlib
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared import signatures
from shared.errors import VerificationError

pytestmark = pytest.mark.unit


def _pem(private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


# --- vault:v<N>:<base64> ---------------------------------------------------------------------


def test_parse_vault_signature() -> None:
    assert signatures.parse_vault_signature("vault:v3:" + base64.b64encode(b"sig").decode()) == (3, b"sig")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected vault:v<N>:<base64>"),
        ("vault:v1", "expected vault:v<N>:<base64>"),
        ("x:v1:AA==", "expected vault:v<N>:<base64>"),
        ("vault:1:AA==", "expected vault:v<N>:<base64>"),
        ("vault:v1:AA==:", "expected vault:v<N>:<base64>"),
        ("vault:vx:AA==", "bad version or base64 in vault:v<N>:<base64>"),
        ("vault:v1:!!", "bad version or base64 in vault:v<N>:<base64>"),
        ("vault:v0:AA==", "bad version or empty signature"),
        ("vault:v1:", "bad version or empty signature"),
    ],
)
def test_parse_vault_signature_rejects_malformed(text: str, reason: str) -> None:
    with pytest.raises(signatures.MalformedSignature) as exc:
        signatures.parse_vault_signature(text)
    assert isinstance(exc.value, VerificationError)
    assert exc.value.reason == reason
    assert str(exc.value) == f"malformed Vault signature ({reason})"


# --- public keys -------------------------------------------------------------------------------


def test_a_key_reads_the_same_from_pem_text_pem_bytes_and_der() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    der = private.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert signatures.load_public_key_der(_pem(private)) == der
    assert signatures.load_public_key_der(_pem(private).decode()) == der
    assert signatures.load_public_key_der(b"\n  " + _pem(private)) == der
    assert signatures.load_public_key_der(der) == der


@pytest.mark.parametrize("junk", [b"", b"not a key", "-----BEGIN PUBLIC KEY-----\nAAAA\n"])
def test_what_is_not_a_public_key_is_refused(junk: bytes | str) -> None:
    with pytest.raises(VerificationError, match="not a public key"):
        signatures.load_public_key_der(junk)


def test_only_an_ed25519_key_is_an_entry_key() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    key = signatures.ed25519_key(signatures.load_public_key_der(_pem(private)))
    assert key is not None and key.public_bytes_raw() == private.public_key().public_bytes_raw()
    assert signatures.ed25519_key(signatures.load_public_key_der(_pem(ec.generate_private_key(ec.SECP256R1())))) is None


def test_ed25519_verifies_only_the_signed_bytes_with_the_signing_key() -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    key = signatures.ed25519_key(signatures.load_public_key_der(_pem(private)))
    assert key is not None
    signature = private.sign(b"statement")
    assert signatures.ed25519_verifies(key, signature, b"statement")
    assert not signatures.ed25519_verifies(key, signature, b"statement ")
    assert not signatures.ed25519_verifies(key, signature[:-1] + bytes([signature[-1] ^ 1]), b"statement")
    assert not signatures.ed25519_verifies(key, b"short", b"statement")
    other = signatures.ed25519_key(signatures.load_public_key_der(_pem(ed25519.Ed25519PrivateKey.generate())))
    assert other is not None and not signatures.ed25519_verifies(other, signature, b"statement")


# --- the anchor signature ---------------------------------------------------------------------


def test_manifest_signature_is_ecdsa_p256_over_the_digest() -> None:
    anchor = ec.generate_private_key(ec.SECP256R1())
    digest = hashlib.sha256(b"manifest").digest()
    signature = anchor.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    signatures.verify_manifest_signature(_pem(anchor), digest, signature)
    signatures.verify_manifest_signature(_pem(anchor).decode(), digest, signature)
    with pytest.raises(VerificationError, match="does not verify"):
        signatures.verify_manifest_signature(_pem(anchor), hashlib.sha256(b"other").digest(), signature)
    with pytest.raises(VerificationError, match="P-256"):
        signatures.verify_manifest_signature(_pem(ec.generate_private_key(ec.SECP384R1())), digest, signature)
    with pytest.raises(VerificationError, match="not a public key"):
        signatures.verify_manifest_signature(b"junk", digest, signature)


# --- offline ------------------------------------------------------------------------------------


def test_signatures_import_nothing_that_talks_to_a_network() -> None:
    code = (
        "import sys, shared.signatures\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in "
        "{'aiohttp', 'aiokafka', 'asyncpg', 'hvac', 'requests', 'httpx', 'urllib3', 'nacl', "
        "'services', 'ledger'} "
        "or m in {'shared.rekor', 'shared.settings', 'shared.vault', 'shared.db', 'shared.kafka'}]"
        "\nassert not bad, bad\n"
    )
    subprocess.run(
        [sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2], timeout=60
    )
