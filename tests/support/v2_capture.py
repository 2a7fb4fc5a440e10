"""Captures the Rekor v2 / RFC 3161 fixtures in ``tests/data/rekor_v2/`` from the real servers.

Not run by the tests: the files it writes are committed, and ``tests/data/rekor_v2/README.md``
says how to run it again. It starts the real rekor-tiles POSIX server (twice: an Ed25519 and
an ECDSA P-256 log key) and the real timestamp-authority server (twice: the pinned TSA and an
unrelated one), submits a hashedrekord v0.0.2 of a manifest signed with an ECDSA P-256 anchor
key, and asks both TSAs for a token over that signature. The batch, its manifest and the anchor
signature are :mod:`tests.support.v2_receipts`' (deterministic); so is the proof bundle of
one of its entries, written last. The timestamp server listens for
metrics on ``:2112`` of every interface, so run this inside a private network namespace::

    unshare -rn sh -c 'ip link set lo up && PYTHONPATH=$PWD python -m tests.support.v2_capture BIN'

where ``BIN`` holds the ``posix`` and ``timestamp-server`` binaries. Private keys stay in a
temporary directory; only public keys and certificates are written.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from rfc3161_client import HashAlgorithm, TimestampRequestBuilder

from shared.signatures import load_public_key_der
from tests.support import v2_receipts
from tests.support.malformed_bundles import payload

OUT = v2_receipts.DATA
ORIGIN = v2_receipts.ORIGIN
FILLERS = 5

_PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


def _pem_private(key: _PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _pem_public(key: _PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _der_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


def _wait_http(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server for {url} exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within 60 s")


@contextmanager
def _server(args: list[str], ready_url: str, log: Path) -> Iterator[None]:
    with log.open("wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_http(ready_url, proc)
            yield
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def _post(url: str, body: bytes, content_type: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=body, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _hashedrekord(digest: bytes, signature: bytes, key_der: bytes) -> bytes:
    return json.dumps({"hashedRekordRequestV002": {
        "digest": base64.b64encode(digest).decode(),
        "signature": {
            "content": base64.b64encode(signature).decode(),
            "verifier": {"publicKey": {"rawBytes": base64.b64encode(key_der).decode()},
                         "keyDetails": "PKIX_ECDSA_P256_SHA_256"},
        },
    }}).encode()


def _rekor_entry(bin_dir: Path, work: Path, name: str, log_key: _PrivateKey,
                 port: int) -> None:
    """Run a log with ``log_key``, fill it, submit the anchor entry; write its 201 answer."""
    data = work / f"{name}-data"
    key_file = work / f"{name}-log.pem"
    key_file.write_bytes(_pem_private(log_key))
    args = [str(bin_dir / "posix"), "serve", "--http-address=127.0.0.1", f"--http-port={port}",
            "--grpc-address=127.0.0.1", f"--grpc-port={port + 1}",
            f"--http-metrics-port={port + 2}", f"--hostname={ORIGIN}",
            f"--storage-dir={data}", f"--signer-filepath={key_file}",
            "--checkpoint-interval=1s", "--persistent-antispam"]
    url = f"http://127.0.0.1:{port}"
    filler_key = ec.generate_private_key(ec.SECP256R1())
    anchor_der = load_public_key_der(v2_receipts.anchor_public_key())
    with _server(args, f"{url}/healthz", work / f"{name}.log"):
        for i in range(FILLERS):
            filler = f"filler {i}".encode()
            sig = filler_key.sign(filler, ec.ECDSA(hashes.SHA256()))
            status, _ = _post(f"{url}/api/v2/log/entries",
                              _hashedrekord(hashlib.sha256(filler).digest(), sig,
                                            _der_public(filler_key)), "application/json")
            assert status == 201, status
        status, answer = _post(f"{url}/api/v2/log/entries",
                               _hashedrekord(hashlib.sha256(v2_receipts.manifest()).digest(),
                                             v2_receipts.anchor_signature(), anchor_der),
                               "application/json")
        assert status == 201, (status, answer[:300])
    (OUT / f"{name}.entry.json").write_bytes(answer)
    (OUT / f"{name}.checkpoint").write_bytes((data / "checkpoint").read_bytes())
    (OUT / f"{name}.pub.pem").write_bytes(_pem_public(log_key))


def _cert(subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
          issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ledger test TSA")])
    now = datetime.now(UTC)
    builder = (x509.CertificateBuilder()
               .subject_name(name)
               .issuer_name(issuer.subject if issuer is not None else name)
               .public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(days=1))
               .not_valid_after(now + timedelta(days=365 * 30))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(
                   digital_signature=not ca, content_commitment=False, key_encipherment=False,
                   data_encipherment=False, key_agreement=False, key_cert_sign=ca,
                   crl_sign=ca, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                              critical=False))
    if issuer is not None:  # the root has no EKU; intermediate and leaf: timeStamping only
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
    return builder.sign(issuer_key, hashes.SHA256())


def _tsa_token(bin_dir: Path, work: Path, name: str, signature: bytes, port: int) -> None:
    """Make a leaf/intermediate/root chain, run a TSA with it, timestamp ``signature``."""
    root_key, mid_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _cert(f"{name} root", root_key, None, root_key, ca=True)
    mid = _cert(f"{name} intermediate", mid_key, root, root_key, ca=True)
    leaf = _cert(f"{name} leaf", leaf_key, mid, mid_key, ca=False)
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, mid, root))
    (work / f"{name}-chain.pem").write_bytes(chain)
    (work / f"{name}-signer.pem").write_bytes(_pem_private(leaf_key))
    args = [str(bin_dir / "timestamp-server"), "serve", "--host=127.0.0.1", f"--port={port}",
            "--timestamp-signer=file", f"--file-signer-key-path={work / f'{name}-signer.pem'}",
            f"--certificate-chain-path={work / f'{name}-chain.pem'}",
            "--disable-ntp-monitoring"]
    url = f"http://127.0.0.1:{port}"
    request = (TimestampRequestBuilder().data(signature)
               .hash_algorithm(HashAlgorithm.SHA256).nonce(nonce=True)
               .cert_request(cert_request=True).build())
    with _server(args, f"{url}/ping", work / f"{name}.log"):
        status, answer = _post(f"{url}/api/v1/timestamp", request.as_bytes(),
                               "application/timestamp-query")
    assert status == 200, (status, answer[:300])
    (OUT / f"{name}.chain.pem").write_bytes(chain)
    (OUT / f"{name}.tsr").write_bytes(answer)


def main(bin_dir: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    signature = v2_receipts.anchor_signature()
    (OUT / "manifest.json").write_bytes(v2_receipts.manifest())
    (OUT / "anchor.pub.pem").write_text(v2_receipts.anchor_public_key())
    (OUT / "anchor.sig").write_bytes(signature)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _rekor_entry(bin_dir, work, "log-ed25519", ed25519.Ed25519PrivateKey.generate(), 3100)
        _rekor_entry(bin_dir, work, "log-ecdsa", ec.generate_private_key(ec.SECP256R1()), 3200)
        _tsa_token(bin_dir, work, "tsa", signature, 3300)
        _tsa_token(bin_dir, work, "other-tsa", signature, 3400)
    (OUT / "bundle.json").write_bytes(v2_receipts.bundle())
    (OUT / "entry.pem").write_bytes(v2_receipts.entry_public_key())
    (OUT / "payload.bin").write_bytes(payload(v2_receipts.PICK))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
