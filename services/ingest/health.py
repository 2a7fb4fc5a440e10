"""Cheap, real health probes of the services ingest depends on.

Each probe is one request with a short timeout and answers only True or False: nothing
about the failure (addresses, tokens, messages) reaches the ``/health`` response; the reason
is logged at debug level by type only.

* Vault: ``GET /v1/sys/health`` (unauthenticated; 200 active, 429/472/473 standbys are
  up; 501 uninitialised and 503 sealed are down).
* Rekor: ``GET /api/v1/log`` (the log's tree head).
* Database and Kafka probes come from their adapters (``SELECT 1``, a metadata request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Final

import aiohttp

__all__ = ["HealthCheck", "http_ping", "http_probe", "run_checks"]

log = logging.getLogger("ledger.ingest.health")

#: A probe: True when the dependency answered correctly within its timeout.
HealthCheck = Callable[[], Awaitable[bool]]

VAULT_UP_STATUSES: Final = frozenset({200, 429, 472, 473})
REKOR_UP_STATUSES: Final = frozenset({200})


def http_probe(
    session: aiohttp.ClientSession,
    url: str,
    *,
    ok_statuses: frozenset[int],
    timeout_s: float = 2.0,
) -> HealthCheck:
    """A probe that GETs ``url`` and is up when the status is one of ``ok_statuses``."""

    async def probe() -> bool:
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                await response.read()
                return response.status in ok_statuses
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.debug("probe failed", extra={"error": type(exc).__name__})
            return False

    return probe


def http_ping(
    url: str, *, ok_statuses: frozenset[int], timeout_s: float = 2.0
) -> Callable[[aiohttp.ClientSession], Awaitable[bool]]:
    """:func:`http_probe` through the session it is given (a registered dependency's client)."""

    async def ping(session: aiohttp.ClientSession) -> bool:
        return await http_probe(session, url, ok_statuses=ok_statuses, timeout_s=timeout_s)()

    return ping


async def run_checks(checks: Mapping[str, HealthCheck], *, timeout_s: float) -> dict[str, bool]:
    """Run every probe concurrently; one that raises or overruns ``timeout_s`` is down."""

    async def guarded(check: HealthCheck) -> bool:
        try:
            return bool(await asyncio.wait_for(check(), timeout_s))
        except Exception as exc:  # noqa: BLE001 - a broken probe means "down", never a 500
            log.debug("probe raised", extra={"error": type(exc).__name__})
            return False

    names = list(checks)
    results = await asyncio.gather(*(guarded(checks[n]) for n in names))
    return dict(zip(names, results, strict=True))
