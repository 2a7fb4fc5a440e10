"""The guard every unit test runs under refuses connections to services (tests/support)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from tests.support.no_network import NetworkUsed

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("address", [("127.0.0.1", 5432), ("::1", 9092), ("192.0.2.1", 443)])
def test_connecting_to_a_port_this_process_did_not_bind_is_refused(address: tuple[str, int]):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family) as s, pytest.raises(NetworkUsed, match=f"{address[1]}"):
        s.connect(address)


async def test_asyncio_connections_go_through_the_guard():
    with pytest.raises(NetworkUsed, match="8200"):
        await asyncio.open_connection("127.0.0.1", 8200)


async def test_an_in_process_server_on_loopback_is_allowed():
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.readline())
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"ping\n")
        assert await reader.readline() == b"ping\n"
        writer.close()
