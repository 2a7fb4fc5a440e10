"""Unit tests open no network connection: a guard on :class:`socket.socket`.

While :func:`guard` is active, a socket may connect only to a loopback port that this very
process bound (an in-process test server, such as aiohttp's ``TestServer``, or a port a test
reserved and closed to see a connection refused) or over a Unix socket. Anything else — Kafka, PostgreSQL, Vault or Rekor on this machine, or
any remote host — raises :class:`NetworkUsed`, naming the address, so a unit test cannot
quietly depend on a running service.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

__all__ = ["NetworkUsed", "guard"]


class NetworkUsed(RuntimeError):
    """A unit test tried to reach a service over the network."""


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def guard() -> Iterator[set[int]]:
    """Patch ``socket.socket`` for the duration; yields the set of ports bound."""
    bound: set[int] = set()
    real_bind = socket.socket.bind
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex

    def check(sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return  # Unix sockets, socketpairs
        host, port = address[0], address[1]
        if _is_loopback(str(host)) and port in bound:
            return
        raise NetworkUsed(
            f"a unit test tried to connect to {host}:{port}; unit tests run on doubles "
            "(integration tests use the real services)"
        )

    def bind(self: socket.socket, address: Any) -> None:
        real_bind(self, address)
        if self.family in (socket.AF_INET, socket.AF_INET6):
            bound.add(int(self.getsockname()[1]))

    def connect(self: socket.socket, address: Any) -> None:
        check(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    patched: dict[str, Any] = {"bind": bind, "connect": connect, "connect_ex": connect_ex}
    real: dict[str, Any] = {"bind": real_bind, "connect": real_connect, "connect_ex": real_connect_ex}
    for name, method in patched.items():
        setattr(socket.socket, name, method)
    try:
        yield bound
    finally:
        for name, method in real.items():
            setattr(socket.socket, name, method)
