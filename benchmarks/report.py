"""Writes what a benchmark run measured: ``results.json``, ``benchmarks.md`` and the charts.

Everything here is derived from the run's results; nothing is typed in by hand, so running
``make bench`` again regenerates all of it. ``summary()`` is the machine-readable part (the
keys other tools read); ``markdown()`` the document; ``charts()`` the PNGs.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["TARGETS", "charts", "machine", "markdown", "summary", "write"]

#: the order processes are shown in
PROCESSES = ("ingest", "signer", "anchorer", "kafka", "postgres", "openbao", "trillian", "rekor")
STAGES = ("ingest", "signer", "anchorer")


def _get(d: Mapping[str, Any] | None, *path: Any, default: Any = None) -> Any:
    for key in path:
        if not isinstance(d, Mapping) or key not in d:
            return default
        d = d[key]
    return d


def _steps(results: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
    return list(_get(results, name, "steps", default=[]) or [])


def _step_at(results: Mapping[str, Any], name: str, rate: float) -> dict[str, Any] | None:
    for step in _steps(results, name):
        if step["offered_per_s"] == rate:
            return step
    return None


def _pipeline_cpu(scenario: Mapping[str, Any] | None) -> dict[str, float]:
    per = _get(scenario, "cpu_us_per_entry", default={}) or {}
    return {k: float(per[k]) for k in PROCESSES if k in per}


# --- the machine-readable summary ----------------------------------------------------------


def summary(results: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of ``results.json`` (see docs/benchmarks.md for what each means)."""
    e2e = results.get("kafka_e2e") or {}
    fixed = results.get("kafka_fixed_rate") or {}
    backlog = results.get("backlog_drain") or {}
    runbook_max = float(_get(results, "http_runbook", "max_holding_per_s", default=0) or 0)
    async_max = float(_get(results, "http_async", "max_holding_per_s", default=0) or 0)
    wait_max = float(_get(results, "http_wait", "max_holding_per_s", default=0) or 0)
    bulk = results.get("http_bulk") or {}
    bulk_max_requests = float(bulk.get("max_holding_per_s") or 0)

    def ratio(a: float, b: float) -> float | None:
        return a / b if b else None

    rss: dict[str, float] = {}
    for name in ("kafka_e2e", "kafka_e2e_2x", "kafka_fixed_rate", "backlog_drain",
                 "http_async", "http_wait", "http_bulk"):
        for proc, mb in (_get(results, name, "peak_rss_mb", default={}) or {}).items():
            stage = proc.rsplit("-", 1)[0]
            if mb is not None:
                rss[stage] = max(rss.get(stage, 0.0), float(mb))
    previous = results.get("previous_release") or {}
    same_stack = previous.get("this_release_same_stack") or {}
    links_ratio = _get(results, "secured_links", "ratio_secured_over_plain", default={}) or {}
    return {
        "kafka_e2e_entries_per_s": e2e.get("entries_per_s"),
        "kafka_e2e_cores_busy": e2e.get("cores_busy"),
        "cpu_us_per_entry_total": e2e.get("cpu_us_per_entry_total"),
        "cpu_us_per_entry": _pipeline_cpu(e2e),
        "signer_verify_threads_us_per_entry": _get(e2e, "cpu_us_per_entry", "signer.threads"),
        "kafka_e2e_2x_entries_per_s": _get(results, "kafka_e2e_2x", "entries_per_s"),
        "previous_release_entries_per_s": previous.get("entries_per_s"),
        "previous_release_cpu_us_per_entry_total": previous.get("cpu_us_per_entry_total"),
        "previous_release_ref": previous.get("ref"),
        # the previous release runs on a stack with plain links, next to this release's stages
        "previous_release_this_release_entries_per_s": same_stack.get("entries_per_s"),
        "previous_release_this_release_cpu_us_per_entry_total": same_stack.get(
            "cpu_us_per_entry_total"),
        # the Kafka path on the secured stack / on a stack with plain links (same run)
        "secured_links_ratio_entries_per_s": links_ratio.get("entries_per_s"),
        "secured_links_ratio_cpu_us_per_entry_total": links_ratio.get("total"),
        "http_async_p99_ms": {str(int(s["offered_per_s"])): s["p99_ms"]
                              for s in _steps(results, "http_async")},
        "http_wait_p99_ms": {str(int(s["offered_per_s"])): s["p99_ms"]
                             for s in _steps(results, "http_wait")},
        "http_async_max_req_per_s": async_max,
        "http_wait_max_req_per_s": wait_max,
        "http_bulk_max_entries_per_s": bulk_max_requests * float(
            bulk.get("entries_per_request") or 0),
        "trivial_handler_max_req_per_s": _get(results, "http_trivial", "max_holding_per_s"),
        "runbook_design_max_req_per_s": runbook_max,
        # both answer once the entry is signed and stored: the like-for-like comparison
        "ratio_vs_runbook_design": ratio(wait_max, runbook_max),
        "ratio_async_vs_runbook_design": ratio(async_max, runbook_max),
        "ratio_kafka_path_vs_runbook_design": ratio(float(e2e.get("entries_per_s") or 0),
                                                    runbook_max),
        "time_to_anchored_p99_ms": _get(fixed, "time_to_anchored_ms", "p99"),
        "time_to_anchored_offered_per_s": fixed.get("offered_per_s"),
        "peak_rss_mb": rss,
        "backlog_drain_peak_rss_mb": backlog.get("peak_rss_mb"),
        "backlog_drain_entries_per_s": backlog.get("entries_per_s"),
    }


