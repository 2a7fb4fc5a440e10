"""Wiring of the ingest process on the service skeleton (:mod:`shared.service`).

::

    database ─► Kafka producer ─► ledger.signed tail ─► Vault probe ─► Rekor probe
                                                      ─► work: the HTTP API (build_app)

Dependencies open in that order and close in reverse. PostgreSQL down at start is waited for
with back-off, as the stages do: the listener opens once the database answers. Kafka down at
start is not: the producer is started on first use (:class:`.publisher.KafkaPublisher`), so
the process comes up, ``/health`` says ``kafka: false`` and appends answer 503 until Kafka is
back. ``/health`` asks the registered pings (``database``, ``kafka``, ``vault``, ``rekor``)
at most once per ``health_cache_s``; it is ``unhealthy`` (503) only while appends cannot be
accepted: Kafka down, or ingest itself shutting down or at its ``max_in_flight`` bound.

Shutdown (:mod:`shared.lifecycle`): on SIGTERM the listener closes (no new connections),
handlers still waiting for the signer are woken (they answer 202 with the status URL, since
their request *was* acknowledged by Kafka), in-flight requests get the grace period to
finish, then the producer is flushed and everything closes in reverse order.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from shared.db import Database
from shared.errors import KafkaUnavailable
from shared.health import VaultProbe
from shared.lifecycle import Lifecycle
from shared.otel import EntryTracer
from shared.service import Service
from shared.settings import Settings
from shared.telemetry import Metrics

from .app import IngestDeps, build_app, check_auth_config
from .auth import TokenStore
from .health import REKOR_UP_STATUSES, http_ping
from .publisher import KafkaPublisher
from .store import PgEntryStore
from .tls import server_tls_context
from .waiter import KafkaSignedWaiter

__all__ = ["IngestProcess", "run_ingest"]

log = logging.getLogger("ledger.ingest")


class IngestProcess:
    """Ingest's dependencies, registered once, and its work: serving the HTTP API.

    Fails closed at construction (:class:`ConfigError`) when auth is on without tokens, or
    the TLS certificate and key are incomplete or unreadable: before anything is opened.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        metrics: Metrics | None = None,
        on_listening: Callable[[str], None] | None = None,
        tracer: EntryTracer | None = None,
    ) -> None:
        check_auth_config(settings)
        settings = settings.for_stage("ingest")  # its own Kafka principal, if configured
        self.tls = server_tls_context(settings)
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.on_listening = on_listening
        # LEDGER_OTEL_ENABLED: one span per append (shared.otel); None: off
        self.tracer = tracer or EntryTracer.from_settings(settings, "ingest")
        self.tokens = None if settings.auth_disabled else TokenStore(settings.tokens_file)
        service = self.service = Service("ingest", grace_s=settings.shutdown_grace_s)
        self.database = service.register(
            # reads are single indexed queries: past 10 s the database is not answering, and
            # a 503 beats a client's own timeout (appends do not wait on it at all)
            "database", lambda: Database.connect(settings, min_size=1, max_size=10,
                                                 command_timeout_s=10.0),
            close=Database.close, ping=Database.health,
        )
        self.publisher = service.register(
            "kafka", self._open_publisher, close=KafkaPublisher.close, what="kafka producer"
        )
        self.waiter = service.register(
            "kafka", self._open_tail, close=KafkaSignedWaiter.close,
            ping=KafkaSignedWaiter.ping, what="ledger.signed tail",
        )
        # ingest signs nothing: its token only needs to read the signing key's metadata
        service.register(
            "vault", lambda: VaultProbe.open(settings, settings.vault_transit_key,
                                             timeout_s=settings.health_timeout_s),
            close=VaultProbe.close, ping=VaultProbe.check, what="vault probe",
        )
        service.register(
            "rekor", _probe_session, close=aiohttp.ClientSession.close,
            ping=http_ping(_rekor_health_url(settings),
                           ok_statuses=REKOR_UP_STATUSES, timeout_s=settings.health_timeout_s),
        )

    async def _open_publisher(self) -> KafkaPublisher:
        publisher = KafkaPublisher(self.settings)
        await publisher.start()  # Kafka down: logged, and the first send tries again
        return publisher

    async def _open_tail(self) -> KafkaSignedWaiter:
        waiter = KafkaSignedWaiter(self.settings)
        try:
            await waiter.start()
        except KafkaUnavailable as exc:
            # appends then answer 202 after the wait; health reports kafka: false
            log.warning("cannot tail ledger.signed", extra={"error": str(exc)[:200]})
        return waiter

    async def run(
        self, *, lifecycle: Lifecycle | None = None, install_signals: bool = True
    ) -> None:
        await self.service.run(self.serve, lifecycle=lifecycle, install_signals=install_signals)

    async def serve(self, lc: Lifecycle) -> None:
        """Serve the API until a stop is requested, then drain the requests in flight."""
        settings, waiter = self.settings, self.waiter.client
        store = PgEntryStore(self.database.client)
        deps = IngestDeps(
            publisher=self.publisher.client,
            store=store,
            waiter=waiter,
            metrics=self.metrics,
            tokens=self.tokens,
            proofs=store,
            health_checks=self.service.health_checks(),
            stopping=lc.stopping,
            tracer=self.tracer,
        )
        if self.tracer is not None:
            lc.on_close("tracing", self.tracer.aclose)
        runner = web.AppRunner(
            build_app(settings, deps), access_log=None,
            shutdown_timeout=settings.shutdown_grace_s, handle_signals=False,
        )
        await runner.setup()
        closed = False

        async def close_http() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await runner.cleanup()

        lc.on_close("http", close_http)
        await web.TCPSite(runner, settings.http_host, settings.http_port,
                          ssl_context=self.tls).start()
        url = _bound_url(runner, settings, https=self.tls is not None)
        log.info("ingest listening", extra={"url": url, "auth": not settings.auth_disabled,
                                            "tls": self.tls is not None})
        if self.on_listening is not None:
            self.on_listening(url)
        await lc.stopping.wait()
        log.info("ingest draining")
        waiter.release_all()  # waiting handlers answer 202 now
        await close_http()  # stop accepting, finish in-flight within the grace period


async def run_ingest(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    on_listening: Callable[[str], None] | None = None,
    tracer: EntryTracer | None = None,
) -> None:
    """Run the ingest service until SIGTERM/SIGINT (or ``lifecycle.request_stop``).

    When ``lifecycle`` is given, signal handling is the caller's business. ``on_listening``
    receives the base URL once the port is bound (useful with ``http_port=0``).
    """
    process = IngestProcess(settings, metrics=metrics, on_listening=on_listening, tracer=tracer)
    await process.run(lifecycle=lifecycle, install_signals=lifecycle is None)


async def _probe_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession()


def _bound_url(runner: web.AppRunner, settings: Settings, *, https: bool = False) -> str:
    scheme = "https" if https else "http"
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return f"{scheme}://{address[0]}:{address[1]}"
    return f"{scheme}://{settings.http_host}:{settings.http_port}"


def _rekor_health_url(settings: Settings) -> str:
    """What answers whether the log is up: v1's log info, or a v2 log's checkpoint."""
    if settings.rekor_api == "v2":
        return settings.rekor_read_url.rstrip("/") + "/checkpoint"
    return settings.rekor_server_url.rstrip("/") + "/api/v1/log"
