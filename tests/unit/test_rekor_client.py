"""shared.rekor against a local aiohttp server that answers the way Rekor does — and the ways
a real Rekor cannot be made to (500, 429, hanging). The contract test in
tests/integration/test_rekor_contract.py keeps these answers honest."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from shared.errors import RekorConflict, RekorError, RekorUnavailable
from shared.rekor import RekorClient
from shared.settings import Settings

pytestmark = pytest.mark.unit

UUID = "24296fb24b8ad77a" + "ab" * 32
ENTRY = {
    "body": "e30=",
    "integratedTime": 1,
    "logID": "00" * 32,
    "logIndex": 7,
    "verification": {"signedEntryTimestamp": "AA=="},
}
PEM = "-----BEGIN PUBLIC KEY-----\nMFkw...\n-----END PUBLIC KEY-----\n"


class FakeRekor:
    """Answers per path with whatever the test set in ``mode``; records requests."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []

    async def handle(self, request: web.Request) -> web.StreamResponse:
        payload = await request.json() if request.can_read_body else None
        self.requests.append((request.method, request.path, dict(request.query), payload))
        mode = self.mode
        if mode == "hang":
            await asyncio.sleep(30)
        if mode == "409":
            return web.json_response(
                {
                    "code": 409,
                    "message": f"an equivalent entry already exists in the transparency log with UUID {UUID}",
                },
                status=409,
                headers={"Location": f"/api/v1/log/entries/{UUID}"},
            )
        if mode == "409-message-only":
            return web.json_response(
                {"code": 409, "message": f"entry exists with UUID {UUID}"}, status=409
            )
        if mode == "400":
            return web.json_response(
                {"code": 400, "message": "verifying signature: invalid signature"}, status=400
            )
        if mode == "404":
            return web.json_response({"code": 404, "message": "entry not found"}, status=404)
        if mode == "429":
            return web.Response(status=429, text="slow down")
        if mode == "500":
            return web.json_response({"code": 500, "message": "boom"}, status=500)
        if mode == "502-html":
            return web.Response(status=502, text="<html>bad gateway</html>")
        if mode == "not-json":
            return web.Response(status=200, text="<html>hello</html>")
        if mode == "two-entries":
            return web.json_response({UUID: ENTRY, UUID[:-1] + "c": ENTRY})
        # ok
        if request.path == "/api/v1/log/entries" and request.method == "POST":
            return web.json_response({UUID: ENTRY}, status=201)
        if request.path.startswith("/api/v1/log/entries"):
            return web.json_response({UUID: ENTRY})
        if request.path == "/api/v1/log":
            return web.json_response(
                {
                    "rootHash": "11" * 32,
                    "signedTreeHead": "note\n",
                    "treeID": "123",
                    "treeSize": 8,
                }
            )
        if request.path == "/api/v1/log/publicKey":
            return web.Response(text=PEM, content_type="application/x-pem-file")
        if request.path == "/api/v1/log/proof":
            return web.json_response({"rootHash": "22" * 32, "hashes": ["33" * 32]})
        return web.Response(status=418)


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeRekor, str]]:
    rekor = FakeRekor()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", rekor.handle)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        yield rekor, str(server.make_url("")).rstrip("/")
    finally:
        await server.close()


@pytest.fixture
async def client(fake: tuple[FakeRekor, str]) -> AsyncIterator[RekorClient]:
    async with RekorClient(fake[1], timeout_s=0.5) as c:
        yield c


async def test_create_sends_a_hashedrekord(
    fake: tuple[FakeRekor, str], client: RekorClient
) -> None:
    rekor, _ = fake
    entry = await client.create_hashedrekord("AB" * 32, b"\x30\x01\x02", PEM)
    assert entry.uuid == UUID
    assert entry.log_index == 7
    assert entry.response == {UUID: ENTRY}
    method, path, _, payload = rekor.requests[-1]
    assert (method, path) == ("POST", "/api/v1/log/entries")
    assert payload == {
        "kind": "hashedrekord",
        "apiVersion": "0.0.1",
        "spec": {
            "signature": {
                "content": base64.b64encode(b"\x30\x01\x02").decode(),
                "publicKey": {"content": base64.b64encode(PEM.encode()).decode()},
            },
            "data": {"hash": {"algorithm": "sha256", "value": "ab" * 32}},
        },
    }


