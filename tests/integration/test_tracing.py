"""One trace across the three stages, on the real stack, as the OpenTelemetry SDK records it.

Ingest, the signer and the anchorer run in this event loop with their real wiring (Kafka,
PostgreSQL, OpenBao, Rekor; a private database and private topics), each with its own tracer
whose spans go to the SDK's in-memory exporter instead of OTLP. An append sent with a
sampled ``traceparent`` must give three spans in the client's trace, parent to child:
``ingest.append`` → ``signer.sign`` → ``anchorer.anchor``, and ``ledger.anchored`` names the
last one. An append whose ``traceparent`` is not sampled gives no span in any stage, and its
trace id still reaches ``ledger.anchored``.
"""

from __future__ import annotations

import base64
import uuid
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from services.anchorer import run_anchorer
from shared.messages import AnchoredEntry
from shared.otel import ANCHORER_SPAN, INGEST_SPAN, SIGNER_SPAN, EntryTracer
from shared.settings import Settings
from shared.tracing import parse_traceparent
from tests.integration.test_anchorer import running
from tests.integration.test_ingest import ingest_running, signer_running
from tests.integration.test_verification import anchored_event, verification_lane
from tests.support.waiting import wait_for

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SAMPLED = f"00-{TRACE_ID}-{CLIENT_SPAN}-01"
NOT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
STAGES = ("ingest", "signer", "anchorer")


def spans_of(exporter: InMemorySpanExporter, entry_id: uuid.UUID) -> dict[str, ReadableSpan]:
    found: dict[str, ReadableSpan] = {}
    for span in exporter.get_finished_spans():
        if (span.attributes or {}).get("ledger.entry_id") == str(entry_id):
            assert span.name not in found, f"two {span.name} spans for {entry_id}"
            found[span.name] = span
    return found


@pytest.mark.timeout(300)
async def test_one_append_is_one_trace_from_ingest_through_the_signer_to_the_anchorer(
    stack: Any, settings: Settings, tmp_path: Path
) -> None:
    s = (await verification_lane(stack, settings, tmp_path)).model_copy(
        update={"otel_enabled": True})  # default sampler: parent-based, 1% of new traces
    exporter = InMemorySpanExporter()
    tracers = {stage: EntryTracer.from_settings(s, stage,
                                                processor=SimpleSpanProcessor(exporter))
               for stage in STAGES}
    payload = b"traced payload 7d1c"
    async with ingest_running(s, tracer=tracers["ingest"]) as api, \
            signer_running(s, tracer=tracers["signer"]):
        ids = {}
        for name, traceparent in (("sampled", SAMPLED), ("not-sampled", NOT_SAMPLED)):
            status, entry, _ = await api.append(
                {"subject": "acct:trace", "payload": base64.b64encode(payload).decode(),
                 "meta": {"case": name}, "request_id": f"{api.prefix}-{name}"},
                traceparent=traceparent, tracestate="vendor=abc")
            assert status == 201, entry
            ids[name] = uuid.UUID(entry["id"])
        async with running(run_anchorer, s, "anchorer", tracer=tracers["anchorer"]):
            records = {name: await anchored_event(s, entry_id, limit_s=120)
                       for name, entry_id in ids.items()}

            async def anchorer_span_ended() -> bool:
                return ANCHORER_SPAN in spans_of(exporter, ids["sampled"])

            await wait_for(anchorer_span_ended, within=30, what="the anchorer's span to end")

    spans = spans_of(exporter, ids["sampled"])
    assert set(spans) == {INGEST_SPAN, SIGNER_SPAN, ANCHORER_SPAN}, spans
    ingest, signer, anchorer = spans[INGEST_SPAN], spans[SIGNER_SPAN], spans[ANCHORER_SPAN]
    # one trace: the client's
    for span in (ingest, signer, anchorer):
        assert span.context is not None
        assert f"{span.context.trace_id:032x}" == TRACE_ID, span.name
        assert span.context.trace_flags.sampled
    # parent to child, through ledger.append and ledger.signed
    assert ingest.parent is not None and ingest.parent.is_remote
    assert f"{ingest.parent.span_id:016x}" == CLIENT_SPAN
    assert signer.parent is not None and ingest.context is not None
    assert signer.parent.span_id == ingest.context.span_id
    assert anchorer.parent is not None and signer.context is not None
    assert anchorer.parent.span_id == signer.context.span_id
    assert anchorer.context is not None
    # the trace state the client sent travels with the trace
    assert ingest.context.trace_state.get("vendor") == "abc"
    assert anchorer.context.trace_state.get("vendor") == "abc"
    # ledger.anchored names the anchorer's span, so a consumer's span continues the trace
    header = dict(records["sampled"].headers)["traceparent"]
    assert parse_traceparent(header) == (
        TRACE_ID, f"{anchorer.context.span_id:016x}", f"{anchorer.context.trace_flags:02x}")
    # each stage its own service, each span its kind, the order of the work
    assert [span.resource.attributes["service.name"] for span in (ingest, signer, anchorer)] == [
        "ledger-ingest", "ledger-signer", "ledger-anchorer"]
    assert (ingest.kind, signer.kind, anchorer.kind) == (
        SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.CONSUMER)
    assert ingest.start_time is not None and signer.start_time is not None
    assert anchorer.start_time is not None and signer.end_time is not None
    assert ingest.start_time <= signer.start_time < signer.end_time <= anchorer.start_time
    # ids only: the entry, the batch, the signer's outcome
    event = AnchoredEntry.model_validate_json(records["sampled"].value or b"")
    assert signer.attributes is not None and signer.attributes["ledger.outcome"] == "new"
    assert anchorer.attributes is not None
    assert anchorer.attributes["ledger.batch_id"] == str(event.batch.batch_id)
    assert anchorer.attributes["ledger.leaf_index"] == event.leaf_index
    secrets = (base64.b64encode(payload).decode(), payload.decode(), api.writer, api.reader)
    for span in (ingest, signer, anchorer):
        values = " ".join(str(v) for v in (span.attributes or {}).values())
        assert not any(secret in values for secret in secrets), span.name
        assert "payload" not in " ".join(span.attributes or {}), span.name

    # not sampled by the client: no span anywhere, and the trace id still goes through
    assert spans_of(exporter, ids["not-sampled"]) == {}
    header = dict(records["not-sampled"].headers)["traceparent"]
    parsed = parse_traceparent(header)
    assert parsed is not None and parsed[0] == NOT_SAMPLED.split("-")[1]
    assert not int(parsed[2], 16) & 1
