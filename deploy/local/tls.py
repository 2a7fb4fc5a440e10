"""A private certificate authority for one stack, and server certificates it issues.

Layout under a directory (the stack's ``<stack_dir>/tls/``, or a volume in the compose file):
``ca.crt`` / ``ca.key`` (made once, kept: clients trust ``ca.crt``) and, per server,
``<name>.crt`` / ``<name>.key``. A server certificate is reused at the next start while it
covers the requested DNS names and IP addresses, was issued by this CA and has more than
:data:`RENEW_BEFORE` left; otherwise a new one replaces it. Keys are ECDSA P-256, written
with mode 600; the directory is 0700 (make the key readable by a server's own user with
:func:`install_key`).

Command line (the compose file's certificate jobs)::

    python -m deploy.local.tls CA_DIR NAME --dns postgres --ip 127.0.0.1 \
        [--common-name CN] [--client-auth] [--install DIR] [--pem FILE] [--owner UID:GID]
    python -m deploy.local.tls CA_DIR NAME --client --common-name PRINCIPAL --pem FILE

``--install`` copies the server's certificate, its key and ``ca.crt`` (not the CA's key) into
``DIR``, the key owned by ``--owner``: the directory a server and its clients mount.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.local.files import write_file

__all__ = [
    "CA_CERT",
    "RENEW_BEFORE",
    "LocalCA",
    "ServerCert",
    "install_key",
    "key_pem",
    "write_pem_bundle",
]

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
CA_LIFETIME = dt.timedelta(days=3650)
SERVER_LIFETIME = dt.timedelta(days=397)
RENEW_BEFORE = dt.timedelta(days=30)
_IP = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class ServerCert:
    cert: Path
    key: Path
    ca: Path


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


class LocalCA:
    """The CA in ``directory`` (created at first use)."""

    def __init__(self, directory: Path, *, common_name: str = "signed-ledger local CA") -> None:
        self.directory = directory
        self.common_name = common_name

    @property
    def cert_path(self) -> Path:
        return self.directory / CA_CERT

    def ensure(self) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        """Load the CA, or create it when it does not exist yet."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        key_path = self.directory / CA_KEY
        if self.cert_path.is_file() and key_path.is_file():
            cert = x509.load_pem_x509_certificate(self.cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC private key")
            return cert, key
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, self.common_name)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name).issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )
        write_file(key_path, key_pem(key))
        write_file(self.cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert, key

    def server_cert(self, name: str, *, dns: Sequence[str] = (), ips: Sequence[str] = (),
                    common_name: str = "", client_auth: bool = False) -> ServerCert:
        """``<name>.crt``/``<name>.key`` for these DNS names and IPs: reused when still good.

        ``common_name`` (default: the first name) is the subject's CN; ``client_auth`` lets
        the server also present the certificate as a client (a Kafka broker to its own
        controller listener)."""
        if not dns and not ips:
            raise ValueError("a server certificate needs at least one DNS name or IP address")
        addresses = [ipaddress.ip_address(ip) for ip in ips]
        usages = [ExtendedKeyUsageOID.SERVER_AUTH]
        if client_auth:
            usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
        profile = _Profile(common_name or (list(dns) or [str(addresses[0])])[0], set(dns),
                           set(addresses), tuple(usages))
        return self._issued(name, profile)

    def client_cert(self, name: str, *, common_name: str = "") -> ServerCert:
        """``<name>.crt``/``<name>.key``: a TLS client certificate whose subject is exactly
        ``CN=<common_name>`` (default ``name``; a Kafka principal, mapped by the broker's
        ``ssl.principal.mapping.rules``); reused when still good."""
        usages = (ExtendedKeyUsageOID.CLIENT_AUTH,)
        return self._issued(name, _Profile(common_name or name, set(), set(), usages))

    def _issued(self, name: str, profile: _Profile) -> ServerCert:
        if not name.replace("-", "").replace("_", "").isalnum():
            raise ValueError(f"certificate name {name!r}: letters, digits, - and _ only")
        ca_cert, ca_key = self.ensure()
        out = ServerCert(self.directory / f"{name}.crt", self.directory / f"{name}.key",
                         self.cert_path)
        if not _still_good(out, ca_cert, profile):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _issue(ca_cert, ca_key, key, profile)
            write_file(out.key, key_pem(key))
            write_file(out.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return out


@dataclass(frozen=True, slots=True)
class _Profile:
    """What a leaf certificate says: its CN, its names and what it may be used for."""

    common_name: str
    dns: set[str]
    ips: set[_IP]
    usages: tuple[x509.ObjectIdentifier, ...]


def _issue(ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           key: ec.EllipticCurvePrivateKey, profile: _Profile) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, profile.common_name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(min(now + SERVER_LIFETIME, ca_cert.not_valid_after_utc))
    )
    names: list[x509.GeneralName] = [x509.DNSName(d) for d in sorted(profile.dns)]
    names += [x509.IPAddress(ip) for ip in sorted(profile.ips, key=str)]
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return (
        builder
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=True, key_cert_sign=False, crl_sign=False,
            encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(profile.usages)), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _still_good(out: ServerCert, ca_cert: x509.Certificate, profile: _Profile) -> bool:
    if not (out.cert.is_file() and out.key.is_file()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(out.cert.read_bytes())
        cert.verify_directly_issued_by(ca_cert)
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            dns, ips = set(san.get_values_for_type(x509.DNSName)), set(
                san.get_values_for_type(x509.IPAddress))
        except x509.ExtensionNotFound:
            dns, ips = set(), set()
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    except (ValueError, TypeError, x509.ExtensionNotFound, InvalidSignature):
        return False  # unreadable, not ours, or an older profile: issue a new one
    left = cert.not_valid_after_utc - dt.datetime.now(dt.UTC)
    return (left > RENEW_BEFORE and dns == profile.dns and ips == profile.ips
            and [a.value for a in cn] == [profile.common_name]
            and list(usages) == list(profile.usages))


def install_key(source: ServerCert, directory: Path, *, uid: int | None = None,
                gid: int | None = None) -> ServerCert:
    """Copy a server's certificate, key and the CA into ``directory`` (key mode 600), owned by
    ``uid``/``gid`` when given: servers such as PostgreSQL refuse a key others can read."""
    directory.mkdir(parents=True, exist_ok=True)
    out = ServerCert(directory / source.cert.name, directory / source.key.name,
                     directory / source.ca.name)
    for src, dst, mode in ((source.cert, out.cert, 0o644), (source.key, out.key, 0o600),
                           (source.ca, out.ca, 0o644)):
        shutil.copyfile(src, dst)
        dst.chmod(mode)
        if uid is not None:
            os.chown(dst, uid, -1 if gid is None else gid)
    return out


def write_pem_bundle(issued: ServerCert, path: Path, *, uid: int | None = None,
                     gid: int | None = None) -> Path:
    """Write ``issued``'s key and certificate as one PEM file (mode 600; a Kafka PEM key
    store, or a client's ``KAFKA_SSL_CERTFILE``) and ``ca.crt`` next to it; returns the
    bundle's path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, issued.key.read_bytes() + issued.cert.read_bytes())
    ca = path.parent / CA_CERT
    shutil.copyfile(issued.ca, ca)
    ca.chmod(0o644)
    if uid is not None:
        for written in (path, ca):
            os.chown(written, uid, -1 if gid is None else gid)
    return path


def _owner(text: str) -> tuple[int | None, int | None]:
    uid_text, _, gid_text = text.partition(":")
    uid = int(uid_text) if uid_text else None
    return uid, int(gid_text) if gid_text else uid


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m deploy.local.tls",
                                description="Create a CA once and issue a certificate.")
    p.add_argument("directory", type=Path)
    p.add_argument("name", help="file name stem of the certificate")
    p.add_argument("--dns", action="append", default=[])
    p.add_argument("--ip", action="append", default=[])
    p.add_argument("--common-name", default="", help="the subject's CN (default: first name)")
    p.add_argument("--client", action="store_true",
                   help="a client certificate (CN = --common-name or NAME; no host names)")
    p.add_argument("--client-auth", action="store_true",
                   help="a server certificate that may also act as a client")
    p.add_argument("--install", type=Path, default=None,
                   help="copy certificate, key and ca.crt (not the CA key) into this directory")
    p.add_argument("--pem", type=Path, default=None,
                   help="write key and certificate as one PEM file (and ca.crt next to it)")
    p.add_argument("--owner", default="", help="UID:GID owning the installed key (the server)")
    args = p.parse_args(argv)
    ca = LocalCA(args.directory)
    if args.client:
        issued = ca.client_cert(args.name, common_name=args.common_name)
    else:
        issued = ca.server_cert(args.name, dns=args.dns, ips=args.ip,
                                common_name=args.common_name, client_auth=args.client_auth)
    uid, gid = _owner(args.owner)
    if args.pem is not None:
        print(f"{write_pem_bundle(issued, args.pem, uid=uid, gid=gid)} (CA {issued.ca})")
    if args.install is not None:
        issued = install_key(issued, args.install, uid=uid, gid=gid)
        args.install.chmod(0o755)
    print(f"{issued.cert} (CA {issued.ca})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
