"""``python -m benchmarks.tracing``: the CPU each entry's spans cost, tracing off and on.

Runs the per-entry tracing work of the three stages exactly as they call it (:mod:`shared.otel`:
ingest's append handler, the signer's publish step, the anchorer's carrier and publisher) for
``--entries`` entries in this process, and reads the process's CPU time (every thread: the
batch span processors' included). The spans are encoded as the OTLP/HTTP exporter sends them
(protobuf) and then dropped: no collector, no network. The modes:

* ``off``: no tracer, what runs with ``LEDGER_OTEL_ENABLED=false`` (the default);
* ``on, 1% sampled``: the default sampler (``parentbased_traceidratio``, 0.01), new traces;
* ``on, client not sampled``: the client's ``traceparent`` says not sampled;
* ``on, all sampled``: ratio 1, every entry three spans.

Each mode runs ``--rounds`` times, interleaved, and the lowest CPU per entry is kept (the
machine is shared: the lowest is the least disturbed). Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import time
import uuid
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from shared.otel import SIGNER_SPAN, EntryTracer, SpanCarrier, ended
from shared.settings import Settings
from shared.tracing import TraceCarrier, continue_trace

__all__ = ["MODES", "measure", "run"]

NOT_SAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
#: mode → (sampler ratio or None for off, the client's traceparent)
MODES: dict[str, tuple[float | None, str | None]] = {
    "off": (None, None),
    "on, 1% sampled": (0.01, None),
    "on, client not sampled": (0.01, NOT_SAMPLED),
    "on, all sampled": (1.0, None),
}
STAGES = ("ingest", "signer", "anchorer")


class EncodingExporter(SpanExporter):
    """Encodes spans as OTLP protobuf (the exporter's CPU, less the HTTP call) and counts them."""

    def __init__(self) -> None:
        self.spans = 0
        self.bytes = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.bytes += len(encode_spans(spans).SerializePartialToString())
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _tracers(ratio: float | None) -> tuple[dict[str, EntryTracer | None], EncodingExporter]:
    exporter = EncodingExporter()
    if ratio is None:
        return dict.fromkeys(STAGES), exporter
    settings = Settings(otel_enabled=True, otel_traces_sampler_arg=ratio)
    return {stage: EntryTracer.from_settings(
        settings, stage, processor=BatchSpanProcessor(exporter, max_queue_size=1 << 20))
        for stage in STAGES}, exporter


def _one_entry(tracers: dict[str, EntryTracer | None], carrier: TraceCarrier,
               client: str | None, started_ns: int) -> None:
    """What the three stages do for one entry's trace context (see the stages' code)."""
    entry_id = uuid.uuid4()
    ingest, signer = tracers["ingest"], tracers["signer"]
    # ingest: POST /append (services.ingest.app._Api._trace, then ended(span))
    if ingest is None:
        span, headers = None, continue_trace(client, None)
    else:
        span, headers = ingest.ingest(client, None, entry_id=entry_id)
    with ended(span):
        pass
    # signer: the publish step (services.signer.stage.SignerStage._publish)
    trace: Sequence[tuple[str, bytes]] = tuple(headers)
    if signer is not None:
        signed, trace = signer.start_from(SIGNER_SPAN, trace, entry_id=entry_id,
                                          start_ns=started_ns)
        if signed is not None:
            signed.set_attribute("ledger.outcome", "new")
        with ended(signed):
            pass
    # anchorer: remember on consumption, headers on publication, end on acknowledgement
    carrier.remember(entry_id, trace)
    carrier.headers_for(entry_id)
    if isinstance(carrier, SpanCarrier):
        carrier.published([(entry_id, entry_id, 0)])


def measure(mode: str, entries: int) -> dict[str, Any]:
    """CPU per entry (µs) of ``entries`` entries in ``mode``, and the spans exported."""
    ratio, client = MODES[mode]
    tracers, exporter = _tracers(ratio)
    anchorer = tracers["anchorer"]
    carrier = TraceCarrier() if anchorer is None else SpanCarrier(anchorer)
    started = time.time_ns()
    cpu0 = time.process_time()
    for _ in range(entries):
        _one_entry(tracers, carrier, client, started)
    for tracer in tracers.values():
        if tracer is not None:
            tracer.provider.shutdown()  # exports what is queued: its CPU is counted too
    cpu_s = time.process_time() - cpu0
    return {"mode": mode, "entries": entries, "cpu_us_per_entry": cpu_s / entries * 1e6,
            "spans_exported": exporter.spans, "otlp_bytes_per_span":
            exporter.bytes / exporter.spans if exporter.spans else 0.0}


def run(entries: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Every mode ``rounds`` times, interleaved; the least disturbed round of each."""
    best: dict[str, dict[str, Any]] = {}
    for _ in range(rounds):
        for mode in MODES:
            result = measure(mode, entries)
            if mode not in best or result["cpu_us_per_entry"] < best[mode]["cpu_us_per_entry"]:
                best[mode] = result
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.tracing",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--entries", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    results = run(args.entries, args.rounds)
    off = results["off"]["cpu_us_per_entry"]
    for r in results.values():
        r["added_us_per_entry"] = r["cpu_us_per_entry"] - off
    print(json.dumps(list(results.values()), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
