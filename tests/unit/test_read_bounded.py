"""read_bounded: a whole HTTP body however it arrives, and never much more than the limit.

aiohttp's ``StreamReader.read(n)`` returns what has arrived (up to ``n`` bytes): reading a
large tile with one call kept only its first chunk, and a Rekor v2 entry bundle of 256
entries then looked truncated. These read real chunked bodies from a real aiohttp server.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from shared.untrusted import read_bounded

pytestmark = pytest.mark.unit

BODY = os.urandom(300_000)


@pytest.fixture
async def url() -> AsyncIterator[str]:
    async def chunked(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse()
        await resp.prepare(request)
        for at in range(0, len(BODY), 7_000):  # many small writes: many chunks on the wire
            await resp.write(BODY[at:at + 7_000])
            await resp.drain()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_get("/body", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    yield f"http://127.0.0.1:{port}/body"
    await runner.cleanup()


async def test_a_body_in_many_chunks_is_read_whole(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        first = await resp.content.read(len(BODY) + 1)  # what a single read gets
        rest = await read_bounded(resp.content, len(BODY))
    assert len(first) < len(BODY), "the server did not send the body in chunks"
    assert first + rest == BODY


async def test_the_whole_body_within_the_limit(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        assert await read_bounded(resp.content, len(BODY)) == BODY


async def test_a_longer_body_stops_one_byte_past_the_limit(url: str) -> None:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        got = await read_bounded(resp.content, 100_000)
    assert got == BODY[:100_001]
