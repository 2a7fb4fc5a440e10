"""Wiring of the signer process: adapters → :class:`SignerStage` → :class:`ConsumerLoop`.

Opening order (closed in reverse by the lifecycle): metrics/health server, database, Vault,
producer, consumer. A dependency that is down at start-up is retried with back-off until it
answers or a stop is requested: a signer started before its database simply waits.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket

from shared.consumer import Backoff, ConsumerLoop, KafkaDeadLetters, RebalanceHooks
from shared.db import Database
from shared.kafka import make_producer
from shared.lifecycle import Lifecycle, run_service
from shared.ops import open_group_consumer, open_when_ready, serve_ops
from shared.repository import Repository
from shared.settings import Settings
from shared.telemetry import Metrics
from shared.vault import TransitSigner

from .publisher import KafkaSignedPublisher
from .stage import SignerStage

__all__ = ["run_signer"]

log = logging.getLogger("ledger.signer")

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
        db = await open_when_ready("database", lambda: Database.connect(settings), lc, backoff)
        if db is None:
            return
        lc.on_close("database", db.close)
        vault = TransitSigner(settings)
        lc.on_close("vault", vault.close)
        producer = await open_when_ready(
            # it sends whole record batches itself (send_many): nothing to linger for
            "kafka", lambda: make_producer(settings, client_id=client_id, linger_ms=0), lc,
            backoff,
        )
        if producer is None:
            return
        lc.on_close("producer", producer.close)

        hooks = RebalanceHooks()

        consumer = await open_group_consumer(
            settings, group_id=settings.signer_group, topic=settings.topic_append,
            client_id=client_id, hooks=hooks, lc=lc, backoff=backoff,
            # a waiting POST /append feels this hop: no longer than the poll window
            fetch_max_wait_ms=max(5, settings.signer_batch_ms), fetch_min_bytes=64 * 1024,
        )
        if consumer is None:
            return
        lc.on_close("consumer", consumer.close)

        stage = SignerStage(
            store=Repository(db),
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
            batch_max=settings.signer_batch_max * settings.signer_vault_in_flight,
            batch_timeout_ms=settings.signer_batch_ms,
            backoff=backoff,
            depth=settings.pipeline_depth,
        )
        hooks.bind(loop)

        if settings.metrics_port > 0:

            async def health() -> dict[str, bool]:
                database, vault_ok = await asyncio.gather(db.health(), vault.health())
                return {"database": database, "vault": vault_ok, "consuming": not loop.paused}

            runner = await serve_ops(settings, m, health)
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
