"""How fast the pipeline recovers when a stage process dies: measured, never asserted.

``python -m benchmarks.recovery [--repeat N] [--rate R]`` starts a local stack (or uses the
one in the environment, see :mod:`deploy.local.stack`) and, for each consumer-group
configuration below, on a lane of its own with two signers and two anchorers under a steady
Kafka load of ``R`` appends per second:

1. ``kill -9`` one signer; **takeover** is the time from the kill until every partition of
   the signers' topic has its committed offset moved past where it stood at the kill (the
   survivors took the dead member's partitions and did work on each of them: full
   throughput);
2. start a replacement; **rejoin** is the time from its start until it reports work done
   (``ledger_messages_processed_total`` on its metrics port above 0), and **stall** the time
   from its start until every partition moved again (the rebalance its arrival causes);
3. the same for an anchorer.

Configurations, all in the same run:

* ``before``: the consumer settings of the previous release (session 10 s, heartbeat
  3.33 s, dynamic membership);
* ``tuned``: the current defaults (session 3 s, heartbeat 0.5 s, dynamic membership);
* ``static``: as ``tuned`` plus static membership (``group.instance.id``: each process a
  stable name; the replacement takes the name of the process it replaces).

With ``--churn`` it measures instead, per configuration, the anchored entries per second of
the four stages draining a backlog, undisturbed and then with one of them killed with -9
(and replaced) every 4 s: the throughput a crash-looping deployment keeps.

It prints one JSON document (the medians and every sample) and, with ``--write``, replaces
the recovery section of ``docs/reliability.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks.faults import (
    FAULT_LANE,
    Faults,
    bench_on_a_stack,
    kill_9,
    scrape,
    stop_load,
)
from benchmarks.harness import Bench, BenchError, Lane, StageProcess, wait_for
from benchmarks.reliability_doc import replace_section
from shared.kafka_admin import committed_offsets
from shared.settings import Settings

__all__ = ["CONFIGS", "main", "measure"]

REPO = Path(__file__).resolve().parent.parent
#: more than two signers and two anchorers anchor in the churn measurement's 60 s
CHURN_BACKLOG = 320_000
CONFIGS: dict[str, dict[str, Any]] = {
    "before": {"consumer_session_timeout_ms": 10_000, "consumer_heartbeat_interval_ms": 3333},
    "tuned": {"consumer_session_timeout_ms": 3000, "consumer_heartbeat_interval_ms": 500},
    "static": {"consumer_session_timeout_ms": 3000, "consumer_heartbeat_interval_ms": 500,
               "static": True},
}


async def _all_moved(settings: Settings, group: str, since: dict[int, int],
                     partitions: int) -> bool:
    now = await committed_offsets(settings, group)
    return len(now) == partitions and all(now[p] > since.get(p, -1) for p in now)


async def _one_role(lane: Lane, faults: Faults, role: str, *, static: bool) -> dict[str, float]:
    group = lane.settings.signer_group if role == "signer" else lane.settings.anchorer_group
    victim = next(p for p in lane.processes if p.role == role)
    t_kill = time.monotonic()
    await kill_9(lane, victim)
    # read once it is gone: a commit it sent just before the kill must not count as a move
    at_kill = await committed_offsets(lane.settings, group)
    moved = await wait_for(lambda: _all_moved(lane.settings, group, at_kill, 4),
                           within=120, what=f"{role} partitions taken over", every=0.05)
    takeover = moved - t_kill
    # static membership: the replacement takes the name of the process it replaces
    changes = {"consumer_instance_id": victim.name} if static else {}
    at_start = await committed_offsets(lane.settings, group)
    t_start = time.monotonic()
    replacement: StageProcess = await faults.spawn(role, **changes)
    port = faults.metrics_ports[replacement.name]
    metric = f'ledger_messages_processed_total{{stage="{role}"}}'

    async def working() -> bool:
        lane.assert_alive()
        return (await scrape(port)).get(metric, 0.0) > 0

    worked = await wait_for(working, within=120, what=f"the new {role} to work", every=0.05)
    stalled = await wait_for(lambda: _all_moved(lane.settings, group, at_start, 4),
                             within=120, what=f"{role} partitions moving again", every=0.05)
    return {"takeover_s": round(takeover, 2), "rejoin_s": round(worked - t_start, 2),
            "stall_s": round(max(worked, stalled) - t_start, 2)}


async def measure(bench: Bench, name: str, config: dict[str, Any], *, rate: float,
                  log: Callable[[str], None]) -> list[dict[str, Any]]:
    """One configuration: a kill and a restart of a signer, then of an anchorer."""
    config = dict(config)
    static = bool(config.pop("static", False))
    lane_settings = {**FAULT_LANE, "anchor_batch_ms": 300, **config}
    samples: list[dict[str, Any]] = []
    async with bench.lane(partitions=4, **lane_settings) as lane:
        faults = Faults(bench.stack, lane)
        for role, n in (("signer", 1), ("signer", 2), ("anchorer", 1), ("anchorer", 2)):
            await faults.spawn(role, **({"consumer_instance_id": f"{role}-{n}"} if static
                                        else {}))
        await lane.wait_groups()
        load = await lane.produce(10_000_000, rate=rate)
        try:
            await lane.wait_anchored(int(rate * 3), within=120)
            for role in ("signer", "anchorer"):
                sample = await _one_role(lane, faults, role, static=static)
                log(f"{name} {role}: {sample}")
                samples.append({"config": name, "role": role, **sample})
        finally:
            await stop_load(load)
    return samples


async def churn(bench: Bench, name: str, config: dict[str, Any], *, seconds: float,
                every: float, log: Callable[[str], None]) -> dict[str, Any]:
    """Anchored entries per second of two signers and two anchorers draining a backlog:
    first undisturbed for ``seconds / 2``, then for ``seconds`` with one stage process killed
    with -9 and replaced every ``every`` seconds (signers and anchorers in turn). The
    measurement windows are timed on purpose: this is a rate over an interval."""
    config = dict(config)
    static = bool(config.pop("static", False))
    async with bench.lane(partitions=4, **FAULT_LANE, **config) as lane:
        await (await lane.produce(CHURN_BACKLOG, rate=0))  # the whole backlog first
        faults = Faults(bench.stack, lane)
        for role, n in (("signer", 1), ("signer", 2), ("anchorer", 1), ("anchorer", 2)):
            await faults.spawn(role, **({"consumer_instance_id": f"{role}-{n}"} if static
                                        else {}))
        await lane.wait_groups()

        async def anchored() -> tuple[float, int]:
            lane.assert_alive()
            n = await lane.db.fetchval(
                "SELECT count(*) FROM ledger.entries WHERE anchored_at IS NOT NULL")
            return time.monotonic(), int(n)

        await lane.wait_anchored(2000, within=120)  # warmed up
        t0, n0 = await anchored()
        await asyncio.sleep(seconds / 2)
        t1, n1 = await anchored()
        kills = 0
        while time.monotonic() - t1 < seconds:
            role = ("signer", "anchorer")[kills % 2]
            victim = next(p for p in lane.processes if p.role == role)
            await kill_9(lane, victim)
            names = {"consumer_instance_id": victim.name} if static else {}
            await faults.spawn(role, **names)
            kills += 1
            await asyncio.sleep(max(0.0, t1 + kills * every - time.monotonic()))
        t2, n2 = await anchored()
    if n2 >= CHURN_BACKLOG:
        raise BenchError(f"the backlog of {CHURN_BACKLOG} ran out during the measurement")
    result = {"config": name, "steady_per_s": round((n1 - n0) / (t1 - t0)),
              "churn_per_s": round((n2 - n1) / (t2 - t1)), "kills": kills,
              "every_s": every}
    log(f"churn {name}: {result}")
    return result


def summarise(samples: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Median of each figure by configuration and role."""
    out: dict[str, dict[str, float]] = {f"{s['config']}/{s['role']}": {} for s in samples}
    for key, figures in out.items():
        config, role = key.split("/")
        rows = [s for s in samples if s["config"] == config and s["role"] == role]
        for figure in ("takeover_s", "rejoin_s", "stall_s"):
            figures[figure] = round(statistics.median(r[figure] for r in rows), 2)
    return out


