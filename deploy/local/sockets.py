"""Which sockets a local process listens on, read from ``/proc`` (Linux).

The stack keeps every service on loopback; :func:`non_loopback_listeners` is how it checks
(Rekor after start, the stack tests for every service).
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from deploy.local.process import StackError

__all__ = [
    "Listener",
    "is_loopback",
    "listeners",
    "non_loopback_listeners",
    "require_loopback_only",
]

#: (protocol, IP address, port) of one listening TCP or bound UDP socket
Listener = tuple[str, str, int]

_LISTENING = {"tcp": "0A", "tcp6": "0A", "udp": "07", "udp6": "07"}


def _socket_inodes(pid: int) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:[") : -1])
    return inodes


def _decode_addr(hex_addr: str) -> str:
    """A /proc/net/tcp{,6} local address (hex, little-endian words) as an IP string."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
    return socket.inet_ntop(family, words)


def listeners(pids: Iterable[int], protocols: Iterable[str] = ("tcp", "tcp6")) -> list[Listener]:
    """The listening sockets (TCP) and bound sockets (UDP) of the processes ``pids``."""
    inodes: set[str] = set()
    for pid in pids:
        inodes |= _socket_inodes(pid)
    found: list[Listener] = []
    for proto in protocols:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/net/{proto}").read_text().splitlines()[1:]:
                cols = line.split()
                if len(cols) < 10 or cols[3] != _LISTENING[proto] or cols[9] not in inodes:
                    continue
                addr_hex, port_hex = cols[1].split(":")
                found.append((proto, _decode_addr(addr_hex), int(port_hex, 16)))
    return found


def is_loopback(addr: str) -> bool:
    return addr in ("::1", "::ffff:127.0.0.1") or addr.startswith("127.")


def non_loopback_listeners(pid: int) -> list[str]:
    """``address:port`` of every listening TCP socket of ``pid`` not bound to loopback."""
    return [f"{addr}:{port}" for _, addr, port in listeners([pid]) if not is_loopback(addr)]


class _Process(Protocol):
    name: str

    @property
    def pid(self) -> int: ...


def require_loopback_only(service: str, processes: Iterable[_Process]) -> None:
    """Raise :class:`StackError` if one of ``processes`` listens beyond loopback."""
    for proc in processes:
        bad = non_loopback_listeners(proc.pid)
        if bad:
            raise StackError(f"{service}: {proc.name} listens on non-loopback address(es) {bad}")
