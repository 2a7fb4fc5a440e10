"""Contract test: shared.rekor and shared.verify against a REAL Rekor v1 (the local stack's).

It keeps the fake Rekor of tests/unit/test_rekor_client.py honest: the real server answers
201 with a receipt that verifies, 409 with the existing uuid, 400 for a bad signature.

The Rekor comes from the ``stack`` fixture (tests/conftest.py); without that fixture the
environment's ``REKOR_SERVER_URL`` and ``REKOR_PUBLIC_KEY`` (a PEM file path or the PEM) are
used; with neither, the tests are skipped.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore._internal.trust import Keyring
from sigstore.models import TransparencyLogEntry
from sigstore_models.common import v1 as common_v1

from shared.errors import RekorConflict, RekorError
from shared.merkle import verify_consistency
from shared.rekor import RekorClient
from shared.signatures import verify_manifest_signature
from shared.verify import (
    ExpectedEntry,
    LogKey,
    load_log_key,
    verify_checkpoint,
    verify_receipt,
)
from tests.support.fake_rekor import FakeLog

pytestmark = pytest.mark.integration

TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RekorTarget:
    url: str
    log_key: LogKey


def _endpoints(request: pytest.FixtureRequest) -> Mapping[str, str]:
    try:
        stack = request.getfixturevalue("stack")
    except pytest.FixtureLookupError:
        return os.environ
    endpoints = stack.endpoints() if callable(getattr(stack, "endpoints", None)) else stack
    return dict(endpoints)


def _read_key(value: str) -> bytes:
    if "-----BEGIN" in value:
        return value.encode()
    return Path(value).read_bytes()


@pytest.fixture(scope="module")
def rekor_target(request: pytest.FixtureRequest) -> RekorTarget:
    env = _endpoints(request)
    url = env.get("REKOR_SERVER_URL", "")
    key = env.get("REKOR_PUBLIC_KEY") or env.get("LEDGER_REKOR_PUBLIC_KEY") or ""
    if not url or not key:
        pytest.skip("no Rekor: neither the stack fixture nor REKOR_SERVER_URL/REKOR_PUBLIC_KEY")
    return RekorTarget(url=url, log_key=load_log_key(_read_key(key)))


@pytest.fixture
async def rekor(rekor_target: RekorTarget) -> AsyncIterator[RekorClient]:
    async with RekorClient(rekor_target.url, timeout_s=TIMEOUT_S) as client:
        yield client


@dataclass(frozen=True)
class Signed:
    digest: bytes
    signature: bytes
    pem: bytes

    @property
    def expected(self) -> ExpectedEntry:
        return ExpectedEntry(self.digest.hex(), self.signature, self.pem)


def _sign_manifest(key: ec.EllipticCurvePrivateKey) -> Signed:
    manifest = b'{"batch":"contract-' + os.urandom(8).hex().encode() + b'","size":1}'
    digest = hashlib.sha256(manifest).digest()
    sig = key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verify_manifest_signature(pem, digest, sig)
    return Signed(digest, sig, pem)


def _sigstore_keyring(log_key: LogKey) -> Any:
    return Keyring(
        [
            common_v1.PublicKey.model_validate(
                {
                    "rawBytes": base64.b64encode(log_key.der).decode(),
                    "keyDetails": common_v1.PublicKeyDetails.PKIX_ECDSA_P256_SHA_256,
                }
            )
        ]
    )


async def test_public_key_is_the_pinned_key(rekor: RekorClient, rekor_target: RekorTarget) -> None:
    pem = await rekor.get_public_key()
    assert load_log_key(pem).der == rekor_target.log_key.der


async def test_create_verify_conflict_and_reads(
    rekor: RekorClient, rekor_target: RekorTarget
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = _sign_manifest(key)

    created = await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    receipt = verify_receipt(created.response, rekor_target.log_key, expected=signed.expected)
    assert receipt.uuid == created.uuid

    # Independent verifier: sigstore-python accepts the same receipt.
    keyring = _sigstore_keyring(rekor_target.log_key)
    TransparencyLogEntry._from_v1_response(created.response)._verify(keyring)
    TransparencyLogEntry._from_v1_response(receipt.to_v1_response())._verify(keyring)

    # The same entry again (same stored signature): 409 naming the same uuid.
    with pytest.raises(RekorConflict) as conflict:
        await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    assert conflict.value.uuid == created.uuid

    # Reads by uuid and by index give the same entry, and both verify.
    by_uuid = await rekor.get_entry_by_uuid(created.uuid)
    by_index = await rekor.get_entry_by_index(receipt.log_index)
    assert by_uuid.uuid == by_index.uuid == created.uuid
    for got in (by_uuid, by_index):
        for field in ("body", "integratedTime", "logID", "logIndex"):
            assert got.entry[field] == created.entry[field]
        verify_receipt(got.response, rekor_target.log_key, expected=signed.expected)

    # The log only grows: the current checkpoint verifies and is consistent with the receipt's.
    info = await rekor.get_log_info()
    assert info.tree_size >= receipt.tree_size
    checkpoint = verify_checkpoint(info.signed_tree_head, rekor_target.log_key)
    assert checkpoint.size == info.tree_size
    assert checkpoint.root_hash.hex() == info.root_hash
    if info.tree_size > receipt.tree_size:
        proof = await rekor.get_consistency_proof(receipt.tree_size, info.tree_size)
        verify_consistency(
            receipt.tree_size,
            info.tree_size,
            bytes.fromhex(receipt.root_hash),
            bytes.fromhex(proof.root_hash),
            [bytes.fromhex(h) for h in proof.hashes],
        )
        assert proof.root_hash == info.root_hash


async def test_bad_signature_is_a_400(rekor: RekorClient) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    signed = _sign_manifest(key)
    other_digest = hashlib.sha256(b"not what was signed" + os.urandom(8)).hexdigest()
    with pytest.raises(RekorError) as exc:
        await rekor.create_hashedrekord(other_digest, signed.signature, signed.pem)
    assert not isinstance(exc.value, RekorConflict)
    assert exc.value.status == 400


async def test_conflict_answer_shape(rekor: RekorClient) -> None:
    """The 409 carries the uuid in Location *and* in the message (the fake relies on it)."""
    key = ec.generate_private_key(ec.SECP256R1())
    signed = _sign_manifest(key)
    created = await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    with pytest.raises(RekorConflict) as exc:
        await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    assert created.uuid in str(exc.value)


def _shape(value: Any) -> Any:
    """The key structure of a JSON answer (types of leaves)."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(value[0])] if value else []
    return type(value).__name__


