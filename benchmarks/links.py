"""What the secured links cost: the same measurement on the normal stack and on a plain one.

The local stack secures every link (PostgreSQL over TLS with ``verify-full``, Kafka over
mutual TLS with ACLs, OpenBao over TLS). To say what that costs, :func:`plain_bench` starts a
second, private stack with ``Stack(..., plain_links=True)`` — plaintext Kafka without an
authorizer, PostgreSQL accepting plaintext TCP from loopback, OpenBao without TLS — which
exists for this measurement only. :func:`interleave` then runs one measurement on both
stacks in turns, secured (A) and plain (B) in the order A B B A (A B B A A B B A for four
rounds): the machine is shared and its load drifts, and alternating the order spreads
the drift over both sides instead of charging it to the one measured later.
:func:`compare` reduces the rounds to each side's mean, the spread between rounds, and the
ratios secured / plain.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from benchmarks.harness import Bench
from benchmarks.report import _fmt as fmt
from benchmarks.report import _table as table
from deploy.local.stack import Stack
from shared.settings import Settings

__all__ = ["SIDES", "compare", "interleave", "links_section", "plain_bench", "side_order"]

SIDES = ("secured", "plain")
#: the figures compared, per entry (µs of CPU by process) and overall
_PROCESSES = ("signer", "anchorer", "kafka", "postgres", "openbao", "trillian", "rekor")


@contextlib.asynccontextmanager
async def plain_bench(bench: Bench, name: str = "plain-stack") -> AsyncIterator[Bench]:
    """A :class:`Bench` on a private stack with plain links, stopped afterwards."""
    stack = Stack(bench.run_dir / name, bench.stack.cache_dir, plain_links=True)
    bench.progress(f"starting a second stack with plain links ({name}), for comparison only")
    try:
        await asyncio.to_thread(stack.start_all, lambda m: bench.progress(f"{name}: {m}"))
        yield replace(bench, stack=stack,
                      settings=Settings.from_env(environ=stack.endpoints()),
                      run_dir=bench.run_dir / name)
    finally:
        await asyncio.to_thread(stack.stop_all)


def side_order(rounds: int) -> list[str]:
    """Secured first, then the pairs alternate: A B, B A, A B, ..."""
    order: list[str] = []
    for i in range(rounds):
        pair = list(SIDES) if i % 2 == 0 else list(reversed(SIDES))
        order += pair
    return order


async def interleave(
    benches: dict[str, Bench], rounds: int,
    measure: Callable[[Bench, str], Awaitable[dict[str, Any]]],
) -> list[dict[str, Any]]:
    """``measure`` on each side ``rounds`` times, in :func:`side_order`; every run tagged with
    its side, round and the machine's load average at its start."""
    runs: list[dict[str, Any]] = []
    seen = dict.fromkeys(SIDES, 0)
    for side in side_order(rounds):
        seen[side] += 1
        load = os.getloadavg()[0]
        result = await measure(benches[side], f"{side} links, round {seen[side]}")
        runs.append({"side": side, "round": seen[side], "loadavg_1m": round(load, 2),
                     **result})
    return runs


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _figures(run: dict[str, Any]) -> dict[str, float]:
    per = run.get("cpu_us_per_entry") or {}
    out = {p: float(per.get(p, 0.0)) for p in _PROCESSES}
    out["total"] = float(run["cpu_us_per_entry_total"])
    out["entries_per_s"] = float(run["entries_per_s"])
    out["cores_busy"] = float(run["cores_busy"])
    return out


def compare(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Each side's mean and min/max over its rounds, and the ratio secured / plain of means."""
    sides: dict[str, dict[str, Any]] = {}
    for side in SIDES:
        figures = [_figures(r) for r in runs if r["side"] == side]
        keys = figures[0].keys() if figures else ()
        sides[side] = {
            "rounds": len(figures),
            "mean": {k: _mean([f[k] for f in figures]) for k in keys},
            "min": {k: min(f[k] for f in figures) for k in keys},
            "max": {k: max(f[k] for f in figures) for k in keys},
        }
    secured, plain = sides["secured"]["mean"], sides["plain"]["mean"]
    ratios = {k: (secured[k] / plain[k] if plain.get(k) else None) for k in secured}
    return {"sides": sides, "ratio_secured_over_plain": ratios}


def links_section(results: Mapping[str, Any]) -> list[str]:
    """The report's section "What the secured links cost" (empty without the scenario)."""
    r = results.get("secured_links")
    if not r:
        return []
    sides, ratio = r["sides"], r["ratio_secured_over_plain"]
    rows = []
    for key, label, digits in (("entries_per_s", "entries/s end to end", 0),
                               *((p, f"{p}, CPU µs/entry", 0) for p in _PROCESSES),
                               ("total", "all processes, CPU µs/entry", 0),
                               ("cores_busy", "cores busy (whole machine)", 2)):
        cells = []
        for side in SIDES:
            mean, lo, hi = (sides[side][k].get(key) for k in ("mean", "min", "max"))
            cells.append(f"{fmt(mean, digits)} ({fmt(lo, digits)} to {fmt(hi, digits)})")
        value = ratio.get(key)
        rows.append([label, *cells, "-" if value is None else f"{value:.2f}"])
    order = " ".join("A" if s == "secured" else "B" for s in r["order"])
    loads = ", ".join(f"{run['side']} {run['loadavg_1m']}" for run in r["runs"])
    warm = (f" after an unmeasured warm-up of {fmt(r['warm_up_entries'])} entries on each"
            if r.get("warm_up_entries") else "")
    return [
        "## What the secured links cost", "",
        f"The Kafka path (1 signer + 1 anchorer, {fmt(r['entries'])} entries as fast as "
        "produced) on this stack and on a second, private stack with plain links that "
        "exists only for this comparison (`Stack(..., plain_links=True)`, "
        f"`benchmarks/links.py`), in interleaved rounds (secured A, plain B: {order}){warm}. "
        "Means over the rounds, the lowest and highest round in brackets, and the ratio "
        "secured / plain of the means. The links: "
        + "; ".join(f"{side}: {_describe(links)}" for side, links in r["links"].items())
        + ".", "",
        table(["figure", "secured links", "plain links", "secured / plain"], rows), "",
        f"Load average (1 min) at the start of each round: {loads}. The machine is shared "
        "and noisy: a ratio inside the spread between rounds is noise, not a cost.", "",
    ]


def _describe(links: Mapping[str, Any]) -> str:
    kafka = "mutual TLS and ACLs" if links.get("kafka") == "SSL" else "plaintext, no ACLs"
    return (f"Kafka {kafka}, PostgreSQL {'TLS' if links.get('postgres_tls') else 'plaintext'}"
            f", OpenBao {'TLS' if links.get('openbao_tls') else 'plaintext'}")
