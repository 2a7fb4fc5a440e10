"""Pure logic of shared.vault: signature parsing, local verification, error translation.

The stub Transit below answers like OpenBao does (checked by
tests/integration/test_vault_contract.py); it exists for cases the real server will not
produce on demand: a per-item batch error and a signature that does not verify.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from types import SimpleNamespace
from typing import Any

import hvac.exceptions
import pytest
import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared.errors import Policy, VaultError, VaultUnavailable, VerificationError
from shared.settings import Settings
from shared.vault import BATCH_MAX, PublicKey, TransitSigner
from shared.vault_errors import VaultForbidden
from shared.vault_errors import http_error as _http_error
from shared.vault_errors import translate as _translate

pytestmark = pytest.mark.unit


def _ed_key() -> tuple[ed25519.Ed25519PrivateKey, str]:
    private = ed25519.Ed25519PrivateKey.generate()
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return private, base64.b64encode(raw).decode()


def _ec_key() -> tuple[ec.EllipticCurvePrivateKey, str]:
    private = ec.generate_private_key(ec.SECP256R1())
    pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private, pem.decode()


# --- public keys and local verification ----------------------------------------------------


def test_ed25519_public_key_verifies_pure_ed25519() -> None:
    private, b64 = _ed_key()
    key = PublicKey.from_vault("k", 1, "ed25519", b64)
    assert key.pem.startswith("-----BEGIN PUBLIC KEY-----")
    key.verify(b"data", private.sign(b"data"))
    with pytest.raises(VerificationError, match="k v1"):
        key.verify(b"other", private.sign(b"data"))
    with pytest.raises(VerificationError):
        key.verify(b"data", private.sign(b"data"), prehashed_sha256=True)


def test_ecdsa_public_key_verifies_plain_and_prehashed() -> None:
    private, pem = _ec_key()
    key = PublicKey.from_vault("anchor", 2, "ecdsa-p256", pem)
    digest = hashlib.sha256(b"manifest").digest()
    sig = private.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    key.verify(digest, sig, prehashed_sha256=True)
    key.verify(b"manifest", sig)  # same signature, seen as ECDSA-SHA256 over the data
    with pytest.raises(VerificationError):
        key.verify(b"other", sig)
    with pytest.raises(VerificationError):
        key.verify(b"short", sig, prehashed_sha256=True)


@pytest.mark.parametrize(
    ("key_type", "text"),
    [
        ("rsa-2048", "x"),
        ("ed25519", "not base64!"),
        ("ed25519", base64.b64encode(b"short").decode()),
        ("ecdsa-p256", "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"),
    ],
)
def test_unusable_public_keys_are_vault_errors(key_type: str, text: str) -> None:
    with pytest.raises(VaultError, match="'k'"):
        PublicKey.from_vault("k", 1, key_type, text)


def test_p384_key_is_refused() -> None:
    pem = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(VaultError, match="P-256"):
        PublicKey.from_vault("k", 1, "ecdsa-p256", pem)


# --- error translation ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectTimeout(), VaultUnavailable),
        (requests.exceptions.ConnectionError(), VaultUnavailable),
        (TimeoutError(), VaultUnavailable),
        (hvac.exceptions.VaultDown("sealed"), VaultUnavailable),
        (hvac.exceptions.InternalServerError("boom"), VaultUnavailable),
        (hvac.exceptions.RateLimitExceeded("slow"), VaultUnavailable),
        (hvac.exceptions.InvalidRequest(errors=["signing key not found"]), VaultError),
        (hvac.exceptions.Forbidden(errors=["permission denied"]), VaultForbidden),
        (hvac.exceptions.InvalidPath(), VaultError),
    ],
)
def test_translate(exc: BaseException, expected: type[Exception]) -> None:
    out = _translate(exc, key="ledger-ed25519", action="sign")
    assert type(out) is expected
    assert "ledger-ed25519" in str(out)


def test_translate_keeps_vaults_message() -> None:
    out = _translate(
        hvac.exceptions.Forbidden(errors=["1 error occurred:\n\t* permission denied\n\n"]),
        key="k",
        action="sign",
    )
    assert "permission denied" in str(out)
    # Vault refused (not down): still paused on, since no message can be at fault
    assert not isinstance(out, VaultUnavailable) and out.policy is Policy.RETRY


@pytest.mark.parametrize(
    ("status", "body", "expected", "text"),
    [
        (503, b'{"errors":["Vault is sealed"]}', VaultUnavailable, "sealed or down"),
        (500, b"not json", VaultUnavailable, "HTTP 500"),
        (429, b'{"errors":[]}', VaultUnavailable, "HTTP 429"),
        (403, b'{"errors":["1 error occurred:\\n\\t* permission denied\\n\\n"]}', VaultForbidden,
         "permission denied"),
        (400, b'{"errors":["signing key not found"]}', VaultError, "signing key not found"),
        (404, b"{}", VaultError, "is the key created"),
    ],
)
def test_http_answers_are_translated(status: int, body: bytes, expected: type[Exception],
                                     text: str) -> None:
    out = _http_error(status, body, key="ledger-ed25519", action="sign")
    assert type(out) is expected
    assert text in str(out) and "ledger-ed25519" in str(out)


# --- the signer against a stub Transit -----------------------------------------------------


class _StubTransit:
    """Answers read_key/sign_data like OpenBao; can be told to misbehave."""

    def __init__(self) -> None:
        self.ed = [_ed_key()]
        self.ec = [_ec_key()]
        self.batch_sizes: list[int] = []
        self.item_error_at: int | None = None
        self.corrupt = False

    def _keys(self, name: str) -> list[Any]:
        return self.ec if name.startswith("ec") else self.ed

    def read_key(self, name: str, mount_point: str) -> dict[str, Any]:
        if name == "missing":
            raise hvac.exceptions.InvalidPath()
        keys = self._keys(name)
        return {
            "data": {
                "type": "ecdsa-p256" if keys is self.ec else "ed25519",
                "keys": {str(i + 1): {"public_key": k[1]} for i, k in enumerate(keys)},
            }
        }

    def sign_data(self, name: str, mount_point: str, batch_input: list[Any], **kw: Any) -> Any:
        self.batch_sizes.append(len(batch_input))
        keys = self._keys(name)
        version = len(keys)
        private = keys[-1][0]
        results: list[dict[str, Any]] = []
        for i, item in enumerate(batch_input):
            if i == self.item_error_at:
                results.append({"error": "unable to decode input", "key_version": 0})
                continue
            data = base64.b64decode(item["input"])
            if keys is self.ec:
                assert kw == {
                    "prehashed": True,
                    "hash_algorithm": "sha2-256",
                    "marshaling_algorithm": "asn1",
                }
                sig = private.sign(data, ec.ECDSA(Prehashed(hashes.SHA256())))
            else:
                assert kw == {}
                sig = private.sign(data)
            if self.corrupt:
                sig = bytes([sig[0] ^ 1]) + sig[1:] if keys is self.ed else sig[:-2] + b"\0\0"
            results.append(
                {
                    "signature": f"vault:v{version}:" + base64.b64encode(sig).decode(),
                    "key_version": version,
                }
            )
        return {"data": {"batch_results": results}}

    # the SignTransport side: what HttpTransit returns for POST transit/sign/<key>
    async def sign(self, key: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        extra = {k: v for k, v in body.items() if k != "batch_input"}
        answer: dict[str, Any] = self.sign_data(key, "transit", body["batch_input"], **extra)
        data: Mapping[str, Any] = answer["data"]
        return data

    async def close(self) -> None:
        pass


@pytest.fixture
def stub() -> _StubTransit:
    return _StubTransit()


@pytest.fixture
def signer(stub: _StubTransit) -> TransitSigner:
    client = SimpleNamespace(secrets=SimpleNamespace(transit=stub))
    return TransitSigner(Settings(), client_factory=lambda: client, transport=stub)


async def test_batches_are_split_at_batch_max_and_kept_in_order(
    stub: _StubTransit, signer: TransitSigner
) -> None:
    inputs = [i.to_bytes(2, "big") for i in range(BATCH_MAX * 2 + 1)]
    sigs = await signer.sign_batch("ed", inputs)
    assert sorted(stub.batch_sizes) == [1, BATCH_MAX, BATCH_MAX]
    public = stub.ed[0][0].public_key()
    for data, sig in zip(inputs, sigs, strict=True):
        public.verify(sig.raw, data)
    await signer.close()


async def test_ecdsa_inputs_are_hashed_before_signing(
    stub: _StubTransit, signer: TransitSigner
) -> None:
    sig = await signer.sign("ec", b"manifest")
    stub.ec[0][0].public_key().verify(sig.raw, b"manifest", ec.ECDSA(hashes.SHA256()))
    await signer.close()


async def test_per_item_error_raises(stub: _StubTransit, signer: TransitSigner) -> None:
    stub.item_error_at = 1
    with pytest.raises(VaultError, match=r"batch item 1 .*'ed'.*unable to decode"):
        await signer.sign_batch("ed", [b"a", b"b", b"c"])
    await signer.close()


@pytest.mark.parametrize("key", ["ed", "ec"])
async def test_signature_failing_local_verification_raises(
    key: str, stub: _StubTransit, signer: TransitSigner
) -> None:
    stub.corrupt = True
    with pytest.raises(VerificationError):
        await signer.sign(key, b"data")
    await signer.close()


async def test_unknown_version_refreshes_the_key_cache(
    stub: _StubTransit, signer: TransitSigner
) -> None:
    assert set(await signer.public_keys("ed")) == {1}
    stub.ed.append(_ed_key())  # rotated behind the signer's back
    sig = await signer.sign("ed", b"x")
    assert sig.version == 2
    assert set(await signer.public_keys("ed")) == {1, 2}
    await signer.close()


async def test_missing_key_is_a_vault_error(signer: TransitSigner) -> None:
    with pytest.raises(VaultError, match=r"'missing'.*not found"):
        await signer.sign("missing", b"x")
    await signer.close()


async def test_empty_batch_needs_no_vault(stub: _StubTransit, signer: TransitSigner) -> None:
    assert await signer.sign_batch("ed", []) == []
    assert stub.batch_sizes == []
    await signer.close()


def test_repr_hides_the_token() -> None:
    signer = TransitSigner(Settings(vault_token="s.secret-token"))
    assert "secret" not in repr(signer)