# --- targets ----------------------------------------------------------------------------------

#: (name, what, how to read it from the summary/results, goal, comparison)
TARGETS: tuple[tuple[str, str], ...] = (
    ("kafka_e2e", "Kafka path end to end, 50k entries, entries/s"),
    ("cpu_total", "CPU per entry, all processes, µs"),
    ("cpu_stage", "CPU per entry, each Python stage, µs"),
    ("async_500", "HTTP respond-async p99 at 500 req/s, ms"),
    ("async_1000", "HTTP respond-async p99 at 1,000 req/s, ms"),
    ("async_max", "HTTP respond-async, req/s before errors"),
    ("wait_500", "HTTP default wait p99 at 500 req/s, ms"),
    ("runbook", "x the runbook's design at its saturation"),
    ("anchored", "time-to-anchored p99 at 1,000 entries/s, ms"),
    ("rss", "peak RSS per stage draining a 100k backlog, MiB"),
    ("bulk", "bulk HTTP (batches of 500), entries/s"),
)


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float | int):
        if abs(value) >= 100 or digits == 0:
            return f"{value:,.0f}"
        return f"{value:,.{digits}f}"
    return str(value)


def _ratio(a: Any, b: Any) -> str:
    if not a or not b:
        return "-"
    return f"{a / b:.2g}x"


