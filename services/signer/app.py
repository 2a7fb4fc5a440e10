"""Wiring of the signer process: adapters → :class:`SignerStage` → :class:`ConsumerLoop`.

Opening order (closed in reverse by the lifecycle): metrics/health server, database, Vault,
producer, consumer. A dependency that is down at start-up is retried with back-off until it
answers or a stop is requested: a signer started before its database simply waits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from shared.consumer import Backoff, ConsumerLoop, KafkaDeadLetters, RebalanceHooks
from shared.db import Database
from shared.errors import DependencyError
from shared.kafka import Consumer, make_consumer, make_producer
from shared.lifecycle import Lifecycle, run_service
from shared.settings import Settings
from shared.telemetry import Metrics
from shared.vault import TransitSigner

from .publisher import KafkaSignedPublisher
from .stage import EntryStore, SignerStage

__all__ = ["CHUNKS_PER_POLL", "run_signer"]

log = logging.getLogger("ledger.signer")

#: A poll takes up to this many Vault batches (each ≤ ``signer_batch_max``), signed in
#: parallel and stored in one transaction.
CHUNKS_PER_POLL = 4

_T = TypeVar("_T")


async def _open(
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


async def _serve_ops(
    settings: Settings,
    metrics: Metrics,
    health: Callable[[], Awaitable[dict[str, bool]]],
) -> web.AppRunner:
    """``/metrics`` (Prometheus) and ``/health`` on ``settings.metrics_port``."""

    async def get_metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(metrics.registry),
            headers={"Content-Type": CONTENT_TYPE_LATEST},
        )

    async def get_health(_: web.Request) -> web.Response:
        checks = await health()
        ok = all(checks.values())
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


async def run_signer(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    install_signals: bool = True,
) -> None:
    """Run the signer until SIGTERM/SIGINT (or ``lifecycle.request_stop``), then drain."""
    m = metrics or Metrics()
    backoff = Backoff()
    client_id = f"ledger-signer-{socket.gethostname()}-{os.getpid()}"

    async def main(lc: Lifecycle) -> None:
        db = await _open("database", lambda: Database.connect(settings), lc, backoff)
        if db is None:
            return
        lc.on_close("database", db.close)
        vault = TransitSigner(settings)
        lc.on_close("vault", vault.close)
        producer = await _open(
            "kafka", lambda: make_producer(settings, client_id=client_id), lc, backoff
        )
        if producer is None:
            return
        lc.on_close("producer", producer.close)

        hooks = RebalanceHooks()

        def open_consumer() -> Awaitable[Consumer]:
            return make_consumer(
                settings,
                group_id=settings.signer_group,
                topics=[settings.topic_append],
                client_id=client_id,
                on_assigned=hooks.assigned,
                on_revoked=hooks.revoked,
            )

        consumer = await _open("kafka", open_consumer, lc, backoff)
        if consumer is None:
            return
        lc.on_close("consumer", consumer.close)

        stage = SignerStage(
            store=EntryStore(db),
            vault=vault,
            publisher=KafkaSignedPublisher(producer, settings.topic_signed),
            key_name=settings.vault_transit_key,
            batch_max=settings.signer_batch_max,
            metrics=m,
        )
        loop = ConsumerLoop(
            stage,
            consumer,
            KafkaDeadLetters(producer),
            metrics=m,
            stopping=lc.stopping,
            batch_max=settings.signer_batch_max * CHUNKS_PER_POLL,
            batch_timeout_ms=settings.signer_batch_ms,
            backoff=backoff,
        )
        hooks.bind(loop)

        if settings.metrics_port > 0:

            async def health() -> dict[str, bool]:
                database, vault_ok = await asyncio.gather(db.health(), vault.health())
                return {"database": database, "vault": vault_ok, "consuming": not loop.paused}

            runner = await _serve_ops(settings, m, health)
            lc.on_close("ops server", runner.cleanup)

        log.info(
            "signer started",
            extra={"topic": settings.topic_append, "group": settings.signer_group},
        )
        await loop.run()

    await run_service(
        "signer",
        main,
        grace_s=settings.shutdown_grace_s,
        lifecycle=lifecycle,
        install_signals=install_signals,
    )
