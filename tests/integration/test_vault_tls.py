"""OpenBao speaks TLS in the local stack, by default, and every client verifies it.

* The session's stack (started with the defaults) hands out an ``https`` ``VAULT_ADDR`` and
  ``VAULT_CACERT`` naming the stack's CA: a client with that CA signs; a client without it
  is refused with a certificate verification failure (the stages' adapter and a bare TLS
  client alike); plain HTTP to the port gets nothing signed.
* A stack directory whose OpenBao was initialised over plain HTTP (``LEDGER_OPENBAO_TLS=0``,
  or a stack made before TLS was the default) serves HTTPS at its next start, with the same
  raft storage, root token, stage tokens and keys; the certificate is kept across restarts.
"""

from __future__ import annotations

import asyncio
import os
import socket
import ssl
import stat
import urllib.parse
from pathlib import Path
from typing import Any

import pytest

from deploy.local.base import default_cache_dir
from deploy.local.openbao import SIGNING_KEY, STAGE_POLICIES, OpenBao
from shared.errors import VaultError, VaultUnavailable
from shared.health import VaultProbe
from shared.settings import Settings
from shared.vault import TransitSigner
from shared.vault_token import VaultToken

pytestmark = pytest.mark.integration


def _tls_handshake(addr: str, cafile: str | None) -> list[tuple[str, str]]:
    """A bare TLS client to ``addr`` (verifying against ``cafile``, else the system's CAs):
    the server certificate's subject alternative names; raises on a verification failure."""
    url = urllib.parse.urlsplit(addr)
    assert url.hostname is not None and url.port is not None
    context = ssl.create_default_context(cafile=cafile)
    with (socket.create_connection((url.hostname, url.port), timeout=10) as raw,
          context.wrap_socket(raw, server_hostname=url.hostname) as tls):
        cert = tls.getpeercert()
    assert cert is not None
    names = cert.get("subjectAltName", ())
    assert isinstance(names, tuple)
    return [(str(entry[0]), str(entry[1])) for entry in names]


async def _check_verified_clients_only(settings: Settings) -> None:
    """Signing works with ``VAULT_CACERT``; without it, or over plain HTTP, nothing signs."""
    made: list[TransitSigner] = []

    def signer(s: Settings) -> TransitSigner:
        made.append(TransitSigner(s, token=VaultToken.for_stage(s, "signer"), timeout_s=5))
        return made[-1]

    try:
        trusted = signer(settings)
        signed = await trusted.sign(SIGNING_KEY, b"over TLS")
        (await trusted.public_keys(SIGNING_KEY))[signed.version].verify(b"over TLS", signed.raw)
        probe = await VaultProbe.open(settings, SIGNING_KEY, timeout_s=5)
        try:
            assert (await probe.check()).ok
        finally:
            await probe.close()

        untrusting = signer(settings.model_copy(update={"vault_cacert": ""}))
        # a TLS failure (the bare client below shows it is the certificate verification)
        with pytest.raises(VaultUnavailable, match=r"SSLError|Certificate"):
            await untrusting.sign(SIGNING_KEY, b"to a server I cannot verify")
        plain = signer(settings.model_copy(update={
            "vault_addr": settings.vault_addr.replace("https://", "http://"),
            "vault_cacert": ""}))
        with pytest.raises((VaultError, VaultUnavailable)):
            await plain.sign(SIGNING_KEY, b"in clear")
    finally:
        for s in made:
            await s.close()

    assert ("IP Address", "127.0.0.1") in await asyncio.to_thread(
        _tls_handshake, settings.vault_addr, settings.vault_cacert)
    with pytest.raises(ssl.SSLCertVerificationError, match="certificate verify failed"):
        await asyncio.to_thread(_tls_handshake, settings.vault_addr, None)


@pytest.mark.timeout(120)
async def test_the_default_stack_serves_vault_over_https_verified_by_its_ca(
    stack: Any, settings: Settings
) -> None:
    openbao = stack.require("openbao")
    assert isinstance(openbao, OpenBao)
    assert openbao.tls
    assert settings.vault_addr.startswith("https://127.0.0.1:")
    assert settings.vault_cacert == str(openbao.ca_path)
    assert openbao.ca_path == stack.stack_dir / "tls" / "ca.crt"  # the stack's one CA
    assert 'tls_disable' not in openbao.config_path.read_text()
    env_file = stack.env_file.read_text()
    assert f"VAULT_CACERT={openbao.ca_path}" in env_file
    assert "VAULT_ADDR=https://127.0.0.1:" in env_file
    await _check_verified_clients_only(settings)


@pytest.mark.timeout(300)
async def test_a_stack_initialised_over_http_serves_https_at_its_next_start(
    tmp_path: Path,
) -> None:
    stack_dir = tmp_path / "stack"
    plain = OpenBao(stack_dir, default_cache_dir(), tls=False)
    await asyncio.to_thread(plain.start, print)
    try:
        env = plain.endpoints()
        assert env["VAULT_ADDR"].startswith("http://127.0.0.1:")
        assert "VAULT_CACERT" not in env
        before = {stage: plain.stage_token(stage) for stage in STAGE_POLICIES}
        root, public = plain.root_token, plain.public_key(SIGNING_KEY)
    finally:
        await asyncio.to_thread(plain.stop)

    bao = OpenBao(stack_dir, default_cache_dir(), tls=True)
    await asyncio.to_thread(bao.start, print)
    try:
        env = bao.endpoints()
        assert env["VAULT_ADDR"].startswith("https://127.0.0.1:")
        assert env["VAULT_CACERT"] == str(bao.ca_path)
        assert OpenBao(stack_dir, default_cache_dir(), tls=False).endpoints() == env
        key_file = bao.ca_path.parent / "openbao.key"
        assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
        # the same storage: nothing was initialised again, no token re-issued
        assert bao.root_token == root
        assert {stage: bao.stage_token(stage) for stage in STAGE_POLICIES} == before
        assert bao.public_key(SIGNING_KEY, 1) == public
        await _check_verified_clients_only(Settings.from_env(env))

        cert = (bao.ca_path.parent / "openbao.crt").read_bytes()
        await asyncio.to_thread(bao.stop)
        await asyncio.to_thread(bao.start, print)
        assert (bao.ca_path.parent / "openbao.crt").read_bytes() == cert  # reused
        await _check_verified_clients_only(Settings.from_env(bao.endpoints()))
    finally:
        await asyncio.to_thread(bao.stop)
