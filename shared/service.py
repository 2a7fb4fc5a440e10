"""The one skeleton of every process (ingest, signer, anchorer): a registry of dependencies.

A process registers each dependency once, in the order it needs them: how to open it, how
to ping it and how to close it (the idea of hynek's ``svcs``: a registry of services). The
skeleton does the rest, the same way for every process::

    register ─► open each, in order ─► work ──────────────────► close, in reverse order
                (a dependency that is     (built on the open      (shared.lifecycle: after
                 down is waited for,       clients; runs until     the work drained or the
                 with one back-off)        a stop is requested)    grace period is over)

    /health ◄── the registered pings, by dependency name: database, kafka, vault, rekor
                (each a shared.health.Check, bounded by a timeout)

Processes differ only in what they register and in their work. A dependency's ``open`` may
be replaced before the process runs (an instrumented or fake client): the work only ever
uses ``dependency.client``, whatever opened it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

from shared.errors import DependencyError
from shared.health import OK, Check, guarded
from shared.lifecycle import Lifecycle, run_service
from shared.stage import Backoff

__all__ = ["Dependency", "DependencyName", "Service", "Work", "at_once", "open_when_ready"]

log = logging.getLogger("ledger.service")

_T = TypeVar("_T")

#: What a process depends on, as ``/health``, the start-up log and the metrics name it.
DependencyName = Literal["database", "kafka", "vault", "rekor", "tsa"]

#: A process's work: built on the open clients, it runs until ``lc.stopping``, then returns.
Work = Callable[[Lifecycle], Coroutine[Any, Any, None]]


def at_once(factory: Callable[[], _T]) -> Callable[[], Awaitable[_T]]:
    """An ``open`` for a client that connects on first use: nothing to wait for at start."""

    async def open_now() -> _T:
        return factory()

    return open_now


async def open_when_ready(
    what: str, opener: Callable[[], Awaitable[_T]], lc: Lifecycle, backoff: Backoff
) -> _T | None:
    """Open a client, retrying while its service is unavailable; None if stopped first."""
    attempt = 0
    while not lc.stopping.is_set():
        try:
            return await opener()
        except DependencyError as exc:
            delay = backoff.delay(attempt)
            attempt += 1
            log.warning(
                "dependency not ready at start-up; retrying",
                extra={"dependency": what, "error": str(exc), "retry_in_s": round(delay, 2)},
            )
            await lc.sleep(delay)
    return None


@dataclass(eq=False)
class Dependency(Generic[_T]):
    """One registered dependency: its name, and how to open, ping and close its client.

    ``what`` names this client in the close steps when a dependency has several (Kafka: a
    producer and a consumer). ``ping`` answers for ``/health``; without one, the client does
    not count there.
    """

    name: DependencyName
    what: str
    open: Callable[[], Awaitable[_T]]
    close: Callable[[_T], Awaitable[object]]
    ping: Callable[[_T], Awaitable[bool | Check]] | None = None
    _client: _T | None = field(default=None, init=False, repr=False)

    @property
    def client(self) -> _T:
        """The open client (the work runs only once every dependency is open)."""
        if self._client is None:
            raise RuntimeError(f"{self.what} is not open")
        return self._client

    async def up(self) -> Check:
        """The ping's answer; a client that is not open (yet) is down."""
        if self._client is None or self.ping is None:
            return Check(False, "not open")
        return Check.of(await self.ping(self._client))

    async def open_in(self, lc: Lifecycle, backoff: Backoff) -> bool:
        """Open (waiting while the service is down) and register the close; False if stopped."""
        client = await open_when_ready(self.name, self.open, lc, backoff)
        if client is None:
            return False
        self._client = client
        lc.on_close(self.what, functools.partial(self.close, client))
        return True


class Service:
    """A process: its dependencies (opened in order, pinged, closed in reverse) and its work."""

    def __init__(self, name: str, *, grace_s: float, backoff: Backoff | None = None) -> None:
        self.name = name
        self.grace_s = grace_s
        self.backoff = backoff or Backoff()
        self._dependencies: list[Dependency[Any]] = []

    def register(
        self,
        name: DependencyName,
        open: Callable[[], Awaitable[_T]],
        *,
        close: Callable[[_T], Awaitable[object]],
        ping: Callable[[_T], Awaitable[bool | Check]] | None = None,
        what: str | None = None,
    ) -> Dependency[_T]:
        """Add a dependency, opened after those registered before it; returns its handle."""
        dependency = Dependency(name, what or name, open, close, ping)
        if any(d.what == dependency.what for d in self._dependencies):
            raise ValueError(f"{dependency.what} is registered twice")
        self._dependencies.append(dependency)
        return dependency

    async def run(
        self, work: Work, *, lifecycle: Lifecycle | None = None, install_signals: bool = True
    ) -> None:
        """Open every dependency, run ``work`` until a stop, then drain and close in reverse.

        When ``lifecycle`` is given, stopping is the caller's business (with
        ``install_signals=False``, signals are too).
        """

        async def main(lc: Lifecycle) -> None:
            for dependency in self._dependencies:
                if not await dependency.open_in(lc, self.backoff):
                    return  # stopped while waiting: nothing to drain
            await work(lc)

        await run_service(
            self.name, main, grace_s=self.grace_s, lifecycle=lifecycle,
            install_signals=install_signals,
        )

    def health_checks(self) -> dict[str, Callable[[], Awaitable[Check]]]:
        """One probe per dependency name that has pings: up when all of its pings are."""
        names = dict.fromkeys(d.name for d in self._dependencies if d.ping is not None)
        return {name: functools.partial(self._up, name) for name in names}

    async def health(self, *, timeout_s: float = 2.0) -> dict[str, Check]:
        """Every probe of :meth:`health_checks`, one after another in the order registered,
        each cut off after ``timeout_s`` (state ``timeout``).

        In order, not together: what the work keeps in memory (a stage's ``kafka``: its loop
        is not paused, registered last) is then read after the network probes, so it is as
        fresh as the answer can be; a loop that resumed while Vault was being asked is up.
        """
        return {
            name: await guarded(check, timeout_s=timeout_s)
            for name, check in self.health_checks().items()
        }

    async def _up(self, name: DependencyName) -> Check:
        for dependency in self._dependencies:
            if dependency.name == name and dependency.ping is not None:
                check = await dependency.up()
                if not check.ok:
                    return check
        return OK
