"""``make chaos``: a seeded random schedule of faults over a long stream, then the invariants.

``python -m benchmarks.chaos [--seed S] [--http N] [--kafka N] [--rate R] [--extra K]
[--write]`` starts a local stack of its own and runs one stream (:func:`run_stream`) of
``N + N`` appends (HTTP clients with request ids and retries, and a Kafka producer) through
one ingest, two signers and two anchorers. Each fault of :data:`DEPENDENCY_FAULTS` (Kafka
``kill -9``, PostgreSQL, OpenBao (sealed) and Rekor restarts) and of :data:`STAGE_FAULTS`
(``kill -9`` of ingest, a signer, an anchorer) happens once, plus ``K`` more drawn at random,
in a random order, each once a random number of rows is stored; the seed decides all of it,
so a run can be repeated. It prints the invariant table and, with ``--write``, records the
seed, the schedule, what each fault did and the table in ``docs/reliability.md``. The exit
status is 1 when an invariant does not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.faults import (
    DEPENDENCY_FAULTS,
    STAGE_FAULTS,
    StreamPlan,
    bench_on_a_stack,
    run_stream,
)
from benchmarks.reliability_doc import replace_section

__all__ = ["main", "markdown", "schedule"]

REPO = Path(__file__).resolve().parent.parent
DEFAULT_SEED = 9


def schedule(seed: int, total: int, extra: int) -> list[tuple[int, str]]:
    """Every fault once plus ``extra`` random ones, each at a random stored-row count
    between 5 % and 85 % of ``total``, in order of those counts."""
    rng = random.Random(seed)
    names = [*DEPENDENCY_FAULTS, *STAGE_FAULTS]
    names += [rng.choice(names) for _ in range(extra)]
    rng.shuffle(names)
    points = sorted(rng.randint(total // 20, total * 17 // 20) for _ in names)
    return list(zip(points, names, strict=True))


_ROWS = (
    ("acknowledged", "requests acknowledged (HTTP 202 + Kafka acks)"),
    ("rows", "rows stored"),
    ("anchored", "rows anchored"),
    ("duplicates", "duplicate rows (same request id)"),
    ("batches", "batches"),
    ("rekor_growth", "Rekor entries added"),
    ("events", "entries with a `ledger.anchored` event"),
    ("event_replays", "`ledger.anchored` events replayed (byte-identical)"),
    ("dead_letters", "dead-lettered messages"),
    ("audit", "`ledger audit --online`"),
)


def markdown(result: dict[str, Any], command: str) -> str:
    """The chaos section of docs/reliability.md."""
    table = result["table"]
    plan = result["plan"]
    lines = [
        f"Last run {result['date']}: `{command}` (seed {result['seed']}), "
        f"{plan['http'] + plan['kafka']:,} appends ({plan['http']:,} from HTTP clients, "
        f"{plan['kafka']:,} from a Kafka producer, each at {plan['rate']:g}/s) through one "
        f"ingest, {plan['signers']} signers and {plan['anchorers']} anchorers, in "
        f"{result['seconds']:.0f} s. HTTP retries: {result['http_retries']:,} "
        f"({', '.join(f'{k}: {v}' for k, v in sorted(result['http_failures'].items())) or '-'})"
        f"; Kafka producer retries: {result['kafka_retries']:,}.",
        "",
        "| # | at stored rows | fault | took | observed |",
        "|---|---|---|---|---|",
    ]
    for i, f in enumerate(result["faults"], 1):
        seen = {k: v for k, v in f.items() if k not in ("at_rows", "fault", "seconds")}
        lines.append(f"| {i} | {f['at_rows']:,} | {f['fault']} | {f['seconds']:.1f} s | "
                     f"{json.dumps(seen) if seen else ''} |")
    lines += ["", "| invariant | value |", "|---|---|"]
    for key, label in _ROWS:
        value = table[key]
        lines.append(f"| {label} | {value:,} |" if isinstance(value, int)
                     else f"| {label} | {value} |")
    verdict = "all invariants hold" if not table["problems"] else (
        "**violated:** " + "; ".join(table["problems"]))
    lines += ["", f"Result: {verdict}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=DEFAULT_SEED)
    p.add_argument("--http", type=int, default=20_000, help="appends from HTTP clients")
    p.add_argument("--kafka", type=int, default=30_000, help="appends from a Kafka producer")
    p.add_argument("--rate", type=float, default=300.0, help="appends/s of each source")
    p.add_argument("--extra", type=int, default=5, help="random faults beyond one of each")
    p.add_argument("--write", action="store_true", help="record the run in docs/reliability.md")
    args = p.parse_args(argv)
    if args.http + args.kafka < 50_000:
        print("note: fewer than 50,000 appends; `make chaos` runs at least that many",
              file=sys.stderr)
    plan = StreamPlan(http=args.http, kafka=args.kafka, rate=args.rate, signers=2,
                      anchorers=2)
    faults = schedule(args.seed, args.http + args.kafka, args.extra)
    print(f"seed {args.seed}: " + ", ".join(f"{name} at {n}" for n, name in faults), flush=True)

    def say(message: str) -> None:
        print(f"[chaos {time.strftime('%H:%M:%S')}] {message}", flush=True)

    with bench_on_a_stack("chaos", say) as bench:
        result = asyncio.run(run_stream(bench, plan, faults, log=say))
    result["seed"] = args.seed
    result["date"] = time.strftime("%Y-%m-%d")
    command = "python -m benchmarks.chaos " + " ".join(argv if argv is not None
                                                        else sys.argv[1:])
    text = markdown(result, command.strip())
    print(text)
    if args.write:
        replace_section(REPO / "docs" / "reliability.md", "chaos", text)
    return 1 if result["table"]["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
