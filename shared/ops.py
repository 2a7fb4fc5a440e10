"""What the consumer stages (signer, anchorer) share on top of the service skeleton.

* :func:`register_stage_kafka` registers a stage's Kafka clients (its producer, then its
  group consumer) on a :class:`~shared.service.Service`; ``kafka`` is up in ``/health``
  while the stage consumes (its loop is not paused);
* :func:`open_ops_server` serves ``/metrics`` (Prometheus) and ``/health`` (the service's
  pings) on ``settings.metrics_port``: the stages have no HTTP API of their own.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.consumer import RebalanceHooks
from shared.kafka import Consumer, Producer, make_consumer, make_producer
from shared.lifecycle import Lifecycle
from shared.service import Dependency, Service
from shared.settings import Settings
from shared.telemetry import Metrics

__all__ = ["open_ops_server", "register_stage_kafka", "serve_ops", "stage_client_id"]


def stage_client_id(stage: str) -> str:
    """The Kafka client id of this process: which stage, on which host, which process."""
    return f"ledger-{stage}-{socket.gethostname()}-{os.getpid()}"


def register_stage_kafka(
    service: Service,
    settings: Settings,
    *,
    group_id: str,
    topic: str,
    hooks: RebalanceHooks,
    consuming: Callable[[], bool],
    fetch_max_wait_ms: int,
    fetch_min_bytes: int,
) -> tuple[Dependency[Producer], Dependency[Consumer]]:
    """A stage's producer and its group consumer on ``topic``, both waited for at start.

    ``fetch_max_wait_ms`` / ``fetch_min_bytes``: how long the broker may hold a fetch for
    more data. The longer, the bigger (and cheaper per entry) the batches at low rates, and
    the more latency each hop adds. ``consuming`` answers ``/health``'s ``kafka``.
    """
    client_id = stage_client_id(service.name)

    def open_producer() -> Awaitable[Producer]:
        # it sends whole record batches itself (send_many): nothing to linger for
        return make_producer(settings, client_id=client_id, linger_ms=0)

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

    async def ping(_: Consumer) -> bool:
        return consuming()

    producer = service.register(
        "kafka", open_producer, close=Producer.close, what="kafka producer"
    )
    consumer = service.register(
        "kafka", open_consumer, close=Consumer.close, ping=ping, what="kafka consumer"
    )
    return producer, consumer


async def open_ops_server(
    lc: Lifecycle,
    settings: Settings,
    metrics: Metrics,
    health: Callable[[], Awaitable[Mapping[str, Any]]],
) -> None:
    """:func:`serve_ops` when ``settings.metrics_port`` is set (0: none), closed first."""
    if settings.metrics_port > 0:
        runner = await serve_ops(settings, metrics, health)
        lc.on_close("ops server", runner.cleanup)


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
