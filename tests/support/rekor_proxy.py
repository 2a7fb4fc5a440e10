"""A fault-injecting aiohttp reverse proxy in front of the REAL Rekor (tests only).

The real Rekor cannot be made to lie, so the faults a verifier must catch are injected here,
into otherwise genuine answers of the real server:

``pass``                 forward unchanged (a contract test checks it is transparent)
``unavailable``          answer 503 without forwarding
``flip_set``             flip one byte of the signed entry timestamp
``corrupt_inclusion``    change one byte of the first inclusion-proof hash
``foreign_checkpoint``   replace the checkpoint with one naming the same tree but signed by
                         another ECDSA key (with the real log's key hint, as a forger would)
``flip_timestamp``       flip the last byte of an RFC 3161 answer (in its signature), in
                         front of a timestamp authority

In front of a Rekor v2 log's read URL (tlog-tiles), ``corrupt_inclusion`` flips a bit of
every hash in the hash tiles it serves and ``foreign_checkpoint`` forges ``/checkpoint`` the
same way, so an entry rebuilt from the tiles (after a 409) lies as a 201 answer did.

Tampering applies to entry answers (Rekor v1: ``POST /api/v1/log/entries`` 201 and
``GET /api/v1/log/entries/...`` 200; Rekor v2: ``POST /api/v2/log/entries`` 201, whose
TransparencyLogEntry carries base64 hashes and the checkpoint in ``checkpoint.envelope``) and
to ``POST /api/v1/timestamp`` answers; everything else is forwarded. Every request is counted
by ``(method, route, status)`` so tests can measure Rekor calls.
"""

from __future__ import annotations

import base64
import collections
import json
from typing import Any, Literal

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

Mode = Literal["pass", "unavailable", "flip_set", "corrupt_inclusion", "foreign_checkpoint",
               "flip_timestamp"]

_HOP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding", "host"}


def _flip_b64(text: str, index: int = 10) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[index % len(raw)] ^= 0x01
    return base64.b64encode(bytes(raw)).decode()


def _flip_hex(text: str) -> str:
    raw = bytearray(bytes.fromhex(text))
    raw[0] ^= 0x01
    return raw.hex()


def forged_checkpoint(note: str, log_id_hex: str) -> str:
    """The same note text signed by a fresh key, with the real log's 4-byte key hint."""
    text, _, sigs = note.partition("\n\n")
    signed = (text + "\n").encode()
    name = sigs.split(" ", 2)[1] if sigs.startswith("\u2014 ") else text.split("\n", 1)[0]
    other = ec.generate_private_key(ec.SECP256R1())
    sig = other.sign(signed, ec.ECDSA(hashes.SHA256()))
    hint = bytes.fromhex(log_id_hex)[:4]
    return f"{text}\n\n\u2014 {name} {base64.b64encode(hint + sig).decode()}\n"


def tamper_entries(body: dict[str, Any], mode: Mode) -> dict[str, Any]:
    out: dict[str, Any] = json.loads(json.dumps(body))
    for entry in out.values():
        verification = entry.get("verification") or {}
        proof = verification.get("inclusionProof") or {}
        if mode == "flip_set":
            verification["signedEntryTimestamp"] = _flip_b64(verification["signedEntryTimestamp"])
        elif mode == "corrupt_inclusion" and proof.get("hashes"):
            proof["hashes"][0] = _flip_hex(proof["hashes"][0])
        elif mode == "foreign_checkpoint":
            proof["checkpoint"] = forged_checkpoint(proof["checkpoint"], entry["logID"])
    return out


def tamper_v2_entry(body: dict[str, Any], mode: Mode) -> dict[str, Any]:
    """A Rekor v2 TransparencyLogEntry (protobuf JSON) with the fault of ``mode``."""
    out: dict[str, Any] = json.loads(json.dumps(body))
    proof = out.get("inclusionProof") or {}
    if mode == "corrupt_inclusion":
        hashes = proof.setdefault("hashes", [])
        if hashes:
            hashes[0] = _flip_b64(hashes[0], 0)
        else:  # a tree of one: a path where there is none
            hashes.append(base64.b64encode(bytes(32)).decode())
    elif mode == "foreign_checkpoint":
        key_id = base64.b64decode(out["logId"]["keyId"]).hex()
        envelope = proof["checkpoint"]["envelope"]
        proof["checkpoint"]["envelope"] = forged_checkpoint(envelope, key_id)
    return out


class RekorProxy:
    """``async with RekorProxy(upstream) as proxy: proxy.url ...``; set ``proxy.mode``."""

    def __init__(self, upstream: str, *, mode: Mode = "pass") -> None:
        self.upstream = upstream.rstrip("/")
        self.mode: Mode = mode
        self.calls: collections.Counter[tuple[str, str, int]] = collections.Counter()
        self.tampered = 0
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> RekorProxy:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def count(self, method: str, route: str, status: int | None = None) -> int:
        return sum(
            n for (m, r, s), n in self.calls.items()
            if m == method and r == route and (status is None or s == status)
        )

    @staticmethod
    def _route(path: str) -> str:
        if path.startswith("/api/v1/log/entries/") and path != "/api/v1/log/entries/retrieve":
            return "/api/v1/log/entries/{uuid}"
        return path

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        route = self._route(request.path)
        if self.mode == "unavailable":
            self.calls[(request.method, route, 503)] += 1
            return web.json_response({"code": 503, "message": "proxy: unavailable"}, status=503)
        assert self._session is not None
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            data=body or None,
            headers=headers,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            status = upstream.status
            out_headers = {
                k: v for k, v in upstream.headers.items() if k.lower() not in _HOP_HEADERS
            }
        self.calls[(request.method, route, status)] += 1
        payload = self._tampered(route, status, payload)
        return web.Response(status=status, body=payload, headers=out_headers)

    def _tampered(self, route: str, status: int, payload: bytes) -> bytes:
        if self.mode in ("pass", "unavailable") or status not in (200, 201):
            return payload
        if route == "/api/v1/timestamp":
            if self.mode != "flip_timestamp":
                return payload
            out = bytearray(payload)
            out[-1] ^= 0x01
            self.tampered += 1
            return bytes(out)
        if route == "/checkpoint" and self.mode == "foreign_checkpoint":
            self.tampered += 1
            note = payload.decode()
            hint = base64.b64decode(note.rstrip("\n").rsplit(" ", 1)[1])[:4]
            return forged_checkpoint(note, hint.hex()).encode()
        if (route.startswith("/tile/") and not route.startswith("/tile/entries/")
                and self.mode == "corrupt_inclusion"):
            self.tampered += 1
            return bytes(b ^ 0x01 if i % 32 == 0 else b for i, b in enumerate(payload))
        if route == "/api/v2/log/entries":
            self.tampered += 1
            return json.dumps(tamper_v2_entry(json.loads(payload), self.mode)).encode()
        if route in ("/api/v1/log/entries", "/api/v1/log/entries/{uuid}"):
            self.tampered += 1
            return json.dumps(tamper_entries(json.loads(payload), self.mode)).encode()
        return payload

