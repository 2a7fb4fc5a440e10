"""The anchorer process: its stage (:class:`AnchorerStage`) and its wiring on the service
skeleton (:mod:`shared.service`).

::

    ledger.signed ─► AccumulatingConsumer (N records or T ms) ─► ConsumerLoop ─► AnchorerStage
                                                                                   │
                         Sweeper (every sweeper_interval_s) ─► Anchorer ◄───────────┘
                                                                │
                              Vault (anchor key) · PostgreSQL · Rekor · ledger.anchored

Dependencies, in the order they open (and close in reverse): database, Vault, Rekor, Kafka
producer, Kafka consumer; then the work: the loop, the ops server (``/health``, ``/metrics``
on ``settings.metrics_port`` when set) and the sweeper, which close first. One that is down
at start-up is waited for with back-off. The Vault and Rekor clients connect on first use:
Rekor is not needed to start, the stream pauses on it like on any dependency.

``/health`` (:mod:`shared.ops`): ``database``, ``vault`` (a probe of its own: unsealed, the
token valid, the anchor key readable), ``rekor`` (false while the last Rekor call failed;
before any call, whether Rekor answers) and ``kafka`` (consuming: not paused); ``unhealthy``
(503) while paused. ``/livez`` and ``/readyz`` beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Sequence
from typing import Any

from shared.anchored import AnchoredEvent
from shared.consumer import ConsumerLoop, RebalanceHooks
from shared.db import Database
from shared.errors import InvalidMessage, LedgerError
from shared.health import VaultProbe
from shared.kafka import Producer, Record
from shared.lifecycle import Lifecycle
from shared.messages import decode_object
from shared.ops import open_ops_server, register_stage_kafka
from shared.otel import EntryTracer, SpanCarrier
from shared.rekor import RekorClient
from shared.rekor_v2 import RekorV2Client
from shared.repository import Repository
from shared.service import Dependency, Service, at_once
from shared.settings import Settings
from shared.stage import KafkaDeadLetters, Message, Rejection, Turn
from shared.telemetry import Metrics, log_context
from shared.tracing import TraceCarrier
from shared.trust import read_configured
from shared.tsa import TsaClient
from shared.vault import TransitSigner
from shared.vault_token import VaultToken
from shared.verify_v2 import load_v2_trust

from .anchoring import Anchorer
from .batcher import AccumulatingConsumer
from .building import Refusal
from .checkpoints import ConsistencyMonitor
from .logs import RekorV1Log, RekorV2Log, TransparencyLog
from .sweeper import Sweeper
from .trust import LogKeySource

__all__ = [
    "STAGE",
    "AnchorerProcess",
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
            if isinstance(self._traces, SpanCarrier):  # tracing on: these entries' spans end
                self._traces.published((e.entry_id, e.batch_id, e.leaf_index) for e in chunk)


def decode_signed(record: Record) -> uuid.UUID:
    """The entry a ``ledger.signed`` record names; anything unusable raises InvalidMessage.

    The anchorer takes nothing else from the event: what it anchors and emits comes from the
    stored row (a forged or stale event can at most name an entry that is then anchored as
    stored, or an unknown one, which is dead-lettered; with ``LEDGER_ANCHORER_VERIFY_ROWS``
    also a row that does not check, dead-lettered too). The event was validated once already,
    where it entered the pipeline: the signer.
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
        if isinstance(self._traces, SpanCarrier):  # tracing on: end what was not emitted
            self._traces.settle(ids, outcomes)
        unknown: set[uuid.UUID] = set()
        refused: dict[uuid.UUID, Refusal] = {}
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                raise outcome
            unknown |= outcome.unknown
            refused.update(outcome.refused)
        rejections = []
        for m in messages:
            if m.value in unknown:
                error = InvalidMessage(
                    "unknown entry", detail=f"entry {m.value} is not in ledger.entries")
            elif (why := refused.get(m.value)) is not None:
                error = InvalidMessage(
                    "entry refused", detail=f"entry {m.value} ({why.reason}): {why.detail}")
            else:
                continue
            rejections.append(Rejection(m.record, error))
        return rejections


# --- the process ----------------------------------------------------------------------------