def markdown(result: dict[str, Any]) -> str:
    """The recovery section of docs/reliability.md."""
    lines = [
        f"Measured {result['date']} with `python -m benchmarks.recovery --repeat "
        f"{result['repeat']} --rate {result['rate']:g}`: two signers and two anchorers "
        f"(separate processes, 4 partitions) under {result['rate']:g} appends/s from a Kafka "
        "producer; every configuration in the same run on the same machine, medians of "
        f"{result['repeat']} kill/restart pairs per role.",
        "",
        "| configuration | stage | kill → partitions taken over | restart → new process "
        "works | restart → all partitions moving |",
        "|---|---|---|---|---|",
    ]
    for key, figures in result["medians"].items():
        config, role = key.split("/")
        lines.append(f"| {config} | {role} | {figures['takeover_s']:.2f} s | "
                     f"{figures['rejoin_s']:.2f} s | {figures['stall_s']:.2f} s |")
    return "\n".join(lines) + "\n"


def churn_markdown(result: dict[str, Any]) -> str:
    """The churn section of docs/reliability.md."""
    lines = [
        f"Measured {result['date']} with `python -m benchmarks.recovery --churn`: two "
        "signers and two anchorers (separate processes, 4 partitions) drain a backlog of "
        f"{result['backlog']:,} appends; anchored entries per second undisturbed "
        f"({result['seconds'] / 2:g} s), then for {result['seconds']:g} s while one stage "
        f"process is killed with -9 (and a replacement started) every {result['every']:g} s, "
        "signers and anchorers in turn; every configuration in the same run.",
        "",
        "| configuration | undisturbed | with a kill every few seconds | kills |",
        "|---|---|---|---|",
    ]
    for c in result["churn"]:
        lines.append(f"| {c['config']} | {c['steady_per_s']}/s | {c['churn_per_s']}/s | "
                     f"{c['kills']} |")
    return "\n".join(lines) + "\n"


