"""Structured JSON logs and the closed set of Prometheus metrics.

Logs: one JSON object per line on stderr. Context (request id, entry id, topic, partition,
offset, stage) is carried in a context variable by :func:`log_context` and added to every
record logged inside it. Never pass tokens or payloads to a logger: only ids and hashes.

Metrics: :class:`Metrics` registers every metric this project exports in a registry it is
given (no module-level state), so each process — and each test — has its own. The names are
documented in ``docs/operations.md``; do not invent metric names elsewhere.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["JsonFormatter", "Metrics", "configure_logging", "log_context"]

_context: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar(
    "ledger_log_context", default={}  # noqa: B039 - never mutated; replaced by log_context
)

_STANDARD_ATTRS = set(
    logging.LogRecord("x", 0, "x", 0, "x", None, None).__dict__.keys()
) | {"message", "asctime", "taskName"}


@contextlib.contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add ``fields`` to every log record emitted inside the ``with`` block (task-local)."""
    token = _context.set({**_context.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        doc.update(_context.get())
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            doc["exc_type"] = record.exc_info[0].__name__
            doc["exc"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(doc, default=str, option=orjson.OPT_NON_STR_KEYS).decode()
        except TypeError:  # e.g. an integer beyond 64 bits: the slower, total encoder
            return json.dumps(doc, default=str)


def configure_logging(level: str = "INFO", stream: IO[str] | None = None) -> None:
    # the JSON lines carry none of these; collecting them costs on every record
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # third-party chatter at INFO says nothing an operator needs
    for noisy in ("aiokafka", "kafka", "urllib3", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)


class Metrics:
    """Every metric of the pipeline, registered in one registry per process."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # ingest
        self.http_requests = Counter(
            "ledger_http_requests", "HTTP requests by route, method and status",
            ["route", "method", "status"], registry=r,
        )
        self.http_latency = Histogram(
            "ledger_http_request_seconds", "HTTP request latency by route", ["route"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.appends_published = Counter(
            "ledger_appends_published", "append requests acknowledged by Kafka", registry=r
        )
        self.append_wait = Counter(
            "ledger_append_wait", "outcome of waiting for the signer (stored|timeout|async)",
            ["outcome"], registry=r,
        )
        self.auth_refused = Counter(
            "ledger_http_auth_refused",
            "requests refused by authentication (reason = missing|invalid|expired|scope) "
            "by token name (empty when no known token was presented)",
            ["reason", "token_name"], registry=r,
        )
        self.token_expiry = Gauge(
            "ledger_token_expiry_timestamp_seconds",
            "when each ingest token with an expires_at expires (POSIX seconds)",
            ["token_name"], registry=r,
        )
        self.rate_limited = Counter(
            "ledger_http_rate_limited", "requests answered 429 by token name",
            ["token_name"], registry=r,
        )
        # signer
        self.entries_signed = Counter(
            "ledger_entries_signed", "entries stored by the signer (new|existing)",
            ["outcome"], registry=r,
        )
        self.vault_latency = Histogram(
            "ledger_vault_request_seconds", "Vault Transit call latency", ["key", "op"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.vault_batch_size = Histogram(
            "ledger_vault_batch_size", "items per Vault batch_input call",
            buckets=_SIZE_BUCKETS, registry=r,
        )
        # anchorer
        self.batches_anchored = Counter(
            "ledger_batches_anchored", "batches whose Rekor receipt verified and was stored",
            ["path"], registry=r,
        )
        self.anchor_batch_size = Histogram(
            "ledger_anchor_batch_size", "entries per anchored batch",
            buckets=_SIZE_BUCKETS, registry=r,
        )
        self.entries_anchored = Counter(
            "ledger_entries_anchored", "entries marked anchored", registry=r
        )
        self.rekor_latency = Histogram(
            "ledger_rekor_request_seconds", "Rekor call latency", ["op", "outcome"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.receipt_failures = Counter(
            "ledger_receipt_verification_failures",
            "Rekor receipts refused because a check failed", ["check"], registry=r,
        )
        self.rejected_rows = Counter(
            "ledger_anchorer_rejected_rows",
            "stored entry rows the anchorer refused to anchor (signature, statement or leaf "
            "does not check)", ["reason"], registry=r,
        )
        self.pending_batches = Gauge(
            "ledger_pending_batches", "batches persisted but not yet anchored", registry=r
        )
        self.unanchored_oldest_age = Gauge(
            "ledger_unanchored_oldest_age_seconds",
            "age of the oldest stored entry not yet anchored (0: none), by the database's "
            "clock; refreshed by the anchorer's sweeper every round", registry=r,
        )
        self.sweeper_redriven = Counter(
            "ledger_sweeper_redriven", "work re-driven by the sweeper (batch|entry)",
            ["kind"], registry=r,
        )
        # every consumer stage
        self.dlq_messages = Counter(
            "ledger_dlq_messages", "messages sent to a dead-letter topic", ["stage", "reason"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "ledger_consumer_lag", "records behind the partition end",
            ["stage", "topic", "partition"], registry=r,
        )
        self.stage_paused = Gauge(
            "ledger_stage_paused", "1 while a stage is paused on a failing dependency",
            ["stage"], registry=r,
        )
        self.dependency_failures = Counter(
            "ledger_dependency_failures", "retryable dependency failures",
            ["stage", "dependency"], registry=r,
        )
        self.dependency_up = Gauge(
            "ledger_dependency_up", "1 if the last health check of a dependency passed",
            ["dependency"], registry=r,
        )
        self.health_probes = Counter(
            "ledger_health_probes", "health probes run (cached answers are not counted)",
            registry=r,
        )
        self.messages_processed = Counter(
            "ledger_messages_processed", "Kafka messages processed and committed",
            ["stage"], registry=r,
        )
        self.batch_seconds = Histogram(
            "ledger_stage_batch_seconds", "time to process one consumed batch", ["stage"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )


class Stopwatch:
    """``with Stopwatch() as sw: ...; sw.seconds`` — monotonic, for latency metrics."""

    def __enter__(self) -> Stopwatch:
        self._t0 = time.monotonic()
        self.seconds = 0.0
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self._t0