def target_rows(results: Mapping[str, Any], s: Mapping[str, Any]) -> list[list[str]]:
    """Each target: goal, figure, the same-run baseline it is read against, met or not."""
    rows: list[list[str]] = []

    def row(key: str, goal: str, figure: Any, met: bool | None, baseline: str) -> None:
        what = dict(TARGETS)[key]
        verdict = "-" if met is None else ("met" if met else "**not met**")
        rows.append([what, goal, _fmt(figure, 1), baseline, verdict])

    e2e = s.get("kafka_e2e_entries_per_s")
    prev = s.get("previous_release_entries_per_s")
    # the previous release ran on a stack with plain links, next to this release's stages
    same = s.get("previous_release_this_release_entries_per_s") or e2e
    vault4 = _get(results, "baselines", "vault_c4", "per_s")
    row("kafka_e2e", "≥ 5,000 (stretch 10,000)", e2e,
        None if e2e is None else e2e >= 5000,
        f"{_ratio(same, prev)} the previous release ({_fmt(prev)}/s, on one stack with "
        f"{_fmt(same)}/s of this release); raw Vault batch "
        f"signing {_fmt(vault4)}/s; cores busy {_fmt(s.get('kafka_e2e_cores_busy'), 2)} of "
        f"{os.cpu_count()}")
    total = s.get("cpu_us_per_entry_total")
    prev_cpu = s.get("previous_release_cpu_us_per_entry_total")
    same_cpu = s.get("previous_release_this_release_cpu_us_per_entry_total") or total
    row("cpu_total", "≤ 400", total, None if total is None else total <= 400,
        f"previous release {_fmt(prev_cpu)} µs ({_ratio(prev_cpu, same_cpu)} this release's "
        f"{_fmt(same_cpu)} µs on the same stack)")
    cpu = s.get("cpu_us_per_entry") or {}
    ingest_cpu = _get(_step_at(results, "http_async", 1000.0), "cpu_us_per_entry", "ingest")
    stage_cpu = {"signer": cpu.get("signer"), "anchorer": cpu.get("anchorer"),
                 "ingest": ingest_cpu}
    verify = s.get("signer_verify_threads_us_per_entry")
    figure = ", ".join(f"{k} {_fmt(v)}" for k, v in stage_cpu.items())
    row("cpu_stage", "≤ 100 each", figure,
        None if None in stage_cpu.values() else all(v <= 100 for v in stage_cpu.values()),
        f"signer includes {_fmt(verify)} µs of Ed25519 verification in worker threads; "
        f"ingest at 1,000 req/s")
    trivial = {int(st["offered_per_s"]): st for st in _steps(results, "http_trivial")}
    for key, rate, goal in (("async_500", 500, 10.0), ("async_1000", 1000, 50.0)):
        step = _step_at(results, "http_async", float(rate))
        p99 = None if step is None else step["p99_ms"]
        base = trivial.get(rate) or (min(trivial.values(), key=lambda t: abs(
            t["offered_per_s"] - rate)) if trivial else None)
        row(key, f"< {goal:g}", p99, None if p99 is None else p99 < goal,
            "trivial aiohttp handler p99 "
            + (f"{_fmt(base['p99_ms'], 1)} ms at {_fmt(base['offered_per_s'])}/s"
               if base else "-"))
    amax = s.get("http_async_max_req_per_s")
    tmax = s.get("trivial_handler_max_req_per_s")
    row("async_max", "≥ 3,000", amax, None if amax is None else amax >= 3000,
        f"trivial aiohttp handler {_fmt(tmax)} req/s (ingest holds {_ratio(amax, tmax)} of "
        "it, with the pipeline running)")
    step = _step_at(results, "http_wait", 500.0)
    p99 = None if step is None else step["p99_ms"]
    row("wait_500", "< 100", p99, None if p99 is None else p99 < 100,
        "answers after the signer stored the entry")
    ratio = s.get("ratio_vs_runbook_design")
    row("runbook", "≥ 10", ratio, None if ratio is None else ratio >= 10,
        f"runbook design saturates at {_fmt(s.get('runbook_design_max_req_per_s'))} req/s; "
        f"default wait holds {_fmt(s.get('http_wait_max_req_per_s'))}, respond-async "
        f"{_fmt(s.get('http_async_max_req_per_s'))}")
    anchored = s.get("time_to_anchored_p99_ms")
    row("anchored", "< 3,000", anchored, None if anchored is None else anchored < 3000,
        f"offered {_fmt(s.get('time_to_anchored_offered_per_s'))} entries/s; anchor batches "
        "flush at 1,000 entries or 2 s")
    drain = s.get("backlog_drain_peak_rss_mb") or {}
    worst = max((v for v in drain.values() if v is not None), default=None)
    row("rss", "< 300", worst, None if worst is None else worst < 300,
        ", ".join(f"{k} {_fmt(v)}" for k, v in drain.items()) or "-")
    bulk = s.get("http_bulk_max_entries_per_s")
    row("bulk", "≥ 10,000", bulk, None if bulk is None else bulk >= 10000,
        f"single appends hold {_fmt(amax)} req/s ({_ratio(bulk, amax)} that)")
    return rows


# --- charts -------------------------------------------------------------------------------


