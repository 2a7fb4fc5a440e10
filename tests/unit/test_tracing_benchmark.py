"""benchmarks.tracing on a few entries: each mode does the work it names (not its speed)."""

from __future__ import annotations

import pytest

from benchmarks.tracing import MODES, measure

pytestmark = pytest.mark.unit


def test_each_mode_records_the_spans_it_should() -> None:
    spans = {mode: measure(mode, 200)["spans_exported"] for mode in MODES}
    assert spans["off"] == 0
    assert spans["on, client not sampled"] == 0
    assert spans["on, all sampled"] == 3 * 200, "ingest, signer and anchorer: one span each"
    assert spans["on, 1% sampled"] % 3 == 0 and spans["on, 1% sampled"] < 3 * 200, (
        "whole traces or nothing: each stage follows ingest's decision")
    assert measure("on, all sampled", 10)["otlp_bytes_per_span"] > 0
