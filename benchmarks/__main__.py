"""``python -m benchmarks``: run the benchmarks against a local stack started for the run.

``make bench`` runs ``python -m benchmarks --profile full``: every scenario, then
``docs/benchmarks.md``, ``docs/benchmarks/results.json`` and the charts are rewritten from
the results. ``--only NAME,...`` runs some scenarios (the documents are then written to
``--out`` only if given explicitly); ``--profile smoke`` is the tiny run ``make test`` does.

The stack runs in ``.bench/stack-<time>`` (removed afterwards unless the run failed), with
the caches of ``make test``; it is started here, as the integration tests do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks import report, scenarios
from benchmarks.harness import REPO, Bench
from deploy.local.base import default_cache_dir
from deploy.local.stack import Stack
from shared.settings import Settings


def _say(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def run(bench: Bench, profile: scenarios.Profile, only: set[str] | None,
              baseline_ref: str) -> dict[str, Any]:
    if not only:
        return await scenarios.run_all(bench, profile, baseline_ref=baseline_ref)
    picked: dict[str, Any] = {"profile": profile.name}
    for name in scenarios.NAMES:
        if name in only:
            picked[name] = await scenarios.run_one(bench, profile, name,
                                                   baseline_ref=baseline_ref)
    return picked


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--profile", choices=["full", "smoke"], default="full")
    p.add_argument("--only", default="", help=f"comma-separated: {', '.join(scenarios.NAMES)}")
    p.add_argument("--out", type=Path, default=None,
                   help="where benchmarks.md and benchmarks/ go (default: docs/ for a full run)")
    p.add_argument("--keep-stack", action="store_true", help="leave the stack directory")
    p.add_argument("--baseline-ref", default="",
                   help="git ref of a previous release: its stages run the Kafka path too")
    args = p.parse_args(argv)
    profile = scenarios.FULL if args.profile == "full" else scenarios.SMOKE
    only = {x.strip() for x in args.only.split(",") if x.strip()} or None
    unknown = (only or set()) - set(scenarios.NAMES)
    if unknown:
        p.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    out = args.out or (REPO / "docs" if only is None and profile is scenarios.FULL else None)

    run_dir = REPO / ".bench" / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    stack = Stack(run_dir / "stack", default_cache_dir())
    failed = True
    try:
        started = time.monotonic()
        stack.install_all(_say)
        stack.start_all(_say)
        _say(f"stack up in {time.monotonic() - started:.1f}s")
        bench = Bench(stack=stack, settings=Settings.from_env(environ=stack.endpoints()),
                      run_dir=run_dir, progress=_say)
        bench.ensure_vegeta()
        machine = report.machine()
        results = asyncio.run(run(bench, profile, only, args.baseline_ref))
        results["machine"] = machine
        results["command"] = " ".join(["python -m benchmarks", *(argv or sys.argv[1:])])
        raw = run_dir / "results-raw.json"
        raw.write_text(json.dumps(results, indent=2, default=str) + "\n")
        _say(f"raw results: {raw}")
        if out is not None:
            for path in report.write(results, out):
                _say(f"wrote {path}")
        failed = False
    finally:
        stack.stop_all()
        if not failed and not args.keep_stack:
            shutil.rmtree(run_dir / "stack", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
