"""JSON logs carry the work's context; metrics live in a registry per instance."""

from __future__ import annotations

import io
import json
import logging

from prometheus_client import generate_latest

from shared.telemetry import JsonFormatter, Metrics, log_context


def _logger(stream: io.StringIO) -> logging.Logger:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test.telemetry.{id(stream)}")
    logger.handlers[:] = [handler]
    logger.propagate = False
    logger.setLevel(logging.INFO)
    return logger


def test_records_are_json_with_context_and_extra_fields() -> None:
    out = io.StringIO()
    log = _logger(out)
    with log_context(request_id="r-1", topic="ledger.append", partition=2, offset=None):
        with log_context(entry_id="e-1"):
            log.info("stored", extra={"outcome": "new"})
        log.warning("outside the inner block")
    log.info("no context")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "stored" and first["level"] == "info"
    assert first["request_id"] == "r-1" and first["entry_id"] == "e-1"
    assert first["topic"] == "ledger.append" and first["partition"] == 2
    assert "offset" not in first  # None values are left out
    assert first["outcome"] == "new"
    assert "entry_id" not in second and second["request_id"] == "r-1"
    assert "request_id" not in third


def test_exceptions_are_recorded_with_their_type() -> None:
    out = io.StringIO()
    log = _logger(out)
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    doc = json.loads(out.getvalue())
    assert doc["exc_type"] == "ValueError" and "bad" in doc["exc"]


def test_each_metrics_instance_has_its_own_registry() -> None:
    a, b = Metrics(), Metrics()
    a.entries_signed.labels(outcome="new").inc(3)
    assert b"ledger_entries_signed_total{outcome=\"new\"} 3.0" in generate_latest(a.registry)
    assert b"ledger_entries_signed_total{outcome=\"new\"}" not in generate_latest(b.registry)
    names = {m.name for m in a.registry.collect()}
    assert all(n.startswith("ledger_") for n in names)
