"""An RFC 3161 timestamp authority (Sigstore's timestamp-authority), as a local service.

The program is ``tsa-server``, a small Go module of the project's own
(``deploy/local/tsa-server``: ``go.mod``, ``go.sum``, ``main.go``) that runs the pinned
timestamp-authority's server package. The upstream ``timestamp-server`` command would also
open a Prometheus listener on ``:2112`` on every interface (not configurable, fatal when the
port is busy); the wrapper serves the same REST API on 127.0.0.1 only, with its metrics on a
loopback port of their own. It is built once with ``go build`` into ``<cache_dir>/go-bin``
and rebuilt only when the module's files change (:func:`deploy.local.gotools.ensure_go_module`).

On the first start the service makes, in ``<stack_dir>/tsa/``, a private certificate chain
for timestamping: a root CA, an intermediate CA (extended key usage timeStamping, which the
TSA demands of intermediates) and the TSA's leaf certificate (not a CA, one critical extended
key usage: timeStamping, as RFC 3161 section 2.3 wants). ``signer.pem`` is the leaf's key
(PKCS#8, mode 600); ``chain.pem`` holds leaf, intermediate and root: the chain clients pin
(``LEDGER_TSA_CERT_CHAIN``). The CA keys are not kept: the chain is made again only when a
file is missing or the leaf is about to expire.

The TSA answers ``POST /api/v1/timestamp`` (``application/timestamp-query``) with a DER
``TimeStampResp``; responses carry the leaf certificate only (``include-chain-in-response``
stays off: verifiers use the pinned chain).
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.base import LocalService, Progress
from deploy.local.files import write_file
from deploy.local.gotools import GoModule, ensure_go_module
from deploy.local.openbao import stable_port
from deploy.local.process import ManagedProcess, StackError, wait_until
from deploy.local.sockets import require_loopback_only
from deploy.local.tls import key_pem

__all__ = [
    "CHAIN_FILE",
    "SIGNER_FILE",
    "TSA_ENV_NAMES",
    "TSA_SERVER",
    "Tsa",
    "ensure_tsa_chain",
]

#: The wrapper module (timestamp-authority v2.1.3, whose go.mod says ``go 1.25.0``).
TSA_SERVER = GoModule("tsa-server", Path(__file__).resolve().parent / "tsa-server", (1, 25, 0))

SIGNER_FILE = "signer.pem"
CHAIN_FILE = "chain.pem"
#: The environment variables :meth:`Tsa.endpoints` provides.
TSA_ENV_NAMES: tuple[str, ...] = ("LEDGER_TSA_URL", "LEDGER_TSA_CERT_CHAIN")

_CA_LIFETIME = dt.timedelta(days=3650)
_LEAF_LIFETIME = dt.timedelta(days=825)
_RENEW_BEFORE = dt.timedelta(days=30)
_HTTP_TIMEOUT = 10.0


# --- the certificate chain -------------------------------------------------------------------


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signed-ledger local stack"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _certificate(
    subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate | None,
    issuer_key: ec.EllipticCurvePrivateKey, *, ca: bool, path_length: int | None,
    lifetime: dt.timedelta,
) -> x509.Certificate:
    """One certificate of the chain; ``issuer`` None makes it self-signed (the root)."""
    now = dt.datetime.now(dt.UTC)
    issuer_name = issuer.subject if issuer is not None else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject)).issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + lifetime)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                       critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer_key.public_key()), critical=False)
    )
    if issuer is not None:  # the intermediate and the leaf: timestamping only
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=not ca)
    return builder.sign(issuer_key, hashes.SHA256())


def _chain_good(signer: Path, chain: Path) -> bool:
    try:
        certs = x509.load_pem_x509_certificates(chain.read_bytes())
        key = serialization.load_pem_private_key(signer.read_bytes(), password=None)
    except (OSError, ValueError):
        return False
    der = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    left = certs[0].not_valid_after_utc - dt.datetime.now(dt.UTC) if certs else dt.timedelta()
    return (len(certs) == 3 and isinstance(key, ec.EllipticCurvePrivateKey)
            and key.public_key().public_bytes(*der) == certs[0].public_key().public_bytes(*der)
            and left > _RENEW_BEFORE)


def ensure_tsa_chain(directory: Path) -> tuple[Path, Path]:
    """``(signer.pem, chain.pem)`` in ``directory``: made once (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    signer, chain = directory / SIGNER_FILE, directory / CHAIN_FILE
    if _chain_good(signer, chain):
        return signer, chain
    root_key, inter_key, leaf_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    root = _certificate("ledger local TSA root", root_key, None, root_key,
                        ca=True, path_length=1, lifetime=_CA_LIFETIME)
    inter = _certificate("ledger local TSA intermediate", inter_key, root, root_key,
                         ca=True, path_length=0, lifetime=_CA_LIFETIME)
    leaf = _certificate("ledger local TSA", leaf_key, inter, inter_key,
                        ca=False, path_length=None, lifetime=_LEAF_LIFETIME)
    write_file(signer, key_pem(leaf_key))
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, inter, root))
    write_file(chain, pem, 0o644)
    return signer, chain


