"""Ingest over HTTP: respond-async (202) and wait-for-the-signer (201), against a trivial
aiohttp handler on loopback measured by the same client in the same run.

Everything runs in this process and event loop, like the integration tests: the client, the
ingest service, the signer, and the baseline server. The baseline therefore pays the same
client cost on the same loop; the ratio is what ingest (validation, hashing, a Kafka
``acks=all`` publish, and for 201 the wait for ``ledger.signed``) costs on top of answering an
HTTP request at all. The baseline runs before and after the ingest runs (noise indicator).

Correctness asserted: every answer is the expected status with a distinct entry id, and
every accepted entry is stored exactly once (no DLQ).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import statistics
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from benchmarks.harness import (
    Lane,
    ResultsFile,
    percentile,
    private_lane,
    ratio,
    read_topic,
    report,
    running,
    wait_for,
)
from deploy.local.stack import Stack
from services.ingest import create_token, run_ingest
from services.signer import run_signer
from shared.lifecycle import Lifecycle
from shared.settings import Settings
from shared.telemetry import Metrics

pytestmark = [pytest.mark.bench, pytest.mark.integration]

M = 2000
CONCURRENCY = 64
WARM_UP = 64
PARTITIONS = 3


@dataclass
class Run:
    """One load run: wall time, per-request latencies, statuses and answers."""

    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: list[int] = field(default_factory=list)
    docs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return len(self.statuses) / self.seconds if self.seconds > 0 else 0.0

    def p(self, q: float) -> float:
        return percentile(self.latencies, q) * 1000


def bodies(prefix: str, n: int, tag: str) -> list[bytes]:
    out = []
    for i in range(n):
        payload = hashlib.sha256(f"{prefix}/{tag}/{i}".encode()).digest() * 8  # 256 bytes
        out.append(json.dumps({
            "subject": f"{prefix}/acct/{i % 13}",
            "payload": base64.b64encode(payload).decode(),
            "meta": {"source": "bench", "n": i, "tag": tag},
        }).encode())
    return out


async def load(session: aiohttp.ClientSession, url: str, payloads: list[bytes],
               headers: dict[str, str]) -> Run:
    """POST every payload to ``url`` from ``CONCURRENCY`` workers; record each answer."""
    run = Run()
    queue = list(reversed(payloads))
    hdrs = {"Content-Type": "application/json", **headers}

    async def worker() -> None:
        while queue:
            body = queue.pop()
            t0 = time.perf_counter()
            async with session.post(url, data=body, headers=hdrs) as r:
                doc = await r.json()
                status = r.status
            run.latencies.append(time.perf_counter() - t0)
            run.statuses.append(status)
            run.docs.append(doc)

    t0 = time.perf_counter()
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(CONCURRENCY))), 600)
    run.seconds = time.perf_counter() - t0
    return run


@contextlib.asynccontextmanager
async def trivial_server() -> AsyncIterator[str]:
    """``POST /append``: parse the JSON body, answer 201 with a small JSON document."""

    async def handle(request: web.Request) -> web.Response:
        body = await request.json()
        return web.json_response({"id": str(len(body)), "status": "ok"}, status=201)

    app = web.Application()
    app.router.add_post("/append", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = int(runner.addresses[0][1])
        yield f"http://127.0.0.1:{port}/append"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def ingest_running(s: Settings) -> AsyncIterator[str]:
    """Run ingest in this loop; yield its base URL."""
    lc = Lifecycle(name="ingest", grace_s=s.shutdown_grace_s)
    bound: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(
        run_ingest(s, lifecycle=lc, metrics=Metrics(), on_listening=bound.set_result))
    waitables: set[asyncio.Future[Any]] = {bound, task}
    done, _ = await asyncio.wait(waitables, timeout=60,
                                 return_when=asyncio.FIRST_COMPLETED)
    if bound not in done:
        lc.request_stop("failed to start")
        if task.done():
            task.result()
        raise AssertionError("ingest did not start listening within 60s")
    try:
        yield bound.result()
    finally:
        lc.request_stop("benchmark over")
        await asyncio.wait_for(task, 60)


async def rows(lane: Lane) -> int:
    return await lane.count("SELECT count(*) FROM ledger.entries")


@pytest.mark.timeout(900)
async def test_bench_ingest(stack: Stack, settings: Settings, results: ResultsFile,
                            tmp_path: Path) -> None:
    tokens = str(tmp_path / "tokens.jsonl")
    async with private_lane(stack, settings, partitions=PARTITIONS, http_port=0,
                            tokens_file=tokens, append_wait_ms=30_000) as lane:
        s = lane.settings
        writer = create_token(tokens, "bench-writer", ["append"])
        auth = {"Authorization": f"Bearer {writer}"}
        connector = aiohttp.TCPConnector(limit=CONCURRENCY)
        async with (
            aiohttp.ClientSession(connector=connector,
                                  timeout=aiohttp.ClientTimeout(total=60)) as session,
            trivial_server() as baseline_url,
            running(run_signer, s, "signer"),
            ingest_running(s) as base,
        ):
            url = f"{base}/append"
            # warm up: connections on both servers, the signer's group join, first signature
            await load(session, baseline_url, bodies(lane.prefix, WARM_UP, "warm"), {})
            warm = await load(session, url, bodies(lane.prefix, WARM_UP, "warm"),
                              {**auth, "Prefer": "respond-async"})
            assert set(warm.statuses) == {202}, set(warm.statuses)

            async def warm_signed() -> bool:
                return await rows(lane) >= WARM_UP

            await wait_for(warm_signed, within=120, what="the warm-up entries to be signed")

            before = await load(session, baseline_url, bodies(lane.prefix, M, "base1"), {})
            async_run = await load(session, url, bodies(lane.prefix, M, "async"),
                                   {**auth, "Prefer": "respond-async"})
            http_done = time.monotonic()

            async def drained() -> bool:
                return await rows(lane) >= WARM_UP + M

            drained_at = await wait_for(drained, within=300, what="the 202 backlog to be signed")
            sync_run = await load(session, url, bodies(lane.prefix, M, "sync"), auth)
            after = await load(session, baseline_url, bodies(lane.prefix, M, "base2"), {})

            async def all_signed() -> bool:
                return await rows(lane) >= WARM_UP + 2 * M

            await wait_for(all_signed, within=120, what="every entry to be signed")

        # --- correctness ----------------------------------------------------------------------
        assert set(before.statuses) == set(after.statuses) == {201}
        assert set(async_run.statuses) == {202}, sorted(set(async_run.statuses))
        assert set(sync_run.statuses) == {201}, sorted(set(sync_run.statuses))
        ids = [d["id"] for d in warm.docs + async_run.docs + sync_run.docs]
        assert len(set(ids)) == len(ids) == WARM_UP + 2 * M
        stored = await lane.db.fetch("SELECT id::text AS id, count(*) AS n FROM ledger.entries"
                                     " GROUP BY id")
        assert all(r["n"] == 1 for r in stored)
        assert {r["id"] for r in stored} == set(ids)
        assert all(d["signature"].startswith("vault:v") for d in sync_run.docs)
        dlq = await read_topic(s, s.topic_append + ".dlq")
        assert not dlq, f"{len(dlq)} requests dead-lettered"

    base_rate = statistics.mean([before.rate, after.rate])
    drain_s = drained_at - http_done
    async_e2e = M / (async_run.seconds + drain_s)
    table_rows = [
        ("trivial aiohttp handler (baseline, mean)", base_rate, 1.0,
         statistics.mean([before.p(50), after.p(50)]),
         statistics.mean([before.p(99), after.p(99)])),
        ("  before / after", f"{before.rate:.0f} / {after.rate:.0f}", "", "", ""),
        ("ingest, Prefer: respond-async (202)", async_run.rate, ratio(async_run.rate, base_rate),
         async_run.p(50), async_run.p(99)),
        ("  202 backlog signed (HTTP + drain)", async_e2e, ratio(async_e2e, base_rate), "", ""),
        ("ingest, wait for the signer (201)", sync_run.rate, ratio(sync_run.rate, base_rate),
         sync_run.p(50), sync_run.p(99)),
    ]
    report(
        results, "ingest",
        f"ingest: {M} POST /append, {CONCURRENCY} concurrent (req/s, latency ms)",
        header_row=("what", "req/s", "/ baseline", "p50 ms", "p99 ms"), rows=table_rows,
        summary={
            "m": M, "concurrency": CONCURRENCY, "partitions": PARTITIONS,
            "baseline_per_s": base_rate,
            "baseline_per_s_before": before.rate, "baseline_per_s_after": after.rate,
            "baseline_p50_ms": before.p(50), "baseline_p99_ms": before.p(99),
            "async_per_s": async_run.rate, "async_p50_ms": async_run.p(50),
            "async_p99_ms": async_run.p(99), "async_vs_baseline": ratio(async_run.rate, base_rate),
            "async_drain_s": drain_s, "async_end_to_end_per_s": async_e2e,
            "sync_per_s": sync_run.rate, "sync_p50_ms": sync_run.p(50),
            "sync_p99_ms": sync_run.p(99), "sync_vs_baseline": ratio(sync_run.rate, base_rate),
        },
    )
