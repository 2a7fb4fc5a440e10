"""Async client for the Rekor v1 REST API (``/api/v1/...``), on one aiohttp session.

This is the only place that talks HTTP to Rekor. Every aiohttp and asyncio error is
translated here, so callers see only :mod:`shared.errors`:

=====================================  =====================================================
Rekor's answer                         raised
=====================================  =====================================================
409 Conflict                           :class:`RekorConflict` with the existing entry's uuid
404, 400 and other 4xx                 :class:`RekorError` with Rekor's message and status
429, 5xx, timeout, connection error,   :class:`RekorUnavailable` (retryable)
an answer that is not the expected
JSON
=====================================  =====================================================

Every request has an explicit, finite timeout (``rekor_timeout_s``). The client never
verifies what it receives: :mod:`shared.verify` does that, offline, before anything is
trusted.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from shared.errors import RekorConflict, RekorError, RekorUnavailable
from shared.http_client import SessionClient
from shared.settings import Settings

__all__ = ["ConsistencyProof", "LogInfo", "RekorClient", "RekorEntry"]

_UUID_RE = re.compile(r"\b([0-9a-fA-F]{80}|[0-9a-fA-F]{64})\b")


@dataclass(frozen=True, slots=True)
class RekorEntry:
    """One log entry as Rekor returned it: its uuid and the raw entry object."""

    uuid: str
    entry: Mapping[str, Any] = field(repr=False)

    @property
    def log_index(self) -> int:
        return int(self.entry["logIndex"])

    @property
    def response(self) -> dict[str, Any]:
        """The v1 answer shape ``{uuid: entry}`` that :func:`shared.verify.verify_receipt` takes."""
        return {self.uuid: dict(self.entry)}


@dataclass(frozen=True, slots=True)
class LogInfo:
    """``GET /api/v1/log``: the active tree's size, root and signed checkpoint."""

    tree_size: int
    root_hash: str
    signed_tree_head: str
    tree_id: str
    raw: Mapping[str, Any] = field(repr=False)


@dataclass(frozen=True, slots=True)
class ConsistencyProof:
    """``GET /api/v1/log/proof``: hashes (hex) proving the tree grew from one size to another."""

    first_size: int
    last_size: int
    root_hash: str
    hashes: tuple[str, ...]