def charts(results: Mapping[str, Any], out: Path) -> list[Path]:
    """The PNGs: throughput against batch size, latency against rate, CPU per process."""
    import matplotlib  # noqa: PLC0415 - only the report needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    written: list[Path] = []
    sweeps = results.get("sweeps") or {}
    panels = [("signer_chunk", "signer_batch_max", "items per Vault call"),
              ("vault_in_flight", "signer_vault_in_flight", "Vault calls in flight"),
              ("anchor_batch", "anchor_batch_max", "entries per anchor batch")]
    if any(sweeps.get(k) for k, _, _ in panels):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
        for ax, (key, setting, label) in zip(axes, panels, strict=True):
            runs = sweeps.get(key) or []
            xs = [r["settings"][setting] for r in runs]
            ax.plot(xs, [r["entries_per_s"] for r in runs], marker="o")
            ax.set_xlabel(label)
            ax.set_ylabel("entries/s end to end")
            ax.set_ylim(bottom=0)
            if key == "anchor_batch":
                ax.set_xscale("log")
            ax.grid(alpha=0.3)
        fig.suptitle("Throughput against batch size (Kafka path, one knob at a time)")
        written.append(_save(plt, fig, out / "throughput-vs-batch.png"))

    series = [("http_async", "ingest, respond-async"), ("http_wait", "ingest, default wait"),
              ("http_runbook", "runbook design"), ("http_trivial", "trivial aiohttp handler")]
    if any(_steps(results, k) for k, _ in series):
        fig, ax = plt.subplots(figsize=(8, 4.5))
        for key, label in series:
            steps = _steps(results, key)
            if not steps:
                continue
            xs = [s["offered_per_s"] for s in steps]
            line = ax.plot(xs, [max(s["p99_ms"], 0.1) for s in steps], marker="o",
                           label=f"{label} p99")[0]
            ax.plot(xs, [max(s["p50_ms"], 0.1) for s in steps], marker=".", linestyle="--",
                    color=line.get_color(), label=f"{label} p50")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offered rate (req/s, constant-rate load from vegeta)")
        ax.set_ylabel("latency (ms)")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
        ax.set_title("HTTP latency against offered rate")
        written.append(_save(plt, fig, out / "latency-vs-rate.png"))

    bars = _cpu_bars(results)
    if bars:
        fig, ax = plt.subplots(figsize=(10, 4.8))
        bottoms = [0.0] * len(bars)
        for proc in PROCESSES:
            heights = [b[1].get(proc, 0.0) for b in bars]
            if not any(heights):
                continue
            ax.bar([b[0] for b in bars], heights, bottom=bottoms, label=proc)
            bottoms = [x + h for x, h in zip(bottoms, heights, strict=True)]
        ax.set_ylabel("CPU µs per entry")
        ax.legend(fontsize=8, ncol=4)
        ax.set_title("CPU per entry by process")
        plt.setp(ax.get_xticklabels(), rotation=15, ha="right", fontsize=8)
        written.append(_save(plt, fig, out / "cpu-per-entry.png"))
    return written


def _save(plt: Any, fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _cpu_bars(results: Mapping[str, Any]) -> list[tuple[str, dict[str, float]]]:
    bars: list[tuple[str, dict[str, float]]] = []
    for key, label in (("previous_release", "previous release, Kafka path"),
                       ("kafka_e2e", "Kafka path, 1+1"), ("kafka_e2e_2x", "Kafka path, 2+2"),
                       ("kafka_fixed_rate", "Kafka path at 1,000/s")):
        if results.get(key):
            bars.append((label, _pipeline_cpu(results[key])))
    for key, rate, label in (("http_async", 1000.0, "HTTP async 1,000/s"),
                             ("http_wait", 500.0, "HTTP wait 500/s")):
        step = _step_at(results, key, rate)
        if step:
            bars.append((label, _pipeline_cpu(step)))
    return bars


# --- the document ---------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _kafka_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for key, label in (("kafka_e2e", "1 signer + 1 anchorer, 50k, as fast as produced"),
                       ("previous_release", "the previous release, same load, plain links"),
                       ("kafka_e2e_2x", "2 signers + 2 anchorers, 50k"),
                       ("kafka_fixed_rate", "1+1 at a fixed 1,000 entries/s"),
                       ("backlog_drain", "1+1 draining a 100k backlog")):
        r = results.get(key)
        if not r:
            continue
        if r.get("this_release_same_stack"):
            rows.append(_kafka_row("this release, on the previous release's stack",
                                   r["this_release_same_stack"]))
        ref = f" ({r['ref']})" if r.get("ref") else ""
        rows.append(_kafka_row(label + ref, r))
    return rows


def _kafka_row(label: str, r: Mapping[str, Any]) -> list[str]:
    once = r["exactly_once"]
    return [label, _fmt(r["entries_per_s"]), _fmt(r["cpu_us_per_entry_total"]),
            _fmt(r["cores_busy"], 2),
            f"{_fmt(r['time_to_signed_ms']['p50'])} / {_fmt(r['time_to_signed_ms']['p99'])}",
            f"{_fmt(r['time_to_anchored_ms']['p50'])} / "
            f"{_fmt(r['time_to_anchored_ms']['p99'])}",
            ", ".join(f"{k} {_fmt(v)}" for k, v in (r.get("peak_rss_mb") or {}).items()),
            f"{once['rows']} rows, {once['batches']} batches, {once['events']} events, "
            f"Rekor +{once['rekor_growth']}"]


