"""Ingest's ``/health``, ``/livez`` and ``/readyz``, and its Rekor probe.

The vocabulary, the cache and the Vault probe are :mod:`shared.health`. ``/health`` is
``unhealthy`` (503) only while appends cannot be accepted: Kafka is down, or ingest itself
is shutting down or at its ``max_in_flight`` bound (the ``ingest`` check, never cached).
PostgreSQL, Vault or Rekor down is ``degraded`` (200): appends still reach Kafka (the
idempotency lookup is skipped; the signer stores them once the database is back); reads
answer 503.

Each probe is one request with a short timeout and answers a :class:`~shared.health.Check`:
nothing about the failure (addresses, tokens, messages) reaches the ``/health`` response, only
a short state (``unreachable``, ``timeout``, ``http 502``).

* Rekor: ``GET /api/v1/log`` (the log's tree head);
* Vault: :class:`shared.health.VaultProbe` (unsealed, token valid, key readable);
* database and Kafka probes come from their adapters (``SELECT 1``, a metadata request).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import web

from shared.health import OK, Check, HealthCache, Probe, health_body, run_probes
from shared.settings import Settings
from shared.telemetry import Metrics

from .responses import json_response

__all__ = ["REKOR_UP_STATUSES", "IngestHealth", "http_ping", "http_probe"]

log = logging.getLogger("ledger.ingest.health")

REKOR_UP_STATUSES: Final = frozenset({200})
#: the checks ``/health`` reports, in the runbook's order, then ingest's own state
_HEALTH_NAMES: Final = ("database", "rekor", "kafka", "vault")
#: without these, appends cannot be accepted: ``unhealthy`` and 503
_REQUIRED: Final = ("kafka", "ingest")


class IngestHealth:
    """The three endpoints on the registered probes (cached) and ingest's own state."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        probes: Mapping[str, Probe],
        *,
        stopping: asyncio.Event | None,
        in_flight: Callable[[], int],
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._probes = probes
        self._stopping = stopping
        self._in_flight = in_flight
        self.cache = HealthCache(
            self._probe_dependencies, ttl_s=settings.health_cache_s,
            on_probe=metrics.health_probes.inc,
        )

    async def _probe_dependencies(self) -> dict[str, Check]:
        probes = {n: self._probes[n] for n in _HEALTH_NAMES if n in self._probes}
        found = await run_probes(probes, timeout_s=self._settings.health_timeout_s)
        checks = {n: found.get(n, Check(False, "not configured")) for n in _HEALTH_NAMES}
        for name, check in checks.items():
            self._metrics.dependency_up.labels(name).set(1 if check.ok else 0)
        return checks

    def own_state(self) -> Check:
        """Can this process take appends, whatever its dependencies say?"""
        if self._stopping is not None and self._stopping.is_set():
            return Check(False, "shutting down")
        if self._in_flight() >= self._settings.max_in_flight:
            return Check(False, "overloaded")
        return OK

    async def body(self) -> dict[str, Any]:
        checks = {**await self.cache.get(), "ingest": self.own_state()}
        return health_body(checks, required=_REQUIRED)

    async def health(self, request: web.Request) -> web.Response:
        body = await self.body()
        return json_response(body, status=503 if body["status"] == "unhealthy" else 200)

    async def readyz(self, request: web.Request) -> web.Response:
        status = (await self.body())["status"]
        ready = status != "unhealthy"
        return json_response({"status": status, "ready": ready}, status=200 if ready else 503)

    async def livez(self, request: web.Request) -> web.Response:
        return json_response({"status": "alive"})


def http_probe(
    session: aiohttp.ClientSession,
    url: str,
    *,
    ok_statuses: frozenset[int],
    timeout_s: float = 2.0,
) -> Callable[[], Awaitable[Check]]:
    """A probe that GETs ``url`` and is up when the status is one of ``ok_statuses``."""

    async def probe() -> Check:
        try:
            async with session.get(
                url,
                timeout=aiohttp.ClientTimeout(total=timeout_s),
                allow_redirects=False,
            ) as response:
                await response.read()
                if response.status in ok_statuses:
                    return OK
                return Check(False, f"http {response.status}")
        except TimeoutError:
            return Check(False, "timeout")
        except (aiohttp.ClientError, OSError) as exc:
            log.debug("probe failed", extra={"error": type(exc).__name__})
            return Check(False, "unreachable")

    return probe


def http_ping(
    url: str, *, ok_statuses: frozenset[int], timeout_s: float = 2.0
) -> Callable[[aiohttp.ClientSession], Awaitable[Check]]:
    """:func:`http_probe` through the session it is given (a registered dependency's client)."""

    async def ping(session: aiohttp.ClientSession) -> Check:
        return await http_probe(session, url, ok_statuses=ok_statuses, timeout_s=timeout_s)()

    return ping
