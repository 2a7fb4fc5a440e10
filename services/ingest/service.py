"""Wiring of the ingest process: open the clients, serve, shut down gracefully.

Order of opening: database → Kafka producer → ``ledger.signed`` tail → HTTP probes session →
HTTP listener. Shutdown (:mod:`shared.lifecycle`): on SIGTERM the listener closes (no new
connections), handlers still waiting for the signer are woken (they answer 202 with the
status URL, since their request *was* acknowledged by Kafka), in-flight requests get the grace
period to finish, then the producer is flushed and everything closes in reverse order.

Kafka down at start is not fatal: the producer is started on first use
(:class:`.publisher.KafkaPublisher`), so the process comes up, ``/health`` says
``kafka: false`` and appends answer 503 until Kafka is back.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from shared.db import Database
from shared.errors import KafkaUnavailable
from shared.lifecycle import Lifecycle, run_service
from shared.settings import Settings
from shared.telemetry import Metrics

from .app import IngestDeps, build_app, check_auth_config
from .auth import TokenStore
from .health import REKOR_UP_STATUSES, VAULT_UP_STATUSES, http_probe
from .publisher import KafkaPublisher
from .store import PgEntryStore
from .waiter import KafkaSignedWaiter

__all__ = ["run_ingest"]

log = logging.getLogger("ledger.ingest")

_PRODUCER_TIMEOUT_MS = 10_000


async def run_ingest(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    on_listening: Callable[[str], None] | None = None,
) -> None:
    """Run the ingest service until SIGTERM/SIGINT (or ``lifecycle.request_stop``).

    When ``lifecycle`` is given, signal handling is the caller's business. ``on_listening``
    receives the base URL once the port is bound (useful with ``http_port=0``).
    """
    metrics = metrics or Metrics()

    async def main(lc: Lifecycle) -> None:
        check_auth_config(settings)  # before opening anything
        tokens = None if settings.auth_disabled else TokenStore(settings.tokens_file)
        db = await Database.connect(settings, min_size=1, max_size=10)
        lc.on_close("database", db.close)
        producer = KafkaPublisher(settings)
        lc.on_close("kafka producer", producer.close)
        await producer.start()
        waiter = KafkaSignedWaiter(settings)
        lc.on_close("signed tail", waiter.close)
        try:
            await waiter.start()
        except KafkaUnavailable as exc:
            # appends then answer 202 after the wait; health reports kafka: false
            log.warning("cannot tail ledger.signed", extra={"error": str(exc)[:200]})
        session = aiohttp.ClientSession()
        lc.on_close("probe session", session.close)
        store = PgEntryStore(db)
        deps = IngestDeps(
            publisher=producer,
            store=store,
            waiter=waiter,
            metrics=metrics,
            tokens=tokens,
            proofs=store,
            health_checks={
                "database": lambda: store.health(timeout_s=2.0),
                "kafka": waiter.ping,
                "vault": http_probe(
                    session, settings.vault_addr.rstrip("/") + "/v1/sys/health",
                    ok_statuses=VAULT_UP_STATUSES,
                ),
                "rekor": http_probe(
                    session, settings.rekor_server_url.rstrip("/") + "/api/v1/log",
                    ok_statuses=REKOR_UP_STATUSES,
                ),
            },
        )
        app = build_app(settings, deps)
        runner = web.AppRunner(
            app, access_log=None, shutdown_timeout=settings.shutdown_grace_s,
            handle_signals=False,
        )
        await runner.setup()
        closed = False

        async def close_http() -> None:
            nonlocal closed
            if not closed:
                closed = True
                await runner.cleanup()

        lc.on_close("http", close_http)
        site = web.TCPSite(runner, settings.http_host, settings.http_port)
        await site.start()
        url = _bound_url(runner, settings)
        log.info("ingest listening", extra={"url": url, "auth": not settings.auth_disabled})
        if on_listening is not None:
            on_listening(url)
        await lc.stopping.wait()
        log.info("ingest draining")
        waiter.release_all()  # waiting handlers answer 202 now
        await close_http()  # stop accepting, finish in-flight within the grace period

    await run_service(
        "ingest", main, grace_s=settings.shutdown_grace_s, lifecycle=lifecycle,
        install_signals=lifecycle is None,
    )


def _bound_url(runner: web.AppRunner, settings: Settings) -> str:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return f"http://{address[0]}:{address[1]}"
    return f"http://{settings.http_host}:{settings.http_port}"