def _cpu_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for label, per in _cpu_bars(results):
        rows.append([label, *(_fmt(per.get(p)) for p in PROCESSES), _fmt(sum(per.values()))])
    return rows


def _http_rows(results: Mapping[str, Any], key: str) -> list[list[str]]:
    rows = []
    for s in _steps(results, key):
        codes = ", ".join(f"{k}: {v}" for k, v in sorted(s["status_codes"].items()))
        rows.append([_fmt(s["offered_per_s"]), _fmt(s["throughput_per_s"]),
                     _fmt(s["p50_ms"], 1), _fmt(s["p95_ms"], 1), _fmt(s["p99_ms"], 1),
                     _fmt(s["max_ms"], 1), str(s["errors"]), codes or "-",
                     _fmt(_get(s, "cpu_us_per_entry", "ingest")
                          or _get(s, "cpu_us_per_entry", "runbook")
                          or _get(s, "cpu_us_per_entry", "trivial")),
                     _fmt(s.get("vegeta_cpu_s"), 1)])
    return rows


def _sweep_rows(results: Mapping[str, Any]) -> list[list[str]]:
    rows = []
    for kind, runs in (results.get("sweeps") or {}).items():
        for r in runs:
            setting, value = next(iter(r["settings"].items()))
            rows.append([kind, f"{setting}={value}", _fmt(r["entries_per_s"]),
                         _fmt(r["cpu_us_per_entry_total"]), _fmt(r["cores_busy"], 2),
                         _fmt(r["time_to_anchored_ms"]["p99"])])
    return rows


def _baseline_rows(results: Mapping[str, Any]) -> list[list[str]]:
    b = results.get("baselines") or {}
    rows = []
    for key, label, unit in (("vault_c1", "Vault Transit Ed25519, batch_input 200, 1 call",
                              "signatures"),
                             ("vault_c4", "the same, 4 calls in flight", "signatures")):
        if key in b:
            cpu = b[key]["service_cpu_s"].get("openbao", 0) / b[key]["signatures"] * 1e6
            rows.append([label, f"{_fmt(b[key]['per_s'])} {unit}/s", f"OpenBao {_fmt(cpu)} µs"])
    for key, label in (("pg_executemany", "PostgreSQL, entry-shaped rows, executemany 500/tx"),
                       ("pg_copy", "PostgreSQL, the same rows, COPY 500/tx")):
        if key in b:
            cpu = b[key]["service_cpu_s"].get("postgres", 0) / b[key]["rows"] * 1e6
            rows.append([label, f"{_fmt(b[key]['per_s'])} rows/s", f"PostgreSQL {_fmt(cpu)} µs"])
    if "kafka" in b:
        k = b["kafka"]
        cpu = k["service_cpu_s"].get("kafka", 0) / k["messages"] * 1e6
        rows.append([f"Kafka, {k['bytes_each']}-byte messages, acks=all, produce",
                     f"{_fmt(k['produce']['per_s'])} msg/s",
                     f"Kafka {_fmt(cpu)} µs (produce + consume)"])
        rows.append(["Kafka, consume the same and parse JSON",
                     f"{_fmt(k['consume']['per_s'])} msg/s", ""])
    idle = _get(results, "idle", "cpu_ms_per_s", default={}) or {}
    if idle:
        rows.append(["engines at rest", "", ", ".join(f"{k} {_fmt(v, 1)} ms/s"
                                                     for k, v in idle.items())])
    return rows


