"""Optional OpenTelemetry spans: one per entry per stage, in the trace its headers carry.

::

    client traceparent? ─► ingest.append ─► ledger.append ─► signer.sign ─► ledger.signed
                           (PRODUCER)        traceparent      (CONSUMER)     traceparent
                                                                                 │
                                       ledger.anchored ◄─ anchorer.anchor ◄──────┘
                                       traceparent        (CONSUMER)

Each stage's span is a child of the span named by the ``traceparent`` of what it consumed
(the client's, for ingest), and the ``traceparent`` it emits names its own span: one trace
per append, ingest → signer → anchorer, parent to child. Attributes are ids only
(``ledger.entry_id``, ``ledger.batch_id``, the signer's outcome, the Rekor log index): never
a payload, a meta value, a subject or a token.

Off by default (``LEDGER_OTEL_ENABLED``): then no stage builds a tracer, and the per-entry
cost is one ``is None`` test (trace headers are copied as before, :mod:`shared.tracing`).
On, spans go to an OTLP/HTTP exporter (``OTEL_EXPORTER_OTLP_ENDPOINT``) through a batch
processor (its own thread, off the event loop). Sampling is decided once per trace, at
ingest (``OTEL_TRACES_SAMPLER``, default ``parentbased_traceidratio`` with
``OTEL_TRACES_SAMPLER_ARG`` 0.01); the signer and the anchorer follow the ``sampled`` flag
they receive, and an entry whose parent is not sampled costs them no span at all (the
check happens before the SDK is asked). docs/design.md says why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence, Set
from typing import Final, Protocol

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import NonRecordingSpan, Span, SpanContext, SpanKind, Status, StatusCode
from opentelemetry.trace.span import TraceFlags, TraceState

from shared.settings import Settings
from shared.tracing import TraceCarrier, continue_trace, parse_traceparent

__all__ = [
    "ANCHORER_SPAN",
    "INGEST_SPAN",
    "SIGNER_SPAN",
    "EntryTracer",
    "SpanCarrier",
    "ended",
    "make_sampler",
]

INGEST_SPAN: Final = "ingest.append"
SIGNER_SPAN: Final = "signer.sign"
ANCHORER_SPAN: Final = "anchorer.anchor"
ENTRY_ID: Final = "ledger.entry_id"
BATCH_ID: Final = "ledger.batch_id"



class PollOutcome(Protocol):
    """What anchoring reports (:class:`services.anchorer.anchoring.AnchorResult`)."""

    @property
    def unknown(self) -> Set[uuid.UUID]: ...
    @property
    def refused(self) -> Mapping[uuid.UUID, object]: ...


def make_sampler(name: str, arg: float) -> Sampler:
    """The sampler ``OTEL_TRACES_SAMPLER`` names (the specification's names)."""
    ratio = TraceIdRatioBased(arg)
    samplers: dict[str, Sampler] = {
        "always_on": ALWAYS_ON,
        "always_off": ALWAYS_OFF,
        "traceidratio": ratio,
        "parentbased_always_on": ParentBased(ALWAYS_ON),
        "parentbased_always_off": ParentBased(ALWAYS_OFF),
        "parentbased_traceidratio": ParentBased(ratio),
    }
    return samplers[name]


def _exporter(settings: Settings) -> SpanExporter:
    # imported here: only a process that exports needs the protobuf/HTTP machinery
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
        OTLPSpanExporter,
    )

    # headers, certificate, timeout and compression: the exporter's own OTEL_EXPORTER_OTLP_*
    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/") + "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint)


