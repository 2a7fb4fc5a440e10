"""W3C trace context helpers and the anchorer's per-entry carrier."""

from __future__ import annotations

import uuid

import pytest

from shared.tracing import (
    TraceCarrier,
    continue_trace,
    parse_traceparent,
    trace_headers,
    trace_id_of,
)

GOOD = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


@pytest.mark.parametrize(
    "value",
    [None, "", "garbage", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
     "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
     "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
     "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
     "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"],
)
def test_invalid_traceparents_are_refused(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_valid_traceparent_parses_from_text_and_bytes() -> None:
    expected = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    assert parse_traceparent(GOOD) == expected
    assert parse_traceparent(GOOD.encode()) == expected


def test_continue_trace_keeps_the_trace_and_makes_a_new_span() -> None:
    headers = dict(continue_trace(GOOD, "a=1"))
    trace, span, _ = parse_traceparent(headers["traceparent"]) or ("", "", "")
    assert trace == "4bf92f3577b34da6a3ce929d0e0e4736" and span != "00f067aa0ba902b7"
    assert headers["tracestate"] == b"a=1"
    fresh = dict(continue_trace(None, "a=1"))
    assert parse_traceparent(fresh["traceparent"]) is not None
    assert "tracestate" not in fresh
    assert dict(continue_trace(GOOD, "x" * 600)).get("tracestate") is None


def test_trace_headers_and_id_are_read_from_kafka_headers() -> None:
    headers = [("traceparent", GOOD.encode()), ("entry_id", b"x"), ("baggage", b"k=v")]
    assert trace_headers(headers) == [("traceparent", GOOD.encode()), ("baggage", b"k=v")]
    assert trace_id_of(headers) == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace_id_of([("traceparent", b"bad")]) is None
    assert trace_id_of(None) is None


def test_carrier_remembers_per_entry_and_forgets_the_oldest_first() -> None:
    carrier = TraceCarrier(capacity=2)
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    carrier.remember(a, [("traceparent", b"A"), ("other", b"x")])
    carrier.remember(b, [("traceparent", b"B")])
    carrier.remember(c, [("other", b"no trace")])  # nothing to remember
    assert carrier.headers_for(a) == [("traceparent", b"A")]
    carrier.remember(c, [("traceparent", b"C")])
    assert len(carrier) == 2
    assert carrier.headers_for(a) == []  # the oldest was forgotten
    assert carrier.headers_for(c) == [("traceparent", b"C")]
