"""shared.otel: spans per entry, the trace headers they emit, sampling, the anchorer's carrier."""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

import pytest
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from shared.errors import ConfigError
from shared.messages import AppendRequest, decode
from shared.otel import (
    ANCHORER_SPAN,
    INGEST_SPAN,
    SIGNER_SPAN,
    EntryTracer,
    SpanCarrier,
    ended,
    make_sampler,
)
from shared.settings import Settings
from shared.statement import entry_id_for
from shared.tracing import parse_traceparent

pytestmark = pytest.mark.unit

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-01"
NOT_SAMPLED = f"00-{TRACE}-00f067aa0ba902b7-00"
ENTRY = uuid.UUID(int=7)


def tracer(stage: str = "signer", **changes: Any) -> tuple[EntryTracer, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    s = Settings(otel_enabled=True, **changes)
    t = EntryTracer.from_settings(s, stage, processor=SimpleSpanProcessor(exporter))
    assert t is not None
    return t, exporter


def test_off_by_default_no_tracer_at_all() -> None:
    assert EntryTracer.from_settings(Settings(), "signer") is None


def test_settings_from_the_standard_variables() -> None:
    s = Settings.from_env({"LEDGER_OTEL_ENABLED": "true", "OTEL_TRACES_SAMPLER": "always_on",
                           "OTEL_TRACES_SAMPLER_ARG": "0.5",
                           "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert (s.otel_enabled, s.otel_traces_sampler, s.otel_traces_sampler_arg,
            s.otel_exporter_otlp_endpoint) == (True, "always_on", 0.5, "http://collector:4318")
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER_ARG"):
        Settings.from_env({"OTEL_TRACES_SAMPLER_ARG": "2"})
    with pytest.raises(ConfigError, match="OTEL_TRACES_SAMPLER"):
        Settings.from_env({"OTEL_TRACES_SAMPLER": "jaeger_remote"})


def test_every_sampler_name_of_the_settings_is_known() -> None:
    names = Settings.model_fields["otel_traces_sampler"].annotation.__args__  # type: ignore[union-attr]
    for name in names:
        assert make_sampler(name, 0.5) is not None


def test_a_sampled_parent_gets_a_child_span_whose_headers_go_downstream() -> None:
    t, exporter = tracer()
    received = [("traceparent", SAMPLED.encode()), ("tracestate", b"v=1"),
                ("baggage", b"k=v"), ("entry_id", b"x")]
    span, emitted = t.start_from(SIGNER_SPAN, received, entry_id=ENTRY)
    assert span is not None and span.is_recording()
    span.end()
    (done,) = exporter.get_finished_spans()
    assert done.parent is not None and f"{done.parent.span_id:016x}" == "00f067aa0ba902b7"
    assert done.attributes == {"ledger.entry_id": str(ENTRY), "ledger.stage": "signer"}
    headers = dict(emitted)
    assert parse_traceparent(headers["traceparent"]) == (
        TRACE, f"{done.context.span_id:016x}", "01")
    assert headers["tracestate"] == b"v=1" and headers["baggage"] == b"k=v"
    assert "entry_id" not in headers


def test_an_unsampled_parent_costs_no_span_and_its_headers_pass_unchanged() -> None:
    t, exporter = tracer(otel_traces_sampler="parentbased_always_on")
    received = [("traceparent", NOT_SAMPLED.encode()), ("tracestate", b"v=1")]
    span, emitted = t.start_from(SIGNER_SPAN, received, entry_id=ENTRY)
    assert span is None and emitted == received
    assert exporter.get_finished_spans() == ()


def test_without_a_parent_based_sampler_the_ratio_decides_even_for_a_sampled_parent() -> None:
    t, _ = tracer(otel_traces_sampler="traceidratio", otel_traces_sampler_arg=0.0)
    span = t.start(SIGNER_SPAN, SAMPLED, None, entry_id=ENTRY)
    assert span is not None and not span.is_recording()


def test_ingest_samples_new_traces_by_ratio_and_says_so_downstream() -> None:
    kept, _ = tracer("ingest", otel_traces_sampler_arg=1.0)
    span, headers = kept.ingest(None, None, entry_id=ENTRY)
    assert span is not None and span.is_recording()
    parsed = parse_traceparent(dict(headers)["traceparent"])
    assert parsed is not None and int(parsed[2], 16) & 1, "sampled (the SDK may add 'random')"
    dropped, exporter = tracer("ingest", otel_traces_sampler_arg=0.0)
    span, headers = dropped.ingest(None, None, entry_id=ENTRY)
    assert span is not None and not span.is_recording()
    parsed = parse_traceparent(dict(headers)["traceparent"])
    assert parsed is not None and not int(parsed[2], 16) & 1, "downstream then records nothing"
    span.end()
    assert exporter.get_finished_spans() == ()


def test_ingest_continues_an_unsampled_client_trace_without_a_span() -> None:
    t, _ = tracer("ingest")
    span, headers = t.ingest(NOT_SAMPLED, "v=1", entry_id=ENTRY)
    assert span is None
    parsed = parse_traceparent(dict(headers)["traceparent"])
    assert parsed is not None and parsed[0] == TRACE and parsed[1] != "00f067aa0ba902b7"
    assert parsed[2] == "00"


def test_ended_marks_the_spans_of_a_failure_with_the_error_type_only() -> None:
    t, exporter = tracer()
    span = t.start(SIGNER_SPAN, SAMPLED, None, entry_id=ENTRY)
    assert span is not None
    with pytest.raises(ValueError, match="secret detail"), ended([span]):
        raise ValueError("secret detail")
    (done,) = exporter.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR
    assert done.status.description == "ValueError"
    with ended(None):
        pass  # nothing to end: a no-op


class _Outcome:
    def __init__(self, unknown: set[uuid.UUID]) -> None:
        self.unknown = unknown
        self.refused: dict[uuid.UUID, object] = {}


def test_the_anchorer_carrier_ends_each_span_when_its_event_is_published_or_the_poll_ends() -> None:
    t, exporter = tracer("anchorer")
    carrier = SpanCarrier(t)
    a, b, c = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    for entry_id in (a, b, c):
        carrier.remember(entry_id, [("traceparent", SAMPLED.encode())])
    carrier.remember(a, [("traceparent", SAMPLED.encode())])  # a replay: still one span
    emitted = parse_traceparent(dict(carrier.headers_for(a))["traceparent"])
    assert emitted is not None and emitted[1] != "00f067aa0ba902b7", "the anchorer's own span"
    batch = uuid.uuid4()
    carrier.published([(a, batch, 4)])
    carrier.settle([a, b, c], [_Outcome({b})])
    carrier.settle([a, b, c], [_Outcome(set())])  # nothing left open: nothing twice
    done = {s.attributes["ledger.entry_id"]: s for s in exporter.get_finished_spans()
            if s.attributes}
    assert len(exporter.get_finished_spans()) == 3
    assert {s.name for s in done.values()} == {ANCHORER_SPAN}
    assert done[str(a)].attributes["ledger.batch_id"] == str(batch)  # type: ignore[index]
    assert done[str(a)].attributes["ledger.leaf_index"] == 4  # type: ignore[index]
    assert done[str(b)].attributes["ledger.outcome"] == "unknown"  # type: ignore[index]
    assert done[str(c)].attributes["ledger.outcome"] == "pending"  # type: ignore[index]
    assert f"{done[str(a)].context.span_id:016x}" == emitted[1]


def test_a_failed_poll_ends_its_spans_failed() -> None:
    t, exporter = tracer("anchorer")
    carrier = SpanCarrier(t)
    carrier.remember(ENTRY, [("traceparent", SAMPLED.encode())])
    carrier.settle([ENTRY], [RuntimeError("rekor down")])
    (done,) = exporter.get_finished_spans()
    assert done.status.status_code is StatusCode.ERROR


def test_spans_a_cancelled_poll_left_open_are_bounded() -> None:
    t, exporter = tracer("anchorer")
    carrier = SpanCarrier(t, capacity=2)
    for n in range(3):
        carrier.remember(uuid.UUID(int=n), [("traceparent", SAMPLED.encode())])
    (oldest,) = exporter.get_finished_spans()
    assert oldest.attributes is not None
    assert oldest.attributes["ledger.entry_id"] == str(uuid.UUID(int=0))


# --- ingest with a tracer: the app's own wiring, on fakes (tests/unit/test_ingest_api.py) ------


async def test_ingest_opens_a_span_per_entry_and_publishes_its_context(tmp_path: Any) -> None:
    from tests.unit.test_ingest_api import GOOD, Harness, b64  # noqa: PLC0415 - its fakes

    t, exporter = tracer("ingest")
    h = Harness(tmp_path)
    h.deps = dataclasses.replace(h.deps, tracer=t)
    async with h:
        single = await h.post(GOOD, headers={"Prefer": "respond-async", "traceparent": SAMPLED})
        assert single.status == 202
        entries = [{"subject": f"orders/{i}", "payload": b64(f"doc {i}".encode())}
                   for i in range(3)]
        batch = await h.post_batch(entries, headers={"Prefer": "respond-async",
                                                     "traceparent": SAMPLED})
        assert batch.status == 200
        results = (await batch.json())["results"]
    spans = exporter.get_finished_spans()
    assert len(spans) == 4 and {s.name for s in spans} == {INGEST_SPAN}
    by_entry = {s.attributes["ledger.entry_id"]: s for s in spans if s.attributes}
    assert set(by_entry) >= {r["id"] for r in results}, "one span per entry of the batch"
    for (_, _, value, headers), span in zip(h.publisher.sent, spans, strict=True):
        entry_id = str(entry_id_for(decode(AppendRequest, value).request_id))
        parsed = parse_traceparent(dict(headers)["traceparent"])
        assert parsed is not None and parsed[0] == TRACE
        assert parsed[1] == f"{by_entry[entry_id].context.span_id:016x}", "names its span"
        assert span.parent is not None and f"{span.parent.span_id:016x}" == "00f067aa0ba902b7"


def test_a_malformed_client_tracestate_is_dropped_without_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    t, exporter = tracer("ingest")
    with caplog.at_level(logging.DEBUG):
        span, headers = t.ingest(SAMPLED, "not a valid member SECRET-ish", entry_id=ENTRY)
    assert span is not None
    span.end()
    assert "tracestate" not in dict(headers)
    assert not [r for r in caplog.records if "SECRET-ish" in r.getMessage()]
    (done,) = exporter.get_finished_spans()
    assert f"{done.context.trace_id:032x}" == TRACE, "the trace still continues"
