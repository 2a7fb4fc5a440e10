"""Wiring of the signer process on the service skeleton (:mod:`shared.service`).

::

    database ─► Vault ─► Kafka producer ─► Kafka consumer ─► work: SignerStage in a
                                                                   ConsumerLoop, ops server

Dependencies open in that order and close in reverse, the ops server (``/health``,
``/metrics`` on ``settings.metrics_port`` when set) opens last and closes first. One that is
down at start-up is waited for with back-off: a signer started before its database waits.
The Vault client connects on first use; the stream pauses on Vault like on any dependency.

``/health`` (:mod:`shared.ops`): ``database``, ``vault`` (a probe of its own: unsealed, the
token valid, the signing key readable) and ``kafka`` (consuming: the loop is not paused);
``unhealthy`` (503) while paused. ``/livez`` and ``/readyz`` beside it.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from shared.consumer import ConsumerLoop, RebalanceHooks
from shared.db import Database
from shared.health import VaultProbe
from shared.lifecycle import Lifecycle
from shared.ops import open_ops_server, register_stage_kafka
from shared.otel import EntryTracer
from shared.repository import Repository
from shared.service import Service, at_once
from shared.settings import Settings
from shared.stage import KafkaDeadLetters
from shared.telemetry import Metrics
from shared.vault import TransitSigner
from shared.vault_token import VaultToken

from .publisher import KafkaSignedPublisher
from .stage import STAGE, SignerStage

__all__ = ["SignerProcess", "run_signer"]

log = logging.getLogger("ledger.signer")


class SignerProcess:
    """The signer's dependencies, registered once, and its work."""

    def __init__(
        self, settings: Settings, *, metrics: Metrics | None = None,
        tracer: EntryTracer | None = None,
    ) -> None:
        settings = settings.for_stage(STAGE)  # its own Kafka principal, if configured
        self.settings = settings
        self.metrics = metrics or Metrics()
        # LEDGER_OTEL_ENABLED: one span per entry (shared.otel); None: off
        self.tracer = tracer or EntryTracer.from_settings(settings, STAGE)
        self.service = Service(STAGE, grace_s=settings.shutdown_grace_s)
        self.loop: ConsumerLoop[Any] | None = None
        self._rebalance = RebalanceHooks()
        self.database = self.service.register(
            "database", lambda: Database.connect(settings), close=Database.close,
            ping=Database.health,
        )
        # its own token (least privilege: this stage's key only), renewed and re-read
        token = VaultToken.for_stage(settings, STAGE)
        self.vault = self.service.register(
            "vault", at_once(lambda: TransitSigner(settings, token=token)),
            close=TransitSigner.close,
        )
        self.service.register(
            "vault", lambda: VaultProbe.open(settings, settings.vault_transit_key,
                                             timeout_s=settings.health_timeout_s,
                                             token=lambda: token.value),
            close=VaultProbe.close, ping=VaultProbe.check, what="vault probe",
        )
        self.producer, self.consumer = register_stage_kafka(
            self.service, settings, group_id=settings.signer_group,
            topic=settings.topic_append, hooks=self._rebalance, consuming=self.consuming,
            # a waiting POST /append feels this hop: no longer than the poll window
            fetch_max_wait_ms=max(5, settings.signer_batch_ms), fetch_min_bytes=64 * 1024,
        )

    def consuming(self) -> bool:
        return self.loop is not None and not self.loop.paused

    async def run(
        self, *, lifecycle: Lifecycle | None = None, install_signals: bool = True
    ) -> None:
        await self.service.run(self.work, lifecycle=lifecycle, install_signals=install_signals)

    async def work(self, lc: Lifecycle) -> None:
        """Sign ``ledger.append`` until a stop is requested (then finish the batch in hand)."""
        settings, producer = self.settings, self.producer.client
        stage = SignerStage(
            store=Repository(self.database.client),
            vault=self.vault.client,
            publisher=KafkaSignedPublisher(producer, settings.topic_signed),
            key_name=settings.vault_transit_key,
            batch_max=settings.signer_batch_max,
            metrics=self.metrics,
            max_meta_bytes=settings.max_meta_bytes,
            tracer=self.tracer,
        )
        if self.tracer is not None:
            lc.on_close("tracing", self.tracer.aclose)
        self.loop = ConsumerLoop(
            stage,
            self.consumer.client,
            KafkaDeadLetters(producer),
            metrics=self.metrics,
            stopping=lc.stopping,
            batch_max=settings.signer_batch_max * settings.signer_vault_in_flight,
            batch_timeout_ms=settings.signer_batch_ms,
            backoff=self.service.backoff,
            depth=settings.pipeline_depth,
        )
        self._rebalance.bind(self.loop)
        await open_ops_server(
            lc, settings, self.metrics,
            functools.partial(self.service.health, timeout_s=settings.health_timeout_s),
        )
        log.info(
            "signer started",
            extra={"topic": settings.topic_append, "group": settings.signer_group},
        )
        await self.loop.run()


async def run_signer(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    install_signals: bool = True,
    tracer: EntryTracer | None = None,
) -> None:
    """Run the signer until SIGTERM/SIGINT (or ``lifecycle.request_stop``), then drain."""
    await SignerProcess(settings, metrics=metrics, tracer=tracer).run(
        lifecycle=lifecycle, install_signals=install_signals
    )
