"""Contract test: shared.tsa against a REAL RFC 3161 timestamp authority (the local stack's
Sigstore timestamp-authority).

Its answer is a DER TimeStampResp that rfc3161-client parses and verifies against the
stack's pinned chain (leaf with the single critical timeStamping key usage, intermediate,
root); a request it cannot serve is a TsaError, a stopped TSA a TsaUnavailable.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from rfc3161_client import (
    HashAlgorithm,
    PKIStatus,
    TimestampRequestBuilder,
    VerificationError,
    VerifierBuilder,
    decode_timestamp_response,
)

from deploy.local.base import default_cache_dir
from deploy.local.stack import Stack
from deploy.local.tsa import Tsa, ensure_tsa_chain
from shared.errors import TsaError, TsaUnavailable
from shared.tsa import TIMESTAMP_PATH, TsaClient

pytestmark = pytest.mark.integration


def _env(stack: Stack) -> dict[str, str]:
    env = stack.endpoints()
    if not env.get("LEDGER_TSA_URL"):
        pytest.fail("the stack exports no timestamp authority (LEDGER_TSA_URL)", pytrace=False)
    return env


def _chain(stack: Stack) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(Path(_env(stack)["LEDGER_TSA_CERT_CHAIN"]).read_bytes())


@pytest.fixture
async def tsa(stack: Stack) -> AsyncIterator[TsaClient]:
    async with TsaClient(_env(stack)["LEDGER_TSA_URL"], timeout_s=10) as client:
        yield client


def test_the_pinned_chain_is_a_timestamping_chain(stack: Stack) -> None:
    leaf, intermediate, root = _chain(stack)
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    root.verify_directly_issued_by(root)


async def test_a_timestamp_verifies_against_the_pinned_chain(
    tsa: TsaClient, stack: Stack,
) -> None:
    data = b"anchor signature " + os.urandom(16)
    der = await tsa.timestamp(data)
    response = decode_timestamp_response(der)
    assert response.status == PKIStatus.GRANTED
    info = response.tst_info
    assert info.message_imprint.message == hashlib.sha256(data).digest()
    assert info.nonce is not None
    leaf, intermediate, root = _chain(stack)
    verifier = (VerifierBuilder().tsa_certificate(leaf)
                .add_intermediate_certificate(intermediate).add_root_certificate(root).build())
    assert verifier.verify_message(response, data)
    with pytest.raises(VerificationError):
        verifier.verify_message(response, data + b"!")
    other = await tsa.timestamp(data)
    assert decode_timestamp_response(other).tst_info.nonce != info.nonce  # a fresh nonce


async def test_a_timestamp_does_not_verify_against_another_chain(
    tsa: TsaClient, stack_run_dir: Path,
) -> None:
    _, other_chain = ensure_tsa_chain(stack_run_dir / "other-tsa-chain")
    leaf, intermediate, root = x509.load_pem_x509_certificates(other_chain.read_bytes())
    response = decode_timestamp_response(await tsa.timestamp(b"data"))
    verifier = (VerifierBuilder().tsa_certificate(leaf)
                .add_intermediate_certificate(intermediate).add_root_certificate(root).build())
    with pytest.raises(VerificationError):
        verifier.verify_message(response, b"data")


async def test_bad_requests_are_tsa_errors(tsa: TsaClient, stack: Stack) -> None:
    url = _env(stack)["LEDGER_TSA_URL"] + TIMESTAMP_PATH
    sha512 = (TimestampRequestBuilder().data(b"x").hash_algorithm(HashAlgorithm.SHA512)
              .nonce(nonce=True).build())
    async with aiohttp.ClientSession() as session:  # malformed, or with the wrong type
        for body, kind in ((b"not DER", "application/timestamp-query"),
                           (sha512.as_bytes(), "application/json")):
            async with session.post(url, data=body, headers={"Content-Type": kind}) as resp:
                assert 400 <= resp.status < 500, kind
    wrong_path = TsaClient(_env(stack)["LEDGER_TSA_URL"] + "/nope", timeout_s=10)
    async with wrong_path:
        with pytest.raises(TsaError) as refused:
            await wrong_path.timestamp(b"x")
    assert 400 <= refused.value.status < 500 and refused.value.retryable


async def test_a_stopped_tsa_is_unavailable(stack_run_dir: Path) -> None:
    service = Tsa(stack_run_dir / "tsa-stopped", default_cache_dir())
    service.start(lambda _m: None)
    client = TsaClient(service.endpoints()["LEDGER_TSA_URL"], timeout_s=5)
    try:
        assert decode_timestamp_response(await client.timestamp(b"up")).status == 0
    finally:
        service.stop()
    async with client:
        with pytest.raises(TsaUnavailable):
            await client.timestamp(b"down")