class EntryTracer:
    """One stage's spans, on a provider of its own (``service.name``: ``ledger-<stage>``,
    or ``OTEL_SERVICE_NAME``)."""

    def __init__(self, provider: TracerProvider, stage: str, *, follows_parent: bool) -> None:
        self.provider = provider
        self.stage = stage
        self._tracer = provider.get_tracer(f"signed-ledger.{stage}")
        # a parent-based sampler drops every child of an unsampled parent: decided here,
        # without the SDK (the common case at a low ratio)
        self._follows_parent = follows_parent
        # the API logs a malformed tracestate member verbatim, at WARNING: a client's header
        # (dropped, as a new trace would be) must not write a log line per request
        logging.getLogger("opentelemetry.trace.span").setLevel(logging.ERROR)

    @classmethod
    def from_settings(
        cls, settings: Settings, stage: str, *, processor: SpanProcessor | None = None
    ) -> EntryTracer | None:
        """None unless ``LEDGER_OTEL_ENABLED``; ``processor`` replaces the OTLP exporter's
        batch processor (an in-memory exporter's, in tests)."""
        if not settings.otel_enabled:
            return None
        name = settings.otel_service_name or f"ledger-{stage}"
        provider = TracerProvider(
            sampler=make_sampler(settings.otel_traces_sampler, settings.otel_traces_sampler_arg),
            resource=Resource.create({"service.name": name, "service.namespace": "signed-ledger"}),
        )
        provider.add_span_processor(processor or BatchSpanProcessor(_exporter(settings)))
        return cls(provider, stage,
                   follows_parent=settings.otel_traces_sampler.startswith("parentbased_"))

    async def aclose(self) -> None:
        """Export what is queued, then stop (the process is closing; off the event loop:
        the last export may wait for the collector)."""
        await asyncio.to_thread(self.provider.shutdown)

    # --- spans ----------------------------------------------------------------------------

    def start(
        self,
        name: str,
        traceparent: str | bytes | None,
        tracestate: str | bytes | None,
        *,
        entry_id: uuid.UUID,
        kind: SpanKind = SpanKind.CONSUMER,
        start_ns: int | None = None,
    ) -> Span | None:
        """A span for ``entry_id``, child of ``traceparent`` (a new trace without a valid one);
        None when its parent was not sampled and the sampler follows the parent."""
        parsed = parse_traceparent(traceparent)
        if parsed is not None and self._follows_parent and not int(parsed[2], 16) & 1:
            return None
        context = None
        if parsed is not None:
            state = tracestate.decode("ascii", "replace") if isinstance(tracestate, bytes) \
                else tracestate
            parent = SpanContext(
                trace_id=int(parsed[0], 16), span_id=int(parsed[1], 16), is_remote=True,
                trace_flags=TraceFlags(int(parsed[2], 16)),
                trace_state=TraceState.from_header([state]) if state else None,
            )
            context = trace.set_span_in_context(NonRecordingSpan(parent))
        return self._tracer.start_span(
            name, context=context, kind=kind, start_time=start_ns,
            attributes={ENTRY_ID: str(entry_id), "ledger.stage": self.stage},
        )

    def start_from(
        self, name: str, headers: Iterable[tuple[str, bytes]], *, entry_id: uuid.UUID,
        start_ns: int | None = None,
    ) -> tuple[Span | None, list[tuple[str, bytes]]]:
        """:meth:`start` from Kafka headers; also the trace headers to emit downstream: the
        span's own, or (no span) the ones received."""
        received = {k: v for k, v in headers if k in ("traceparent", "tracestate", "baggage")}
        span = self.start(name, received.get("traceparent"), received.get("tracestate"),
                          entry_id=entry_id, start_ns=start_ns)
        if span is None:
            return None, list(received.items())
        emitted = headers_of(span)
        if "baggage" in received:
            emitted.append(("baggage", received["baggage"]))
        return span, emitted

    def ingest(
        self, traceparent: str | None, tracestate: str | None, *, entry_id: uuid.UUID
    ) -> tuple[Span | None, list[tuple[str, bytes]]]:
        """Ingest's span for one append, and the trace headers for ``ledger.append``."""
        span = self.start(INGEST_SPAN, traceparent, tracestate, entry_id=entry_id,
                          kind=SpanKind.PRODUCER)
        if span is None:  # the client's trace, not sampled: a new span id, as without OTel
            return None, continue_trace(traceparent, tracestate)
        return span, headers_of(span)


