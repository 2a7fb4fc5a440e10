"""Ingest's HTTPS listener: LEDGER_TLS_CERT_FILE + LEDGER_TLS_KEY_FILE, TLS 1.2 or later."""

from __future__ import annotations

import asyncio
import ipaddress
import ssl
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from services.ingest import build_app
from services.ingest.service import IngestProcess
from services.ingest.tls import server_tls_context
from shared.errors import ConfigError
from shared.settings import Settings
from tests.unit.test_ingest_api import GOOD, Harness

pytestmark = pytest.mark.unit


def write_certificate(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA, and a server certificate it signed for ``host``: (ca, cert, key) PEM files."""
    now = datetime.now(UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ledger test CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]),
                       critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    return paths


def test_no_files_is_plain_http_and_half_a_pair_is_a_config_error(tmp_path: Path) -> None:
    assert server_tls_context(Settings()) is None
    _, cert, key = write_certificate(tmp_path)
    with pytest.raises(ConfigError, match="LEDGER_TLS_CERT_FILE is set but LEDGER_TLS_KEY_FILE"):
        server_tls_context(Settings(tls_cert_file=str(cert)))
    with pytest.raises(ConfigError, match="LEDGER_TLS_KEY_FILE is set but LEDGER_TLS_CERT_FILE"):
        server_tls_context(Settings(tls_key_file=str(key)))
    with pytest.raises(ConfigError, match=r"LEDGER_TLS_KEY_FILE='/nonexistent/k\.pem': cannot read"):
        server_tls_context(Settings(tls_cert_file=str(cert), tls_key_file="/nonexistent/k.pem"))
    with pytest.raises(ConfigError, match="not a PEM certificate chain"):
        server_tls_context(Settings(tls_cert_file=str(key), tls_key_file=str(key)))
    context = server_tls_context(Settings(tls_cert_file=str(cert), tls_key_file=str(key)))
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2


def test_the_process_refuses_to_start_with_half_a_pair(tmp_path: Path) -> None:
    _, cert, _ = write_certificate(tmp_path)
    with pytest.raises(ConfigError, match="HTTPS needs both"):
        IngestProcess(Settings(auth_disabled=True, tls_cert_file=str(cert)))
    # and from the environment, with the variables' names
    settings = Settings.from_env({"LEDGER_TLS_CERT_FILE": str(cert),
                                  "LEDGER_AUTH_DISABLED": "true"})
    assert settings.tls_cert_file == str(cert) and settings.tls_key_file == ""


async def test_ingest_serves_https_to_a_verifying_client(tmp_path: Path) -> None:
    ca, cert, key = write_certificate(tmp_path)
    h = Harness(tmp_path, tls_cert_file=str(cert), tls_key_file=str(key))
    context = server_tls_context(h.settings)
    runner = web.AppRunner(build_app(h.settings, h.deps), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
        await site.start()
        port = runner.addresses[0][1]
        trusting = ssl.create_default_context(cafile=str(ca))  # verifies chain and hostname
        async with aiohttp.ClientSession() as session:
            async with session.post(
                f"https://127.0.0.1:{port}/append", json=GOOD,
                headers={**h.auth(), "Prefer": "respond-async"}, ssl=trusting,
            ) as r:
                assert r.status == 202
            _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=trusting)
            assert writer.get_extra_info("ssl_object").version() in ("TLSv1.2", "TLSv1.3")
            writer.close()
            await writer.wait_closed()
            # a client that does not trust the CA refuses the server
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                await session.get(f"https://127.0.0.1:{port}/livez",
                                  ssl=ssl.create_default_context())
            # plain HTTP to the HTTPS port gets no HTTP answer
            with pytest.raises(aiohttp.ClientError):
                await session.get(f"http://127.0.0.1:{port}/livez")
    finally:
        await runner.cleanup()
    assert len(h.publisher.sent) == 1
