"""Process plumbing shared by the consumer stages: start-up retries and the ops endpoint.

* :func:`open_when_ready` opens a client, retrying with back-off while its service is
  unavailable, so a stage started before its dependencies waits instead of crashing;
* :func:`serve_ops` serves ``/metrics`` (Prometheus) and ``/health`` on
  ``settings.metrics_port`` for processes that have no HTTP API of their own.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.consumer import Backoff, RebalanceHooks
from shared.errors import DependencyError
from shared.kafka import Consumer, make_consumer
from shared.lifecycle import Lifecycle
from shared.settings import Settings
from shared.telemetry import Metrics

__all__ = ["open_group_consumer", "open_when_ready", "serve_ops"]

log = logging.getLogger("ledger.ops")

_T = TypeVar("_T")


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


async def open_group_consumer(
    settings: Settings,
    *,
    group_id: str,
    topic: str,
    client_id: str,
    hooks: RebalanceHooks,
    lc: Lifecycle,
    backoff: Backoff,
    fetch_max_wait_ms: int,
    fetch_min_bytes: int,
) -> Consumer | None:
    """A stage's group consumer on ``topic``, opened once Kafka answers (None if stopped).

    ``fetch_max_wait_ms`` / ``fetch_min_bytes``: how long the broker may hold a fetch for
    more data. The longer, the bigger (and cheaper per entry) the batches at low rates, and
    the more latency each hop adds.
    """

    def open_consumer() -> Awaitable[Consumer]:
        return make_consumer(
            settings,
            group_id=group_id,
            topics=[topic],
            client_id=client_id,
            on_assigned=hooks.assigned,
            on_revoked=hooks.revoked,
            fetch_max_wait_ms=fetch_max_wait_ms,
            fetch_min_bytes=fetch_min_bytes,
        )

    return await open_when_ready("kafka", open_consumer, lc, backoff)


async def serve_ops(
    settings: Settings,
    metrics: Metrics,
    health: Callable[[], Awaitable[Mapping[str, Any]]],
) -> web.AppRunner:
    """``/metrics`` and ``/health`` (200 if every boolean check passed, else 503)."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def get_health(_: web.Request) -> web.Response:
        checks = await health()
        ok = all(v for v in checks.values() if isinstance(v, bool))
        body = {"status": "ok" if ok else "degraded", **checks}
        return web.Response(
            status=200 if ok else 503, text=json.dumps(body), content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.metrics_port).start()
    return runner
