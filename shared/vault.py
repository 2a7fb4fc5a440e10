"""Vault Transit adapter: signs with keys held in Vault (or OpenBao) and checks every signature.

The only place in the project that talks to Vault, with two clients for two kinds of work:

* **signing** (the hot path: every ledger entry) goes over one keep-alive aiohttp session,
  several ``batch_input`` calls in flight, bodies encoded and decoded with orjson;
* **key metadata and health** (rare) go through hvac, which is synchronous, in a small
  dedicated thread pool.

The event loop never blocks on Vault, and every request has a finite timeout. Local
verification runs in the same thread pool: Ed25519 with libsodium (PyNaCl, about twice as
fast as OpenSSL here, and it releases the GIL), ECDSA with ``cryptography``.

What this module guarantees:

* a :class:`Signature` returned by :meth:`TransitSigner.sign_batch` / :meth:`TransitSigner.sign`
  has already been verified locally (``cryptography``) with the public key of the exact key
  version Vault used; a signature that does not verify raises :class:`VerificationError`;
* Ed25519 keys sign *pure* Ed25519 over the input (Vault ignores ``prehashed`` for them);
  ECDSA P-256 keys always sign a SHA-256 digest (``prehashed=true``,
  ``hash_algorithm=sha2-256``, ``marshaling_algorithm=asn1``), so the signature is a
  standard DER ECDSA-SHA256 signature over the original data;
* hvac/requests/aiohttp exceptions never leave this module. Connection errors, timeouts,
  429, 5xx and a sealed Vault become :class:`VaultUnavailable` (retryable); any other refusal
  (unknown key, permission denied, bad input) becomes :class:`VaultError` naming the key and
  Vault's own message.

The token (:mod:`shared.vault_token`) is renewed at half its TTL by a background task, and a
403 is told apart with ``lookup-self``: revoked or expired (:class:`VaultTokenRejected`, logged
once, the token file re-read) or a valid token without the right (:class:`VaultForbidden`).

It must never log or put into an error message the token or the data being signed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, TypeVar

import aiohttp
import hvac
import hvac.exceptions
import nacl.exceptions
import nacl.signing
import requests
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from shared import fastjson
from shared.errors import VaultError, VaultUnavailable, VerificationError
from shared.settings import Settings
from shared.signatures import parse_vault_signature
from shared.vault_errors import (
    REJECTED_HINT,
    VaultForbidden,
    VaultTokenRejected,
    http_error,
    tls_context,
    translate,
)
from shared.vault_token import VaultToken, keep_renewed

__all__ = [
    "BATCH_MAX",
    "SUPPORTED_KEY_TYPES",
    "HttpTransit",
    "PublicKey",
    "SignTransport",
    "Signature",
    "TransitSigner",
]

#: Most items sent in one ``batch_input`` request (the server refuses much larger JSON).
BATCH_MAX: Final = 200
#: Transit key types this adapter can verify locally.
SUPPORTED_KEY_TYPES: Final = frozenset({"ed25519", "ecdsa-p256"})

_T = TypeVar("_T")
log = logging.getLogger("ledger.vault")
_SHA256_LEN: Final = 32
_ED25519_SIG_LEN: Final = 64


# --- values --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signature:
    """One Transit signature, already verified locally.

    ``vault`` is the exact string Vault returned (``vault:v<version>:<base64 raw>``); store it
    as is. ``raw`` is the decoded signature: 64 bytes for Ed25519, DER for ECDSA P-256.
    """

    key_name: str
    version: int
    raw: bytes = field(repr=False)
    vault: str


@dataclass(frozen=True, slots=True)
class PublicKey:
    """The public key of one version of a Transit key."""

    key_name: str
    version: int
    key_type: str
    pem: str = field(repr=False)
    _key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey = field(repr=False, compare=False)
    _nacl: nacl.signing.VerifyKey | None = field(default=None, repr=False, compare=False)

    @classmethod
    def from_vault(cls, key_name: str, version: int, key_type: str, public_key: str) -> PublicKey:
        """Build from ``GET transit/keys/<name>``: base64 raw key (ed25519) or PEM (ECDSA)."""
        if key_type not in SUPPORTED_KEY_TYPES:
            raise VaultError(
                f"Vault transit key {key_name!r} has type {key_type!r}; "
                f"supported: {', '.join(sorted(SUPPORTED_KEY_TYPES))}"
            )
        key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | None = None
        problem = "not a P-256 public key"
        try:
            if key_type == "ed25519":
                key = ed25519.Ed25519PublicKey.from_public_bytes(
                    base64.b64decode(public_key, validate=True)
                )
            else:
                loaded = serialization.load_pem_public_key(public_key.encode("ascii"))
                if isinstance(loaded, ec.EllipticCurvePublicKey) and isinstance(
                    loaded.curve, ec.SECP256R1
                ):
                    key = loaded
        except (ValueError, binascii.Error, UnicodeEncodeError) as exc:
            problem = str(exc)
        if key is None:
            raise VaultError(
                f"Vault transit key {key_name!r} v{version}: unusable public key ({problem})"
            )
        pem = key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode("ascii")
        fast = None
        if isinstance(key, ed25519.Ed25519PublicKey):
            fast = nacl.signing.VerifyKey(key.public_bytes_raw())
        return cls(key_name=key_name, version=version, key_type=key_type, pem=pem, _key=key,
                   _nacl=fast)

    @property
    def der(self) -> bytes:
        """SubjectPublicKeyInfo DER encoding."""
        return self._key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def verify(self, data: bytes, signature: bytes, *, prehashed_sha256: bool = False) -> None:
        """Check ``signature`` over ``data``; raise :class:`VerificationError` if it fails.

        Ed25519: pure Ed25519 over ``data``. ECDSA P-256: DER ECDSA over SHA-256 of ``data``,
        or over ``data`` itself when it already is that digest (``prehashed_sha256``).
        """
        try:
            if isinstance(self._key, ed25519.Ed25519PublicKey):
                if prehashed_sha256:
                    raise VerificationError("Ed25519 signatures are never prehashed")
                if self._nacl is not None and len(signature) == _ED25519_SIG_LEN:
                    self._nacl.verify(data, signature)
                else:
                    self._key.verify(signature, data)
            elif prehashed_sha256:
                if len(data) != _SHA256_LEN:
                    raise VerificationError("a prehashed input must be a 32-byte SHA-256")
                self._key.verify(signature, data, ec.ECDSA(Prehashed(hashes.SHA256())))
            else:
                self._key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
        except (InvalidSignature, ValueError, nacl.exceptions.BadSignatureError):
            raise VerificationError(
                f"signature does not verify with {self.key_name} v{self.version}"
            ) from None


# --- HTTP ----------------------------------------------------------------------------------


class SignTransport(Protocol):
    """``POST <mount>/sign/<key>``: returns the answer's ``data`` object."""

    async def sign(self, key: str, body: Mapping[str, Any]) -> Mapping[str, Any]: ...
    async def close(self) -> None: ...