class RekorClient(SessionClient):
    """A Rekor v1 client. Use as ``async with RekorClient(...) as rekor:`` or call close()."""

    user_agent = "signed-ledger/0.1 (rekor-client)"

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self._base = base_url.rstrip("/")
        super().__init__(timeout_s=timeout_s, session=session)

    @classmethod
    def from_settings(cls, settings: Settings) -> RekorClient:
        return cls(settings.rekor_server_url, timeout_s=settings.rekor_timeout_s)

    @property
    def base_url(self) -> str:
        return self._base

    # --- the API ------------------------------------------------------------------------------

    async def create_hashedrekord(
        self, digest_hex: str, signature_der: bytes, public_key_pem: bytes | str
    ) -> RekorEntry:
        """Submit a hashedrekord v0.0.1 entry (SHA-256 digest, DER signature, PEM public key).

        Returns the new entry (201). Raises RekorConflict (409) when Rekor already has it.
        """
        pem = public_key_pem.encode() if isinstance(public_key_pem, str) else public_key_pem
        proposed = {
            "kind": "hashedrekord",
            "apiVersion": "0.0.1",
            "spec": {
                "signature": {
                    "content": base64.b64encode(signature_der).decode(),
                    "publicKey": {"content": base64.b64encode(pem).decode()},
                },
                "data": {"hash": {"algorithm": "sha256", "value": digest_hex.lower()}},
            },
        }
        body = await self._request_json("POST", "/api/v1/log/entries", payload=proposed)
        return _single_entry(body)

    async def get_entry_by_uuid(self, uuid: str) -> RekorEntry:
        if not _UUID_RE.fullmatch(uuid):
            raise ValueError(f"not a Rekor uuid: {uuid!r}")
        body = await self._request_json("GET", f"/api/v1/log/entries/{uuid}")
        return _single_entry(body)

    async def get_entry_by_index(self, log_index: int) -> RekorEntry:
        if log_index < 0:
            raise ValueError("log_index must be >= 0")
        body = await self._request_json(
            "GET", "/api/v1/log/entries", params={"logIndex": str(log_index)}
        )
        return _single_entry(body)

    async def get_log_info(self) -> LogInfo:
        body = await self._request_json("GET", "/api/v1/log")
        try:
            return LogInfo(
                tree_size=int(body["treeSize"]),
                root_hash=str(body["rootHash"]),
                signed_tree_head=str(body["signedTreeHead"]),
                tree_id=str(body["treeID"]),
                raw=body,
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RekorUnavailable(f"Rekor log info is malformed: {exc!r}") from None

    async def get_public_key(self, tree_id: str | None = None) -> str:
        """The log's public key as PEM text."""
        params = {"treeID": tree_id} if tree_id else None
        text = await self._request_text("GET", "/api/v1/log/publicKey", params=params)
        if "-----BEGIN PUBLIC KEY-----" not in text:
            raise RekorUnavailable("Rekor public key answer is not a PEM public key")
        return text

    async def get_consistency_proof(
        self, first_size: int, last_size: int, tree_id: str | None = None
    ) -> ConsistencyProof:
        if not 1 <= first_size <= last_size:
            raise ValueError("need 1 <= first_size <= last_size")
        params = {"firstSize": str(first_size), "lastSize": str(last_size)}
        if tree_id:
            params["treeID"] = tree_id
        body = await self._request_json("GET", "/api/v1/log/proof", params=params)
        try:
            return ConsistencyProof(
                first_size=first_size,
                last_size=last_size,
                root_hash=str(body["rootHash"]),
                hashes=tuple(str(h) for h in body.get("hashes") or ()),
            )
        except (KeyError, TypeError) as exc:
            raise RekorUnavailable(f"Rekor consistency proof is malformed: {exc!r}") from None

    # --- HTTP and error translation ----------------------------------------------------------

    async def _request_json(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: Any = None,
    ) -> dict[str, Any]:
        status, _, text = await self._send(method, path, params=params, payload=payload)
        try:
            value = json.loads(text)
        except ValueError:
            raise RekorUnavailable(
                f"Rekor {method} {path} answered {status} with a body that is not JSON"
            ) from None
        if not isinstance(value, dict):
            raise RekorUnavailable(f"Rekor {method} {path} answered {status} with non-object JSON")
        return value

    async def _request_text(
        self, method: str, path: str, *, params: Mapping[str, str] | None = None
    ) -> str:
        _, _, text = await self._send(method, path, params=params)
        return text

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        payload: Any = None,
    ) -> tuple[int, Mapping[str, str], str]:
        """One request; returns (status, headers, text) of a 2xx answer or raises ours."""
        url = self._base + path
        try:
            async with self._get_session().request(
                method, url, params=params, json=payload, timeout=self._timeout
            ) as resp:
                text = await resp.text()
                status, headers = resp.status, resp.headers
        except TimeoutError:
            raise RekorUnavailable(
                f"Rekor {method} {path} timed out after {self._timeout.total} s"
            ) from None
        except (aiohttp.ClientError, UnicodeDecodeError) as exc:
            raise RekorUnavailable(f"Rekor {method} {path} failed: {exc!r}") from None
        if 200 <= status < 300:
            return status, headers, text
        message = _rekor_message(text) or f"HTTP {status}"
        if status == 409:
            uuid = _uuid_from(headers.get("Location", "")) or _uuid_from(message)
            raise RekorConflict(f"Rekor already has this entry: {message}", uuid=uuid)
        if status == 429 or status >= 500:
            raise RekorUnavailable(f"Rekor {method} {path} answered {status}: {message}")
        raise RekorError(f"Rekor {method} {path} answered {status}: {message}", status=status)


def _rekor_message(text: str) -> str:
    """Rekor's error body is ``{"code": N, "message": "..."}``; fall back to the raw text."""
    try:
        value = json.loads(text)
    except ValueError:
        return text.strip()[:500]
    if isinstance(value, dict) and isinstance(value.get("message"), str):
        return str(value["message"])
    return text.strip()[:500]


def _uuid_from(text: str) -> str | None:
    found = _UUID_RE.findall(text)
    return found[-1].lower() if found else None


def _single_entry(body: Mapping[str, Any]) -> RekorEntry:
    if len(body) != 1:
        raise RekorUnavailable(f"Rekor answered {len(body)} entries where one was expected")
    ((uuid, entry),) = body.items()
    if not isinstance(entry, dict) or "body" not in entry or "logIndex" not in entry:
        raise RekorUnavailable("Rekor entry is malformed (no body or logIndex)")
    return RekorEntry(uuid=uuid, entry=entry)
