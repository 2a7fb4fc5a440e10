"""W3C trace context carried in Kafka headers, so one request can be followed from
``POST /append`` through ``ledger.append``, ``ledger.signed`` and ``ledger.anchored``.

Ingest continues the client's ``traceparent`` (new span, same trace) or starts a trace;
every stage copies the trace headers of the message it consumed onto the message it emits,
and logs the ``trace_id``. Trace context is metadata about delivery, not part of the
ledger: it is never signed or stored, and an event re-emitted later may carry none.
"""

from __future__ import annotations

import re
import secrets
import uuid
from collections import OrderedDict
from collections.abc import Iterable

__all__ = [
    "TRACE_HEADERS",
    "TraceCarrier",
    "continue_trace",
    "parse_traceparent",
    "trace_headers",
    "trace_id_of",
]

#: Kafka headers that carry trace context from one topic to the next.
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")
_MAX_STATE = 512


def parse_traceparent(value: str | bytes | None) -> tuple[str, str, str] | None:
    """(trace id, parent span id, flags) of a valid version-00 ``traceparent``, else None."""
    if value is None:
        return None
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else value
    m = _TRACEPARENT.match(text.strip())
    if m is None or m.group(1) == "ff":
        return None
    _, trace_id, span_id, flags = m.groups()
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return None
    return trace_id, span_id, flags


def continue_trace(
    traceparent: str | None, tracestate: str | None = None
) -> list[tuple[str, bytes]]:
    """Headers for a new span: in the caller's trace if its ``traceparent`` is valid, else in
    a new trace. ``tracestate`` is kept only with a valid parent (and if not oversized)."""
    parsed = parse_traceparent(traceparent)
    trace_id = parsed[0] if parsed else secrets.token_hex(16)
    flags = parsed[2] if parsed else "01"
    headers = [("traceparent", f"00-{trace_id}-{secrets.token_hex(8)}-{flags}".encode())]
    if parsed and tracestate and len(tracestate) <= _MAX_STATE:
        headers.append(("tracestate", tracestate.encode("ascii", "replace")))
    return headers


def trace_headers(headers: Iterable[tuple[str, bytes]] | None) -> list[tuple[str, bytes]]:
    """The trace headers among ``headers`` (to copy onto the next topic)."""
    return [(k, v) for k, v in (headers or ()) if k in TRACE_HEADERS]


def trace_id_of(headers: Iterable[tuple[str, bytes]] | None) -> str | None:
    for key, value in headers or ():
        if key == "traceparent":
            parsed = parse_traceparent(value)
            return parsed[0] if parsed else None
    return None


class TraceCarrier:
    """Remembers the trace headers of recently consumed entries until their event is emitted.

    Bounded: the oldest are forgotten first (their events then go out without trace context,
    which costs observability, never correctness).
    """

    def __init__(self, capacity: int = 100_000) -> None:
        self._capacity = capacity
        self._by_entry: OrderedDict[uuid.UUID, list[tuple[str, bytes]]] = OrderedDict()

    def remember(self, entry_id: uuid.UUID, headers: Iterable[tuple[str, bytes]] | None) -> None:
        found = trace_headers(headers)
        if not found:
            return
        self._by_entry[entry_id] = found
        self._by_entry.move_to_end(entry_id)
        while len(self._by_entry) > self._capacity:
            self._by_entry.popitem(last=False)

    def headers_for(self, entry_id: uuid.UUID) -> list[tuple[str, bytes]]:
        return list(self._by_entry.get(entry_id, ()))

    def __len__(self) -> int:
        return len(self._by_entry)
