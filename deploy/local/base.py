"""The interface every service of the local stack implements.

A service is one real program (or a few) that the pipeline talks to: PostgreSQL, Kafka,
OpenBao (Vault Transit) and Rekor. Each is a :class:`LocalService`:

* ``install(progress)`` fetches or builds what it needs into ``cache_dir`` (shared by all
  stacks and reused across runs); it is idempotent and cheap when everything is there;
* ``start(progress)`` starts the process(es) bound to 127.0.0.1 and blocks until a real
  request succeeds;
* ``stop()`` stops everything it started; safe to call twice;
* ``endpoints()`` returns the environment variables a client needs
  (e.g. ``{"KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:39092"}``);
* ``processes()`` exposes the :class:`ManagedProcess` objects so tests can ``kill -9`` or
  ``SIGSTOP`` them;
* ``kill()`` crashes the service (``kill -9`` of every process group) and ``restart()``
  stops it cleanly; either way a later ``start()`` brings it back on the same ports and the
  same data (OpenBao comes back sealed with ``OpenBao.start_sealed``).

Ports are chosen with :func:`free_port` on the first start and persisted in
``<stack_dir>/<name>/state.json`` (:meth:`LocalService.load_state` / :meth:`save_state` /
:meth:`port`), so a restart of the same stack reuses them; a new port is picked only when
the old one is taken by someone else.
"""

from __future__ import annotations

import abc
import asyncio
import concurrent.futures
import json
import os
import socket
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from deploy.local.process import ManagedProcess, free_port

__all__ = [
    "LocalService",
    "Progress",
    "default_cache_dir",
    "default_stack_dir",
    "port_available",
    "run_coro",
]

T = TypeVar("T")

#: A callback that receives a short human-readable description of the current step.
Progress = Callable[[str], None]


def default_cache_dir() -> Path:
    """``$LEDGER_CACHE_DIR`` or ``~/.cache/ledger``."""
    env = os.environ.get("LEDGER_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ledger"


def default_stack_dir() -> Path:
    """``$LEDGER_STACK_DIR`` or ``.stack`` in the current directory."""
    env = os.environ.get("LEDGER_STACK_DIR")
    return Path(env).expanduser() if env else Path.cwd() / ".stack"


def port_available(port: int) -> bool:
    """True if a server could listen on 127.0.0.1:``port`` now.

    Unlike a plain bind, this uses ``SO_REUSEADDR`` like the servers do, so connections of a
    stopped server lingering in TIME_WAIT do not make its port look taken.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            s.listen(1)
        except OSError:
            return False
        return True


def run_coro(factory: Callable[[], Coroutine[Any, Any, T]], timeout: float = 60.0) -> T:
    """Run a coroutine to completion from synchronous code.

    Works whether or not an event loop is already running in this thread (e.g. when an async
    test restarts a service): in the latter case the coroutine runs in a helper thread with
    its own loop.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(factory())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, factory()).result(timeout)


class LocalService(abc.ABC):
    """One service of the local stack (see the module docstring)."""

    name: str

    def __init__(self, stack_dir: Path, cache_dir: Path) -> None:
        self.stack_dir = Path(stack_dir).resolve()
        self.cache_dir = Path(cache_dir).expanduser().resolve()

    # --- the contract -----------------------------------------------------------------------

    @abc.abstractmethod
    def install(self, progress: Progress) -> None:
        """Fetch/build into ``cache_dir``; idempotent; report steps through ``progress``."""

    @abc.abstractmethod
    def start(self, progress: Progress) -> None:
        """Start the process(es) and block until a real request succeeds."""

    @abc.abstractmethod
    def stop(self) -> None:
        """Stop everything started; safe to call twice."""

    @abc.abstractmethod
    def endpoints(self) -> dict[str, str]:
        """Environment variables for clients of this service."""

    def processes(self) -> list[ManagedProcess]:
        """The supervised processes (for tests that kill -9 / SIGSTOP them)."""
        return []

    def kill(self) -> None:
        """``kill -9`` every process of the service (a crash: no shutdown, data as it was on
        disk), then forget them; :meth:`start` brings the service back."""
        for proc in self.processes():
            proc.kill()
        self.stop()

    def restart(self, progress: Progress = lambda _msg: None) -> None:
        """Stop, then start again on the same ports and data."""
        self.stop()
        self.start(progress)

    # --- helpers shared by the implementations ------------------------------------------

    @property
    def service_dir(self) -> Path:
        """``<stack_dir>/<name>``: this service's data in this stack (created on demand)."""
        path = self.stack_dir / self.name
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def state_path(self) -> Path:
        return self.service_dir / "state.json"

    def load_state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def save_state(self, state: dict[str, Any]) -> None:
        """Write ``state.json`` atomically, mode 600 (it may hold passwords)."""
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o600)
        tmp.replace(self.state_path)

    def port(self, key: str = "port") -> int:
        """The persisted port named ``key``; a new free one if unset or taken by someone else.

        Call it before the service's own process is started (a port our own running process
        holds looks taken).
        """
        state = self.load_state()
        ports: dict[str, int] = dict(state.get("ports", {}))
        port = ports.get(key)
        if port is None or not port_available(port):
            chosen = {p for k, p in ports.items() if k != key}
            port = free_port()
            while port in chosen:
                port = free_port()
            ports[key] = port
            state["ports"] = ports
            self.save_state(state)
        return port

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} in {self.stack_dir}>"
