"""Async client for a Rekor v2 log (rekor-tiles): its write API and its tiles, on one session.

A v2 log has two addresses: the *write URL* (``POST {url}/api/v2/log/entries``) and the
*read URL* where its signed checkpoint and Merkle tiles are published (``{url}/checkpoint``,
``{url}/tile/...``, the C2SP tlog-tiles layout, usually a bucket or CDN). The write API
answers a new entry with its TransparencyLogEntry (inclusion proof and checkpoint
included); everything else — an entry that already exists, a consistency proof between two
checkpoints — is rebuilt from the tiles (:mod:`shared.tiles`).

Every aiohttp and asyncio error is translated here, so callers see only :mod:`shared.errors`:

=====================================  =====================================================
the log's answer                       raised
=====================================  =====================================================
409 Conflict                           :class:`RekorConflict` with ``log_index`` (the
                                       ``X-Log-Index`` header) and no uuid
400 and other 4xx                      :class:`RekorError` with the log's message and status
429, 5xx, timeout, connection error,   :class:`RekorUnavailable` (retryable)
a missing tile, an entry not yet in
the published checkpoint, an answer
that is not what the API promises
=====================================  =====================================================

Every request has an explicit, finite timeout. The client verifies nothing (it does not
even check the checkpoint's signature): :mod:`shared.verify_v2` does that, offline, against
the pinned log key and origin.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from shared.errors import ConfigError, RekorConflict, RekorError, RekorUnavailable
from shared.http_client import SessionClient
from shared.settings import Settings
from shared.tiles import Checkpoint, TileReader, parse_checkpoint
from shared.trust import load_configured_key
from shared.untrusted import read_bounded
from shared.verify import load_log_key
from shared.verify_v2 import note_key_id

__all__ = ["RekorV2Client", "RekorV2Entry", "b64", "key_details", "log_id_for"]

_ENTRIES = "/api/v2/log/entries"
_MAX_TILE_BYTES = 1 << 20


@dataclass(frozen=True, slots=True)
class RekorV2Entry:
    """One log entry: its index and the TransparencyLogEntry (protobuf JSON) as the log
    returned it, or as rebuilt from the tiles in the same shape."""

    log_index: int
    entry: Mapping[str, Any] = field(repr=False)


def log_id_for(origin: str, public_key: object) -> bytes:
    """The log id (checkpoint note key id, 32 bytes) rekor-tiles reports for its key: the
    verifier's :func:`shared.verify_v2.note_key_id` (Ed25519: ``SHA-256(origin "\\n" 0x01
    raw key)``; ECDSA: ``SHA-256(DER SubjectPublicKeyInfo)``). The note's 4-byte key hint is
    its prefix."""
    if not isinstance(public_key, ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
                      | rsa.RSAPublicKey):
        raise TypeError(f"no Rekor v2 log id for a {type(public_key).__name__}")
    der = public_key.public_bytes(serialization.Encoding.DER,
                                  serialization.PublicFormat.SubjectPublicKeyInfo)
    return note_key_id(load_log_key(der), origin)


def key_details(public_key_pem: bytes | str) -> tuple[bytes, str]:
    """(DER SPKI, ``keyDetails``) of an entry's public key, for a hashedrekord v0.0.2 request.

    The digest is SHA-256, so ECDSA P-256, Ed25519 (verified pre-hashed, ``ed25519ph``) and
    RSA PKCS#1 v1.5 keys are accepted; ValueError for anything else."""
    pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
    key = serialization.load_pem_public_key(pem)
    der = key.public_bytes(serialization.Encoding.DER,
                           serialization.PublicFormat.SubjectPublicKeyInfo)
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1":
        return der, "PKIX_ECDSA_P256_SHA_256"
    if isinstance(key, ed25519.Ed25519PublicKey):
        return der, "PKIX_ED25519_PH"
    if isinstance(key, rsa.RSAPublicKey) and key.key_size in (2048, 3072, 4096):
        return der, f"PKIX_RSA_PKCS1V15_{key.key_size}_SHA256"
    raise ValueError("a hashedrekord with a SHA-256 digest needs an ECDSA P-256, Ed25519 or "
                     "RSA (2048/3072/4096) public key")


