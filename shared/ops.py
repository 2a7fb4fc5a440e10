"""What the consumer stages (signer, anchorer) share on top of the service skeleton.

* :func:`register_stage_kafka` registers a stage's Kafka clients (its producer, then its
  group consumer) on a :class:`~shared.service.Service`; ``kafka`` is up in ``/health``
  while the stage consumes (its loop is not paused), else its state is ``paused``;
* :func:`open_ops_server` serves, on ``settings.metrics_port`` (the stages have no HTTP API
  of their own):

  ``/metrics``  Prometheus exposition;
  ``/health``   the service's pings in the vocabulary of :mod:`shared.health`: ``healthy``,
                ``degraded`` (a dependency is down but the loop still consumes) or
                ``unhealthy`` (paused: 503); ``paused``; ``checks`` with each state (a
                sealed Vault: ``sealed``). Cached for ``health_cache_s``;
  ``/livez``    200 while the event loop runs (restart the process only when this fails);
  ``/readyz``   200 while the stage consumes, else 503.
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
from shared.health import OK, Check, HealthCache, health_body
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

    async def ping(_: Consumer) -> Check:
        return OK if consuming() else Check(False, "paused")

    producer = service.register(
        "kafka", open_producer, close=Producer.close, what="kafka producer"
    )
    consumer = service.register(
        "kafka", open_consumer, close=Consumer.close, ping=ping, what="kafka consumer"
    )
    return producer, consumer


#: the check a stage cannot work without: its consuming loop (``kafka``; ``paused`` if not)
STAGE_REQUIRED: tuple[str, ...] = ("kafka",)


async def open_ops_server(
    lc: Lifecycle,
    settings: Settings,
    metrics: Metrics,
    health: Callable[[], Awaitable[Mapping[str, Check]]],
) -> None:
    """:func:`serve_ops` when ``settings.metrics_port`` is set (0: none), closed first."""
    if settings.metrics_port > 0:
        runner = await serve_ops(settings, metrics, health)
        lc.on_close("ops server", runner.cleanup)


def stage_health_body(checks: Mapping[str, Check]) -> dict[str, Any]:
    """:func:`shared.health.health_body` plus ``paused`` (the loop waits on a dependency)."""
    body = health_body(checks, required=STAGE_REQUIRED)
    kafka = checks.get("kafka")
    body["paused"] = kafka is not None and kafka.state == "paused"
    return body


async def serve_ops(
    settings: Settings,
    metrics: Metrics,
    health: Callable[[], Awaitable[Mapping[str, Check]]],
) -> web.AppRunner:
    """``/metrics``, ``/health``, ``/livez`` and ``/readyz`` (see the module docstring)."""
    cache = HealthCache(health, ttl_s=settings.health_cache_s, on_probe=metrics.health_probes.inc)

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def get_health(_: web.Request) -> web.Response:
        body = stage_health_body(await cache.get())
        return _json(503 if body["status"] == "unhealthy" else 200, body)

    async def get_ready(_: web.Request) -> web.Response:
        body = stage_health_body(await cache.get())
        ready = body["status"] != "unhealthy"
        return _json(200 if ready else 503, {"status": body["status"], "ready": ready})

    async def get_live(_: web.Request) -> web.Response:
        return _json(200, {"status": "alive"})

    app = web.Application()
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/health", get_health)
    app.router.add_get("/readyz", get_ready)
    app.router.add_get("/livez", get_live)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.http_host, settings.metrics_port).start()
    return runner


def _json(status: int, body: Mapping[str, Any]) -> web.Response:
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