# --- the service -----------------------------------------------------------------------------


def _http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=_HTTP_TIMEOUT) as resp:  # noqa: S310 - loopback
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class Tsa(LocalService):
    """tsa-server on 127.0.0.1 with a file signer and the stack's timestamping chain."""

    name = "tsa"

    def __init__(self, stack_dir: Path, cache_dir: Path) -> None:
        super().__init__(stack_dir, cache_dir)
        self._proc: ManagedProcess | None = None

    def port(self, key: str = "port") -> int:
        return stable_port(self, key)

    @property
    def signer_path(self) -> Path:
        return self.service_dir / SIGNER_FILE

    @property
    def chain_path(self) -> Path:
        return self.service_dir / CHAIN_FILE

    @property
    def url(self) -> str:
        port = self.load_state().get("ports", {}).get("port")
        if port is None:
            raise StackError("TSA: not started yet (no port chosen)")
        return f"http://127.0.0.1:{port}"

    def install(self, progress: Progress) -> None:
        binary = ensure_go_module(TSA_SERVER, self.cache_dir, progress)
        progress(f"tsa: {binary.name} ready in {binary.parent}")

    def start(self, progress: Progress) -> None:
        if self._proc is not None and self._proc.running():
            return
        started = time.monotonic()
        binary = ensure_go_module(TSA_SERVER, self.cache_dir, progress)
        port, metrics = self.port("port"), self.port("metrics")
        signer, chain = ensure_tsa_chain(self.service_dir)
        self._proc = ManagedProcess(
            name="tsa-server",
            argv=[str(binary), "--host=127.0.0.1", f"--port={port}",
                  f"--metrics-port={metrics}", f"--file-signer-key-path={signer}",
                  f"--certificate-chain-path={chain}"],
            stack_dir=self.stack_dir, cwd=self.service_dir, stop_timeout=10,
        )
        progress(f"tsa: starting tsa-server on 127.0.0.1:{port}")
        self._proc.start()
        try:
            self._check_ready(chain)
            require_loopback_only("TSA", self.processes())
        except BaseException:
            self.stop()
            raise
        progress(f"tsa: ready on {self.url} in {time.monotonic() - started:.1f}s")

    def _check_ready(self, chain: Path) -> None:
        """Up once it serves its chain, and the chain it serves is the one we pin."""
        url = f"{self.url}/api/v1/timestamp/certchain"
        wait_until(lambda: _http_get(url)[0] == 200, timeout=60,
                   what="tsa-server GET /api/v1/timestamp/certchain", proc=self._proc)
        served = x509.load_pem_x509_certificates(_http_get(url)[1])
        if served != x509.load_pem_x509_certificates(chain.read_bytes()):
            raise StackError(f"TSA: the served chain differs from {chain}")

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.stop()
            self._proc = None

    def endpoints(self) -> dict[str, str]:
        if self.load_state().get("ports", {}).get("port") is None:
            return {}  # never started in this stack
        return {"LEDGER_TSA_URL": self.url, "LEDGER_TSA_CERT_CHAIN": str(self.chain_path)}

    def processes(self) -> list[ManagedProcess]:
        return [self._proc] if self._proc is not None else []
