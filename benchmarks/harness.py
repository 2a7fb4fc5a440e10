"""What the benchmarks share: private lanes, bounded waits, stages in-process, reporting.

Numbers are reported as ratios against baselines measured in the same run, because the
machine is shared and noisy. Nothing here asserts a speed: benchmarks assert correctness
only (every entry processed exactly once).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import platform
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer

from deploy.local.postgres import Postgres
from deploy.local.stack import Stack
from shared.db import Database, migrate
from shared.kafka import ensure_topics
from shared.lifecycle import Lifecycle
from shared.settings import Settings
from shared.telemetry import Metrics

# --- reporting -----------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    load: list[float] | None = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "loadavg_at_start": load,
    }


@dataclass
class ResultsFile:
    """``<directory>/results-<timestamp>.json``: every benchmark of the session, rewritten
    after each one so that a later failure keeps the earlier results."""

    directory: Path
    started: str = field(default_factory=lambda: time.strftime("%Y%m%d-%H%M%S"))
    benchmarks: dict[str, Any] = field(default_factory=dict)
    machine: dict[str, Any] = field(default_factory=_machine)

    @property
    def path(self) -> Path:
        return self.directory / f"results-{self.started}.json"

    def add(self, name: str, summary: dict[str, Any]) -> Path:
        self.benchmarks[name] = summary
        self.directory.mkdir(parents=True, exist_ok=True)
        doc = {"started": self.started, "machine": self.machine, "benchmarks": self.benchmarks}
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.path)
        return self.path


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small fixed-width text table (also valid Markdown)."""
    cells = [[str(c) for c in header], *[[_fmt(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]

    def line(r: Sequence[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([f"\n### {title}", line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _fmt(value: object) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        if abs(value) >= 100:
            return f"{value:.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.4f}"
    return str(value)


def ratio(a: float, b: float) -> float:
    return a / b if b > 0 else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


# --- waiting -------------------------------------------------------------------------------


class BenchTimeout(AssertionError):
    """A bounded wait ran out: the benchmark did not complete (a failure, not a slow run)."""


async def wait_for(
    check: Callable[[], Awaitable[bool]], *, within: float, what: str, every: float = 0.05
) -> float:
    """Poll ``check`` until true; return the monotonic time it became true."""
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise BenchTimeout(f"timed out after {within:.0f}s waiting for {what}")
        await asyncio.sleep(every)
    return time.monotonic()


# --- private lanes -------------------------------------------------------------------------


@dataclass
class Lane:
    """Private topics, consumer groups and database for one benchmark."""

    settings: Settings
    db: Database
    prefix: str

    def rid(self, n: int | str) -> str:
        return f"{self.prefix}-{n}"

    async def count(self, sql: str, *args: Any) -> int:
        return int(await self.db.fetchval(sql, *args))


@contextlib.asynccontextmanager
async def private_lane(
    stack: Stack, settings: Settings, *, partitions: int, **changes: Any
) -> AsyncIterator[Lane]:
    """A fresh database (migrated), topics (+ DLQs) and groups; ``changes`` on top."""
    prefix = f"b{uuid.uuid4().hex[:10]}"
    postgres = stack.require("postgres")
    if not isinstance(postgres, Postgres):
        raise BenchTimeout("benchmarks need the stack's own PostgreSQL (private databases)")
    dsn = await asyncio.to_thread(postgres.create_database, f"bench_{prefix}")
    s = settings.model_copy(update={
        "database_dsn": dsn,
        "topic_append": f"{prefix}.append",
        "topic_signed": f"{prefix}.signed",
        "topic_anchored": f"{prefix}.anchored",
        "signer_group": f"{prefix}-signer",
        "anchorer_group": f"{prefix}-anchorer",
        "sweeper_interval_s": 3600.0,
        "sweeper_age_s": 3600.0,
        "shutdown_grace_s": 15.0,
        "log_level": "WARNING",
        **changes,
    })
    await ensure_topics(
        s,
        [s.topic_append, s.topic_signed, s.topic_anchored,
         f"{s.topic_append}.dlq", f"{s.topic_signed}.dlq"],
        partitions,
    )
    db = await Database.connect(s)
    try:
        await migrate(db)
        yield Lane(settings=s, db=db, prefix=prefix)
    finally:
        await db.close()


Stage = Callable[..., Coroutine[Any, Any, None]]


@contextlib.asynccontextmanager
async def running(fn: Stage, settings: Settings, name: str) -> AsyncIterator[Metrics]:
    """Run a stage (``run_signer`` / ``run_anchorer``) in this event loop; stop and drain."""
    metrics = Metrics()
    lc = Lifecycle(name=name, grace_s=settings.shutdown_grace_s)
    task = asyncio.create_task(
        fn(settings, lifecycle=lc, metrics=metrics, install_signals=False), name=name
    )
    try:
        yield metrics
        if task.done() and task.exception() is not None:
            raise AssertionError(f"{name} stopped: {task.exception()!r}")
    finally:
        lc.request_stop("benchmark over")
        await asyncio.wait_for(task, 60)


def metric_total(metrics: Metrics, sample: str) -> float:
    """Sum of every sample named ``sample`` (e.g. ``ledger_stage_batch_seconds_sum``)."""
    return sum(s.value for family in metrics.registry.collect() for s in family.samples
               if s.name == sample)


async def read_topic(settings: Settings, topic: str, *, within: float = 60,
                     until: Callable[[list[Any]], bool] | None = None) -> list[Any]:
    """Every record of ``topic`` from the beginning to the end offsets seen at the start;
    with ``until``, on past them until ``until(records)`` holds (bounded by ``within``)."""
    c = AIOKafkaConsumer(topic, bootstrap_servers=settings.kafka_bootstrap_servers,
                         enable_auto_commit=False, group_id=None,
                         auto_offset_reset="earliest")
    await asyncio.wait_for(c.start(), 30)
    try:
        tps = sorted(c.assignment())
        ends = await c.end_offsets(tps)
        await c.seek_to_beginning(*tps)
        records: list[Any] = []
        deadline = time.monotonic() + within

        async def behind() -> bool:
            return any([await c.position(tp) < ends[tp] for tp in tps])

        while await behind() or (until is not None and not until(records)):
            if time.monotonic() > deadline:
                raise BenchTimeout(f"could not read {topic} to its end in {within:.0f}s"
                                   f" ({len(records)} records)")
            for recs in (await c.getmany(timeout_ms=200, max_records=5000)).values():
                records.extend(recs)
        return records
    finally:
        await asyncio.wait_for(c.stop(), 30)


def header(record: Any, name: str) -> bytes | None:
    for k, v in record.headers or ():
        if k == name:
            return bytes(v)
    return None


async def timed(coro: Awaitable[Any]) -> float:
    """Seconds ``coro`` took."""
    t0 = time.perf_counter()
    await coro
    return time.perf_counter() - t0


def report(results: ResultsFile, name: str, title: str, *, header_row: Sequence[str],
           rows: Sequence[Sequence[object]], summary: dict[str, Any]) -> None:
    """Print the table and add the summary (with the table's rows) to the results file."""
    print(table(title, header_row, rows))
    path = results.add(name, {**summary, "table": {"header": list(header_row),
                                                    "rows": [list(map(_json, r)) for r in rows]}})
    print(f"(written to {path})", flush=True)


def _json(value: object) -> object:
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, float):
        return round(value, 4)
    return value