async def test_the_unit_tests_fake_log_answers_in_the_real_shape(
    rekor: RekorClient, rekor_target: RekorTarget
) -> None:
    """tests/support/fake_rekor.FakeLog stands in for this log in unit tests (receipts,
    checkpoints, consistency): its answers must be shaped as the real ones."""
    key = ec.generate_private_key(ec.SECP256R1())
    signed = _sign_manifest(key)
    created = await rekor.create_hashedrekord(signed.digest.hex(), signed.signature, signed.pem)
    fake = FakeLog(ec.generate_private_key(ec.SECP256R1()))
    body = json.loads(base64.b64decode(created.entry["body"]))
    ((fake_uuid, fake_entry),) = fake.add(body).items()
    assert _shape(fake_entry) == _shape(created.entry)
    assert len(fake_uuid) == len(created.uuid), "tree id (8 bytes) + leaf hash, in hex"

    real_info, fake_info = await rekor.get_log_info(), await fake.get_log_info()
    real_head = verify_checkpoint(real_info.signed_tree_head, rekor_target.log_key)
    fake_head = verify_checkpoint(fake_info.signed_tree_head,
                                  load_log_key(fake.priv.public_key().public_bytes(
                                      serialization.Encoding.DER,
                                      serialization.PublicFormat.SubjectPublicKeyInfo)))
    for info, head in ((real_info, real_head), (fake_info, fake_head)):
        assert (head.size, head.root_hash.hex()) == (info.tree_size, info.root_hash)
        assert head.origin.endswith(f" - {info.tree_id}"), "origin: <host> - <tree id>"
        assert len(head.signatures) == 1
    assert len(real_head.other_lines) == len(fake_head.other_lines)
