"""One graceful-shutdown recipe for every service.

signal (SIGTERM/SIGINT) → stop intake → drain in-flight work within a grace period →
flush producers, commit offsets → close clients in reverse order of opening.
:meth:`Lifecycle.shutdown` is idempotent, and every step has a finite timeout.

A service's ``main`` receives the :class:`Lifecycle`, registers what it opens with
:meth:`Lifecycle.on_close` (in the order it opens them), and runs until
:attr:`Lifecycle.stopping` is set. Its intake loop checks ``stopping`` and returns after
finishing the batch in hand; :func:`run_service` gives it ``grace_s`` seconds to do so
before it is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uvloop

__all__ = ["Lifecycle", "run_main", "run_service"]

log = logging.getLogger("ledger.lifecycle")


def run_main(main: Coroutine[Any, Any, None]) -> None:
    """Run a process's top coroutine on uvloop (libuv): the stages spend a good part of
    their CPU in the event loop and socket handling, which uvloop does in C."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)

Closer = Callable[[], Awaitable[object]]


class Lifecycle:
    def __init__(self, *, name: str, grace_s: float, close_timeout_s: float = 10.0) -> None:
        self.name = name
        self.grace_s = grace_s
        self.close_timeout_s = close_timeout_s
        self.stopping = asyncio.Event()
        self._closers: list[tuple[str, Closer]] = []
        self._closed = False

    def on_close(self, what: str, closer: Closer) -> None:
        """Register a close step; steps run in reverse order of registration."""
        self._closers.append((what, closer))

    def request_stop(self, reason: str) -> None:
        if not self.stopping.is_set():
            log.info("stopping", extra={"service": self.name, "reason": reason})
            self.stopping.set()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, signal.Signals(sig).name)

    async def sleep(self, seconds: float) -> bool:
        """Sleep unless stopping; True if woken by a stop request (for back-off loops)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), seconds)
        return self.stopping.is_set()

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.stopping.set()
        for what, closer in reversed(self._closers):
            try:
                await asyncio.wait_for(closer(), self.close_timeout_s)
            except Exception as exc:  # noqa: BLE001 - one failing close must not skip the rest
                log.warning(
                    "close step failed",
                    extra={"service": self.name, "step": what, "error": repr(exc)},
                )


async def run_service(
    name: str,
    main: Callable[[Lifecycle], Coroutine[Any, Any, None]],
    *,
    grace_s: float,
    lifecycle: Lifecycle | None = None,
    install_signals: bool = True,
) -> None:
    """Run ``main`` until it returns or a stop is requested, then drain and close.

    ``main`` should return soon after ``lifecycle.stopping`` is set; if it has not within
    ``grace_s`` it is cancelled. Close steps run in every case.
    """
    lc = lifecycle or Lifecycle(name=name, grace_s=grace_s)
    if install_signals:
        lc.install_signal_handlers()
    task = asyncio.create_task(main(lc), name=f"{name}-main")
    stop_wait = asyncio.create_task(lc.stopping.wait())
    try:
        await asyncio.wait({task, stop_wait}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), grace_s)
            except TimeoutError:
                log.warning("grace period over; cancelling", extra={"service": name})
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    finally:
        stop_wait.cancel()
        await lc.shutdown()
