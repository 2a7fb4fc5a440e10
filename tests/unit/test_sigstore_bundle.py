"""shared.sigstore_bundle: a batch as a Sigstore bundle v0.3, and a trusted root for its log.

The batch is the one ``tests.unit.test_bundle.World`` anchors in a synthetic Rekor v1 log.
The documents are checked against the protobuf-specs models of ``sigstore_models`` (strict:
64-bit integers must be strings, bytes base64), and what they carry is checked by the
project's own verifiers: the tlog entry, converted back, is a receipt that verifies against
the log key; the message signature verifies with the anchor key over the manifest.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from sigstore.errors import Error as SigstoreError
from sigstore.models import Bundle as SigstoreBundle
from sigstore.models import TimestampVerificationData
from sigstore.models import TrustedRoot as SigstoreTrustedRoot
from sigstore_models.bundle.v1 import Bundle as BundleModel
from sigstore_models.trustroot.v1 import TrustedRoot as TrustedRootModel

from deploy.local.rekor import COSIGN
from shared.errors import VerificationError
from shared.sigstore_bundle import (
    BUNDLE_MEDIA_TYPE,
    TRUSTED_ROOT_MEDIA_TYPE,
    batch_bundle,
    key_details,
    trusted_root,
)
from shared.verify import (
    ExpectedEntry,
    RekorReceipt,
    RekorV2Receipt,
    v1_response_from_bundle_entry,
    verify_receipt,
    verify_v2_receipt,
)
from tests.support import v2_receipts as v2
from tests.support.recipe import recipe_blocks
from tests.unit.test_bundle import World

pytestmark = pytest.mark.unit

SINCE = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def world() -> World:
    return World()


@pytest.fixture(scope="module")
def bundle(world: World) -> dict[str, Any]:
    return batch_bundle(world.batch)


def _der(pem: str | bytes) -> bytes:
    key = serialization.load_pem_public_key(pem.encode() if isinstance(pem, str) else pem)
    return key.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def test_the_bundle_is_a_protobuf_specs_v03_message_signature_bundle(
    bundle: dict[str, Any], world: World
) -> None:
    model = BundleModel.from_json(json.dumps(bundle))  # strict protobuf JSON
    assert model.media_type == BUNDLE_MEDIA_TYPE == bundle["mediaType"]
    assert model.to_dict() == bundle  # nothing dropped, nothing re-encoded
    receipt = world.batch.receipt
    assert isinstance(receipt, RekorReceipt)
    (entry,) = model.verification_material.tlog_entries
    assert entry.log_index == receipt.log_index
    assert entry.inclusion_proof.log_index == receipt.tree_index
    assert entry.inclusion_proof.tree_size == receipt.tree_size
    assert entry.log_id.key_id.hex() == receipt.log_id
    assert entry.kind_version.kind == "hashedrekord" and entry.kind_version.version == "0.0.1"
    assert entry.integrated_time == receipt.integrated_time
    assert entry.canonicalized_body == base64.b64decode(receipt.body)
    # int64 fields are JSON strings, as the protobuf JSON mapping writes them
    tlog = bundle["verificationMaterial"]["tlogEntries"][0]
    assert isinstance(tlog["logIndex"], str) and isinstance(tlog["integratedTime"], str)
    assert isinstance(tlog["inclusionProof"]["treeSize"], str)
    assert tlog["inclusionProof"]["checkpoint"]["envelope"] == receipt.checkpoint


def test_the_tlog_entry_is_the_receipt_and_verifies_against_the_log_key(
    bundle: dict[str, Any], world: World
) -> None:
    tlog = bundle["verificationMaterial"]["tlogEntries"][0]
    manifest = world.batch.manifest
    verified = verify_receipt(
        v1_response_from_bundle_entry(tlog), world.log_pem,
        expected=ExpectedEntry.for_message(manifest, world.batch.anchor_sig,
                                           world.batch.anchor_pubkey),
    )
    receipt = world.batch.receipt
    assert receipt is not None
    assert verified.model_dump(exclude={"uuid"}) == receipt.model_dump(exclude={"uuid"})


def test_the_message_signature_is_the_anchor_signature_over_the_manifest(
    bundle: dict[str, Any], world: World
) -> None:
    sig = bundle["messageSignature"]
    digest = base64.b64decode(sig["messageDigest"]["digest"])
    assert sig["messageDigest"]["algorithm"] == "SHA2_256"
    assert digest == hashlib.sha256(world.batch.manifest).digest()
    key = serialization.load_pem_public_key(world.batch.anchor_pubkey.encode())
    assert isinstance(key, ec.EllipticCurvePublicKey)
    key.verify(base64.b64decode(sig["signature"]), digest, ec.ECDSA(Prehashed(hashes.SHA256())))
    hint = bundle["verificationMaterial"]["publicKey"]["hint"]
    assert base64.b64decode(hint) == hashlib.sha256(_der(world.batch.anchor_pubkey)).digest()


def test_a_batch_without_a_receipt_has_no_bundle(world: World) -> None:
    pending = replace(world.batch, state="claimed", receipt=None, anchored_at=None)
    with pytest.raises(VerificationError, match="not anchored"):
        batch_bundle(pending)


def test_a_receipt_with_a_hash_that_is_not_hex_has_no_bundle(world: World) -> None:
    receipt = world.batch.receipt
    assert receipt is not None
    bad = replace(world.batch, receipt=receipt.model_copy(update={"root_hash": "zz"}))
    with pytest.raises(VerificationError, match="root hash"):
        batch_bundle(bad)


def test_the_trusted_root_trusts_exactly_the_log_key(world: World) -> None:
    doc = trusted_root(world.log_pem, base_url="http://127.0.0.1:3000", valid_from=SINCE)
    model = TrustedRootModel.from_json(json.dumps(doc))
    assert model.media_type == TRUSTED_ROOT_MEDIA_TYPE
    assert model.to_dict() == doc
    (tlog,) = model.tlogs
    der = _der(world.log_pem)
    assert tlog.public_key.raw_bytes == der
    assert tlog.log_id.key_id == hashlib.sha256(der).digest()
    assert tlog.public_key.key_details.value == "PKIX_ECDSA_P256_SHA_256"
    assert doc["tlogs"][0]["publicKey"]["validFor"] == {"start": "2026-01-01T00:00:00Z"}
    assert not model.certificate_authorities and not model.ctlogs
    assert not model.timestamp_authorities
    # the bundle's log id is this log's
    receipt = world.batch.receipt
    assert receipt is not None and tlog.log_id.key_id.hex() == receipt.log_id


def test_the_trusted_root_wants_an_aware_time(world: World) -> None:
    with pytest.raises(VerificationError, match="time zone"):
        trusted_root(world.log_pem, base_url="http://x", valid_from=datetime(2026, 1, 1))


@pytest.mark.parametrize(("curve", "name"), [(ec.SECP384R1(), "PKIX_ECDSA_P384_SHA_384"),
                                             (ec.SECP521R1(), "PKIX_ECDSA_P521_SHA_512")])
def test_key_details_name_the_curve(curve: ec.EllipticCurve, name: str) -> None:
    der = ec.generate_private_key(curve).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_details(der) == name


def test_sigstore_python_does_not_take_a_key_based_bundle(bundle: dict[str, Any]) -> None:
    """What docs/verification.md says: sigstore-python's public API verifies bundles with a
    signing certificate only, so it refuses this one when it reads it (cosign verifies it)."""
    with pytest.raises(SigstoreError, match="expected certificate in bundle"):
        SigstoreBundle.from_json(json.dumps(bundle))


def test_the_cosign_section_builds_the_tested_cosign_and_uses_no_project_code() -> None:
    text = "\n".join(recipe_blocks(section="## Verifying a batch with cosign"))
    assert f"go install {COSIGN.package}@{COSIGN.version}\n" in text
    for command in ("/sigstore-bundle", "trustedroot+json;version=0.1",
                    "cosign verify-blob --bundle batch.sigstore.json --key"):
        assert command in text, command
    for project in ("ledger ", "shared", "PYTHONPATH", ".venv", "python"):
        assert project not in text, project


# --- a batch anchored in Rekor v2 ------------------------------------------------------------


def test_a_v2_batch_exports_its_v2_entry_and_its_rfc3161_token() -> None:
    batch, _ = v2.batch()
    receipt = batch.receipt
    assert isinstance(receipt, RekorV2Receipt)
    doc = batch_bundle(batch)
    model = BundleModel.from_json(json.dumps(doc))  # strict protobuf JSON
    assert model.to_dict() == doc
    (tlog,) = doc["verificationMaterial"]["tlogEntries"]
    answer = v2.entry()
    answer.pop("inclusionPromise")  # null in the log's answer
    assert tlog == answer  # the entry exactly as the log returned it
    assert "inclusionPromise" not in tlog and tlog["kindVersion"]["version"] == "0.0.2"
    (stamp,) = doc["verificationMaterial"]["timestampVerificationData"]["rfc3161Timestamps"]
    assert stamp == {"signedTimestamp": receipt.timestamp}
    # sigstore-python reads the token as a TimeStampResponse
    (token,) = TimestampVerificationData.from_json(json.dumps(
        doc["verificationMaterial"]["timestampVerificationData"])).rfc3161_timestamps
    assert token.tst_info.message_imprint.message == hashlib.sha256(batch.anchor_sig).digest()
    # what the bundle carries verifies as a v2 receipt against the pinned v2 trust
    again = RekorV2Receipt.from_entry(tlog, base64.b64decode(stamp["signedTimestamp"]))
    verified = verify_v2_receipt(again, v2.trust(), expected=v2.expected())
    assert verified.model_dump() == receipt.model_dump()
    assert doc["messageSignature"]["signature"] == base64.b64encode(batch.anchor_sig).decode()


def test_a_v1_batch_has_no_timestamp_verification_data(bundle: dict[str, Any]) -> None:
    assert "timestampVerificationData" not in bundle["verificationMaterial"]


def test_the_v2_trusted_root_names_the_checkpoint_key_id_and_the_pinned_tsa() -> None:
    chain_pem = (v2.DATA / "tsa.chain.pem").read_bytes()
    doc = trusted_root((v2.DATA / "log-ed25519.pub.pem").read_bytes(),
                       base_url="http://127.0.0.1:3100", valid_from=SINCE,
                       rekor_origin=v2.ORIGIN, tsa_chain_pem=chain_pem,
                       tsa_url="http://127.0.0.1:3300/api/v1/timestamp")
    model = TrustedRootModel.from_json(json.dumps(doc))
    assert model.to_dict() == doc
    (tlog,) = model.tlogs
    assert tlog.log_id.key_id == v2.trust().key_id
    assert tlog.log_id.key_id.hex() == v2.receipt().log_id  # what the entries carry
    assert tlog.public_key.key_details.value == "PKIX_ED25519"
    (tsa,) = model.timestamp_authorities
    pinned = v2.trust().tsa_chain
    assert [c.raw_bytes for c in tsa.cert_chain.certificates] == [
        c.public_bytes(serialization.Encoding.DER) for c in pinned]
    assert tsa.subject.common_name == "tsa leaf" and tsa.subject.organization == "ledger test TSA"
    assert tsa.uri == "http://127.0.0.1:3300/api/v1/timestamp"
    # sigstore-python takes it as a trusted root with one timestamp authority
    root = SigstoreTrustedRoot(model)
    assert len(root.get_timestamp_authorities()) == 1


def test_a_tsa_chain_that_is_not_leaf_first_gives_no_trusted_root() -> None:
    certs = v2.trust().tsa_chain
    reversed_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in reversed(certs))
    with pytest.raises(VerificationError, match="not leaf first"):
        trusted_root((v2.DATA / "log-ed25519.pub.pem").read_bytes(), base_url="http://x",
                     valid_from=SINCE, rekor_origin=v2.ORIGIN, tsa_chain_pem=reversed_pem)