@pytest.mark.parametrize("mode", ["409", "409-message-only"])
async def test_conflict_carries_the_uuid(
    fake: tuple[FakeRekor, str], client: RekorClient, mode: str
) -> None:
    fake[0].mode = mode
    with pytest.raises(RekorConflict) as exc:
        await client.create_hashedrekord("ab" * 32, b"sig", PEM)
    assert exc.value.uuid == UUID
    assert exc.value.status == 409
    assert not isinstance(exc.value, RekorUnavailable)


async def test_400_is_a_rekor_error_with_its_message(
    fake: tuple[FakeRekor, str], client: RekorClient
) -> None:
    fake[0].mode = "400"
    with pytest.raises(RekorError) as exc:
        await client.create_hashedrekord("ab" * 32, b"sig", PEM)
    assert not isinstance(exc.value, RekorConflict)
    assert exc.value.status == 400
    assert "invalid signature" in str(exc.value)
    assert not isinstance(exc.value, RekorUnavailable)


async def test_404_on_get(fake: tuple[FakeRekor, str], client: RekorClient) -> None:
    fake[0].mode = "404"
    with pytest.raises(RekorError) as exc:
        await client.get_entry_by_uuid(UUID)
    assert exc.value.status == 404


@pytest.mark.parametrize("mode", ["429", "500", "502-html", "not-json", "two-entries"])
async def test_unavailable_answers(
    fake: tuple[FakeRekor, str], client: RekorClient, mode: str
) -> None:
    fake[0].mode = mode
    with pytest.raises(RekorUnavailable) as exc:
        await client.create_hashedrekord("ab" * 32, b"sig", PEM)
    assert exc.value.retryable


async def test_timeout_is_unavailable(fake: tuple[FakeRekor, str]) -> None:
    fake[0].mode = "hang"
    async with RekorClient(fake[1], timeout_s=0.2) as client:
        t0 = time.monotonic()
        with pytest.raises(RekorUnavailable, match="timed out"):
            await client.get_log_info()
        assert time.monotonic() - t0 < 2


async def test_connection_refused_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with RekorClient(f"http://127.0.0.1:{port}", timeout_s=1) as client:
        with pytest.raises(RekorUnavailable, match="failed"):
            await client.get_public_key()


async def test_reads(fake: tuple[FakeRekor, str], client: RekorClient) -> None:
    rekor, _ = fake
    by_uuid = await client.get_entry_by_uuid(UUID)
    assert rekor.requests[-1][1] == f"/api/v1/log/entries/{UUID}"
    by_index = await client.get_entry_by_index(7)
    assert rekor.requests[-1][1:3] == ("/api/v1/log/entries", {"logIndex": "7"})
    assert by_uuid == by_index
    info = await client.get_log_info()
    assert (info.tree_size, info.root_hash, info.tree_id) == (8, "11" * 32, "123")
    assert await client.get_public_key() == PEM
    proof = await client.get_consistency_proof(3, 8)
    assert rekor.requests[-1][1:3] == ("/api/v1/log/proof", {"firstSize": "3", "lastSize": "8"})
    assert proof.hashes == ("33" * 32,)
    assert proof.root_hash == "22" * 32


async def test_argument_checks(client: RekorClient) -> None:
    with pytest.raises(ValueError, match="uuid"):
        await client.get_entry_by_uuid("../publicKey")
    with pytest.raises(ValueError, match="log_index"):
        await client.get_entry_by_index(-1)
    with pytest.raises(ValueError, match="first_size"):
        await client.get_consistency_proof(5, 3)


async def test_close_twice_and_from_settings(fake: tuple[FakeRekor, str]) -> None:
    client = RekorClient.from_settings(Settings(rekor_server_url=fake[1] + "/", rekor_timeout_s=3))
    assert client.base_url == fake[1]
    await client.get_log_info()
    await client.close()
    await client.close()


def test_entry_json_is_what_rekor_sends() -> None:
    # The fake's shapes are the documented Rekor v1 shapes (see REFERENCES / contract test).
    assert json.loads(json.dumps({UUID: ENTRY}))[UUID]["logIndex"] == 7
