"""Per-token request rate limits: one token bucket per token name.

A bucket holds at most ``burst`` requests and refills at ``rate_per_s``; a request takes one.
An empty bucket answers how long until the next request fits, which becomes the 429's
``Retry-After`` (whole seconds, rounded up). Buckets are keyed by token *name* (never the
token); the names come from the tokens file, so the number of buckets is bounded by it, and
buckets of names no longer in the file are dropped when the file is reloaded.

No lock: the event loop runs one request's check at a time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass

__all__ = ["Limit", "RateLimiter", "retry_after_s"]


@dataclass(frozen=True, slots=True)
class Limit:
    """``rate_per_s`` requests a second on average, ``burst`` at once."""

    rate_per_s: float
    burst: int

    @staticmethod
    def of(rate_per_s: float, burst: int | None) -> Limit | None:
        """The limit, or None for ``rate_per_s <= 0`` (no limit). ``burst`` None or 0: one
        second's worth (at least 1)."""
        if rate_per_s <= 0:
            return None
        return Limit(rate_per_s, burst if burst else max(1, math.ceil(rate_per_s)))


class _Bucket:
    __slots__ = ("level", "limit", "updated")

    def __init__(self, limit: Limit, now: float) -> None:
        self.limit = limit
        self.level = float(limit.burst)
        self.updated = now


class RateLimiter:
    """Token buckets by name; :meth:`take` returns 0 (allowed) or the seconds to wait."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, name: str, limit: Limit) -> float:
        """Take one request from ``name``'s bucket: 0.0 if it fits, else the seconds until
        one would (the request is then not counted)."""
        now = self._clock()
        bucket = self._buckets.get(name)
        if bucket is None or bucket.limit != limit:
            # new name, or its limit was changed in the tokens file: start full
            bucket = self._buckets[name] = _Bucket(limit, now)
        else:
            bucket.level = min(
                float(limit.burst), bucket.level + (now - bucket.updated) * limit.rate_per_s
            )
            bucket.updated = now
        if bucket.level >= 1.0:
            bucket.level -= 1.0
            return 0.0
        return (1.0 - bucket.level) / limit.rate_per_s

    def keep_only(self, names: Collection[str]) -> None:
        """Drop the buckets of names not in ``names`` (tokens removed from the file)."""
        for name in [n for n in self._buckets if n not in names]:
            del self._buckets[name]


def retry_after_s(wait_s: float) -> int:
    """``Retry-After`` in whole seconds, rounded up (at least 1)."""
    return max(1, math.ceil(wait_s))
