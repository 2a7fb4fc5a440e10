"""Wiring of the anchorer process: adapters → :class:`Anchorer` → consumer loop + sweeper.

::

    ledger.signed ─► AccumulatingConsumer (N records or T ms) ─► ConsumerLoop ─► AnchorerStage
                                                                                   │
                         Sweeper (every sweeper_interval_s) ─► Anchorer ◄───────────┘
                                                                │
                              Vault (anchor key) · PostgreSQL · Rekor · ledger.anchored

Opening order (closed in reverse by the lifecycle): database, Vault, Rekor client, producer,
consumer, ops server (``/health``, ``/metrics`` on ``settings.metrics_port`` when set). A
dependency that is down at start-up is retried with back-off until it answers or a stop is
requested. Rekor is not needed to start: the stream pauses on it, like on any dependency.

``/health`` says ``rekor: false`` while the last Rekor call failed (or its health probe
does), together with ``database``, ``vault``, ``kafka`` (consuming, not paused) and the
number of pending batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.anchored import AnchoredEvent
from shared.consumer import (
    Backoff,
    ConsumerLoop,
    KafkaDeadLetters,
    Message,
    RebalanceHooks,
    Rejection,
    Turn,
)
from shared.db import Database
from shared.errors import InvalidMessage, LedgerError
from shared.kafka import Producer, Record, make_producer
from shared.lifecycle import Lifecycle, run_service
from shared.messages import decode_object
from shared.ops import open_group_consumer, open_when_ready, serve_ops
from shared.rekor import RekorClient
from shared.repository import Repository
from shared.settings import Settings
from shared.telemetry import Metrics, log_context
from shared.tracing import TraceCarrier
from shared.vault import TransitSigner

from .anchoring import Anchorer
from .batcher import AccumulatingConsumer
from .checkpoints import ConsistencyMonitor
from .sweeper import Sweeper
from .trust import LogKeySource

__all__ = [
    "STAGE",
    "AnchorerHooks",
    "AnchorerStage",
    "KafkaAnchoredPublisher",
    "decode_signed",
    "parallel_batches",
    "run_anchorer",
]

log = logging.getLogger("ledger.anchorer")

STAGE = "anchorer"
_PUBLISH_CHUNK = 1000
_MAX_PARALLEL_BATCHES = 16
_PARALLEL_ENTRIES = 4096


@dataclass(frozen=True)
class AnchorerHooks:
    """Test-only fault injection (see ``services/anchorer/__main__.py``).

    ``crash_after_rekor``: ``os._exit(137)`` right after Rekor accepted a new entry (201) and
    before the receipt is stored — the moment a ``kill -9`` hurts most.
    """

    crash_after_rekor: bool = False


class KafkaAnchoredPublisher:
    """``ledger.anchored``: key = subject, value = :class:`AnchoredEntry` JSON, id in a header."""

    def __init__(self, producer: Producer, topic: str, traces: TraceCarrier | None = None) -> None:
        self._producer = producer
        self._topic = topic
        self._traces = traces if traces is not None else TraceCarrier()

    async def publish(self, events: Sequence[AnchoredEvent]) -> None:
        for start in range(0, len(events), _PUBLISH_CHUNK):
            chunk = events[start : start + _PUBLISH_CHUNK]
            await self._producer.send_many(
                (
                    self._topic,
                    e.subject,
                    e.value,
                    [("entry_id", str(e.entry_id).encode()),
                     *self._traces.headers_for(e.entry_id)],
                )
                for e in chunk
            )


def decode_signed(record: Record) -> uuid.UUID:
    """The entry a ``ledger.signed`` record names; anything unusable raises InvalidMessage.

    The anchorer takes nothing else from the event: what it anchors and emits comes from the
    stored, signature-checked row (a forged or stale event can at most name an entry that
    is then anchored as stored, or an unknown one, which is dead-lettered). The event was
    validated once already, where it entered the pipeline: the signer.
    """
    doc = decode_object(record.value)
    try:
        return uuid.UUID(doc["entry_id"])
    except (KeyError, TypeError, ValueError, AttributeError):
        raise InvalidMessage("invalid fields", detail="entry_id: must be a UUID") from None


def parallel_batches(batch_max: int) -> int:
    """How many anchor batches one poll may carry (anchored concurrently).

    Every batch waits for Rekor (it answers once the entry is in the tree, ~0.2 s), so a
    poll carries several: N=1 runs up to 16 Rekor submissions at once, the default N=1000
    four batches, and batches of 4096 and more go one at a time. With ``pipeline_depth``
    polls in flight, that many times more.
    """
    return max(1, min(_MAX_PARALLEL_BATCHES, _PARALLEL_ENTRIES // batch_max))


class AnchorerStage:
    """The consumer loop's stage: read the entry id of ``ledger.signed``, anchor the entries.

    The records of one poll are cut into batches of at most ``batch_max`` entries (in
    arrival order), anchored concurrently; the loop commits only when all are done. A failure
    of one batch fails the poll, and the retry re-drives the batches still pending.
    """

    name = STAGE

    def __init__(
        self, anchorer: Anchorer, *, batch_max: int, traces: TraceCarrier | None = None
    ) -> None:
        self._anchorer = anchorer
        self._batch_max = batch_max
        self._traces = traces if traces is not None else TraceCarrier()

    def decode(self, record: Record) -> uuid.UUID:
        return decode_signed(record)

    async def process_batch(
        self, messages: Sequence[Message[uuid.UUID]], turn: Turn | None = None
    ) -> list[Rejection]:
        """Anchor the poll's entries. Batches need no stream order (claims are atomic per
        entry), so ``turn`` is not waited for: several polls anchor at once."""
        del turn
        for m in messages:  # the anchored event continues the signed event's trace
            self._traces.remember(m.value, m.record.headers)
        ids = list(dict.fromkeys(m.value for m in messages))
        chunks = [ids[i : i + self._batch_max] for i in range(0, len(ids), self._batch_max)]
        with log_context(stage=STAGE):
            outcomes = await asyncio.gather(
                *(self._anchorer.anchor(chunk) for chunk in chunks), return_exceptions=True
            )
        unknown: set[uuid.UUID] = set()
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            unknown |= outcome.unknown
        rejections = []
        for m in messages:
            if m.value in unknown:
                rejections.append(
                    Rejection(
                        m.record,
                        InvalidMessage(
                            "unknown entry",
                            detail=f"entry {m.value} is not in ledger.entries",
                        ),
                    )
                )
        return rejections


def _crash_now(batch_id: uuid.UUID) -> None:
    log.critical(
        "LEDGER_TEST_CRASH_AFTER_REKOR: exiting right after Rekor accepted the batch",
        extra={"batch_id": str(batch_id)},
    )
    for handler in logging.getLogger().handlers:
        with contextlib.suppress(Exception):
            handler.flush()
    os._exit(137)


async def run_anchorer(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    install_signals: bool = True,
    hooks: AnchorerHooks | None = None,
) -> None:
    """Run the anchorer until SIGTERM/SIGINT (or ``lifecycle.request_stop``), then drain."""
    m = metrics or Metrics()
    h = hooks or AnchorerHooks()
    backoff = Backoff()
    client_id = f"ledger-anchorer-{socket.gethostname()}-{os.getpid()}"

    async def main(lc: Lifecycle) -> None:
        db = await open_when_ready("database", lambda: Database.connect(settings), lc, backoff)
        if db is None:
            return
        lc.on_close("database", db.close)
        vault = TransitSigner(settings)
        lc.on_close("vault", vault.close)
        rekor = RekorClient.from_settings(settings)
        lc.on_close("rekor", rekor.close)
        producer = await open_when_ready(
            # it sends whole record batches itself (send_many): nothing to linger for
            "kafka", lambda: make_producer(settings, client_id=client_id, linger_ms=0), lc,
            backoff,
        )
        if producer is None:
            return
        lc.on_close("producer", producer.close)

        store = Repository(db)
        traces = TraceCarrier()
        keys = LogKeySource(
            configured=settings.rekor_public_key,
            rekor_url=settings.rekor_server_url,
            pins=store,
            fetcher=rekor,
        )
        anchorer = Anchorer(
            store=store,
            signer=vault,
            rekor=rekor,
            publisher=KafkaAnchoredPublisher(producer, settings.topic_anchored, traces),
            log_key=keys,
            metrics=m,
            anchor_key=settings.vault_anchor_key,
            after_rekor_accepted=_crash_now if h.crash_after_rekor else None,
        )
        monitor = ConsistencyMonitor(store=store, rekor=rekor, log_key=keys, metrics=m)
        sweeper = Sweeper(
            anchorer=anchorer,
            store=store,
            monitor=monitor,
            metrics=m,
            interval_s=settings.sweeper_interval_s,
            age_s=settings.sweeper_age_s,
            batch_max=settings.anchor_batch_max,
        )

        rebalance = RebalanceHooks()

        consumer = await open_group_consumer(
            settings, group_id=settings.anchorer_group, topic=settings.topic_signed,
            client_id=client_id, hooks=rebalance, lc=lc, backoff=backoff,
            # batches wait up to anchor_batch_ms anyway: let fetches gather more at low rates
            fetch_max_wait_ms=max(5, min(settings.anchor_batch_ms, 100)),
            fetch_min_bytes=256 * 1024,
        )
        if consumer is None:
            return
        lc.on_close("consumer", consumer.close)
        per_poll = settings.anchor_batch_max * parallel_batches(settings.anchor_batch_max)
        loop = ConsumerLoop(
            AnchorerStage(anchorer, batch_max=settings.anchor_batch_max, traces=traces),
            AccumulatingConsumer(
                consumer,
                flush_at=settings.anchor_batch_max,
                max_items=per_poll,
                max_wait_s=settings.anchor_batch_ms / 1000,
            ),
            KafkaDeadLetters(producer),
            metrics=m,
            stopping=lc.stopping,
            batch_max=per_poll,
            batch_timeout_ms=max(settings.anchor_batch_ms, 100),
            backoff=backoff,
            depth=settings.pipeline_depth,
        )
        rebalance.bind(loop)

        if settings.metrics_port > 0:

            async def health() -> dict[str, Any]:
                database, vault_ok = await asyncio.gather(
                    db.health(), vault.health(settings.vault_anchor_key)
                )
                rekor_ok = anchorer.rekor_health.up
                if rekor_ok is None:  # nothing anchored yet: ask Rekor
                    rekor_ok = await _rekor_reachable(rekor)
                return {
                    "database": database,
                    "vault": vault_ok,
                    "rekor": bool(rekor_ok),
                    "kafka": not loop.paused,
                }

            runner = await serve_ops(settings, m, health)
            lc.on_close("ops server", runner.cleanup)

        sweeping = asyncio.create_task(sweeper.run(lc.stopping), name="anchorer-sweeper")

        async def stop_sweeper() -> None:
            sweeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeping

        lc.on_close("sweeper", stop_sweeper)
        log.info(
            "anchorer started",
            extra={"topic": settings.topic_signed, "group": settings.anchorer_group,
                   "batch_max": settings.anchor_batch_max,
                   "batch_ms": settings.anchor_batch_ms},
        )
        await loop.run()

    await run_service(
        STAGE,
        main,
        grace_s=settings.shutdown_grace_s,
        lifecycle=lifecycle,
        install_signals=install_signals,
    )


async def _rekor_reachable(rekor: RekorClient) -> bool:
    try:
        await rekor.get_log_info()
    except LedgerError:
        return False
    return True