class RekorV2Client(SessionClient):
    """A Rekor v2 client. Use as ``async with RekorV2Client(...) as rekor:`` or call close().

    ``log_id`` (32 bytes, see :func:`log_id_for`) is what :meth:`get_entry` writes as the
    rebuilt entry's ``logId``; :meth:`from_settings` derives it from the pinned key and
    origin.
    """

    user_agent = "signed-ledger/0.1 (rekor-v2-client)"

    def __init__(
        self,
        base_url: str,
        tiles_url: str,
        *,
        timeout_s: float,
        session: aiohttp.ClientSession | None = None,
        log_id: bytes | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._tiles = (tiles_url or base_url).rstrip("/")
        super().__init__(timeout_s=timeout_s, session=session)
        self._log_id = log_id

    @classmethod
    def from_settings(cls, settings: Settings) -> RekorV2Client:
        """Write URL ``REKOR_SERVER_URL``, read URL ``LEDGER_REKOR_TILES_URL`` (default: the
        write URL), log id from ``REKOR_PUBLIC_KEY`` and ``LEDGER_REKOR_ORIGIN``."""
        key = load_configured_key(settings.rekor_public_key)
        origin = settings.rekor_origin
        log_id = note_key_id(key, origin) if key is not None and origin else None
        return cls(settings.rekor_server_url, settings.rekor_read_url,
                   timeout_s=settings.rekor_timeout_s, log_id=log_id)

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def tiles_url(self) -> str:
        return self._tiles

    # --- the write API ----------------------------------------------------------------------

    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> RekorV2Entry:
        """Submit a hashedrekord v0.0.2 entry (SHA-256 digest, DER signature, PEM key).

        Returns the new entry (201, after the log's next checkpoint). Raises RekorConflict
        (409, with ``log_index``) when the log already has it."""
        digest = bytes.fromhex(digest_hex)
        if len(digest) != 32:
            raise ValueError("digest_hex must be a SHA-256 digest (64 hex digits)")
        der, details = key_details(public_key_pem)
        request = {"hashedRekordRequestV002": {
            "digest": b64(digest),
            "signature": {
                "content": b64(signature_der),
                "verifier": {"publicKey": {"rawBytes": b64(der)},
                             "keyDetails": details},
            },
        }}
        _, _, body = await self._send("POST", self._base + _ENTRIES, payload=request)
        try:
            entry = json.loads(body)
            index = int(entry["logIndex"])
            complete = isinstance(entry["inclusionProof"], dict) and entry["canonicalizedBody"]
        except (ValueError, KeyError, TypeError) as exc:
            raise RekorUnavailable(f"Rekor v2 entry answer is malformed: {exc!r}") from None
        if not complete:
            raise RekorUnavailable("Rekor v2 entry answer has no inclusion proof or body")
        return RekorV2Entry(log_index=index, entry=entry)

    # --- the read URL -----------------------------------------------------------------------

    async def get_checkpoint(self) -> str:
        """The log's current checkpoint (signed note text), not verified."""
        return (await self._checkpoint()).text

    async def get_entry(self, log_index: int) -> RekorV2Entry:
        """An existing entry, rebuilt from the tiles in the shape of a 201 answer, with an
        inclusion proof for the current checkpoint (included)."""
        if log_index < 0:
            raise ValueError("log_index must be >= 0")
        if self._log_id is None:
            raise ConfigError("rebuilding a Rekor v2 entry needs the log id: configure the "
                              "log's public key and origin (RekorV2Client(log_id=...))")
        checkpoint = await self._checkpoint()
        if log_index >= checkpoint.size:
            raise RekorUnavailable(f"Rekor v2 entry {log_index} is not in the published "
                                   f"checkpoint yet (size {checkpoint.size})")
        reader = TileReader(self._fetch_tile, checkpoint.size)
        try:
            body = await reader.entry(log_index)
            proof = await reader.inclusion_proof(log_index)
            kind = json.loads(body)
            kind_version = {"kind": str(kind["kind"]), "version": str(kind["apiVersion"])}
        except (ValueError, KeyError, TypeError) as exc:
            raise RekorUnavailable(f"Rekor v2 tiles for entry {log_index}: {exc}") from None
        entry = {
            "logIndex": str(log_index),
            "logId": {"keyId": b64(self._log_id)},
            "kindVersion": kind_version,
            "integratedTime": "0",
            "inclusionPromise": None,
            "inclusionProof": {
                "logIndex": str(log_index),
                "rootHash": b64(checkpoint.root_hash),
                "treeSize": str(checkpoint.size),
                "hashes": [b64(h) for h in proof],
                "checkpoint": {"envelope": checkpoint.text},
            },
            "canonicalizedBody": b64(body),
        }
        return RekorV2Entry(log_index=log_index, entry=entry)

    async def consistency_proof(self, old_size: int, new_size: int) -> tuple[bytes, ...]:
        """RFC 6962 consistency proof from ``old_size`` to ``new_size`` leaves, computed from
        the tiles (``new_size`` at most the current checkpoint's)."""
        if not 0 <= old_size <= new_size:
            raise ValueError("need 0 <= old_size <= new_size")
        checkpoint = await self._checkpoint()
        if new_size > checkpoint.size:
            raise RekorUnavailable(f"Rekor v2 checkpoint has {checkpoint.size} entries, "
                                   f"fewer than {new_size}")
        reader = TileReader(self._fetch_tile, checkpoint.size)
        try:
            return tuple(await reader.consistency_proof(old_size, new_size))
        except ValueError as exc:
            raise RekorUnavailable(f"Rekor v2 tiles: {exc}") from None

    async def _checkpoint(self) -> Checkpoint:
        _, _, body = await self._send("GET", f"{self._tiles}/checkpoint")
        try:
            return parse_checkpoint(body.decode())
        except (UnicodeDecodeError, ValueError) as exc:
            raise RekorUnavailable(f"Rekor v2 checkpoint is malformed: {exc}") from None

    async def _fetch_tile(self, path: str) -> bytes:
        _, _, body = await self._send("GET", f"{self._tiles}/{path}")
        return body

    # --- HTTP and error translation ---------------------------------------------------------

    async def _send(
        self, method: str, url: str, *, payload: Any = None
    ) -> tuple[int, Mapping[str, str], bytes]:
        """One request; (status, headers, body) of a 2xx answer, or raises ours."""
        what = f"Rekor v2 {method} {url.removeprefix(self._base).removeprefix(self._tiles)}"
        try:
            async with self._get_session().request(
                method, url, json=payload, timeout=self._timeout
            ) as resp:
                body = await read_bounded(resp.content, _MAX_TILE_BYTES)
                status, headers = resp.status, resp.headers
        except TimeoutError:
            raise RekorUnavailable(f"{what} timed out after {self._timeout.total} s") from None
        except aiohttp.ClientError as exc:
            raise RekorUnavailable(f"{what} failed: {exc!r}") from None
        if len(body) > _MAX_TILE_BYTES:
            raise RekorUnavailable(f"{what}: answer larger than {_MAX_TILE_BYTES} bytes")
        if 200 <= status < 300:
            return status, headers, body
        message = _message(body) or f"HTTP {status}"
        if status == 409 and method == "POST":
            index = headers.get("X-Log-Index", "")
            raise RekorConflict(f"Rekor v2 already has this entry: {message}", uuid=None,
                                log_index=int(index) if index.isdigit() else None)
        if status == 404 and method == "GET":
            raise RekorUnavailable(f"{what}: not published (404)")
        if status == 429 or status >= 500:
            raise RekorUnavailable(f"{what} answered {status}: {message}")
        raise RekorError(f"{what} answered {status}: {message}", status=status)


def b64(data: bytes) -> str:
    """Standard base64, as protobuf JSON writes bytes."""
    return base64.b64encode(data).decode()


def _message(body: bytes) -> str:
    """The log's error body is ``{"code": N, "message": "..."}``; else the raw text."""
    text = body.decode(errors="replace")
    try:
        value = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return str(value["message"])[:500]
    return text.strip()[:500]
