"""Unit tests of the local Rekor v2 and timestamp authority services' own files: keys, the
timestamping chain, the tiles server's path rules and the wrapper module's cache key."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID

from deploy.local.gotools import GoModule
from deploy.local.rekor_v2 import ORIGIN, ensure_ed25519_key, log_key_id
from deploy.local.stack import Stack
from deploy.local.tiles_server import resolve
from deploy.local.tsa import TSA_SERVER, ensure_tsa_chain
from shared.rekor_v2 import key_details, log_id_for

pytestmark = pytest.mark.unit


def test_the_v2_services_are_part_of_the_default_stack(tmp_path: Path) -> None:
    stack = Stack(tmp_path, tmp_path / "cache", environ={})
    assert list(stack.services)[-2:] == ["rekor_v2", "tsa"]
    external = Stack(tmp_path, tmp_path / "cache", services=["rekor_v2", "tsa"], environ={
        "LEDGER_REKOR_V2_SERVER_URL": "http://v2.example", "LEDGER_REKOR_V2_ORIGIN": "o",
        "LEDGER_TSA_URL": "http://tsa.example", "LEDGER_TSA_CERT_CHAIN": "/c.pem"})
    assert external.services == {}
    assert external.endpoints() == {
        "LEDGER_REKOR_V2_SERVER_URL": "http://v2.example", "LEDGER_REKOR_V2_ORIGIN": "o",
        "LEDGER_TSA_URL": "http://tsa.example", "LEDGER_TSA_CERT_CHAIN": "/c.pem"}


def test_the_log_key_is_made_once_and_its_id_is_the_note_key_hash(tmp_path: Path) -> None:
    public_path = ensure_ed25519_key(tmp_path)
    signer = tmp_path / "signer.pem"
    assert oct(signer.stat().st_mode & 0o777) == "0o600"
    first = signer.read_bytes()
    assert ensure_ed25519_key(tmp_path) == public_path and signer.read_bytes() == first
    key = serialization.load_pem_public_key(public_path.read_bytes())
    assert isinstance(key, ed25519.Ed25519PublicKey)
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    want = hashlib.sha256(ORIGIN.encode() + b"\n\x01" + raw).digest()
    assert log_key_id(ORIGIN, key) == want == log_id_for(ORIGIN, key)
    assert log_id_for("other.origin", key) != want


def test_log_ids_and_key_details_of_other_key_types() -> None:
    ecdsa = ec.generate_private_key(ec.SECP256R1()).public_key()
    der = ecdsa.public_bytes(serialization.Encoding.DER,
                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert log_id_for("any", ecdsa) == hashlib.sha256(der).digest()  # origin plays no part
    pem = ecdsa.public_bytes(serialization.Encoding.PEM,
                             serialization.PublicFormat.SubjectPublicKeyInfo)
    assert key_details(pem) == (der, "PKIX_ECDSA_P256_SHA_256")
    ed = ed25519.Ed25519PrivateKey.generate().public_key()
    assert key_details(ed.public_bytes(serialization.Encoding.PEM,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
                       )[1] == "PKIX_ED25519_PH"
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError, match="P-256"):
        key_details(p384)  # its SHA-384 pairing does not fit a SHA-256 digest


def test_the_timestamping_chain(tmp_path: Path) -> None:
    signer, chain = ensure_tsa_chain(tmp_path)
    leaf, intermediate, root = x509.load_pem_x509_certificates(chain.read_bytes())
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
    assert eku.critical and list(eku.value) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    inter_eku = intermediate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(inter_eku) == [ExtendedKeyUsageOID.TIME_STAMPING]
    assert intermediate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    leaf.verify_directly_issued_by(intermediate)
    intermediate.verify_directly_issued_by(root)
    key = serialization.load_pem_private_key(signer.read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key() == leaf.public_key()
    assert oct(signer.stat().st_mode & 0o777) == "0o600"
    assert ensure_tsa_chain(tmp_path) == (signer, chain)
    assert x509.load_pem_x509_certificates(chain.read_bytes())[0] == leaf  # kept
    signer.unlink()
    ensure_tsa_chain(tmp_path)
    assert x509.load_pem_x509_certificates(chain.read_bytes())[0] != leaf  # made anew


def test_the_tiles_server_serves_only_the_tiles_layout(tmp_path: Path) -> None:
    root = tmp_path / "log"
    for rel in ("checkpoint", "tile/0/000", "tile/0/000.p/5", "tile/entries/x001/002.p/1",
                "tile/1/x001/x234/067", ".state/treeState"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    (tmp_path / "secret").write_bytes(b"s")
    (root / "tile" / "0" / "001").symlink_to(tmp_path / "secret")
    root = root.resolve()
    for ok in ("/checkpoint", "/tile/0/000", "/tile/0/000.p/5", "/tile/entries/x001/002.p/1",
               "/tile/1/x001/x234/067", "/checkpoint?x=1"):
        assert resolve(root, ok) is not None, ok
    for bad in ("/.state/treeState", "/tile/../.state/treeState", "/", "/tile/0/00",
                "/tile/0/001", "/tile/0/000.p/999x", "/tile/0/002", "/tile/a/000"):
        assert resolve(root, bad) is None, bad


def test_the_wrapper_module_digest_covers_its_files(tmp_path: Path) -> None:
    copy = tmp_path / "tsa-server"
    shutil.copytree(TSA_SERVER.directory, copy)
    module = GoModule("tsa-server", copy)
    digest = module.digest()
    assert digest == GoModule("tsa-server", TSA_SERVER.directory).digest()
    for name in ("go.mod", "go.sum", "main.go"):
        original = (copy / name).read_bytes()
        (copy / name).write_bytes(original + b"\n")
        assert module.digest() != digest, name
        (copy / name).write_bytes(original)
    assert module.digest() == digest
    assert "timestamp-authority/v2 v2.1.3" in (copy / "go.mod").read_text()
