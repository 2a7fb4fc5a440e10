"""Waiting for a condition in tests and benchmarks: poll it, and fail naming what was awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

__all__ = ["wait_for"]


async def wait_for(
    check: Callable[[], Awaitable[bool]],
    *,
    within: float,
    what: str,
    every: float = 0.1,
    error: type[AssertionError] = AssertionError,
) -> float:
    """Poll ``check`` every ``every`` seconds until it is true and return the monotonic time
    it was seen true; raise ``error`` naming ``what`` after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise error(f"timed out after {within:g}s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic()