class HttpTransit:
    """:class:`SignTransport` over one keep-alive aiohttp session (opened on first use).

    Errors: connection failures and timeouts raise :class:`VaultUnavailable`; a non-200
    answer is mapped by status (429 and 5xx retryable, other refusals :class:`VaultError`).
    """

    def __init__(self, settings: Settings, *, timeout_s: float, max_connections: int = 16,
                 token: VaultToken | None = None) -> None:
        self._root = f"{settings.vault_addr.rstrip('/')}/v1"
        self._base = f"{self._root}/{settings.vault_transit_mount}"
        self._token = token or VaultToken(settings.vault_token.get_secret_value())
        self._ssl = tls_context(settings)
        self._headers = {"Content-Type": "application/json"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:
        return f"HttpTransit({self._base!r})"

    async def sign(self, key: str, body: Mapping[str, Any]) -> Mapping[str, Any]:
        return await self._post(f"{self._base}/sign/{key}", body, key=key, action="sign")

    async def token_self(self, op: str) -> Mapping[str, Any]:
        """``auth/token/lookup-self`` (its ``data``) or ``renew-self`` (its ``auth``)."""
        method = "POST" if op == "renew-self" else "GET"
        return await self._post(f"{self._root}/auth/token/{op}", {}, key="-", action=op,
                                method=method)

    async def _post(self, url: str, body: Mapping[str, Any], *, key: str, action: str,
                    method: str = "POST") -> Mapping[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=self._ssl),
                headers=self._headers, timeout=self._timeout,
            )
        try:
            async with self._session.request(
                method, url, data=fastjson.dumps(body) if method == "POST" else None,
                headers={"X-Vault-Token": self._token.value},
            ) as resp:
                status, raw = resp.status, await resp.read()
        except TimeoutError:
            raise VaultUnavailable(
                f"Vault timed out while trying to {action} (key {key!r})") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise VaultUnavailable(
                f"Vault unreachable while trying to {action} (key {key!r}): "
                f"{type(exc).__name__}"
            ) from None
        if status != 200:
            raise http_error(status, raw, key=key, action=action)
        field = "auth" if action == "renew-self" else "data"
        try:
            data = fastjson.loads(raw)[field]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError):
            data = None
        if not isinstance(data, Mapping):
            raise VaultError(f"Vault answered without {field} (key {key!r})")
        return data

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _chunks(items: Sequence[_T], size: int) -> list[Sequence[_T]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


# --- the adapter ---------------------------------------------------------------------------


class TransitSigner:
    """Signs with Vault Transit keys and verifies each signature locally before returning it.

    Public keys are read once per key and cached; a signature made with a version the cache
    does not know (after a rotation) triggers one refresh. Call :meth:`close` at shutdown.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        timeout_s: float = 10.0,
        max_workers: int = 4,
        client_factory: Callable[[], hvac.Client] | None = None,
        transport: SignTransport | None = None,
        token: VaultToken | None = None,
        renew: bool | None = None,
    ) -> None:
        self._addr = settings.vault_addr
        self._token = token or VaultToken(settings.vault_token.get_secret_value())
        self._verify: str | bool = settings.vault_cacert or True
        # renew the token at half its TTL (by default when talking to a real Vault)
        self._renew = renew if renew is not None else client_factory is None
        self._renewal: asyncio.Task[None] | None = None
        self._rejected = False
        self._mount = settings.vault_transit_mount
        self._default_key = settings.vault_transit_key
        self._timeout_s = timeout_s
        self._client_factory = client_factory or self._new_client
        self._local = threading.local()
        self._executor = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="vault")
        #: the real HTTP client (also renews the token), unless a transport is injected
        self._http: HttpTransit | None = None
        if transport is None:
            self._http = HttpTransit(settings, timeout_s=timeout_s, token=self._token)
        self._transport: SignTransport = transport or self._http  # type: ignore[assignment]
        self._keys: dict[str, tuple[str, dict[int, PublicKey]]] = {}
        self._key_locks: dict[str, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"TransitSigner(addr={self._addr!r}, mount={self._mount!r})"

    # --- plumbing ---------------------------------------------------------------------------

    def _new_client(self) -> hvac.Client:
        return hvac.Client(url=self._addr, token=self._token.value, timeout=self._timeout_s,
                           verify=self._verify)

    def _client(self) -> hvac.Client:
        # requests sessions are not documented as thread-safe: one client per pool thread.
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            client = self._client_factory()
            self._local.client, self._local.token = client, self._token.value
        if self._local.token != self._token.value:  # re-read from its file meanwhile
            client.token = self._local.token = self._token.value
        return client

    async def _call(self, fn: Callable[[hvac.Client], _T], *, key: str, action: str) -> _T:
        def run() -> _T:
            return fn(self._client())

        loop = asyncio.get_running_loop()
        try:
            # The requests timeout bounds the thread; this bounds the wait (several phases).
            return await asyncio.wait_for(
                loop.run_in_executor(self._executor, run), timeout=self._timeout_s * 3
            )
        except VaultForbidden as exc:
            raise await self._forbidden(exc) from None
        except (VaultError, VaultUnavailable, VerificationError):
            raise
        except (
            hvac.exceptions.VaultError,
            requests.exceptions.RequestException,
            OSError,
            TimeoutError,
        ) as exc:
            error = translate(exc, key=key, action=action)
            if isinstance(error, VaultForbidden):
                error = await self._forbidden(error)
            raise error from None
        except RuntimeError as exc:  # executor shut down
            raise VaultUnavailable(f"Vault adapter is closed ({exc})") from None

    async def _forbidden(self, exc: VaultForbidden) -> VaultError:
        """Tell a rejected token (revoked, expired) from a policy refusal; log the first."""
        if self._token.reload():
            return VaultForbidden(f"{exc}; a new token was read from its file, retrying")

        def lookup() -> int:
            try:
                self._client().auth.token.lookup_self()
            except hvac.exceptions.Forbidden:
                return 403
            except (hvac.exceptions.VaultError, requests.exceptions.RequestException, OSError):
                return 0
            return 200

        with contextlib.suppress(RuntimeError, TimeoutError):
            status = await asyncio.wait_for(
                asyncio.get_running_loop().run_in_executor(self._executor, lookup),
                timeout=self._timeout_s * 2,
            )
            if status == 403:
                if not self._rejected:
                    log.error(REJECTED_HINT, extra={"file": self._token.file or None})
                self._rejected = True
                return VaultTokenRejected(REJECTED_HINT)
            if status == 200:
                return VaultForbidden(f"{exc} (the token is valid: its policy lacks this path)")
        return exc

    def _accepted(self) -> None:
        if self._rejected:
            self._rejected = False
            log.info("vault token accepted again; signing resumes")

    def _start_renewal(self) -> None:
        if self._renew and self._renewal is None and self._http is not None:
            self._renewal = asyncio.get_running_loop().create_task(
                keep_renewed(self._token, self._http.token_self)
            )

    async def _run_local(self, fn: Callable[[], _T]) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # --- keys -------------------------------------------------------------------------------

    async def _load_key(self, key: str) -> tuple[str, dict[int, PublicKey]]:
        mount = self._mount

        def read(client: hvac.Client) -> Mapping[str, Any]:
            answer: Mapping[str, Any] = client.secrets.transit.read_key(
                name=key, mount_point=mount
            )["data"]
            return answer

        data = await self._call(read, key=key, action="read the public keys")
        key_type = str(data.get("type", ""))
        versions: dict[int, PublicKey] = {}
        for version, info in (data.get("keys") or {}).items():
            if not isinstance(info, Mapping) or not info.get("public_key"):
                raise VaultError(f"Vault transit key {key!r} is not a signing key ({key_type})")
            versions[int(version)] = PublicKey.from_vault(
                key, int(version), key_type, str(info["public_key"])
            )
        if not versions:
            raise VaultError(f"Vault transit key {key!r} has no usable versions")
        self._keys[key] = (key_type, versions)
        return key_type, versions

    async def _key_info(
        self, key: str, *, need_version: int | None = None
    ) -> tuple[str, dict[int, PublicKey]]:
        self._start_renewal()
        lock = self._key_locks.setdefault(key, asyncio.Lock())
        async with lock:
            cached = self._keys.get(key)
            if cached is not None and (need_version is None or need_version in cached[1]):
                return cached
            info = await self._load_key(key)
        if need_version is not None and need_version not in info[1]:
            raise VerificationError(f"Vault transit key {key!r} has no version {need_version}")
        return info

    async def public_keys(self, key: str | None = None) -> dict[int, PublicKey]:
        """Public keys of every available version of ``key`` (default: the transit key)."""
        return dict((await self._key_info(key or self._default_key))[1])

    async def public_key(self, key: str, version: int) -> PublicKey:
        """The public key of one version, refreshing the cache if the version is new."""
        return (await self._key_info(key, need_version=version))[1][version]

    async def key_type(self, key: str | None = None) -> str:
        """Transit key type, e.g. ``ed25519`` or ``ecdsa-p256``."""
        return (await self._key_info(key or self._default_key))[0]

    # --- signing ----------------------------------------------------------------------------

    async def sign(self, key: str, data: bytes, *, prehashed_sha256: bool = False) -> Signature:
        """Sign one input; see :meth:`sign_batch`."""
        return (await self.sign_batch(key, [data], prehashed_sha256=prehashed_sha256))[0]

    async def sign_batch(
        self, key: str, inputs: Sequence[bytes], *, prehashed_sha256: bool = False
    ) -> list[Signature]:
        """Sign every input with the latest version of ``key``, in order, and verify each.

        ``batch_input`` requests carry at most :data:`BATCH_MAX` items. For ECDSA keys the
        input is hashed with SHA-256 here unless ``prehashed_sha256`` says it already is a
        digest; Ed25519 keys sign the input itself and refuse ``prehashed_sha256``.
        A per-item error in Vault's answer raises :class:`VaultError`.
        """
        if not inputs:
            return []
        key_type, _ = await self._key_info(key)
        if key_type == "ed25519":
            if prehashed_sha256:
                raise VaultError(
                    f"transit key {key!r} is ed25519: Vault signs pure Ed25519 only, "
                    "prehashed input is not supported"
                )
            to_sign: list[bytes] = list(inputs)
        elif prehashed_sha256:
            if any(len(d) != _SHA256_LEN for d in inputs):
                raise VaultError(f"prehashed input for key {key!r} must be 32-byte SHA-256")
            to_sign = list(inputs)
        else:
            to_sign = [hashlib.sha256(d).digest() for d in inputs]
        ecdsa = key_type != "ed25519"

        chunks = _chunks(to_sign, BATCH_MAX)
        results = await asyncio.gather(
            *(self._sign_chunk(key, chunk, ecdsa=ecdsa) for chunk in chunks)
        )
        signed = [item for chunk_result in results for item in chunk_result]
        if len(signed) != len(to_sign):
            raise VaultError(
                f"Vault returned {len(signed)} signatures for {len(to_sign)} inputs (key {key!r})"
            )

        # Every version used must be known locally (a rotation may have happened meanwhile).
        for version in sorted({v for v, _, _ in signed}):
            await self._key_info(key, need_version=version)
        versions = self._keys[key][1]

        def verify_all() -> list[Signature]:
            out = []
            for data, (version, raw, text) in zip(to_sign, signed, strict=True):
                versions[version].verify(data, raw, prehashed_sha256=ecdsa)
                out.append(Signature(key_name=key, version=version, raw=raw, vault=text))
            return out

        return await self._run_local(verify_all)

    async def _sign_chunk(
        self, key: str, chunk: Sequence[bytes], *, ecdsa: bool
    ) -> list[tuple[int, bytes, str]]:
        body: dict[str, Any] = {
            "batch_input": [{"input": base64.b64encode(d).decode("ascii")} for d in chunk]
        }
        if ecdsa:
            body.update(prehashed=True, hash_algorithm="sha2-256", marshaling_algorithm="asn1")
        try:
            answer = await asyncio.wait_for(self._transport.sign(key, body), self._timeout_s * 2)
        except TimeoutError:
            raise VaultUnavailable(f"Vault timed out while trying to sign (key {key!r})") from None
        except VaultForbidden as exc:
            raise await self._forbidden(exc) from None
        self._accepted()
        try:
            items = answer["batch_results"]
        except (KeyError, TypeError):
            raise VaultError(f"Vault answered without batch_results (key {key!r})") from None
        if not isinstance(items, list) or len(items) != len(chunk):
            raise VaultError(
                f"Vault returned {len(items) if isinstance(items, list) else '?'} results "
                f"for {len(chunk)} inputs (key {key!r})"
            )
        out: list[tuple[int, bytes, str]] = []
        for index, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise VaultError(f"Vault batch item {index} is malformed (key {key!r})")
            if item.get("error"):
                raise VaultError(
                    f"Vault refused batch item {index} for transit key {key!r}: {item['error']}"
                )
            text = str(item.get("signature", ""))
            version, raw = parse_vault_signature(text)
            if item.get("key_version") not in (None, version):
                raise VerificationError(
                    f"Vault batch item {index}: key_version {item.get('key_version')} "
                    f"disagrees with the signature prefix v{version} (key {key!r})"
                )
            out.append((version, raw, text))
        return out

    # --- operations -------------------------------------------------------------------------

    async def health(self, key: str | None = None) -> bool:
        """True when Vault is reachable, unsealed and the key's public keys are readable."""
        name = key or self._default_key

        def ping(client: hvac.Client) -> bool:
            status = client.sys.read_health_status(method="GET")
            if isinstance(status, Mapping):
                return not status.get("sealed", True)
            return False  # a non-200 health answer (sealed, standby, uninitialized)

        try:
            if not await self._call(ping, key=name, action="check health"):
                return False
            await self._load_key(name)
        except (VaultError, VaultUnavailable, VerificationError):
            return False
        return True

    async def close(self) -> None:
        """Close the HTTP session and stop the thread pool; safe to call twice."""
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.wait({self._renewal}, timeout=self._timeout_s)  # bounded
            self._renewal = None
        await self._transport.close()
        self._executor.shutdown(wait=False, cancel_futures=True)
