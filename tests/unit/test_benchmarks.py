"""The benchmark harness's own arithmetic: /proc accounting and the report's summary."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from typing import Any

import pytest

from benchmarks import report
from benchmarks.procs import CpuMeter, machine_busy_seconds, peak_rss_mb, tree_pids

pytestmark = pytest.mark.unit


def _spin(seconds: float) -> None:
    """Burn ``seconds`` of this thread's own CPU (process time would count other threads)."""
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_cpu_of_a_tree_counts_children_that_already_exited() -> None:
    meter = CpuMeter({"me": [os.getpid()]})
    before = meter.sample()
    child = subprocess.run(  # a child that burns ~0.3 s of CPU and is reaped
        [sys.executable, "-c",
         "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"],
        check=True)
    assert child.returncode == 0
    _spin(0.1)
    after = meter.sample()
    spent = after.minus(before)["me"]
    assert spent >= 0.35, "the reaped child's CPU (cutime) is part of the tree"
    assert after.machine_busy > before.machine_busy > 0


def test_a_tree_is_the_root_and_its_live_descendants() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        assert set(tree_pids(os.getpid())) >= {os.getpid(), child.pid}
        assert tree_pids(child.pid) == [child.pid]
    finally:
        child.kill()
        child.wait()


def test_thread_split_reports_worker_threads_apart() -> None:
    meter = CpuMeter()
    meter.add("me", [os.getpid()], threads=True)
    spun, done = threading.Event(), threading.Event()

    def work() -> None:  # a long-lived worker, like the signer's verification threads
        _spin(0.3)
        spun.set()
        done.wait(10)

    before = meter.sample()
    worker = threading.Thread(target=work)
    worker.start()
    try:
        assert spun.wait(10)
        delta = meter.sample().minus(before)
    finally:
        done.set()
        worker.join()
    assert delta["me.threads"] >= 0.25
    # the process's and the threads' counters are read one after the other, in clock ticks
    # (10 ms): a thread still leaving its spin between the two reads may add a tick or two
    assert delta["me"] >= delta["me.threads"] - 0.03


def test_peak_rss_and_busy_time_are_read() -> None:
    assert (peak_rss_mb(os.getpid()) or 0) > 10
    assert peak_rss_mb(2**30) is None
    assert machine_busy_seconds() > 0


def _step(rate: float, p99: float, errors: int = 0, ok: int | None = None) -> dict[str, Any]:
    return {"offered_per_s": rate, "throughput_per_s": rate * (1 if not errors else 0.5),
            "errors": errors, "ok": ok if ok is not None else int(rate * 10), "p50_ms": p99 / 3,
            "p95_ms": p99 / 2, "p99_ms": p99, "max_ms": p99 * 2, "status_codes": {"202": 1},
            "cpu_us_per_entry": {"ingest": 300.0, "kafka": 50.0}}


def test_summary_reads_the_targets_from_the_scenarios() -> None:
    results: dict[str, Any] = {
        "kafka_e2e": {"entries_per_s": 4000.0, "cores_busy": 1.9,
                      "cpu_us_per_entry_total": 450.0,
                      "cpu_us_per_entry": {"signer": 120.0, "signer.threads": 60.0,
                                           "anchorer": 90.0, "kafka": 80.0, "loadgen": 9.0},
                      "peak_rss_mb": {"signer-1": 90.0, "anchorer-1": 110.0}},
        "kafka_fixed_rate": {"offered_per_s": 1000.0,
                             "time_to_anchored_ms": {"p50": 900.0, "p99": 2100.0}},
        "backlog_drain": {"entries_per_s": 3500.0,
                          "peak_rss_mb": {"signer-1": 95.0, "anchorer-1": 250.0}},
        "http_async": {"max_holding_per_s": 2000.0, "peak_rss_mb": {"ingest-1": 70.0},
                       "steps": [_step(500, 8.0), _step(1000, 40.0), _step(2000, 60.0),
                                 _step(3000, 900.0, errors=5)]},
        "http_wait": {"max_holding_per_s": 1000.0, "steps": [_step(500, 90.0)]},
        "http_bulk": {"max_holding_per_s": 20.0, "entries_per_request": 500, "steps": []},
        "http_runbook": {"max_holding_per_s": 100.0, "steps": [_step(100, 300.0)]},
        # the previous release ran next to this release's stages on a plain-links stack
        "previous_release": {"entries_per_s": 1500.0, "cpu_us_per_entry_total": 900.0,
                             "ref": "abc1234",
                             "this_release_same_stack": {"entries_per_s": 3000.0,
                                                         "cpu_us_per_entry_total": 450.0}},
    }
    s = report.summary(results)
    assert s["kafka_e2e_entries_per_s"] == 4000.0
    assert s["cpu_us_per_entry"] == {"signer": 120.0, "anchorer": 90.0, "kafka": 80.0}
    assert s["signer_verify_threads_us_per_entry"] == 60.0
    assert s["http_async_p99_ms"] == {"500": 8.0, "1000": 40.0, "2000": 60.0, "3000": 900.0}
    assert s["ratio_vs_runbook_design"] == 10.0  # default wait against the runbook's design
    assert s["ratio_async_vs_runbook_design"] == 20.0
    assert s["http_bulk_max_entries_per_s"] == 10_000.0
    assert s["time_to_anchored_p99_ms"] == 2100.0
    assert s["peak_rss_mb"] == {"signer": 95.0, "anchorer": 250.0, "ingest": 70.0}

    rows = {r[0]: r for r in report.target_rows(results, s)}
    verdicts = {what: row[-1] for what, row in rows.items()}
    assert verdicts[dict(report.TARGETS)["kafka_e2e"]] == "**not met**"
    assert verdicts[dict(report.TARGETS)["async_500"]] == "met"
    assert verdicts[dict(report.TARGETS)["runbook"]] == "met"
    assert verdicts[dict(report.TARGETS)["rss"]] == "met"
    assert verdicts[dict(report.TARGETS)["bulk"]] == "met"
    assert s["previous_release_this_release_entries_per_s"] == 3000.0
    # the previous release is compared with this release on the same stack, not the run's own
    assert ("2x the previous release (1,500/s, on one stack with 3,000/s of this release)"
            in rows[dict(report.TARGETS)["kafka_e2e"]][3])
    assert "(2x this release's 450 µs on the same stack)" in rows[
        dict(report.TARGETS)["cpu_total"]][3]