class AnchorerProcess:
    """The anchorer's dependencies, registered once, and its work.

    ``rekor.open`` may be replaced before :meth:`run` (e.g. by an instrumented client): the
    anchorer, the log key source and the consistency monitor all use what it opens.
    """

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
        self.anchorer: Anchorer | None = None
        self.loop: ConsumerLoop[Any] | None = None
        self._rebalance = RebalanceHooks()
        register = self.service.register
        self.database = register(
            "database", lambda: Database.connect(settings), close=Database.close,
            ping=Database.health,
        )
        # its own token (least privilege: this stage's key only), renewed and re-read
        token = VaultToken.for_stage(settings, STAGE)
        self.vault = register(
            "vault", at_once(lambda: TransitSigner(settings, token=token)),
            close=TransitSigner.close,
        )
        register(
            "vault", lambda: VaultProbe.open(settings, settings.vault_anchor_key,
                                             timeout_s=settings.health_timeout_s,
                                             token=lambda: token.value),
            close=VaultProbe.close, ping=VaultProbe.check, what="vault probe",
        )
        # the log: Rekor v1, or Rekor v2 and its timestamp authority (LEDGER_REKOR_API)
        self.rekor: Dependency[Any]
        self.tsa: Dependency[TsaClient] | None = None
        if settings.rekor_api == "v2":
            self.rekor = register(
                "rekor", at_once(lambda: RekorV2Client.from_settings(settings)),
                close=RekorV2Client.close, ping=self.rekor_up,
            )
            self.tsa = register(
                "tsa", at_once(lambda: TsaClient.from_settings(settings)), close=TsaClient.close,
            )
        else:
            self.rekor = register(
                "rekor", at_once(lambda: RekorClient.from_settings(settings)),
                close=RekorClient.close, ping=self.rekor_up,
            )
        self.producer, self.consumer = register_stage_kafka(
            self.service, settings, group_id=settings.anchorer_group,
            topic=settings.topic_signed, hooks=self._rebalance, consuming=self.consuming,
            # batches wait up to anchor_batch_ms anyway: let fetches gather more at low rates
            fetch_max_wait_ms=max(5, min(settings.anchor_batch_ms, 100)),
            fetch_min_bytes=256 * 1024,
        )

    def consuming(self) -> bool:
        return self.loop is not None and not self.loop.paused

    async def rekor_up(self, rekor: RekorClient | RekorV2Client) -> bool:
        """Down while the last Rekor call failed (with v2: or its timestamp authority's);
        before the first one, whether the log answers."""
        known = self.anchorer.rekor_health.up if self.anchorer is not None else None
        if known is None:
            return await _rekor_reachable(rekor)
        return known

    async def run(
        self, *, lifecycle: Lifecycle | None = None, install_signals: bool = True
    ) -> None:
        await self.service.run(self.work, lifecycle=lifecycle, install_signals=install_signals)

    async def work(self, lc: Lifecycle) -> None:
        """Anchor ``ledger.signed`` (and sweep) until a stop is requested."""
        settings = self.settings
        traces = TraceCarrier() if self.tracer is None else SpanCarrier(self.tracer)
        if self.tracer is not None:
            lc.on_close("tracing", self.tracer.aclose)
        anchorer, sweeper = self._anchorer(traces)
        self.anchorer = anchorer
        per_poll = settings.anchor_batch_max * parallel_batches(settings.anchor_batch_max)
        self.loop = ConsumerLoop(
            AnchorerStage(anchorer, batch_max=settings.anchor_batch_max, traces=traces),
            AccumulatingConsumer(
                self.consumer.client,
                flush_at=settings.anchor_batch_max,
                max_items=per_poll,
                max_wait_s=settings.anchor_batch_ms / 1000,
            ),
            KafkaDeadLetters(self.producer.client),
            metrics=self.metrics,
            stopping=lc.stopping,
            batch_max=per_poll,
            batch_timeout_ms=max(settings.anchor_batch_ms, 100),
            backoff=self.service.backoff,
            depth=settings.pipeline_depth,
        )
        self._rebalance.bind(self.loop)
        await open_ops_server(
            lc, settings, self.metrics,
            functools.partial(self.service.health, timeout_s=settings.health_timeout_s),
        )
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
                   "batch_ms": settings.anchor_batch_ms,
                   "verify_rows": settings.anchorer_verify_rows},
        )
        await self.loop.run()

    def _anchorer(self, traces: TraceCarrier) -> tuple[Anchorer, Sweeper]:
        """The anchorer on the open clients, and the sweeper that re-drives its work."""
        settings = self.settings
        store = Repository(self.database.client)
        log_ = self._log(store)
        anchorer = Anchorer(
            store=store,
            signer=self.vault.client,
            log=log_,
            publisher=KafkaAnchoredPublisher(self.producer.client, settings.topic_anchored,
                                             traces),
            metrics=self.metrics,
            anchor_key=settings.vault_anchor_key,
            verify_rows=settings.anchorer_verify_rows,
        )
        sweeper = Sweeper(
            anchorer=anchorer,
            store=store,
            monitor=ConsistencyMonitor(store=store, log=log_, metrics=self.metrics),
            metrics=self.metrics,
            interval_s=settings.sweeper_interval_s,
            age_s=settings.sweeper_age_s,
            batch_max=settings.anchor_batch_max,
        )
        return anchorer, sweeper

    def _log(self, store: Repository) -> TransparencyLog:
        """The log batches are anchored in, on the open clients (``LEDGER_REKOR_API``)."""
        settings, rekor = self.settings, self.rekor.client
        if self.tsa is not None:
            trust = load_v2_trust(
                read_configured(settings.rekor_public_key, "LEDGER_REKOR_PUBLIC_KEY"),
                settings.rekor_origin,
                read_configured(settings.tsa_cert_chain, "LEDGER_TSA_CERT_CHAIN"),
            )
            return RekorV2Log(rekor=rekor, tsa=self.tsa.client, trust=trust)
        keys = LogKeySource(configured=settings.rekor_public_key,
                            rekor_url=settings.rekor_server_url, pins=store, fetcher=rekor)
        return RekorV1Log(rekor=rekor, keys=keys)


async def run_anchorer(
    settings: Settings,
    *,
    lifecycle: Lifecycle | None = None,
    metrics: Metrics | None = None,
    install_signals: bool = True,
    tracer: EntryTracer | None = None,
) -> None:
    """Run the anchorer until SIGTERM/SIGINT (or ``lifecycle.request_stop``), then drain."""
    await AnchorerProcess(settings, metrics=metrics, tracer=tracer).run(
        lifecycle=lifecycle, install_signals=install_signals
    )


async def _rekor_reachable(rekor: RekorClient | RekorV2Client) -> bool:
    try:
        if isinstance(rekor, RekorV2Client):
            await rekor.get_checkpoint()
        else:
            await rekor.get_log_info()
    except LedgerError:
        return False
    return True