def _sizing(results: Mapping[str, Any], s: Mapping[str, Any]) -> str:
    e2e = results.get("kafka_e2e") or {}
    per = _pipeline_cpu(e2e)
    step = _step_at(results, "http_async", 1000.0) or {}
    ingest_us = _get(step, "cpu_us_per_entry", "ingest")
    bulk_steps = _steps(results, "http_bulk")
    bulk_us = _get(bulk_steps[0], "cpu_us_per_entry", "ingest") if bulk_steps else None
    rates = [("ingest (single appends)", ingest_us), ("ingest (batches of 500)", bulk_us),
             ("signer", per.get("signer")), ("anchorer", per.get("anchorer")),
             ("OpenBao (signing)", per.get("openbao")), ("PostgreSQL", per.get("postgres")),
             ("Kafka", per.get("kafka"))]
    rows = [[name, _fmt(us), _fmt(1e6 / us) if us else "-"] for name, us in rates]
    measured = float(s.get("kafka_e2e_entries_per_s") or 0)
    plan = []
    for factor in (10, 100):
        load = measured * factor
        need = {name: math.ceil(load * us / 1e6 / 0.6) for name, us in rates[2:] if us}
        plan.append([f"{factor}x ({_fmt(load)} entries/s)",
                     *(str(need.get(n, "-")) for n, _ in rates[2:]),
                     str(max(need.get("signer", 1), need.get("anchorer", 1)) * 2)])
    return "\n\n".join([
        "Cost per entry by component on this machine (the Kafka path, 1+1), and what one "
        "core does at that cost:",
        _table(["component", "CPU µs per entry", "entries/s per core"], rows),
        "Cores needed for 10x and 100x this run's end-to-end rate, at 60 % utilisation "
        "(headroom for bursts and rebalances); partitions: at least twice the larger stage's "
        "process count, since a stage scales by processes up to the partition count:",
        _table(["load", "signer cores", "anchorer cores", "OpenBao cores", "PostgreSQL cores",
                "Kafka cores", "partitions"], plan),
        "How to read it: each stage is one process per core (Python runs one thread of "
        "Python at a time; the signer's verification threads add a little). Signer and "
        "anchorer scale by adding processes up to the partition count of their input topic; "
        "ingest by adding processes behind a load balancer (it keeps no state). Vault signs "
        "in `batch_input` calls of up to 200, so its limit is CPU, not requests. PostgreSQL "
        "writes each entry three times (insert, claim, completion): size its disks and "
        "autovacuum for that; CockroachDB spreads the same writes over nodes. Rekor sees one "
        "entry per batch (a batch of 1,000 anchors 1,000 entries), so even the public "
        "instance's rate limits allow millions of entries an hour.",
    ])