async def _run(bench: Bench, args: argparse.Namespace) -> dict[str, Any]:
    result: dict[str, Any] = {"date": time.strftime("%Y-%m-%d")}
    if args.churn:
        result |= {"seconds": 40.0, "every": 4.0, "backlog": CHURN_BACKLOG}
        result["churn"] = [await churn(bench, name, config, seconds=40, every=4, log=print)
                           for name, config in CONFIGS.items()]
        return result
    samples: list[dict[str, Any]] = []
    for _ in range(args.repeat):
        for name, config in CONFIGS.items():
            samples += await measure(bench, name, config, rate=args.rate, log=print)
    return result | {"repeat": args.repeat, "rate": args.rate, "medians": summarise(samples),
                     "samples": samples}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=2, help="kill/restart pairs per role")
    p.add_argument("--rate", type=float, default=300.0, help="appends per second")
    p.add_argument("--churn", action="store_true",
                   help="measure throughput with a stage killed every 4 s instead")
    p.add_argument("--write", action="store_true",
                   help="replace the recovery (or churn) section of docs/reliability.md")
    args = p.parse_args(argv)
    with bench_on_a_stack("recovery") as bench:
        result = asyncio.run(_run(bench, args))
    print(json.dumps(result, indent=2))
    if args.write:
        if args.churn:
            replace_section(REPO / "docs" / "reliability.md", "churn", churn_markdown(result))
        else:
            replace_section(REPO / "docs" / "reliability.md", "recovery", markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