def headers_of(span: Span) -> list[tuple[str, bytes]]:
    """``traceparent`` (and ``tracestate``) naming ``span``, as Kafka headers."""
    ctx = span.get_span_context()
    headers = [("traceparent",
                f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{ctx.trace_flags:02x}".encode())]
    if ctx.trace_state:
        headers.append(("tracestate", ctx.trace_state.to_header().encode("ascii", "replace")))
    return headers


_NOTHING: Final = contextlib.nullcontext()


def ended(spans: Span | Sequence[Span] | None) -> contextlib.AbstractContextManager[object]:
    """End ``spans`` when the block ends; an exception marks them failed (its type only).
    No span (tracing off, not sampled): a shared no-op, nothing allocated."""
    if not spans:
        return _NOTHING
    return _ending(spans if isinstance(spans, Sequence) else [spans])


@contextlib.contextmanager
def _ending(many: Sequence[Span]) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        for span in many:
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
        raise
    finally:
        for span in many:
            span.end()


class SpanCarrier(TraceCarrier):
    """The anchorer's :class:`TraceCarrier` with a span per entry it is given.

    :meth:`remember` opens the entry's ``anchorer.anchor`` span (its parent: the signer's
    span) and keeps the span's own headers for the ``ledger.anchored`` event;
    :meth:`published` ends it once the event is acknowledged, with the batch id;
    :meth:`settle` ends what a poll leaves open (pending in another batch, unknown,
    refused, or failed).
    """

    def __init__(self, tracer: EntryTracer, capacity: int = 100_000) -> None:
        super().__init__(capacity)
        self._tracer = tracer
        self._open: dict[uuid.UUID, Span] = {}

    def remember(self, entry_id: uuid.UUID, headers: Iterable[tuple[str, bytes]] | None) -> None:
        if entry_id in self._open:
            return
        span, emitted = self._tracer.start_from(ANCHORER_SPAN, headers or (), entry_id=entry_id)
        if span is not None:
            self._open[entry_id] = span
            if len(self._open) > self._capacity:  # a poll cancelled before it settled
                oldest = next(iter(self._open))
                self._open.pop(oldest).end()
        super().remember(entry_id, emitted)

    def published(self, events: Iterable[tuple[uuid.UUID, uuid.UUID | None, int]]) -> None:
        """(entry id, batch id, leaf index) of events Kafka acknowledged."""
        for entry_id, batch_id, leaf_index in events:
            span = self._open.pop(entry_id, None)
            if span is not None:
                span.set_attributes({BATCH_ID: str(batch_id), "ledger.leaf_index": leaf_index})
                span.end()

    def settle(self, entry_ids: Iterable[uuid.UUID],
               outcomes: Sequence[PollOutcome | BaseException]) -> None:
        """End the spans of ``entry_ids`` still open after a poll's ``outcomes``: failed if
        one failed, otherwise with the entry's ``ledger.outcome`` (``unknown``, ``refused``,
        or ``pending``: a batch not completed here holds it)."""
        error = next((o for o in outcomes if isinstance(o, BaseException)), None)
        why: dict[uuid.UUID, str] = {}
        for o in outcomes:
            if not isinstance(o, BaseException):
                why.update(dict.fromkeys(o.unknown, "unknown"))
                why.update(dict.fromkeys(o.refused, "refused"))
        now = time.time_ns()
        for entry_id in entry_ids:
            span = self._open.pop(entry_id, None)
            if span is None:
                continue
            if error is not None:
                span.set_status(Status(StatusCode.ERROR, type(error).__name__))
            else:
                span.set_attribute("ledger.outcome", why.get(entry_id, "pending"))
            span.end(end_time=now)
