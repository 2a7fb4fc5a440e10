"""Ingest's memory and answers under overload while Kafka is frozen, per ``max_in_flight``.

``python -m benchmarks.overload [--rate 600] [--seconds 12] [--bounds 256,1000000]
[--payload-bytes 4096] [--publish-timeout-ms 5000]`` starts PostgreSQL and Kafka (a
throw-away local stack in ``.bench/overload-<time>``, removed afterwards), and for each bound
runs ``ledger ingest`` as its own process (auth off, ``LEDGER_MAX_IN_FLIGHT`` = the
bound), freezes the broker with SIGSTOP, offers ``rate`` appends a second for ``seconds``
(``Prefer: respond-async``, an open model: request *i* is due at ``i / rate`` whatever
ingest does; a 15 s client timeout), samples the ingest's resident memory (``VmRSS`` from
``/proc``) every 50 ms, then thaws the broker and stops ingest. One JSON line per bound:
RSS before and at its peak, the answers by status, latency percentiles, and how many
requests were still unanswered at the client's timeout.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp

from deploy.local.base import default_cache_dir
from deploy.local.process import free_port
from deploy.local.stack import Stack

__all__ = ["main"]

_CLIENT_TIMEOUT_S = 15.0
_ROOT = str(Path(__file__).resolve().parents[1])


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            lines = status.read().splitlines()
        for line in lines:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _wait_ready(url: str, within_s: float = 60.0) -> None:
    deadline = time.monotonic() + within_s
    async with aiohttp.ClientSession() as http:
        while True:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with http.get(f"{url}/livez") as r:
                    if r.status == 200:
                        return
            if time.monotonic() > deadline:
                raise RuntimeError(f"ingest at {url} did not answer within {within_s} s")
            await asyncio.sleep(0.2)


async def _offer(url: str, rate: float, seconds: float, payload: str) -> list[tuple[int, float]]:
    """(status or 0 for no answer within the client timeout, seconds) per request."""
    count = int(rate * seconds)
    body = json.dumps({"subject": "overload/1", "payload": payload}).encode()
    headers = {"Content-Type": "application/json", "Prefer": "respond-async"}
    results: list[tuple[int, float]] = []
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=_CLIENT_TIMEOUT_S)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as http:

        async def one() -> None:
            started = time.monotonic()
            try:
                async with http.post(f"{url}/append", data=body, headers=headers) as r:
                    await r.read()
                    results.append((r.status, time.monotonic() - started))
            except (TimeoutError, aiohttp.ClientError, OSError):
                results.append((0, time.monotonic() - started))

        start = time.monotonic()
        tasks = []
        for i in range(count):
            delay = start + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
    return results


async def _sample(pid: int, stop: asyncio.Event, peak: list[float]) -> None:
    while not stop.is_set():
        rss = _rss_mb(pid)
        if rss is not None:
            peak[0] = max(peak[0], rss)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.05)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _one_bound(stack: Stack, bound: int, args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    root = _ROOT  # this checkout's code, not an installed one
    env = {**os.environ, **stack.endpoints(), "LEDGER_AUTH_DISABLED": "true",
           "PYTHONPATH": root,
           "LEDGER_HTTP_PORT": str(port), "LEDGER_MAX_IN_FLIGHT": str(bound),
           "LEDGER_PUBLISH_TIMEOUT_MS": str(args.publish_timeout_ms),
           "LEDGER_LOG_LEVEL": "ERROR"}
    ingest = subprocess.Popen(  # noqa: ASYNC220 - started once, waited for below
        [sys.executable, "-c", "from ledger.cli import main; raise SystemExit(main())",
         "ingest"], env=env, cwd=root,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    kafka = stack.require("kafka").processes()
    try:
        await _wait_ready(url)
        before = _rss_mb(ingest.pid) or 0.0
        payload = base64.b64encode(os.urandom(args.payload_bytes)).decode()
        stop, peak = asyncio.Event(), [before]
        sampler = asyncio.create_task(_sample(ingest.pid, stop, peak))
        for p in kafka:
            p.signal(signal.SIGSTOP)
        try:
            results = await _offer(url, args.rate, args.seconds, payload)
        finally:
            for p in kafka:
                p.signal(signal.SIGCONT)
            stop.set()
            await sampler
    finally:
        ingest.send_signal(signal.SIGTERM)
        try:
            await asyncio.to_thread(ingest.wait, 30)
        except subprocess.TimeoutExpired:
            ingest.kill()
    latencies = [s for _, s in results]
    return {
        "max_in_flight": bound, "publish_timeout_ms": args.publish_timeout_ms,
        "offered_per_s": args.rate, "seconds": args.seconds,
        "payload_bytes": args.payload_bytes, "rss_before_mb": round(before, 1),
        "rss_peak_mb": round(peak[0], 1),
        "answers": dict(Counter(str(s) if s else "no answer" for s, _ in results)),
        "p50_s": round(_percentile(latencies, 0.5), 2),
        "p99_s": round(_percentile(latencies, 0.99), 2),
        "max_s": round(max(latencies, default=0.0), 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.overload", description=__doc__)
    parser.add_argument("--rate", type=float, default=600.0, help="appends offered a second")
    parser.add_argument("--seconds", type=float, default=12.0, help="how long to offer them")
    parser.add_argument("--bounds", default="256,1000000", help="LEDGER_MAX_IN_FLIGHT values")
    parser.add_argument("--payload-bytes", type=int, default=4096)
    parser.add_argument("--publish-timeout-ms", type=int, default=5000,
                        help="LEDGER_PUBLISH_TIMEOUT_MS (60000: close to an unbounded wait)")
    args = parser.parse_args(argv)
    bounds = [int(b) for b in args.bounds.split(",")]
    # under the checkout (like benchmarks/__main__): PostgreSQL must reach its directory
    run_dir = Path(_ROOT) / ".bench" / f"overload-{time.strftime('%Y%m%d-%H%M%S')}"
    stack = Stack(run_dir / "stack", default_cache_dir(), services=["postgres", "kafka"],
                  environ={})
    try:
        with stack, stack.signals_stop():
            stack.install_all()
            stack.start_all(lambda m: print(f"[stack] {m}", file=sys.stderr))
            for bound in bounds:
                print(json.dumps(asyncio.run(_one_bound(stack, bound, args))), flush=True)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