def markdown(results: Mapping[str, Any], s: Mapping[str, Any], pictures: Sequence[Path]) -> str:
    from benchmarks.links import links_section  # noqa: PLC0415 - it imports this module
    machine = results.get("machine") or {}
    names = {p.name for p in pictures}
    parts = [
        "# Benchmarks",
        "",
        "_Generated by `make bench` from one run (`" + str(results.get("command", "")) + "`); "
        "edit `benchmarks/report.py`, not this file. The engineering notes behind these "
        "figures — what was changed, what paid off and what did not — are in "
        "[performance.md](performance.md)._",
        "",
        f"Run {results.get('finished', '')} on {machine.get('cpus')} CPUs "
        f"({machine.get('platform', '')}, Python {machine.get('python', '')}, load average "
        f"{machine.get('loadavg_at_start')} at the start), profile `{results.get('profile')}`.",
        "",
        "## How it is measured",
        "",
        "As deployed: every stage (`ingest`, `signer`, `anchorer`) is its own OS process, "
        "and so are Kafka, PostgreSQL, OpenBao, Rekor and Trillian (the local stack). Load "
        "comes from a separate process: a Kafka producer at a fixed offered rate "
        "(`benchmarks/loadgen.py`), or [vegeta](https://github.com/tsenart/vegeta) for HTTP "
        "(constant-rate, open model: requests are sent on schedule whatever the server "
        "does). CPU is `utime + stime` of every process tree read from `/proc` before and "
        "after (PostgreSQL with every backend, exited ones included); the load generators' "
        "own CPU is reported apart and never counted. Each scenario runs on a private "
        "database, private topics and private consumer groups, and ends with an "
        "exactly-once check: one row per request, every entry in exactly one anchored batch, "
        "one `ledger.anchored` event per entry, Rekor grown by exactly the number of "
        "batches, nothing dead-lettered. Nothing here asserts a speed.",
        "",
        "The machine is shared and noisy, so every figure stands next to a baseline measured "
        "in the same run (the raw engines, a trivial HTTP handler, the runbook's own design, "
        "and the previous release's stages next to this release's on one stack with plain "
        "links, since stages older than the secured links cannot connect to the normal "
        "stack). Kafka's JVM is warmed up before anything is measured.",
        "",
        "## Targets",
        "",
        _table(["target", "goal", "this run", "same-run baseline", ""],
               target_rows(results, s)),
        "",
        "## The Kafka path",
        "",
        _table(["scenario", "entries/s", "CPU µs/entry", "cores busy",
                "time-to-signed p50 / p99 ms", "time-to-anchored p50 / p99 ms",
                "peak RSS MiB", "exactly once"], _kafka_rows(results)),
        "",
        "CPU per entry, by process (µs):",
        "",
        _table(["scenario", *PROCESSES, "total"], _cpu_rows(results)),
        "",
    ]
    if "cpu-per-entry.png" in names:
        parts += ["![CPU per entry by process](benchmarks/cpu-per-entry.png)", ""]
    parts += links_section(results)
    parts += [
        "## Batch sizes and concurrency",
        "",
        "Each knob alone, the others at their defaults (signer: 200 items per Vault call, 4 "
        "calls in flight; anchor batches of 1,000), over the same backlog:",
        "",
        _table(["knob", "value", "entries/s", "CPU µs/entry", "cores busy",
                "time-to-anchored p99 ms"], _sweep_rows(results)),
        "",
    ]
    if "throughput-vs-batch.png" in names:
        parts += ["![Throughput against batch size](benchmarks/throughput-vs-batch.png)", ""]
    header = ["offered req/s", "answered/s", "p50 ms", "p95 ms", "p99 ms", "max ms", "errors",
              "statuses", "server CPU µs/req", "vegeta CPU s"]
    for key, title, text in (
        ("http_async", "HTTP, `Prefer: respond-async`",
         "202 once Kafka acknowledged; the pipeline runs and drains between steps. Rates "
         "above the fixed ones are tried while the previous one held (no errors, ≥ 95 % "
         "answered)."),
        ("http_wait", "HTTP, default wait", "201 once the signer stored the entry."),
        ("http_bulk", "HTTP, `POST /append/batch`",
         f"{_get(results, 'http_bulk', 'entries_per_request', default='')} entries per "
         "request, respond-async; rates are requests/s; the pipeline drains after the last "
         "step."),
        ("http_trivial", "Baseline: a trivial aiohttp handler",
         "Parses the JSON body and answers 201; same process model, event loop and load "
         "generator."),
        ("http_runbook", "Baseline: the runbook's design",
         "Per request one Vault sign, one serializable insert, 201, then an asynchronous "
         "Rekor submission (`benchmarks/servers.py`)."),
    ):
        rows = _http_rows(results, key)
        if rows:
            parts += [f"## {title}", "", text, "", _table(header, rows), ""]
    if "latency-vs-rate.png" in names:
        parts += ["![HTTP latency against offered rate](benchmarks/latency-vs-rate.png)", ""]
    parts += ["## Raw baselines", "",
              _table(["what", "rate", "engine CPU per item"], _baseline_rows(results)), "",
              "## How to size a deployment", "", _sizing(results, s), "",
              "## Files", "",
              "`docs/benchmarks/results.json` holds the summary keys below and every "
              "scenario's raw figures (`scenarios`).", "",
              "```json", json.dumps(dict(s), indent=2, default=str), "```", ""]
    return "\n".join(parts)


def machine() -> dict[str, Any]:
    """What the run ran on (call it at the start: the load average is read then)."""
    load = None
    with contextlib.suppress(OSError):
        load = [round(x, 2) for x in os.getloadavg()]
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "loadavg_at_start": load}


def write(results: dict[str, Any], out: Path) -> list[Path]:
    """Write ``<out>/benchmarks.md``, ``<out>/benchmarks/results.json`` and the charts."""
    results.setdefault("machine", machine())
    results.setdefault("finished", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    data_dir = out / "benchmarks"
    data_dir.mkdir(parents=True, exist_ok=True)
    s = summary(results)
    pictures = charts(results, data_dir)
    doc = {**s, "command": results.get("command"), "machine": results["machine"],
           "finished": results["finished"], "scenarios": results}
    json_path = data_dir / "results.json"
    json_path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    md_path = out / "benchmarks.md"
    md_path.write_text(markdown(results, s, pictures))
    return [md_path, json_path, *pictures]
